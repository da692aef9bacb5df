import pytest
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect database for the whole session (~10 s to start)."""
    with prefect_test_harness(server_startup_timeout=90):
        yield
