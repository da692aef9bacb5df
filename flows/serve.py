"""`coldstart serve`: run rounds on a cron or interval schedule through a Prefect server.

Schedules never fire on Prefect's temporary per-process server, so this connects to the
configured server (PREFECT_API_URL) or starts `prefect server start` on 127.0.0.1 with its
database inside the workspace (``.prefect/``), and stops it on exit (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from coldstart.flows.round import labeling_round
from coldstart.models.errors import ColdstartError
from coldstart.tasks.commands import command
from coldstart.tasks.workspace import Workspace


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start_local_server(ws: Workspace, port: int, timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """Start a Prefect server on 127.0.0.1:port with its state in the workspace; wait until healthy."""
    api = f"http://127.0.0.1:{port}/api"
    if _healthy(api):
        raise ColdstartError(f"something already answers on port {port}; pick another with --port "
                             f"or point PREFECT_API_URL at that server")
    home = ws.root / ".prefect"
    home.mkdir(exist_ok=True)
    # The UI it serves calls the API at PREFECT_UI_API_URL, which defaults to PREFECT_API_URL,
    # else to PREFECT_SERVER_API_HOST/PORT: not to --port. Without these, a server on any port but
    # 4200 serves a UI that says "Can't connect to Server API at http://127.0.0.1:4200/api".
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": api, "PREFECT_UI_API_URL": api, "PREFECT_SERVER_API_HOST": "127.0.0.1",
           "PREFECT_SERVER_API_PORT": str(port)}
    log = open(home / "server.log", "ab")
    prefect = Path(sys.executable).with_name("prefect")
    # Its own session (Ctrl-C in the terminal reaches serve only, which stops it in order), and
    # tied to serve's process: killed with it, even by kill -9 (Linux).
    proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=_die_with_parent)
    deadline = time.monotonic() + timeout
    while not _healthy(api):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.terminate()
            raise ColdstartError(f"the Prefect server did not start on 127.0.0.1:{port} (see {home / 'server.log'})")
        time.sleep(0.5)
    return proc, api


def serve(workspace: str, *, cron: str | None = None, interval: float | None = None, port: int = 4200) -> None:
    ws = Workspace.open(workspace)
    ws.params()  # fail now, not at the first scheduled run
    server = None
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        from prefect.settings import get_current_settings

        api = get_current_settings().api.url
    if not api:
        server, api = start_local_server(ws, port)
        # `coldstart round` run by hand meanwhile reports here too (prefect_settings_for).
        (ws.root / ".prefect" / "server-url").write_text(api + "\n", encoding="utf-8")
        print(f"started a Prefect server for this workspace: UI at {api.removesuffix('/api')}", flush=True)
    else:
        print(f"using the Prefect server at {api}", flush=True)
    # Set before the flow's runner starts: scheduled runs are subprocesses that inherit it.
    os.environ["PREFECT_API_URL"] = api
    # Prefect's runner keeps each run's files under <temp>/runner_storage/: a folder another user's
    # `coldstart serve` made on a shared /tmp would refuse ours (PermissionError on every run).
    tmp = ws.state_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(tmp)
    os.environ["TMPDIR"] = str(tmp)
    try:
        from prefect.settings import PREFECT_API_URL, temporary_settings


        schedule = f"cron '{cron}'" if cron else f"every {interval:g} s"
        print(f"serving labeling_round for {ws.root} on {schedule}; Ctrl-C or SIGTERM stops", flush=True)
        with temporary_settings({PREFECT_API_URL: api}):
            # limit=1: a round that outlasts the interval delays the next one instead of
            # overlapping it (the second would only find the workspace locked and fail).
            labeling_round.serve(name=f"coldstart-{ws.root.name}", cron=cron, interval=interval, limit=1,
                                 parameters={"workspace": str(ws.root)}, print_starting_message=False)
    finally:
        if server is not None:
            (ws.root / ".prefect" / "server-url").unlink(missing_ok=True)
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
            print("stopped the Prefect server", flush=True)


def prefect_settings_for(ws: Workspace) -> dict:
    """Where a round run by hand reports, so that one Prefect UI shows every round: the
    configured server (PREFECT_API_URL) if any; else the server `coldstart serve` started for
    this workspace, while it runs; else the workspace's own Prefect home (.prefect/, whose
    database `serve` starts its server on): see ``round_prefect``."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, get_current_settings

    if get_current_settings().api.url:
        return {}
    url_file = ws.root / ".prefect" / "server-url"
    if url_file.is_file():
        url = url_file.read_text(encoding="utf-8").strip()
        if url and _healthy(url):
            return {PREFECT_API_URL: url}
    (ws.root / ".prefect").mkdir(exist_ok=True)
    return {PREFECT_HOME: str(ws.root / ".prefect")}


def _prefect() -> str:

    return command("prefect")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    """Linux: the child gets SIGTERM when the process that started it dies, even by kill -9."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _drain_prefect_workers() -> None:
    """Send Prefect's queued logs and events now; at interpreter exit, where Prefect sends them
    by itself, this round's server is gone ("Error logging to API")."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):  # best effort: the round itself is recorded already
            worker.drain_all(timeout=5)


@contextlib.contextmanager
def round_prefect(ws: Workspace, timeout: float = 120.0) -> Iterator[dict]:
    """Prefect settings for one round run by hand, and the API server it needs for its lifetime.

    With a configured or `serve`-started server, that server. Otherwise a server on the
    workspace's own database (.prefect/prefect.db), started here rather than by Prefect: its
    temporary server outlives a killed round (kill -9, even SIGTERM), ~200 MB each, and keeps
    inherited output pipes open. This one is tied to the round's process (PR_SET_PDEATHSIG on
    Linux), logs to .prefect/round-server.log, and is stopped when the round ends.
    """
    from prefect.settings import PREFECT_API_URL

    settings = prefect_settings_for(ws)
    if PREFECT_API_URL in settings or not settings or not sys.platform.startswith("linux"):
        yield settings
        return
    home = ws.root / ".prefect"
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
                                preexec_fn=_die_with_parent)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(api):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ColdstartError(f"the round's Prefect API server did not start (see {home / 'round-server.log'}); "
                                     f"or point PREFECT_API_URL at a running `{_prefect()} server start`")
            time.sleep(0.2)
        yield {PREFECT_API_URL: api}
    finally:
        _drain_prefect_workers()  # the round's last logs and events, while the server still answers
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cmd_serve(a) -> int:
    """`coldstart serve`: rounds on a schedule until interrupted."""
    serve(a.workspace, cron=a.cron, interval=a.interval, port=a.port)
    return 0
