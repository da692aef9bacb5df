"""Remote faults with real processes (a read-only, replaced, then missing DVC remote; a copied
workspace), split from test_fault_matrix.py so the two run on different workers (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from coldstart.tasks.demodata import write_digits
from coldstart.tasks.version import init_workspace
from coldstart.tasks.workspace import Workspace
from tests.conftest import tiny_params
from tests.flows.roundfork import RoundForks
from tests.flows.test_fault_matrix import _env

pytestmark = pytest.mark.slow


def test_remote_faults_give_a_clear_message_and_the_next_round_pushes_what_is_missing(tmp_path):
    ws = init_workspace(tmp_path / "ws", params_text=tiny_params(6))
    write_digits(ws.images, n=12, size=32)
    env = _env(tmp_path, own_server=False)
    with RoundForks(env) as forks:
        assert forks.round(ws).returncode == 0
        remote = ws.root / ".dvc-remote"
        # Read-only remote: exit 2, one clear line, labels and data intact, no tag.
        write_digits(ws.images / "b", n=3, size=32)
        os.chmod(remote, 0o555)
        for d in remote.rglob("*"):
            if d.is_dir():
                os.chmod(d, 0o555)
        try:
            ro = forks.round(ws)
        finally:
            for d in [remote, *remote.rglob("*")]:
                if d.is_dir():
                    os.chmod(d, 0o755)
        if os.geteuid() != 0:  # root writes through permissions
            assert ro.returncode == 2 and "Traceback" not in ro.stderr, ro.stderr
            assert "coldstart: error: DVC could not record round 2" in ro.stderr and "writable" in ro.stderr
            assert ws.round_tags() == [1]
        # The remote replaced by something else (a file): the same clear message.
        tags = ws.round_tags()  # [1], or [1, 2] where the read-only remote did not stop root
        write_digits(ws.images / "b2", n=3, size=32)
        shutil.rmtree(remote)
        remote.write_text("not a folder")
        replaced = forks.round(ws)
        assert replaced.returncode == 2 and "Traceback" not in replaced.stderr, replaced.stderr
        assert f"coldstart: error: DVC could not record round {len(tags) + 1}" in replaced.stderr
        assert ws.round_tags() == tags
        # The remote gone: the next round recreates it with every round's objects, not only its own.
        remote.unlink()
        write_digits(ws.images / "c", n=3, size=32)
        again = forks.round(ws)
        assert again.returncode == 0, again.stderr
        with contextlib.chdir(ws.root):
            status = subprocess.run([sys.executable, "-m", "dvc", "status", "-c", "-a", "-T"], env=env,
                                    capture_output=True, text=True)
        assert status.returncode == 0 and "new:" not in status.stdout and "missing:" not in status.stdout, status.stdout
        # A copied workspace: its first round moves it to a remote of its own, with every round's
        # objects; the original's remote gets nothing from it.
        copy = Path(shutil.copytree(ws.root, tmp_path / "copy", symlinks=True))
        before = sorted(p.relative_to(remote) for p in remote.rglob("*"))
        write_digits(copy / "data/images" / "d", n=3, size=32)
        assert forks.round(Workspace(copy)).returncode == 0
        assert sorted(p.relative_to(remote) for p in remote.rglob("*")) == before
        from configobj import ConfigObj

        assert ConfigObj(str(copy / ".dvc" / "config"))['remote "local"']["url"] == str(copy / ".dvc-remote")
        with contextlib.chdir(copy):
            status = subprocess.run([sys.executable, "-m", "dvc", "status", "-c", "-a", "-T"], env=env,
                                    capture_output=True, text=True)
        assert status.returncode == 0 and "new:" not in status.stdout and "missing:" not in status.stdout, status.stdout
