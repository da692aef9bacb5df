"""Intake finds an image by any spelling of its path, in every format it reads (CSV, the review
CSV, Label Studio JSON / JSON_MIN / CSV exports, webhook bodies), and never anything outside the
image root; one bad Label Studio task never costs its neighbours; a result that carries no
label is a problem, not a blank; every problem names its row (or task) and image, once."""

from __future__ import annotations

import csv
import io
import json
import logging
import unicodedata
import urllib.parse
from pathlib import Path

import pytest

from coldstart.tasks.config import ScanConfig
from coldstart.tasks.errors import LabelFileError
from coldstart.tasks.intake import intake, spool_annotation, validate_file
from coldstart.tasks.labellog import read_events
from coldstart.tasks.manifest import read_manifest
from coldstart.tasks.scan import scan
from coldstart.tasks.workspace import Workspace, read_csv
from tests.conftest import write_image

CLASSES = ["cat", "dog"]
DIGIT = "scans-00/digit-0000.png"
SPACE = "scans-00/digit 0001.png"
NFD = "mac/re\u0301sume\u0301.png"  # as macOS names it: the manifest keeps it so
NFC_OF_NFD = unicodedata.normalize("NFC", NFD)
TWIN_NFC, TWIN_NFD = "twins/\u00e9.png", "twins/e\u0301.png"  # two files, one name up to NFC
PLUS = "+plus.png"
UPLOADED = "uploads/only-name.png"
IMAGES = [DIGIT, SPACE, NFD, TWIN_NFC, TWIN_NFD, PLUS, UPLOADED]
PARAMS = 'ontology:\n  classes:\n    cat: ["a cat"]\n    dog: ["a dog"]\n'


def _workspace(root: Path) -> Workspace:
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(PARAMS, encoding="utf-8")
    w = Workspace(root)
    for k, name in enumerate(IMAGES):
        write_image(w.images / name, seed=k, size=(24, 32), fmt="PNG")
    scan(w, ScanConfig(), round_no=1)
    w.inbox.mkdir(parents=True, exist_ok=True)
    return w


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A workspace only read (validate_file merges nothing)."""
    return _workspace(tmp_path_factory.mktemp("paths") / "ws")


@pytest.fixture
def ws(tmp_path):
    """A workspace intake writes to."""
    return _workspace(tmp_path / "ws")


def ids(w: Workspace) -> dict[str, str]:
    return {r["path"]: r["image_id"] for r in read_manifest(w)}


def _csv_bytes(header: list[str], *rows: list[str]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _choice(label, **over):
    return {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}, **over}


def _task(task_id, data, *results, who="ann@x", **ann):
    return {"id": task_id, "data": data, "annotations": [
        {"id": 100 + task_id, "completed_by": {"id": 3, "email": who}, "was_cancelled": False,
         "result": list(results), **ann}]}


def _json(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def _validate(w, name, raw, bad=None):
    return validate_file(Path(name), raw, w, CLASSES, bad_rows=bad)


# --- every spelling of one file -------------------------------------------------------------------

SPELLINGS = [
    (DIGIT, DIGIT),
    ("./scans-00/digit-0000.png", DIGIT),  # accepted before: a regression
    ("././scans-00/./digit-0000.png", DIGIT),
    ("scans-00\\digit-0000.png", DIGIT),  # Windows separators
    (".\\scans-00\\digit-0000.png", DIGIT),
    ("data/images/scans-00/digit-0000.png", DIGIT),
    ("/data/local-files/?d=images/scans-00%2Fdigit-0000.png", DIGIT),  # Label Studio's local files, encoded
    ("/data/local-files/?d=images%2Fscans-00%2Fdigit-0000.png", DIGIT),
    ("/data/local-files/?d=images/scans-00/digit-0000.png", DIGIT),  # as coldstart writes it
    ("http://localhost:8080/data/local-files/?d=images/scans-00/digit-0000.png", DIGIT),
    ("scans-00%2Fdigit-0000.png", DIGIT),
    ("/data/local-files/?d=images/scans-00/digit+0001.png", SPACE),  # + or %20 for a space
    ("/data/local-files/?d=images/scans-00/digit%200001.png", SPACE),
    ("scans-00/digit%200001.png", SPACE),
    ("/data/local-files/?d=images/+plus.png", PLUS),  # a + in the name itself: the exact name wins
    (PLUS, PLUS),
    (NFD, NFD),  # NFD as on disk
    (NFC_OF_NFD, NFD),  # the same name typed in NFC
    ("/data/local-files/?d=images/" + urllib.parse.quote(NFD), NFD),
    ("/data/local-files/?d=images/" + urllib.parse.quote(NFC_OF_NFD), NFD),
    ("./" + NFC_OF_NFD.replace("/", "\\"), NFD),
    (TWIN_NFC, TWIN_NFC),  # twins: an exact name wins
    (TWIN_NFD, TWIN_NFD),
    ("/data/upload/3/1a2b3c4d-only-name.png", UPLOADED),  # a Label Studio upload: its file name, one image has it
    ("http://localhost:8080/data/upload/12/only%2Dname.png", UPLOADED),
    ("http://localhost:8750/images/{id}?exp=1700000000&sig=0123456789abcdef", DIGIT),  # coldstart api, signed
    ("/images/{id}?exp=1&sig=x", DIGIT),
]


def _spelled(w, spelling):
    return spelling.replace("{id}", ids(w)[DIGIT])


@pytest.mark.parametrize("spelling, path", SPELLINGS)
def test_every_spelling_of_a_path_finds_its_file_in_a_csv(shared, spelling, path):
    (row,) = _validate(shared, "a.csv", _csv_bytes(["image", "label"], [_spelled(shared, spelling), "cat"]))[0]
    assert row[1] == ids(shared)[path]


@pytest.mark.parametrize("spelling, path", SPELLINGS)
def test_every_spelling_finds_its_file_in_label_studio_exports(shared, spelling, path):
    spelled, want = _spelled(shared, spelling), ids(shared)[path]
    for data in ({"image": spelled}, {"path": spelled}):  # the image URL only, or the path key
        (row,) = _validate(shared, "e.json", _json([_task(1, data, _choice("cat"))]))[0]
        assert row[1] == want, data
    json_min = [{"id": 1, "image": spelled, "label": "dog", "annotator": "a@x", "annotation_id": 5}]
    assert _validate(shared, "min.json", _json(json_min))[0][0][1] == want
    ls_csv = _csv_bytes(["image", "id", "label", "annotator", "annotation_id"], [spelled, "1", "dog", "4", "9"])
    assert _validate(shared, "project-1-at-2024.csv", ls_csv)[0][0][1:4] == (want, "dog", "ls-user-4")


@pytest.mark.parametrize("path", [DIGIT, NFD, TWIN_NFD, TWIN_NFC])
def test_the_review_csv_row_with_its_image_id_is_accepted_however_its_path_is_normalised(shared, path):
    """The row coldstart wrote (image_id and image): the path as on disk, in NFC or in NFD is the
    image the id names, never "image, image_id name different images"."""
    i = ids(shared)[path]
    for spelled in dict.fromkeys([path, unicodedata.normalize("NFC", path), unicodedata.normalize("NFD", path)]):
        rows = [[i, spelled, "cat", "0.51", "dog", "rev", ""]]
        got, _ = _validate(shared, "round-002.csv", _csv_bytes(
            ["image_id", "image", "suggested_label", "confidence", "label", "annotator", "note"], *rows))
        assert [(r[1], r[2]) for r in got] == [(i, "dog")], spelled
        export = _csv_bytes(["path", "image_id", "label"], [spelled, i, "cat"])  # `export --format csv`
        assert _validate(shared, "export.csv", export)[0][0][1] == i


def test_twins_an_exact_name_wins_else_the_image_id_decides(shared):
    padded = " ./" + TWIN_NFD + " "  # trimmed, without ./, it is exactly TWIN_NFD: found, not its twin
    assert _validate(shared, "t.csv", _csv_bytes(["image", "label"], [padded, "cat"]))[0][0][1] == \
        ids(shared)[TWIN_NFD]
    # The names of the two files differ only in normalisation; an upload URL of that name names both.
    url = "/data/upload/1/" + urllib.parse.quote(TWIN_NFC.split("/")[1])
    with pytest.raises(LabelFileError, match="up to Unicode normalisation"):
        _validate(shared, "t.csv", _csv_bytes(["image", "label"], [url, "cat"]))
    by_id = _csv_bytes(["image_id", "image", "label"], [ids(shared)[TWIN_NFD], url, "cat"])
    assert _validate(shared, "t.csv", by_id)[0][0][1] == ids(shared)[TWIN_NFD]


def test_an_image_id_and_a_path_of_two_images_are_still_refused(shared):
    rows = _csv_bytes(["image_id", "image", "label"], [ids(shared)[DIGIT], "./" + NFD, "cat"])
    with pytest.raises(LabelFileError, match="image, image_id name different images"):
        _validate(shared, "x.csv", rows)


OUTSIDE = ["../x.png", "./../x.png", "scans-00/../../x.png", "..\\..\\x.png", "C:\\x.png", "/etc/passwd",
           "..%2F..%2Fetc%2Fpasswd", "/data/local-files/?d=images/..%2F..%2Fetc%2Fpasswd",
           "/data/local-files/?d=images%2F..%2F..%2Fetc%2Fpasswd", "/data/local-files/?d=../../etc/passwd",
           "http://h/data/local-files/?d=labels%2Fevents.jsonl"]


@pytest.mark.parametrize("spelling", OUTSIDE)
def test_no_spelling_reaches_outside_the_image_root(shared, spelling):
    with pytest.raises(LabelFileError, match="outside the image root"):
        _validate(shared, "x.csv", _csv_bytes(["image", "label"], [spelling, "cat"]))
    with pytest.raises(LabelFileError, match="outside the image root"):
        _validate(shared, "x.json", _json([_task(1, {"image": spelling}, _choice("cat"))]))


def test_a_webhook_annotation_with_an_encoded_url_lands(ws):
    task = {"id": 8, "data": {"image": "/data/local-files/?d=images/scans-00%2Fdigit-0000.png"}}
    annotation = {"id": 77, "updated_at": "2026-01-01T00:00:00Z", "completed_by": {"id": 1, "email": "w@x"},
                  "result": [_choice("dog")]}
    spool_annotation(ws, "ANNOTATION_CREATED", annotation, task)
    r = intake(ws, CLASSES, round_no=2)
    assert r.events_added == 1 and not r.problems
    assert [(e.image_id, e.label) for e in read_events(ws) if not e.kind] == [(ids(ws)[DIGIT], "dog")]


# --- one bad task costs that task only ------------------------------------------------------------------

def _mixed_export(w):
    other = _choice("cat", from_name="quality")
    brush = {"from_name": "brush", "to_name": "image", "type": "brushlabels", "value": {"brushlabels": ["cat"]}}
    disagree = _task(4, {"path": NFD}, _choice("cat"))
    disagree["annotations"].append({"completed_by": {"email": "b@x"}, "result": [_choice("dog")]})
    return [_task(1, {"path": DIGIT}, _choice("cat")),
            _task(2, {"path": SPACE}, other),  # answered in another control: was the whole file
            _task(3, {"path": PLUS}, _choice("dog"), brush),
            disagree,
            _task(5, {"path": TWIN_NFC}, _choice("cat", value={"choices": ["cat", "dog"]})),
            _task(6, {"path": 5}, _choice("cat")),
            _task(7, {"path": TWIN_NFD}, _choice("bird")),
            _task(8, {"image": "/data/local-files/?d=images/uploads%2Fonly-name.png"}, _choice("dog"))]


BAD_TASKS = {2: "control(s) quality", 3: "brush/rectangle", 4: "annotators disagree", 5: "several labels",
             6: "'path' is a number", 7: "unknown class 'bird'"}


def test_under_keep_good_rows_each_bad_task_is_set_aside_alone(ws):
    (ws.inbox / "ls.json").write_bytes(_json(_mixed_export(ws)))
    r = intake(ws, CLASSES, round_no=2, on_error="keep_good_rows")
    assert (r.files_accepted, r.events_added, r.rows_rejected) == (["data/inbox/ls.json"], 2, len(BAD_TASKS))
    assert {(e.image_id, e.label) for e in read_events(ws)} == {(ids(ws)[DIGIT], "cat"), (ids(ws)[UPLOADED], "dog")}
    back = read_csv(ws.rejected / "ls.rows.csv")
    assert len(back) == len(BAD_TASKS)
    for row, (n, why) in zip(back, sorted(BAD_TASKS.items())):
        assert why in row["reason"] and f"(task {n} (id {n})" in row["reason"], row
        assert "label" in row and row["label"] == ("bird" if n == 7 else "")  # ready to fill in and drop back


def test_under_reject_file_every_bad_task_is_listed(ws):
    (ws.inbox / "ls.json").write_bytes(_json(_mixed_export(ws)))
    r = intake(ws, CLASSES, round_no=2, on_error="reject_file")
    assert r.files_rejected == ["data/inbox/ls.json"] and r.events_added == 0
    for n, why in BAD_TASKS.items():
        assert f"task {n} (id {n}): " in r.problems[0] and why in r.problems[0]


# --- a result that carries no label -----------------------------------------------------------------

NO_LABEL = {
    "result-null": ({"result": None}, "'result' is null"),
    "value-null": ({"result": [_choice("cat", value=None)]}, "'value' is null"),
    "no-choice": ({"result": [_choice("cat", value={"choices": []})]}, "no choice in 'value'"),
    "labels-type": ({"result": [{"from_name": "tag", "to_name": "image", "type": "labels",
                                 "value": {"labels": ["cat"]}}]}, "type 'labels'"),
    "textarea-only": ({"result": [{"from_name": "notes", "to_name": "image", "type": "textarea",
                                   "value": {"text": ["a cat?"]}}]}, "type 'textarea'"),
    "unknown-type": ({"result": [{"from_name": "stars", "type": "rating", "value": {"rating": 3}}]}, "type 'rating'"),
}


def _no_label_export(annotation):
    bad = _task(2, {"path": SPACE, "image_id": ""})
    bad["annotations"][0].update(annotation)
    return [_task(1, {"path": DIGIT}, _choice("cat")), bad]


@pytest.mark.parametrize("case", list(NO_LABEL))
def test_a_result_without_a_label_is_a_problem_not_a_blank(ws, case):
    annotation, why = NO_LABEL[case]
    (ws.inbox / f"{case}.json").write_bytes(_json(_no_label_export(annotation)))
    r = intake(ws, CLASSES, round_no=2, on_error="keep_good_rows")
    assert (r.events_added, r.rows_skipped_blank, r.rows_rejected) == (1, 0, 1)
    (row,) = read_csv(ws.rejected / f"{case}.rows.csv")
    assert why in row["reason"] and f"(task 2 (id 2), image {SPACE!r})" in row["reason"]
    assert "no label" in row["reason"]


@pytest.mark.parametrize("case", list(NO_LABEL))
def test_intake_check_reports_a_result_without_a_label(ws, case, capsys):
    from coldstart.flows.cli import main

    annotation, why = NO_LABEL[case]
    path = ws.root / f"{case}.json"
    path.write_bytes(_json(_no_label_export(annotation)))
    assert main(["intake", "-w", str(ws.root), "--check", str(path)]) == 1
    out = capsys.readouterr().out
    assert str(path) in out and "1 row(s) would be set aside, 1 answer(s) merged" in out
    assert why in out and "task 2 (id 2)" in out and SPACE in out and " ok," not in out


def test_real_blanks_stay_blanks(ws):
    """Not answered: a task without annotations, an annotation with an empty result, a cancelled
    one (whatever its result): skips, as an empty label cell is, not problems."""
    export = [{"id": 1, "data": {"path": DIGIT}},
              {"id": 2, "data": {"path": SPACE}, "annotations": []},
              _task(3, {"path": PLUS}),
              _task(4, {"path": NFD}, was_cancelled=True),
              {"id": 5, "data": {"path": UPLOADED}, "annotations": [{"was_cancelled": True, "result": None}]},
              _task(6, {"path": TWIN_NFC}, _choice("cat"), {"from_name": "notes", "type": "textarea",
                                                           "value": {"text": ["fine"]}})]
    (ws.inbox / "blanks.json").write_bytes(_json(export))
    r = intake(ws, CLASSES, round_no=2)
    assert (r.files_accepted, r.events_added, r.rows_skipped_blank, r.rows_rejected) == (
        ["data/inbox/blanks.json"], 1, 5, 0)
    assert not r.problems


def test_a_webhook_annotation_without_a_label_is_refused_by_name(ws):
    annotation = {"id": 78, "updated_at": "2026-01-01T00:00:00Z", "completed_by": {"id": 1, "email": "w@x"},
                  "result": None}
    spool_annotation(ws, "ANNOTATION_CREATED", annotation, {"id": 9, "data": {"path": DIGIT}})
    r = intake(ws, CLASSES, round_no=2)
    assert r.events_added == 0 and len(r.files_rejected) == 1 and len(r.problems) == 1
    assert "'result' is null" in r.problems[0] and "task 1 (id 9)" in r.problems[0] and DIGIT in r.problems[0]


# --- problems name their row and image, once -------------------------------------------------------

def test_rows_csv_and_check_name_the_row_and_the_image(ws, capsys):
    from coldstart.flows.cli import main

    text = _csv_bytes(["image", "label"], [DIGIT, "cat"], [SPACE, "bird"], ["nope.png", "dog"])
    (ws.inbox / "answers.csv").write_bytes(text)
    (ws.root / "answers.csv").write_bytes(text)
    assert main(["intake", "-w", str(ws.root), "--check", str(ws.root / "answers.csv")]) == 1
    out = capsys.readouterr().out
    assert f"unknown class 'bird'; valid classes: cat, dog; or 'unknown' (none of these), or 'new:<name>' to propose a class (row 3, image {SPACE!r})" in out
    assert "unknown image 'nope.png': no such file under data/images/ (run a round to scan new images) (row 4)" in out
    assert out.count("row 3") == 1 and out.count("row 4") == 1
    r = intake(ws, CLASSES, round_no=2, on_error="keep_good_rows")
    assert (r.events_added, r.rows_rejected) == (1, 2)
    back = read_csv(ws.rejected / "answers.rows.csv")
    assert [b["reason"].rsplit(" (", 1)[1] for b in back] == [f"row 3, image {SPACE!r})", "row 4)"]
    assert back[0]["reason"].startswith("unknown class 'bird'")  # what is wrong first, as before


def test_reject_file_lists_row_and_image(ws):
    (ws.inbox / "answers.csv").write_bytes(_csv_bytes(["image", "label"], [DIGIT, "cat"], [SPACE, "bird"]))
    r = intake(ws, CLASSES, round_no=2, on_error="reject_file")
    report = (ws.rejected / "answers.csv.errors.txt").read_text(encoding="utf-8")
    assert f"row 3: unknown class 'bird'; valid classes: cat, dog; or 'unknown' (none of these), or 'new:<name>' to propose a class (image {SPACE!r})" in report
    assert len(r.problems) == 1


def test_each_rejection_is_reported_once(ws, caplog):
    """Intake returns its rejections (IntakeResult.problems, which the round's summary prints);
    it does not also log them as warnings, which the terminal would show a second time."""
    (ws.inbox / "bad.csv").write_bytes(b"image,label\nnope.png,cat\n")
    (ws.inbox / "rows.csv").write_bytes(_csv_bytes(["image", "label"], [DIGIT, "cat"], [SPACE, "bird"]))
    (ws.inbox / "junk.json").write_bytes(b"[{")
    with caplog.at_level(logging.WARNING, logger="coldstart.tasks.intake"):
        r = intake(ws, CLASSES, round_no=2, on_error="reject_file")
        r2 = intake(ws, CLASSES, round_no=2, on_error="keep_good_rows")
    assert len(r.problems) == len(r.files_rejected) == 3 and not r2.problems
    assert [rec for rec in caplog.records if rec.name == "coldstart.tasks.intake"] == []
    (ws.inbox / "rows.csv").write_bytes((ws.rejected / "rows.csv").read_bytes())
    with caplog.at_level(logging.WARNING, logger="coldstart.tasks.intake"):
        r3 = intake(ws, CLASSES, round_no=3, on_error="keep_good_rows")
    assert len(r3.problems) == 1 and "1 row(s) not merged" in r3.problems[0]
    assert [rec for rec in caplog.records if rec.name == "coldstart.tasks.intake"] == []
