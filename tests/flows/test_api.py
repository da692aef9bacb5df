"""`coldstart api` over a real workspace after a real round: Label Studio's ML backend protocol
(predict, webhook into the label log exactly once, retractions), signed image URLs, the
inspection endpoint, and the guards (token, body cap, traversal, bombs); and its access log
(method, path without the query, status, ms; never the token)."""

from __future__ import annotations

import base64
import io
import json
import logging
import time

import numpy as np
import pytest
from PIL import Image

from coldstart.flows.api import create_app
from coldstart.flows.round import labeling_round
from coldstart.tasks.demodata import write_digits
from coldstart.tasks.labellog import human_labels, read_events
from coldstart.tasks.tokens import api_token, image_url
from coldstart.tasks.version import init_workspace
from tests.conftest import tiny_params
from tests.corpus.make_images import _png_header_only

slow = pytest.mark.slow  # a real round first; the access-log tests at the end need none


@pytest.fixture(scope="module")
def served(prefect_harness, tmp_path_factory):
    """A workspace after one round, and a client of its API (a 64 KB body cap, to test it cheaply)."""
    from starlette.testclient import TestClient

    ws = init_workspace(tmp_path_factory.mktemp("api") / "ws", params_text=tiny_params(4))
    truth = write_digits(ws.images, n=10, size=40)
    labeling_round(workspace=str(ws.root))
    app = create_app(ws.root, max_body_mb=64 / 1024)
    token = api_token(ws)
    with TestClient(app) as client:
        yield ws, client, token, truth


def _auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _png(seed: int = 0, size=(40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@slow
def test_every_route_but_health_needs_the_token(served, caplog):
    ws, client, token, _ = served
    caplog.set_level(logging.INFO, logger="coldstart.api")
    assert client.get("/health").json()["status"] == "UP"
    assert client.post("/setup").status_code == 401
    assert client.post("/setup", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/setup", headers={"Authorization": token}).status_code == 401  # no scheme
    ok = client.post("/setup", headers=_auth(token))
    assert ok.status_code == 200 and ok.json()["model_version"].startswith("round-001/coldstart-tiny@random-seed0+")
    # Label Studio's ML backend settings send basic auth: any user, the token as password.
    basic = base64.b64encode(f"labelstudio:{token}".encode()).decode()
    assert client.post("/setup", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert client.post("/v1/classify", content=_png(), headers={"Content-Type": "image/png"}).status_code == 401
    # Each request is in the access log, refusals too; the token never is.
    assert "POST /setup -> 401" in caplog.text and "POST /setup -> 200" in caplog.text
    assert token not in caplog.text and basic not in caplog.text
    token_file = ws.state_dir / "api-token"
    assert token_file.stat().st_mode & 0o777 == 0o600 and token in token_file.read_text()


@slow
def test_an_oversized_body_gets_413_before_it_is_read(served):
    _, client, token, _ = served
    big = b"\0" * (65 * 1024)
    r = client.post("/v1/classify", content=big, headers={**_auth(token), "Content-Type": "image/png"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: cut off at the cap
        for _ in range(70):
            yield b"\0" * 1024

    r = client.post("/v1/classify", content=chunks(), headers={**_auth(token), "Content-Type": "image/png"})
    assert r.status_code == 413


@slow
def test_images_are_served_by_signed_expiring_url_only(served):
    ws, client, token, _ = served
    from coldstart.tasks.inference import image_index

    path, image_id = sorted(image_index(ws).items())[0]
    url = image_url("http://testserver", token, image_id)
    r = client.get(url)  # no header: the signature is the credential
    assert r.status_code == 200 and r.content == (ws.images / path).read_bytes()
    assert client.get(url.replace("sig=", "sig=0")).status_code == 404
    expired = image_url("http://testserver", token, image_id, days=-1)
    assert client.get(expired).status_code == 404
    for bad in ("../../../../etc/passwd", "..%2F..%2Fparams.yaml", "%2e%2e/%2e%2e/params.yaml", "0" * 64):
        assert client.get(f"/images/{bad}?exp={int(time.time()) + 60}&sig=x").status_code == 404


@slow
def test_predict_answers_each_task_sorted_by_confidence(served):
    ws, client, token, _ = served
    from coldstart.tasks.relabel import read_resolved

    tasks = json.loads((ws.review / "round-001.tasks.json").read_text(encoding="utf-8"))
    tasks.append({"id": 99, "data": {"image": "https://example.com/not-ours.png"}})
    r = client.post("/predict", json={"tasks": tasks, "project": "1.0"}, headers=_auth(token))
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == len(tasks)
    resolved = {row["image_id"]: row for row in read_resolved(ws)}
    for task, res in zip(tasks[:-1], results):
        [choice] = res["result"]
        assert choice["type"] == "choices" and choice["from_name"] == "label" and choice["to_name"] == "image"
        row = resolved[task["data"]["image_id"]]
        assert choice["value"]["choices"] == [row["label"]] and res["score"] == pytest.approx(row["confidence"], abs=1e-5)
        assert res["model_version"].startswith("round-001/")
    assert results[-1]["result"] == []  # not a workspace image: no made-up prediction
    # An image in data/images/ that no round has seen yet is run through the model.
    from tests.conftest import write_image

    write_image(ws.images / "late" / "new.png", seed=5, size=(40, 40))
    r = client.post("/predict", json={"tasks": [{"id": 7, "data": {"path": "late/new.png"}}]}, headers=_auth(token))
    [res] = r.json()["results"]
    assert res["result"][0]["value"]["choices"][0] in ws.params().ontology.class_names and 0 < res["score"] <= 1
    (ws.images / "late" / "new.png").unlink()


def _annotation(ann_id: int, label: str, updated: str, *, cancelled: bool = False) -> dict:
    return {"id": ann_id, "updated_at": updated, "was_cancelled": cancelled, "lead_time": 3.2,
            "completed_by": {"id": 1, "email": "ann@example.com"},
            "result": [] if cancelled else [{"from_name": "label", "to_name": "image", "type": "choices",
                                             "value": {"choices": [label]}}]}


@slow
def test_webhook_annotations_reach_the_log_exactly_once_and_deletions_retract(served):
    ws, client, token, truth = served
    tasks = json.loads((ws.review / "round-001.tasks.json").read_text(encoding="utf-8"))
    task = {"id": 1, "data": tasks[0]["data"]}
    image_id, label = task["data"]["image_id"], truth[tasks[0]["data"]["path"]]
    other = next(c for c in ws.params().ontology.class_names if c != label)
    before = len(read_events(ws))

    def send(action, ann):
        r = client.post("/webhook", json={"action": action, "annotation": ann, "task": task, "project": {"id": 1}},
                        headers=_auth(token))
        assert r.status_code == 200, r.text
        return r.json()

    created = _annotation(501, label, "2026-11-26T10:00:00Z")
    assert send("ANNOTATION_CREATED", created)["events_added"] == 1
    assert send("ANNOTATION_CREATED", created)["new"] == 0  # Label Studio retried: nothing doubled
    assert human_labels(read_events(ws))[image_id] == label
    assert send("ANNOTATION_UPDATED", _annotation(501, other, "2026-11-26T10:05:00Z"))["events_added"] == 1
    assert human_labels(read_events(ws))[image_id] == other
    assert send("ANNOTATION_DELETED", _annotation(501, other, "2026-11-26T10:05:00Z"))["status"] == "imported"
    assert image_id not in human_labels(read_events(ws))  # the deletion is honoured
    # A skipped (cancelled) annotation is recorded, and is not a label.
    send("ANNOTATION_CREATED", _annotation(502, label, "2026-11-26T10:06:00Z", cancelled=True))
    events = read_events(ws)
    assert events[-1].kind == "skip" and events[-1].annotator == "ann@example.com"
    assert image_id not in human_labels(events)
    assert sum(1 for e in events[before:] if not e.kind) == 2  # the two answers; retractions and skips aside
    # A bad answer is refused like a bad file, named, and kept in data/inbox/rejected/.
    bad = send("ANNOTATION_CREATED", _annotation(503, "not-a-class", "2026-11-26T10:07:00Z"))
    assert bad["events_added"] == 0 and "unknown class 'not-a-class'" in bad["problems"][0]
    assert len(list(ws.rejected.glob("*.errors.txt"))) == 1
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED"}, headers=_auth(token)).json()["status"] == \
        "ignored"
    # While a round holds the workspace, an annotation waits in the spool for that round's intake.
    with ws.lock():
        assert send("ANNOTATION_CREATED", _annotation(504, label, "2026-11-26T10:08:00Z"))["status"] == "queued"
    assert len(list((ws.inbox / ".label-studio").glob("*.json"))) == 1
    assert send("ANNOTATION_CREATED", _annotation(504, label, "2026-11-26T10:08:00Z"))["new"] == 0
    assert human_labels(read_events(ws))[image_id] == label  # imported by the next intake, once
    assert not list((ws.inbox / ".label-studio").glob("*.json"))


@slow
def test_classify_raw_and_multipart_and_keep(served):
    ws, client, token, _ = served
    classes = ws.params().ontology.class_names
    r = client.post("/v1/classify", content=_png(1), headers={**_auth(token), "Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    body = r.json()
    [res] = body["results"]
    assert res["label"] in classes and res["confidence"] == pytest.approx(max(res["probs"].values()))
    assert list(res["probs"]) == sorted(res["probs"], key=lambda c: -res["probs"][c])
    assert body["model_version"].startswith("round-001/")
    files = [("a", ("a.png", _png(2), "image/png")), ("b", ("b.png", _png(3), "image/png"))]
    r = client.post("/v1/classify?keep=true", files=files, headers=_auth(token))
    assert r.status_code == 200 and len(r.json()["results"]) == 2
    kept = [x["kept"] for x in r.json()["results"]]
    assert all((ws.root / k).is_file() and k.startswith("data/images/incoming/") for k in kept)
    assert client.post("/v1/classify", content=b"hello", headers={**_auth(token), "Content-Type": "text/plain"}
                       ).status_code == 415
    bomb = client.post("/v1/classify", content=_png_header_only(100_000, 100_000),
                       headers={**_auth(token), "Content-Type": "image/png"})
    assert bomb.status_code == 422 and "max_pixels" in bomb.json()["detail"]
    junk = client.post("/v1/classify", content=b"\x89PNG not really", headers={**_auth(token), "Content-Type": "image/png"})
    assert junk.status_code == 422 and "image 1" in junk.json()["detail"]
    for k in kept:
        (ws.root / k).unlink()


@slow
def test_label_studio_config_command_prints_the_projects_config(served, capsys):
    import xml.etree.ElementTree as ET

    from coldstart.flows.cli import main as cli

    ws, _, _, _ = served
    assert cli(["labelstudio", "config", "--workspace", str(ws.root)]) == 0
    root = ET.fromstring(capsys.readouterr().out)
    assert [c.get("value") for c in root.iter("Choice")] == ws.params().ontology.labels  # the classes, then unknown
    assert root.find("PolygonLabels") is None  # regions are off in this workspace


# --- the access log (no round needed) ---------------------------------------------------------------


def _logged_app():
    """A small app behind coldstart's access log and token check, as create_app stacks them."""
    from fastapi import Depends, FastAPI, Header, HTTPException

    from coldstart.flows.api import AccessLog, BodyLimit, authorized

    def require_token(authorization: str | None = Header(None)) -> None:  # (str annotations: this module's future import)
        if not authorized(authorization, "s3cret-token"):
            raise HTTPException(401, "missing or wrong token")

    app = FastAPI()

    @app.post("/webhook", dependencies=[Depends(require_token)])
    def webhook():
        return {"status": "imported"}

    @app.get("/images/{image_id}")
    def image(image_id: str, sig: str = ""):
        raise HTTPException(404, "no such image")

    @app.get("/boom")
    def boom():
        raise RuntimeError("bug")

    return AccessLog(BodyLimit(app, 1024))


def test_each_request_is_logged_without_query_or_token(caplog):
    from starlette.testclient import TestClient

    caplog.set_level(logging.INFO, logger="coldstart.api")
    with TestClient(_logged_app(), raise_server_exceptions=False) as client:
        assert client.post("/webhook", json={"action": "ANNOTATION_CREATED"}).status_code == 401  # LS's own webhook
        assert client.post("/webhook", json={}, headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert client.get("/images/abc?exp=1&sig=topsecretsig").status_code == 404
        assert client.post("/webhook", content=b"x" * 2048, headers={"Authorization": "Bearer s3cret-token"}
                           ).status_code == 413
        assert client.get("/boom").status_code == 500
    lines = [r.getMessage() for r in caplog.records if r.name == "coldstart.api"]
    assert [line.rsplit(" (", 1)[0] for line in lines] == [
        "POST /webhook -> 401", "POST /webhook -> 200", "GET /images/abc -> 404", "POST /webhook -> 413",
        "GET /boom -> 500"]
    assert all(line.endswith(" ms)") for line in lines)
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "coldstart.api")
    assert "s3cret-token" not in caplog.text and "topsecretsig" not in caplog.text and "exp=" not in caplog.text


def test_the_access_log_reaches_the_terminal_of_coldstart_api():
    """`coldstart api` runs at the CLI's WARNING level unless --verbose; the access log is INFO
    and still shows, on stderr, once and without a root handler too (serve() used as a library)."""
    import subprocess
    import sys

    code = ("import logging, sys\n"
            "from coldstart.flows.api import log_requests_to_terminal, access_log\n"
            "if sys.argv[1] == 'cli': logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')\n"
            "log_requests_to_terminal()\n"
            "access_log.info('POST /webhook -> 401 (1 ms)')\n"
            "logging.getLogger('coldstart.other').info('not shown')\n")
    for how in ("cli", "library"):
        out = subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stderr.count("POST /webhook -> 401 (1 ms)") == 1 and "not shown" not in out.stderr, out.stderr
        assert "coldstart.api" in out.stderr
