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

import datetime as dt
import hashlib
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from coldstart.tasks import labelstudio
from coldstart.tasks.answerchecks import (
    HEX16,
    POLYGON_PREFIX,
    RegionIndex,
    polygon_problem,
    region_repeat,
    region_row_problem,
    row_problem,
)
from coldstart.tasks.answerfiles import (
    MAX_LISTED,
    NOT_UTF8,
    REGION_COLUMN,
    csv_rows,
    label_studio_rows,
    read_answer_file,
)
from coldstart.tasks.errors import LabelFileError, LabelLogError
from coldstart.tasks.imagerefs import ImageIndex
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
from coldstart.tasks.result import StageResult
from coldstart.tasks.workspace import (
    Workspace,
    atomic_write_bytes,
    atomic_write_text,
    unescape_formula,
    write_csv,
)

log = logging.getLogger(__name__)


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


# --- validating it --------------------------------------------------------------------------------

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
        rows, id_cols = label_studio_rows(source, raw)
        guessed = False
    else:
        rows, id_cols, encoding = csv_rows(source, raw)
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
        self.images, self.regions = ImageIndex(ws), RegionIndex(ws)
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
        return [(w, r, why) for w, r, why in done if why], listed

    def outcome(self, where: str, row: dict):
        """(what is wrong with an answered row: a message; ("ok", image_id, label); ("region",
        image_id, label, region_id, region); or None for a repeat of an answer taken, a problem
        with its Label Studio task as a whole or None)."""
        images, canonical, folded = self.images, self.canonical, self.folded
        if self.is_json and "points" in row:  # a Label Studio polygon
            problem = polygon_problem(row, self.id_cols, images, self.regions, canonical, folded)
        elif not self.is_json and row.get(REGION_COLUMN, "").strip():
            problem = region_row_problem(row, self.id_cols, images, self.regions, canonical, folded)
        else:
            problem = row_problem(row, self.id_cols, images, canonical, folded, self.seen,
                                   region_column=not self.is_json and REGION_COLUMN in row)
        if isinstance(problem, tuple) and problem[0] == "region" and problem[3] in self.seen_regions:
            return region_repeat(where, row, problem, self.seen_regions, self.accepted, self.is_json)
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
        if err is None and raw is not None:  # raw is None only with an error
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
        rows = _webhook_rows(ws, path, rel, digest, ann, task_id, data, classes, result, on_error=on_error)
        if rows is None:
            return
        events = [event("retract")] + [
            LabelEvent(image_id=i, label=lab, annotator=who, source_file=source, source_sha256=digest, source_row=task_id,
                       imported_at=now, round=round_no, region_id=region[0] if region else "",
                       region=region[1] if region else None) for _, i, lab, who, *region in rows]
    append_events(ws, events)
    imported_sources.add(digest)
    _move_aside(path, ws.imported, digest)
    result.files_accepted.append(rel)
    result.events_added += sum(1 for e in events if not e.kind)


def _webhook_rows(ws: Workspace, path: Path, rel: str, digest: str, ann: dict, task_id: int, data: dict,
                  classes: list[str], result: IntakeResult, *, on_error: str) -> list[tuple] | None:
    """The answers of one spooled annotation, validated as an export holding its task; None when
    it was refused (moved aside with its reasons). With ``on_error="keep_good_rows"`` the bad
    answers are counted and said in ``result.problems``, and the good ones kept."""
    bad = RowSpool() if on_error == "keep_good_rows" else None
    export = json.dumps([{"id": task_id, "data": data, "annotations": [ann]}], ensure_ascii=False).encode()
    try:
        rows, _ = validate_file(Path(rel), export, ws, classes, bad_rows=bad)
        reasons = [why for _, why in bad] if bad else []
    except LabelFileError as e:
        _reject(ws, path, rel, digest, e, result)
        return None
    finally:
        if bad is not None:
            bad.close()
    fix = f"correct annotation {ann.get('id')} in Label Studio: its update is taken in again"
    if reasons and not rows:  # nothing good in it: refused whole, as a file would be
        _reject(ws, path, rel, digest, LabelFileError(rel, [*reasons[:MAX_LISTED], fix]), result)
        return None
    if reasons:
        result.rows_rejected += len(reasons)
        result.problems.append(f"{rel}: {len(reasons)} answer(s) of Label Studio annotation {ann.get('id')} not "
                               f"merged: {'; '.join(reasons[:5])}; {fix}")
    return rows


def _reject(ws: Workspace, path: Path, rel: str, digest: str, err: LabelFileError, result: IntakeResult) -> None:
    moved = _move_aside(path, ws.rejected, digest)
    atomic_write_text(moved.with_name(moved.name + ".errors.txt"), str(err) + "\n\nFix the rows above and drop "
                      "the whole file into data/inbox/ again; nothing from it was merged.\n")
    log.info("%s", err)  # the caller reports result.problems (the round's summary, `stage`, the webhook's answer)
    result.files_rejected.append(rel)
    result.problems.append(str(err))
