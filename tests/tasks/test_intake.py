import pytest

from coldstart.tasks.config import ScanConfig
from coldstart.tasks.intake import intake
from coldstart.tasks.labellog import human_labels, read_events
from coldstart.tasks.manifest import read_manifest
from coldstart.tasks.scan import scan
from coldstart.tasks.workspace import Workspace
from tests.conftest import write_image

CLASSES = ["cat", "dog", "划痕"]


@pytest.fixture
def ws(tmp_path):
    (tmp_path / "params.yaml").write_text("")
    w = Workspace(tmp_path)
    for k, name in enumerate(["a.jpg", "b.jpg", "sub/c.jpg", "图片/d.jpg"]):
        write_image(w.images / name, seed=k, fmt="JPEG")
    (w.images / "broken.jpg").write_bytes(b"")
    scan(w, ScanConfig(), round_no=1)
    w.inbox.mkdir(parents=True, exist_ok=True)
    return w


def ids(ws):
    return {r["path"]: r["image_id"] for r in read_manifest(ws)}


def drop(ws, name, text, encoding="utf-8"):
    (ws.inbox / name).write_bytes(text.encode(encoding))


def test_good_file_is_merged_with_provenance(ws):
    drop(ws, "good.csv", f"image,label,annotator\na.jpg,cat,ann\nsub/c.jpg,dog,\n{ids(ws)['b.jpg']},划痕,bo\n"
                         f"图片/d.jpg,,\n")
    r = intake(ws, CLASSES, round_no=2)
    assert r.files_accepted == ["data/inbox/good.csv"] and r.events_added == 3 and r.rows_skipped_blank == 1
    events = read_events(ws)
    assert [(e.label, e.annotator, e.source_row, e.round) for e in events] == [
        ("cat", "ann", 2, 2), ("dog", "", 3, 2), ("划痕", "bo", 4, 2)]
    assert human_labels(events)[ids(ws)["b.jpg"]] == "划痕"
    assert (ws.imported / "good.csv").is_file() and not (ws.inbox / "good.csv").exists()


def test_bad_file_rejected_whole_with_every_problem(ws):
    drop(ws, "bad.csv", "image,label\n"
                        "a.jpg,cat\n"               # fine, but must not be merged
                        "a.jpg,dog\n"               # conflicts with row 2
                        "b.jpg,Cat\n"               # unknown class (case)
                        "../../etc/passwd,cat\n"    # outside the image root
                        "/abs/x.jpg,cat\n"
                        "file:///x.jpg,cat\n"
                        "nope.jpg,dog\n"            # unknown image
                        "broken.jpg,dog\n")         # quarantined
    r = intake(ws, CLASSES, round_no=2, on_error="reject_file")
    assert r.files_rejected == ["data/inbox/bad.csv"] and r.events_added == 0
    assert read_events(ws) == []
    report = (ws.rejected / "bad.csv.errors.txt").read_text()
    for expected in ["row 3: conflicting labels", "row 4: unknown class 'Cat' (did you mean 'cat'?)",
                     "row 5: path '../../etc/passwd' points outside", "row 6: path '/abs/x.jpg' points outside",
                     "row 7: 'file:///x.jpg' is a URL", "row 8: unknown image 'nope.jpg'",
                     "row 9: image 'broken.jpg' is quarantined"]:
        assert expected in report, expected
    assert (ws.rejected / "bad.csv").read_bytes().startswith(b"image,label")


@pytest.mark.parametrize("name, text, message", [
    ("empty.csv", "", "file is empty"),
    ("header.csv", "file,answer\na.jpg,cat\n", "must have a 'label' column"),
    ("only-header.csv", "image,label\n", "no data rows"),
    ("labels.txt", "a.jpg,cat", "unsupported file type .txt"),
    ("empty-export.json", "[]", "no data rows (or tasks)"),
    ("broken.json", "[{", "not a readable JSON file"),
])
def test_malformed_files_rejected(ws, name, text, message):
    drop(ws, name, text)
    r = intake(ws, CLASSES, round_no=2)
    assert r.files_rejected and message in r.problems[0]
    assert (ws.rejected / name).exists()


def test_reimport_is_a_noop_and_later_files_correct_earlier(ws):
    drop(ws, "one.csv", "image,label\na.jpg,cat\n")
    intake(ws, CLASSES, round_no=2)
    drop(ws, "one-again.csv", "image,label\na.jpg,cat\n")  # same bytes, other name
    r = intake(ws, CLASSES, round_no=3)
    assert r.files_already_imported == ["data/inbox/one-again.csv"] and r.events_added == 0
    drop(ws, "fix.csv", "image,label\na.jpg,dog\n")
    intake(ws, CLASSES, round_no=3)
    events = read_events(ws)
    assert len(events) == 2 and human_labels(events)[ids(ws)["a.jpg"]] == "dog"


def test_excel_encodings_and_formula_escape(ws):
    drop(ws, "gbk.csv", "image,label\n图片/d.jpg,划痕\n", encoding="gb18030")
    drop(ws, "bom.csv", "\ufeffimage,label\n'=a.jpg,cat\n".replace("'=a.jpg", "a.jpg"))
    r = intake(ws, CLASSES, round_no=2)
    assert sorted(r.files_accepted) == ["data/inbox/bom.csv", "data/inbox/gbk.csv"]
    assert sorted(human_labels(read_events(ws)).values()) == ["cat", "划痕"]


def _ls_task(task_id, data, *annotations):
    return {"id": task_id, "data": data, "annotations": [
        {"completed_by": {"id": 7, "email": who}, "was_cancelled": cancelled,
         "result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]},
                     "origin": "prediction-changed"}]} for who, label, cancelled in annotations]}


def test_label_studio_export_is_validated_like_a_csv(ws):
    import json

    i = ids(ws)
    export = [
        _ls_task(1, {"image": "/data/local-files/?d=images/a.jpg", "image_id": i["a.jpg"]}, ("ann@x", "cat", False)),
        _ls_task(2, {"image": "/data/local-files/?d=images/sub/c.jpg", "path": "sub/c.jpg"},
                 ("ann@x", "dog", True), ("bo@x", "划痕", False)),  # the cancelled one is ignored
        _ls_task(3, {"path": "b.jpg"}),  # not annotated yet: skipped
    ]
    (ws.inbox / "ls.json").write_text(json.dumps(export, ensure_ascii=False), encoding="utf-8")
    r = intake(ws, CLASSES, round_no=2)
    assert r.files_accepted == ["data/inbox/ls.json"] and r.events_added == 2 and r.rows_skipped_blank == 1
    got = {(e.image_id, e.label, e.annotator) for e in read_events(ws)}
    assert got == {(i["a.jpg"], "cat", "ann@x"), (i["sub/c.jpg"], "划痕", "bo@x")}

    bad = [_ls_task(1, {"path": "a.jpg"}, ("x", "cat", False), ("y", "dog", False)),
           _ls_task(2, {"path": "../outside.jpg"}, ("x", "cat", False))]
    (ws.inbox / "bad-ls.json").write_text(json.dumps(bad))
    r = intake(ws, CLASSES, round_no=3, on_error="reject_file")
    assert r.files_rejected == ["data/inbox/bad-ls.json"] and r.events_added == 0
    assert "task 1 (id 1): annotators disagree (cat, dog)" in r.problems[0]
    assert "task 2 (id 2): path '../outside.jpg' points outside" in r.problems[0]  # every problem listed
    # keep_good_rows: each bad task is set aside on its own, the good one beside them merged.
    bad.append(_ls_task(3, {"path": "b.jpg"}, ("x", "dog", False)))
    (ws.inbox / "bad-ls.json").write_text(json.dumps(bad))
    r = intake(ws, CLASSES, round_no=4, on_error="keep_good_rows")
    assert (r.files_accepted, r.events_added, r.rows_rejected) == (["data/inbox/bad-ls.json"], 1, 2)


def test_keep_good_rows_merges_the_valid_rows_and_hands_back_the_bad_ones(ws):
    """intake.on_error: keep_good_rows: one typo costs one row, not the file; the corrected
    rows file, dropped back, is merged and clears the rejection."""
    from coldstart.tasks.workspace import read_csv

    classes = ["cat", "dog"]
    paths = sorted(ids(ws))
    (ws.inbox / "answers.csv").write_text(f"image,label\n{paths[0]},cat\n{paths[1]},dgo\n", encoding="utf-8")
    result = intake(ws, classes, 2, on_error="keep_good_rows")
    assert (result.events_added, result.rows_rejected, result.files_accepted) == (1, 1, ["data/inbox/answers.csv"])
    rows_file = ws.rejected / "answers.rows.csv"
    back = read_csv(rows_file)
    assert back == [{"image": paths[1], "label": "dgo", "reason": back[0]["reason"]}]
    assert "unknown class 'dgo'" in back[0]["reason"]
    # The person fixes the row in that file and drops it back.
    rows_file.write_text(f"image,label\n{paths[1]},dog\n", encoding="utf-8")
    (ws.inbox / "answers.rows.csv").write_bytes(rows_file.read_bytes())
    again = intake(ws, classes, 3, on_error="keep_good_rows")
    assert again.events_added == 1 and again.rows_rejected == 0 and not rows_file.exists()
    assert {e.label for e in read_events(ws)} == {"cat", "dog"}
