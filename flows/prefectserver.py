"""The Prefect API server a round run by hand reports to, started as early as the command allows.

A round needs a Prefect API server. With a configured one (PREFECT_API_URL, a Prefect profile)
or the one `coldstart serve` started for the workspace, that one; otherwise a server on the
workspace's own database (.prefect/prefect.db), started here rather than by Prefect: Prefect's
temporary server outlives a killed round (kill -9, even SIGTERM), ~200 MB each, and keeps
inherited output pipes open. This one is tied to the round's process (PR_SET_PDEATHSIG on
Linux), logs to .prefect/round-server.log, and is stopped when the round ends.

The server takes about 4 s to start, as long as the round's own imports (torch, MLflow): the
CLI starts it before it imports the round (``start_early``, named by `coldstart round`'s
parser), so the two overlap; ``round_prefect`` adopts it. On a new database Prefect first
creates its tables (its migrations, about 5 s of CPU more): the first server of a Prefect
version keeps a copy of its freshly created database in the user's cache, and every later new
workspace starts from that copy (``seed_database``, tasks/dbtemplate.py). Light: Prefect's
settings only.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from prefect.settings import PREFECT_API_URL, PREFECT_HOME, get_current_settings

from coldstart.models.errors import ColdstartError
from coldstart.tasks import dbtemplate
from coldstart.tasks.commands import command
from coldstart.tasks.workspace import Workspace

_EARLY: dict[Path, tuple[subprocess.Popen, str, bool]] = {}  # workspace root -> spawn_server's (server, API URL, new)


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def prefect_settings_for(ws: Workspace) -> dict:
    """Where a round run by hand reports, so that one Prefect UI shows every round: the
    configured server (PREFECT_API_URL) if any; else the server `coldstart serve` started for
    this workspace, while it runs; else the workspace's own Prefect home (.prefect/, whose
    database `serve` starts its server on): see ``round_prefect``."""
    if get_current_settings().api.url:
        return {}
    url_file = ws.root / ".prefect" / "server-url"
    if url_file.is_file():
        url = url_file.read_text(encoding="utf-8").strip()
        if url and healthy(url):
            return {PREFECT_API_URL: url}
    (ws.root / ".prefect").mkdir(exist_ok=True)
    return {PREFECT_HOME: str(ws.root / ".prefect")}


def seed_database(home: Path) -> bool:
    """A Prefect home without a database gets a copy of the template (tasks/dbtemplate.py), if
    there is one: its server then starts without creating tables. True if the home's database is
    new and not seeded (its server creates the tables, and ``remember_database`` may keep them)."""
    db = home / "prefect.db"
    return not db.exists() and not dbtemplate.seed(db, "prefect")


def remember_database(home: Path) -> None:
    """After a server created a new database's tables (and before any flow ran on it): keep a
    copy as the template, unless one exists. Best effort: a read-only cache only costs time."""
    dbtemplate.remember(home / "prefect.db", "prefect")


def die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    """Linux: the child gets SIGTERM when the process that started it dies, even by kill -9."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def spawn_server(home: Path) -> tuple[subprocess.Popen, str, bool]:
    """A Prefect API server on a free port of 127.0.0.1 over ``home``'s database (not waited for:
    ``wait_healthy``), and whether that database is new (not seeded from the template: see the
    module doc). Its log: ``home/round-server.log``."""
    home.mkdir(parents=True, exist_ok=True)
    new = seed_database(home)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PREFECT_UI_ENABLED="0", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT__SERVER_EPHEMERAL="1", PREFECT__SERVER_FINAL="1")
    with open(home / "round-server.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
                                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent)
    return proc, f"http://127.0.0.1:{port}/api", new


def wait_healthy(proc: subprocess.Popen, api: str, timeout: float) -> bool:
    """Wait until the server answers (True), or it exits or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not healthy(api):
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_early(args: argparse.Namespace) -> None:
    """`coldstart round`, before its imports: start the workspace's server now when the round
    will need one (``round_prefect`` adopts it). Quiet on any problem: the round reports it."""
    if getattr(args, "wait", False):  # `round --wait` checks Label Studio first: no server before that
        return
    try:
        ws = Workspace.open(args.workspace)
        ws.params()  # a mistake in params.yaml: the round says so at once, no server is needed
        settings = prefect_settings_for(ws)
        if ws.root in _EARLY or PREFECT_API_URL in settings or not settings or not sys.platform.startswith("linux"):
            return
        spawned = spawn_server(ws.root / ".prefect")
    except Exception:  # noqa: BLE001 - not a workspace, unreadable, no disk: the command itself says so
        return
    _EARLY[ws.root] = spawned
    atexit.register(stop_server, spawned[0])  # a command that fails before its round: the server goes too


def _drain_prefect_workers() -> None:
    """Send Prefect's queued logs and events now; at interpreter exit, where Prefect sends them
    by itself, this round's server is gone ("Error logging to API")."""
    from prefect.events.worker import EventsWorker  # Prefect's client side: loaded by the round already
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):  # best effort: the round itself is recorded already
            worker.drain_all(timeout=5)


@contextlib.contextmanager
def round_prefect(ws: Workspace, timeout: float = 120.0) -> Iterator[dict]:
    """Prefect settings for one round run by hand, and the API server it needs for its lifetime
    (the module docstring says which): adopted from ``start_early``, else started now."""
    settings = prefect_settings_for(ws)
    early = _EARLY.pop(ws.root, None)
    if PREFECT_API_URL in settings or not settings or not sys.platform.startswith("linux"):
        if early is not None:  # a server appeared meanwhile (`coldstart serve`): the early one is not needed
            stop_server(early[0])
        yield settings
        return
    home = ws.root / ".prefect"
    proc, api, new = early if early is not None else spawn_server(home)
    try:
        if not wait_healthy(proc, api, timeout):
            raise ColdstartError(f"the round's Prefect API server did not start (see {home / 'round-server.log'}); "
                                 f"or point PREFECT_API_URL at a running `{command('prefect')} server start`")
        if new:
            remember_database(home)
        yield {PREFECT_API_URL: api}
    finally:
        _drain_prefect_workers()  # the round's last logs and events, while the server still answers
        stop_server(proc)
