"""intake: validate human answers from data/inbox/ and append them to the label-event log.

Answers come as CSV (the review CSV with its ``label`` column filled in) or as a Label Studio
JSON export of the tasks coldstart exported (``choices``).

Contract (README, "Human answers"): a file with any bad row is rejected whole, every problem listed by
row, nothing merged; it is moved to ``data/inbox/rejected/`` beside ``<name>.errors.txt``.
An accepted file is moved to ``data/labels/imported/``. Re-importing a file whose bytes were
already imported adds nothing (the log records each source file's sha256).

The log ``data/labels/events.jsonl`` is append-only: one JSON object per accepted row, with
provenance (annotator, time, source file, its sha256, row, round). The current human label of
an image is its latest event.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import logging
import re
import shutil
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from prefect import task
from prefect.cache_policies import NO_CACHE

from coldstart.tasks import labelstudio
from coldstart.tasks.errors import LabelFileError
from coldstart.tasks.manifest import read_manifest_table
from coldstart.tasks.result import StageResult
from coldstart.tasks.workspace import Workspace, atomic_write_bytes, atomic_write_text, read_csv, write_csv

log = logging.getLogger(__name__)

HEX64 = re.compile(r"^[0-9a-f]{64}$")
IMAGE_COLUMNS = ("image", "path", "image_id")  # any one identifies the image


@dataclass
class LabelEvent:
    image_id: str
    label: str
    annotator: str
    source_file: str
    source_sha256: str
    source_row: int
    imported_at: str
    round: int


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
    label_events: int = 0  # events in the log, after this intake

    def metrics(self) -> dict[str, float | None]:
        return {"human_labels": self.human_labels, "label_events": self.label_events,
                "events_added": self.events_added, "files_accepted": len(self.files_accepted),
                "files_rejected": len(self.files_rejected), "rows_rejected": self.rows_rejected}


def read_events(ws: Workspace) -> list[LabelEvent]:
    if not ws.events.is_file():
        return []
    events = []
    for line in ws.events.read_text(encoding="utf-8").splitlines():
        if line.strip():
            events.append(LabelEvent(**json.loads(line)))
    return events


def human_labels(events: list[LabelEvent]) -> dict[str, str]:
    """image id -> current human label (the latest event wins: a later file corrects an earlier)."""
    return {e.image_id: e.label for e in events}


def _decode(raw: bytes) -> tuple[str, str]:
    # UTF-8 (with or without BOM) first; GB18030 is what Excel writes on Chinese Windows. A
    # wrong guess cannot merge silently: labels must then match the ontology exactly.
    for enc in ("utf-8-sig", "gb18030"):
        try:
            return raw.decode(enc), enc
        except UnicodeDecodeError:
            continue
    raise UnicodeDecodeError("utf-8", raw, 0, 1, "neither UTF-8 nor GB18030")


def _clean(value: str | None) -> str:
    value = unicodedata.normalize("NFC", (value or "").strip())
    # Our exported CSVs escape formula-like cells with a leading apostrophe; undo it on import.
    if value.startswith("'") and value[1:2] in ("=", "+", "-", "@"):
        value = value[1:]
    return value


def _resolve_image(ref: str, by_path: dict[str, str], known: set[str],
                   quarantined: dict[str, str]) -> tuple[str | None, str | None]:
    """An image reference (content id or path under the image root) -> (image id, problem)."""
    low = ref.lower()
    if HEX64.match(low):
        return (low, None) if low in known else (None, f"unknown image id {ref}")
    if "://" in ref or low.startswith("file:"):
        return None, f"{ref!r} is a URL; give the image's path relative to data/images/ or its sha256 id"
    ref_posix = ref.replace("\\", "/")
    if ref_posix.startswith("data/images/"):
        ref_posix = ref_posix[len("data/images/"):]
    p = PurePosixPath(ref_posix)
    if p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", ref_posix):
        return None, f"path {ref!r} points outside the image root data/images/; give a path relative to it"
    key = p.as_posix()
    if key in by_path:
        return by_path[key], None
    if key in quarantined:
        return None, f"image {ref!r} is quarantined ({quarantined[key]}); fix or replace the file first"
    return None, f"unknown image {ref!r}: no such file under data/images/ (run a round to scan new images)"


def _csv_rows(path: Path, raw: bytes) -> tuple[list[tuple[str, dict]], list[str], list[str]]:
    """A CSV's data rows as ("row N", {column: value}) and its image-reference columns.

    Row numbers count the header as row 1, as a spreadsheet shows them.
    """
    try:
        text, _ = _decode(raw)
    except UnicodeDecodeError:
        raise LabelFileError(str(path), ["file is neither UTF-8 nor GB18030 text; save it as 'CSV UTF-8'"]) from None
    if not text.strip():
        raise LabelFileError(str(path), ["file is empty; expected a header row with columns image,label[,annotator]"])
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
    except csv.Error as e:
        raise LabelFileError(str(path), [f"not a readable CSV: {e}"]) from None
    header = [_clean(h).lower() for h in (reader.fieldnames or [])]
    id_cols = [c for c in IMAGE_COLUMNS if c in header]
    if not id_cols or "label" not in header:
        raise LabelFileError(str(path), [
            f"header {header} must have a 'label' column and one of {', '.join(IMAGE_COLUMNS)} "
            f"(the review CSVs that coldstart exports have both)"])
    return [(f"row {n}", {_clean(k).lower(): _clean(v) for k, v in row.items() if k is not None})
            for n, row in enumerate(rows, start=2)], id_cols, []


def _label_studio_rows(path: Path, raw: bytes) -> tuple[list[tuple[str, dict]], list[str], list[str]]:
    """A Label Studio JSON export as ("task N (id X)", {image_id, path, label, annotator}) rows,
    its image-reference columns, and the problems found by task (see tasks/labelstudio.py)."""
    try:
        text, _ = _decode(raw)
    except UnicodeDecodeError as e:
        raise LabelFileError(str(path), [f"not a readable JSON file: {e}"]) from None
    rows, problems = labelstudio.parse_export(text, str(path))
    return ([(where, {k: _clean(v) for k, v in row.items()}) for where, row in rows],
            list(labelstudio.IMAGE_KEYS), problems)


def validate_file(path: Path, raw: bytes, ws: Workspace, classes: list[str], *,
                  bad_rows: list[tuple[dict, str]] | None = None) -> tuple[list[tuple[int, str, str, str]], int]:
    """Parse and validate one CSV or Label Studio JSON export.

    Returns ([(row number, image_id, label, annotator)], blank rows); raises LabelFileError
    listing every problem with its row (or task). With ``bad_rows`` given (intake.on_error:
    keep_good_rows), a problem in a row only drops that row: it is appended to ``bad_rows`` as
    (row, reason) and the good rows are returned; a problem with the file itself (encoding,
    header, a task as a whole) still rejects it whole.
    """
    parse = _label_studio_rows if path.suffix.lower() == ".json" else _csv_rows
    rows, id_cols, problems = parse(path, raw)  # problems: per task/row, all listed together
    file_problems = list(problems)
    by_path = dict(zip(*read_manifest_table(ws, ["image_id"]).to_pydict().values()))
    known = set(by_path.values())
    quarantined = {r["path"]: r["reason"] for r in read_csv(ws.quarantine)}
    folded = {c.casefold(): c for c in classes}
    accepted: list[tuple[int, str, str, str]] = []
    seen: dict[str, tuple[str, str]] = {}
    blank = 0
    for number, (where, row) in enumerate(rows, start=1):
        label = row.get("label", "")
        if not label:
            blank += 1  # an unanswered item of the batch: a skip, not an error
            continue
        problem = _row_problem(where, row, label, id_cols, by_path, known, quarantined, classes, folded, seen)
        if isinstance(problem, str):
            problems.append(f"{where}: {problem}")
            if bad_rows is not None:
                bad_rows.append((row, problem))
            continue
        if problem is None:
            continue  # the same answer twice: keep the first
        image_id = problem[1]
        seen[image_id] = (where, label)
        accepted.append((int(where.split()[1]) if where.startswith("row") else number, image_id, label,
                         row.get("annotator", "")))
    if file_problems or (problems and bad_rows is None):
        raise LabelFileError(str(path), problems)
    if not accepted and not blank and not bad_rows:
        raise LabelFileError(str(path), ["no data rows (or tasks)"])
    return accepted, blank


def _row_problem(where, row, label, id_cols, by_path, known, quarantined, classes, folded, seen):
    """What is wrong with one answered row (a message), or ("ok", image_id), or None for a
    repeat of an answer already taken."""
    refs = [row[c] for c in id_cols if row.get(c)]
    if not refs:
        return f"no image given ({', '.join(id_cols)} are empty)"
    image_id = None
    for ref in refs:
        got, problem = _resolve_image(ref, by_path, known, quarantined)
        if problem:
            return problem
        if image_id is not None and got != image_id:
            return f"{', '.join(id_cols)} name different images"
        image_id = got
    if label not in classes:
        hint = f" (did you mean {folded[label.casefold()]!r}?)" if label.casefold() in folded else ""
        shown = ", ".join(classes[:20]) + (" ..." if len(classes) > 20 else "")
        return f"unknown class {label!r}{hint}; valid classes: {shown}"
    if image_id in seen and seen[image_id][1] != label:
        return f"conflicting labels for one image: {label!r} here, {seen[image_id][1]!r} in {seen[image_id][0]}"
    if image_id in seen:
        return None
    return ("ok", image_id)


def _append_events(ws: Workspace, events: list[LabelEvent]) -> None:
    # Whole-file atomic replace: the log is small text, and old-or-new beats a torn last line.
    old = ws.events.read_bytes() if ws.events.is_file() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    new = "".join(json.dumps(e.__dict__, ensure_ascii=False) + "\n" for e in events).encode("utf-8")
    atomic_write_bytes(ws.events, old + new)


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
    if dest.exists():
        dest = dest_dir / f"{src.stem}.{digest[:8]}{src.suffix}"
    shutil.move(str(src), dest)
    return dest


def intake(ws: Workspace, classes: list[str], round_no: int, *, annotator_default: str = "",
           on_error: str = "keep_good_rows") -> IntakeResult:
    """The intake stage: import every answer file at the top of data/inbox/ into its declared
    outputs, data/labels/events.jsonl and data/labels/imported/. Call with the workspace lock held.
    ``on_error`` is params ``intake.on_error`` (see IntakeConfig)."""
    result = IntakeResult()
    ws.inbox.mkdir(parents=True, exist_ok=True)
    ws.imported.mkdir(parents=True, exist_ok=True)
    if not ws.events.exists():
        atomic_write_bytes(ws.events, b"")  # an empty log is a valid, versionable state
    imported_sources = {e.source_sha256 for e in read_events(ws)}
    for path in sorted(p for p in ws.inbox.iterdir() if p.is_file() and not p.name.startswith(".")):
        raw = path.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        rel = ws.rel(path)
        if digest in imported_sources:
            log.info("%s: already imported (same bytes); nothing added", rel)
            result.files_already_imported.append(rel)
            _move_aside(path, ws.imported, digest)
            continue
        if path.suffix.lower() not in (".csv", ".json"):
            err = LabelFileError(rel, [f"unsupported file type {path.suffix or '(none)'}: the inbox takes .csv files "
                                       f"and Label Studio JSON exports (.json)"])
        else:
            bad: list[tuple[dict, str]] | None = [] if on_error == "keep_good_rows" else None
            try:
                rows, blank = validate_file(Path(rel), raw, ws, classes, bad_rows=bad)
                err = None
            except LabelFileError as e:
                err = e
        if err is not None:
            moved = _move_aside(path, ws.rejected, digest)
            atomic_write_text(moved.with_name(moved.name + ".errors.txt"), str(err) + "\n\nFix the rows above and drop the "
                              "whole file into data/inbox/ again; nothing from it was merged.\n")
            log.warning("%s", err)
            result.files_rejected.append(rel)
            result.problems.append(str(err))
            continue
        _supersede(ws, path.name)  # an accepted file clears an earlier rejection of the same name
        if bad:  # keep_good_rows: the bad rows go back to the person, with why, ready to fix and re-drop
            rows_file = ws.rejected / f"{path.stem}.rows.csv"
            fields = list(dict.fromkeys([k for r, _ in bad for k in r] + ["reason"]))
            write_csv(rows_file, fields, [{**r, "reason": why} for r, why in bad])
            problem = (f"{rel}: {len(bad)} row(s) not merged (the other {len(rows)} were): see "
                       f"{ws.rel(rows_file)}, fix them there and drop that file into data/inbox/")
            log.warning("%s", problem)
            result.problems.append(problem)
            result.rows_rejected += len(bad)
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        events = [LabelEvent(image_id=i, label=lab, annotator=ann or annotator_default, source_file=rel,
                             source_sha256=digest, source_row=r, imported_at=now, round=round_no)
                  for r, i, lab, ann in rows]
        _append_events(ws, events)  # the log first: a crash before the move re-imports as a no-op
        imported_sources.add(digest)
        _move_aside(path, ws.imported, digest)
        result.files_accepted.append(rel)
        result.events_added += len(events)
        result.rows_skipped_blank += blank
    events = read_events(ws)
    result.human_labels, result.label_events = len(human_labels(events)), len(events)
    return result


@task(name="intake", cache_policy=NO_CACHE)
def intake_task(ws: Workspace, classes: list[str], round_no: int, on_error: str = "keep_good_rows") -> IntakeResult:
    return intake(ws, classes, round_no, on_error=on_error)
