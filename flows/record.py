"""The round record: every stage's result of one round, composed once.

Everything a round reports is derived from this one object: the MLflow metrics
(``metrics()``), ``data/metrics/round.json`` (``save``), the terminal summary (``describe``),
``coldstart status`` and the public API's ``read_round``. Each stage's result knows its own
metrics; the record only adds the stage timings.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, TypeVar

from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from coldstart.tasks.audit import GATE_NOTE, AuditEstimate
from coldstart.tasks.discover import DiscoverResult
from coldstart.tasks.embed import EmbedResult
from coldstart.tasks.intake import IntakeResult
from coldstart.tasks.regions import RegionsResult
from coldstart.tasks.relabel import RelabelResult
from coldstart.tasks.report import ReportResult
from coldstart.tasks.result import StageResult
from coldstart.tasks.scan import ScanResult
from coldstart.tasks.select import SelectResult
from coldstart.tasks.stages import STAGES as REGISTRY
from coldstart.tasks.track import TrackResult
from coldstart.tasks.train import TrainResult
from coldstart.tasks.version import VersionResult
from coldstart.tasks.workspace import Workspace, atomic_write_text

# Stage name -> its result type, in round order: the stage registry's (tasks/stages.py).
STAGES: dict[str, type[StageResult]] = {name: stage.result for name, stage in REGISTRY.items()}

_R = TypeVar("_R", bound=StageResult)


def _ran(result: _R | None, stage: str) -> _R:
    """A stage result every made round has: a missing one is named here, not met later as an
    AttributeError on None."""
    if result is None:
        raise ValueError(f"the round record has no {stage} result: the round was not made")
    return result


def _log_stage(round_no: int, stage: str, seconds: float) -> None:
    """A stage's wall time in the flow run's log (the Prefect UI's run page); outside a run, nowhere."""
    try:
        get_run_logger().info("round %d: stage %s took %.2f s", round_no, stage, seconds)
    except MissingContextError:
        pass


@dataclass
class RoundRecord:
    round: int
    scan: ScanResult | None = None
    embed: EmbedResult | None = None
    intake: IntakeResult | None = None
    audit: AuditEstimate | None = None  # of an earlier round's auto labels, from its answered audit items
    train: TrainResult | None = None
    relabel: RelabelResult | None = None
    regions: RegionsResult | None = None
    discover: DiscoverResult | None = None  # classes proposed from the images unlike every class
    select: SelectResult | None = None
    report: ReportResult | None = None  # the round's HTML page (data/reports/round-NNN.html)
    track: TrackResult | None = None
    version: VersionResult | None = None
    # Set when the round found nothing new (no image, answer or params change) and so did
    # nothing more: no tag, MLflow run, model version or review batch.
    nothing_new: bool = False
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, wall time
    seconds_total: float = 0.0
    _started: float = field(default_factory=time.perf_counter, repr=False)

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = time.perf_counter() - t
            self.seconds_total = time.perf_counter() - self._started
            _log_stage(self.round, stage, self.seconds[stage])

    def metrics(self) -> dict[str, float | None]:
        """MLflow metrics: each stage's own, plus ``seconds_<stage>`` and ``seconds_total``."""
        out: dict[str, float | None] = {}
        for name in STAGES:
            result = getattr(self, name)
            if result is not None:
                out.update(result.metrics())
        out.update({f"seconds_{k}": v for k, v in self.seconds.items()})
        out["seconds_total"] = time.perf_counter() - self._started
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"round": self.round}
        for name in STAGES:
            result = getattr(self, name)
            out[name] = None if result is None else result.to_dict()
        return {**out, "nothing_new": self.nothing_new, "seconds": self.seconds, "seconds_total": self.seconds_total}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RoundRecord":
        record = cls(round=int(data["round"]), seconds=dict(data.get("seconds", {})),
                     nothing_new=bool(data.get("nothing_new", False)),
                     seconds_total=float(data.get("seconds_total", 0.0)))
        for name, kind in STAGES.items():  # each field is named after its stage, typed by its result
            if data.get(name):
                setattr(record, name, kind.from_dict(data[name]))
        return record

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: Path) -> "RoundRecord":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    # What a person reads.

    @property
    def tag(self) -> str | None:
        return self.version.tag if self.version else None

    @property
    def run_id(self) -> str | None:
        return self.track.run_id if self.track else None

    def artifacts(self, ws: Workspace) -> list[Path]:
        """Files logged with the MLflow run: the review batch, quarantine list, train metrics, and
        the round's report."""
        batch = [ws.root / f for f in (self.select.files if self.select else [])]
        page = [ws.root / self.report.path] if self.report is not None and self.report.path else []
        return batch + [ws.quarantine, ws.metrics_dir / "train.json"] + page

    def commit_message(self) -> str:
        t, r = _ran(self.train, "train"), _ran(self.relabel, "relabel")
        return (f"coldstart round {self.round}: {_ran(self.intake, 'intake').human_labels} human labels, {r.auto} auto labels "
                f"({t.model})" + (f", mlflow run {self.run_id}" if self.run_id else ""))

    def rejections(self) -> list[str]:
        """The intake's rejections as summary lines, first: a person has to act on them."""
        return ["REJECTED " + p.replace("\n", "\n  ") for p in (self.intake.problems if self.intake else [])]

    def describe_nothing_new(self) -> str:
        return "\n".join([*self.rejections(),
                          f"nothing new since round {self.round - 1}: no new or changed images, no new answers, no "
                          f"change to params.yaml or dvc.yaml, so no round was made (no tag, MLflow run, model "
                          f"version or review batch). Answer the open review batch into data/inbox/, or run "
                          f"`coldstart round --force`."])

    def describe(self) -> str:
        """The terminal summary of the round."""
        def pct(x):
            return "-" if x is None else f"{100 * x:.1f}%"

        if self.nothing_new:
            return self.describe_nothing_new()
        sc, em, it = _ran(self.scan, "scan"), _ran(self.embed, "embed"), _ran(self.intake, "intake")
        tr, rl, se, au = _ran(self.train, "train"), _ran(self.relabel, "relabel"), _ran(self.select, "select"), self.audit
        audit = "no audit answers yet" if rl.auto else "no auto labels to audit: every image has a human label"
        if au is not None and au.n and rl.auto:
            whose = "this round's" if au.round == self.round else f"round {au.round}'s"
            audit = (f"{whose} auto labels: {au.describe()}, at least {pct(au.lower_bound)} with 95% confidence "
                     f"({GATE_NOTE})")
            if au.per_class():
                audit += "; per label: " + ", ".join(f"{k} {pct(v)}" for k, v in au.per_class().items())
        lines = [
            f"round {self.round} ({self.tag}, {self.seconds_total:.1f} s)",
            f"  images      {sc.images} ({sc.new_images} new, {em.embedded} embedded), {sc.quarantined} quarantined",
            f"  intake      {it.describe_answers()}; {len(it.files_accepted)} file(s) accepted now, "
            f"{len(it.files_rejected)} rejected" + (f", {it.rows_rejected} row(s) set aside" if it.rows_rejected else ""),
            f"  labels      {it.human_labels} human, {rl.auto} auto by {tr.model}: {tr.reason}",
            f"  confidence  {rl.below_threshold} auto labels below {rl.threshold:.3f} ({tr.threshold_note}); "
            f"temperature {tr.temperature:.2f}; label churn {pct(rl.churn)}",
            f"  audit       {audit}",
            f"  review      {se.batch_size} images ({se.chosen} by {se.strategy or '-'}, {se.audit} random audit, "
            f"{se.recheck - se.reasked} human label(s) to re-check"
            + (f", {se.reasked} 'none of these' answer(s) asked again after a class was adopted" if se.reasked else "")
            + f"): {', '.join(se.files) or '-'}",
            f"  mlflow run  {self.run_id}",
        ]
        rp = self.report
        if rp is not None:
            lines.insert(-1, f"  report      {rp.path} ({rp.bytes / 1e6:.1f} MB, {rp.thumbnails} thumbnails)"
                         if rp.path else f"  report      not written: {rp.error}")
        rg = self.regions
        if rg is not None and rg.enabled:
            dropped = ", ".join(f"{k} {v}" for k, v in sorted(rg.dropped.items())) or "none"
            lines.insert(-1, f"  regions     {rg.regions} objects ({rg.new_regions} new on {rg.images_segmented} "
                             f"image(s) segmented), {rg.relabeled} relabeled, {rg.human} labeled by people ({rg.drawn} "
                             f"drawn); dropped: {dropped}; {rg.defects_localized} defect(s) outlined; "
                             f"{se.regions} offered for review")
            if rg.hint:
                lines.insert(-1, f"  HINT        {rg.hint}")
        dc = self.discover
        if dc is not None and (dc.unknown_answers or dc.predicted_unknown or dc.proposals or dc.region_proposals):
            proposed = dc.proposals + dc.region_proposals
            lines.insert(-1, f"  discover    {dc.unknown_answers} answered none of these, {dc.predicted_unknown} labeled "
                             f"unknown; {proposed} class(es) proposed" + (" (see them: coldstart discover -w DIR)"
                                                                          if proposed else ""))
        for w in tr.warnings[:5]:
            lines.append("  WARNING " + w)
        if len(tr.warnings) > 5:
            lines.append(f"  WARNING ... and {len(tr.warnings) - 5} more (all of them: coldstart prompts --workspace DIR)")
        # Rejections first: a person has to act on them (the round exits with status 3).
        return "\n".join(self.rejections() + lines)
