"""`coldstart api`: one small web service over a workspace, for Label Studio and for cameras.

- Label Studio's ML backend protocol (label-studio-ml-backend's ``api.py``): ``GET /health``,
  ``POST /setup``, ``POST /predict`` (one ``choices`` prediction per task, ``score`` = the
  confidence, so Label Studio's Data Manager can sort the least confident first) and ``POST
  /webhook`` (annotations created, updated, deleted: into the label log through the same
  validation as answer files, exactly once each; ``START_TRAINING`` starts a round).
- ``GET /images/{image_id}?exp=...&sig=...``: a workspace image, for Label Studio's browser,
  which fetches images without our header: the URL carries an expiring HMAC signature instead.
- ``POST /v1/classify``: an inspection endpoint. A raw image body (``Content-Type: image/*``)
  or a multipart form with several images -> label, confidence, top-k probabilities, the
  model version and, with regions enabled, the defect's outline. ``?keep=true`` adds the image
  to data/images/incoming/ for the next round. Concurrent requests share forward passes
  (``inference.Batcher``).

Security: every route but ``/health`` needs the workspace's token (``.coldstart/api-token``,
made on first use, mode 0600, never logged), as ``Authorization: Bearer <token>`` or as the
password of HTTP basic auth (what Label Studio's ML backend settings can send), compared in
constant time; bodies over ``--max-body-mb`` get 413 before they are read.

Every request is logged (logger ``coldstart.api``, INFO, on the terminal of `coldstart api`):
method, path without its query string (a signed image URL's signature stays out), status and
milliseconds; never a header, so never the token. A webhook Label Studio sends without the
token shows up as ``POST /webhook -> 401``.
"""

# No `from __future__ import annotations` here: FastAPI reads the route functions' annotations
# (Request, query types), which must be real objects, not strings.
import base64
import hmac
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from coldstart.tasks import labelstudio
from coldstart.tasks.errors import WorkspaceError
from coldstart.tasks.imagefiles import ImageDecodeError, load_rgb
from coldstart.tasks.inference import Batcher, ImageIndex, Labeler, Outliner
from coldstart.tasks.intake import ANSWER_ACTIONS, DELETE_ACTIONS, spool_annotation
from coldstart.tasks.labelstudio import Annotators
from coldstart.tasks.stages import Context, take_in
from coldstart.tasks.tokens import TOKEN_FILE, api_token, sign_image
from coldstart.tasks.workspace import Workspace, atomic_write_bytes

log = logging.getLogger(__name__)
access_log = logging.getLogger("coldstart.api")  # one line per request (AccessLog)

HEX64 = re.compile(r"^[0-9a-f]{64}$")


# --- the token ------------------------------------------------------------------------------------


def authorized(header: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, or basic auth whose password is the token."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return hmac.compare_digest(value.encode(), token.encode())
    if scheme.lower() == "basic":
        try:
            _, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(password.encode(), token.encode())
    return False


# --- the body cap ---------------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: a request whose declared ``Content-Length`` is over ``max_bytes`` gets 413
    before any of its body is read; a chunked one is cut off (413) as soon as it passes it."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                return await self._too_large(send)
            return await self.app(scope, receive, send)
        # No declared length (chunked): read it here, up to the cap, and hand the app a replay.
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                return await self._too_large(send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send):
        body = (b'{"detail": "request body over the limit of %d MB (coldstart api --max-body-mb)"}'
                % (self.max_bytes // 2**20))
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


# --- the access log -------------------------------------------------------------------------------


class AccessLog:
    """ASGI middleware: one INFO line per request on ``coldstart.api``, ``METHOD /path -> status
    (N ms)``. The path is logged without its query string and no header is looked at, so neither
    an image URL's signature nor the token can reach the log. A request that ends without a
    response (the client went away) logs status 0; one that raises logs 500 and re-raises."""

    def __init__(self, app, logger: logging.Logger = access_log):
        self.app, self.log = app, logger

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), 0

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except BaseException:
            status = status or 500
            raise
        finally:
            path = scope.get("path") or "/"
            self.log.info("%s %s -> %d (%.0f ms)", scope.get("method", "?"), path if len(path) <= 200 else
                          path[:200] + "...", status, (time.perf_counter() - t0) * 1000)


def log_requests_to_terminal(logger: logging.Logger = access_log) -> None:
    """Make the access log reach the terminal at INFO whatever the command's log level: the
    logger's own level, and its own stderr handler unless the root logger has one to pass it to
    (the CLI's ``basicConfig``)."""
    logger.setLevel(logging.INFO)
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


# --- the app --------------------------------------------------------------------------------------


def create_app(workspace: str | Path, *, max_body_mb: float = 20.0, batch_images: int = 32, batch_wait_ms: float = 5.0):
    """The FastAPI app over the workspace at ``workspace`` (wrapped in the body cap)."""
    ws = Workspace.open(workspace)
    token = api_token(ws)
    labeler = Labeler(ws)
    batcher = Batcher(labeler, max_images=batch_images, max_wait_ms=batch_wait_ms)
    app = FastAPI(title="coldstart", description=(__doc__ or "").split("\n\n")[0], docs_url=None, redoc_url=None)
    app.state.ws, app.state.labeler, app.state.batcher = ws, labeler, batcher

    def require_token(request: Request) -> None:
        if not authorized(request.headers.get("authorization"), token):
            raise HTTPException(401, "missing or wrong token: send 'Authorization: Bearer <token>' (the token is in "
                                     "the workspace's .coldstart/api-token)", headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(require_token)]
    index = ImageIndex(ws)
    _backend_routes(app, ws, auth, index, Annotators.for_workspace(ws))  # annotators by email (labelstudio.url)
    _inspection_routes(app, ws, auth, token, index)

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError):
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    app.router.on_shutdown.append(batcher.close)
    return AccessLog(BodyLimit(app, int(max_body_mb * 2**20)))


def _backend_routes(app: FastAPI, ws: Workspace, auth: list, index: ImageIndex, annotators: Annotators) -> None:
    """Label Studio's ML backend protocol: /health, /setup, /predict, /webhook."""
    labeler, batcher = app.state.labeler, app.state.batcher

    @app.get("/health")
    def health():
        return {"status": "UP", "model_class": "coldstart"}

    @app.post("/setup", dependencies=auth)
    def setup():
        labeler.refresh()
        return {"model_version": labeler.model_version}

    @app.post("/predict", dependencies=auth)
    async def predict(request: Request):
        body = await _json(request)
        tasks = body.get("tasks") if isinstance(body, dict) else None
        if not isinstance(tasks, list):
            raise HTTPException(422, "expected {'tasks': [...]} as Label Studio sends it")
        return {"results": await run_in_threadpool(_predict_tasks, ws, labeler, batcher, index, tasks)}

    @app.post("/webhook", dependencies=auth)
    async def webhook(request: Request):
        body = await _json(request)
        if not isinstance(body, dict) or not isinstance(body.get("action"), str):
            raise HTTPException(422, "expected a Label Studio webhook body with an 'action'")
        return await run_in_threadpool(_webhook, ws, body, annotators)


def _inspection_routes(app: FastAPI, ws: Workspace, auth: list, token: str, index: ImageIndex) -> None:
    """Signed image URLs (/images/ID) and the inspection endpoints (/v1/classify, /v1/model)."""
    labeler, batcher = app.state.labeler, app.state.batcher
    outliner = Outliner(ws, labeler.params)

    @app.get("/images/{image_id}")
    def image(image_id: str, exp: int = 0, sig: str = ""):
        # 404 for anything that is not a signed, current URL of a workspace image: a path in the
        # id, a wrong signature and an unknown image look the same from outside.
        if not HEX64.match(image_id) or exp < time.time() or not hmac.compare_digest(
                sig.encode(), sign_image(token, image_id, exp).encode()):
            raise HTTPException(404, "no such image")
        path = _image_path(ws, index, image_id)
        if path is None:
            raise HTTPException(404, "no such image")
        return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/v1/classify", dependencies=auth)
    async def classify(request: Request, keep: bool = False):
        results = await run_in_threadpool(_classify, ws, labeler, batcher, await _image_blobs(request), keep, outliner)
        return {"model_version": labeler.model_version, "results": results}

    @app.get("/v1/model", dependencies=auth)
    def model():
        labeler.refresh()
        return {"model_version": labeler.model_version, "classes": labeler.classes, "embedding_model":
                labeler.clip.model_id}


async def _image_blobs(request: Request) -> list[tuple[str, bytes]]:
    """The images of a /v1/classify request: a raw image body, or the files of a multipart form."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return [("body", await request.body())]
    if ctype == "multipart/form-data":
        form = await request.form(max_files=64, max_fields=64)
        blobs = [(str(k), await v.read()) for k, v in form.multi_items() if hasattr(v, "read")]
        if not blobs:
            raise HTTPException(422, "the multipart form holds no file: send the images as file fields")
        return blobs
    raise HTTPException(415, f"send an image (Content-Type image/jpeg, image/png, ...) or a multipart form "
                             f"of images, not {ctype or 'no content type'}")


async def _json(request):

    try:
        return await request.json()
    except ValueError as e:
        raise HTTPException(422, f"the body is not JSON ({str(e)[:200]})") from None


def _image_path(ws: Workspace, index, image_id: str) -> Path | None:
    """The file of a workspace image (its first path in the manifest), inside data/images/ only."""
    path = index.refresh().first_path.get(image_id)
    if path is None:
        return None
    p = (ws.images / path).resolve()
    return p if p.is_relative_to(ws.images.resolve()) and p.is_file() else None


# --- Label Studio ---------------------------------------------------------------------------------


def _task_image(task: dict, index: dict[str, str]) -> tuple[str | None, str | None]:
    """(image id, path relative to data/images/) a Label Studio task names: ``data.image_id``
    (what coldstart exports), else ``data.path``, else the image URL (local files or this API)."""

    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict):
        return None, None
    fields = {k: v for k, v in data.items() if isinstance(v, str)}
    image_id, path, url = fields.get("image_id"), fields.get("path"), fields.get(labelstudio.IMAGE, "")
    if path is None and url.startswith(labelstudio.LOCAL_FILES_PREFIX):
        path = url[len(labelstudio.LOCAL_FILES_PREFIX):]
    if image_id is None:
        m = re.search(r"/images/([0-9a-f]{64})(?:\?|$)", url)
        image_id = m.group(1) if m else (index.get(path) if path else None)
    return image_id, path


def _predict_tasks(ws: Workspace, labeler, batcher, index, tasks: list) -> list[dict]:
    """One prediction per task, in order: from the resolved table for images the workspace
    knows, a forward pass for images in data/images/ not labeled yet, an empty one otherwise."""

    labeler.refresh()
    named = [_task_image(t, index.refresh().by_path) for t in tasks]
    known = labeler.known([i for i, _ in named if i])
    version = labeler.model_version
    out = []
    for task, (image_id, path) in zip(tasks, named):
        pred = known.get(image_id) if image_id else None
        if pred is None and path:
            file = (ws.images / path).resolve()
            if file.is_relative_to(ws.images.resolve()) and file.is_file():
                try:
                    with load_rgb(file, labeler.params.scan, draft=labeler.draft) as img:
                        pred = batcher.submit(labeler.prepare(img.convert("RGB"), image_id=image_id or "")).result()
                except Exception as e:  # one bad image costs its task's prediction, not the batch
                    log.warning("predict: task %s: %s", task.get("id"), e)
        if pred is None:
            log.warning("predict: task %s names no image of this workspace (data.image_id, data.path or a "
                        "local-files URL under data/images/); no prediction", task.get("id") if isinstance(task, dict)
                        else "?")
            out.append({"result": [], "score": 0.0, "model_version": version})
            continue
        out.append({"result": [{"from_name": labelstudio.LABEL, "to_name": labelstudio.IMAGE, "type": "choices",
                                "value": {"choices": [pred.label]}}],
                    "score": round(pred.confidence, 6), "model_version": version})
    return out


def _webhook(ws: Workspace, body: dict, annotators=None) -> dict:
    """Annotations into the label log (through the spool: at once when no round holds the
    workspace, else by that round's intake); START_TRAINING starts a round. ``annotators`` (a
    ``labelstudio.Annotators``) names each annotation's annotator by email where Label Studio
    sent only the user's id; without it, or when the email cannot be found, intake records
    ``ls-user-<id>``."""

    action = body["action"]
    if action == "START_TRAINING":
        return _start_round(ws)
    if action not in ANSWER_ACTIONS + DELETE_ACTIONS:
        return {"status": "ignored", "action": action}
    task = body.get("task") if isinstance(body.get("task"), dict) else None
    annotations = body.get("annotations") if action == "ANNOTATIONS_DELETED" else [body.get("annotation")]
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        return {"status": "ignored", "action": action, "reason": "no annotation object in the body"}
    spooled = 0
    for ann in annotations:
        if annotators is not None and action in ANSWER_ACTIONS:
            ann = annotators.named(ann)
        try:
            _, _, known = spool_annotation(ws, action, ann, task)
        except ValueError as e:
            return {"status": "ignored", "action": action, "reason": str(e)}
        spooled += not known
    params = ws.params()
    try:
        with ws.lock():
            result = take_in(ws, Context(params, ws.next_round()))
    except WorkspaceError:  # a round is running: its intake takes the spooled annotation in
        return {"status": "queued", "action": action, "new": spooled}
    for problem in result.problems:  # the server's log shows a refused annotation, not only the response
        log.warning("REJECTED %s", problem)
    return {"status": "imported", "action": action, "new": spooled, "events_added": result.events_added,
            "problems": result.problems}


def _start_round(ws: Workspace) -> dict:
    """Label Studio's "Start training": a round in its own process (the API stays responsive);
    its output goes to .coldstart/api-round.log."""

    try:
        with ws.lock():
            pass  # free now; the round takes it itself
    except WorkspaceError:
        return {"status": "busy", "detail": "a round is already running"}
    log_file = open(ws.state_dir / "api-round.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "coldstart.flows.cli", "round", "--workspace", str(ws.root)],
                            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    log_file.close()
    return {"status": "started", "pid": proc.pid, "log": ws.rel(ws.state_dir / "api-round.log")}


# --- inspection -----------------------------------------------------------------------------------


def _classify(ws: Workspace, labeler, batcher, blobs: list[tuple[str, bytes]], keep: bool, outliner=None
              ) -> list[dict]:
    """Decode (the scan's guarded decoder and limits), batch, predict, outline defects (regions
    enabled); keep the bytes if asked."""
    labeler.refresh()
    prepared: list[tuple] = []
    pixels: list[np.ndarray | None] = []
    for k, (name, data) in enumerate(blobs, start=1):
        try:
            with load_rgb(name, labeler.params.scan, data=data, draft=labeler.draft) as img:
                fmt = (img.format or "").lower()
                rgb = img.convert("RGB")
                prepared.append((labeler.prepare(rgb, data=data), fmt, data))
                pixels.append(np.asarray(rgb) if outliner is not None and outliner.enabled else None)
        except ImageDecodeError as e:
            raise ValueError(f"image {k} ({name}): {e}") from None
    futures = [batcher.submit(v) for v, _, _ in prepared]
    out = []
    for (views, fmt, data), fut, array in zip(prepared, futures, pixels):
        pred = fut.result()
        if array is not None:
            pred.regions = outliner.outline(pred, array)
        res = pred.to_dict()
        if keep:
            res["kept"] = _keep(ws, views.image_id, fmt, data)
        out.append(res)
    return out


def _keep(ws: Workspace, image_id: str, fmt: str, data: bytes) -> str:
    """Save an inspected image under data/images/incoming/ (named by content: sent twice, kept once)."""

    ext = {"jpeg": ".jpg", "mpo": ".jpg", "tiff": ".tif"}.get(fmt, f".{fmt or 'img'}")
    path = ws.images / "incoming" / f"{image_id[:16]}{ext}"
    if not path.exists():
        atomic_write_bytes(path, data)
    return ws.rel(path)


def serve(workspace: str, host: str = "127.0.0.1", port: int = 8750, max_body_mb: float = 20.0) -> None:
    """Run the API with uvicorn until interrupted."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("coldstart api listens on %s: reachable from other machines; the token is the only guard "
                    "(put it behind TLS)", host)
    app = create_app(workspace, max_body_mb=max_body_mb)
    log_requests_to_terminal()  # our access log (AccessLog), not uvicorn's: it would print query strings
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def cmd_api(a) -> int:
    """`coldstart api`: make the token, say where it is, serve until interrupted."""
    ws = Workspace.open(a.workspace)
    api_token(ws)  # made now, so the message below can point at it
    print(f"coldstart api on http://{a.host}:{a.port} for {ws.root}\n  token: {ws.state_dir / TOKEN_FILE} "
          f"(send 'Authorization: Bearer <token>'; Label Studio: basic auth, any user, the token as password)",
          flush=True)
    serve(str(ws.root), host=a.host, port=a.port, max_body_mb=a.max_body_mb)
    return 0
