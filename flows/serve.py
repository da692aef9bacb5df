"""`coldstart serve`: run rounds on a cron or interval schedule through a Prefect server.

Schedules never fire on Prefect's temporary per-process server, so this connects to the
configured server (PREFECT_API_URL) or starts `prefect server start` on 127.0.0.1 with its
database inside the workspace (``.prefect/``), and stops it on exit (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

from coldstart.flows.prefectserver import die_with_parent, healthy, remember_database, seed_database, wait_healthy
from coldstart.flows.round import labeling_round
from coldstart.models.errors import ColdstartError
from coldstart.tasks.workspace import Workspace


def start_local_server(ws: Workspace, port: int, timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """Start a Prefect server on 127.0.0.1:port with its state in the workspace; wait until healthy."""
    api = f"http://127.0.0.1:{port}/api"
    if healthy(api):
        raise ColdstartError(f"something already answers on port {port}; pick another with --port "
                             f"or point PREFECT_API_URL at that server")
    home = ws.root / ".prefect"
    home.mkdir(exist_ok=True)
    new = seed_database(home)  # a copy of a migrated database, where one is cached: no table creation
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
                            start_new_session=True, preexec_fn=die_with_parent)
    if not wait_healthy(proc, api, timeout):
        proc.terminate()
        raise ColdstartError(f"the Prefect server did not start on 127.0.0.1:{port} (see {home / 'server.log'})")
    if new:
        remember_database(home)
    return proc, api


def serve(workspace: str, *, cron: str | None = None, interval: float | None = None, port: int = 4200) -> None:
    ws = Workspace.open(workspace)
    ws.params()  # fail now, not at the first scheduled run
    server = None
    api = os.environ.get("PREFECT_API_URL")
    if not api:
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


def cmd_serve(a) -> int:
    """`coldstart serve`: rounds on a schedule until interrupted."""
    serve(a.workspace, cron=a.cron, interval=a.interval, port=a.port)
    return 0
