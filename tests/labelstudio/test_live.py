"""A round reviewed entirely in a real Label Studio (`make test-labelstudio`).

`coldstart api` runs as its own process; the project is made from coldstart's labeling config,
connected to it as ML backend (basic auth, the token as password) and webhook (bearer header);
`round --wait`'s push imports the round's tasks with their predictions and signed image URLs; a
person's clicks are posted through Label Studio's API as its UI posts them; every answer must
reach the label log exactly once (webhook and export polling both deliver), under the annotator's
email, an update must replace and a deletion retract, and the next round must train on what is
left; the API's terminal logs each request (the header-less webhook Label Studio adds: 401).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from coldstart.tasks.labelstudio import LABEL

pytestmark = pytest.mark.labelstudio

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _choice(label: str) -> list[dict]:
    return [{"from_name": LABEL, "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


def test_a_round_reviewed_in_label_studio_reaches_the_log_once_and_trains_the_next(label_studio, prefect_harness,
                                                                                      tmp_path, monkeypatch):
    from coldstart.flows.round import labeling_round
    from coldstart.flows.wait import fetch_answers, push_batch
    from coldstart.flows.wait import label_studio as ls_project
    from coldstart.tasks.demodata import write_digits
    from coldstart.tasks.labellog import human_labels, read_events
    from coldstart.tasks.lsclient import LabelStudio
    from coldstart.tasks.tokens import api_token
    from coldstart.tasks.version import init_workspace
    from tests.conftest import tiny_params

    timings = {}
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}"
    text = tiny_params(6) + (f"labelstudio:\n  url: {label_studio.url}\n  project: coldstart live test\n"
                             f"  images: api\n  api_url: {api_url}\n")
    ws = init_workspace(tmp_path / "ws", params_text=text)
    truth = write_digits(ws.images, n=16, size=40)
    r1 = labeling_round(workspace=str(ws.root))
    token = api_token(ws)
    # The API names annotators by email: it reads Label Studio's users with the same token.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "LABEL_STUDIO_TOKEN": label_studio.token}
    t0 = time.perf_counter()
    api_log = tmp_path / "api.log"
    with open(api_log, "wb") as out:
        api = subprocess.Popen([sys.executable, "-m", "coldstart.flows.cli", "api", "--workspace", str(ws.root),
                                "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{api_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        timings["api_start_s"] = time.perf_counter() - t0
        monkeypatch.setenv("LABEL_STUDIO_TOKEN", label_studio.token)

        # The project, as a user sets it up: coldstart's config, the ML backend, the webhook.
        t0 = time.perf_counter()
        client, project = ls_project(ws)
        ml = LabelStudio(label_studio.url, label_studio.token)
        ml.connect_ml_backend(project, api_url, basic_auth=("labelstudio", token))
        ml.add_webhook(project, f"{api_url}/webhook", headers={"Authorization": f"Bearer {token}"},
                       actions=["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"])
        pushed = push_batch(ws, 1, client, project)
        timings["setup_and_push_s"] = time.perf_counter() - t0
        assert pushed == r1.select.batch_size
        tasks = client.tasks(project)
        assert len(tasks) == pushed
        # Label Studio pre-selects only the predictions of the project's model_version: every pushed
        # task's prediction carries it, and the labeling stream shows a suggestion (with the backend
        # connected, Label Studio may show the backend's fresh one instead).
        version = client.call("GET", f"/api/projects/{project}")["model_version"]
        assert version == "coldstart"
        for t in tasks:
            stored = client.call("GET", f"/api/tasks/{t['id']}")["predictions"]
            assert version in {p["model_version"] for p in stored}, stored
        assert client.call("GET", f"/api/projects/{project}/next/")["predictions"]
        # Each task carries coldstart's prediction (a score to sort by) and a signed image URL
        # that Label Studio's browser can fetch without the token.
        for t in tasks:
            assert t["data"]["image"].startswith(f"{api_url}/images/{t['data']['image_id']}?exp=")
        img = httpx.get(tasks[0]["data"]["image"], timeout=10)
        assert img.status_code == 200 and img.content == (ws.images / tasks[0]["data"]["path"]).read_bytes()

        # A person labels every task; then changes one answer and deletes another.
        t0 = time.perf_counter()
        anns = {}
        # The last task fits no class: the annotator picks the config's "None of these" choice.
        for t in tasks:
            answer = "unknown" if t is tasks[-1] else truth[t["data"]["path"]]
            anns[t["id"]] = client.create_annotation(t["id"], _choice(answer))
        timings["annotate_s"] = time.perf_counter() - t0
        first, second = tasks[0], tasks[1]
        wrong = next(c for c in ws.params().ontology.class_names if c != truth[first["data"]["path"]])
        client.update_annotation(anns[first["id"]]["id"], _choice(wrong))
        client.delete_annotation(anns[second["id"]]["id"])
        time.sleep(1.0)  # webhooks are sent during the API calls; give the last one a moment

        events = read_events(ws)
        answers = [e for e in events if not e.kind]
        per_annotation = Counter(e.source_file for e in answers)
        # Exactly once: one answer per annotation version (the update is a second version).
        assert sorted(per_annotation.values()) == [1] * (len(tasks) - 1) + [2]
        assert {e.annotator for e in answers} == {label_studio.email}  # by email, not ls-user-1
        labels = human_labels(events)
        assert labels[first["data"]["image_id"]] == wrong
        assert labels[tasks[-1]["data"]["image_id"]] == "unknown"  # "none of these", through the webhook
        assert second["data"]["image_id"] not in labels  # the deletion is honoured
        assert len(labels) == len(tasks) - 1
        # Polling the export (round --wait's path) brings the same versions again: nothing new.
        assert fetch_answers(ws, client, project) == 0
        assert len(read_events(ws)) == len(events)

        # The next round trains on exactly those answers.
        t0 = time.perf_counter()
        r2 = labeling_round(workspace=str(ws.root))
        timings["round2_s"] = time.perf_counter() - t0
        assert r2.intake.events_added == 0 and r2.train.n_labels == len(tasks) - 1
        # Label Studio asks the backend for a prediction when a task without one is opened.
        new_task = {"data": {"image_id": tasks[1]["data"]["image_id"], "path": tasks[1]["data"]["path"],
                             "image": tasks[1]["data"]["image"]}}
        client.import_tasks(project, [new_task])
        newest = max(client.tasks(project), key=lambda t: t["id"])
        opened = client.call("GET", f"/api/tasks/{newest['id']}")
        preds = opened.get("predictions") or client.call("GET", f"/api/predictions?task={newest['id']}")
        assert preds, "Label Studio did not get a prediction from coldstart's /predict"
        pred = preds[0] if isinstance(preds[0], dict) else client.call("GET", f"/api/predictions/{preds[0]}")
        assert pred["model_version"].startswith("round-002/") and pred["result"][0]["type"] == "choices"
        # The API's terminal shows every request: our webhook's (200) and the one Label Studio
        # added when the backend was connected, which sends no token (401); never the token.
        shown = api_log.read_text(errors="replace")
        assert "coldstart.api" in shown and "POST /webhook -> 200" in shown and "POST /webhook -> 401" in shown, \
            shown[-3000:]
        assert "POST /predict -> 200" in shown and "GET /images/" in shown and token not in shown
        assert "sig=" not in shown
    finally:
        os.killpg(api.pid, 15)
        api.wait(timeout=30)
        print("\nlive Label Studio timings:", json.dumps({k: round(v, 2) for k, v in timings.items()}))
