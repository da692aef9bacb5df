"""Human answers for SAM regions through intake: region_id rows of the regions review CSV, and
Label Studio polygons (kept, redrawn or new), against a real regions table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from coldstart.tasks import labelstudio
from coldstart.tasks.config import IntakeConfig, ScanConfig
from coldstart.tasks.intake import intake
from coldstart.tasks.labellog import human_labels, read_events, region_answers
from coldstart.tasks.manifest import read_manifest
from coldstart.tasks.regionexports import regions_to_labelstudio
from coldstart.tasks.regiontable import Region, decode_mask, region_id, regions_dir, write_regions
from coldstart.tasks.scan import scan
from coldstart.tasks.workspace import Workspace, read_csv
from tests.conftest import write_image

CLASSES = ["cat", "dog", "background"]
H, W = 96, 128
HEADER = "region_id,image_id,image,bbox,suggested_label,confidence,label,annotator,note"
UNKNOWN = "0123456789abcdef"


def _mask(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _region(image_id: str, path: str, mask: np.ndarray, label: str, dropped: str = "") -> Region:
    rle = mask_utils.encode(np.asfortranarray(mask))
    counts = rle["counts"].decode("ascii")
    ys, xs = np.nonzero(mask)
    bbox = (float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1))
    return Region(region_id(image_id, counts), image_id, path, label, 0.6, bbox, int(mask.sum()),
                  {"size": [H, W], "counts": counts}, 0.9, 0.95, labeler="test", dropped=dropped, margin=0.2)


@pytest.fixture
def bare(tmp_path):
    """Images a.jpg and b.jpg (128x96), scanned; no regions table."""
    (tmp_path / "params.yaml").write_text("")
    w = Workspace(tmp_path)
    for k, name in enumerate(["a.jpg", "b.jpg"]):
        write_image(w.images / name, seed=k, size=(H, W), fmt="JPEG")
    scan(w, ScanConfig(), round_no=1)
    w.inbox.mkdir(parents=True, exist_ok=True)
    return w


# The proposed regions: r1 (cat) and r2 (background, dropped) on a.jpg, r3 (dog) on b.jpg.
REGIONS = {"r1": ("a.jpg", (10, 40, 20, 60), "cat", ""), "r2": ("a.jpg", (50, 90, 70, 120), "background",
                                                                 "negative_label"),
           "r3": ("b.jpg", (20, 60, 10, 50), "dog", "")}


def regions(ws) -> dict[str, Region]:
    i = ids(ws)
    return {k: _region(i[path], path, _mask(*box), label, dropped) for k, (path, box, label, dropped) in REGIONS.items()}


@pytest.fixture
def ws(bare):
    """``bare`` with the proposed REGIONS in its regions table."""
    write_regions(regions_dir(bare), 1, list(regions(bare).values()))
    return bare


def ids(ws):
    return {r["path"]: r["image_id"] for r in read_manifest(ws)}


def drop(ws, name, text):
    (ws.inbox / name).write_text(text, encoding="utf-8")


def rid(ws, key):
    return regions(ws)[key].region_id


def test_csv_region_answers_become_region_events_never_image_labels(ws):
    i = ids(ws)
    r1, r2, r3 = rid(ws, "r1"), rid(ws, "r2"), rid(ws, "r3")
    drop(ws, "round-002.regions.csv", "\n".join([
        HEADER,
        f"{r1},{i['a.jpg']},a.jpg,20 10 40 30,cat,0.61,dog,ann,",       # relabeled
        f"{r2},,,,background,0.40,background,ann,",                     # a dropped region, no image cells
        f"{r3},{i['b.jpg']},b.jpg,,dog,0.55,,,",                        # not answered: blank
        f"{r1.upper()},,a.jpg,,cat,0.61,dog,bo,",                      # the same answer again: kept once
        f",{i['b.jpg']},b.jpg,,,,cat,ann,",                             # no region id: an image answer
    ]) + "\n")
    r = intake(ws, CLASSES, round_no=2)
    assert r.files_accepted == ["data/inbox/round-002.regions.csv"] and not r.files_rejected
    assert (r.events_added, r.rows_skipped_blank, r.rows_rejected) == (3, 1, 0)
    events = read_events(ws)
    assert [(e.source_row, e.image_id, e.label, e.annotator, e.region_id, e.region) for e in events] == [
        (2, i["a.jpg"], "dog", "ann", r1, None),
        (3, i["a.jpg"], "background", "ann", r2, None),
        (6, i["b.jpg"], "cat", "ann", "", None),
    ]
    assert human_labels(events) == {i["b.jpg"]: "cat"}  # region answers are not image labels
    assert {k: (e.image_id, e.label) for k, e in region_answers(events).items()} == {
        r1: (i["a.jpg"], "dog"), r2: (i["a.jpg"], "background")}
    assert r.human_labels == 1 and r.label_events == 3
    # The log line of an image answer has no region keys; a region answer's has its id.
    lines = [json.loads(line) for line in ws.events.read_text().splitlines()]
    assert lines[0]["region_id"] == r1 and "region" not in lines[0] and "region_id" not in lines[2]


def test_a_csv_of_region_ids_and_labels_alone_is_enough(ws):
    drop(ws, "mine.csv", f"region_id,label\n{rid(ws, 'r3')},cat\n")
    r = intake(ws, CLASSES, round_no=2)
    assert r.events_added == 1
    (e,) = read_events(ws)
    assert (e.image_id, e.label, e.region_id) == (ids(ws)["b.jpg"], "cat", rid(ws, "r3"))
    # A row with neither region nor image says both are missing.
    drop(ws, "empty-id.csv", "region_id,label\n,cat\n")
    r = intake(ws, CLASSES, round_no=3, on_error="reject_file")
    assert "row 2: no image or region given (region_id are empty)" in r.problems[0]


@pytest.mark.parametrize("header", ["region_id,annotator", "note,label"])
def test_the_header_needs_a_label_and_an_image_or_region_column(ws, header):
    drop(ws, "h.csv", f"{header}\n{rid(ws, 'r1')},x\n")
    r = intake(ws, CLASSES, round_no=2)
    assert r.files_rejected == ["data/inbox/h.csv"]
    assert "must have a 'label' column and one of image, path, image_id, region_id" in r.problems[0]


BAD_ROWS = [
    # (row cells after region_id: image_id, image, label), expected reason
    ("{r1},,a.jpg,cat", None),  # row 2: good
    (f"{UNKNOWN},,,dog", f"unknown region '{UNKNOWN}': region ids come from data/review/round-NNN.regions.csv"),
    ("zz-not-hex,,,dog", "region_id 'zz-not-hex' is not a region id (16 hex digits); region ids come from "
                         "data/review/round-NNN.regions.csv"),
    ("1.23457E+15,,,dog", "region_id '1.23457E+15' is not a region id (16 hex digits) (a spreadsheet turned it into "
                          "a number?"),
    ("{r3},,a.jpg,dog", "region {r3} is on image 'b.jpg', but image 'a.jpg' names another image"),
    ("{r3},{a},,dog", "region {r3} is on image 'b.jpg', but image_id '{a}' names another image"),
    ("{r2},,,Dgo", "unknown class 'Dgo'; valid classes: cat, dog, background; or 'unknown' (none of these), or 'new:<name>' to propose a class"),
    ("{r1},,,dog", "conflicting labels for one region: 'dog' here, 'cat' in row 2"),
    ("{r3},,b.jpg,background", None),  # row 10: good (a negative class: not an object)
]


def _bad_file(ws):
    fill = {"r1": rid(ws, "r1"), "r2": rid(ws, "r2"), "r3": rid(ws, "r3"), "a": ids(ws)["a.jpg"]}
    lines = ["region_id,image_id,image,label"] + [cells.format(**fill) for cells, _ in BAD_ROWS]
    return "\n".join(lines) + "\n", [None if why is None else why.format(**fill) for _, why in BAD_ROWS]


def test_bad_region_rows_are_set_aside_and_the_good_ones_land(ws):
    text, reasons = _bad_file(ws)
    drop(ws, "answers.csv", text)
    r = intake(ws, CLASSES, round_no=2, on_error="keep_good_rows")
    assert (r.events_added, r.rows_rejected, r.files_accepted) == (2, 7, ["data/inbox/answers.csv"])
    assert [(e.source_row, e.region_id, e.label) for e in read_events(ws)] == [
        (2, rid(ws, "r1"), "cat"), (10, rid(ws, "r3"), "background")]
    back = read_csv(ws.rejected / "answers.rows.csv")
    assert [b["region_id"] for b in back] == [line.split(",")[0] for line in text.splitlines()[1:]
                                              if not line.endswith(("a.jpg,cat", "b.jpg,background"))]
    expected = [why for why in reasons if why is not None]
    assert len(back) == len(expected)
    for row, why in zip(back, expected):
        assert row["reason"].startswith(why), (row["reason"], why)


def test_bad_region_rows_reject_the_whole_file_under_reject_file(ws):
    assert "reject_file" in IntakeConfig.model_fields["on_error"].annotation.__args__
    text, reasons = _bad_file(ws)
    drop(ws, "answers.csv", text)
    r = intake(ws, CLASSES, round_no=2, on_error="reject_file")
    assert r.files_rejected == ["data/inbox/answers.csv"] and r.events_added == 0 and read_events(ws) == []
    report = (ws.rejected / "answers.csv.errors.txt").read_text()
    for row, why in enumerate(reasons, start=2):
        if why is not None:
            assert f"row {row}: {why}" in report, why
    assert "row 2:" not in report and "row 10:" not in report


def test_an_unknown_region_before_any_round_says_to_run_one(bare):
    drop(bare, "early.csv", f"region_id,label\n{UNKNOWN},cat\n")
    r = intake(bare, CLASSES, round_no=2, on_error="reject_file")
    assert r.files_rejected and (f"row 2: unknown region '{UNKNOWN}': no regions were proposed yet "
                                 f"(data/labels/regions/ is empty): run a round with regions.enabled: true"
                                 in r.problems[0])


def test_a_region_whose_image_is_gone_is_refused(ws):
    r3 = rid(ws, "r3")
    (ws.images / "b.jpg").unlink()
    scan(ws, ScanConfig(), round_no=2)
    drop(ws, "late.csv", f"region_id,label\n{r3},cat\n")
    r = intake(ws, CLASSES, round_no=2, on_error="reject_file")
    assert f"row 2: region {r3} is on image 'b.jpg'" in r.problems[0]
    assert "which is no longer in data/images/" in r.problems[0]


# --- Label Studio -------------------------------------------------------------------------------------

# A pentagon a person drew on a.jpg, away from its regions: percent of width/height.
DRAWN_PX = [(5, 50), (50, 48), (60, 70), (30, 92), (8, 85)]
DRAWN = [[x / W * 100, y / H * 100] for x, y in DRAWN_PX]


def _shoelace(points):
    xs, ys = np.array(points, float).T
    return 0.5 * abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))


def _exported(ws):
    """The tasks coldstart exports for a.jpg and b.jpg (polygon pre-annotations of the regions)."""
    i = ids(ws)
    return regions_to_labelstudio(list(regions(ws).values()), [(i["a.jpg"], "a.jpg", W, H), (i["b.jpg"], "b.jpg", W, H)])


def _polygon(result_id, label, points, width=W, height=H):
    return {"id": result_id, "from_name": labelstudio.POLYGON, "to_name": labelstudio.IMAGE, "type": "polygonlabels",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"points": points, "closed": True, "polygonlabels": [label]}}


def _choice(label):
    return {"id": "c1", "from_name": labelstudio.LABEL, "to_name": labelstudio.IMAGE, "type": "choices",
            "value": {"choices": [label]}}


def _annotated(task, task_id, *results, who="ann@x"):
    return {**task, "id": task_id, "annotations": [
        {"id": 1, "completed_by": {"id": 3, "email": who}, "was_cancelled": False, "result": list(results)}]}


def test_label_studio_polygons_kept_redrawn_and_new_become_region_answers(ws):
    i = ids(ws)
    r1, r2 = rid(ws, "r1"), rid(ws, "r2")
    task_a, task_b = _exported(ws)
    pre = {res["id"]: res for res in task_a["predictions"][0]["result"]}
    assert set(pre) == {r1, r2}
    kept = {**pre[r1], "value": {**pre[r1]["value"], "polygonlabels": ["dog"]}}  # our id, relabeled
    redrawn = {**pre[r2], "id": "Lx8vQ2"}  # Label Studio's own id, the same outline: matched by IoU
    drawn = _polygon("k9Tz0a", "cat", DRAWN)  # a new object
    brush = {"id": "b1", "from_name": "brush", "to_name": "image", "type": "brushlabels",
             "value": {"format": "rle", "rle": [0, 1], "brushlabels": ["cat"]}}
    export = [_annotated(task_a, 11, _choice("cat"), kept, redrawn, drawn),
              _annotated(task_b, 12, _choice("dog"), brush)]
    (ws.inbox / "ls.json").write_text(json.dumps(export), encoding="utf-8")
    r = intake(ws, CLASSES, round_no=2, on_error="reject_file")
    # The brush result is a problem with its task: under reject_file the file is rejected whole, the fix named.
    assert r.files_rejected == ["data/inbox/ls.json"] and r.events_added == 0 and read_events(ws) == []
    assert ("task 2 (id 12): annotation 1: result 2: brush/rectangle annotations are not read: outline regions "
            "with the polygon tool of control 'region' (coldstart's label_config.xml)") in r.problems[0]

    export[1] = _annotated(task_b, 12, _choice("dog"))  # the person removes the brush strokes
    (ws.inbox / "ls.json").write_text(json.dumps(export), encoding="utf-8")
    r = intake(ws, CLASSES, round_no=3)
    assert r.files_accepted == ["data/inbox/ls.json"] and r.events_added == 5 and not r.rows_rejected
    events = read_events(ws)
    assert human_labels(events) == {i["a.jpg"]: "cat", i["b.jpg"]: "dog"}  # the choices stay the images' answers
    answers = region_answers(events)
    assert len(answers) == 3
    assert (answers[r1].image_id, answers[r1].label, answers[r1].region) == (i["a.jpg"], "dog", None)
    assert (answers[r2].image_id, answers[r2].label, answers[r2].region) == (i["a.jpg"], "background", None)
    (new,) = [e for k, e in answers.items() if k not in (r1, r2)]
    assert (new.image_id, new.label, new.annotator, new.source_row) == (i["a.jpg"], "cat", "ann@x", 1)
    assert new.region_id == region_id(i["a.jpg"], new.region["counts"]) and new.region["size"] == [H, W]
    assert isinstance(new.region["counts"], str)
    mask = decode_mask(new.region)
    assert abs(mask.sum() - _shoelace(DRAWN_PX)) / _shoelace(DRAWN_PX) < 0.05
    ys, xs = np.nonzero(mask)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == pytest.approx((5, 60, 48, 92), abs=1)
    assert not (mask & decode_mask(regions(ws)["r1"].rle)).any()


def test_one_region_outlined_twice_agreeing_is_one_answer_by_both(ws):
    task_a, _ = _exported(ws)
    r1 = rid(ws, "r1")
    pre = task_a["predictions"][0]["result"][0]
    assert pre["id"] == r1
    task = {**task_a, "id": 5, "annotations": [
        {"completed_by": {"email": who}, "result": [{**pre, "value": {**pre["value"], "polygonlabels": ["dog"]}}]}
        for who in ("x@y", "z@y")]}
    (ws.inbox / "two.json").write_text(json.dumps([task]), encoding="utf-8")
    r = intake(ws, CLASSES, round_no=2)
    assert r.events_added == 1 and r.rows_skipped_blank == 0
    (e,) = read_events(ws)
    assert (e.region_id, e.label, e.annotator) == (r1, "dog", "x@y,z@y")


def _task_problem(ws, name, task):
    """The problem listed for a one-task export: under reject_file in the .errors.txt; under
    keep_good_rows the task's rows are set aside with the same reason, naming the task."""
    (ws.inbox / name).write_text(json.dumps([task]), encoding="utf-8")
    r = intake(ws, CLASSES, round_no=2, on_error="reject_file")
    assert r.files_rejected == [f"data/inbox/{name}"] and r.events_added == 0
    (ws.rejected / name).rename(ws.inbox / name)
    kept = intake(ws, CLASSES, round_no=2, on_error="keep_good_rows")
    assert kept.files_accepted == [f"data/inbox/{name}"] and kept.events_added == 0 and kept.rows_rejected >= 1
    reasons = [row["reason"] for row in read_csv(ws.rejected / f"{name.removesuffix('.json')}.rows.csv")]
    assert all(f"(task 1 (id {task['id']})" in why for why in reasons), reasons
    return r.problems[0]


def test_polygon_problems_are_named_by_task_with_the_fix(ws):
    task_a, _ = _exported(ws)
    r1, r2 = rid(ws, "r1"), rid(ws, "r2")
    pre = {res["id"]: res for res in task_a["predictions"][0]["result"]}
    cases = {
        "two-labels.json": ({**pre[r1], "value": {**pre[r1]["value"], "polygonlabels": ["cat", "dog"]}},
                            f"task 1 (id 7): annotation 1: result 1: polygon '{r1}' needs exactly one label in "
                            f"value.polygonlabels, it has 2: give it one class in Label Studio"),
        "no-label.json": ({**pre[r1], "value": {**pre[r1]["value"], "polygonlabels": []}},
                          "it has none"),
        "two-points.json": (_polygon("p", "cat", [[1, 1], [2, 2]]),
                            "polygon 'p' has 2 point(s) in value.points; an outline needs at least 3 [x, y] points"),
        "bad-point.json": (_polygon("p", "cat", [[1, 1], [2, "x"], [3, 1]]),
                           "polygon 'p': point 2 is [2, \"x\"], expected [x, y]"),
        "no-width.json": (_polygon("p", "cat", DRAWN, width=0),
                          "polygon 'p': 'original_width' is 0, expected the image's size in pixels"),
        "rectangle.json": ({"id": "q", "from_name": "box", "to_name": "image", "type": "rectanglelabels",
                            "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": ["cat"]}},
                           "brush/rectangle annotations are not read: outline regions with the polygon tool of "
                           "control 'region'"),
    }
    for name, (result, message) in cases.items():
        assert message in _task_problem(ws, name, _annotated(task_a, 7, result)), name
    # Two parts of one region, or two annotators, labeling one region differently.
    part = {**pre[r1], "id": f"{r1}-1"}
    problem = _task_problem(ws, "parts.json", _annotated(task_a, 7, pre[r1], {
        **part, "value": {**part["value"], "polygonlabels": ["dog"]}}))
    assert (f"task 1 (id 7): annotation 1: result 1 and annotation 1: result 2 outline one region ({r1}) with "
            f"different labels (cat, dog); give them one label in Label Studio and export again") in problem
    both = {**task_a, "id": 7, "annotations": [
        {"completed_by": {"email": who}, "result": [{**pre[r2], "value": {**pre[r2]["value"], "polygonlabels": [lab]}}]}
        for who, lab in (("x@y", "cat"), ("z@y", "background"))]}
    assert (f"task 1 (id 7): annotators disagree on region {r2} (background, cat); settle it in Label Studio and "
            f"export again") in _task_problem(ws, "disagree.json", both)
    assert read_events(ws) == []


def test_a_task_whose_polygons_conflict_is_set_aside_whole_and_its_neighbours_land(ws):
    """keep_good_rows: one region given two labels within a task is a problem with the task: all
    its rows (its image's choice too) are set aside, naming it; the next task is merged."""
    task_a, task_b = _exported(ws)
    r1 = rid(ws, "r1")
    pre = {res["id"]: res for res in task_a["predictions"][0]["result"]}
    part = {**pre[r1], "id": f"{r1}-1", "value": {**pre[r1]["value"], "polygonlabels": ["dog"]}}
    export = [_annotated(task_a, 7, _choice("cat"), pre[r1], part), _annotated(task_b, 8, _choice("dog"))]
    (ws.inbox / "conflict.json").write_text(json.dumps(export), encoding="utf-8")
    r = intake(ws, CLASSES, round_no=2, on_error="keep_good_rows")
    assert (r.files_accepted, r.events_added, r.rows_rejected) == (["data/inbox/conflict.json"], 1, 3)
    events = read_events(ws)
    assert human_labels(events) == {ids(ws)["b.jpg"]: "dog"} and region_answers(events) == {}
    back = read_csv(ws.rejected / "conflict.rows.csv")
    assert [(b["region_id"], b["label"]) for b in back] == [("", "cat"), (r1, "cat"), (r1, "dog")]
    for b in back:
        assert f"outline one region ({r1}) with different labels" in b["reason"], b["reason"]
        assert b["reason"].endswith("(task 1 (id 7), image 'a.jpg')")


def test_a_polygon_on_another_image_size_is_set_aside_naming_both_sizes(ws):
    task_a, _ = _exported(ws)
    r1 = rid(ws, "r1")
    pre = task_a["predictions"][0]["result"][0]
    export = [_annotated(task_a, 3, _choice("cat"), {**pre, "original_width": 2 * W, "original_height": 2 * H}),
              _annotated(task_a, 4, _polygon("new", "dog", DRAWN, width=2 * W, height=2 * H))]
    (ws.inbox / "sizes.json").write_text(json.dumps(export), encoding="utf-8")
    r = intake(ws, CLASSES, round_no=2, on_error="keep_good_rows")
    assert (r.events_added, r.rows_rejected) == (1, 2)  # the image's choice lands
    assert human_labels(read_events(ws)) == {ids(ws)["a.jpg"]: "cat"} and region_answers(read_events(ws)) == {}
    back = read_csv(ws.rejected / "sizes.rows.csv")
    assert [b["result_id"] for b in back] == [r1, "new"]
    assert (f"was drawn on the image at {2 * W}x{2 * H} pixels, but region {r1} was proposed on it at {W}x{H}"
            in back[0]["reason"])
    assert f"was drawn on the image at {2 * W}x{2 * H} pixels, but the image is {W}x{H}" in back[1]["reason"]
    assert json.loads(back[1]["points"]) == DRAWN
    # The rows file dropped back as a CSV answers for regions, never for the image: our region by
    # its id, the drawn polygon refused (a CSV cannot carry an outline).
    assert [b["region_id"] for b in back] == [r1, "polygon:new"]
    (ws.inbox / "sizes.rows.csv").write_bytes((ws.rejected / "sizes.rows.csv").read_bytes())
    r = intake(ws, CLASSES, round_no=3, on_error="keep_good_rows")
    assert (r.events_added, r.rows_rejected) == (1, 1)
    events = read_events(ws)
    assert human_labels(events) == {ids(ws)["a.jpg"]: "cat"} and len(events) == 2
    assert [(e.region_id, e.label) for e in region_answers(events).values()] == [(r1, "cat")]
    (again,) = read_csv(ws.rejected / "sizes.rows.rows.csv")
    assert again["reason"] == ("region_id 'polygon:new' is a polygon drawn in Label Studio: a CSV cannot carry its "
                               "outline; fix it in Label Studio and export the task again (or delete this row) "
                               "(row 3, image 'a.jpg')")


def test_parse_export_gives_a_row_per_polygon_after_the_image_row():
    export = [{"id": 1, "data": {"path": "a.jpg"}, "annotations": [
        {"completed_by": 4, "result": [_polygon("p1", "cat", DRAWN), _polygon("p2-1", "dog", DRAWN[:3])]}]}]
    rows, problems = labelstudio.parse_export(json.dumps(export), "e.json")
    assert problems == []
    assert [(w, r["label"], r["result_id"], r["result"], r["annotator"]) for w, r in rows] == [
        ("task 1 (id 1)", "cat", "p1", "annotation 1: result 1", "ls-user-4"),
        ("task 1 (id 1)", "dog", "p2-1", "annotation 1: result 2", "ls-user-4")]  # no image row: only regions answered
    assert rows[0][1]["points"] == DRAWN and (rows[0][1]["original_width"], rows[0][1]["original_height"]) == (W, H)
