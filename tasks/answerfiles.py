"""Reading an answer file: its encoding, then its rows, whatever kind of file it is.

A CSV (ours, a spreadsheet's, a Label Studio CSV export) or a Label Studio JSON / JSON_MIN
export, streamed row by row as ``(row number or task, cells)``; every problem reading it names
its place. Validating what the rows say is intake's (tasks/intake.py).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
import stat
import unicodedata
from pathlib import Path
from typing import Iterator

from coldstart.tasks import labelstudio
from coldstart.tasks.errors import LabelFileError
from coldstart.tasks.workspace import unescape_formula

IMAGE_COLUMNS = ("image", "path", "image_id")  # any one identifies the image


REGION_COLUMN = "region_id"  # a CSV row with this cell filled answers for that region, not its image


REGIONS_CSV = "data/review/round-NNN.regions.csv"  # where region ids come from (the regions review)


NOT_UTF8 = "not UTF-8; save it as UTF-8 (Excel: CSV UTF-8)"


_CHUNK = 1 << 20


# What Chinese text decoded from GB2312 bytes is made of: ideographs, CJK and fullwidth
# punctuation. Anything else (a cp1252 "é" read as GB18030 becomes an odd ideograph or a
# Greek letter) means the guess was wrong.
_NOT_CJK = re.compile("[^\x00-\x7f\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\u3000-\u303f\uff00-\uffef"
                      "\u2010-\u2027\u00b7]")


def _decodes(raw: bytes, encoding: str, bad: re.Pattern | None = None) -> bool:
    """Whether ``raw`` is valid ``encoding`` (decoded a chunk at a time) with no char ``bad`` matches."""
    dec, view = codecs.getincrementaldecoder(encoding)(), memoryview(raw)
    try:
        for i in range(0, max(len(raw), 1), _CHUNK):
            text = dec.decode(view[i:i + _CHUNK], final=i + _CHUNK >= len(raw))
            if bad is not None and bad.search(text):
                return False
    except UnicodeDecodeError:
        return False
    return True


def text_encoding(raw: bytes) -> str | None:
    """The encoding to read an answer file with: UTF-8 (with or without BOM), or GB18030 (Excel
    on Chinese Windows) only when the bytes are GB2312 and decode to Chinese text; else None.
    A cp1252 file ("José") would decode as GB18030 too, into wrong text: it is refused instead."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in raw:  # UTF-16, or not text at all
        return None
    if _decodes(raw, "utf-8"):
        return "utf-8-sig"
    return "gb18030" if _decodes(raw, "gb2312", _NOT_CJK) else None


def read_answer_file(path: Path, rel: str, max_bytes: int) -> bytes:
    """The bytes of the inbox entry ``path``; LabelFileError (for ``rel``) for a symlink, a
    folder, a FIFO or device (never opened: a FIFO would block the round), or a file over
    ``max_bytes`` (checked before reading)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise LabelFileError(rel, ["a symlink; copy the file itself into data/inbox/"])
    if not stat.S_ISREG(st.st_mode):
        raise LabelFileError(rel, ["not a regular file (a FIFO, socket or device); drop answer files into data/inbox/"])
    too_big = LabelFileError(rel, [f"file is {st.st_size / 2**20:.1f} MB, over intake.max_file_mb "
                                   f"({max_bytes / 2**20:g} MB); split it into files under {max_bytes / 2**20:g} MB"])
    if st.st_size > max_bytes:
        raise too_big
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # swapped since the lstat: still safe
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LabelFileError(rel, ["not a regular file; drop answer files into data/inbox/"])
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(raw) > max_bytes:  # grew since the stat
        raise too_big
    return raw


def csv_rows(source: str, raw: bytes) -> tuple[Iterator[tuple[str, int, dict, str | None]], list[str], str]:
    """A CSV's data rows, streamed, as ("row N", N, {column: cell as written}, problem or None),
    its image-reference columns (none when it has a region_id column only) and its encoding.
    Rows are numbered as a spreadsheet shows them (the header is row 1). A file that is not a plain CSV table (encoding, header, a duplicated column, a quoted
    cell running over several lines: an unclosed quote that swallows rows) raises LabelFileError,
    also midway through the rows."""
    encoding = text_encoding(raw)
    if encoding is None:
        raise LabelFileError(source, [NOT_UTF8])
    text = io.TextIOWrapper(io.BytesIO(raw), encoding=encoding, newline="")
    reader = csv.reader(text, strict=True)
    try:
        header = next((r for r in reader if any(c.strip() for c in r)), None)
    except csv.Error as e:
        raise LabelFileError(source, [f"line {reader.line_num}: not a readable CSV ({e})"]) from None
    if header is None:
        raise LabelFileError(source, ["file is empty; expected a header row with columns image,label[,annotator]"])
    names = [unicodedata.normalize("NFC", unescape_formula(h.strip())).lower() for h in header]
    twice = sorted({n for n in names if n and names.count(n) > 1})
    if twice:
        raise LabelFileError(source, [f"column {n!r} appears twice in the header; keep one" for n in twice])
    id_cols = [c for c in IMAGE_COLUMNS if c in names]
    if not (id_cols or REGION_COLUMN in names) or "label" not in names:
        raise LabelFileError(source, [
            f"header {names[:20]} must have a 'label' column and one of {', '.join(IMAGE_COLUMNS)}, "
            f"{REGION_COLUMN} (the review CSVs that coldstart exports have both: data/review/round-NNN.csv for "
            f"images, {REGIONS_CSV} for regions)"])

    def rows() -> Iterator[tuple[str, int, dict, str | None]]:
        last = reader.line_num
        while True:
            try:
                cells = next(reader, None)
            except csv.Error as e:
                hint = ": an unclosed quote \" swallows the rows after it" if "end of data" in str(e) else ""
                raise LabelFileError(source, [f"line {reader.line_num}: not a readable CSV ({e}){hint}"]) from None
            if cells is None:
                return
            first, last = last + 1, reader.line_num
            if any("\n" in c or "\r" in c for c in cells):
                raise LabelFileError(source, [
                    f"row {first}: a quoted cell runs over lines {first}-{last} (an unclosed quote \"?); the rows "
                    f"in it would be lost: fix the quote or save the file again as CSV"])
            if not any(c.strip() for c in cells):
                continue  # an empty line
            row = {n: c for n, c in zip(names, cells) if n}
            problem = None
            if len(cells) < len(names):
                problem = f"has {len(cells)} field(s), the header has {len(names)}: a comma is missing"
            elif any(c.strip() for c in cells[len(names):]) or any(c.strip() for n, c in zip(names, cells) if not n):
                extra = [c for c in cells[len(names):] if c.strip()]
                row["extra fields"] = ",".join(extra)
                problem = f"has values outside the header's columns ({', '.join(map(repr, extra[:3]))}): a comma too many?"
            yield f"row {first}", first, row, problem

    return rows(), id_cols, encoding


def label_studio_rows(source: str, raw: bytes) -> tuple[Iterator[tuple[str, int, dict, str | None]], list[str]]:
    """A Label Studio JSON export (full or JSON_MIN) as ("task N (id X)", N, cells, problem)
    rows, and its image-reference columns; LabelFileError for what is not an export (not JSON,
    not a list, a list with no task object in it). A good task gives its rows (see
    labelstudio.parse_export: {image_id, path, label, annotator}, and one row per polygon). A
    task with a problem (a wrong JSON type, annotators who disagree, an annotation that carries
    no label: see _unlabeled) gives one row, its image's cells with an empty label, and the
    problem: it is set aside (or rejects the file) like a bad CSV row, never its neighbours."""
    if not _decodes(raw, "utf-8"):
        raise LabelFileError(source, [f"not a readable JSON file: {NOT_UTF8}"])
    text = raw.decode("utf-8-sig")
    rows, problems = labelstudio.parse_export(text, source)  # raises for what is not an export at all
    tasks = json.loads(text)  # it parsed above
    if tasks and not any(isinstance(t, dict) for t in tasks):  # a list, but of no task at all
        raise LabelFileError(source, problems[:MAX_LISTED], total=len(problems))
    by_task: dict[int, list[tuple[str, dict]]] = {}
    for where, row in rows:
        by_task.setdefault(int(where.split()[1]), []).append((where, row))
    said: dict[int, list[str]] = {}
    for p in problems:
        said.setdefault(int(p.split()[1].rstrip(":")), []).append(p)

    def out() -> Iterator[tuple[str, int, dict, str | None]]:
        for n, item in enumerate(tasks, start=1):
            where = _task_where(n, item)
            why = [p.removeprefix(f"{where}: ") for p in said.get(n, [])] or _unlabeled(item)
            if why:
                yield where, n, _task_cells(item), "; ".join(why)
                continue
            for w, row in by_task.get(n, []):
                yield w, n, row, None

    return out(), list(labelstudio.IMAGE_KEYS)


def _task_where(n: int, item: object) -> str:
    """How labelstudio.parse_export names task ``n``: "task N (id X)", or "task N"."""
    if not isinstance(item, dict):
        return f"task {n}"
    task_id = item.get("id")
    shown = task_id if isinstance(task_id, int) or (isinstance(task_id, str) and len(task_id) <= 40) else "?"
    return f"task {n} (id {shown})"


def _task_cells(item: object) -> dict:
    """The cells of a task set aside whole: its image (``image_id``, ``path`` or the image URL,
    where they are strings) and an empty label, for the .rows.csv."""
    data = item.get("data", item) if isinstance(item, dict) else {}
    data = data if isinstance(data, dict) else {}

    def cell(key: str) -> str:
        return data[key] if isinstance(data.get(key), str) else ""

    return {"image_id": cell("image_id"), "path": cell("path") or cell(labelstudio.IMAGE), "label": "",
            "annotator": ""}


# Result types that carry an answer intake reads: the image's choice, a region's polygon.
READ_TYPES = ("choices", "polygonlabels", "polygon")


def _unlabeled(item: object) -> list[str]:
    """The annotations of an exported task (not cancelled) that carry no label where a person
    answered something: ``result: null``; a choice of control ``label`` with ``value`` null or
    no choice in it; results only of types intake does not read (``labels``, a text area, ...).
    An annotation with an empty result list (``result: []``) and a task with no annotation are
    not answered: blanks, as an empty label cell is."""
    if not isinstance(item, dict) or not isinstance(item.get("annotations"), list):
        return []
    why = []
    for k, ann in enumerate(item["annotations"], start=1):
        if not isinstance(ann, dict) or ann.get("was_cancelled") is True:
            continue
        results = ann.get("result", [])
        if results is None:
            why.append(f"annotation {k}: 'result' is null: it carries no label; answer the task again in Label "
                       f"Studio (or skip it) and export again")
            continue
        if not isinstance(results, list):
            continue
        results = [r for r in results if isinstance(r, dict)]
        ours = [(j, r) for j, r in enumerate(results, start=1)
                if r.get("type") == "choices" and r.get("from_name") == labelstudio.LABEL]
        for j, r in ours:
            value = r.get("value")
            if not (isinstance(value, dict) and value.get("choices")):
                got = "'value' is null" if value is None else "no choice in 'value'"
                why.append(f"annotation {k}: result {j}: a choice of control {labelstudio.LABEL!r} with {got}: it "
                           f"carries no label; choose a class in Label Studio and export again")
        if results and not any(r.get("type") in READ_TYPES for r in results):
            kinds = ", ".join(sorted({repr(r.get("type")) for r in results}))
            why.append(f"annotation {k}: its result(s) of type {kinds} carry no label intake reads: answer with the "
                       f"choices of control {labelstudio.LABEL!r} (coldstart's label_config.xml)")
    return why


MAX_LISTED = 50  # problems listed in an .errors.txt, the terminal and the round summary; the .rows.csv has all
