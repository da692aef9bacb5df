"""An unreachable MLflow tracking server with real processes, split from test_fault_matrix.py so
it runs beside the kill matrix on the other worker (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from coldstart.tasks.demodata import write_digits
from coldstart.tasks.version import init_workspace
from tests.conftest import tiny_params
from tests.flows.test_fault_matrix import _env

pytestmark = pytest.mark.slow


def test_an_unreachable_tracking_server_fails_in_seconds_and_the_round_is_versioned(tmp_path):
    """A server that accepts connections and never answers: MLflow's retry ladder would take
    minutes; the round reports in seconds and its data is tagged."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    ws = init_workspace(tmp_path / "ws", params_text=tiny_params(6).replace(
        "tracking:\n  uri: null", f"tracking:\n  uri: http://127.0.0.1:{listener.getsockname()[1]}"))
    assert ws.params().tracking.uri.startswith("http://")
    write_digits(ws.images, n=12, size=32)
    env = {k: v for k, v in _env(tmp_path, own_server=False).items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
    start = time.monotonic()
    try:
        result = subprocess.run([sys.executable, "-m", "coldstart.flows.cli", "round", "-w", str(ws.root)], env=env,
                                capture_output=True, text=True, timeout=300)
    finally:
        stop.set()
    elapsed = time.monotonic() - start
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "MLflow at http://127.0.0.1" in result.stderr and "could not record round 1" in result.stderr
    assert "ReadTimeout" in result.stderr  # it waited for the server, not failed on something else
    assert ws.round_tags() == [1]  # versioned all the same
    # MLflow's default ladder (7 retries, exponential backoff) takes minutes: ours, one 4 s retry.
    track_s = json.loads((ws.metrics_dir / "round.json").read_text())["seconds"]["track"]
    print(f"unreachable tracking server: track stage {track_s:.1f} s, whole round {elapsed:.1f} s")
    assert track_s <= 10.5, track_s
