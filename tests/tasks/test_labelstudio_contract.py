"""Contract tests on what a real Label Studio (1.23.2) sent and exported, recorded verbatim in
tests/labelstudio/recorded/ by tests/labelstudio/test_lsclient.py: its three export formats
go through intake, and its webhook bodies through `coldstart api`, with only the image
reference pointed at this workspace's image (the recording's project had its own)."""

import copy
import json
from pathlib import Path

import pytest

from coldstart.tasks.intake import intake
from coldstart.tasks.labellog import human_labels, read_events
from tests.tasks.test_intake import ids, ws  # noqa: F401  (the fixture)

RECORDED = Path(__file__).parents[1] / "labelstudio" / "recorded"
CLASSES = ["cat", "dog"]


def _recorded(name: str):
    return json.loads((RECORDED / name).read_text(encoding="utf-8"))


def _point_at(data: dict, image_id: str, path: str) -> dict:
    return {**data, "image_id": image_id, "path": path, "image": "/data/local-files/?d=images/" + path}


@pytest.mark.parametrize("name", ["export.json", "export-min.json", "export.csv"])
def test_every_export_format_label_studio_writes_is_taken_in(ws, name):  # noqa: F811
    image_id = ids(ws)["b.jpg"]
    raw = (RECORDED / name).read_text(encoding="utf-8")
    if name == "export.csv":
        header, row = raw.splitlines()[:2]
        raw = header + "\n" + row.replace('"a.png"', '"b.jpg"').replace('?d=images/a.png', '?d=images/b.jpg') \
            .replace(',"a",', f',"{image_id}",') + "\n"
    else:
        tasks = json.loads(raw)
        for t in tasks:
            if "data" in t:
                t["data"] = _point_at(t["data"], image_id, "b.jpg")
            else:
                t.update(_point_at(t, image_id, "b.jpg"))
        raw = json.dumps(tasks)
    (ws.inbox / name).write_text(raw, encoding="utf-8")
    result = intake(ws, CLASSES, 2)
    assert result.files_accepted == [f"data/inbox/{name}"] and not result.problems, result.problems
    [event] = read_events(ws)
    assert (event.image_id, event.label, event.annotator) == (image_id, "dog", "ls-user-1")


def test_recorded_webhook_bodies_drive_the_label_log(ws, monkeypatch):  # noqa: F811
    from coldstart.flows.api import _webhook

    monkeypatch.setattr(type(ws), "params", lambda self: _params())
    image_id = ids(ws)["a.jpg"]
    created, updated = _recorded("webhook-annotation-created.json"), _recorded("webhook-annotation-updated.json")
    deleted = _recorded("webhook-annotation-deleted.json")
    for body in (created, updated):
        body["task"]["data"] = _point_at(body["task"]["data"], image_id, "a.jpg")
    assert _webhook(ws, created)["events_added"] == 1
    assert _webhook(ws, copy.deepcopy(created))["new"] == 0  # delivered twice: once in the log
    assert human_labels(read_events(ws)) == {image_id: created["annotation"]["result"][0]["value"]["choices"][0]}
    assert _webhook(ws, updated)["status"] == "imported"
    assert human_labels(read_events(ws)) == {image_id: updated["annotation"]["result"][0]["value"]["choices"][0]}
    # ANNOTATIONS_DELETED names the annotation by id only (no task): its answers are retracted.
    assert deleted["action"] == "ANNOTATIONS_DELETED" and "task" not in deleted
    assert _webhook(ws, deleted)["status"] == "imported"
    assert human_labels(read_events(ws)) == {}
    assert [e.kind for e in read_events(ws)] == ["retract", "", "retract", "", "retract"]


def _params():
    from coldstart.tasks.config import parse_params

    return parse_params({"ontology": {"classes": {"cat": ["a cat"], "dog": ["a dog"]}}})


def test_webhook_answers_are_recorded_under_the_annotators_email(ws, monkeypatch):  # noqa: F811
    """Label Studio's webhook names the annotator by user id (``completed_by: 1``); the email is
    in its user record, which `coldstart api` asks for (``labelstudio.Annotators``)."""
    from coldstart.flows.api import _webhook
    from coldstart.tasks.labelstudio import Annotators

    monkeypatch.setattr(type(ws), "params", lambda self: _params())
    created = _recorded("webhook-annotation-created.json")
    assert created["annotation"]["completed_by"] == 1  # as recorded: an id, no email
    created["task"]["data"] = _point_at(created["task"]["data"], ids(ws)["a.jpg"], "a.jpg")
    assert _webhook(ws, created, Annotators(lambda: {1: "reviewer@example.com"}))["events_added"] == 1
    [event] = [e for e in read_events(ws) if not e.kind]  # (an update retracts first: an answer and a retraction)
    assert event.annotator == "reviewer@example.com"

    # No email to be found (the server is away): the id, as before.
    def away():
        raise OSError("connection refused")

    updated = _recorded("webhook-annotation-updated.json")
    updated["task"]["data"] = _point_at(updated["task"]["data"], ids(ws)["a.jpg"], "a.jpg")
    assert _webhook(ws, updated, Annotators(away))["events_added"] == 1
    assert read_events(ws)[-1].annotator == "ls-user-1"


def test_polled_answers_are_recorded_under_the_annotators_email(ws):  # noqa: F811
    """`round --wait` polls the project's JSON export (``completed_by`` an id there too) and names
    the annotator from the server's user list."""
    from coldstart.flows.wait import fetch_answers

    export = _recorded("export.json")
    export[0]["data"] = _point_at(export[0]["data"], ids(ws)["b.jpg"], "b.jpg")

    class Server:
        def export(self, project, fmt):
            assert fmt == "JSON"
            return json.dumps(export).encode()

        def user_emails(self):
            return {1: "reviewer@example.com"}

    assert fetch_answers(ws, Server(), 2) == 1
    result = intake(ws, CLASSES, 2)
    assert result.events_added == 1
    [event] = [e for e in read_events(ws) if not e.kind]
    assert (event.image_id, event.label, event.annotator) == (ids(ws)["b.jpg"], "dog", "reviewer@example.com")
    assert fetch_answers(ws, Server(), 2) == 0  # the same version again: nothing new
