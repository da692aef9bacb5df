"""The region loop over rounds (people answer regions by id, Label Studio polygons come back),
split from test_regions_round.py so the two run on different workers."""

from __future__ import annotations

import pytest

from coldstart.flows.round import labeling_round
from coldstart.tasks.demodata import write_digits
from coldstart.tasks.regiontable import read_regions, regions_dir
from coldstart.tasks.version import init_workspace
from tests.conftest import tiny_params
from tests.flows.test_regions_round import REGIONS

pytestmark = pytest.mark.slow


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
    truth = write_digits(ws.images, n=6, size=48)  # few: SAM encodes each (2 s apiece)
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
