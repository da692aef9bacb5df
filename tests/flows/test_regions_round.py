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
    ws = init_workspace(tmp_path / "ws", params_text=text + REGIONS)
    write_digits(ws.images, n=6, size=48)
    r1 = labeling_round(workspace=str(ws.root))
    got = r1.regions
    assert got.enabled and got.sam_model_id == "vit_t@random-seed0" and got.images_segmented == 6
    assert got.masks > 0 and got.new_regions > 0 and got.regions == got.new_regions
    table = read_regions(regions_dir(ws))
    classes = ws.params().ontology.class_names
    assert len(table) == got.regions and {r.label for r in table} <= set(classes)
    assert all(r.labeler.startswith("coldstart-tiny@random-seed0+") for r in table)
    assert all(0 <= r.bbox[0] and r.bbox[0] + r.bbox[2] <= 48 and r.rle["size"] == [48, 48] for r in table)
    # Defect localization: each image's winning tile became a box prompt (no class is negative
    # here); images whose tile SAM left empty have none.
    from coldstart.tasks.regions import DEFECTS_DIR
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
    with contextlib.chdir(ws.root):  # the table is a DVC output, recorded and pushed with the tag
        status = subprocess.run([sys.executable, "-m", "dvc", "status", "-c"], capture_output=True, text=True)
        lock = (ws.root / "dvc.lock").read_text()
    assert "data/labels/regions" in lock and status.returncode == 0 and "new:" not in status.stdout, status.stdout


def test_people_answer_regions_by_id_and_the_next_round_learns_from_them(prefect_harness, tmp_path):
    """The region loop: round 1 offers its least certain regions (round-001.regions.csv and
    polygon tasks); a person labels them by region id; round 2 takes the answers in as region
    events (not image labels), trains on the regions' crops beside the images, keeps the
    people's labels on those regions, labels every other region with the new head, and offers
    only regions nobody was asked about yet."""
    import csv
    import json
    import math

    from coldstart.tasks.demodata import answer_batch
    from coldstart.tasks.labellog import human_labels, read_events, region_answers
    from coldstart.tasks.regiontable import crop_store

    text = tiny_params(4) + REGIONS + "  review_budget: 5\n"
    ws = init_workspace(tmp_path / "ws", params_text=text)
    truth = write_digits(ws.images, n=8, size=48)
    r1 = labeling_round(workspace=str(ws.root))
    assert r1.select.regions == 5
    asked = list(csv.DictReader(open(ws.review / "round-001.regions.csv", encoding="utf-8")))
    table = {r.region_id: r for r in read_regions(regions_dir(ws), dropped=True)}
    assert len(asked) == 5 and all(a["region_id"] in table and a["label"] == "" for a in asked)
    least = sorted(r.margin for r in table.values() if r.dropped != "contained")[:5]
    assert sorted(table[a["region_id"]].margin for a in asked) == least  # the least certain ones
    tasks = json.loads((ws.review / "round-001.regions.tasks.json").read_text(encoding="utf-8"))
    polygons = {res["id"].split("-")[0] for t in tasks for res in t["predictions"][0]["result"]}
    assert polygons == {a["region_id"] for a in asked}
    assert "PolygonLabels" in (ws.review / "label_config.xml").read_text(encoding="utf-8")
    # The person: each region gets its image's digit, except the first, called a "zero".
    for k, a in enumerate(asked):
        a["label"], a["annotator"] = ("zero" if k == 0 else truth[a["image"]]), "region-annotator"
    with open(ws.inbox / "regions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(asked[0]))
        w.writeheader()
        w.writerows(asked)
    answer_batch(ws.review / "round-001.csv", truth, ws.inbox)

    r2 = labeling_round(workspace=str(ws.root))
    events = read_events(ws)
    assert r2.intake.events_added == 5 + r1.select.batch_size
    assert len(region_answers(events)) == 5 and len(human_labels(events)) == r1.select.batch_size
    assert r2.train.region_labels == 5 and r2.train.n_labels == 5 + r1.select.batch_size
    now = {r.region_id: r for r in read_regions(regions_dir(ws), dropped=True)}
    for k, a in enumerate(asked):
        r = now[a["region_id"]]
        assert (r.label, r.confidence, r.labeler) == (a["label"], 1.0, "human:region-annotator")
    assert r2.regions.human == 5
    # Every other region is labeled by this round's labeler (a new head: new labels where it disagrees).
    assert r2.regions.labeler != r1.regions.labeler
    assert {r.labeler for r in now.values() if not r.labeler.startswith("human:")} == {r2.regions.labeler}
    assert len(crop_store(ws, "coldstart-tiny@random-seed0", ws.params().regions)) == len(now)
    offered = {a["region_id"] for a in csv.DictReader(open(ws.review / "round-002.regions.csv", encoding="utf-8"))}
    assert offered and not offered & {a["region_id"] for a in asked}

    # Label Studio: the polygon tasks come back with each offered region relabeled and one outline
    # a person drew; the drawn one becomes a region of its own, and the round after trains on it.
    regions_tasks = json.loads((ws.review / "round-002.regions.tasks.json").read_text(encoding="utf-8"))
    export, relabeled = [], {}
    for n, t in enumerate(regions_tasks, start=1):
        results = []
        for res in t["predictions"][0]["result"]:
            label = truth[t["data"]["path"]]
            results.append({**res, "value": {**res["value"], "polygonlabels": [label]}, "origin": "prediction-changed"})
            relabeled[res["id"].split("-")[0]] = label
        if n == 1:
            results.append({"id": "drawn-by-hand", "from_name": "region", "to_name": "image", "type": "polygonlabels",
                            "original_width": 48, "original_height": 48, "image_rotation": 0, "origin": "manual",
                            "value": {"points": [[2, 2], [40, 2], [40, 40], [2, 40]], "closed": True,
                                      "polygonlabels": ["seven"]}})
        export.append({"id": n, "data": t["data"], "annotations": [
            {"id": n, "completed_by": {"id": 4, "email": "ls@example.com"}, "was_cancelled": False, "result": results}]})
    (ws.inbox / "ls-regions.json").write_text(json.dumps(export), encoding="utf-8")
    r3 = labeling_round(workspace=str(ws.root))
    assert not r3.intake.files_rejected, r3.intake.problems
    assert r3.regions.drawn == 1 and r3.regions.human == 5 + len(relabeled) + 1
    now = {r.region_id: r for r in read_regions(regions_dir(ws), dropped=True)}
    drawn = [r for r in now.values() if math.isnan(r.predicted_iou) and r.labeler.startswith("human:")]
    assert len(drawn) == 1 and drawn[0].label == "seven" and drawn[0].labeler == "human:ls@example.com"
    assert drawn[0].bbox[2] == pytest.approx(0.38 * 48, abs=2) and drawn[0].image_id == regions_tasks[0]["data"]["image_id"]
    assert all(now[rid].label == label for rid, label in relabeled.items())
    r4 = labeling_round(workspace=str(ws.root), force=True)
    assert r4.train.region_labels == 5 + len(relabeled) + 1
