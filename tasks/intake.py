"""intake: validate human answers from data/inbox/ and append them to the label-event log.

Answers come as CSV (the review CSV with its ``label`` column filled in) or as a Label Studio
JSON export of the tasks coldstart exported (``choices``).

Region answers (a label for one SAM region of an image, "background" saying it is no object)
come the same two ways: a CSV row whose ``region_id`` cell names a proposed region (the
regions review CSV, data/review/round-NNN.regions.csv), or a Label Studio polygon
(``polygonlabels`` of control ``region``) matched to a proposed region by its id, else by
outline (mask IoU >= 0.5), else taken as a new region the person drew. They become events with
``region_id`` set (and the drawn outline), never image labels.

Contract (docs/answers.md): under ``intake.on_error: keep_good_rows`` (the default) a
bad CSV row or Label Studio task costs that row or task only: the good ones are merged, the bad
ones handed back in ``data/inbox/rejected/<stem>.rows.csv`` with a ``reason`` naming the row
(or task) and image. Under ``reject_file`` a file with any bad row is rejected whole, every
problem listed by row, nothing merged. A rejected file is moved to ``data/inbox/rejected/``
beside ``<name>.errors.txt``; an accepted one to ``data/labels/imported/``. Rejections are
returned in ``IntakeResult.problems`` for the caller to show (logged at INFO only, so that a
round prints each once). Re-importing a file whose bytes were
already imported adds nothing (the log records each source file's sha256).

The log ``data/labels/events.jsonl`` is append-only: one JSON object per accepted row, with
provenance (annotator, time, source file, its sha256, row, round). The current human label of
an image is its latest event.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import hashlib
import io
import itertools
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
import unicodedata
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

from coldstart.tasks import labelstudio
from coldstart.tasks.errors import LabelFileError, LabelLogError
from coldstart.tasks.labellog import (
    LabelEvent,
    annotation_source,
    append_events,
    describe_answers,
    human_labels,
    read_events,
    repair_log,
    round_answers,
)
from coldstart.tasks.manifest import read_manifest_table
from coldstart.tasks.result import StageResult
from coldstart.tasks.workspace import (
    Workspace,
    atomic_write_bytes,
    atomic_write_text,
    read_csv,
    unescape_formula,
    write_csv,
)

log = logging.getLogger(__name__)

HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
IMAGE_COLUMNS = ("image", "path", "image_id")  # any one identifies the image
REGION_COLUMN = "region_id"  # a CSV row with this cell filled answers for that region, not its image
MATCH_IOU = 0.5  # a drawn polygon is a proposed region of its image when their masks overlap this much
REGIONS_CSV = "data/review/round-NNN.regions.csv"  # where region ids come from (the regions review)
# The region_id cell of a Label Studio polygon set aside into a .rows.csv that has no region id
# of ours (its outline is new or redrawn): dropped back, the row is refused, not read as an image's.
POLYGON_PREFIX = "polygon:"


@dataclass
class IntakeResult(StageResult):
    files_accepted: list[str] = field(default_factory=list)
    files_rejected: list[str] = field(default_factory=list)
    files_already_imported: list[str] = field(default_factory=list)
    events_added: int = 0
    rows_skipped_blank: int = 0
    rows_rejected: int = 0  # intake.on_error: keep_good_rows: rows written back to data/inbox/rejected/*.rows.csv
    problems: list[str] = field(default_factory=list)  # every rejection message, for the summary
    human_labels: int = 0  # images with a human label, after this intake
    round_answers: dict[str, int] = field(default_factory=dict)  # this round's answers by source (see round_answers)
    label_events: int = 0  # events in the log, after this intake

    def describe_answers(self) -> str:
        """"7 answer(s) this round (5 from files, 2 from Label Studio)": every source counted."""
        return describe_answers(self.round_answers)

    def metrics(self) -> dict[str, float | None]:
        return {"human_labels": self.human_labels, "label_events": self.label_events, "round_answers":
                sum(self.round_answers.values()),
                "events_added": self.events_added, "files_accepted": len(self.files_accepted),
                "files_rejected": len(self.files_rejected), "rows_rejected": self.rows_rejected}


# --- reading an answer file -------------------------------------------------------------------------

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


def _csv_rows(source: str, raw: bytes) -> tuple[Iterator[tuple[str, int, dict, str | None]], list[str], str]:
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


def _label_studio_rows(source: str, raw: bytes) -> tuple[Iterator[tuple[str, int, dict, str | None]], list[str]]:
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


# --- validating it --------------------------------------------------------------------------------

MAX_LISTED = 50  # problems listed in an .errors.txt, the terminal and the round summary; the .rows.csv has all
# keep_good_rows: a file with more bad rows than this, and more bad rows than good ones, is
# rejected whole (it is not a few typos); its .rows.csv would be as big as the file.
MAX_SET_ASIDE = 1000


class Problems:
    """Problem messages: all counted, the first MAX_LISTED kept."""

    def __init__(self) -> None:
        self.listed: list[str] = []
        self.count = 0

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.listed) < MAX_LISTED:
            self.listed.append(message)


class RowSpool:
    """Rows set aside, as (row, reason), on disk rather than in memory: a big file of bad rows
    costs a temp file the size of the rows, not a list of dicts many times that."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile("w+", encoding="utf-8")
        self._fields: dict[str, None] = {}
        self._count = 0

    def append(self, item: tuple[dict, str]) -> None:
        row, reason = item
        self._fields.update(dict.fromkeys(row))
        self._file.write(json.dumps([row, reason], ensure_ascii=False) + "\n")
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[tuple[dict, str]]:
        self._file.seek(0)
        for line in self._file:
            row, reason = json.loads(line)
            yield row, reason

    def write_csv(self, path: Path) -> None:
        """The rows with a ``reason`` column, formula-like cells escaped (people open it)."""
        fields = list(dict.fromkeys([*self._fields, "reason"]))
        write_csv(path, fields, ({**row, "reason": why} for row, why in self), escape_formulas=True)

    def close(self) -> None:
        self._file.close()


def _variants(cell: str) -> list[str]:
    """How a class cell may have been written, most literal first: as is, with our formula
    escape undone, trimmed (typed by hand); each in NFC (class names are compared in NFC)."""
    out = []
    for a in dict.fromkeys([cell, unescape_formula(cell)]):
        out += [a, a.strip(), unescape_formula(a.strip())]
    return list(dict.fromkeys(unicodedata.normalize("NFC", v) for v in out if v))


# Label Studio URL forms that name a file: its local-files serving (``?d=`` relative to the
# document root, data/), its uploads (``/data/upload/<project>/<8 hex>-<name>``: a name, no
# folder), and the signed image URLs of `coldstart api` (``/images/<image id>?exp=&sig=``).
LOCAL_FILES = labelstudio.LOCAL_FILES_PREFIX.removesuffix("images/")  # "/data/local-files/?d="
UPLOAD = re.compile(r"/data/upload/\d+/([^?#]+)")
SIGNED = re.compile(r"/images/([0-9a-fA-F]{64})(?:[?#]|$)")
UPLOAD_ID = re.compile(r"^[0-9a-f]{8}-")


def _decodings(text: str) -> list[str]:
    """``text`` as written, percent-decoded, and percent-decoded with ``+`` as a space."""
    return list(dict.fromkeys([text, urllib.parse.unquote(text), urllib.parse.unquote_plus(text)]))


def _relative(path: str) -> list[str]:
    """A path as written, with Windows separators as ``/``, then without ``./`` steps
    (``./a/./b`` is ``a/b``) and without a ``data/images/`` prefix. ``..`` is left in place:
    such a path names no manifest path and is refused as outside the image root."""
    out = []
    for p in dict.fromkeys([path, path.replace("\\", "/")]):
        bare = re.sub(r"(?:^|(?<=/))(?:\./)+", "", p)
        out += [p, bare, p.removeprefix("data/images/"), bare.removeprefix("data/images/"),
                bare.removeprefix("data/images/").removeprefix("./")]
    return list(dict.fromkeys(v for v in out if v))


def _spellings(cell: str) -> tuple[list[str], list[str]]:
    """The paths under data/images/ an image cell may spell, most literal first, and the
    Label Studio upload names it gives (matched by file name). Tried: the cell as written,
    formula escape undone, trimmed; a local-files URL's ``d`` (under ``images/``); each as
    written, then percent-decoded (``%2F``, ``%20`` or ``+`` for a space); see _relative."""
    plain = list(dict.fromkeys(v for a in dict.fromkeys([cell, unescape_formula(cell)])
                               for v in (a, a.strip(), unescape_formula(a.strip())) if v))
    paths, uploads = [], []
    for text in plain:
        at = text.find(LOCAL_FILES)
        if at >= 0:  # Label Studio serves data/ there: d=images/<path>, maybe encoded as a whole
            paths += [d[len("images/"):] for d in _decodings(text[at + len(LOCAL_FILES):]) if d.startswith("images/")]
            continue
        m = UPLOAD.search(text)
        if m:
            uploads += [u for n in _decodings(m.group(1)) for u in (n, UPLOAD_ID.sub("", n))]
            continue
        paths.append(text)
    paths += [d for p in list(paths) for d in _decodings(p)]
    return list(dict.fromkeys(r for p in paths for r in _relative(p))), list(dict.fromkeys(uploads))


def _outside(path: str) -> bool:
    """Whether a spelled path leaves data/images/ (absolute, a drive, a ``..`` step)."""
    p = PurePosixPath(path.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or bool(re.match(r"^[A-Za-z]:", path))


def _content_id(cell: str) -> str | None:
    """The image id a cell gives: a sha256 (64 hex), or the id in a signed `coldstart api` image
    URL (``.../images/<id>?exp=...&sig=...``; the signature is not checked: the id names the
    image whether or not the URL has expired)."""
    text = unescape_formula(cell.strip()).strip()
    if HEX64.match(text.lower()):
        return text.lower()
    if "://" in text or text.startswith("/images/"):
        m = SIGNED.search(urllib.parse.urlsplit(text).path + "?")
        if m:
            return m.group(1).lower()
    return None


class _Images:
    """What answer rows are checked against: the manifest's paths (exactly as on disk, so NFC
    or NFD) and ids, the quarantine."""

    def __init__(self, ws: Workspace) -> None:
        self.by_path = dict(zip(*read_manifest_table(ws, ["image_id"]).to_pydict().values()))
        self.known = set(self.by_path.values())
        self.quarantined = {r["path"]: r["reason"] for r in read_csv(ws.quarantine)}
        self._nfc: dict[str, list[str]] = {}  # NFC form -> the non-ASCII paths (manifest, quarantine) with it
        for p in [*self.by_path, *self.quarantined]:
            if not p.isascii():
                self._nfc.setdefault(unicodedata.normalize("NFC", p), []).append(p)
        self._names: dict[str, list[str]] | None = None  # NFC file name -> manifest paths (upload URLs)

    def _equal_up_to_nfc(self, spelled: str) -> list[str]:
        """The manifest and quarantined paths equal to ``spelled`` after NFC normalisation."""
        key = unicodedata.normalize("NFC", spelled)
        found = list(self._nfc.get(key, []))
        if key.isascii() and (key in self.by_path or key in self.quarantined):
            found.append(key)
        return found

    def _named(self, name: str) -> list[str]:
        """The manifest paths whose file name is ``name`` (up to NFC)."""
        if self._names is None:
            self._names = {}
            for p in self.by_path:
                self._names.setdefault(unicodedata.normalize("NFC", p.rpartition("/")[2]), []).append(p)
        return self._names.get(unicodedata.normalize("NFC", name), [])

    def _candidates(self, ref: str) -> Iterator[tuple[str, list[str]]]:
        """(how, the paths it names) for each spelling of ``ref``: every exact match first, then
        matches up to NFC, then Label Studio upload names by file name."""
        paths, uploads = _spellings(ref)
        for p in paths:
            if p in self.by_path or p in self.quarantined:
                yield "exact", [p]
        for p in paths:
            yield "nfc", self._equal_up_to_nfc(p)
        for u in uploads:
            yield "upload", self._named(u)

    def resolve(self, ref: str, want: str | None = None) -> tuple[str | None, str | None]:
        """A content id, path under the image root or Label Studio image URL -> (image id,
        problem). With ``want`` (the row's image_id), any spelling that names that image counts;
        else an exact path wins, then one equal up to NFC (two such files: a problem), then an
        upload URL's file name when one image has it. Nothing is opened: a ``..`` or absolute
        spelling matches no manifest path and is refused as outside the image root."""
        image_id = _content_id(ref)
        if image_id is not None:
            return (image_id, None) if image_id in self.known else (None, f"unknown image id {ref.strip()}")
        got = self.by_path.get(ref)  # the common case, the path exactly as on disk
        if got is not None and want in (None, got):
            return got, None
        found = quarantined = None
        for how, paths in self._candidates(ref):
            ids = list(dict.fromkeys(self.by_path[p] for p in paths if p in self.by_path))
            if want is not None and want in ids:
                return want, None
            if want is None and len(ids) > 1:
                shown = paths[0] if how != "upload" else ref.strip()
                return None, (f"{len(paths)} files in data/images/ are named {shown!r} up to Unicode normalisation "
                              f"(NFC) or as a Label Studio upload; give the exact path, or the image_id")
            if ids and want is None:
                return ids[0], None
            found = found or (ids[0] if ids else None)
            q = next((p for p in paths if p in self.quarantined), None)
            if q is not None and quarantined is None:
                quarantined = f"image {ref!r} is quarantined ({self.quarantined[q]}); fix or replace the file first"
                if how == "exact" and want is None:  # that very file, not a twin of it
                    return None, quarantined
        if found is not None:
            return found, None  # another image than ``want``: the caller says so
        return None, quarantined or self._not_found(ref)

    @staticmethod
    def _not_found(ref: str) -> str:
        """Why no image was found for ``ref``: outside the image root, a URL, or unknown."""
        paths, _ = _spellings(ref)
        if any(_outside(p) for p in paths) or (LOCAL_FILES in ref and not paths):
            return f"path {ref!r} points outside the image root data/images/; give a path relative to it"
        plain = unescape_formula(ref.strip())
        if "://" in plain or plain.lower().startswith("file:"):
            return f"{ref!r} is a URL; give the image's path relative to data/images/ or its sha256 id"
        return f"unknown image {ref!r}: no such file under data/images/ (run a round to scan new images)"


class _Regions:
    """What region answers are checked against: the proposed regions, dropped ones included
    (data/labels/regions/), and the images' sizes. Read on first use: a file without region
    answers never reads them; the masks (RLE counts) only for Label Studio polygons."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._by_id: dict[str, tuple[str, str, int, int]] | None = None  # id -> (image id, path, height, width)
        self._counts: dict[str, list[tuple[str, str]]] | None = None  # image id -> [(region id, counts)]
        self._sizes: dict[str, tuple[int, int]] | None = None  # image id -> (width, height), from the manifest

    def _read(self, columns: list[str]) -> dict[str, list]:
        from coldstart.tasks.regions import regions_dir, regions_parts

        return regions_parts(regions_dir(self.ws)).read(columns=columns, sort=False).to_pydict()

    def get(self, rid: str) -> tuple[str, str, int, int] | None:
        """(image id, path, mask height, mask width) of a proposed region, or None."""
        if self._by_id is None:
            t = self._read(["image_id", "path", "height", "width"])
            self._by_id = {r: (i, p, h, w) for r, i, p, h, w in zip(t["region_id"], t["image_id"], t["path"],
                                                                   t["height"], t["width"])}
        return self._by_id.get(rid)

    def unknown(self, rid: str) -> str:
        if self.get(rid) is None and not self._by_id:
            return (f"unknown region {rid!r}: no regions were proposed yet (data/labels/regions/ is empty): run a "
                    f"round with regions.enabled: true, then answer the regions in {REGIONS_CSV}")
        return f"unknown region {rid!r}: region ids come from {REGIONS_CSV}"

    def masks(self, image_id: str) -> list[tuple[str, str]]:
        """The proposed regions of an image as (region id, RLE counts)."""
        if self._counts is None:
            t = self._read(["image_id", "counts"])
            self._counts = {}
            for r, i, c in zip(t["region_id"], t["image_id"], t["counts"]):
                self._counts.setdefault(i, []).append((r, c))
        return self._counts.get(image_id, [])

    def image_size(self, image_id: str) -> tuple[int, int] | None:
        """(width, height) of an image as the scan saw it (EXIF-oriented), or None if unknown."""
        if self._sizes is None:
            t = read_manifest_table(self.ws, ["image_id", "width", "height"]).to_pydict()
            self._sizes = {i: (w, h) for i, w, h in zip(t["image_id"], t["width"], t["height"]) if w and h}
        return self._sizes.get(image_id)

    def best_match(self, image_id: str, rle: dict) -> tuple[str, float] | None:
        """The proposed region of ``image_id`` whose mask overlaps ``rle`` most: (id, IoU), or None."""
        from pycocotools import mask as mask_utils

        size = list(rle["size"])
        found = [(r, {"size": size, "counts": c.encode("ascii")}) for r, c in self.masks(image_id)
                 if list(self.get(r)[2:]) == size]
        if not found:
            return None
        ious = mask_utils.iou([m for _, m in found], [{"size": size, "counts": rle["counts"].encode("ascii")}],
                              [0])
        k = int(ious[:, 0].argmax())
        return found[k][0], float(ious[k, 0])


def validate_file(path: Path, raw: bytes, ws: Workspace, classes: list[str], *,
                  bad_rows: list[tuple[dict, str]] | RowSpool | None = None) -> tuple[list[tuple], int]:
    """Parse and validate one CSV or Label Studio JSON export.

    Returns ([(row number, image_id, label, annotator)] for image answers and (row number,
    image_id, label, annotator, region_id, region) for region answers (``region``: the drawn
    outline as COCO RLE for a Label Studio polygon no proposed region matches, else None), blank
    rows); raises LabelFileError listing the problems with their row (or task) and image: the
    first MAX_LISTED, and how many more. With ``bad_rows`` given (intake.on_error:
    keep_good_rows), a problem costs only its CSV row or its Label Studio task (all of the task's
    rows when the problem is with the task as a whole: a wrong JSON type, annotators who disagree,
    an annotation that carries no label, its polygons giving one region two labels): each row is
    appended to ``bad_rows`` as (cells, reason naming its row or task and image), and the good
    rows are returned. A problem with the file itself (encoding, header, structure, not an export)
    rejects it whole under either policy.
    Memory: the accepted rows (at most one per image or region) and the problems listed; rows are
    streamed, one task at a time; the regions table is read only for a file with region answers.
    """
    source = str(path)
    is_json = path.suffix.lower() == ".json"
    if is_json:
        rows, id_cols = _label_studio_rows(source, raw)
        guessed = False
    else:
        rows, id_cols, encoding = _csv_rows(source, raw)
        guessed = encoding == "gb18030"
    check = _Check(ws, classes, id_cols, is_json, source if guessed else None)
    problems = Problems()
    for _, items in itertools.groupby(rows, key=lambda r: r[1]):  # a CSV row, or a task's rows
        aside, listed = check.group(list(items))
        for message in listed:
            problems.add(message)
        if bad_rows is not None:
            for where, row, why in aside:
                bad_rows.append((_set_aside(row) if is_json else row, _reason(where, row, why)))
    if problems.count and bad_rows is None:
        raise LabelFileError(source, problems.listed, total=problems.count)
    if not check.accepted and not check.blank and not problems.count:
        raise LabelFileError(source, ["no data rows (or tasks)"])
    return check.accepted, check.blank


def _shown(row: dict) -> str:
    """The image (or region) a row names, as written, for a problem message; "" if none."""
    for key in ("image", "path", "image_id", REGION_COLUMN):
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return ("region " if key == REGION_COLUMN else "image ") + repr(value.strip()[:200])
    return ""


def _listed(where: str, row: dict, why: str) -> str:
    """A problem as listed (.errors.txt, the terminal): its row or task, then what is wrong,
    then the image when the message does not already quote it."""
    shown = _shown(row)
    return f"{where}: {why}" + (f" ({shown})" if shown and shown.split(" ", 1)[1] not in why else "")


def _reason(where: str, row: dict, why: str) -> str:
    """The ``reason`` cell of a row set aside: what is wrong, then its row or task and image
    (the cell starts with what is wrong, as a person scanning the column reads it)."""
    shown = _shown(row)
    return f"{why} ({where}" + (f", {shown}" if shown and shown.split(" ", 1)[1] not in why else "") + ")"


class _Check:
    """One file's validation: what rows are checked against (images, regions, classes) and
    what was taken so far (the accepted rows, the image and region answers seen, blanks)."""

    def __init__(self, ws: Workspace, classes: list[str], id_cols: list[str], is_json: bool,
                 guessed: str | None) -> None:
        self.images, self.regions = _Images(ws), _Regions(ws)
        self.canonical = {c: c for c in classes}
        self.folded = {c.casefold(): c for c in classes}
        self.id_cols, self.is_json = id_cols, is_json
        self.guessed = guessed  # the source's name when it was read as GB18030 (see _check_guess), else None
        self.annotators: dict[str, str] = {}
        self.accepted: list[tuple] = []
        self.seen: dict[str, tuple[str, str]] = {}  # image id -> (where, label)
        # region id -> (where, label, index in accepted, row)
        self.seen_regions: dict[str, tuple[str, str, int, dict]] = {}
        self.blank = 0

    def group(self, items: list[tuple[str, int, dict, str | None]]) -> tuple[list[tuple[str, dict, str]], list[str]]:
        """Validate one CSV row, or the rows of one Label Studio task, taking the good ones.
        Returns the rows set aside as (where, cells, reason) and the problems to list, one per
        problem. A problem with the task as a whole (see outcome) undoes what its rows gave: all
        of them are set aside with it."""
        start, keys, done, whole = len(self.accepted), [], [], None
        for where, number, row, problem in items:
            if problem is None:
                if not unescape_formula(row.get("label", "").strip()).strip():
                    self.blank += 1  # an unanswered item of the batch: a skip, not an error
                    continue
                problem, task_problem = self.outcome(where, row)
                whole = whole or task_problem
            if self.guessed:
                _check_guess(self.guessed, where, row, self.id_cols, problem)
            if isinstance(problem, tuple):
                keys.append(self.take(where, number, row, problem))
            done.append((where, row, problem if isinstance(problem, str) else None))  # None: taken, or a repeat
        listed = [_listed(w, r, why) for w, r, why in done if why]
        if whole:
            del self.accepted[start:]
            for kind, key in keys:
                (self.seen if kind == "image" else self.seen_regions).pop(key, None)
            listed.append(_listed(items[0][0], items[0][2], whole))
            done = [(w, r, why or whole) for w, r, why in done]
        return [d for d in done if d[2]], listed

    def outcome(self, where: str, row: dict):
        """(what is wrong with an answered row: a message; ("ok", image_id, label); ("region",
        image_id, label, region_id, region); or None for a repeat of an answer taken, a problem
        with its Label Studio task as a whole or None)."""
        images, canonical, folded = self.images, self.canonical, self.folded
        if self.is_json and "points" in row:  # a Label Studio polygon
            problem = _polygon_problem(row, self.id_cols, images, self.regions, canonical, folded)
        elif not self.is_json and row.get(REGION_COLUMN, "").strip():
            problem = _region_row_problem(row, self.id_cols, images, self.regions, canonical, folded)
        else:
            problem = _row_problem(row, self.id_cols, images, canonical, folded, self.seen,
                                   region_column=not self.is_json and REGION_COLUMN in row)
        if isinstance(problem, tuple) and problem[0] == "region" and problem[3] in self.seen_regions:
            return _region_repeat(where, row, problem, self.seen_regions, self.accepted, self.is_json)
        return problem, None

    def take(self, where: str, number: int, row: dict, outcome: tuple) -> tuple[str, str]:
        """Accept a row (``outcome`` from ``outcome``); returns what it answered: ("image", image
        id) or ("region", region id)."""
        who = unicodedata.normalize("NFC", unescape_formula(row.get("annotator", "").strip()))
        if who.isdigit() and "annotation_id" in row:  # Label Studio's CSV export names users by id
            who = f"ls-user-{who}"
        who = self.annotators.setdefault(who, who)
        if outcome[0] == "region":
            _, image_id, label, rid, rle = outcome
            self.seen_regions[rid] = (where, label, len(self.accepted), row)
            self.accepted.append((number, image_id, label, who, rid, rle))
            return "region", rid
        _, image_id, label = outcome
        self.seen[image_id] = (where, label)
        self.accepted.append((number, image_id, label, who))
        return "image", image_id


_MIXED = re.compile("[A-Za-z][^\x00-\x7f]|[^\x00-\x7f][A-Za-z]")


def _check_guess(source: str, where: str, row: dict, id_cols: list[str], problem) -> None:
    """A file read as GB18030 is Chinese text only if its non-ASCII image and class cells name
    known images and classes, and its annotator names do not run Latin letters into ideographs
    (cp1252 "créée" decodes as "cr" + an ideograph + "e"): else LabelFileError, not UTF-8."""
    cells = [row.get(c, "") for c in [*id_cols, "label"]]
    if (isinstance(problem, str) and not all(c.isascii() for c in cells)) or _MIXED.search(row.get("annotator", "")):
        raise LabelFileError(source, [f"{NOT_UTF8} (read as GB18030, {where} does not look like Chinese text)"])


def _label(cell: str, canonical: dict[str, str]) -> str | None:
    """The class a label cell names (the ontology's own string), or None."""
    return next((canonical[v] for v in _variants(cell) if v in canonical), None)


def _row_image(row, id_cols, images) -> tuple[str | None, str | None]:
    """The image a row names: (image id, None), (None, what is wrong), or (None, None) when its
    image cells are all empty."""
    image_id = None
    given = row.get("image_id", "").strip() if "image_id" in id_cols else ""
    if given:
        if not HEX64.match(given.lower()):
            return None, f"image_id {given[:80]!r} is not a sha256 (64 hex digits)"
        image_id, problem = images.resolve(given)
        if problem:
            return None, problem
    refs = [row[c] for c in id_cols if c != "image_id" and row.get(c, "").strip()]
    for ref in refs:
        got, problem = images.resolve(ref, want=image_id)
        if problem:
            return None, problem
        if image_id is not None and got != image_id:
            return None, f"{', '.join(id_cols)} name different images"
        image_id = got
    return image_id, None


def _class_problem(cell, canonical, folded) -> tuple[str | None, str | None]:
    """The class a label cell names: (label, None), or (None, what is wrong)."""
    label = _label(cell, canonical)
    if label is not None:
        return label, None
    shown_label = unicodedata.normalize("NFC", unescape_formula(cell.strip()))
    hint = f" (did you mean {folded[shown_label.casefold()]!r}?)" if shown_label.casefold() in folded else ""
    names = list(canonical)
    shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
    return None, f"unknown class {shown_label[:200]!r}{hint}; valid classes: {shown}"


def _row_problem(row, id_cols, images, canonical, folded, seen, *, region_column: bool = False):
    """What is wrong with one answered row (a message), or ("ok", image_id, label), or None for a
    repeat of an answer already taken. ``region_column``: the file has a region_id column (empty
    in this row)."""
    image_id, problem = _row_image(row, id_cols, images)
    if problem:
        return problem
    if image_id is None:
        if region_column:
            return f"no image or region given ({', '.join([*id_cols, REGION_COLUMN])} are empty)"
        return f"no image given ({', '.join(id_cols)} are empty)"
    label, problem = _class_problem(row["label"], canonical, folded)
    if problem:
        return problem
    if image_id in seen and seen[image_id][1] != label:
        return f"conflicting labels for one image: {label!r} here, {seen[image_id][1]!r} in {seen[image_id][0]}"
    if image_id in seen:
        return None
    return ("ok", image_id, label)


def _region_row_problem(row, id_cols, images, regions: _Regions, canonical, folded):
    """A CSV region answer (its region_id cell filled): what is wrong (a message), or ("region",
    image_id, label, region_id, None)."""
    cell = unescape_formula(row[REGION_COLUMN].strip()).strip()
    rid = cell.lower()
    if cell.startswith(POLYGON_PREFIX):
        return (f"region_id {cell[:80]!r} is a polygon drawn in Label Studio: a CSV cannot carry its outline; fix it "
                f"in Label Studio and export the task again (or delete this row)")
    if not HEX16.match(rid):
        hint = ""
        try:
            float(cell)
            hint = " (a spreadsheet turned it into a number? format the column as text and copy the id again)"
        except ValueError:
            pass
        return f"region_id {cell[:80]!r} is not a region id (16 hex digits){hint}; region ids come from {REGIONS_CSV}"
    found = regions.get(rid)
    if found is None:
        return regions.unknown(rid)
    image_id, path = found[0], found[1]
    if image_id not in images.known:
        return (f"region {rid} is on image {path!r} (id {image_id[:12]}...), which is no longer in data/images/ "
                f"(removed or changed since the round proposed the region): drop this row")
    for c in id_cols:  # the row may also name the image: it must be the region's
        ref = row.get(c, "")
        if not ref.strip():
            continue
        if c == "image_id" and not HEX64.match(ref.strip().lower()):
            return f"image_id {ref.strip()[:80]!r} is not a sha256 (64 hex digits)"
        got, problem = images.resolve(ref, want=image_id)
        if got == image_id:
            continue
        if problem:
            return problem
        return (f"region {rid} is on image {path!r}, but {c} {ref.strip()[:200]!r} names another image: copy the "
                f"row's region_id and image from {REGIONS_CSV} together")
    label, problem = _class_problem(row["label"], canonical, folded)
    if problem:
        return problem
    return ("region", image_id, label, rid, None)


def _polygon_problem(row, id_cols, images, regions: _Regions, canonical, folded):
    """A Label Studio polygon (a row from labelstudio.parse_export): what is wrong (a message),
    or ("region", image_id, label, region_id, region). Matched to a proposed region of the task's
    image by its id (minus a ``-k`` part suffix), else by outline (the highest mask IoU, if at
    least MATCH_IOU), else it is a region the person drew: ``region`` is then its RLE."""
    image_id, problem = _row_image(row, id_cols, images)
    if problem:
        return problem
    if image_id is None:
        return f"no image given ({', '.join(id_cols)} are empty)"
    label, problem = _class_problem(row["label"], canonical, folded)
    if problem:
        return problem
    width, height = row["original_width"], row["original_height"]
    shown = f"polygon {row['result_id'][:40]!r} ({row['result']})"
    stem = re.sub(r"-\d+$", "", row["result_id"])
    found = regions.get(stem)
    if found is not None and found[0] == image_id:
        if (found[3], found[2]) != (width, height):
            return (f"{shown} was drawn on the image at {width}x{height} pixels, but region {stem} was proposed on it "
                    f"at {found[3]}x{found[2]}: Label Studio shows another version of the image; export the regions' "
                    f"tasks from coldstart again and redo it there")
        return ("region", image_id, label, stem, None)
    size = regions.image_size(image_id)
    if size is not None and size != (width, height):
        return (f"{shown} was drawn on the image at {width}x{height} pixels, but the image is {size[0]}x{size[1]}: "
                f"Label Studio shows another version of it; export its task from coldstart again and redo it there")
    rle = labelstudio.polygon_rle(row["points"], width, height)
    if rle is None:
        return (f"{shown} has an outline too long to rasterize (over {labelstudio.MAX_PERIMETER} pixels); "
                f"redraw it with fewer, simpler edges")
    from pycocotools import mask as mask_utils

    if not mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}):
        return f"{shown} covers no pixel of the image (its points enclose no area); redraw it"
    best = regions.best_match(image_id, rle)
    if best is not None and best[1] >= MATCH_IOU:
        return ("region", image_id, label, best[0], None)
    from coldstart.tasks.regions import region_id

    return ("region", image_id, label, region_id(image_id, rle["counts"]), rle)


def _region_repeat(where, row, problem, seen_regions, accepted, is_json) -> tuple[str | None, str | None]:
    """A region answer for a region answered before in the file -> (a row problem, or None: the
    row is not taken; a problem with the whole task, or None).
    The same label again is kept once (a Label Studio task's annotators are all credited); another
    label is a conflict: a row problem naming the other row, or within one Label Studio task (two
    annotators, or two polygons of one region) a problem with the task."""
    _, _, label, rid, _ = problem
    first_where, first_label, k, first = seen_regions[rid]
    if first_label != label:
        if is_json and first_where == where:
            labels = ", ".join(sorted({first_label, label}))
            if first["annotator"] != row["annotator"]:
                return None, (f"annotators disagree on region {rid} ({labels}); settle it in Label Studio "
                              f"and export again")
            return None, (f"{first['result']} and {row['result']} outline one region ({rid}) with different "
                          f"labels ({labels}); give them one label in Label Studio and export again")
        return f"conflicting labels for one region: {label!r} here, {first_label!r} in {first_where}", None
    if is_json and first_where == where:
        n, image_id, lab, who, _, rle = accepted[k]
        names = sorted({*who.split(","), unicodedata.normalize("NFC", row["annotator"])} - {""})
        accepted[k] = (n, image_id, lab, ",".join(names), rid, rle)
    return None, None


def _set_aside(row: dict) -> dict:
    """A Label Studio row as the cells of a .rows.csv. A polygon gets a region_id cell (its
    result's id when that is a region id of ours, else ``polygon:<id>``), so that the file,
    dropped back, answers for the region and never labels the image; its points and sizes as
    JSON text."""
    if "points" not in row:
        return row
    stem = re.sub(r"-\d+$", "", row["result_id"])
    region = stem if HEX16.match(stem) else POLYGON_PREFIX + row["result_id"]
    return {"image_id": row["image_id"], "path": row["path"], REGION_COLUMN: region,
            **{k: v if isinstance(v, str) else json.dumps(v) for k, v in row.items() if k not in ("image_id", "path")}}


# --- the stage ------------------------------------------------------------------------------------


def _supersede(ws: Workspace, name: str) -> None:
    """A file accepted under the name of an earlier rejected one is its corrected copy: the
    rejected copy and its error notes move to data/inbox/rejected/superseded/ (kept, not listed)."""
    stem = Path(name).stem
    for old in [ws.rejected / name, ws.rejected / f"{name}.errors.txt", ws.rejected / f"{stem}.rows.csv"]:
        if old.is_file():
            (ws.rejected / "superseded").mkdir(parents=True, exist_ok=True)
            shutil.move(str(old), ws.rejected / "superseded" / old.name)


def _move_aside(src: Path, dest_dir: Path, digest: str) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / src.name
    if os.path.lexists(dest):
        dest = dest_dir / f"{src.stem}.{digest[:8]}{src.suffix}"
    os.replace(src, dest)  # the entry itself: a symlink stays a link, a FIFO is never opened
    return dest


def intake(ws: Workspace, classes: list[str], round_no: int, *, annotator_default: str = "",
           on_error: str = "keep_good_rows", max_file_mb: float = 50.0) -> IntakeResult:
    """The intake stage: import every answer file at the top of data/inbox/ into its declared
    outputs, data/labels/events.jsonl and data/labels/imported/. Call with the workspace lock held.
    ``on_error`` and ``max_file_mb`` are params ``intake.*`` (see IntakeConfig). Raises
    LabelLogError if the log cannot be written (disk full): the log is intact, and that file and
    the ones after it stay in the inbox."""
    result = IntakeResult()
    ws.inbox.mkdir(parents=True, exist_ok=True)
    ws.imported.mkdir(parents=True, exist_ok=True)
    try:
        if not ws.events.exists():
            atomic_write_bytes(ws.events, b"")  # an empty log is a valid, versionable state
        repair_log(ws)
    except OSError as e:
        raise LabelLogError(f"cannot write {ws.rel(ws.events)} ({e.strerror}); nothing was imported: free some "
                            f"space and run again") from e
    imported_sources = {e.source_sha256 for e in read_events(ws)}
    max_bytes = int(max_file_mb * 2**20)
    spool = ws.inbox / WEBHOOK_DIR
    for name in sorted(os.listdir(spool)) if spool.is_dir() else []:  # in the order Label Studio sent them
        if name.endswith(".json") and not name.startswith("."):
            try:
                _intake_webhook(ws, spool / name, classes, round_no, result, imported_sources, on_error=on_error)
            except OSError as e:
                raise LabelLogError(f"intake stopped at {WEBHOOK_DIR}/{name}: {e.strerror or e}; the labels already in "
                                    f"{ws.rel(ws.events)} are intact: free some space and run again") from e
    for name in sorted(os.listdir(ws.inbox)):
        path, rel = ws.inbox / name, f"data/inbox/{name}"
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if name.startswith(".") or stat.S_ISDIR(st.st_mode):
            if not name.startswith(".") and name != "rejected":
                log.warning("%s/ is a folder: intake reads the files at the top of data/inbox/ only; move them up", rel)
            continue
        try:
            _intake_file(ws, path, rel, st, classes, round_no, result, imported_sources, annotator_default=annotator_default,
                         on_error=on_error, max_bytes=max_bytes)
        except OSError as e:
            raise LabelLogError(f"intake stopped at {rel}: {e.strerror or e} ({e.filename or 'writing'}); the labels "
                                f"already in {ws.rel(ws.events)} are intact and {rel} and the files after it are left "
                                f"in data/inbox/: free some space (or fix the error) and run again") from e
    events = read_events(ws)
    result.human_labels, result.label_events = len(human_labels(events)), len(events)
    result.round_answers = round_answers(events, round_no)
    return result


def _intake_file(ws: Workspace, path: Path, rel: str, st: os.stat_result, classes: list[str], round_no: int,
                 result: IntakeResult, imported_sources: set[str], *, annotator_default: str, on_error: str,
                 max_bytes: int) -> None:
    """Import (or reject, or skip as already imported) the inbox entry ``path``."""
    bad = RowSpool() if on_error == "keep_good_rows" else None
    try:
        try:
            raw = read_answer_file(path, rel, max_bytes)
            digest = hashlib.sha256(raw).hexdigest()
            err = None
        except LabelFileError as e:
            raw, err = None, e
            digest = hashlib.sha256(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
        if raw is not None and digest in imported_sources:
            log.info("%s: already imported (same bytes); nothing added", rel)
            result.files_already_imported.append(rel)
            _move_aside(path, ws.imported, digest)
            return
        if err is None and path.suffix.lower() not in (".csv", ".json"):
            err = LabelFileError(rel, [f"unsupported file type {path.suffix or '(none)'}: the inbox takes .csv files "
                                       f"and Label Studio JSON exports (.json)"])
        if err is None:
            try:
                rows, blank = validate_file(Path(rel), raw, ws, classes, bad_rows=bad)
            except LabelFileError as e:
                err = e
        if err is None and bad is not None and len(bad) > MAX_SET_ASIDE and len(bad) > len(rows):
            # Mostly bad rows are not typos (a wrong file, an old class list): handing back a copy
            # of the file row by row would help nobody and could be hundreds of MB. Reject it whole.
            err = LabelFileError(rel, [f"{len(bad)} of {len(bad) + len(rows)} answered rows are bad (more than "
                                       f"{MAX_SET_ASIDE} and more than the good ones), so none is merged; the "
                                       f"first ones:"] + [why for _, (_, why) in zip(range(MAX_LISTED), bad)],
                                 total=len(bad) + 1)
        if err is not None:
            _reject(ws, path, rel, digest, err, result)
            return
        _supersede(ws, path.name)  # an accepted file clears an earlier rejection of the same name
        if bad:  # keep_good_rows: the bad rows go back to the person, with why, ready to fix and re-drop
            rows_file = ws.rejected / f"{path.stem}.rows.csv"
            bad.write_csv(rows_file)
            problem = (f"{rel}: {len(bad)} row(s) not merged (the other {len(rows)} were): see "
                       f"{ws.rel(rows_file)}, fix them there and drop that file into data/inbox/")
            log.info("%s", problem)  # the caller reports result.problems: one line each, not two
            result.problems.append(problem)
            result.rows_rejected += len(bad)
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        events = [LabelEvent(image_id=i, label=lab, annotator=ann or annotator_default, source_file=rel,
                             source_sha256=digest, source_row=r, imported_at=now, round=round_no,
                             region_id=region[0] if region else "", region=region[1] if region else None)
                  for r, i, lab, ann, *region in rows]
        append_events(ws, events)  # the log first: a crash before the move re-imports as a no-op
        imported_sources.add(digest)
        _move_aside(path, ws.imported, digest)
        result.files_accepted.append(rel)
        result.events_added += len(events)
        result.rows_skipped_blank += blank
    finally:
        if bad is not None:
            bad.close()


# --- Label Studio annotations, live --------------------------------------------------------------

# data/inbox/.label-studio/: the annotations Label Studio posted to `coldstart api` (its webhook),
# one file each, named by arrival time; the next intake (at once when no round is running, else
# the round's own) turns them into events and moves them to data/labels/imported/.
WEBHOOK_DIR = ".label-studio"
ANSWER_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
DELETE_ACTIONS = ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED")


def spool_annotation(ws: Workspace, action: str, annotation: dict, task: dict | None) -> tuple[Path, str, bool]:
    """Keep one annotation Label Studio sent (``action``: ANNOTATION_CREATED/UPDATED/DELETED)
    until intake takes it in. Only what an answer is made of is kept (the annotation's id,
    updated_at, result, was_cancelled, completed_by; the task's id and data). Its key is
    (answer or deletion, annotation id, updated_at): Label Studio retries a webhook it thinks failed, and the
    same key is imported once (a created and an updated notice of one version share it).
    Returns (spool file, key digest, whether it was already known)."""
    if action not in ANSWER_ACTIONS + DELETE_ACTIONS:
        raise ValueError(f"not an annotation action: {action!r}")
    if not isinstance(annotation, dict) or annotation.get("id") in (None, ""):
        raise ValueError("the webhook's 'annotation' has no id")
    keep = ("id", "updated_at", "result", "was_cancelled", "completed_by", "lead_time")  # lead_time: the report's hours
    record = {"action": action, "annotation": {k: annotation.get(k) for k in keep},
              "task": {k: (task or {}).get(k) for k in ("id", "data")}}
    # Created and updated share a key: the webhook and `round --wait`'s polling of the export may
    # both bring the same version of an annotation, and it must count once.
    kind = "answer" if action in ANSWER_ACTIONS else "delete"
    digest = hashlib.sha256(json.dumps([kind, annotation.get("id"), annotation.get("updated_at")],
                                       default=str).encode()).hexdigest()
    record["key"] = digest
    known = digest in {e.source_sha256 for e in read_events(ws)} or any(
        p.name.endswith(f"-{digest[:16]}.json") for p in (ws.inbox / WEBHOOK_DIR).glob("*.json"))
    path = ws.inbox / WEBHOOK_DIR / f"{time.time_ns():020d}-{digest[:16]}.json"
    if not known:
        atomic_write_bytes(path, json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8"))
    return path, digest, known


def _intake_webhook(ws: Workspace, path: Path, classes: list[str], round_no: int, result: IntakeResult,
                    imported_sources: set[str], *, on_error: str) -> None:
    """One spooled annotation -> events, validated exactly as a Label Studio export holding that
    one task. An update first retracts what the annotation said before (it may have dropped a
    polygon); a deletion retracts it; a cancelled (skipped) annotation is recorded as a skip."""
    rel = f"data/inbox/{WEBHOOK_DIR}/{path.name}"
    try:
        record = json.loads(path.read_bytes())
        action, ann, task_ = record["action"], record["annotation"], record["task"]
        digest = record["key"]
    except (ValueError, KeyError, TypeError) as e:
        _reject(ws, path, rel, hashlib.sha256(path.name.encode()).hexdigest(),
                LabelFileError(rel, [f"not a spooled Label Studio annotation ({e})"]), result)
        return
    if digest in imported_sources:
        result.files_already_imported.append(rel)
        _move_aside(path, ws.imported, digest)
        return
    source = annotation_source(ann.get("id"))
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    data = task_.get("data") if isinstance(task_.get("data"), dict) else {}
    image_id = data.get("image_id", "") if isinstance(data.get("image_id"), str) else ""
    task_id = task_.get("id") if isinstance(task_.get("id"), int) else 0

    def event(kind: str, label: str = "", who: str = "") -> LabelEvent:
        return LabelEvent(image_id=image_id, label=label, annotator=who, source_file=source, source_sha256=digest,
                          source_row=task_id, imported_at=now, round=round_no, kind=kind)

    if action in DELETE_ACTIONS:
        events = [event("retract")]
    elif ann.get("was_cancelled") is True:
        events = [event("skip", who=labelstudio.annotator_of(ann.get("completed_by")))]
    else:
        bad = RowSpool() if on_error == "keep_good_rows" else None
        export = json.dumps([{"id": task_id, "data": data, "annotations": [ann]}], ensure_ascii=False).encode()
        try:
            rows, _ = validate_file(Path(rel), export, ws, classes, bad_rows=bad)
            reasons = [why for _, why in bad] if bad else []
        except LabelFileError as e:
            _reject(ws, path, rel, digest, e, result)
            return
        finally:
            if bad is not None:
                bad.close()
        fix = f"correct annotation {ann.get('id')} in Label Studio: its update is taken in again"
        if reasons and not rows:  # nothing good in it: refused whole, as a file would be
            _reject(ws, path, rel, digest, LabelFileError(rel, [*reasons[:MAX_LISTED], fix]), result)
            return
        if reasons:
            result.rows_rejected += len(reasons)
            result.problems.append(f"{rel}: {len(reasons)} answer(s) of Label Studio annotation {ann.get('id')} not "
                                   f"merged: {'; '.join(reasons[:5])}; {fix}")
        events = [event("retract")] + [
            LabelEvent(image_id=i, label=lab, annotator=who, source_file=source, source_sha256=digest, source_row=task_id,
                       imported_at=now, round=round_no, region_id=region[0] if region else "",
                       region=region[1] if region else None) for _, i, lab, who, *region in rows]
    append_events(ws, events)
    imported_sources.add(digest)
    _move_aside(path, ws.imported, digest)
    result.files_accepted.append(rel)
    result.events_added += sum(1 for e in events if not e.kind)


def _reject(ws: Workspace, path: Path, rel: str, digest: str, err: LabelFileError, result: IntakeResult) -> None:
    moved = _move_aside(path, ws.rejected, digest)
    atomic_write_text(moved.with_name(moved.name + ".errors.txt"), str(err) + "\n\nFix the rows above and drop "
                      "the whole file into data/inbox/ again; nothing from it was merged.\n")
    log.info("%s", err)  # the caller reports result.problems (the round's summary, `stage`, the webhook's answer)
    result.files_rejected.append(rel)
    result.problems.append(str(err))
