"""`coldstart serve` on an interval, for six "days": one serve process, its own Prefect
server, and its scheduled runs, which the tests below check one concern each of (a scheduled run
fires and the server stops with serve; the week records only the days with something new)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flow_runs(api: str, state: str) -> int:
    """How many flow runs the workspace's Prefect server holds in a state (what its UI lists)."""
    body = json.dumps({"flow_runs": {"state": {"type": {"any_": [state]}}}}).encode()
    req = urllib.request.Request(f"{api}/flow_runs/count", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return int(json.loads(r.read()))


def _label_studio_export(tasks_json: Path, truth: dict[str, str], user_id: int) -> str:
    """The round's Label Studio tasks, each answered as Label Studio exports it (a bare user id)."""
    tasks = json.loads(tasks_json.read_text(encoding="utf-8"))
    out = []
    for k, t in enumerate(tasks, start=1):
        pred = t["predictions"][0]["result"][0]
        path = t["data"]["image"].split("?d=images/", 1)[1]
        out.append(dict(t, id=100 + k, annotations=[{"id": k, "completed_by": user_id, "was_cancelled": False,
                                                       "result": [{"from_name": pred["from_name"],
                                                                   "to_name": pred["to_name"], "type": "choices",
                                                                   "value": {"choices": [truth[path]]}}]}]))
    return json.dumps(out, ensure_ascii=False)


@pytest.fixture(scope="module")
def week(tmp_path_factory):
    """`serve` on a schedule; each "day" is one or more scheduled runs: round 1 on the first
    day's images, then answers (a CSV with one typo), nothing (the typo's rejected rows are not
    news), a Label Studio export, new images, nothing. Then SIGTERM."""
    from coldstart.tasks.demodata import answer_batch, write_digits
    from coldstart.tasks.version import init_workspace
    from coldstart.tasks.workspace import read_csv, write_csv
    from tests.conftest import tiny_params, write_image

    tmp_path = tmp_path_factory.mktemp("serve")
    ws = init_workspace(tmp_path / "ws", params_text=tiny_params(5))
    # A plain probe: a head, hence a model version, at every round with enough labels.
    text = ws.params_file.read_text()
    ws.params_file.write_text(text.replace("\ntrain:\n", "\ntrain:\n  model: probe\n  self_training: null\n"))
    assert ws.params().train.model == "probe" and ws.params().train.self_training is None
    truth = write_digits(ws.images, n=24, size=32)
    # Not the tests' shared Prefect server: serve starts its own, in the workspace.
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_RUNNER_POLL_FREQUENCY="2")
    port = _free_port()
    coldstart = Path(sys.executable).with_name("coldstart")
    log_path = tmp_path / "serve.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([str(coldstart), "serve", "--workspace", str(ws.root), "--interval", "4",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    out = SimpleNamespace(ws=ws, port=port, api=api, log=log_path, first_tags=None, db_in_workspace=None,
                          ui=None, completed=None, failed=None, stopped=None)

    def wait(until, what: str, timeout: float = 240):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if until():
                return
            time.sleep(1)
        raise AssertionError(f"waited for {what}:\n{log_path.read_text()[-3000:]}")

    def record() -> dict:
        return json.loads((ws.metrics_dir / "round.json").read_text())

    def one_day(action=None) -> None:
        """Do the day's action, then wait for the first round after it: a new tag if there was
        an action, else one more completed run that changed nothing."""
        tags, done = ws.round_tags(), _flow_runs(api, "COMPLETED")
        if action is None:
            wait(lambda: _flow_runs(api, "COMPLETED") > done, "a scheduled run")
            assert ws.round_tags() == tags, "a day with nothing new made a round"
            assert json.loads((ws.state_dir / "last-check.json").read_text())["result"] == "nothing new"
        else:
            action()
            wait(lambda: len(ws.round_tags()) > len(tags), "the round after the day's drop")
            assert ws.round_tags() == tags + [len(tags) + 1]
            # The tag is made before the run ends: wait for a completion after seeing it.
            seen = _flow_runs(api, "COMPLETED")
            wait(lambda: _flow_runs(api, "COMPLETED") > seen, "the tagged round's run to end")

    def answers_with_a_typo():
        answers = answer_batch(ws.root / record()["select"]["files"][0], truth, ws.inbox)
        rows = read_csv(answers)
        rows[0]["label"] = "seven7"  # one typo in one row
        write_csv(answers, list(rows[0]), rows)

    def label_studio_export():
        tasks = next(f for f in record()["select"]["files"] if f.endswith(".tasks.json"))
        (ws.inbox / "export.json").write_text(_label_studio_export(ws.root / tasks, truth, 3), encoding="utf-8")

    def new_images():
        for k in range(3):
            write_image(ws.images / "day-7" / f"new-{k}.png", seed=100 + k, size=(32, 32))

    try:
        wait(lambda: ws.round_tags() == [1], "round 1 on the first day's images")
        out.first_tags = ws.round_tags()
        out.db_in_workspace = (ws.root / ".prefect" / "prefect.db").is_file()
        # The UI it serves is configured with this server's API, not the default port 4200's.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui-settings", timeout=10) as r:
            out.ui = json.loads(r.read())
        seen = _flow_runs(api, "COMPLETED")
        wait(lambda: _flow_runs(api, "COMPLETED") > seen, "round 1's run to end")
        for action in (answers_with_a_typo, None, label_studio_export, new_images, None):
            one_day(action)
    finally:
        out.completed, out.failed = _flow_runs(api, "COMPLETED"), _flow_runs(api, "FAILED")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    with socket.socket() as s:  # the server is gone: its port is free again
        out.stopped = s.connect_ex(("127.0.0.1", port)) != 0
    return out


def test_scheduled_round_fires(week):
    """A scheduled run makes round 1, on a Prefect server serve started with its database in the
    workspace and its UI pointed at its own port; SIGTERM stops serve and its server."""
    assert week.first_tags == [1] and week.db_in_workspace
    assert week.ui["api_url"] == f"http://127.0.0.1:{week.port}/api", week.ui
    out = week.log.read_text()
    assert "stopped the Prefect server" in out, out[-3000:]
    assert week.stopped


def test_a_week_of_scheduled_rounds_records_only_the_days_with_something_new(week):
    """Days with answers (a CSV with one typo, a Label Studio export) or new images make exactly
    one tag, MLflow run and at most one model version; days with nothing make none, and
    `status` stays truthful."""
    from mlflow.tracking import MlflowClient

    from coldstart.flows.status import workspace_status
    from coldstart.tasks.labellog import read_events
    from coldstart.tasks.workspace import read_csv

    ws = week.ws
    assert week.failed == 0 and week.completed >= 6, (week.completed, week.failed)  # every run, in one UI
    assert ws.round_tags() == [1, 2, 3, 4]
    client = MlflowClient(f"sqlite:///{ws.root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("coldstart-demo")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags.get("coldstart.git_tag") for r in runs) == ["round-001", "round-002", "round-003",
                                                                     "round-004"]
    # A version only for a new head: none for round 1 (no labels yet: zero-shot) or the days with
    # nothing new; one for rounds 2 and 3 (new labels) and 4 (the probe standardises features
    # with the statistics of all images, so new images alone give it new weights).
    versions = client.search_model_versions("name = 'coldstart-demo-head'")
    by_round = sorted(client.get_run(v.run_id).data.tags["coldstart.git_tag"] for v in versions)
    assert by_round == ["round-002", "round-003", "round-004"]
    assert len({v.tags["labeler_id"] for v in versions}) == 3
    # The typo cost one row, handed back; the export's bare user id became ls-user-3.
    kept_aside = read_csv(ws.rejected / next(p.name for p in ws.rejected.glob("*.rows.csv")))
    assert [r["label"] for r in kept_aside] == ["seven7"] and kept_aside[0]["reason"].startswith("unknown class")
    annotators = {e.annotator for e in read_events(ws)}
    assert annotators == {"sim-annotator", "ls-user-3"}
    assert len(read_events(ws)) == 5 - 1 + 5  # two batches of 5, less the typo
    status = workspace_status(ws)
    assert status["last_round"] == 4 and status["last_check"]["last_round"] == 4
    assert not status["done"] and status["not_done_reasons"] and status["inbox_rejected"]
