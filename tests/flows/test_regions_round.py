"""A round with regions.enabled: SAM (random vit_t) segments each new image once, the round's
labeler labels every region, and the regions table is versioned with the round's tag."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest

from coldstart.flows.round import labeling_round
from coldstart.tasks.demodata import write_digits
from coldstart.tasks.regionexports import regions_to_coco
from coldstart.tasks.regiontable import read_regions, regions_dir
from coldstart.tasks.version import init_workspace
from tests.conftest import tiny_params, write_image

pytestmark = pytest.mark.slow

# Random weights: SAM's predicted IoU and stability are low, so the filters are opened up; a few
# points keep the CPU time small.
REGIONS = """
regions:
  enabled: true
  sam_type: vit_t
  precision: fp32
  points_per_side: 3
  pred_iou_thresh: 0.0
  stability_score_thresh: 0.0
  box_nms_thresh: 1.0
  min_area: 0
  max_area_fraction: 1.0
  mask_nms_thresh: 1.0
"""


def test_a_round_with_regions_labels_every_region_and_versions_them(prefect_harness, tmp_path):
    from pycocotools.coco import COCO

    # Tiles: each image's label comes with its winning tile, which SAM outlines (defect localization).
    text = tiny_params(4).replace("  tiles: []", "  tiles:\n    - {size: 0.5, stride: 0.5}")
    # Every cluster proposed (random weights make none coherent): the regions' proposals are checked.
    ws = init_workspace(tmp_path / "ws", params_text=text + REGIONS + "discover:\n  min_size: 2\n  min_cohesion: -1\n")
    write_digits(ws.images, n=6, size=48)
    r1 = labeling_round(workspace=str(ws.root))
    got = r1.regions
    # Regions with no confident label (random weights: all of them) are clustered into proposals.
    from coldstart.tasks.discover import read_proposals

    every = [r for r in read_regions(regions_dir(ws), dropped=True) if r.dropped != "contained"]
    assert r1.discover.region_candidates == sum(r.confidence < 0.5 for r in every) > 0
    _, proposed = read_proposals(ws)
    in_regions = [p for p in proposed if p.kind == "regions"]
    assert in_regions and r1.discover.region_proposals == len(in_regions)
    assert [p.id for p in proposed] == list(range(1, len(proposed) + 1))
    assert all(set(p.members) <= {r.region_id for r in every} and len(p.boxes) == len(p.paths) for p in in_regions)
    assert got.enabled and got.sam_model_id == "vit_t@random-seed0" and got.images_segmented == 6
    assert got.masks > 0 and got.new_regions > 0 and got.regions == got.new_regions
    table = read_regions(regions_dir(ws))
    classes = ws.params().ontology.class_names
    assert len(table) == got.regions and {r.label for r in table} <= set(classes)
    assert all(r.labeler.startswith("coldstart-tiny@random-seed0+") for r in table)
    assert all(0 <= r.bbox[0] and r.bbox[0] + r.bbox[2] <= 48 and r.rle["size"] == [48, 48] for r in table)
    # Defect localization: each image's winning tile became a box prompt (no class is negative
    # here); images whose tile SAM left empty have none.
    from coldstart.tasks.regiontable import DEFECTS_DIR
    from coldstart.tasks.relabel import read_resolved

    outlined = read_regions(regions_dir(ws) / DEFECTS_DIR)
    resolved = {r["image_id"]: r for r in read_resolved(ws)}
    assert all(r["location"] for r in resolved.values())
    assert 0 < got.defects_localized == len(outlined) <= len(resolved)
    for r in outlined:
        assert r.label == resolved[r.image_id]["label"] and r.labeler.endswith("+box:" + resolved[r.image_id]["location"])
    # The table exports as COCO that pycocotools reads.
    images = sorted({(r.image_id, r.path, 48, 48) for r in table})
    doc = regions_to_coco(table, images, classes)
    coco = COCO()
    coco.dataset = doc
    coco.createIndex()
    assert len(coco.getAnnIds()) == len(table)

    # Round 2: one new image; only it is segmented, earlier regions stay as they were.
    write_image(ws.images / "later" / "new.png", seed=3, size=(40, 56))
    r2 = labeling_round(workspace=str(ws.root))
    assert r2.regions.images_segmented == 1 and r2.regions.regions == got.regions + r2.regions.new_regions
    assert {r.region_id for r in table} <= {r.region_id for r in read_regions(regions_dir(ws))}
    assert ws.round_tags() == [1, 2]
    # Round 3: a segmenting setting changed, so every image is segmented again (and its regions replaced).
    ws.params_file.write_text(ws.params_file.read_text().replace("points_per_side: 3", "points_per_side: 2"))
    r3 = labeling_round(workspace=str(ws.root))
    assert r3.regions.images_segmented == 7 and r3.regions.regions == r3.regions.new_regions
    from coldstart.tasks.samcache import segmented_parts

    segmenters = {r["sam_model_id"] for r in segmented_parts(regions_dir(ws)).read().to_pylist()}
    assert len(segmenters) == 1 and next(iter(segmenters)).startswith("vit_t@random-seed0/")
    assert segmented_parts(regions_dir(ws)).read().num_rows == 7  # one row per image, the latest settings
    assert ws.round_tags() == [1, 2, 3]
    # Round 4: SAM's default thresholds keep no random-weight mask: the round says what to lower.
    ws.params_file.write_text(ws.params_file.read_text().replace("pred_iou_thresh: 0.0", "pred_iou_thresh: 0.88")
                              .replace("stability_score_thresh: 0.0", "stability_score_thresh: 0.95"))
    r4 = labeling_round(workspace=str(ws.root))
    assert r4.regions.images_segmented == 7 and r4.regions.masks == 0
    assert "HINT        SAM kept no mask on the 7 image(s) it segmented" in r4.describe()
    assert "regions.pred_iou_thresh (now 0.88)" in r4.regions.hint
    with contextlib.chdir(ws.root):  # the table is a DVC output, recorded and pushed with the tag
        status = subprocess.run([sys.executable, "-m", "dvc", "status", "-c"], capture_output=True, text=True)
        lock = (ws.root / "dvc.lock").read_text()
    assert "data/labels/regions" in lock and status.returncode == 0 and "new:" not in status.stdout, status.stdout
    assert ws.round_tags() == [1, 2, 3, 4]
