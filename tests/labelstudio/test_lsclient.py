"""coldstart's Label Studio client against a real Label Studio server (see conftest.py).

One project goes the way a review round does: coldstart's label config, tasks with the model's
pre-annotations, images served from the local-files root, a person's answer, the export read back
by ``labelstudio.parse_export``, the answer changed and deleted; a local receiver, connected as
the project's webhook and ML backend, records what Label Studio sends it.

The bodies Label Studio sends and exports are kept in ``recorded/`` for contract tests that need
no server: written when missing (or with COLDSTART_RECORD_LABELSTUDIO=1), otherwise the live ones
must have the recorded shape (the same keys at every level).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import threading
import time
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image

from coldstart.tasks.errors import ColdstartError
from coldstart.tasks.labelstudio import LABEL, label_config, parse_export, task
from coldstart.tasks.lsclient import LabelStudio, LabelStudioError, jwt_claims

real = pytest.mark.labelstudio  # needs the server; the offline tests below run in the default suite

RECORDED = Path(__file__).parent / "recorded"
RECORD = os.environ.get("COLDSTART_RECORD_LABELSTUDIO") == "1"
ML_VERSION = "coldstart-test-v1"
HOOK_TOKEN = "hook-secret"
ML_AUTH = ("coldstart", "ml-secret")


# --- helpers --------------------------------------------------------------------------------------


def choice(label: str) -> list[dict]:
    """The result a person's click on ``label`` produces (the UI adds id and origin)."""
    return [{"from_name": LABEL, "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


def shape(value: object) -> object:
    """The keys of a JSON value at every level (a list by its first item), not its values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return None


def record_or_check(name: str, body: bytes) -> None:
    """Save ``body`` as recorded/<name> (when missing or recording), else check the live body has
    the recorded one's shape (JSON: keys at every level; CSV: the header)."""
    path = RECORDED / name
    if RECORD or not path.exists():
        RECORDED.mkdir(exist_ok=True)
        path.write_bytes(body)
        return
    if name.endswith(".csv"):
        assert body.decode().splitlines()[0] == path.read_text().splitlines()[0], f"{name}: CSV header changed"
    else:
        assert shape(json.loads(body)) == shape(json.loads(path.read_bytes())), f"{name}: shape changed"


class Receiver:
    """A local HTTP server that plays coldstart's side: an ML backend under ``/ml`` (``/health``,
    ``/setup``, ``/predict`` answered as Label Studio expects) and a webhook at ``/hook``. Every
    request is kept: (method, path, headers, body bytes)."""

    def __init__(self):
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append((self.command, self.path, dict(self.headers), body))
                path = self.path.split("?")[0].rstrip("/")
                if path.endswith("/health"):
                    out = {"status": "UP", "model_class": "ColdstartHead"}
                elif path.endswith("/setup"):
                    out = {"model_version": ML_VERSION}
                elif path.endswith("/predict"):
                    out = {"results": [{"result": choice("dog"), "score": 0.5, "model_version": ML_VERSION}
                                       for _ in json.loads(body)["tasks"]], "model_version": ML_VERSION}
                else:
                    out = {}
                data = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def received(self, path: str, action: str | None = None, timeout: float = 10.0) -> list[tuple]:
        """The requests to ``path`` (and, for webhooks, with this ``action``), waiting up to
        ``timeout`` s for at least one."""
        end = time.monotonic() + timeout
        while True:
            got = [r for r in list(self.requests) if r[1].split("?")[0] == path and (
                action is None or json.loads(r[3]).get("action") == action)]
            if got or time.monotonic() > end:
                return got
            time.sleep(0.1)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ls(label_studio):
    with LabelStudio(label_studio.url, label_studio.token) as client:
        yield client


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def write_png(path: Path, color: tuple[int, int, int]) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), color).save(path, format="PNG")
    return path.read_bytes()


# --- offline: the client's own logic, against canned answers ----------------------------------------


def _jwt(claims: dict) -> str:
    part = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJIUzI1NiJ9.{part}.sig"


def offline(token: str, answer) -> tuple[LabelStudio, list[httpx.Request]]:
    """A client whose server is ``answer(request) -> (status, json body)``; the requests it got."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status, body = answer(request)
        return httpx.Response(status, json=body) if not isinstance(body, str) else httpx.Response(status, text=body)

    return LabelStudio("http://ls.test", token, transport=httpx.MockTransport(handle)), seen


PAT = _jwt({"token_type": "refresh", "exp": 8102863381, "user_id": "1"})


def test_offline_tokens_and_renewal():
    now = time.time()
    access = iter([_jwt({"token_type": "access", "exp": now + 300, "n": n}) for n in range(3)])
    calls = {"projects": 0}

    def answer(request):
        if request.url.path == "/api/token/refresh":
            assert json.loads(request.content) == {"refresh": PAT}
            return 200, {"access": next(access)}
        calls["projects"] += 1
        if calls["projects"] == 2:  # the server forgot the access token: renewed, asked again
            return 401, {"detail": "Authentication credentials were not provided."}
        return 200, {"count": 0, "next": None, "results": []}

    ls, seen = offline("  " + PAT + "\n", answer)
    assert ls.auth_kind == "personal access token"
    assert ls.projects() == [] and ls.projects() == []
    paths = [(r.url.path, r.headers.get("Authorization", "")[:7]) for r in seen]
    assert paths == [("/api/token/refresh", ""), ("/api/projects", "Bearer "), ("/api/projects", "Bearer "),
                     ("/api/token/refresh", ""), ("/api/projects", "Bearer ")]
    assert seen[2].headers["Authorization"] != seen[4].headers["Authorization"]

    legacy, seen = offline("Token 0123abcd", lambda r: (200, {"count": 0, "next": None, "results": []}))
    legacy.projects()
    assert legacy.auth_kind == "legacy token" and seen[0].headers["Authorization"] == "Token 0123abcd"


def test_offline_errors_say_what_and_how():
    def answer(request):
        if request.url.path == "/api/token/refresh":
            return 401, {"detail": "Token is invalid or expired", "code": "token_not_valid"}
        return 200, {}

    with pytest.raises(LabelStudioError, match="refused the personal access token .*Token is invalid or expired"
                       ".*Personal Access Token") as e:
        offline(PAT, answer)[0].projects()
    assert e.value.status == 401

    legacy, _ = offline("abc123", lambda r: (401, {"detail": "Authentication token no longer valid: legacy token "
                                                          "authentication has been disabled for this organization"}))
    with pytest.raises(LabelStudioError, match="legacy tokens are disabled for this organization"):
        legacy.projects()

    ssrf, seen = offline("abc123", lambda r: (403, {"detail": "URL resolves to a reserved network address "
                                                           "(block: 127.0.0.0/8)"}))
    with pytest.raises(LabelStudioError, match="SSRF_PROTECTION_ENABLED=false .*ML_BLOCK_LOCAL_IP=false"):
        ssrf.add_webhook(1, "http://127.0.0.1:8000/hook")
    assert json.loads(seen[0].content)["send_for_all_actions"] is True

    bad, _ = offline("abc123", lambda r: (400, {"detail": "Validation error", "validation_errors": {
        "title": ["Ensure this field has at least 3 characters."]}}))
    with pytest.raises(LabelStudioError, match=r"POST /api/projects \(HTTP 400: Validation error: .*at least 3"):
        bad.create_project("ab", "<View/>")

    html, _ = offline("abc123", lambda r: (200, "<html>not Label Studio</html>"))
    with pytest.raises(LabelStudioError, match="without JSON: is this URL a Label Studio server"):
        html.projects()

    ls, seen = offline("abc123", lambda r: (200, {}))
    with pytest.raises(LabelStudioError, match="its token is not sent there"):
        ls.get("http://elsewhere.test/data/local-files/?d=images/a.png")
    assert seen == []
    with pytest.raises(LabelStudioError, match="no Label Studio token"):
        offline("Bearer  ", answer)


def test_offline_annotations_look_like_the_ui():
    ls, seen = offline("abc123", lambda r: (201, {"id": 7}))
    mine = choice("cat")
    ls.create_annotation(5, mine, lead_time=3.0, parent_prediction=9)
    body = json.loads(seen[0].content)
    assert seen[0].url.path == "/api/tasks/5/annotations" and mine == choice("cat")  # the caller's list untouched
    assert body["result"][0]["origin"] == "manual" and len(body["result"][0]["id"]) == 10
    assert {k: body[k] for k in ("lead_time", "was_cancelled", "parent_prediction")} == {
        "lead_time": 3.0, "was_cancelled": False, "parent_prediction": 9}
    assert body["started_at"].endswith("Z") and "completed_by" not in body
    ls.update_annotation(7, [{**choice("dog")[0], "id": "keep-me"}])
    assert seen[1].method == "PATCH" and json.loads(seen[1].content)["result"][0]["id"] == "keep-me"


# --- auth -----------------------------------------------------------------------------------------


@real
def test_personal_access_token_is_exchanged_and_renewed(label_studio, ls):
    assert jwt_claims(label_studio.token)["token_type"] == "refresh"
    assert ls.auth_kind == "personal access token"
    ls.projects()
    first = ls._access
    assert jwt_claims(first)["token_type"] == "access"
    assert jwt_claims(first)["exp"] - jwt_claims(first)["iat"] == 300  # access tokens live 5 minutes

    ls._access_exp = time.time() + 5  # about to expire: renewed before use
    ls.projects()
    assert ls._access != first

    ls._access, ls._access_exp = "x.eyJ0b2tlbl90eXBlIjoiYWNjZXNzIn0.y", time.time() + 3600  # refused: 401
    ls.projects()  # one renewal and a second try
    assert jwt_claims(ls._access)["token_type"] == "access"


@real
def test_bad_tokens_and_servers_are_clear_errors(label_studio):
    with LabelStudio(label_studio.url, label_studio.legacy_token) as legacy:
        assert legacy.auth_kind == "legacy token"
        with pytest.raises(LabelStudioError, match="legacy tokens are disabled") as e:
            legacy.projects()
        assert e.value.status == 401 and isinstance(e.value, ColdstartError)
    with LabelStudio(label_studio.url, "0123456789abcdef0123456789abcdef01234567") as wrong:
        with pytest.raises(LabelStudioError, match="refused the legacy token .*Invalid token"):
            wrong.projects()
    forged = label_studio.token.rsplit(".", 1)[0] + ".c2lnbmF0dXJl"
    with LabelStudio(label_studio.url, forged) as bad:
        with pytest.raises(LabelStudioError, match="refused the personal access token .*Personal Access Token"):
            bad.projects()
    with LabelStudio("http://127.0.0.1:9", label_studio.token, timeout=5) as nowhere:
        with pytest.raises(LabelStudioError, match="cannot reach Label Studio at http://127.0.0.1:9"):
            nowhere.projects()
    with pytest.raises(LabelStudioError, match="no Label Studio token"):
        LabelStudio(label_studio.url, " ")


@real
def test_rejected_requests_carry_the_servers_message(label_studio, ls):
    with pytest.raises(LabelStudioError, match="HTTP 400.*label_config") as e:
        ls.create_project("broken config", "<View><Image></View>")
    assert e.value.status == 400
    with pytest.raises(LabelStudioError, match="at least 3 characters"):
        ls.create_project("ab", label_config(["cat"]))
    with pytest.raises(LabelStudioError, match="HTTP 404"):
        ls.tasks(987654)
    pid = ls.create_project("storage checks", label_config(["cat"]))
    with pytest.raises(LabelStudioError, match="cannot be the same as LOCAL_FILES_DOCUMENT_ROOT"):
        ls.add_local_storage(pid, str(label_studio.data_root))
    with pytest.raises(LabelStudioError, match="does not exist"):
        ls.add_local_storage(pid, str(label_studio.data_root / "no-such-folder"))


# --- one review round ------------------------------------------------------------------------------


@real
def test_review_round_through_label_studio(label_studio, ls, receiver):
    images = label_studio.data_root / "images"
    pngs = {"a.png": write_png(images / "a.png", (200, 10, 10)),
            "sub dir/b.png": write_png(images / "sub dir" / "b.png", (10, 10, 200))}
    title = f"coldstart round {time.time_ns()}"
    pid = ls.create_project(title, label_config(["cat", "dog"]))
    assert ls.find_project(title) == pid
    assert ls.find_project(title + " (not there)") is None

    hook = ls.add_webhook(pid, receiver.url + "/hook", {"Authorization": f"Bearer {HOOK_TOKEN}"})
    ml = ls.connect_ml_backend(pid, receiver.url + "/ml", basic_auth=ML_AUTH)
    assert hook > 0 and ml > 0
    setup = receiver.received("/ml/setup")
    assert setup, "Label Studio did not call the ML backend's /setup"
    record_or_check("ml-setup.json", setup[0][3])
    body = json.loads(setup[0][3])
    assert body["hostname"] == label_studio.url and body["access_token"] == label_studio.legacy_token
    assert body["schema"] == label_config(["cat", "dog"]).strip()  # stored without the last newline
    basic = "Basic " + base64.b64encode(":".join(ML_AUTH).encode()).decode()
    assert receiver.received("/ml/health")[0][2]["Authorization"] == basic
    assert setup[0][2]["Authorization"] == basic
    hooks = ls.request("GET", "/api/webhooks", params={"project": pid}).json()
    assert {h["url"] for h in hooks} == {receiver.url + "/hook", receiver.url + "/ml/webhook"}  # added for the ML

    exported = [task("a", "a.png", "cat", 0.9, "round-1"), task("b", "sub dir/b.png", "dog", 0.6, "round-1")]
    url = exported[0]["data"]["image"]
    with pytest.raises(LabelStudioError, match="HTTP 404"):  # no storage covers the folder yet
        ls.get(url)
    assert ls.import_tasks(pid, exported) == 2
    assert ls.add_local_storage(pid, str(images)) > 0
    tasks = sorted(ls.tasks(pid), key=lambda t: t["id"])
    assert [t["data"]["image_id"] for t in tasks] == ["a", "b"]
    for t, (path, png) in zip(tasks, pngs.items()):
        assert [(p["model_version"], p["result"]) for p in t["predictions"]] == [
            ("round-1", exported[tasks.index(t)]["predictions"][0]["result"])]
        assert ls.get(t["data"]["image"]) == png  # the image bytes, through Label Studio
    assert httpx.get(label_studio.url + url).status_code == 401  # not without a login or token
    created = receiver.received("/hook", "TASKS_CREATED")
    assert created and {t["id"] for t in json.loads(created[0][3])["tasks"]} == {t["id"] for t in tasks}

    # A person picks "dog" for the first image (the model said "cat").
    ann = ls.create_annotation(tasks[0]["id"], choice("dog"), lead_time=2.5,
                               parent_prediction=tasks[0]["predictions"][0]["id"])
    assert ann["completed_by"] == 1 and ann["lead_time"] == 2.5 and not ann["was_cancelled"]
    assert ann["result"][0]["origin"] == "manual" and len(ann["result"][0]["id"]) == 10
    got = receiver.received("/hook", "ANNOTATION_CREATED")
    assert got and got[0][2]["Authorization"] == f"Bearer {HOOK_TOKEN}"
    record_or_check("webhook-annotation-created.json", got[0][3])
    payload = json.loads(got[0][3])
    assert payload["annotation"]["id"] == ann["id"] and payload["annotation"]["task"] == tasks[0]["id"]
    assert payload["annotation"]["result"][0]["value"] == {"choices": ["dog"]}
    assert payload["task"]["data"]["image_id"] == "a" and payload["project"]["id"] == pid
    ml_hook = receiver.received("/ml/webhook", "ANNOTATION_CREATED")
    assert ml_hook and "Authorization" not in ml_hook[0][2]  # the ML backend's webhook has no auth

    emails = ls.user_emails()
    assert emails[ann["completed_by"]] == label_studio.email
    for fmt, name in (("JSON", "export.json"), ("JSON_MIN", "export-min.json"), ("CSV", "export.csv")):
        record_or_check(name, ls.export(pid, fmt))
    rows, problems = parse_export(ls.export(pid).decode(), "export.json")
    assert problems == []
    assert rows == [("task 1 (id %d)" % tasks[0]["id"],
                     {"image_id": "a", "path": "a.png", "label": "dog", "annotator": "ls-user-1"})]
    minimal = json.loads(ls.export(pid, "JSON_MIN"))
    assert [(m["image_id"], m[LABEL], m["annotator"]) for m in minimal] == [("a", "dog", 1)]
    table = list(csv.DictReader(io.StringIO(ls.export(pid, "CSV").decode())))
    assert [(r["image_id"], r[LABEL], r["annotator"]) for r in table] == [("a", "dog", "1")]
    assert len(json.loads(ls.export(pid, all_tasks=True))) == 2

    # The person changes their mind, then deletes the answer.
    updated = ls.update_annotation(ann["id"], choice("cat"))
    assert updated["result"][0]["value"] == {"choices": ["cat"]}
    got = receiver.received("/hook", "ANNOTATION_UPDATED")
    assert got and json.loads(got[0][3])["annotation"]["result"][0]["value"] == {"choices": ["cat"]}
    record_or_check("webhook-annotation-updated.json", got[0][3])
    rows, _ = parse_export(ls.export(pid).decode(), "export.json")
    assert [r["label"] for _, r in rows] == ["cat"]

    ls.delete_annotation(ann["id"])
    got = receiver.received("/hook", "ANNOTATIONS_DELETED")
    assert got and json.loads(got[0][3])["annotations"] == [{"id": ann["id"]}]
    record_or_check("webhook-annotation-deleted.json", got[0][3])
    assert json.loads(ls.export(pid)) == []
    with pytest.raises(LabelStudioError, match="HTTP 404"):
        ls.delete_annotation(ann["id"])

    # A skipped task: the Skip button's annotation is read as no answer.
    skipped = ls.create_annotation(tasks[1]["id"], [], was_cancelled=True)
    assert skipped["was_cancelled"] is True
    got = receiver.received("/hook", "ANNOTATION_CREATED")
    assert len(got) == 2 and json.loads(got[1][3])["annotation"]["was_cancelled"] is True
    rows, problems = parse_export(ls.export(pid).decode(), "export.json")
    assert problems == [] and rows == [
        ("task 1 (id %d)" % tasks[1]["id"], {"image_id": "b", "path": "sub dir/b.png", "label": "", "annotator": ""})]

    # A task without predictions: opening it asks the ML backend, which answers "dog".
    assert ls.import_tasks(pid, [{"data": {"image": url, "image_id": "c", "path": "a.png"}}]) == 1
    new = [t for t in ls.tasks(pid) if t["data"]["image_id"] == "c"][0]
    assert new["predictions"] == []
    opened = ls.request("GET", f"/api/tasks/{new['id']}").json()
    predict = receiver.received("/ml/predict")
    assert predict, "Label Studio did not call the ML backend's /predict"
    assert predict[0][2]["Authorization"] == basic
    record_or_check("ml-predict.json", predict[0][3])
    sent = json.loads(predict[0][3])
    assert [t["id"] for t in sent["tasks"]] == [new["id"]] and sent["label_config"] == body["schema"]
    assert [(p["model_version"], p["result"][0]["value"]) for p in opened["predictions"]] == [
        (ML_VERSION, {"choices": ["dog"]})]

    # Everything the webhook got, in order: one POST per event, sent before the API call returned.
    # (The ML backend's own webhook, <url>/webhook, got the same events, without any auth header.)
    actions = [json.loads(body)["action"] for _, path, _, body in receiver.requests if path == "/hook"]
    assert actions == ["TASKS_CREATED", "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
                       "ANNOTATION_CREATED", "TASKS_CREATED"]
    ml_actions = [json.loads(body)["action"] for _, path, _, body in receiver.requests if path == "/ml/webhook"]
    assert ml_actions == actions


# --- what coldstart imports, as Label Studio keeps it --------------------------------------------------


@real
def test_rechecks_and_exported_human_labels_import_as_meant(label_studio, ls):
    """A re-check keeps its note and the person's label as a "human-label" prediction; an export's
    human label becomes an annotation (credited to the importing user) and reads back as that
    label; the config's note header is accepted with tasks that have no note."""
    from coldstart.tasks.labelstudio import HUMAN_LABEL_VERSION, export_tasks, review_tasks

    pid = ls.create_project(f"rechecks {time.time_ns()}", label_config(["cat", "dog"]))
    batch = [{"image_id": "u", "image": "u.png", "purpose": "uncertainty", "predicted_label": "cat",
              "confidence": "0.55", "model_id": "round-002/m", "source": "model", "note": ""},
             {"image_id": "r", "image": "r.png", "purpose": "recheck", "predicted_label": "dog",
              "confidence": "0.91", "model_id": "", "source": "human", "note": ""}]
    rows = [{"image_id": "h", "path": "h.png", "label": "dog", "source": "human", "confidence": 1.0},
            {"image_id": "m", "path": "m.png", "label": "cat", "source": "model", "confidence": 0.8}]
    assert ls.import_tasks(pid, review_tasks(batch, human={"r": "cat"}) + export_tasks(rows)) == 4
    got = {t["data"]["image_id"]: t for t in ls.tasks(pid)}
    [pred] = got["r"]["predictions"]
    assert pred["model_version"] == HUMAN_LABEL_VERSION and pred["result"][0]["value"] == {"choices": ["cat"]}
    assert got["r"]["data"]["purpose"] == "recheck" and "'dog'" in got["r"]["data"]["note"]
    assert [p["model_version"] for p in got["u"]["predictions"]] == ["round-002/m"] and "note" not in got["u"]["data"]
    [ann] = got["h"]["annotations"]
    assert ann["result"][0]["value"] == {"choices": ["dog"]} and got["h"]["predictions"] == []
    assert ls.user_emails()[ann["completed_by"]] == label_studio.email
    assert got["m"]["annotations"] == [] and got["m"]["predictions"][0]["result"][0]["value"] == {"choices": ["cat"]}
    rows_back, problems = parse_export(ls.export(pid).decode(), "export.json")
    assert problems == [] and [(r["image_id"], r["label"]) for _, r in rows_back] == [("h", "dog")]


@real
def test_preflight_checks_the_real_server_and_makes_the_title_valid(label_studio, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from coldstart.tasks.config import parse_params
    from coldstart.tasks.labelstudio import preflight

    params = parse_params({"ontology": {"classes": {"cat": ["a cat"], "dog": ["a dog"]}},
                           "labelstudio": {"url": label_studio.url}})
    ws = SimpleNamespace(root=tmp_path / "ws", params=lambda: params)  # a folder name Label Studio would refuse
    monkeypatch.setenv("LABEL_STUDIO_TOKEN", label_studio.token)
    found = preflight(ws)
    assert (found.title, found.user, found.project) == ("coldstart ws", label_studio.email, None)
    pid = found.client.create_project(found.title, label_config(["cat"]))  # accepted as it is
    found.client.close()
    again = preflight(ws)
    assert again.project == pid
    again.client.close()
    monkeypatch.setenv("LABEL_STUDIO_TOKEN", label_studio.token.rsplit(".", 1)[0] + ".c2lnbmF0dXJl")
    with pytest.raises(LabelStudioError, match="refused the personal access token"):
        preflight(ws)


@real
def test_a_project_with_an_older_coldstart_config_gets_the_new_choices(label_studio, tmp_path, monkeypatch):
    """After `coldstart discover --adopt` (or an upgrade that added "unknown"), `round --wait`
    brings an existing project's config up to date when it only adds choices."""
    from types import SimpleNamespace

    from coldstart.flows.wait import label_studio as ls_project
    from coldstart.tasks.config import parse_params

    params = parse_params({"ontology": {"classes": {"cat": ["a cat"], "dog": ["a dog"], "fox": ["a fox"]}},
                           "labelstudio": {"url": label_studio.url, "project": "coldstart adopt test"}})
    ws = SimpleNamespace(root=tmp_path / "ws", params=lambda: params)
    monkeypatch.setenv("LABEL_STUDIO_TOKEN", label_studio.token)
    client = LabelStudio(label_studio.url, label_studio.token)
    older = label_config(["cat", "dog"])  # before the class fox was adopted
    pid = client.create_project("coldstart adopt test", older)
    got_client, project = ls_project(ws)
    assert project == pid
    now = client.call("GET", f"/api/projects/{pid}")["label_config"]
    values = [c.get("value") for c in ET.fromstring(now).iter("Choice")]
    assert values == ["cat", "dog", "fox", "unknown"]
    got_client.close()
    client.close()
