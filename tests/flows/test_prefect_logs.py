"""Prefect as a user meets it: each round's flow run carries its log lines (summary, "nothing
new" reason, stage timings), read back through the server's API as the UI reads them. The same rounds, run as a person runs
them (`coldstart round` in its own process), keep library noise off the terminal, print their
time from the process start, and show the ontology warnings once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _flow_run_logs(api: str, ws) -> list[tuple[str, list[str]]]:
    """Every flow run of this workspace on the server, oldest first: (its name, its log
    messages), read with Prefect's client as the UI's run page reads them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort, LogSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    out = []
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        for run in client.read_flow_runs(sort=FlowRunSort.START_TIME_ASC):
            if run.parameters.get("workspace") != str(ws.root):  # the server is shared by this worker's tests
                continue
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), sort=LogSort.TIMESTAMP_ASC)
            out.append((run.name, [log.message for log in logs]))
    return out


def test_round_logs_reach_the_prefect_ui_and_the_terminal_stays_quiet(make_workspace, tmp_path, prefect_harness):
    from coldstart.flows.clilog import LOG_FILE
    from coldstart.tasks.demodata import answer_batch, write_digits

    ws = make_workspace(budget=6)
    # A plain probe: round 2 registers a model version (MLflow prints news about it).
    text = ws.params_file.read_text()
    ws.params_file.write_text(text.replace("\ntrain:\n", "\ntrain:\n  model: probe\n  self_training: null\n"))
    truth = write_digits(ws.images, n=24, size=32)
    api = prefect_harness  # the tests' Prefect server (tests/flows/conftest.py): a real one, UI API included
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    env.update(PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "prefect-home"))
    coldstart = Path(sys.executable).with_name("coldstart")

    def round_() -> tuple[str, float]:
        t0 = time.monotonic()
        done = subprocess.run([str(coldstart), "round", "-w", str(ws.root)], env=env, capture_output=True,
                              text=True, timeout=400)
        wall = time.monotonic() - t0
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout + done.stderr, wall

    first, wall = round_()
    answer_batch(ws.root / "data" / "review" / "round-001.csv", truth, ws.inbox)
    second, _ = round_()
    third, _ = round_()  # nothing new
    runs = _flow_run_logs(api, ws)

    # Each round's flow run carries its own lines: the summary, its stages' timings, the
    # "nothing new" reason; coldstart's own warnings (the tiny model's random weights) too.
    assert len(runs) == 3, [name for name, _ in runs]
    for n, (_, lines) in enumerate(runs[:2], start=1):
        text = "\n".join(lines)
        assert f"round {n} (round-{n:03d}, " in text and "  review      " in text
        for stage in ("scan", "embed", "train", "relabel", "select"):
            assert re.search(rf"round {n}: stage {stage} took \d+\.\d\d s", text), (stage, text[:3000])
    assert any("RANDOM weights" in line for line in runs[0][1])
    assert any(line.startswith("nothing new since round 2") for line in runs[2][1]), runs[2][1]

    # The terminal: the summary and coldstart's own lines; no MLflow registry or database lines,
    # no alembic, no FutureWarnings. They are in the workspace's log file.
    for out in (first, second, third):
        for noise in ("Registered model", "Created version", "Successfully registered", "alembic",
                      "MLflow database", "FutureWarning", "INFO mlflow"):
            assert noise not in out, (noise, out[-3000:])
    log = (ws.root / LOG_FILE).read_text(encoding="utf-8")
    assert "Successfully registered model" in log and "Created version '1' of model" in log, log[-3000:]

    # The printed time counts from the process start (imports, Prefect's start-up included).
    printed = float(re.search(r"round 1 \(round-001, ([\d.]+) s\)", first).group(1))
    assert 0.8 * wall - 1 <= printed <= wall + 1, (printed, wall)
    # The MLflow hint runs when pasted: this environment's mlflow, by its full path.
    hint = next(line for line in first.splitlines() if line.startswith("  MLflow UI   "))
    assert hint.split()[2] == str(Path(sys.executable).with_name("mlflow"))
    # Ontology warnings: once per workspace (round 1), not again in round 2 (same ontology).
    warned = [line for line in first.splitlines() if line.startswith("  WARNING ")]
    if warned:  # the tiny random model finds confusable classes (seeded: it does)
        assert not [line for line in second.splitlines() if line.startswith("  WARNING ")]
        assert "ontology warning(s) as in an earlier round, not repeated" in second
