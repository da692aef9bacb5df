"""`coldstart serve` on an interval: a scheduled run fires and completes a real round
(a week of scheduled rounds: test_serve_week.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scheduled_round_fires(make_workspace, tmp_path):
    from coldstart.tasks.demodata import write_digits

    ws = make_workspace(budget=4)
    write_digits(ws.images, n=20, size=32)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    log = open(tmp_path / "serve.log", "wb")
    port = _free_port()
    coldstart = Path(sys.executable).with_name("coldstart")
    proc = subprocess.Popen([str(coldstart), "serve", "--workspace", str(ws.root), "--interval", "5",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if ws.round_tags():
                break
            time.sleep(1)
        assert ws.round_tags(), f"no scheduled round ran:\n{(tmp_path / 'serve.log').read_text()[-3000:]}"
        assert (ws.root / ".prefect" / "prefect.db").is_file()  # the server's database is in the workspace
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    out = (tmp_path / "serve.log").read_text()
    assert "stopped the Prefect server" in out, out[-3000:]
    with socket.socket() as s:  # the server is gone: its port is free again
        assert s.connect_ex(("127.0.0.1", port)) != 0
