"""`coldstart bench api` on the tiny model and a few seconds per phase: the real server in its own
process, every figure written with its settings, the server gone afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coldstart.bench.targets import TARGETS
from coldstart.flows.cli import main as cli

KEYS = ("p50_ms", "forward_single_ms", "throughput_img_s", "forward_batched_img_s", "soak_errors", "rss_growth")


def test_the_batcher_settings_the_bench_reports_are_the_ones_coldstart_api_runs_with():
    """The bench reads the batcher's defaults (tasks.inference.Batcher: it never imports flows);
    `coldstart api` builds its app with create_app's defaults: they must agree."""
    import inspect

    from coldstart.flows.api import create_app
    from coldstart.tasks.inference import Batcher

    app, batcher = inspect.signature(create_app).parameters, inspect.signature(Batcher).parameters
    assert app["batch_images"].default == batcher["max_images"].default
    assert app["batch_wait_ms"].default == batcher["max_wait_ms"].default


@pytest.mark.slow  # a workspace, a server process start (~10 s on 2 cores), three HTTP phases
def test_bench_api_drives_the_real_server_and_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "api.json"
    assert cli(["bench", "api", "--model", "coldstart-tiny", "--clients", "4", "--load-s", "2", "--warm-s", "0.5",
                "--soak-s", "2", "--requests", "8", "--forward-runs", "5", "--forward-batches", "2",
                "--json", str(out)]) == 0
    f = json.loads(out.read_text())
    for key in KEYS:
        assert isinstance(f[key], (int, float)) and not isinstance(f[key], bool), key
    assert 0 < f["forward_single_ms"] < 5000 and f["forward_batched_img_s"] > 0
    assert 0 < f["p50_ms"] <= f["p90_ms"] < 10_000 and f["single_errors"] == 0
    assert f["throughput_img_s"] > 0 and f["load"]["window_requests"] > 0 and f["load"]["errors"] == 0
    assert f["soak_errors"] == 0 and f["soak"]["requests"] > 0
    assert -0.5 < f["rss_growth"] < 0.5 and f["soak"]["rss_start_mb"] > 0
    assert f["rss_growth"] == round(f["soak"]["rss_end_mb"] / f["soak"]["rss_start_mb"] - 1, 4)
    # The relative latency target and the throughput ratio, derived from the figures above.
    assert f["p50_target_ms"] == round(1.2 * f["forward_single_ms"] + 20, 2)
    assert f["p50_over_target"] == round(f["p50_ms"] / f["p50_target_ms"], 3)
    assert f["throughput_ratio"] == round(f["throughput_img_s"] / f["forward_batched_img_s"], 3)
    assert f["forward_batched_img_s"] == max(f["forward_batched_by_size"].values())
    assert set(f["forward_batched_by_size"]) == {"32", "16"}  # the Batcher's size and 16
    s = f["settings"]
    assert s["model"] == "coldstart-tiny" and s["clients"] == 4 and s["load_s"] == 2 and s["soak_s"] == 2
    assert s["image"] == [640, 480] and s["batch_images"] == 32 and s["batch_wait_ms"] == 5.0
    assert isinstance(f["quiet"], bool) and set(f["other_cpu_cores"]) >= {"bare_forward", "load", "soak"}
    assert f["machine"]["cpus"] >= 1 and f["machine"]["torch_threads"] >= 1 and f["machine"]["torch"]
    # The server process was stopped (gracefully) and reaped.
    assert f["server"]["exit_code"] == 0 and not Path(f"/proc/{f['server']['pid']}").exists()
    text = capsys.readouterr().out
    for key in ("p50_over_target", "throughput_ratio", "soak_errors", "rss_growth"):
        assert TARGETS[key].what in text
