"""The fault matrix's second chain (test_fault_matrix.py ``kill_chain``), in a file of its own so
that the other test worker runs it beside the first: round 2 killed with SIGKILL from relabel
on, through its tag (in versioning, at link_run), then round 3 killed after its tag. Its rounds
report to the tests' shared Prefect server (tests/flows/conftest.py): the first chain checks that
a round's own server dies with it."""

from __future__ import annotations

import sys

import pytest

from tests.flows.test_fault_matrix import LATE, kill_chain

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds processes through /proc")
def test_kill_9_at_every_stage_boundary_from_relabel_on_then_the_round_completes_once(tmp_path):
    kill_chain(tmp_path, LATE)
