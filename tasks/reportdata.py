"""What the round report shows, gathered from the workspace's files and the round record: earlier
rounds read back from git and DVC at their tags, the tables, the audit, the learning curve, the
annotation times, and the label economics (the learning curve fitted and projected)."""

from __future__ import annotations

import csv
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
import pyarrow as pa
import pyarrow.compute as pc

from coldstart.tasks.audit import AuditEstimate, clopper_pearson_interval
from coldstart.tasks.audit import audit as audit_stage
from coldstart.tasks.commands import command
from coldstart.tasks.config import Params
from coldstart.tasks.discover import Proposal, parse_proposals
from coldstart.tasks.errors import WorkspaceError
from coldstart.tasks.labellog import current_answers, read_events
from coldstart.tasks.ontology import map_answers, negative_labels, orphan_note
from coldstart.tasks.parts import PartTable
from coldstart.tasks.regiontable import DEFECTS_DIR, regions_dir, regions_of, regions_parts
from coldstart.tasks.relabel import CLASSES_KEY, resolved_parts
from coldstart.tasks.workspace import Workspace, read_csv

log = logging.getLogger(__name__)


SECONDS_PER_LABEL = 30.0  # params report.seconds_per_label: a human label's time where Label Studio gave none


TARGET_ACCURACY = 0.95  # params report.target_accuracy: what the projection of human labels aims at


def report_settings(params) -> tuple[float, float]:
    """(seconds per human label, target accuracy): params ``report.*`` when the section exists."""
    section = getattr(params, "report", None)
    spl = getattr(section, "seconds_per_label", None) if section is not None else None
    target = getattr(section, "target_accuracy", None) if section is not None else None
    return (float(spl) if spl is not None else SECONDS_PER_LABEL,
            float(target) if target is not None else TARGET_ACCURACY)


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
            from dvc.api import DVCFileSystem  # lazy: DVC is heavy and only a past round's report needs it

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
        take = pa.array(np.asarray(idx, dtype=np.int64))
        ids, paths, locs = (c.take(take).to_pylist() for c in (self.image_id, self.path, self.location))
        return [{"image_id": i, "path": p, "location": loc or "", "label": int(self.label[k]),
                 "confidence": float(self.confidence[k]), "human": bool(self.human[k])}
                for i, p, loc, k in zip(ids, paths, locs, idx)]

    def find(self, image_ids: list[str]) -> dict[str, int]:
        """image id -> row, for the ids present."""
        if not image_ids:
            return {}
        at = pc.index_in(self.image_id, value_set=pa.array(image_ids, pa.string())).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(~np.isnan(at.astype(float)))
        return {image_ids[int(at[r])]: int(r) for r in rows}


def read_table(ws: Workspace, round_no: int, classes: list[str], folder: Path | None = None
               ) -> tuple[Table, list[str]]:
    """The resolved table as round ``round_no`` left it (``folder``: its parts from elsewhere)."""

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
    proposals: list[Proposal] = field(default_factory=list)  # classes this round proposed (tasks/discover.py)
    proposed_names: dict[str, int] = field(default_factory=dict)  # new:<name> answers not yet a class


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


def gather(ws: Workspace, round_no: int, record: dict | None = None, params: Params | None = None) -> ReportData:
    """Everything the page shows of round ``round_no``. ``record``: the round's record
    (``RoundRecord.to_dict()``, the shape of round.json); None reads the saved one (the round's
    tag, or data/metrics/round.json), else builds a partial one from the files (a stage run alone,
    before its round is recorded). A round older than the newest tag reads the files that
    changed since from that tag (git, or DVC's cache) and the label log up to that round."""
    params = params or ws.params()
    tags = ws.round_tags()
    latest = tags[-1] if tags else 0
    if round_no < 1 or (round_no <= latest and round_no not in tags) or round_no > latest + 1:
        listed = ", ".join(map(str, tags)) or "none yet"
        raise WorkspaceError(f"there is no round {round_no} to report on (rounds: {listed})")
    past = round_no < latest
    tag = f"round-{round_no:03d}"
    notes: list[str] = []
    records, record = _round_records(ws, params, round_no, tags, record, past, notes)
    spl, target = report_settings(params)

    at_tag = AtTag(ws, tag) if past else None
    table, classes = _round_table(ws, round_no, params.ontology.labels, at_tag)
    train = _train_metrics(ws, record, at_tag)
    relabel = record.get("relabel") or {}
    threshold = relabel.get("threshold", train.get("threshold"))
    model = relabel.get("source") or train.get("model") or "?"

    if at_tag is not None:
        quarantine = _csv_rows(at_tag.text("data/store/quarantine.csv"))
        flags = _csv_rows(at_tag.text("data/labels/flags.csv"))
    else:
        quarantine, flags = read_csv(ws.quarantine), read_csv(ws.flags)

    events = [e for e in read_events(ws) if e.round <= round_no]
    answers = {k[0]: e for k, e in current_answers(events).items() if not k[1]}
    # On the round's labels: "none of these" (and a removed class's answers, listed) as unknown.
    mapped = map_answers({i: e.label for i, e in answers.items()}, classes)
    humans = mapped.labels
    if note := orphan_note(mapped.orphaned):
        notes.append(note)
    proposals = _proposals(ws, round_no, at_tag)
    lead_times, lead_labels = answer_times(ws, answers)
    reliability = _reliability(ws, round_no, humans)

    negatives = negative_labels(params.ontology)
    defect_labels = [c for c in classes if c not in negatives] if params.views.tiles else []
    defects = _defects(ws, round_no, at_tag, notes) if defect_labels else {}

    return ReportData(
        round=round_no, workspace=ws.root.name, classes=classes, table=table, threshold=threshold, model=model,
        record=record, quarantine=quarantine, humans=humans, audit=Audit.of(record.get("audit")),
        curve=learning_curve(records), batch=read_csv(ws.review / f"round-{round_no:03d}.batch.csv"), flags=flags,
        train=train, reliability=reliability, defects=defects, defect_labels=defect_labels,
        lead_times=lead_times, lead_labels=lead_labels, seconds_per_label=spl, target_accuracy=target, notes=notes,
        proposals=proposals, proposed_names=dict(mapped.proposed))


def _proposals(ws: Workspace, round_no: int, at_tag: AtTag | None) -> list[Proposal]:
    """The classes round ``round_no`` proposed (data/labels/proposals.json as it left it)."""
    text = at_tag.text("data/labels/proposals.json") if at_tag is not None else (
        ws.proposals.read_text(encoding="utf-8") if ws.proposals.is_file() else None)
    if not text:
        return []
    proposed_in, found = parse_proposals(text)
    return found if proposed_in == round_no else []


def _round_records(ws: Workspace, params: Params, round_no: int, tags: list[int], record: dict | None, past: bool,
                   notes: list[str]) -> tuple[dict[int, dict], dict]:
    """(the records of the rounds up to ``round_no``, this round's record): the learning curve
    needs the earlier ones, and a round not recorded yet gets one built from the files (said in
    ``notes``) so that the page can still be made after a stage run alone."""
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
        est = audit_stage(ws, params, None, round_no)  # no sample order: no labeler scores it here
        record = {"round": round_no, "audit": est.to_dict() if est is not None else None}
        notes.append("This round is not recorded yet (a stage run alone): counts come from the files, and the "
                     "confusion matrix appears once a round records it.")
    records[round_no] = record
    return records, record


def _round_table(ws: Workspace, round_no: int, classes: list[str], at_tag: AtTag | None) -> tuple[Table, list[str]]:
    """The resolved table as round ``round_no`` left it: a past round whose parts were pruned
    since (``at_tag``: its tag) reads them from DVC, or says how to get them."""

    with tempfile.TemporaryDirectory(prefix="coldstart-report-") as tmp:
        table, got_classes = read_table(ws, round_no, classes)
        if at_tag is not None and _pruned(resolved_parts(ws), round_no):  # this round's parts: from DVC
            got = at_tag.folder("data/labels/resolved", Path(tmp) / "resolved")
            if got is None:
                raise WorkspaceError(
                    f"round {round_no}'s labels are no longer in this workspace (older parts are pruned) nor in its "
                    f"DVC cache; get them with `{command('dvc')} get {shlex.quote(str(ws.root))} "
                    f"data/labels/resolved --rev {at_tag.tag} -o DIR`")
            table, got_classes = read_table(ws, round_no, classes, got)
    return table, got_classes


def _train_metrics(ws: Workspace, record: dict, at_tag: AtTag | None) -> dict:
    """The train stage's metrics: the record's, else train.json (at the round's tag for a past
    round), for a record that lacks them (a stage run alone)."""
    train = record.get("train") or {}
    if not train:
        if at_tag is not None:
            spec = f"{at_tag.tag}:data/metrics/train.json"
            blob = _git_files(ws, [spec]).get(spec)
        else:
            saved = ws.metrics_dir / "train.json"
            blob = saved.read_bytes() if saved.is_file() else None
        train = _json(blob) or {}
    return train


def _reliability(ws: Workspace, round_no: int, humans: dict[str, str]) -> list[tuple[float, bool]]:
    """(confidence given, correct) of each answered audit item of the earlier rounds' batches:
    the reliability diagram's points."""
    reliability = []
    for r in range(1, round_no):
        for b in read_csv(ws.review / f"round-{r:03d}.batch.csv"):
            if b.get("purpose") == "audit" and b.get("image_id") in humans:
                try:
                    reliability.append((float(b["confidence"]), humans[b["image_id"]] == b["predicted_label"]))
                except (KeyError, ValueError):
                    continue
    return reliability


def _defects(ws: Workspace, round_no: int, at_tag: AtTag | None, notes: list[str]) -> dict[str, dict]:
    """image id -> {"rle", "bbox", "label"}: the SAM masks of the located defects as of
    ``round_no`` (from DVC at ``at_tag`` when pruned since). A view: an unreadable mask table
    costs the masks (said in ``notes``), not the page."""
    folder = regions_dir(ws) / DEFECTS_DIR
    if not folder.is_dir():
        return {}
    try:
        if at_tag is not None and _pruned(regions_parts(folder), round_no):
            with tempfile.TemporaryDirectory(prefix="coldstart-report-") as tmp:
                got = at_tag.folder(folder.relative_to(ws.root).as_posix(), Path(tmp) / DEFECTS_DIR)
                regions = regions_of(regions_parts(got).read()) if got else []
        else:
            regions = regions_of(regions_parts(folder).read(before=round_no + 1))
        return {r.image_id: {"rle": r.rle, "bbox": r.bbox, "label": r.label} for r in regions}
    except Exception as e:  # a view: an unreadable mask table costs the masks, not the page
        notes.append(f"The defect masks ({folder.relative_to(ws.root)}) could not be read: {e}")
        return {}


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
