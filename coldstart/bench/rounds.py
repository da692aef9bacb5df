"""`coldstart round` as users run it, for the benchmarks: its own process, the CLI's own entry
(``python -m coldstart.flows.cli round``), the caller's environment. A benchmark never imports
coldstart.flows (pyproject.toml's layers): it runs the command and reads the round's summary,
the JSON `coldstart round --json FILE` writes (``RoundRecord.to_dict()``)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coldstart.bench.rss import peak_rss_mb_of

# The `coldstart` command of this environment, as a process; its subcommand follows.
CLI = [sys.executable, "-m", "coldstart.flows.cli"]


@dataclass(frozen=True)
class RoundRun:
    """One `coldstart round` process: the round's summary, its wall time and its peak RSS."""

    record: dict[str, Any]  # the round's summary: RoundRecord.to_dict(), as `coldstart round --json` writes it
    process_seconds: float  # start to exit: interpreter, imports, the Prefect server, the round, its status
    peak_rss_mb: float  # the round process's own peak resident set (VmHWM), MB


def run_round(workspace: Path, env: dict[str, str] | None = None, poll_s: float = 0.05) -> RoundRun:
    """Run `coldstart round --workspace WORKSPACE` to its end (``env``: the process's environment,
    default this one's); raise with the tail of its output when it fails."""
    with tempfile.TemporaryDirectory(prefix="coldstart-bench-round-") as tmp:
        summary, log_path = Path(tmp) / "round.json", Path(tmp) / "round.log"
        t = time.perf_counter()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([*CLI, "round", "--workspace", str(workspace), "--json", str(summary)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            peak = watch_peak_rss_mb(proc, poll_s)
        seconds = time.perf_counter() - t
        if proc.returncode != 0 or not summary.is_file():
            tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise RuntimeError(f"round failed: `coldstart round` exited with {proc.returncode}:\n{tail}")
        record = json.loads(summary.read_text(encoding="utf-8"))
    return RoundRun(record=record, process_seconds=seconds, peak_rss_mb=peak)


def watch_peak_rss_mb(proc: subprocess.Popen[bytes], poll_s: float = 0.05) -> float:
    """Wait for ``proc`` to exit; its peak resident set (VmHWM: its own address space, not its
    children's), read every ``poll_s`` while it runs, MB."""
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, peak_rss_mb_of(proc.pid))
        time.sleep(poll_s)
    return peak
