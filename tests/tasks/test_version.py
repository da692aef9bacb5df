"""The version stage's hand-off of the scan's hashes to DVC (so DVC does not read new images)."""

from __future__ import annotations

import contextlib
import hashlib
import os

import yaml

from coldstart.tasks.imagefiles import HashedFiles
from coldstart.tasks.scan import scan
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


def test_the_plan_names_the_changed_and_gone_parts_and_runs_neither_dvc_nor_git(tmp_path):
    """version = plan_version (reads files only) + apply_version (DVC, git, the tag: exercised by
    every round test). Here the plan alone, against the state a versioned round 1 leaves."""
    import json

    from coldstart.tasks.version import VERSIONED, plan_version

    ws = init_workspace(tmp_path / "ws", params_text=tiny_params(4))
    write_image(ws.images / "batch1" / "a.png", seed=1, size=(16, 16))
    write_image(ws.images / "batch2" / "b.png", seed=2, size=(16, 16))
    write_image(ws.images / "loose.png", seed=3, size=(16, 16))
    params = ws.params()
    found = scan(ws, params.scan, 1)
    listing = sorted(p.relative_to(ws.root) for p in ws.root.rglob("*") if ".git" not in p.parts)
    first = plan_version(ws, params, 1, "coldstart round 1: test", found.parts, found.unversionable)
    assert first.changed == ["", "batch1", "batch2"] and first.gone == [] and first.tag == "round-001"
    assert first.rescan and not first.legacy and first.big == []
    assert sorted(p.relative_to(ws.root) for p in ws.root.rglob("*") if ".git" not in p.parts) == listing
    # As round 1's apply leaves it: a .dvc file per part, the versioned digests recorded.
    for part in ("batch1", "batch2"):
        (ws.images / f"{part}.dvc").write_text("outs:\n- path: " + part + "\n")
    (ws.images / "loose.png.dvc").write_text("outs:\n- path: loose.png\n")
    scan_params = json.dumps(params.scan.model_dump(), sort_keys=True)
    ws.state_dir.mkdir(exist_ok=True)
    (ws.state_dir / VERSIONED).write_text(json.dumps({"scan": scan_params, "parts": found.parts}))
    unchanged = plan_version(ws, params, 2, "m", found.parts, found.unversionable)
    assert unchanged.changed == [] and unchanged.gone == [] and not unchanged.rescan
    # Round 2: batch2 deleted, batch1 grown; the loose file as it was.
    (ws.images / "batch2" / "b.png").unlink()
    (ws.images / "batch2").rmdir()
    write_image(ws.images / "batch1" / "c.png", seed=4, size=(16, 16))
    found = scan(ws, params.scan, 2)
    second = plan_version(ws, params, 2, "coldstart round 2: test", found.parts, found.unversionable)
    assert second.changed == ["batch1"] and second.gone == ["batch2"] and second.rescan
    assert (ws.images / "batch2.dvc").is_file() and ws.round_tags() == []  # still there: nothing applied
