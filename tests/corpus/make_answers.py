"""A corpus of answer files, good and bad, each with the outcome intake must give it.

Usable as a script (``python -m tests.corpus.make_answers DEST``: writes the files, prints the
expected outcomes as JSON) and as a function (``make_answer_corpus``) for tests/tasks/test_corpus_answers.py.

The images are those of tests/tasks/test_corpus_answers.py's workspace (IMAGES below): the
corpus names them by path and by content id. Every file's bytes differ (an annotator name
carries its number), so none is "already imported" because of another.
"""

from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

CLASSES = ["cat", "dog", "划痕"]
# Workspace images (path under data/images/). Names that round-trip badly through a
# spreadsheet: leading space/TAB, formula-like, a quote-escaped twin, non-ASCII.
IMAGES = ["a.jpg", "b.jpg", "sub/c.jpg", "图片/d.jpg", " space.jpg", "+p.jpg", "=x.png", "'=x.png", "-m.jpg",
          "café.jpg", "twins/e\u0301.jpg", "twins/\u00e9.jpg", "twins/\u00e9\u00e9.jpg", "twins/e\u0301e\u0301.jpg",
          "mac/re\u0301sume\u0301.jpg"]  # twins: NFC and NFD names of two files; mac/: an NFD name (as macOS writes)
QUARANTINED = "broken.jpg"  # zero bytes: the scan quarantines it
PREFIX = "/data/local-files/?d=images/"


@dataclass(frozen=True)
class Expect:
    outcome: str  # "accepted" | "rejected" (the whole file) | "rows" (some rows set aside, the rest merged)
    events: int = 0  # events the file adds
    rows: int = 0  # rows set aside into data/inbox/rejected/<stem>.rows.csv
    keyword: str = ""  # in the .errors.txt (rejected) or in every reason of the .rows.csv (rows)
    category: str = ""


def _csv(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode("utf-8")


def _task(tid, data, *answers, **extra):
    anns = [{"completed_by": {"id": 3, "email": who}, "was_cancelled": cancelled,
             "result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]}
            for who, label, cancelled in answers]
    return {"id": tid, "data": data, "annotations": anns, **extra}


def _json(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def make_answer_corpus(dest: Path, ids: dict[str, str], *, max_file_mb: float = 50.0,
                       special: bool = True) -> dict[str, Expect]:
    """Write the corpus into ``dest`` (the inbox); ``ids``: image path -> content id (the
    workspace's manifest, its paths NFC). Returns file name -> expected outcome. ``special``:
    also symlinks, a FIFO and a sparse file over ``max_file_mb`` (POSIX only)."""
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, Expect] = {}
    n = iter(range(10**6))

    def put(name: str, data: bytes, expect: Expect) -> None:
        (dest / name).write_bytes(data)
        out[name] = expect

    def ok(name, data, events, cat="valid CSV"):
        put(name, data, Expect("accepted", events, 0, "", cat))

    def rows(name, data, bad, keyword, cat="bad rows", events=1):
        put(name, data, Expect("rows", events, bad, keyword, cat))

    def rej(name, data, keyword, cat):
        put(name, data, Expect("rejected", 0, 0, keyword, cat))

    a, b, c, d = ids["a.jpg"], ids["b.jpg"], ids["sub/c.jpg"], ids["图片/d.jpg"]

    # --- valid CSVs -----------------------------------------------------------------------------
    ok("v01-basic.csv", _csv("image,label", "a.jpg,cat", "sub/c.jpg,dog"), 2)
    ok("v02-annotator.csv", _csv("image,label,annotator", f"a.jpg,cat,ann{next(n)}", "b.jpg,dog,bo"), 2)
    ok("v03-image-id.csv", _csv("image_id,label,annotator", f"{a},cat,x{next(n)}", f"{d},划痕,y"), 2)
    ok("v04-bom.csv", b"\xef\xbb\xbf" + _csv("image,label,annotator", f"a.jpg,dog,x{next(n)}"), 1, "encoding")
    ok("v05-gb18030.csv", f"image,label,annotator\n图片/d.jpg,划痕,张三{next(n)}\nsub/c.jpg,cat,李四\n"
       .encode("gb18030"), 2, "encoding")
    ok("v06-crlf.csv", f"image,label,annotator\r\na.jpg,cat,x{next(n)}\r\nb.jpg,dog,y\r\n".encode(), 2)
    ok("v07-blanks.csv", _csv("image,label,annotator", f"a.jpg,,x{next(n)}", "b.jpg,dog,", "sub/c.jpg,  ,"), 1)
    ok("v08-duplicate-same.csv", _csv("image,label,annotator", f"a.jpg,cat,x{next(n)}", "a.jpg,cat,x"), 1)
    ok("v09-backslash.csv", _csv("image,label,annotator", f"sub\\c.jpg,cat,x{next(n)}"), 1)
    ok("v10-prefix.csv", _csv("image,label,annotator", f"data/images/a.jpg,dog,x{next(n)}"), 1)
    ok("v11-trimmed.csv", _csv("image,label,annotator", f" a.jpg , cat ,x{next(n)}"), 1)
    ok("v12-nfd-path.csv", _csv("image,label,annotator", f"cafe\u0301.jpg,dog,x{next(n)}"), 1, "NFC")
    ok("v13-header-case.csv", _csv(" Image ,LABEL,Annotator", f"a.jpg,cat,x{next(n)}"), 1)
    ok("v14-extra-columns.csv", _csv("image,label,annotator,comment", f"a.jpg,cat,x{next(n)},\"looks, odd\""), 1)
    ok("v15-trailing-empty-fields.csv", _csv("image,label", "a.jpg,dog,,", "b.jpg,cat,"), 2)
    ok("v16-quoted.csv", _csv('"image","label","annotator"', f'"a.jpg","cat","a, b{next(n)}"'), 1)
    ok("v17-empty-lines.csv", _csv("image,label,annotator", "", f"a.jpg,cat,x{next(n)}", "", "b.jpg,dog,y", ""), 2)
    ok("v18-id-and-path.csv", _csv("image_id,image,label,annotator", f"{b},b.jpg,dog,x{next(n)}"), 1)
    ok("v19-cjk-path-utf8.csv", _csv("image,label,annotator", f"图片/d.jpg,划痕,x{next(n)}"), 1)
    ok("v20-hex-in-image-column.csv", _csv("image,label,annotator", f"{c.upper()},cat,x{next(n)}"), 1)
    # Our own review CSV, filled in unchanged (select writes it: formula cells escaped, ids given).
    from coldstart.tasks.workspace import escape_formula
    review = ["image_id,image,suggested_label,confidence,label,annotator,note"]
    tricky = [" space.jpg", "+p.jpg", "=x.png", "'=x.png", "-m.jpg", "café.jpg"]
    for k, p in enumerate(tricky):
        cell = escape_formula(p)
        cell = '"' + cell + '"' if any(ch in cell for ch in ",\"\t ") else cell
        review.append(f"{ids[p]},{cell},cat,0.5,{CLASSES[k % 2]},rev{next(n)},")
    ok("v21-review-roundtrip.csv", _csv(*review), len(tricky), "review round trip")
    # Without the ids: exact names first, then with the escape undone.
    no_ids = ["image,label,annotator"] + [f'"{escape_formula(p)}",cat,r{next(n)}' for p in [" space.jpg", "-m.jpg"]]
    ok("v22-review-without-ids.csv", _csv(*no_ids), 2, "review round trip")
    export = ["path,image_id,label,source,confidence,round"] + [
        f'"{escape_formula(p)}",{ids[p]},dog,human,1.0,{next(n)}' for p in tricky]
    ok("v23-export-roundtrip.csv", _csv(*export), len(tricky), "review round trip")
    # Every spelling of one file finds it: ./ steps, NFC for an NFD name (with or without its id),
    # either twin spelled exactly, percent-encoding.
    ok("v24-dot-slash.csv", _csv("image,label,annotator", f"./sub/c.jpg,cat,x{next(n)}", ".\\b.jpg,dog,"), 2, "spelling")
    nfd = "mac/re\u0301sume\u0301.jpg"
    ok("v25-nfd-name-spelled-nfc.csv", _csv("image,label,annotator", f"mac/r\u00e9sum\u00e9.jpg,cat,x{next(n)}"), 1,
       "spelling")
    ok("v26-nfd-review-row.csv", _csv("image_id,image,label,annotator", f"{ids[nfd]},{nfd},dog,x{next(n)}"), 1,
       "spelling")
    ok("v27-twins-spelled-exactly.csv", _csv("image,label,annotator", f"twins/\u00e9.jpg,cat,x{next(n)}",
                                             "twins/e\u0301.jpg,dog,"), 2, "spelling")
    ok("v28-percent-encoded.csv", _csv("image,label,annotator", f"sub%2Fc.jpg,dog,x{next(n)}",
                                       f"{PREFIX}%20space.jpg,cat,"), 2, "spelling")

    # --- rows set aside (keep_good_rows): one good row and one bad ------------------------------
    good = "a.jpg,cat"

    def bad_row(name, line, keyword, header="image,label", cat="bad rows"):
        first = f"{a},{good}" if header.startswith("image_id") else good
        rows(name, _csv(header + ",annotator", f"{first},x{next(n)}", line), 1, keyword, cat)

    bad_row("r01-unknown-class.csv", "b.jpg,bird,", "unknown class")
    bad_row("r02-class-case.csv", "b.jpg,Dog,", "did you mean 'dog'")
    bad_row("r03-unknown-image.csv", "nope.jpg,dog,", "unknown image")
    bad_row("r04-traversal.csv", "../../etc/passwd,dog,", "outside the image root")
    bad_row("r05-absolute.csv", "/etc/passwd,dog,", "outside the image root")
    bad_row("r06-url.csv", "http://example.com/x.jpg,dog,", "is a URL")
    bad_row("r07-file-url.csv", "file:///etc/passwd,dog,", "is a URL")
    bad_row("r08-drive.csv", "C:\\Users\\x.jpg,dog,", "outside the image root")
    bad_row("r09-conflict.csv", "a.jpg,dog,", "conflicting labels")
    bad_row("r10-quarantined.csv", f"{QUARANTINED},dog,", "quarantined")
    bad_row("r11-too-few-fields.csv", "b.jpg", "a comma is missing")
    bad_row("r12-too-many-fields.csv", "b.jpg,dog,x,extra", "a comma too many")
    bad_row("r13-id-not-hex.csv", "zz,b.jpg,dog,", "not a sha256", header="image_id,image,label")
    bad_row("r14-unknown-id.csv", f"{'0' * 64},dog,", "unknown image id")
    bad_row("r15-id-path-mismatch.csv", f"{b},sub/c.jpg,dog,", "name different images", header="image_id,image,label")
    bad_row("r16-formula-image.csv", "\"=cmd|' /C calc'!A0\",dog,", "unknown image")
    bad_row("r17-formula-label.csv", "b.jpg,@SUM(1+1),", "unknown class")
    bad_row("r18-nfc-twins.csv", "twins/\u00e9e\u0301.jpg,dog,", "Unicode normalisation")  # neither twin exactly
    bad_row("r19-no-image.csv", "  ,dog,", "no image given")
    bad_row("r20-number-label.csv", "b.jpg,1,", "unknown class")
    bad_row("r21-path-traversal-dotdot-inside.csv", "sub/../../x.jpg,dog,", "outside the image root")
    bad_row("r22-quarantined-unknown-mix.csv", "sub/nope.jpg,cat,", "unknown image")
    rows("r23-many-bad.csv", _csv("image,label,annotator", f"a.jpg,cat,m{next(n)}",
                                  *[f"nope{k}.jpg,dog," for k in range(120)]), 120, "unknown image", "bad rows")
    ls_bad_row = [_task(1, {"path": "a.jpg"}, (f"x{next(n)}@y", "cat", False)),
                  _task(2, {"path": "b.jpg"}, ("x@y", "bird", False))]
    rows("r24-ls-unknown-class.json", _json(ls_bad_row), 1, "unknown class", "LS bad rows")
    ls_bad_path = [_task(1, {"path": "a.jpg"}, (f"x{next(n)}@y", "cat", False)),
                   _task(2, {"path": "../../etc/passwd"}, ("x@y", "dog", False))]
    rows("r25-ls-traversal.json", _json(ls_bad_path), 1, "outside the image root", "LS bad rows")
    no_label = [_task(1, {"path": "a.jpg"}, (f"x{next(n)}@y", "cat", False)), _task(2, {"path": "b.jpg"}, ("x@y", "dog", False)),
                _task(3, {"path": "sub/c.jpg"}, ("x@y", "dog", False))]
    no_label[1]["annotations"][0]["result"] = None
    no_label[2]["annotations"][0]["result"] = [{"from_name": "tag", "type": "labels", "value": {"labels": ["dog"]}}]
    rows("r26-ls-no-label.json", _json(no_label), 2, "no label", "LS bad rows")  # not silent blanks
    encoded = [_task(1, {"image": PREFIX + "sub%2Fc.jpg"}, (f"x{next(n)}@y", "cat", False)),
               _task(2, {"image": "/data/local-files/?d=images%2F..%2F..%2Fetc%2Fpasswd"}, ("x@y", "dog", False))]
    rows("r27-ls-encoded-urls.json", _json(encoded), 1, "outside the image root", "LS bad rows")

    # --- rejected whole: not a readable CSV ------------------------------------------------------
    rej("x01-empty.csv", b"", "file is empty", "empty/structure")
    rej("x02-whitespace.csv", b"  \n\n \n", "file is empty", "empty/structure")
    rej("x03-header-only.csv", _csv("image,label"), "no data rows", "empty/structure")
    rej("x04-wrong-columns.csv", _csv("file,answer", "a.jpg,cat"), "must have a 'label' column", "empty/structure")
    rej("x05-no-image-column.csv", _csv("label,annotator", "cat,x"), "must have a 'label' column", "empty/structure")
    rej("x06-duplicate-column.csv", _csv("image,label,label", "a.jpg,cat,dog"), "column 'label' appears twice",
        "CSV structure")
    rej("x07-duplicate-column-case.csv", _csv("image,Label,label ", "a.jpg,cat,dog"), "appears twice", "CSV structure")
    rej("x08-unclosed-quote.csv", _csv("image,label", 'a.jpg,"cat', "b.jpg,dog", "sub/c.jpg,dog"),
        "unclosed quote", "CSV structure")
    rej("x09-unclosed-quote-closed-later.csv", _csv("image,label", 'a.jpg,"cat', "b.jpg,dog", 'sub/c.jpg,dog"'),
        "unclosed quote", "CSV structure")
    rej("x10-quote-then-text.csv", _csv("image,label", 'a.jpg,"cat"x'), "not a readable CSV", "CSV structure")
    rej("x11-newline-in-quoted-path.csv", _csv("image,label", '"a.jpg\nb.jpg",cat'), "unclosed quote", "CSV structure")
    rej("x12-huge-field.csv", _csv("image,label", "a.jpg," + "c" * 200_000), "not a readable CSV", "CSV structure")
    rej("x13-only-commas.csv", _csv(",,", ",,"), "file is empty", "empty/structure")

    # --- rejected whole: encodings ----------------------------------------------------------------
    enc = "encoding"
    rej("e01-cp1252-jose.csv", "image,label,annotator\na.jpg,cat,José\n".encode("cp1252"), "not UTF-8", enc)
    rej("e02-cp1252-jerome.csv", "image,label,annotator\na.jpg,cat,Jérôme\n".encode("cp1252"), "not UTF-8", enc)
    rej("e03-cp1252-path.csv", "image,label\ncafé.jpg,dog\n".encode("cp1252"), "not UTF-8", enc)
    rej("e04-cp1252-creee.csv", "image,label,annotator\na.jpg,cat,créée\n".encode("cp1252"), "not UTF-8", enc)
    rej("e04b-cp1252-unknown-path.csv", "image,label\nréé.jpg,dog\n".encode("cp1252"), "not UTF-8", enc)
    rej("e05-latin1-label.csv", "image,label\na.jpg,chaîne\n".encode("latin-1"), "not UTF-8", enc)
    rej("e06-utf16le-bom.csv", "image,label\na.jpg,cat\n".encode("utf-16"), "not UTF-8", enc)
    rej("e07-utf16be-bom.csv", b"\xfe\xff" + "image,label\na.jpg,cat\n".encode("utf-16-be"), "not UTF-8", enc)
    rej("e08-utf16-no-bom.csv", "image,label\na.jpg,cat\n".encode("utf-16-le"), "not UTF-8", enc)
    rej("e09-binary-junk.csv", random.Random(9).randbytes(4096), "not UTF-8", enc)
    rej("e10-png-renamed.csv", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not UTF-8", enc)
    rej("e11-nul-bytes.csv", b"image,label\na.jpg\x00,cat\n", "not UTF-8", enc)
    rej("e12-shift-jis.csv", "image,label,annotator\na.jpg,cat,ｱｲｳ田中\n".encode("shift_jis"), "not UTF-8", enc)
    rej("e13-cp1252-smart-quotes.csv", "image,label,annotator\na.jpg,cat,“Bob”\n".encode("cp1252"), "not UTF-8", enc)
    rej("e14-json-utf16.json", json.dumps([]).encode("utf-16"), "not UTF-8", enc)
    rej("e15-json-gb18030.json", _json([_task(1, {"path": "图片/d.jpg"}, ("张", "划痕", False))]).decode()
        .encode("gb18030"), "not UTF-8", enc)

    # --- rejected whole: not an answer file -------------------------------------------------------
    rej("t01-text.txt", b"a.jpg,cat\n", "unsupported file type .txt", "file type")
    rej("t02-xlsx.xlsx", b"PK\x03\x04" + b"\x00" * 64, "unsupported file type .xlsx", "file type")
    rej("t03-no-extension", b"image,label\na.jpg,cat\n", "unsupported file type (none)", "file type")

    # --- Label Studio exports ---------------------------------------------------------------------
    ls_ok = [_task(1, {"image": PREFIX + "a.jpg", "image_id": a}, (f"ann{next(n)}@x", "cat", False)),
             _task(2, {"path": "sub/c.jpg"}, ("ann@x", "dog", True), ("bo@x", "划痕", False)),
             _task(3, {"path": "b.jpg"})]
    ok("j01-valid.json", _json(ls_ok), 2, "LS valid")
    ok("j02-valid-bom.json", b"\xef\xbb\xbf" + _json(ls_ok[:1] + [_task(9, {"path": "b.jpg"}, (f"z{next(n)}", "dog",
                                                                                             False))]), 2, "LS valid")
    bare = [{"id": 4, "data": {"path": "a.jpg"}, "annotations": [
        {"completed_by": next(n), "result": [{"from_name": "label", "type": "choices", "value": {"choices": ["dog"]}}]}]}]
    ok("j03-bare-completed-by.json", _json(bare), 1, "LS valid")
    ok("j04-all-cancelled.json", _json([_task(1, {"path": "a.jpg"}, (f"c{next(n)}", "cat", True)),
                                        _task(2, {"path": "b.jpg"}, ("c", "dog", False))]), 1, "LS valid")
    ok("j05-other-result-types.json", _json([{"id": 1, "data": {"path": "a.jpg"}, "annotations": [
        {"completed_by": {"email": f"t{next(n)}"}, "result": [
            {"from_name": "notes", "type": "textarea", "value": {"text": ["fine"]}},
            {"from_name": "label", "type": "choices", "value": {"choices": ["cat"]}}]}]}]), 1, "LS valid")
    ok("j06-tasks-no-annotations-key.json", _json([{"id": 1, "data": {"path": "a.jpg"}},
                                                   _task(2, {"path": "b.jpg"}, (f"k{next(n)}", "cat", False))]), 1,
       "LS valid")
    ok("j07-review-tricky-paths.json", _json([_task(k, {"path": p, "image_id": ids[p]}, (f"q{next(n)}", "dog", False))
                                              for k, p in enumerate(tricky)]), len(tricky), "LS valid")

    def task_with(**over):
        t = _task(1, {"path": "a.jpg"}, ("x@y", "cat", False))
        ann = t["annotations"][0]
        res = ann["result"][0]
        for key, value in over.items():
            where, _, field = key.partition("__")
            {"task": t, "data": t["data"], "ann": ann, "res": res, "value": res["value"]}[where][field] = value
        return [t, _task(2, {"path": "b.jpg"}, (f"w{next(n)}", "dog", False))]

    wrong = {  # a field with a JSON type Label Studio never writes there: that task is set aside, named
        "task__data": [None, "a.jpg", 5, ["a.jpg"]],
        "task__annotations": [{"a": 1}, "cat", 3, True],
        "ann__completed_by": [["x"], 1.5, True],
        "ann__was_cancelled": ["false", 0, {}],
        "ann__result": [{"x": 1}, "cat", 7],
        "res__value": ["cat", ["cat"], 2],
        "res__type": [5, ["choices"]],
        "res__from_name": [1, {"n": "label"}],
        "value__choices": ["cat", {"0": "cat"}, 3, [1], [None], [["cat"]], [{"c": "cat"}]],
        "data__path": [5, {"p": "a.jpg"}, ["a.jpg"], True],
        "data__image_id": [12, ["x"]],
    }
    k = 0
    for key, values in wrong.items():
        for value in values:
            k += 1
            rows(f"w{k:02d}-{key.replace('__', '-')}.json", _json(task_with(**{key: value})), 1, "task 1 (id 1)",
                 "LS wrong JSON type")

    def lone(name, data, keyword, cat="LS wrong JSON type"):  # a one-task export whose task is bad
        rows(name, data, 1, keyword, cat, events=0)

    lone("w90-annotation-string.json", _json([{"id": 1, "data": {"path": "a.jpg"}, "annotations": ["cat"]}]),
         "annotation 1")
    lone("w91-annotation-null.json", _json([{"id": 1, "data": {"path": "a.jpg"}, "annotations": [None]}]),
         "annotation 1")
    lone("w92-result-list-of-strings.json", _json([{"id": 1, "data": {"path": "a.jpg"}, "annotations": [
        {"result": ["cat"]}]}]), "result 1")
    rej("w93-task-string.json", _json(["a.jpg"]), "not a task object", "LS wrong JSON type")
    rej("w94-task-null.json", _json([None]), "not a task object", "LS wrong JSON type")
    rej("w95-tasks-list-of-lists.json", _json([[1, 2]]), "not a task object", "LS wrong JSON type")
    rows("w96-completed-by-email-number.json", _json(task_with(ann__completed_by={"email": 5})), 1, "completed_by",
         "LS wrong JSON type")
    lone("w97-weird-id.json", _json([{"id": {"x": "y" * 1000}, "data": 3}]), "task 1 (id ?)")
    js = "LS not an export"
    rej("j10-broken.json", b"[{", "not a readable JSON file", js)
    rej("j11-dict.json", _json({"tasks": []}), "a list of tasks", js)
    rej("j12-number.json", b"42", "a list of tasks", js)
    rej("j13-string.json", b'"tasks"', "a list of tasks", js)
    rej("j14-null.json", b"null", "a list of tasks", js)
    rej("j15-empty-list.json", b"[]", "no data rows", js)
    rej("j16-empty-file.json", b"", "not a readable JSON file", js)
    rej("j17-deep-list.json", b"[" * 100_000 + b"]" * 100_000, "nested too deeply", js)
    rej("j18-deep-in-task.json", b'[{"id": 1, "data": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}]",
        "nested too deeply", js)
    rej("j19-huge-int.json", b"[" + b"9" * 50_000 + b"]", "not a readable JSON file", js)
    rej("j20-nan.json", b"[NaN]", "not a task object", js)
    lone("j21-disagree.json", _json([_task(1, {"path": "a.jpg"}, (f"u{next(n)}", "cat", False), ("v", "dog", False))]),
         "annotators disagree", "LS conflicts")
    several = _task(1, {"path": "a.jpg"}, (f"u{next(n)}", "cat", False))
    several["annotations"][0]["result"][0]["value"]["choices"] = ["cat", "dog"]
    lone("j22-several-choices.json", _json([several]), "several labels", "LS conflicts")
    other = _task(1, {"path": "a.jpg"}, (f"u{next(n)}", "cat", False))
    other["annotations"][0]["result"][0]["from_name"] = "quality"
    lone("j23-other-control.json", _json([other]), "control(s) quality", "LS conflicts")
    rej("j24-binary.json", random.Random(24).randbytes(2048), "not", js)
    rej("j25-trailing-garbage.json", b"[]xyz", "not a readable JSON file", js)

    # --- inbox entries that are not plain files -------------------------------------------------
    if special:
        outside = dest.parent.parent.parent / "outside-secret.csv"  # next to the workspace's data/
        outside.write_bytes(_csv("image,label", "a.jpg,cat"))
        os.symlink(outside, dest / "s01-symlink-outside.csv")
        out["s01-symlink-outside.csv"] = Expect("rejected", 0, 0, "a symlink", "not a regular file")
        os.symlink("../images/a.jpg", dest / "s02-symlink-inside.csv")
        out["s02-symlink-inside.csv"] = Expect("rejected", 0, 0, "a symlink", "not a regular file")
        os.symlink("/nonexistent/x.csv", dest / "s03-dangling-symlink.csv")
        out["s03-dangling-symlink.csv"] = Expect("rejected", 0, 0, "a symlink", "not a regular file")
        os.mkfifo(dest / "s04-fifo.csv")
        out["s04-fifo.csv"] = Expect("rejected", 0, 0, "not a regular file", "not a regular file")
        with open(dest / "s05-huge.csv", "wb") as f:  # sparse: no disk used, over the cap by 1 MB
            f.write(b"image,label\n")
            f.truncate(int((max_file_mb + 1) * 2**20))
        out["s05-huge.csv"] = Expect("rejected", 0, 0, "split it into files under", "size cap")
        (dest / "s06-folder").mkdir()  # skipped, left where it is
    return out


def main(argv: list[str]) -> int:
    dest = Path(argv[0]) if argv else Path("answer-corpus")
    ids = {p: f"{k:064x}" for k, p in enumerate(IMAGES)}  # stand-in ids: a real workspace has its own
    expected = make_answer_corpus(dest, ids, special=False)
    print(json.dumps({name: asdict(e) for name, e in expected.items()}, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
