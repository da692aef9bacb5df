"""Property tests for answer files (Hypothesis): whatever the bytes, intake's validation either
rejects the file clearly (LabelFileError with problems) or imports exactly the valid rows; no
other exception. One workspace per module: validate_file is pure given it."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coldstart.tasks.config import ScanConfig
from coldstart.tasks.errors import LabelFileError
from coldstart.tasks.intake import validate_file
from coldstart.tasks.manifest import read_manifest
from coldstart.tasks.scan import scan
from coldstart.tasks.workspace import Workspace, escape_formula
from tests.conftest import write_image

CLASSES = ["cat", "dog", "划痕"]
PATHS = ["a.jpg", "b.jpg", "sub/c.jpg", "图片/d.jpg", "-m.jpg", "=x.png", " s.jpg", "a b/+c.jpg"]
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALLOWED = (LabelFileError,)  # the only exception a reader may raise, Pillow-style


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("props")
    (root / "params.yaml").write_text("")
    w = Workspace(root)
    for k, name in enumerate(PATHS + ["cafe\u0301.jpg"]):  # an NFD name, as macOS writes it
        write_image(w.images / name, seed=k, fmt="PNG" if name.endswith(".png") else "JPEG")
    scan(w, ScanConfig(), round_no=1)
    return w


def _validate(ws, name, raw, bad_rows=None):
    try:
        return validate_file(Path(name), raw, ws, CLASSES, bad_rows=bad_rows)
    except ALLOWED as e:
        assert e.problems and all(isinstance(p, str) and p for p in e.problems)
        assert len(e.problems) <= 51  # listings are capped
        return None


def _check_accepted(ws, got):
    if got is None:
        return
    ids = {r["image_id"] for r in read_manifest(ws)}
    for _, image_id, label, _ in got[0]:
        assert image_id in ids and label in CLASSES


@SETTINGS
@given(raw=st.binary(max_size=2000), ext=st.sampled_from([".csv", ".json"]))
def test_random_bytes_never_crash(ws, raw, ext):
    _check_accepted(ws, _validate(ws, "x" + ext, raw))


cell = st.one_of(st.sampled_from(PATHS + CLASSES + ["image", "label", "image_id", "", "'=x", "\t", '"', ","]),
                 st.text(max_size=12))


@SETTINGS
@given(table=st.lists(st.lists(cell, max_size=5), max_size=8), sep=st.sampled_from(["\n", "\r\n", "\r"]),
       keep_good=st.booleans())
def test_random_csv_text_never_crashes(ws, table, sep, keep_good):
    text = sep.join(",".join(row) for row in [["image", "label"], *table])
    bad = [] if keep_good else None
    _check_accepted(ws, _validate(ws, "x.csv", text.encode("utf-8"), bad))


json_tree = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.sampled_from(PATHS + CLASSES + ["/data/local-files/?d=images/a.jpg", "label", "choices"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "data", "annotations", "result", "value", "choices", "completed_by", "email",
                         "was_cancelled", "from_name", "type", "path", "image", "image_id"]), children, max_size=5),
    max_leaves=30)


@SETTINGS
@given(tree=json_tree)
def test_random_json_trees_never_crash(ws, tree):
    for doc in (tree, [tree], [{"id": 1, "data": tree}], [{"id": 1, "data": {"path": "a.jpg"}, "annotations": tree}],
                [{"id": 1, "data": {"path": "a.jpg"}, "annotations": [{"result": tree}]}],
                [{"id": 1, "data": {"path": "a.jpg"}, "annotations": [{"result": [
                    {"from_name": "label", "type": "choices", "value": tree}]}]}]):
        _check_accepted(ws, _validate(ws, "x.json", json.dumps(doc).encode("utf-8")))


row = st.tuples(st.sampled_from(PATHS + ["nope.jpg", "../x.jpg", "/abs.jpg", "http://h/a.jpg", ""]),
                st.sampled_from(CLASSES + ["bird", "Cat", "", "=1"]), st.sampled_from(["", "ann", "=cmd", "张三"]))


@SETTINGS
@given(rows=st.lists(row, max_size=12), escape=st.booleans())
def test_mixed_rows_import_exactly_the_valid_ones(ws, rows, escape):
    """keep_good_rows: the accepted rows are exactly the valid ones (first answer per image; a
    later different answer is a conflict, set aside), in order; every other answered row is set aside."""
    ids = {r["path"]: r["image_id"] for r in read_manifest(ws)}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "label", "annotator"])
    for path, label, who in rows:
        w.writerow([escape_formula(v) if escape else v for v in (path, label, who)])
    expected, seen, n_bad = [], {}, 0
    for k, (path, label, who) in enumerate(rows, start=2):
        if not label:
            continue
        if path not in ids or label not in CLASSES or seen.get(ids[path], label) != label:
            n_bad += 1
        elif ids[path] not in seen:
            seen[ids[path]] = label
            expected.append((k, ids[path], label, who))
    bad: list = []
    got = _validate(ws, "x.csv", buf.getvalue().encode("utf-8"), bad)
    if got is None:  # only when nothing at all was answered
        assert not expected and not n_bad
        return
    assert got[0] == expected and len(bad) == n_bad


def _spell(path: str, ways: list[str]) -> str:
    """``path`` written another way: NFD, a data/images/ prefix, ./, Windows separators,
    percent-encoded, as a Label Studio local-files URL (in that order, those in ``ways``)."""
    import unicodedata
    import urllib.parse

    if "nfd" in ways:
        path = unicodedata.normalize("NFD", path)
    if "prefix" in ways:
        path = "data/images/" + path
    if "dot" in ways:
        path = "./" + path
    if "win" in ways:
        path = path.replace("/", "\\")
    if "quote" in ways:
        path = urllib.parse.quote(path, safe="")
    if "local" in ways:
        path = "/data/local-files/?d=images/" + path
    return path


@SETTINGS
@given(path=st.sampled_from(PATHS + ["café.jpg"]),
       ways=st.lists(st.sampled_from(["nfd", "prefix", "dot", "win", "quote", "local"]), unique=True, max_size=6))
def test_every_spelling_of_a_path_names_its_image(ws, path, ways):
    """However a path is written (normalisation, prefixes, separators, encoding, a URL), a row
    naming it is that image's answer, in a CSV and in a Label Studio export."""
    import unicodedata

    ids = {unicodedata.normalize("NFC", r["path"]): r["image_id"] for r in read_manifest(ws)}
    spelled = _spell(path, ways)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([["image", "label"], [spelled, "cat"]])
    got = _validate(ws, "x.csv", buf.getvalue().encode("utf-8"))
    assert got is not None and [r[1] for r in got[0]] == [ids[path]], spelled
    export = [{"id": 1, "data": {"image": spelled}, "annotations": [{"result": [
        {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["dog"]}}]}]}]
    got = _validate(ws, "x.json", json.dumps(export).encode("utf-8"))
    assert got is not None and [r[1] for r in got[0]] == [ids[path]], spelled
