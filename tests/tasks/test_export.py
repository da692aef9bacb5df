"""`coldstart export`: what torchvision and pycocotools load from it, whatever the files are named.

The stages run without Prefect (as `coldstart stage` / `dvc repro` run them), on the tiny model;
a git tag stands for the round's tag.
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from coldstart.flows.cli import main as cli
from tests.conftest import write_image


@pytest.fixture
def labeled(make_workspace):
    """A workspace after one round's stages, its images stored under names ImageFolder would skip:
    a JPEG and a PNG as ``incoming/<hash>.img`` (what ``coldstart api`` keeps), a TIFF as ``.dat``,
    a GIF, and plain PNG/JPEG/WEBP names."""
    ws = make_workspace()
    write_image(ws.images / "scans" / "a.png", seed=1)
    write_image(ws.images / "scans" / "b.JPG", seed=2, fmt="JPEG")
    write_image(ws.images / "scans" / "c.webp", seed=3, fmt="WEBP")
    write_image(ws.images / "incoming" / "3f9a0c.img", seed=4, fmt="JPEG")
    write_image(ws.images / "incoming" / "77b1e2.img", seed=5, fmt="PNG")
    write_image(ws.images / "odd" / "scan.dat", seed=6, fmt="TIFF")
    rng = np.random.default_rng(7)
    Image.fromarray((rng.random((40, 56)) * 255).astype(np.uint8), "L").convert("P").save(ws.images / "anim.gif")
    for stage in ("scan", "embed", "train", "relabel"):
        assert cli(["stage", stage, "-w", str(ws.root)]) == 0
    subprocess.run(["git", "tag", "round-001"], cwd=ws.root, check=True, capture_output=True)
    return ws


def test_imagefolder_export_loads_every_image_in_torchvision(labeled, tmp_path):
    from torchvision.datasets import ImageFolder

    from coldstart.tasks.export import IMAGEFOLDER_EXTENSIONS

    ws = labeled
    assert cli(["export", "-w", str(ws.root), "--format", "csv", "--out", str(tmp_path / "labels.csv")]) == 0
    n = len((tmp_path / "labels.csv").read_text(encoding="utf-8").splitlines()) - 1
    assert n == 7
    for mode, extra in (("links", ["--link"]), ("copies", [])):
        out = tmp_path / mode
        assert cli(["export", "-w", str(ws.root), "--format", "imagefolder", "--out", str(out), *extra]) == 0
        files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        names = {f.split("/", 1)[1] for f in files}
        assert len(files) == n and all(f.lower().endswith(IMAGEFOLDER_EXTENSIONS) for f in files)
        # Extensions ImageFolder loads are kept; others get their decoded format's appended.
        assert {"scans__a.png", "scans__b.JPG", "scans__c.webp", "incoming__3f9a0c.img.jpg",
                "incoming__77b1e2.img.png", "odd__scan.dat.tif", "anim.gif.png"} == names
        data = ImageFolder(str(out))
        assert len(data) == n  # nothing skipped
        for k in range(len(data)):  # and every one decodes
            image, target = data[k]
            assert image.size in ((64, 48), (56, 40)) and 0 <= target < len(data.classes)
        gif = next(out.rglob("anim.gif.png"))
        assert not gif.is_symlink() and Image.open(gif).format == "PNG"  # GIF: a PNG copy, not a link
        jpeg = next(out.rglob("incoming__3f9a0c.img.jpg"))
        assert jpeg.is_symlink() == (mode == "links") and Image.open(jpeg).format == "JPEG"
        if mode == "copies":  # plain files people may edit: one link, the umask's mode (not the cache's 0444)
            umask = os.umask(0)
            os.umask(umask)
            assert {(p.stat().st_nlink, p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()} == \
                {(1, 0o666 & ~umask)}


def test_coco_export_of_image_labels_loads_and_every_annotation_has_a_mask(labeled, tmp_path):
    from pycocotools.coco import COCO

    ws = labeled
    out = tmp_path / "coco.json"
    assert cli(["export", "-w", str(ws.root), "--format", "coco", "--out", str(out)]) == 0
    doc = json.loads(out.read_text(encoding="utf-8"))
    coco = COCO(str(out))
    ann_ids = coco.getAnnIds()
    assert len(ann_ids) == len(coco.getImgIds()) == 7
    names = set(ws.params().ontology.class_names)
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} >= names
    for ann in coco.loadAnns(ann_ids):
        img = coco.imgs[ann["image_id"]]
        w, h = img["width"], img["height"]
        assert ann["bbox"] == [0, 0, w, h] and ann["area"] == w * h and ann["iscrowd"] == 0
        mask = coco.annToMask(ann)
        assert mask.shape == (h, w) and mask.all()  # an image-level label: the whole image
        assert coco.annToRLE(ann)["size"] == [h, w]
    assert {a["source"] for a in doc["annotations"]} <= {"human", "zero-shot", "probe", "zs-probe"}
