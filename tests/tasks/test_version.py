"""The version stage's hand-off of the scan's hashes to DVC (so DVC does not read new images)."""

from __future__ import annotations

import contextlib
import hashlib
import os

import yaml

from coldstart.tasks.scan import HashedFiles, scan
from coldstart.tasks.version import _hand_hashes_to_dvc, init_workspace
from tests.conftest import tiny_params, write_image


def _dir_listing(ws, part: str) -> dict[str, str]:
    import json

    md5 = yaml.safe_load((ws.images / f"{part}.dvc").read_text())["outs"][0]["md5"]
    obj = ws.root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    return {e["relpath"]: e["md5"] for e in json.loads(obj.read_text())}


def test_dvc_takes_the_scan_s_md5_and_hashes_a_file_changed_since_itself(tmp_path):
    from dvc.repo import Repo

    ws = init_workspace(tmp_path / "ws", params_text=tiny_params(4))
    a = write_image(ws.images / "batch" / "a.png", seed=1, size=(16, 16))
    b = write_image(ws.images / "batch" / "b.png", seed=2, size=(16, 16))
    result = scan(ws, ws.params().scan, 1)
    assert len(result.hashed) == 2 and result.new_images == 2
    assert dict(zip(result.hashed.paths, result.hashed.md5s))[str(a)] == hashlib.md5(a.read_bytes()).hexdigest()
    # A stand-in md5 proves DVC takes the handed hash and does not read the file; b is rewritten
    # after the scan read it, so its hash must not be handed over: DVC hashes it itself.
    planted = HashedFiles()
    for path in (a, b):
        planted.add(str(path), os.stat(path), "0" * 32)
    write_image(b, seed=3, size=(16, 16))
    os.utime(b, ns=(os.stat(b).st_atime_ns, os.stat(b).st_mtime_ns + 10**9))
    with contextlib.chdir(ws.root), Repo(str(ws.root)) as repo:
        assert _hand_hashes_to_dvc(repo, planted) == 1
        repo.add([str(ws.images / "batch")])
    listing = _dir_listing(ws, "batch")
    assert listing == {"a.png": "0" * 32, "b.png": hashlib.md5(b.read_bytes()).hexdigest()}
