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

import logging
from dataclasses import dataclass
from pathlib import Path

from coldstart.tasks.reportdata import ReportData, gather
from coldstart.tasks.reportpage import Page
from coldstart.tasks.result import StageResult
from coldstart.tasks.thumbs import MAX_THUMB_BYTES, MAX_THUMBS, Thumbs
from coldstart.tasks.workspace import Workspace, atomic_write_text

log = logging.getLogger(__name__)

REPORTS_DIR = ("data", "reports")  # the report stage's one output (dvc.yaml: outs data/reports, persist)


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


# --- reading the workspace ------------------------------------------------------------------------


# --- thumbnails -----------------------------------------------------------------------------------


# --- rendering ------------------------------------------------------------------------------------


# --- the numbers ----------------------------------------------------------------------------------


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
        return ReportResult(path=path.relative_to(ws.root).as_posix(), bytes=len(text.encode("utf-8")),
                            thumbnails=thumbs.count, thumbnails_left_out=thumbs.left_out)
    except Exception as e:
        if raise_errors:
            raise
        log.warning("report: round %d's report was not written (%s: %s)", round_no, type(e).__name__, e)
        return ReportResult(error=f"{type(e).__name__}: {e}")
