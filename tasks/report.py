"""report: what a round did, for a person to see rather than grep: one HTML page per round.

``data/reports/round-NNN.html`` (the stage's one output folder, versioned with the round and
logged to its MLflow run) shows the counts, the audited accuracy of the auto labels (overall, per
label, and across rounds against the human labels spent), per label the most and least confident
images, the review batch with the model's suggestions, the human labels the model disputes and
the located defects, the held-out confusion matrix, calibration, and what the labels cost and
saved.

The file is self-contained: thumbnails are small JPEG data URIs, charts are inline SVG and HTML
tables whose text is text (class names in any script render with the reader's own fonts; no
glyphs are rasterised), there is no script, and a Content-Security-Policy forbids any network
request, so it opens the same from disk and in MLflow's artifact view. Thumbnails are capped in
number and bytes, and the tables in rows, so a million-image workspace still gives a few MB.

The page is a function of the workspace's files and the round record (``round.json`` shape):
written by the round from its in-memory record, it is byte for byte what ``coldstart report``
regenerates later from the saved one (no clock, no timings in it).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import shlex
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from coldstart.tasks.commands import command
from coldstart.tasks.errors import WorkspaceError
from coldstart.tasks.labellog import describe_answers
from coldstart.tasks.result import StageResult
from coldstart.tasks.workspace import Workspace, atomic_write_text

log = logging.getLogger(__name__)

REPORTS_DIR = ("data", "reports")  # the report stage's one output (dvc.yaml: outs data/reports, persist)
THUMB_PX = 96  # long side of a thumbnail
DEFECT_PX = 192  # long side of a defect image with its box (and mask) drawn on it
JPEG_QUALITY = 70
MAX_THUMBS = 600  # thumbnails in one report, all sections together
MAX_THUMB_BYTES = 2_000_000  # their data URIs, in bytes: with the capped text, the file stays under ~3 MB
STRIP = 6  # per label: the most and the least confident auto labels shown (fewer with many labels)
MAX_LABEL_SECTIONS = 150  # labels with a section of their own (the most frequent, when there are more)
MAX_LABEL_ROWS = 400  # labels in the accuracy table (the audited and most frequent, when there are more)
PER_LABEL_REVIEW = 12  # review items shown with thumbnails in a label's section
PER_LABEL_FLAGS = 8
PER_LABEL_DEFECTS = 4
MAX_REVIEW_ROWS = 300  # the review batch's table (text)
MAX_QUARANTINE_ROWS = 50
MAX_CONFUSION = 40  # labels beyond this: the most confused pairs instead of the matrix
SECONDS_PER_LABEL = 30.0  # params report.seconds_per_label: a human label's time where Label Studio gave none
TARGET_ACCURACY = 0.95  # params report.target_accuracy: what the projection of human labels aims at
SECTIONS = {"counts": "Counts", "accuracy": "Accuracy of the auto labels", "learning-curve": "Learning curve",
            "review": "Review batch", "labels": "Per label", "confusion": "Confusion matrix (held out)",
            "calibration": "Calibration", "economics": "Label economics"}


@dataclass
class ReportResult(StageResult):
    path: str = ""  # relative to the workspace: data/reports/round-NNN.html ("" when none was written)
    bytes: int = 0
    thumbnails: int = 0  # embedded
    thumbnails_left_out: int = 0  # over the caps (count or bytes) or unreadable
    error: str = ""  # why no report was written (the round goes on: the report is a view of it)

    def metrics(self) -> dict[str, float | None]:
        return {"report_bytes": float(self.bytes) if self.path else None}


def report_path(ws: Workspace, round_no: int) -> Path:
    return ws.root.joinpath(*REPORTS_DIR) / f"round-{round_no:03d}.html"


def report_settings(params) -> tuple[float, float]:
    """(seconds per human label, target accuracy): params ``report.*`` when the section exists."""
    section = getattr(params, "report", None)
    spl = getattr(section, "seconds_per_label", None) if section is not None else None
    target = getattr(section, "target_accuracy", None) if section is not None else None
    return (float(spl) if spl is not None else SECONDS_PER_LABEL,
            float(target) if target is not None else TARGET_ACCURACY)


# --- reading the workspace ------------------------------------------------------------------------


def _git_files(ws: Workspace, specs: list[str]) -> dict[str, bytes]:
    """``rev:path`` -> the blob's bytes, for those that exist (one ``git cat-file --batch``)."""
    if not specs:
        return {}
    try:
        out = subprocess.run(["git", "cat-file", "--batch"], cwd=ws.root, input="\n".join(specs).encode() + b"\n",
                             capture_output=True, check=True).stdout
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {}
    found, pos = {}, 0
    for spec in specs:
        end = out.index(b"\n", pos)
        header = out[pos:end].split()
        pos = end + 1
        if len(header) == 3 and header[1] == b"blob":
            size = int(header[2])
            found[spec] = out[pos:pos + size]
            pos += size + 1
    return found


def _json(data: bytes | None) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


def _pruned(parts, round_no: int) -> bool:
    """Whether a PartTable no longer holds its view as of ``round_no`` (a later base replaced
    those files): they are in DVC, at the round's tag."""
    return bool(parts.files()) and not parts.files(round_no + 1)


class AtTag:
    """DVC-tracked files as they were at a round's tag (from the workspace's DVC cache)."""

    def __init__(self, ws: Workspace, tag: str):
        self.ws, self.tag, self._fs = ws, tag, None

    @property
    def fs(self):
        if self._fs is None:
            from dvc.api import DVCFileSystem

            self._fs = DVCFileSystem(str(self.ws.root), rev=self.tag)
        return self._fs

    def text(self, rel: str) -> str | None:
        try:
            return self.fs.read_text(rel, encoding="utf-8")
        except Exception as e:  # not in the cache, or the tag predates the file
            log.info("report: %s at %s not available (%s)", rel, self.tag, e)
            return None

    def folder(self, rel: str, dest: Path) -> Path | None:
        try:
            self.fs.get(rel, str(dest), recursive=True)
            return dest
        except Exception as e:
            log.info("report: %s at %s not available (%s)", rel, self.tag, e)
            return None


def _csv_rows(text: str | None) -> list[dict]:
    import csv

    return list(csv.DictReader(io.StringIO(text))) if text else []


@dataclass
class Table:
    """The resolved table's columns the report needs, as arrays (vectorised: any size)."""

    image_id: Any  # pyarrow string arrays
    path: Any
    location: Any
    label: np.ndarray  # (N,) index into classes (-1: not a current label)
    confidence: np.ndarray  # (N,) float
    human: np.ndarray  # (N,) bool
    located: np.ndarray  # (N,) bool: a location (the winning tile) is recorded

    def rows(self, idx) -> list[dict]:
        import pyarrow as pa

        take = pa.array(np.asarray(idx, dtype=np.int64))
        ids, paths, locs = (c.take(take).to_pylist() for c in (self.image_id, self.path, self.location))
        return [{"image_id": i, "path": p, "location": loc or "", "label": int(self.label[k]),
                 "confidence": float(self.confidence[k]), "human": bool(self.human[k])}
                for i, p, loc, k in zip(ids, paths, locs, idx)]

    def find(self, image_ids: list[str]) -> dict[str, int]:
        """image id -> row, for the ids present."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if not image_ids:
            return {}
        at = pc.index_in(self.image_id, value_set=pa.array(image_ids, pa.string())).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(~np.isnan(at.astype(float)))
        return {image_ids[int(at[r])]: int(r) for r in rows}


def read_table(ws: Workspace, round_no: int, classes: list[str], folder: Path | None = None
               ) -> tuple[Table, list[str]]:
    """The resolved table as round ``round_no`` left it (``folder``: its parts from elsewhere)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from coldstart.tasks.parts import PartTable
    from coldstart.tasks.relabel import CLASSES_KEY, resolved_parts

    parts = resolved_parts(ws) if folder is None else PartTable(folder, "image_id", resolved_parts(ws).schema)
    files = parts.files(round_no + 1)
    if not files:
        empty = pa.array([], pa.string())
        return Table(empty, empty, empty, np.zeros(0, int), np.zeros(0), np.zeros(0, bool), np.zeros(0, bool)), classes
    meta = parts.metadata(round_no + 1)
    if CLASSES_KEY.encode() in meta:
        classes = json.loads(meta[CLASSES_KEY.encode()])
    t = parts.read(columns=["path", "label", "confidence", "source", "location"], before=round_no + 1)

    def text(name):
        col = t[name]
        return pc.cast(col, pa.string()).combine_chunks() if len(col.chunks) else pa.array([], pa.string())

    label = pc.index_in(text("label"), value_set=pa.array(classes, pa.string())).to_numpy(zero_copy_only=False)
    label = np.where(np.isnan(label.astype(float)), -1, label).astype(np.int64) if len(label) else np.zeros(0, int)
    human = pc.equal(text("source"), "human").to_numpy(zero_copy_only=False).astype(bool)
    conf = t["confidence"].to_numpy().astype(np.float64)
    location = pc.fill_null(text("location"), "")
    located = pc.not_equal(location, "").to_numpy(zero_copy_only=False).astype(bool)
    return Table(text("image_id"), text("path"), location, label, conf, human, located), classes


@dataclass
class Audit:
    """One audit estimate as the round record holds it (whatever estimator made it)."""

    round: int | None  # whose auto labels
    accuracy: float | None
    interval: tuple[float, float] | None
    n: int
    by_label: dict[str, list[int]]
    text: str = ""  # the estimate in the record's own words (its ``describe()``), when it has them
    bands: list[list[float]] = field(default_factory=list)  # AuditEstimate.bands, when it was weighted

    @classmethod
    def of(cls, data: dict | None) -> "Audit | None":
        from coldstart.tasks.audit import AuditEstimate

        if not data:
            return None
        est = AuditEstimate.from_dict(data)
        n = int(getattr(est, "n", 0) or 0)
        acc = getattr(est, "accuracy", None)
        iv = getattr(est, "interval", None)
        iv = (float(iv[0]), float(iv[1])) if iv is not None else None
        text = est.describe() if n and callable(getattr(est, "describe", None)) else ""
        return cls(getattr(est, "round", None), None if acc is None else float(acc), iv, n,
                   {k: [int(v[0]), int(v[1])] for k, v in (getattr(est, "by_label", None) or {}).items()},
                   str(text), [list(b) for b in getattr(est, "bands", None) or []])

    def label_interval(self, correct: int, n: int) -> tuple[float, float]:
        """Per label, unweighted: Clopper-Pearson on the audited counts."""
        from coldstart.tasks.audit import clopper_pearson_interval

        return clopper_pearson_interval(correct, n)


@dataclass
class CurvePoint:
    audited_round: int
    human_labels: int  # human labels when that round's auto labels were made
    accuracy: float
    low: float
    high: float
    n: int


@dataclass
class ReportData:
    round: int
    workspace: str
    classes: list[str]
    table: Table
    threshold: float | None
    model: str  # what made the auto labels
    record: dict  # round.json shape (partial for a stage run alone)
    quarantine: list[dict]
    humans: dict[str, str]  # image id -> current human label, as of this round
    audit: Audit | None
    curve: list[CurvePoint]
    batch: list[dict]
    flags: list[dict]
    train: dict
    reliability: list[tuple[float, bool]]  # audit items: (confidence given, correct)
    defects: dict[str, dict]  # image id -> {"rle": ..., "bbox": ...}: SAM masks of located defects
    defect_labels: list[str]
    lead_times: dict[str, float]  # Label Studio annotation id -> seconds, for the answers that count
    lead_labels: int  # human labels those annotations gave
    seconds_per_label: float
    target_accuracy: float
    notes: list[str] = field(default_factory=list)  # what could not be read, said on the page


def _records(ws: Workspace, rounds: list[int]) -> dict[int, dict]:
    blobs = _git_files(ws, [f"round-{r:03d}:data/metrics/round.json" for r in rounds])
    out = {}
    for r in rounds:
        data = _json(blobs.get(f"round-{r:03d}:data/metrics/round.json"))
        if isinstance(data, dict):
            out[r] = data
    return out


def learning_curve(records: dict[int, dict]) -> list[CurvePoint]:
    """One point per audited round: the accuracy of its auto labels (the newest estimate of it,
    with the most answers) against the human labels it had then."""
    points: dict[int, CurvePoint] = {}
    for r in sorted(records):
        au = Audit.of(records[r].get("audit"))
        if au is None or not au.n or au.accuracy is None or au.interval is None:
            continue
        audited = au.round if au.round is not None else r - 1
        made = records.get(audited) or {}
        humans = (made.get("intake") or {}).get("human_labels")
        if humans is None:
            humans = (made.get("train") or {}).get("n_labels", 0)
        points[audited] = CurvePoint(audited, int(humans or 0), au.accuracy, *au.interval, au.n)
    return [points[k] for k in sorted(points)]


def _lead_times(ws: Workspace) -> tuple[dict[str, float], dict[str, float]]:
    """Label Studio's ``lead_time`` (seconds) from the answer JSON files taken in (spooled
    webhook annotations and exports under data/labels/imported/): by spool key, by annotation id."""
    by_key: dict[str, float] = {}
    by_id: dict[str, float] = {}

    def take(ann: Any, key: str | None = None) -> None:
        if not isinstance(ann, dict):
            return
        lt = ann.get("lead_time")
        if isinstance(lt, (int, float)) and not isinstance(lt, bool) and math.isfinite(lt) and lt >= 0:
            aid = ann.get("id", ann.get("annotation_id"))
            if aid is not None:
                by_id[str(aid)] = max(float(lt), by_id.get(str(aid), 0.0))
            if key:
                by_key[key] = float(lt)

    if not ws.imported.is_dir():
        return by_key, by_id
    for p in sorted(ws.imported.rglob("*.json")):
        try:
            if not p.is_file() or p.is_symlink() or p.stat().st_size > 200 * 1024 * 1024:
                continue
            data = json.loads(p.read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("annotation"), dict):  # a spooled webhook annotation
            take(data["annotation"], data.get("key") if isinstance(data.get("key"), str) else None)
        elif isinstance(data, list):  # an export: JSON (tasks with annotations) or JSON_MIN (one row per answer)
            for item in data:
                if isinstance(item, dict):
                    for ann in item.get("annotations") or []:
                        take(ann)
                    if "annotation_id" in item:
                        take(item)
    return by_key, by_id


def answer_times(ws: Workspace, answers: dict[str, Any]) -> tuple[dict[str, float], int]:
    """For the answers that count (image id -> its LabelEvent) that came through Label Studio
    (source ``label-studio:annotation/<id>``): annotation id -> its ``lead_time`` (seconds; one
    annotation may answer several images and counts once), and how many answers those timed."""
    by_key, by_id = _lead_times(ws)
    times, timed = {}, 0
    for e in answers.values():
        if e.source_file.startswith("label-studio:annotation/"):
            aid = e.source_file.split("/", 1)[1]
            lt = by_key.get(e.source_sha256, by_id.get(aid))
            if lt is not None:
                times[aid] = lt
                timed += 1
    return times, timed


def gather(ws: Workspace, round_no: int, record: dict | None = None, params=None) -> ReportData:
    """Everything the page shows of round ``round_no``. ``record``: the round's record
    (``RoundRecord.to_dict()``, the shape of round.json); None reads the saved one (the round's
    tag, or data/metrics/round.json), else builds a partial one from the files (a stage run alone,
    before its round is recorded). A round older than the newest tag reads the files that
    changed since from that tag (git, or DVC's cache) and the label log up to that round."""
    from coldstart.tasks.audit import audit as audit_stage
    from coldstart.tasks.labellog import current_answers, read_events
    from coldstart.tasks.ontology import negative_labels
    from coldstart.tasks.regions import DEFECTS_DIR, regions_dir, regions_of, regions_parts
    from coldstart.tasks.relabel import resolved_parts
    from coldstart.tasks.workspace import read_csv

    params = params or ws.params()
    tags = ws.round_tags()
    latest = tags[-1] if tags else 0
    if round_no < 1 or (round_no <= latest and round_no not in tags) or round_no > latest + 1:
        listed = ", ".join(map(str, tags)) or "none yet"
        raise WorkspaceError(f"there is no round {round_no} to report on (rounds: {listed})")
    past = round_no < latest
    tag = f"round-{round_no:03d}"
    notes: list[str] = []
    earlier = [r for r in tags if r < round_no]
    records = _records(ws, earlier + ([round_no] if round_no in tags and record is None else []))
    if record is None:
        saved = _json(ws.metrics_dir.joinpath("round.json").read_bytes()) if \
            ws.metrics_dir.joinpath("round.json").is_file() and not past else None
        if isinstance(saved, dict) and saved.get("round") == round_no:
            record = saved
        elif round_no in records:
            record = records[round_no]
    if record is None:  # `coldstart stage report` before the round is recorded: what the files say
        est = audit_stage(ws, round_no)
        record = {"round": round_no, "audit": est.to_dict() if est is not None else None}
        notes.append("This round is not recorded yet (a stage run alone): counts come from the files, and the "
                     "confusion matrix appears once a round records it.")
    records[round_no] = record
    spl, target = report_settings(params)

    at_tag = AtTag(ws, tag) if past else None
    with tempfile.TemporaryDirectory(prefix="coldstart-report-") as tmp:
        table, classes = read_table(ws, round_no, params.ontology.class_names)
        if past and _pruned(resolved_parts(ws), round_no):  # this round's parts: from DVC
            got = at_tag.folder("data/labels/resolved", Path(tmp) / "resolved")
            if got is None:
                raise WorkspaceError(
                    f"round {round_no}'s labels are no longer in this workspace (older parts are pruned) nor in its "
                    f"DVC cache; get them with `{command('dvc')} get {shlex.quote(str(ws.root))} data/labels/resolved --rev {tag} -o DIR`")
            table, classes = read_table(ws, round_no, params.ontology.class_names, got)
    train = record.get("train") or {}
    if not train:
        blob = _git_files(ws, [f"{tag}:data/metrics/train.json"]).get(f"{tag}:data/metrics/train.json") if past \
            else (ws.metrics_dir / "train.json").read_bytes() if (ws.metrics_dir / "train.json").is_file() else None
        train = _json(blob) or {}
    relabel = record.get("relabel") or {}
    threshold = relabel.get("threshold", train.get("threshold"))
    model = relabel.get("source") or train.get("model") or "?"

    if past:
        quarantine = _csv_rows(at_tag.text("data/store/quarantine.csv"))
        flags = _csv_rows(at_tag.text("data/labels/flags.csv"))
    else:
        quarantine, flags = read_csv(ws.quarantine), read_csv(ws.flags)

    events = [e for e in read_events(ws) if e.round <= round_no]
    answers = {k[0]: e for k, e in current_answers(events).items() if not k[1]}
    humans = {i: e.label for i, e in answers.items()}
    lead_times, lead_labels = answer_times(ws, answers)

    reliability = []
    for r in range(1, round_no):
        for b in read_csv(ws.review / f"round-{r:03d}.batch.csv"):
            if b.get("purpose") == "audit" and b.get("image_id") in humans:
                try:
                    reliability.append((float(b["confidence"]), humans[b["image_id"]] == b["predicted_label"]))
                except (KeyError, ValueError):
                    continue

    negatives = negative_labels(params.ontology)
    defect_labels = [c for c in classes if c not in negatives] if params.views.tiles else []
    defects: dict[str, dict] = {}
    folder = regions_dir(ws) / DEFECTS_DIR
    if defect_labels and folder.is_dir():
        try:
            if past and _pruned(regions_parts(folder), round_no):
                with tempfile.TemporaryDirectory(prefix="coldstart-report-") as tmp:
                    got = at_tag.folder(folder.relative_to(ws.root).as_posix(), Path(tmp) / DEFECTS_DIR)
                    regions = regions_of(regions_parts(got).read()) if got else []
            else:
                regions = regions_of(regions_parts(folder).read(before=round_no + 1))
            defects = {r.image_id: {"rle": r.rle, "bbox": r.bbox, "label": r.label} for r in regions}
        except Exception as e:  # a view: an unreadable mask table costs the masks, not the page
            notes.append(f"The defect masks ({folder.relative_to(ws.root)}) could not be read: {e}")

    return ReportData(
        round=round_no, workspace=ws.root.name, classes=classes, table=table, threshold=threshold, model=model,
        record=record, quarantine=quarantine, humans=humans, audit=Audit.of(record.get("audit")),
        curve=learning_curve(records), batch=read_csv(ws.review / f"round-{round_no:03d}.batch.csv"), flags=flags,
        train=train, reliability=reliability, defects=defects, defect_labels=defect_labels,
        lead_times=lead_times, lead_labels=lead_labels, seconds_per_label=spl, target_accuracy=target, notes=notes)


# --- thumbnails -----------------------------------------------------------------------------------


class Thumbs:
    """Small JPEG data URIs of the workspace's images, within a budget of count and bytes."""

    def __init__(self, images: Path, scan=None, max_count: int = MAX_THUMBS, max_bytes: int = MAX_THUMB_BYTES):
        self.images, self.scan = Path(images), scan
        self.max_count, self.max_bytes = max_count, max_bytes
        self.count = self.bytes = self.left_out = 0
        self._cache: dict[tuple, tuple[str, int, int] | None] = {}

    def get(self, path: str, size: int = THUMB_PX, box: str = "", rle: dict | None = None
            ) -> tuple[str, int, int] | None:
        """(data URI, width, height) of ``path`` (under the images folder), or None when the
        budget is spent or the image cannot be read. ``box`` "x0 y0 x1 y1" and ``rle`` (a COCO
        mask) are drawn on it, in original pixels."""
        if self.count >= self.max_count or self.bytes >= self.max_bytes:
            self.left_out += 1
            return None
        key = (path, size, box, rle["counts"] if rle else "")
        if key not in self._cache:
            self._cache[key] = self._encode(path, size, box, rle)
        got = self._cache[key]
        if got is None or self.bytes + len(got[0]) > self.max_bytes:
            self.left_out += 1
            return None
        self.count += 1
        self.bytes += len(got[0])
        return got

    def _encode(self, path: str, size: int, box: str, rle: dict | None) -> tuple[str, int, int] | None:
        from PIL import Image, ImageDraw

        from coldstart.tasks.scan import load_rgb

        file = self.images / path
        try:
            with load_rgb(file, self.scan, draft=None if (box or rle) else size) as img:
                img = img.convert("RGB")
                full = img.size
                if rle is not None:
                    from coldstart.tasks.regions import decode_mask

                    mask = decode_mask(rle).astype(bool)
                    if mask.shape == (full[1], full[0]):
                        tint = Image.new("RGB", full, (255, 0, 64))
                        alpha = Image.fromarray((mask * 110).astype(np.uint8))
                        img = Image.composite(tint, img, alpha)
                if box:
                    x0, y0, x1, y1 = (float(v) for v in box.split()[:4])
                    width = max(2, round(max(full) / size * 2))
                    ImageDraw.Draw(img).rectangle([x0, y0, x1, y1], outline=(255, 215, 0), width=width)
                img.thumbnail((size, size))
                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
                return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), *img.size
        except Exception as e:  # a deleted, moved or undecodable image: no preview, the page goes on
            log.info("report: no thumbnail of %s (%s)", path, e)
            return None


# --- rendering ------------------------------------------------------------------------------------


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def interval_text(iv: tuple[float, float] | None) -> str:
    return "–" if iv is None else f"{pct(iv[0])} – {pct(iv[1])}"


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI","Noto Sans","Noto Sans CJK SC","PingFang SC",
"Microsoft YaHei",sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1240px;margin:0 auto;padding:16px 24px 48px}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c9d0dc}nav a{color:#c9d0dc;margin-right:12px;font-size:13px}
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:12px 18px;margin:16px 0}
h2{font-size:17px;margin:4px 0 10px}h3{font-size:15px;margin:14px 0 6px}h4{font-size:13px;margin:10px 0 4px;color:#4a5468}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #dde1e8;padding:3px 7px;text-align:left;
vertical-align:top}th{background:#f0f2f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
.big{display:flex;flex-wrap:wrap;gap:10px}.big div{border:1px solid #dde1e8;border-radius:6px;padding:8px 12px;
min-width:130px}.big b{display:block;font-size:22px}.muted{color:#667085}.note{background:#fff8e1;
border-left:3px solid #f0b400;padding:6px 10px}
.strip{display:flex;flex-wrap:wrap;gap:6px;margin:2px 0 6px}figure{margin:0;width:104px;font-size:11px}
figure.wide{width:200px}figure img{display:block;border:1px solid #dde1e8;background:#eee;max-width:100%}
figcaption{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.nothumb{display:flex;align-items:center;justify-content:center;width:96px;height:64px;background:#eef0f4;
color:#667085;font-size:10px;text-align:center}
.label{border-top:1px solid #dde1e8;padding-top:6px}svg text{font-family:inherit;font-size:11px;fill:#1d2330}
.cm td{min-width:22px;text-align:center}.cm th.r{writing-mode:vertical-rl;transform:rotate(180deg)}
"""


class Page:
    def __init__(self, data: ReportData, thumbs: Thumbs):
        self.d, self.thumbs = data, thumbs

    # small pieces

    def figure(self, path: str, caption: str, title: str = "", size: int = THUMB_PX, box: str = "",
               rle: dict | None = None) -> str:
        got = self.thumbs.get(path, size, box, rle)
        if got is None:
            img = f'<div class="nothumb">{esc("no preview")}</div>'
        else:
            uri, w, h = got
            grow = size / max(w, h) if max(w, h) < size // 2 else 1.0  # tiny images: shown larger, same bytes
            img = f'<img src="{uri}" width="{round(w * grow)}" height="{round(h * grow)}" alt="{esc(path)}">'
        cls = ' class="wide"' if size > THUMB_PX else ""
        return (f'<figure{cls} title="{esc(title or path)}">{img}<figcaption>{caption}</figcaption>'
                f'</figure>')

    @staticmethod
    def table(head: list[str] | None, rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
        """``rows``: cells already HTML (escaped by the caller); ``head``: plain text."""
        th = "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead>" if head else ""
        body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                         for i, c in enumerate(r)) + "</tr>" for r in rows)
        return f"<table>{th}<tbody>{body}</tbody></table>"

    def label_name(self, k: int) -> str:
        return self.d.classes[k] if 0 <= k < len(self.d.classes) else "?"

    # sections

    def counts(self) -> str:
        d, t = self.d, self.d.table
        auto = ~t.human
        below = int(np.count_nonzero(auto & (t.confidence < d.threshold))) if d.threshold is not None else None
        intake = d.record.get("intake") or {}
        tiles = [("images labeled", len(t.label)), ("quarantined", len(d.quarantine)),
                 ("human labels", int(t.human.sum())), (f"auto labels ({d.model})", int(auto.sum())),
                 ("below threshold", "–" if below is None else below)]
        html_ = '<div class="big">' + "".join(f"<div><b>{esc(v)}</b>{esc(k)}</div>" for k, v in tiles) + "</div>"
        extra = []
        if d.threshold is not None:
            extra.append(f"Auto labels below the auto-accept confidence {d.threshold:.3f}: {below} "
                         f"({pct(below / max(1, int(auto.sum())))} of the auto labels).")
        if intake:
            extra.append(f"This round took in {describe_answers(intake.get('round_answers') or {})}; "
                         f"{int(intake.get('human_labels', 0))} images have a human label.")
        churn = (d.record.get("relabel") or {}).get("churn")
        if churn is not None:
            extra.append(f"Label churn since the previous round: {pct(churn)}.")
        html_ += "".join(f"<p>{esc(x)}</p>" for x in extra)
        if d.quarantine:
            rows = [[esc(q.get("path", "")), esc(q.get("reason", "")), esc(q.get("round", ""))]
                    for q in d.quarantine[:MAX_QUARANTINE_ROWS]]
            html_ += "<h3>Quarantined files and why</h3>" + self.table(["file", "reason", "round"], rows)
            if len(d.quarantine) > MAX_QUARANTINE_ROWS:
                html_ += (f'<p class="muted">… and {len(d.quarantine) - MAX_QUARANTINE_ROWS} more: '
                          f"data/store/quarantine.csv lists them all.</p>")
        return html_

    def accuracy(self) -> str:
        d, au = self.d, self.d.audit
        if au is None or not au.n or au.accuracy is None:
            return ("<p>No audit answers yet. Each review batch holds a few images drawn at random (purpose "
                    "<code>audit</code>); once they are answered, the next round estimates here how many auto labels "
                    "are right.</p>")
        whose = "this round's" if au.round == d.round else f"round {au.round}'s" if au.round is not None else "the"
        out = (f'<div class="big"><div><b>{pct(au.accuracy)}</b>estimated accuracy</div>'
               f"<div><b>{interval_text(au.interval)}</b>95% interval</div><div><b>{au.n}</b>audited (n)</div></div>"
               f"<p>Of {esc(whose)} auto labels, checked against people's answers on the random audit items (drawn "
               f"before anything else was selected, so unbiased)" + (f": {esc(au.text)}" if au.text else "") + ".</p>")
        if au.bands:
            out += ("<h3>Weighted to today's auto labels</h3><p>The audit items were drawn from earlier, harder pools "
                    "(the review takes the uncertain images out), so their raw share right understates today's auto "
                    "labels. Per confidence band, the errors people found on the audit items are compared with the "
                    "errors the model expected there (the sum of 1 - confidence), and that ratio is applied to the "
                    "errors the model expects among today's auto labels in the band. The interval takes exact "
                    "Poisson limits for each ratio and the chance in which auto labels are wrong.</p>"
                    + self.table(["confidence band", "auto labels today", "errors the model expects there",
                                  "audit items", "errors the model expected there", "errors people found"],
                                 [[f"{lo:.3g}–{hi:.3g}", str(int(n)), f"{m:.1f}", str(int(a)), f"{e:.1f}", str(int(k))]
                                  for lo, hi, n, m, a, e, k in au.bands], {1, 2, 3, 4, 5}))
        counts = np.bincount(d.table.label[(~d.table.human) & (d.table.label >= 0)], minlength=len(d.classes))
        rows = []
        # Every label, up to MAX_LABEL_ROWS: then those audited and the most frequent.
        listed = list(range(len(d.classes)))
        if len(listed) > MAX_LABEL_ROWS:
            listed = sorted(sorted(listed, key=lambda k: (-au.by_label.get(d.classes[k], [0, 0])[1], -counts[k]))
                            [:MAX_LABEL_ROWS])
        for k in listed:
            name = d.classes[k]
            c, n = au.by_label.get(name, [0, 0])
            rows.append([esc(name), str(int(counts[k])), str(n), str(c), pct(c / n) if n else "–",
                         interval_text(au.label_interval(c, n)) if n else "–"])
        for name in sorted(set(au.by_label) - set(d.classes)):
            c, n = au.by_label[name]
            rows.append([esc(name) + ' <span class="muted">(no longer a label)</span>', "0", str(n), str(c),
                         pct(c / n) if n else "–", interval_text(au.label_interval(c, n)) if n else "–"])
        if len(listed) < len(d.classes):
            rows.append([f'<span class="muted">… and {len(d.classes) - len(listed)} more labels</span>', "", "", "",
                         "", ""])
        out += ("<h3>Per label</h3><p class=\"muted\">By the label the model gave; intervals: Clopper-Pearson "
                "95%. Few audited items give wide intervals.</p>"
                + self.table(["label", "auto labels now", "audited n", "correct", "estimate", "95% interval"], rows,
                             {1, 2, 3, 4}))
        return out

    def curve_svg(self, fit: tuple[float, float] | None) -> str:
        pts, target = self.d.curve, self.d.target_accuracy
        W, H, L, R, T, B = 640, 260, 52, 16, 14, 40
        xmax = max([p.human_labels for p in pts] + [1])
        projected = projection(pts, target)
        if projected is not None and projected[0] is not None and projected[0] <= 4 * xmax:
            xmax = max(xmax, projected[0])
        xmax = xmax * 1.05

        def X(v):
            return L + (W - L - R) * v / xmax

        def Y(v):
            return T + (H - T - B) * (1 - v)

        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
                 f'role="img" aria-label="learning curve">']
        for v in (0, 0.25, 0.5, 0.75, 1.0):
            parts.append(f'<line x1="{L}" x2="{W - R}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#e3e6ec"/>'
                         f'<text x="{L - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{pct(v, 0)}</text>')
        for v in nice_ticks(xmax):
            parts.append(f'<line x1="{X(v):.1f}" x2="{X(v):.1f}" y1="{Y(0):.1f}" y2="{Y(0) + 4:.1f}" stroke="#667085"/>'
                         f'<text x="{X(v):.1f}" y="{H - B + 16}" text-anchor="middle">{v:,}</text>')
        parts.append(f'<text x="{(L + W - R) / 2:.0f}" y="{H - 6}" text-anchor="middle">human labels</text>')
        parts.append(f'<line x1="{L}" x2="{W - R}" y1="{Y(target):.1f}" y2="{Y(target):.1f}" stroke="#2f9e44" '
                     f'stroke-dasharray="5 4"/><text x="{W - R}" y="{Y(target) - 4:.1f}" text-anchor="end" '
                     f'style="fill:#2f9e44">target {pct(target, 0)}</text>')
        if fit is not None:
            a, b = fit
            xs = np.linspace(max(1.0, min(p.human_labels for p in pts if p.human_labels > 0)), xmax, 40)
            ys = 1 - np.exp(a + b * np.log(xs))
            line = " ".join(f"{X(x):.1f},{Y(min(1.0, max(0.0, y))):.1f}" for x, y in zip(xs, ys))
            parts.append(f'<polyline points="{line}" fill="none" stroke="#7c8db5" stroke-dasharray="2 3"/>')
        for p in pts:
            x = X(p.human_labels)
            parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{Y(p.high):.1f}" y2="{Y(p.low):.1f}" '
                         f'stroke="#3b5bdb" stroke-width="2"/><circle cx="{x:.1f}" cy="{Y(p.accuracy):.1f}" r="4" '
                         f'fill="#3b5bdb"><title>round {p.audited_round}: {pct(p.accuracy)} '
                         f'({interval_text((p.low, p.high))}, n={p.n}) at {p.human_labels} human labels</title>'
                         f'</circle>')
        parts.append("</svg>")
        return "".join(parts)

    def learning_curve(self) -> str:
        pts = self.d.curve
        if not pts:
            return ("<p>No audited round yet: each point is one round's auto labels, checked on its random audit "
                    "sample once answered, against the human labels it had.</p>")
        fit = fit_curve(pts)
        rows = [[str(p.audited_round), str(p.human_labels), pct(p.accuracy), interval_text((p.low, p.high)), str(p.n)]
                for p in pts]
        return (f"<p>Accuracy of each round's auto labels (its audit estimate and 95% interval) against the human "
                f"labels it was made with; dashed: a fit of the error as a power of the human labels.</p>"
                f"{self.curve_svg(fit)}"
                + self.table(["round audited", "human labels then", "estimate", "95% interval", "n"], rows,
                             {0, 1, 2, 4}))

    def review(self) -> str:
        d = self.d
        if not d.batch:
            return f"<p>No review batch for round {d.round} (data/review/round-{d.round:03d}.batch.csv).</p>"
        purposes: dict[str, int] = {}
        for b in d.batch:
            purposes[b.get("purpose", "")] = purposes.get(b.get("purpose", ""), 0) + 1
        listed = ", ".join(f"{n} {esc(k)}" for k, n in sorted(purposes.items()))
        out = (f"<p>{len(d.batch)} images to answer ({listed}): fill in the <code>label</code> column of "
               f"<code>data/review/round-{d.round:03d}.csv</code> and drop it into <code>data/inbox/</code> (or "
               f"answer them in Label Studio). The model's suggestion is what it would label each image; the "
               f"thumbnails are in each label's section below.</p>")
        rows = []
        for b in d.batch[:MAX_REVIEW_ROWS]:
            try:
                conf = pct(float(b.get("confidence", "")))
            except ValueError:
                conf = "–"
            rows.append([esc(b.get("image", "")), esc(b.get("purpose", "")), esc(b.get("predicted_label", "")),
                         conf, esc(b.get("note", ""))])
        more = (f'<p class="muted">… and {len(d.batch) - MAX_REVIEW_ROWS} more in the batch file.</p>'
                if len(d.batch) > MAX_REVIEW_ROWS else "")
        return (out + f"<details><summary>the {len(d.batch)} items</summary>"
                + self.table(["image", "purpose", "model's suggestion", "confidence", "note"], rows, {3})
                + more + "</details>")

    def labels(self) -> str:
        d, t = self.d, self.d.table
        L = len(d.classes)
        counts = np.bincount(t.label[t.label >= 0], minlength=L) if len(t.label) else np.zeros(L, int)
        shown = sorted(range(L), key=lambda k: -counts[k])[:MAX_LABEL_SECTIONS] if L > MAX_LABEL_SECTIONS \
            else list(range(L))
        shown_set = set(shown)
        k_strip = max(1, min(STRIP, (MAX_THUMBS // 3) // max(1, 2 * len(shown))))
        # The auto labels sorted by (label, confidence): each label's ends, without a pass per label.
        auto = np.flatnonzero((~t.human) & (t.label >= 0))
        order = auto[np.lexsort((t.confidence[auto], t.label[auto]))]
        starts = np.searchsorted(t.label[order], np.arange(L + 1))
        by_label: dict[int, dict[str, list]] = {k: {"review": [], "flags": [], "defects": []} for k in shown}
        where = t.find(sorted({f.get("image_id", "") for f in d.flags}))
        for b in d.batch:
            k = d.classes.index(b.get("predicted_label")) if b.get("predicted_label") in d.classes else -1
            if k in shown_set and len(by_label[k]["review"]) < PER_LABEL_REVIEW:
                by_label[k]["review"].append(b)
        for f in d.flags:
            k = d.classes.index(f.get("human_label")) if f.get("human_label") in d.classes else -1
            if k in shown_set and len(by_label[k]["flags"]) < PER_LABEL_FLAGS:
                by_label[k]["flags"].append(f)
        defect_set = {d.classes.index(c) for c in d.defect_labels if c in d.classes}
        # Thumbnails are given out in this order (the budget may run out): what to act on first.
        review_figs = {k: [self.review_figure(b) for b in v["review"]] for k, v in by_label.items()}
        flag_figs = {k: [self.flag_figure(f, where) for f in v["flags"]] for k, v in by_label.items()}
        defect_figs = {k: self.defect_figures(k, order[starts[k]:starts[k + 1]]) if k in defect_set else []
                       for k in shown}
        strips = {}
        for k in shown:
            rows = order[starts[k]:starts[k + 1]]
            most = t.rows(rows[::-1][:k_strip])
            least = t.rows(rows[:k_strip]) if len(rows) > k_strip else []
            strips[k] = ([self.figure(r["path"], pct(r["confidence"]), f"{r['path']}: {pct(r['confidence'])}")
                          for r in most],
                         [self.figure(r["path"], pct(r["confidence"]), f"{r['path']}: {pct(r['confidence'])}")
                          for r in least])
        au = d.audit
        toc = " · ".join(f'<a href="#label-{k}">{esc(d.classes[k])}</a>' for k in shown)
        out = [f"<p>Per label: the auto labels the model is surest and least sure of, the review items it suggests "
               f"this label for, the human labels of this label it disputes (data/labels/flags.csv), and for defect "
               f"classes the located defect drawn on the image.</p><p>{toc}</p>"]
        if L > len(shown):
            out.append(f'<p class="note">{L} labels: the {len(shown)} most frequent have a section here; the '
                       f"accuracy table above lists every label.</p>")
        for k in shown:
            name = d.classes[k]
            human = int(np.count_nonzero(t.human & (t.label == k)))
            acc = ""
            if au is not None and name in au.by_label and au.by_label[name][1]:
                c, n = au.by_label[name]
                acc = f"; audited {pct(c / n)} ({interval_text(au.label_interval(c, n))}, n={n})"
            most, least = strips[k]
            block = [f'<div class="label" id="label-{k}" data-label="{esc(name)}"><h3>{esc(name)}</h3>'
                     f'<p class="muted">{int(counts[k])} images: {human} human, {int(counts[k]) - human} auto'
                     f"{esc(acc)}</p>"]
            block.append("<h4>most confident auto labels</h4>" + (f'<div class="strip">{"".join(most)}</div>'
                                                                   if most else '<p class="muted">none</p>'))
            if least:
                block.append(f'<h4>least confident auto labels</h4><div class="strip">{"".join(least)}</div>')
            if review_figs[k]:
                block.append(f'<h4>in the review batch, suggested as {esc(name)}</h4>'
                             f'<div class="strip">{"".join(review_figs[k])}</div>')
            if flag_figs[k]:
                block.append(f'<h4>human labels “{esc(name)}” the model disputes</h4>'
                             f'<div class="strip">{"".join(flag_figs[k])}</div>')
            if defect_figs[k]:
                block.append(f'<h4>located defects (box: the winning tile; red: the SAM mask, where there is one)'
                             f'</h4><div class="strip">{"".join(defect_figs[k])}</div>')
            block.append("</div>")
            out.append("".join(block))
        return "".join(out)

    def review_figure(self, b: dict) -> str:
        try:
            conf = pct(float(b.get("confidence", "")))
        except ValueError:
            conf = "–"
        caption = f"{esc(b.get('purpose', ''))} · {conf}"
        title = f"{b.get('image', '')}: suggested {b.get('predicted_label', '')} ({conf}), {b.get('purpose', '')}"
        if b.get("note"):
            title += f"; {b['note']}"
        return self.figure(b.get("image", ""), caption, title)

    def flag_figure(self, f: dict, where: dict[str, int]) -> str:
        row = where.get(f.get("image_id", ""))
        path = self.d.table.path[row].as_py() if row is not None else ""
        try:
            p = pct(float(f.get("probability", "")))
        except ValueError:
            p = "–"
        caption = f"model: {esc(f.get('suggested_label', ''))} {p}"
        title = (f"{path}: labeled {f.get('human_label', '')} by a person; the held-out model says "
                 f"{f.get('suggested_label', '')} ({p}); flagged in round {f.get('round', '')}")
        return self.figure(path, caption, title)

    def defect_figures(self, k: int, rows: np.ndarray) -> list[str]:
        """The label's most confident images with a location (masks first, where SAM gave one)."""
        t, d = self.d.table, self.d
        located = [int(r) for r in rows[::-1][t.located[rows[::-1]]][:50]]
        picked = sorted(located, key=lambda r: t.image_id[r].as_py() not in d.defects)[:PER_LABEL_DEFECTS]
        out = []
        for r in t.rows(picked):
            mask = d.defects.get(r["image_id"])
            out.append(self.figure(r["path"], f"{pct(r['confidence'])}{' · mask' if mask else ''}",
                                   f"{r['path']}: {pct(r['confidence'])}, tile {r['location']}", size=DEFECT_PX,
                                   box=r["location"], rle=mask["rle"] if mask else None))
        return out

    def confusion(self) -> str:
        d = self.d
        cm = d.train.get("confusion")
        if not cm:
            return ("<p>No held-out predictions yet: the confusion matrix appears once a probe or zero-shot head is "
                    "scored on human labels (rows: the human label, columns: the out-of-fold prediction).</p>")
        cm = np.asarray(cm, dtype=int)
        names = d.classes if len(d.classes) == len(cm) else [str(i) for i in range(len(cm))]
        total, right = int(cm.sum()), int(np.trace(cm))
        head = (f"<p>{total} human labels, each predicted by a model that did not see it (out-of-fold, the "
                f"{esc(d.train.get('model', ''))} head): {right} right ({pct(right / total if total else None)}). "
                f"Rows: the human label; columns: the prediction.</p>")
        if len(cm) > MAX_CONFUSION:
            off = [(int(cm[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j]]
            rows = [[esc(names[i]), esc(names[j]), str(c)] for c, i, j in sorted(off, reverse=True)[:40]]
            return head + "<h3>Most confused pairs</h3>" + self.table(["human label", "predicted", "count"], rows, {2})
        peak = max(1, int(cm.max()))
        th = "".join(f'<th class="r">{esc(n)}</th>' for n in names)
        body = []
        for i, n in enumerate(names):
            cells = []
            for j in range(len(names)):
                v = int(cm[i, j])
                a = 0.08 + 0.8 * v / peak if v else 0
                color = "59,91,219" if i == j else "224,49,49"
                fg = "#fff" if a > 0.5 else "#1d2330"
                style = f' style="background:rgba({color},{a:.2f});color:{fg}"' if v else ""
                cells.append(f"<td{style}>{v or ''}</td>")
            body.append(f"<tr><th>{esc(n)}</th>{''.join(cells)}</tr>")
        return head + f'<table class="cm"><thead><tr><th></th>{th}</tr></thead><tbody>{"".join(body)}</tbody></table>'

    def calibration(self) -> str:
        d, tr = self.d, self.d.train
        temp, before, after = tr.get("temperature"), tr.get("ece_before"), tr.get("ece_after")
        out = ('<div class="big">'
               f"<div><b>{pct(before)}</b>ECE before temperature scaling</div>"
               f"<div><b>{pct(after)}</b>ECE after</div>"
               f"<div><b>{'–' if temp is None else f'{float(temp):.2f}'}</b>temperature</div></div>"
               "<p>Expected calibration error of the chosen head on the held-out human labels (out-of-fold), before "
               "and after the fitted temperature; every auto label's confidence is after it.</p>")
        rel = d.reliability
        if not rel:
            return out + ("<p>Reliability diagram: no answered audit item yet (it compares the confidence each "
                          "audited auto label was given with how often people agreed).</p>")
        conf = np.array([c for c, _ in rel])
        ok = np.array([o for _, o in rel], dtype=float)
        edges = np.linspace(0, 1, 11)
        bins = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            m = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
            bins.append((lo, hi, int(m.sum()), float(ok[m].mean()) if m.any() else None,
                         float(conf[m].mean()) if m.any() else None))
        ece = sum(n / len(rel) * abs(a - c) for _, _, n, a, c in bins if n)
        W, H, L, R, T, B = 360, 300, 48, 12, 12, 44

        def X(v):
            return L + (W - L - R) * v

        def Y(v):
            return T + (H - T - B) * (1 - v)

        svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
               f'aria-label="reliability diagram">']
        for v in (0, 0.5, 1.0):
            svg.append(f'<line x1="{L}" x2="{W - R}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#e3e6ec"/>'
                       f'<text x="{L - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{pct(v, 0)}</text>'
                       f'<text x="{X(v):.1f}" y="{H - B + 16}" text-anchor="middle">{pct(v, 0)}</text>')
        for lo, hi, n, a, c in bins:
            if n:
                svg.append(f'<rect x="{X(lo) + 1:.1f}" y="{Y(a):.1f}" width="{X(hi) - X(lo) - 2:.1f}" '
                           f'height="{Y(0) - Y(a):.1f}" fill="#3b5bdb" fill-opacity="0.75"><title>confidence '
                           f'{pct(lo, 0)}–{pct(hi, 0)}: {pct(a)} right of {n}</title></rect>'
                           f'<line x1="{X(lo) + 1:.1f}" x2="{X(hi) - 1:.1f}" y1="{Y(c):.1f}" y2="{Y(c):.1f}" '
                           f'stroke="#f08c00" stroke-width="2"/>'
                           f'<text x="{(X(lo) + X(hi)) / 2:.1f}" y="{min(Y(a), Y(c)) - 4:.1f}" '
                           f'text-anchor="middle">n={n}</text>')
        svg.append(f'<line x1="{X(0)}" y1="{Y(0)}" x2="{X(1)}" y2="{Y(1)}" stroke="#e03131" stroke-dasharray="4 3"/>'
                   f'<text x="{(L + W - R) / 2:.0f}" y="{H - 6}" text-anchor="middle">confidence given</text></svg>')
        rows = [[f"{pct(lo, 0)}–{pct(hi, 0)}", str(n), pct(c), pct(a)] for lo, hi, n, a, c in bins if n]
        return out + (f"<h3>Reliability on the audit items</h3><p>{len(rel)} answered audit items of earlier rounds "
                      f"(random, held out): bars are how often people agreed with the auto label, per bin of the "
                      f"confidence it was given (orange: the bin's mean confidence); the dashed line is perfect "
                      f"calibration. ECE on them: {pct(ece)}.</p>"
                      f'<div style="display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start">{"".join(svg)}'
                      + self.table(["confidence", "n", "mean confidence", "people agreed"], rows, {1, 2, 3})
                      + "</div>")

    def economics(self) -> str:
        d, t = self.d, self.d.table
        e = economics(d)
        src = (f"{e['measured_labels']} of them timed by Label Studio (lead_time, {e['measured_seconds'] / 3600:.2f} h "
               f"in all), the other {e['assumed_labels']} at report.seconds_per_label = {d.seconds_per_label:g} s"
               if e["measured_labels"] else
               f"at report.seconds_per_label = {d.seconds_per_label:g} s each (no Label Studio lead_time for them)")
        rows = [["human labels", str(e["human"])],
                ["time they took", f"{e['human_seconds'] / 3600:.2f} h ({esc(src)})"],
                ["seconds per label", f"{e['rate']:.1f} s"],
                ["to label every image by hand at that rate", f"{e['all_seconds'] / 3600:.2f} h ({len(t.label)} images)"],
                ["hours saved", f"{e['saved_seconds'] / 3600:.2f} h"],
                [f"human labels to reach {pct(d.target_accuracy, 0)} (report.target_accuracy)", esc(e["projection"])]]
        return (self.table(None, rows) +
                "<p class=\"muted\">Hours saved: the time to label every image by hand at the measured (or assumed) "
                "rate, less the time the human labels took. The projection extrapolates the learning curve (error "
                "as a power of the human labels, weighted by each point's n); it is a rough guide.</p>")

    def render(self) -> str:
        d = self.d
        body = {"counts": self.counts(), "accuracy": self.accuracy(), "learning-curve": self.learning_curve(),
                "review": self.review(), "confusion": self.confusion(), "calibration": self.calibration(),
                "economics": self.economics()}
        body["labels"] = self.labels()  # last: the budget goes to the review and flags first (inside it)
        nav = "".join(f'<a href="#{k}">{esc(v)}</a>' for k, v in SECTIONS.items())
        notes = "".join(f'<p class="note">{esc(n)}</p>' for n in d.notes)
        if self.thumbs.left_out:
            notes += (f'<p class="note">{self.thumbs.left_out} thumbnail(s) not shown (unreadable, or over the '
                      f"report's cap of {self.thumbs.max_count} images / {self.thumbs.max_bytes // 1000} kB).</p>")
        sections = "".join(f'<section id="{k}"><h2>{esc(v)}</h2>{body[k]}</section>' for k, v in SECTIONS.items())
        title = f"coldstart round {d.round} · {d.workspace}"
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
                "style-src 'unsafe-inline'\">"
                f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
                f"<style>{CSS}</style></head><body><header><h1>{esc(title)}</h1>"
                f"<p>{len(d.table.label)} images · {len(d.classes)} labels · auto labels by {esc(d.model)}</p>"
                f"<nav>{nav}</nav></header><main>{notes}{sections}</main></body></html>\n")


# --- the numbers ----------------------------------------------------------------------------------


def nice_ticks(top: float, most: int = 8) -> list[int]:
    """0 and multiples of a round step (1, 2 or 5 times a power of ten) up to ``top``: at most
    ``most`` ticks."""
    k, step = 0, 1
    while top / step >= most:
        k += 1
        step = (1, 2, 5)[k % 3] * 10 ** (k // 3)
    return list(range(0, int(top) + 1, step))


def fit_curve(points: list[CurvePoint]) -> tuple[float, float] | None:
    """``log(error) = a + b log(human labels)``, weighted by each point's n; None with fewer
    than two distinct label counts or a curve that is not improving (b >= 0)."""
    pts = [p for p in points if p.human_labels > 0 and p.n > 0]
    if len({p.human_labels for p in pts}) < 2:
        return None
    x = np.log([p.human_labels for p in pts])
    err = np.array([max(1 - p.accuracy, 0.5 / (p.n + 1)) for p in pts])  # a perfect audit is not error 0
    w = np.sqrt([p.n for p in pts])
    A = np.stack([np.ones_like(x), x], 1) * w[:, None]
    (a, b), *_ = np.linalg.lstsq(A, np.log(err) * w, rcond=None)
    return (float(a), float(b)) if b < 0 else None


def projection(points: list[CurvePoint], target: float) -> tuple[int | None, str] | None:
    """(human labels projected to reach ``target`` accuracy, in words) from the learning curve."""
    if not points:
        return None
    last = points[-1]
    if last.low >= target:
        return last.human_labels, f"reached: round {last.audited_round}'s interval is above it with {last.human_labels}"
    fit = fit_curve(points)
    if fit is None:
        return None, ("not projectable yet: it needs audited rounds at two or more label counts, with the error "
                      "falling")
    a, b = fit
    need = math.exp((math.log(1 - target) - a) / b) if target < 1 else math.inf
    if not math.isfinite(need) or need > 1e12:
        return None, "not reachable on the current curve"
    return int(math.ceil(need)), f"about {int(math.ceil(need)):,} (now {last.human_labels:,})"


def economics(d: ReportData) -> dict[str, Any]:
    human = int(d.table.human.sum()) if len(d.table.human) else len(d.humans)
    measured_labels = min(d.lead_labels, human)
    measured_seconds = float(sum(d.lead_times.values()))
    assumed = human - measured_labels
    human_seconds = measured_seconds + assumed * d.seconds_per_label
    rate = human_seconds / human if human else d.seconds_per_label
    all_seconds = len(d.table.label) * rate
    proj = projection(d.curve, d.target_accuracy)
    words = "no audited round yet: answer the audit items of the review batch" if proj is None else proj[1]
    if proj is not None and proj[0] is not None and len(d.table.label) and proj[0] > len(d.table.label):
        words += f": more than every image ({len(d.table.label):,}), so not by labeling alone at this rate of progress"
    return {"human": human, "measured_labels": measured_labels, "measured_seconds": measured_seconds,
            "assumed_labels": assumed, "human_seconds": human_seconds, "rate": rate, "all_seconds": all_seconds,
            "saved_seconds": max(0.0, all_seconds - human_seconds), "projection": words,
            "projected_labels": None if proj is None else proj[0]}


# --- the stage ------------------------------------------------------------------------------------


def render_report(data: ReportData, images: Path, scan=None, *, max_thumbs: int = MAX_THUMBS,
                  max_thumb_bytes: int = MAX_THUMB_BYTES) -> tuple[str, Thumbs]:
    thumbs = Thumbs(images, scan, max_thumbs, max_thumb_bytes)
    return Page(data, thumbs).render(), thumbs


def write_report(ws: Workspace, round_no: int, record: dict | None = None, params=None,
                 out: Path | None = None) -> Path:
    """Write round ``round_no``'s report to data/reports/round-NNN.html (``out``: elsewhere),
    atomically; return its path. ``record``: the round's record as ``RoundRecord.to_dict()``
    gives it (None: the saved one; see ``gather``)."""
    params = params or ws.params()
    data = gather(ws, round_no, record, params)
    text, _ = render_report(data, ws.images, params.scan)
    path = Path(out) if out is not None else report_path(ws, round_no)
    atomic_write_text(path, text)
    return path


def report(ws: Workspace, round_no: int, record: dict | None = None, params=None, *,
           raise_errors: bool = False) -> ReportResult:
    """The report stage: writes exactly its declared output, data/reports/round-NNN.html. In a
    round, a failure is returned, not raised (``raise_errors`` False): the report is a view of
    the round, never a reason to lose it."""
    try:
        params = params or ws.params()
        data = gather(ws, round_no, record, params)
        text, thumbs = render_report(data, ws.images, params.scan)
        path = report_path(ws, round_no)
        atomic_write_text(path, text)
        return ReportResult(path.relative_to(ws.root).as_posix(), len(text.encode("utf-8")), thumbs.count,
                            thumbs.left_out)
    except Exception as e:
        if raise_errors:
            raise
        log.warning("report: round %d's report was not written (%s: %s)", round_no, type(e).__name__, e)
        return ReportResult(error=f"{type(e).__name__}: {e}")


@task(name="report", cache_policy=NO_CACHE)
def report_task(ws: Workspace, round_no: int, record: dict | None = None) -> ReportResult:
    return report(ws, round_no, record)
