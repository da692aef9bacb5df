"""`coldstart round --wait` without a Label Studio server: the batch's answers are awaited as
files, taken in as they come, and the next round trains on them; only new answers count (a
re-check's earlier label is why it is asked, not an answer); a live wait checks its project
title, server and token before it pushes anything."""

from __future__ import annotations

import pytest

from coldstart.flows.round import labeling_round
from coldstart.flows.wait import wait_for_answers
from coldstart.tasks.demodata import answer_batch, write_digits
from coldstart.tasks.labellog import human_labels, read_events
from coldstart.tasks.version import init_workspace
from tests.conftest import tiny_params


@pytest.mark.slow
def test_waiting_takes_answers_in_as_they_come_then_the_next_round_learns(prefect_harness, tmp_path, capsys):
    import csv

    ws = init_workspace(tmp_path / "ws", params_text=tiny_params(4))
    truth = write_digits(ws.images, n=12, size=40)
    r1 = labeling_round(workspace=str(ws.root))
    batch = list(csv.DictReader(open(ws.review / "round-001.csv", encoding="utf-8")))
    polls = []

    def person_answers_half_then_the_rest(_seconds):  # what happens between two polls
        polls.append(len(polls))
        rows = batch[:2] if len(polls) == 1 else batch[2:]
        part = ws.review / f"part-{len(polls)}.csv"
        with open(part, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(batch[0]))
            w.writeheader()
            w.writerows(rows)
        answer_batch(part, truth, ws.inbox)
        part.unlink()

    waited = wait_for_answers(ws, 1, poll_s=0, sleep=person_answers_half_then_the_rest)
    assert (waited.asked, waited.wanted, waited.answered, waited.timed_out) == (r1.select.batch_size,) * 3 + (False,)
    assert len(polls) == 2  # two files, each taken in on its poll
    assert len(human_labels(read_events(ws))) == r1.select.batch_size
    assert all(e.round == 2 for e in read_events(ws))  # taken in for the round that follows
    r2 = labeling_round(workspace=str(ws.root))
    assert not r2.nothing_new and r2.train.n_labels == r1.select.batch_size
    assert r2.intake.events_added == 0  # already in the log: the round did not import them twice
    # ... yet its summary counts them: this round's answers, whoever took them in.
    assert r2.intake.round_answers == {"files": r1.select.batch_size}
    assert f"{r1.select.batch_size} answer(s) this round" in r2.describe()
    from coldstart.flows.wait import latest_batch

    assert latest_batch(ws) == 2  # what a `round --wait` with nothing new waits on

    # Nobody answers: the wait ends at its timeout with what came.
    waited = wait_for_answers(ws, 2, poll_s=0, timeout_min=0.0005, sleep=lambda s: None)
    assert waited.timed_out and waited.answered == 0 and waited.asked == r2.select.batch_size

    # `round --wait` with nothing new waits on the open batch (no advice to drop files or --force),
    # and makes no round when nobody answered.
    from coldstart.flows.cli import main as cli

    capsys.readouterr()
    assert cli(["round", "-w", str(ws.root), "--wait", "--timeout", "0.0005"]) == 0
    out = capsys.readouterr().out
    assert "nothing new since round 2: round 2's batch is still open" in out and "--force" not in out, out
    assert "waiting for answers to round 2's batch" in out and ws.round_tags() == [1, 2]


# --- fast: a scanned workspace, no round ------------------------------------------------------------

CLASSES = ["cat", "dog"]


@pytest.fixture
def ws(tmp_path):
    from coldstart.tasks.config import ScanConfig
    from coldstart.tasks.scan import scan
    from coldstart.tasks.workspace import Workspace
    from tests.conftest import write_image

    root = tmp_path / "ws"
    root.mkdir()
    (root / "params.yaml").write_text("ontology:\n  classes:\n    cat: [a cat]\n    dog: [a dog]\n")
    w = Workspace(root)
    for k in range(6):
        write_image(w.images / f"i{k}.jpg", seed=k, fmt="JPEG")
    scan(w, ScanConfig(), round_no=1)
    w.inbox.mkdir(parents=True, exist_ok=True)
    return w


def _answer(ws, name, rows):
    (ws.inbox / name).write_text("image,label,annotator\n" + "".join(f"{p},{lab},ann\n" for p, lab in rows),
                                 encoding="utf-8")


def _batch(ws, round_no, rows):
    from coldstart.tasks.select import BATCH_FIELDS
    from coldstart.tasks.workspace import write_csv

    write_csv(ws.review / f"round-{round_no:03d}.batch.csv", BATCH_FIELDS, [
        dict(image_id=i, image=p, purpose=purpose, predicted_label="dog", confidence="0.9", source="", model_id="",
             score="", round=round_no, note="") for i, p, purpose in rows])


def test_only_new_answers_count_not_the_labels_that_put_rechecks_in_the_batch(ws):
    from coldstart.tasks.intake import intake
    from coldstart.tasks.manifest import read_manifest

    ids = {r["path"]: r["image_id"] for r in read_manifest(ws)}
    # Round 1 took in two human labels; round 1's batch asks 5 images, two of them those labels again.
    _answer(ws, "before.csv", [("i0.jpg", "cat"), ("i1.jpg", "cat")])
    intake(ws, CLASSES, 1)
    _batch(ws, 1, [(ids["i0.jpg"], "i0.jpg", "recheck"), (ids["i1.jpg"], "i1.jpg", "recheck")]
           + [(ids[p], p, "uncertainty") for p in ("i2.jpg", "i3.jpg", "i4.jpg")])
    polls = []

    def person(_seconds):  # between polls: first the 3 new images, then both re-checks
        polls.append(1)
        _answer(ws, f"part-{len(polls)}.csv", [("i2.jpg", "cat"), ("i3.jpg", "dog"), ("i4.jpg", "dog")]
                if len(polls) == 1 else [("i0.jpg", "cat"), ("i1.jpg", "dog")])

    waited = wait_for_answers(ws, 1, answers=5, poll_s=0, timeout_min=5, sleep=person)
    assert (waited.asked, waited.wanted, waited.answered, waited.rechecks) == (5, 5, 5, 2)
    assert len(polls) == 2  # 3 new answers are not 5, however many old labels the batch holds
    # A timed-out wait reports what came: nothing new for a batch of re-checks only.
    _batch(ws, 2, [(ids["i0.jpg"], "i0.jpg", "recheck")])
    waited = wait_for_answers(ws, 2, poll_s=0, timeout_min=0.0001, sleep=lambda s: None)
    assert waited.timed_out and (waited.answered, waited.rechecks) == (0, 1)


def test_a_live_wait_checks_the_project_title_before_it_pushes(ws, monkeypatch):
    from coldstart.tasks.errors import ConfigError

    _batch(ws, 1, [("x" * 64, "i0.jpg", "uncertainty")])
    (ws.params_file).write_text(ws.params_file.read_text() + "labelstudio:\n  url: http://127.0.0.1:9\n"
                                                             "  project: ws\n")
    monkeypatch.setenv("LABEL_STUDIO_TOKEN", "t")
    with pytest.raises(ConfigError, match="labelstudio.project 'ws'.*3 to 50 characters"):
        wait_for_answers(ws, 1, poll_s=0, timeout_min=0.0001, sleep=lambda s: None)
    # The folder's name as the default title is made valid instead; then the server is checked.
    (ws.params_file).write_text(ws.params_file.read_text().replace("  project: ws\n", ""))
    from coldstart.tasks.lsclient import LabelStudioError

    with pytest.raises(LabelStudioError, match="cannot reach Label Studio at http://127.0.0.1:9"):
        wait_for_answers(ws, 1, poll_s=0, timeout_min=0.0001, sleep=lambda s: None)


def test_labelstudio_check_runs_the_preflight_from_the_command_line(tmp_path, monkeypatch, capsys):
    from coldstart.flows.cli import main as cli

    root = tmp_path / "ws"
    root.mkdir()
    params = "ontology:\n  classes:\n    cat: [a cat]\n    dog: [a dog]\n"
    (root / "params.yaml").write_text(params)
    assert cli(["labelstudio", "check", "--workspace", str(root)]) == 0
    assert "labelstudio.url is not set" in capsys.readouterr().out
    (root / "params.yaml").write_text(params + "labelstudio:\n  url: http://127.0.0.1:9\n  project: ws\n")
    monkeypatch.setenv("LABEL_STUDIO_TOKEN", "t")
    assert cli(["labelstudio", "check", "--workspace", str(root)]) == 2
    assert "labelstudio.project 'ws' is 2 character(s) long" in capsys.readouterr().err
    (root / "params.yaml").write_text(params + "labelstudio:\n  url: http://127.0.0.1:9\n")
    assert cli(["labelstudio", "check", "--workspace", str(root)]) == 2
    assert "cannot reach Label Studio at http://127.0.0.1:9" in capsys.readouterr().err


def test_the_project_is_created_with_coldstarts_config_and_its_images_storage(ws, caplog):
    from coldstart.flows.wait import label_studio
    from coldstart.tasks import labelstudio
    from coldstart.tasks.lsclient import LabelStudioError

    class Server:
        def __init__(self, refuse=False):
            self.calls, self.refuse = [], refuse

        def find_project(self, title):
            return None

        def create_project(self, title, config):
            self.calls.append(("create", title, config))
            return 7

        def add_local_storage(self, project, path):
            self.calls.append(("storage", project, path))
            if self.refuse:
                raise LabelStudioError("Label Studio rejected POST /api/storages/localfiles (HTTP 400: ...)")
            return 1

        def call(self, method, path):
            return {"label_config": "<View/>"}

    config = labelstudio.project_config(ws.params().ontology, regions=False)
    server = Server()
    found = labelstudio.Preflight("http://ls", "coldstart ws", "me@example.com", None, server)
    assert label_studio(ws, found) == (server, 7)
    assert server.calls == [("create", "coldstart ws", config), ("storage", 7, str(ws.images.resolve()))]
    refused = Server(refuse=True)
    assert label_studio(ws, labelstudio.Preflight("http://ls", "coldstart ws", "me", None, refused))[1] == 7
    assert "LOCAL_FILES_SERVING_ENABLED=true" in caplog.text and "labelstudio.images: api" in caplog.text
    # A project that exists with another labeling config: a warning that says how to update it.
    assert label_studio(ws, labelstudio.Preflight("http://ls", "coldstart ws", "me", 3, Server()))[1] == 3
    assert "coldstart labelstudio config --workspace" in caplog.text


def test_a_batch_is_pushed_once_marked_and_with_honest_rechecks(ws):
    import json

    from coldstart.flows.wait import latest_batch, push_batch
    from coldstart.tasks import labelstudio
    from coldstart.tasks.intake import intake
    from coldstart.tasks.manifest import read_manifest

    ids = {r["path"]: r["image_id"] for r in read_manifest(ws)}
    _answer(ws, "before.csv", [("i0.jpg", "cat")])
    intake(ws, CLASSES, 1)
    _batch(ws, 1, [(ids["i0.jpg"], "i0.jpg", "recheck"), (ids["i1.jpg"], "i1.jpg", "uncertainty")])
    # tasks.json as select writes it today: the re-check is a plain task under "human"
    (ws.review / "round-001.tasks.json").write_text(json.dumps([
        labelstudio.task(ids["i0.jpg"], "i0.jpg", "dog", 0.9, "human"),
        labelstudio.task(ids["i1.jpg"], "i1.jpg", "dog", 0.9, "m")]))

    class Project:
        def __init__(self):
            self.held, self.model_version = [], "round-1-labeler"  # fixed by an earlier import

        def tasks(self, project):
            return self.held

        def import_tasks(self, project, tasks):
            self.held += tasks
            return len(tasks)

        def call(self, method, path, json=None):
            if method == "PATCH":
                self.model_version = json["model_version"]
            return {"model_version": self.model_version}

    server = Project()
    assert push_batch(ws, 1, server, 1) == 2
    assert push_batch(ws, 1, server, 1) == 0  # the same batch again: nothing asked twice
    assert [t["data"]["batch"] for t in server.held] == ["round-001", "round-001"]
    # Label Studio pre-selects the predictions of the project's model_version only: one for all
    # of coldstart's tasks, whatever labeler made them (that one is in the task's data).
    assert server.model_version == "coldstart" == server.held[1]["predictions"][0]["model_version"]
    assert server.held[1]["data"]["suggested_by"] == "m"
    recheck = server.held[0]
    assert recheck["data"]["purpose"] == "recheck" and recheck["data"]["suggested_by"] == "human-label"
    assert recheck["predictions"][0]["result"][0]["value"] == {"choices": ["cat"]}  # the person's label
    assert "'dog'" in recheck["data"]["note"]
    assert latest_batch(ws) is None  # no round tag in this workspace: nothing to wait on
