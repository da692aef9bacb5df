"""A small client for a real Label Studio server's REST API: what coldstart needs to put review
tasks in front of people and read their answers back live.

Written against Label Studio 1.23 (Community, checked against a running 1.23.2 server):

- Auth: a personal access token (what Account & Settings > Personal Access Token shows: a JWT
  *refresh* token) is exchanged at ``POST /api/token/refresh`` for an access token, sent as
  ``Authorization: Bearer ...``; access tokens live 5 minutes and are renewed here before they run
  out (and once more on a 401). Anything that is not a JWT is sent as a legacy token
  (``Authorization: Token ...``), which new organizations refuse unless an admin turns legacy
  tokens on (Organization > API Tokens Settings, or LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true).
- Webhooks and ML backends on 127.0.0.0/8 or a private network are refused (HTTP 403, "URL resolves
  to a reserved network address") unless the server runs with SSRF_PROTECTION_ENABLED=false
  (webhooks) and ML_BLOCK_LOCAL_IP=false (ML backends).
- ML backends authenticate only with HTTP Basic auth (``auth_method="BASIC_AUTH"``,
  ``basic_auth_user``/``basic_auth_pass``); there is no field for extra headers, so a backend that
  wants ``Authorization: Bearer <token>`` cannot be connected as such. Webhooks send any
  ``headers`` given.

Every failure is a :class:`LabelStudioError` that says what the server answered and what to do.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

import httpx

from coldstart.tasks.errors import ColdstartError

DEFAULT_TIMEOUT = 30.0
REFRESH_MARGIN_S = 30  # renew the access token this long before it expires
PAGE_SIZE = 100
EXPORT_TYPES = ("JSON", "JSON_MIN", "CSV", "TSV", "CONLL2003", "COCO", "VOC", "YOLO")


class LabelStudioError(ColdstartError):
    """Label Studio could not be reached, refused the token, or rejected a request; the message
    has the server's own words and the fix. ``status`` is the HTTP status (None: no answer)."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


def jwt_claims(token: str) -> dict | None:
    """The claims of a JWT (its middle part, not verified), or None if ``token`` is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None


class LabelStudio:
    """One Label Studio server, one user's token. Use as a context manager or call ``close()``.

    ``url``: the server's address as users open it (``http://localhost:8080``). ``token``: the
    user's personal access token (a JWT refresh token; an access token also works, until it
    expires in minutes) or a legacy token. ``timeout``: seconds per request.
    """

    def __init__(self, url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None):
        scheme, _, rest = token.strip().partition(" ")
        token = rest.strip() if scheme in ("Token", "Bearer") else token.strip()  # pasted with the header's scheme
        if not token:
            raise LabelStudioError("no Label Studio token given: copy your personal access token from Label "
                                   "Studio's Account & Settings page")
        self.url = url.rstrip("/")
        self._claims = jwt_claims(token)
        self._token = token
        self._access: str | None = None
        self._access_exp = 0.0
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)
        if self._claims is not None and self._claims.get("token_type") == "access":
            self._access, self._access_exp = token, float(self._claims.get("exp", 0))

    # --- plumbing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> LabelStudio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def auth_kind(self) -> str:
        """``"personal access token"`` (JWT refresh), ``"access token"`` (a JWT access token) or
        ``"legacy token"``."""
        if self._claims is None:
            return "legacy token"
        return "access token" if self._claims.get("token_type") == "access" else "personal access token"

    def _refresh(self) -> None:
        """Exchange the personal access token for a fresh access token."""
        try:
            r = self._http.post("/api/token/refresh", json={"refresh": self._token})
        except httpx.TransportError as e:
            raise self._unreachable(e) from None
        if r.status_code != 200:
            raise LabelStudioError(
                f"Label Studio at {self.url} refused the personal access token (HTTP {r.status_code}: "
                f"{_detail(r)}): it was revoked, expired, or belongs to another server. Create a new one in "
                f"Account & Settings > Personal Access Token and use that.", status=r.status_code)
        self._access = str(_json(r, "POST /api/token/refresh")["access"])
        self._access_exp = float((jwt_claims(self._access) or {}).get("exp", time.time() + 60))

    def _auth(self, *, renew: bool = False) -> dict[str, str]:
        if self._claims is None:
            return {"Authorization": f"Token {self._token}"}
        if self.auth_kind == "personal access token" and (
                renew or self._access is None or self._access_exp - time.time() < REFRESH_MARGIN_S):
            self._refresh()
        return {"Authorization": f"Bearer {self._access}"}

    def _unreachable(self, e: Exception) -> LabelStudioError:
        return LabelStudioError(f"cannot reach Label Studio at {self.url} ({type(e).__name__}: {e}): is it running "
                                f"(`label-studio start`) and is the URL right?")

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201, 204), **kwargs: Any
                ) -> httpx.Response:
        """One API call (``path`` relative to the server, e.g. ``/api/projects``) with the user's
        token; a response whose status is not in ``ok`` raises LabelStudioError. A 401 renews the
        access token and tries once more."""
        try:
            r = self._http.request(method, path, headers=self._auth(), **kwargs)
            if r.status_code == 401 and self.auth_kind == "personal access token":
                r = self._http.request(method, path, headers=self._auth(renew=True), **kwargs)
        except httpx.TransportError as e:
            raise self._unreachable(e) from None
        if r.status_code not in ok:
            raise self._rejected(method, path, r)
        return r

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """``request`` and its JSON body (LabelStudioError if the answer is not JSON)."""
        return _json(self.request(method, path, **kwargs), f"{method} {path}")

    def _rejected(self, method: str, path: str, r: httpx.Response) -> LabelStudioError:
        what, detail = f"{method} {path}", _detail(r)
        if r.status_code == 401:
            fix = ("legacy tokens are disabled for this organization: use a personal access token (Account & "
                   "Settings > Personal Access Token), or have an admin enable legacy tokens"
                   if "legacy" in detail else "check the token: copy your personal access token from Account & "
                   "Settings > Personal Access Token")
            return LabelStudioError(f"Label Studio at {self.url} refused the {self.auth_kind} for {what} "
                                    f"(HTTP 401: {detail}); {fix}", status=401)
        if r.status_code == 403 and "reserved network address" in detail:
            fix = ("start Label Studio with SSRF_PROTECTION_ENABLED=false (webhooks) and ML_BLOCK_LOCAL_IP=false "
                   "(ML backends) to let it call a receiver on this machine or a private network")
            return LabelStudioError(f"Label Studio refused {what}: {detail}; {fix}", status=403)
        if r.status_code == 403:
            return LabelStudioError(f"Label Studio refused {what} (HTTP 403: {detail}): this user may not do that; "
                                    f"use a token of a project owner or administrator", status=403)
        if r.status_code == 404:
            return LabelStudioError(f"Label Studio has no {path} (HTTP 404: {detail}): check the project/task id "
                                    f"and that this user can see it", status=404)
        if r.status_code >= 500:
            return LabelStudioError(f"Label Studio failed on {what} (HTTP {r.status_code}: {detail}); see the "
                                    f"server's log", status=r.status_code)
        return LabelStudioError(f"Label Studio rejected {what} (HTTP {r.status_code}: {detail})", status=r.status_code)

    # --- projects and tasks -----------------------------------------------------------------------

    def create_project(self, title: str, label_config: str, *, description: str = "") -> int:
        """A new project with this labeling config (coldstart's ``label_config.xml``); its id.
        Label Studio wants a title of 3 to 50 characters."""
        r = self.call("POST", "/api/projects", json={"title": title, "label_config": label_config,
                                                      "description": description})
        return int(r["id"])

    def projects(self) -> list[dict]:
        """Every project this user can see (all pages)."""
        out, page = [], 1
        while True:
            body = self.call("GET", "/api/projects", params={"page": page, "page_size": PAGE_SIZE})
            out += body["results"]
            if not body.get("next"):
                return out
            page += 1

    def find_project(self, title: str) -> int | None:
        """The id of the newest project titled exactly ``title``, or None. (The server ignores a
        title filter, so every project is listed and compared here.)"""
        ids = [int(p["id"]) for p in self.projects() if p.get("title") == title]
        return max(ids) if ids else None

    def import_tasks(self, project_id: int, tasks: list[dict]) -> int:
        """Import tasks as coldstart exports them (``{"data": {...}, "predictions": [...]}``; the
        predictions become the model's pre-annotations); how many tasks were created."""
        body = self.call("POST", f"/api/projects/{project_id}/import", json=tasks)
        if "task_count" not in body:  # Enterprise imports in the background: not handled here
            raise LabelStudioError(f"Label Studio imported in the background ({body}); this client only handles "
                                   f"the synchronous import of Label Studio Community")
        return int(body["task_count"])

    def add_local_storage(self, project_id: int, path: str, *, title: str = "coldstart images") -> int:
        """Attach a Local Files storage for ``path`` (absolute, on the Label Studio server, a folder
        strictly inside its LOCAL_FILES_DOCUMENT_ROOT, e.g. ``<workspace>/data/images``); its id.

        Without one covering an image's folder, ``/data/local-files/?d=...`` URLs answer 404. Tasks
        that already carry such URLs (coldstart's) need no sync."""
        r = self.call("POST", "/api/storages/localfiles", json={
            "project": project_id, "path": str(path), "title": title, "use_blob_urls": False})
        return int(r["id"])

    def tasks(self, project_id: int) -> list[dict]:
        """Every task of the project with its annotations and predictions (all pages)."""
        out: list[dict] = []
        page = 1
        while True:
            body = self.call("GET", "/api/tasks", params={"project": project_id, "page": page,
                                                          "page_size": PAGE_SIZE, "fields": "all"})
            out += body["tasks"]
            if not body["tasks"] or len(out) >= int(body.get("total", 0)):
                return out
            page += 1

    def get(self, url: str) -> bytes:
        """The bytes at ``url`` on the server (a task's ``/data/local-files/?d=...`` image URL, or
        any path on this server), fetched with the token as the labeling UI fetches them. The
        token is never sent elsewhere: a URL of another server is a LabelStudioError."""
        if "://" in url and not url.startswith(self.url + "/"):
            raise LabelStudioError(f"{url} is not on Label Studio at {self.url}: its token is not sent there")
        return self.request("GET", url).content

    def export(self, project_id: int, fmt: str = "JSON", *, all_tasks: bool = False) -> bytes:
        """The project's export as the Export button downloads it: ``fmt`` JSON (what
        ``labelstudio.parse_export`` reads), JSON_MIN, CSV, ...; by default only the tasks someone
        annotated (or skipped), as in the UI; ``all_tasks`` for every task."""
        r = self.request("GET", f"/api/projects/{project_id}/export",
                         params={"exportType": fmt, "download_all_tasks": str(all_tasks).lower()})
        return r.content

    # --- annotations ------------------------------------------------------------------------------

    def create_annotation(self, task_id: int, result: list[dict], *, completed_by: int | None = None,
                          lead_time: float = 1.0, was_cancelled: bool = False,
                          parent_prediction: int | None = None) -> dict:
        """Submit an answer for a task as the labeling UI's Submit button does: ``POST
        /api/tasks/<id>/annotations`` with ``result`` (each region given an ``id`` and ``origin:
        "manual"`` if it has none, as the UI does), ``lead_time`` (seconds spent), ``started_at``,
        and ``parent_prediction`` (the prediction it started from, when the person accepted or
        edited one). ``was_cancelled`` is the Skip button. ``completed_by``: another user's id
        (default: the token's user). Returns the annotation as stored (``completed_by`` an id)."""
        body: dict[str, Any] = {"result": _ui_result(result), "lead_time": lead_time,
                                "was_cancelled": was_cancelled, "started_at": _iso(time.time() - lead_time),
                                "draft_id": None, "parent_prediction": parent_prediction, "parent_annotation": None}
        if completed_by is not None:
            body["completed_by"] = completed_by
        return self.call("POST", f"/api/tasks/{task_id}/annotations", json=body)

    def update_annotation(self, annotation_id: int, result: list[dict], *, lead_time: float | None = None) -> dict:
        """Change an answer as the UI's Update button does (``PATCH /api/annotations/<id>``); the
        annotation as stored."""
        body: dict[str, Any] = {"result": _ui_result(result)}
        if lead_time is not None:
            body["lead_time"] = lead_time
        return self.call("PATCH", f"/api/annotations/{annotation_id}", json=body)

    def delete_annotation(self, annotation_id: int) -> None:
        """Delete an answer (``DELETE /api/annotations/<id>``)."""
        self.request("DELETE", f"/api/annotations/{annotation_id}")

    def user_emails(self) -> dict[int, str]:
        """Every user's id -> email: exports and webhooks name an annotator by id only
        (``completed_by: 1``), and this is how to turn that into a person."""
        return {int(u["id"]): u.get("email") or "" for u in self.call("GET", "/api/users")}

    # --- live connections -------------------------------------------------------------------------

    def connect_ml_backend(self, project_id: int, url: str, title: str = "coldstart", *,
                           basic_auth: tuple[str, str] | None = None, extra_params: dict | None = None,
                           is_interactive: bool = False) -> int:
        """Connect an ML backend (coldstart's predictor) to the project; its id.

        Label Studio first calls ``GET <url>/health`` and ``POST <url>/setup`` and refuses the
        backend if either fails; it then also adds a webhook to ``<url>/webhook`` for every event of
        the project. ``basic_auth`` (user, password) is the only authentication Label Studio can send
        to a backend (as ``Authorization: Basic ...``); ``extra_params`` is passed to ``/setup``."""
        body: dict[str, Any] = {"project": project_id, "url": url, "title": title, "is_interactive": is_interactive}
        if basic_auth is not None:
            body.update(auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1])
        if extra_params is not None:
            body["extra_params"] = extra_params
        return int(self.call("POST", "/api/ml", json=body)["id"])

    def add_webhook(self, project_id: int, url: str, headers: dict[str, str] | None = None, *,
                    actions: list[str] | None = None) -> int:
        """Have Label Studio POST the project's events (``actions``, e.g. ``ANNOTATION_CREATED``;
        default all) with their payload to ``url``, adding ``headers`` (e.g. ``Authorization``) to
        each call; its id."""
        body: dict[str, Any] = {"project": project_id, "url": url, "headers": headers or {}, "send_payload": True,
                                "send_for_all_actions": not actions, "actions": list(actions or [])}
        return int(self.call("POST", "/api/webhooks", json=body)["id"])


def _json(r: httpx.Response, what: str) -> Any:
    """The JSON body of a successful answer; LabelStudioError if there is none (not Label Studio)."""
    try:
        return r.json()
    except ValueError:
        raise LabelStudioError(f"{what} at {r.request.url.copy_with(query=None)} answered HTTP {r.status_code} "
                               f"without JSON: is this URL a Label Studio server?", status=r.status_code) from None


def _detail(r: httpx.Response) -> str:
    """The server's own explanation in a response: ``detail`` and any validation errors."""
    try:
        body = r.json()
    except ValueError:
        text = r.text.strip()
        return (text[:300] or r.reason_phrase) if not text.lstrip().startswith("<") else r.reason_phrase
    if not isinstance(body, dict):
        return json.dumps(body)[:300]
    detail = str(body.get("detail") or body.get("error") or "")
    errors = body.get("validation_errors")
    if errors:
        detail = (detail + ": " if detail else "") + json.dumps(errors, ensure_ascii=False)[:500]
    return detail or json.dumps(body, ensure_ascii=False)[:300]


def _ui_result(result: list[dict]) -> list[dict]:
    """``result`` with what the UI adds to each region it sends: an ``id`` (10 random characters)
    and ``origin: "manual"``, where missing. The caller's dicts are not changed."""
    return [{"id": secrets.token_urlsafe(8)[:10], "origin": "manual", **r} for r in result]


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
