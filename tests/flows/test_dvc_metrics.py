"""Rounds as their users look at them: `dvc metrics diff` and `dvc plots diff` between round
tags, and the learning curve in MLflow with step = round."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import pytest

from coldstart.flows.round import labeling_round
from coldstart.tasks.demodata import answer_batch, write_digits
from coldstart.tasks.version import init_workspace
from tests.conftest import tiny_params

pytestmark = pytest.mark.slow


def _dvc(ws, *args) -> str:
    with contextlib.chdir(ws.root):
        out = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_metrics_and_plots_diff_between_round_tags_and_the_curve_in_mlflow(prefect_harness, tmp_path):
    import mlflow

    from coldstart.tasks.track import read_curve, tracking_uri

    ws = init_workspace(tmp_path / "ws", params_text=tiny_params(6))
    truth = write_digits(ws.images, n=40, size=40)
    records = []
    for n in range(1, 4):
        records.append(labeling_round(workspace=str(ws.root)))
        answer_batch(ws.review / f"round-{n:03d}.csv", truth, ws.inbox)
    curve = read_curve(ws)
    assert [int(r["round"]) for r in curve] == [1, 2, 3]
    assert [int(r["human_labels"]) for r in curve] == [0, 6, 12]
    # dvc metrics diff: the round's numbers at two tags, side by side.
    diff = json.loads(_dvc(ws, "metrics", "diff", "round-001", "round-003", "--json"))
    got = diff["data/metrics/round-metrics.json"]
    assert got["human_labels"] == {"old": 0, "new": 12, "diff": 12}
    assert got["round"]["old"] == 1 and got["round"]["new"] == 3
    # dvc plots diff: the learning curve at both tags, rendered (Vega-Lite) with each tag's rows.
    [plot] = json.loads(_dvc(ws, "plots", "diff", "round-001", "round-003", "--json"))["data"][
        "data/metrics/learning_curve.csv"]
    assert plot["type"] == "vega" and plot["revisions"] == ["round-001", "round-003"]
    rows = plot["content"]["data"]["values"]
    at3 = {(r["round"], r["human_labels"]) for r in rows if r["rev"] == "round-003"}
    assert at3 == {("1", "0"), ("2", "6"), ("3", "12")}  # round 3's curve: every round so far
    assert {(r["round"], r["human_labels"]) for r in rows if r["rev"] == "round-001"} == {("1", "0")}
    # MLflow: round 3's run holds the curve of rounds 1-3, step = round.
    client = mlflow.tracking.MlflowClient(tracking_uri(ws, ws.params()))
    history = client.get_metric_history(records[2].run_id, "curve_human_labels")
    assert [(h.step, h.value) for h in sorted(history, key=lambda h: h.step)] == [(1, 0.0), (2, 6.0), (3, 12.0)]
    assert client.get_metric_history(records[2].run_id, "human_labels")[0].step == 3
