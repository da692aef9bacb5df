import io
import shutil

import numpy as np
import pytest
from PIL import Image

from coldstart.tasks.config import ScanConfig
from coldstart.tasks.imagefiles import ImageDecodeError, load_rgb
from coldstart.tasks.manifest import read_manifest
from coldstart.tasks.scan import plan_scan, scan
from coldstart.tasks.workspace import Workspace, read_csv
from tests.conftest import write_image


@pytest.fixture
def ws(tmp_path):
    (tmp_path / "params.yaml").write_text("")
    return Workspace(tmp_path)


def test_scan_quarantines_bad_files_and_dedupes(ws):
    write_image(ws.images / "a.jpg", seed=1, fmt="JPEG")
    write_image(ws.images / "子目录" / "b.png", seed=2)
    shutil.copyfile(ws.images / "a.jpg", ws.images / "copy of a.jpg")
    t = write_image(ws.images / "trunc.jpg", seed=3, size=(128, 128), fmt="JPEG")
    t.write_bytes(t.read_bytes()[:600])
    (ws.images / "zero.jpg").write_bytes(b"")
    (ws.images / "page.jpg").write_text("<html></html>")
    Image.new("RGB", (3000, 3000)).save(ws.images / "big.png")
    r = scan(ws, ScanConfig(max_pixels=5_000_000), round_no=1)
    assert (r.images, r.quarantined, r.duplicates, r.new_images) == (2, 4, 1, 2)
    reasons = {q["path"]: q["reason"] for q in read_csv(ws.quarantine)}
    assert set(reasons) == {"trunc.jpg", "zero.jpg", "page.jpg", "big.png"}
    assert "truncated" in reasons["trunc.jpg"] and "empty" in reasons["zero.jpg"]
    assert "not an image" in reasons["page.jpg"] and "scan.max_pixels" in reasons["big.png"]
    rows = {m["path"]: m["image_id"] for m in read_manifest(ws)}
    assert rows["a.jpg"] == rows["copy of a.jpg"] and "子目录/b.png" in rows
    # A second scan finds nothing new; a fixed file leaves quarantine.
    (ws.images / "zero.jpg").unlink()
    write_image(ws.images / "page.jpg", seed=4, fmt="JPEG")
    r2 = scan(ws, ScanConfig(max_pixels=5_000_000), round_no=2)
    assert (r2.images, r2.quarantined, r2.new_images) == (3, 2, 1)


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "o.jpg", exif=exif)
    assert load_rgb(tmp_path / "o.jpg").size == (20, 40)


def test_modes_normalise_to_rgb8(tmp_path):
    arr16 = np.full((4, 4), 32768, dtype=np.uint16)
    Image.fromarray(arr16).save(tmp_path / "g16.png")
    out = np.asarray(load_rgb(tmp_path / "g16.png"))
    assert out.dtype == np.uint8 and out.shape == (4, 4, 3) and abs(int(out[0, 0, 0]) - 128) <= 1
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert np.asarray(load_rgb(tmp_path / "t.png"))[0, 0].tolist() == [255, 255, 255]
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    assert load_rgb(tmp_path / "c.jpg").mode == "RGB"


def test_draft_decodes_jpeg_at_reduced_scale(tmp_path):
    write_image(tmp_path / "big.jpg", size=(960, 1280), fmt="JPEG")
    assert load_rgb(tmp_path / "big.jpg", draft=224).size[0] < 1280
    assert load_rgb(tmp_path / "big.jpg").size == (1280, 960)


def test_bomb_header_refused_before_decoding(tmp_path):
    buf = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buf, "PNG")
    (tmp_path / "bomb.png").write_bytes(buf.getvalue())
    with pytest.raises(ImageDecodeError, match="too large"):
        load_rgb(tmp_path / "bomb.png", max_pixels=100_000_000)


def test_walk_order_hidden_files_and_links(tmp_path):
    """Folders' files in name order before their subfolders; hidden entries skipped; dangling
    links and linked folders never followed, but listed with the reason (a linked folder would
    scan the same images twice)."""
    import os

    from coldstart.tasks.scan import _walk

    for rel in ("b.png", "a.png", "sub/z.png", "sub/deeper/y.png", "a-sub/x.png", ".hidden/h.png", ".h.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    os.symlink(tmp_path / "sub", tmp_path / "linked-folder")
    os.symlink(tmp_path / "missing.png", tmp_path / "dangling.png")
    walked = {rel: problem for _, rel, _, problem in _walk(tmp_path)}
    assert list(walked) == ["a.png", "b.png", "dangling.png", "linked-folder", "a-sub/x.png", "sub/z.png",
                            "sub/deeper/y.png"]
    assert "broken symbolic link" in walked["dangling.png"] and "to a folder" in walked["linked-folder"]
    assert walked["a.png"] is None and walked["sub/deeper/y.png"] is None


def test_the_plan_writes_nothing_and_names_what_changed_went_and_was_refused(ws):
    """scan = plan_scan (reads the disk against the last tagged manifest) + apply_scan (writes)."""
    write_image(ws.images / "a.png", seed=1)
    write_image(ws.images / "b.png", seed=2)
    scan(ws, ScanConfig(), round_no=1)
    manifest = sorted(p.name for p in (ws.root / "data" / "store" / "manifest").glob("*"))
    (ws.images / "b.png").unlink()
    write_image(ws.images / "c.png", seed=3)
    (ws.images / "empty.png").write_bytes(b"")
    plan = plan_scan(ws, ScanConfig(), round_no=2)
    assert [r[0] for r in plan.changed] == ["c.png"] and plan.changed[0][-1] == 2  # first seen in round 2
    assert plan.deleted == ["b.png"] and [q["path"] for q in plan.quarantine] == ["empty.png"]
    assert (plan.images, plan.files, plan.new_images, plan.quarantine_changed) == (2, 2, 1, True)
    # Nothing written: the manifest's parts and the (empty) quarantine list are as round 1 left them.
    assert sorted(p.name for p in (ws.root / "data" / "store" / "manifest").glob("*")) == manifest
    assert read_csv(ws.quarantine) == []
    r = scan(ws, ScanConfig(), round_no=2)
    assert (r.images, r.new_images, r.quarantined, r.changed) == (2, 1, 1, True)
    assert {m["path"] for m in read_manifest(ws)} == {"a.png", "c.png"}
