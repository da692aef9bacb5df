"""A real Label Studio server for the ``labelstudio`` tests: its own environment (.ls-venv, made by
``make labelstudio-env``), a fresh SQLite data dir, one user, and that user's personal access token
obtained through Label Studio's API as a script would (log in, ``POST /api/token/``).

Started once per session and only when asked for: ``COLDSTART_TEST_LABELSTUDIO=1`` (``make
test-labelstudio`` sets it); the default suite skips these tests without starting anything.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
LS_BIN = ROOT / ".ls-venv" / "bin" / "label-studio"
EMAIL, PASSWORD = "reviewer@example.com", "coldstart-test-pass"
HEALTH_TIMEOUT_S = 180.0


@dataclass
class LabelStudioServer:
    """A running Label Studio: ``url`` (no trailing slash), ``token`` (the user's personal access
    token, a JWT refresh token as the UI's Account & Settings page shows it), ``legacy_token`` (the
    user's legacy token, refused by the API unless the organization enables legacy tokens),
    ``data_root`` (its LOCAL_FILES_DOCUMENT_ROOT: files under it are served once a Local Files
    storage covers their folder), ``email``/``password`` of the user, ``log`` (the server's output)."""

    url: str
    token: str
    legacy_token: str
    data_root: Path
    email: str
    password: str
    log: Path
    process: subprocess.Popen = field(repr=False)

    def stop(self) -> None:
        """Terminate the server and everything it started (its process group); idempotent."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)
        except ProcessLookupError:
            pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = HEALTH_TIMEOUT_S) -> float:
    """Poll ``/health`` until it answers 200; the seconds it took. Fails with the log's tail."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"Label Studio exited with {proc.returncode} while starting:\n{_tail(log)}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"Label Studio did not answer {url}/health within {timeout:.0f} s:\n{_tail(log)}")


def personal_access_token(url: str, email: str, password: str) -> tuple[str, str]:
    """(personal access token, legacy token) of a user, as a script gets them with only the user's
    email and password: log in through the login form (Django session + CSRF), then
    ``POST /api/token/`` creates the personal access token (409 if the user already has one: then
    ``GET /api/token/`` lists only truncated ones, useless as credentials) and
    ``GET /api/current-user/token`` reads the legacy one."""
    with httpx.Client(base_url=url, timeout=30) as c:
        c.get("/user/login/").raise_for_status()
        login = c.post("/user/login/", data={"email": email, "password": password,
                                             "csrfmiddlewaretoken": c.cookies["csrftoken"]},
                       headers={"Referer": f"{url}/user/login/"})
        if login.status_code != 302:
            raise RuntimeError(f"login as {email} failed: HTTP {login.status_code}")
        csrf = {"X-CSRFToken": c.cookies["csrftoken"], "Referer": f"{url}/"}
        created = c.post("/api/token/", headers=csrf)
        created.raise_for_status()
        legacy = c.get("/api/current-user/token")
        legacy.raise_for_status()
        return created.json()["token"], legacy.json()["token"]


def start_label_studio(workdir: Path, *, extra_env: dict[str, str] | None = None) -> LabelStudioServer:
    """Start Label Studio from .ls-venv on 127.0.0.1 at a free port, data under ``workdir``.

    Settings: SQLite in ``workdir/ls-data`` (LABEL_STUDIO_BASE_DATA_DIR), the first user from
    LABEL_STUDIO_USERNAME/PASSWORD, no version check, analytics or Sentry (all reach the internet), local
    files served from ``workdir/data`` (made here), and private addresses allowed for webhooks and
    ML backends (SSRF_PROTECTION_ENABLED=false, ML_BLOCK_LOCAL_IP=false): the defaults refuse any
    URL resolving to 127.0.0.0/8 or a private network with HTTP 403, which is where coldstart's
    receiver runs in these tests.
    """
    data_root = workdir / "data"
    data_root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items()
           if k not in ("HOST", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "DJANGO_SETTINGS_MODULE")
           and not k.startswith(("LABEL_STUDIO_", "PREFECT_", "MLFLOW_"))}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(workdir / "ls-data"),
        "LABEL_STUDIO_USERNAME": EMAIL,
        "LABEL_STUDIO_PASSWORD": PASSWORD,
        "LABEL_STUDIO_HOST": url,
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        # No error reports to the internet; and with sentry-sdk 3.x (not what the pinned
        # environment has) an empty DSN is what lets label-studio 1.23.2 start at all.
        "SENTRY_DSN": "",
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(data_root),
        "SSRF_PROTECTION_ENABLED": "false",
        "ML_BLOCK_LOCAL_IP": "false",
        **(extra_env or {}),
    })
    log = workdir / "label-studio.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(LS_BIN), "start", "--no-browser", "--internal-host", "127.0.0.1",
                                 "--port", str(port)], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = None
    try:
        took = _wait_healthy(url, proc, log)
        token, legacy = personal_access_token(url, EMAIL, PASSWORD)
        server = LabelStudioServer(url=url, token=token, legacy_token=legacy, data_root=data_root, email=EMAIL,
                                   password=PASSWORD, log=log, process=proc)
        print(f"\nLabel Studio at {url} healthy after {took:.1f} s (log: {log})")
        return server
    finally:
        if server is None:
            LabelStudioServer(url, "", "", data_root, EMAIL, PASSWORD, log, proc).stop()


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """The session's Label Studio server (see LabelStudioServer); stopped at the end."""
    if os.environ.get("COLDSTART_TEST_LABELSTUDIO") != "1":
        pytest.skip("real Label Studio tests run only with COLDSTART_TEST_LABELSTUDIO=1: make test-labelstudio")
    if not LS_BIN.exists():
        pytest.skip(f"{LS_BIN.relative_to(ROOT)} is missing: run `make labelstudio-env` (or `make test-labelstudio`)")
    server = start_label_studio(tmp_path_factory.mktemp("label-studio"))
    try:
        yield server
    finally:
        server.stop()
