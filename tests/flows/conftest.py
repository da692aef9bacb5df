import os

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from coldstart.flows.prefectserver import remember_database, spawn_server, stop_server, wait_healthy


@pytest.fixture(scope="session", autouse=True)
def prefect_harness(tmp_path_factory):
    """One Prefect API server per test worker, started the way a round starts its own
    (flows/prefectserver.py, its database seeded from the migrated template), which every flow
    of the session reports to: the rounds run in the test process (these settings), and the
    `coldstart` subprocesses (PREFECT_API_URL in the environment they inherit). Tests whose
    subject is a round's own server, or `serve`'s, drop PREFECT_API_URL from their subprocess's
    environment (test_fault_matrix.py, test_serve*.py)."""
    home = tmp_path_factory.mktemp("prefect-server")
    proc, api, new = spawn_server(home)
    try:
        if not wait_healthy(proc, api, timeout=90):
            pytest.fail(f"the tests' Prefect server did not start:\n{(home / 'round-server.log').read_text()[-3000:]}")
        if new:
            remember_database(home)
        os.environ["PREFECT_API_URL"] = api
        with temporary_settings({PREFECT_API_URL: api}):
            yield api
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        stop_server(proc)
