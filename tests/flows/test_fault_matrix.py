"""The fault matrix: `coldstart round` killed with SIGKILL at every stage boundary (and inside
tracking and versioning), then run again (the remote and tracking faults: test_fault_remote.py,
test_fault_tracking.py). Real processes (forked from one that has imported what a round imports:
tests/flows/roundfork.py), real Prefect servers, MLflow on SQLite, DVC with a local remote
(docs/reliability.md)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from coldstart.flows.record import RoundRecord
from coldstart.tasks.demodata import answer_batch, write_digits
from coldstart.tasks.labellog import read_events
from coldstart.tasks.manifest import read_manifest_table
from coldstart.tasks.relabel import read_resolved
from coldstart.tasks.version import init_workspace
from coldstart.tasks.workspace import Workspace, read_csv
from tests.conftest import tiny_params
from tests.flows.roundfork import RoundForks

pytestmark = pytest.mark.slow

BOUNDARIES = ["scan", "in-scan", "embed", "in-embed", "intake", "audit", "train", "relabel", "discover", "select",
              "track", "in-track", "version", "in-version", "link_run_task", "publish"]
# Two chains, each on a workspace of its own, so that two test workers share the 16 kills
# (test_fault_matrix_late.py runs the second): the first kills round 2 before its model is
# trained, again and again; the second from relabel on, through its tag and round 3's summary.
EARLY, LATE = BOUNDARIES[:7], BOUNDARIES[7:]


def _env(tmp: Path, own_server: bool = True) -> dict:
    """The subprocess's environment: with ``own_server`` each round starts its own Prefect server
    (the kill chain checks that it dies with the round), else the tests' shared one (conftest)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL" or not own_server}
    env.update(HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1", PREFECT_HOME=str(tmp / "prefect-home"))
    return env


def _prefect_servers(ws: Workspace) -> list[int]:
    """Live processes serving this workspace's Prefect database (found by their environment)."""
    home = f"PREFECT_HOME={ws.root / '.prefect'}".encode()
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if home in (d / "environ").read_bytes().split(b"\0") and b"uvicorn" in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
    return pids


def _own_flow_runs(ws: Workspace) -> int:
    """Flow runs in the workspace's own Prefect database (where a round's own server records)."""
    db = ws.root / ".prefect" / "prefect.db"
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db)) as con:
        return con.execute("SELECT count(*) FROM flow_run").fetchone()[0]


def _git(ws: Workspace, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=ws.root, capture_output=True, text=True, check=True).stdout


def _runs(ws: Workspace):
    client = MlflowClient(f"sqlite:///{ws.root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("coldstart-demo")
    return client.search_runs([exp.experiment_id])


def kill_chain(tmp_path: Path, boundaries: list[str], own_server_at: tuple[str, ...] = ()) -> None:
    """Round 1, then round 2 (answers and 4 new images waiting) killed with SIGKILL at each of
    ``boundaries`` in turn, each attempt going on from what the last one left; then a round that
    completes. At the boundaries in ``own_server_at`` the round starts its own Prefect server, as
    a round run by hand does, and the chain checks that the server died with it; the other rounds
    report to the tests' shared server (tests/flows/conftest.py: whether a round's own server
    dies with it does not depend on where it is killed, and each own server costs 4 s of CPU).
    At the end: one commit per tag, MLflow runs, answers taken once, every image labeled, DVC clean."""
    ws = init_workspace(tmp_path / "ws", params_text=tiny_params(6))
    truth = write_digits(ws.images, n=30, size=32)
    shared = os.environ["PREFECT_API_URL"]
    with RoundForks(_env(tmp_path)) as forks:
        _kill_chain(ws, truth, forks, boundaries, own_server_at, shared)


def _kill_chain(ws: Workspace, truth: dict, forks: RoundForks, boundaries: list[str], own_server_at: tuple[str, ...],
                shared: str) -> None:
    first = forks.round(ws, api=shared)
    assert first.returncode == 0, first.stdout + first.stderr
    batch = sorted(ws.root.glob("data/review/round-001.csv"))[0]
    answered = len(read_csv(answer_batch(batch, truth, ws.inbox)))
    write_digits(ws.images / "later", n=4, size=40)  # new images too (another size: new content)
    outcomes = {}
    for target in boundaries:
        if target == "publish":  # round 2 was tagged (killed at link_run): round 3 gets a new image
            write_digits(ws.images / "last", n=1, size=32)
        own = target in own_server_at
        before = _own_flow_runs(ws)
        killed = forks.round(ws, target, api=None if own else shared)
        assert killed.returncode == -signal.SIGKILL, (target, killed.stdout[-2000:], killed.stderr[-2000:])
        assert _own_flow_runs(ws) == before + own  # the round's flow run is on its own server, or on the shared one
        if own:
            time.sleep(0.5)  # the kernel delivers the parent-death signal asynchronously
            deadline = time.monotonic() + 30
            while _prefect_servers(ws) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _prefect_servers(ws) == [], f"killed at {target}: its Prefect server outlived it"
        outcomes[target] = ws.round_tags()
    last = 3 if "publish" in boundaries else 2
    if "publish" in boundaries:
        # Killed after its tag (at link_run, at publish), a round is done: the retry has nothing new.
        assert outcomes["in-version"] == [1] and outcomes["link_run_task"] == [1, 2], outcomes
        assert outcomes["publish"] == [1, 2, 3]
    else:  # every kill before round 2's tag
        assert all(tags == [1] for tags in outcomes.values()), outcomes
        done = forks.round(ws, api=shared)
        assert done.returncode == 0, done.stdout + done.stderr
    done = forks.round(ws, api=shared)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ws.round_tags() == list(range(1, last + 1)) and f"nothing new since round {last}" in done.stdout
    _check_rounds(ws, forks.env, last, answered)


def _check_rounds(ws: Workspace, env: dict, last: int, answered: int) -> None:
    rounds = range(1, last + 1)
    # One commit per round tag: the retries amended the untagged commit, never stacked another.
    subjects = _git(ws, "log", "--format=%s").splitlines()
    assert [sum(s.startswith(f"coldstart round {n}:") for s in subjects) for n in rounds] == [1] * last, subjects
    assert _git(ws, "rev-list", "-n", "1", f"round-{last:03d}") == _git(ws, "rev-parse", "HEAD")
    # MLflow: nothing left RUNNING; one live run per round, linked to its tag; the others KILLED, noted.
    runs = _runs(ws)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    live: dict[str, list] = {}
    for r in runs:
        if r.info.status != "KILLED":
            live.setdefault(r.data.tags["coldstart.round"], []).append(r)
        else:
            assert "interrupted" in r.data.tags["coldstart.note"]
    assert sorted(live) == [str(n) for n in rounds] and all(len(v) == 1 for v in live.values()), live
    # Every run linked to its tag; with a kill at link_run, round 2's missed it and round 3 linked it.
    assert [live[str(n)][0].data.tags.get("coldstart.git_tag") for n in rounds] == [f"round-{n:03d}" for n in rounds]
    # The answers were taken once, in round 2, and the new images are in the resolved labels.
    events = read_events(ws)
    assert len(events) == len({(e.source_sha256, e.source_row) for e in events}) == answered > 0
    assert {e.round for e in events} == {2}
    # Round 2 as tagged: every image on disk then (30 + 4 new) labeled, and its summary's counts
    # true although earlier attempts took in the images (killed in scan) and the answers.
    r2 = RoundRecord.from_dict(json.loads(_git(ws, "show", "round-002:data/metrics/round.json")))
    assert r2.scan is not None and r2.intake is not None
    assert (r2.scan.images, r2.scan.new_images) == (34, 4), r2.describe()
    assert r2.intake.round_answers == {"files": answered} and f"{answered} answer(s) this round" in r2.describe()
    on_disk = {p.relative_to(ws.images).as_posix() for p in ws.images.rglob("*.png")}
    manifest = read_manifest_table(ws).to_pylist()
    assert {r["path"] for r in manifest} == on_disk  # round 3's one new image included
    labeled = {r["image_id"] for r in read_resolved(ws)}
    assert {r["image_id"] for r in manifest} == labeled
    with contextlib.chdir(ws.root):
        status = subprocess.run([sys.executable, "-m", "dvc", "status", "-c", "-a", "-T"], env=env,
                                capture_output=True, text=True)
    assert status.returncode == 0 and "new:" not in status.stdout and "missing:" not in status.stdout, status.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds processes through /proc")
def test_kill_9_at_every_stage_boundary_before_training_then_the_round_completes_once(tmp_path):
    # Its own Prefect server at the first stage, inside a stage with the model loaded, and at the
    # last boundary before training.
    kill_chain(tmp_path, EARLY, own_server_at=("scan", "in-embed", "train"))

