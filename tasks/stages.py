"""The stages of a round, in order: the one registry that the round flow iterates, and that
`coldstart stage NAME`, the round record (its fields and round.json), the CLI's choices and the
dvc.yaml check read.

Each stage has one entry, ``run(ws, ctx) -> result``: the context carries the validated params,
the round number, the CLIP handle (built on first use) and, inside a round, the record so far
through it the earlier stages' results; no stage reads params.yaml itself. The round flow
(flows/round.py) runs each entry as a Prefect task named after the stage (``Stage.task``);
`coldstart stage NAME` (what ``dvc repro`` runs) calls the same entry without a record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from prefect import task
from prefect.cache_policies import NO_CACHE

from coldstart.models.clip import LazyClip
from coldstart.models.errors import ConfigError
from coldstart.tasks import (
    audit,
    discover,
    embed,
    intake,
    regions,
    relabel,
    report,
    scan,
    select,
    track,
    train,
    version,
)
from coldstart.tasks.config import Params
from coldstart.tasks.result import StageResult
from coldstart.tasks.workspace import Workspace


class RoundSoFar(Protocol):
    """What the round flow's record (flows/record.py ``RoundRecord``) offers the stages that
    summarise the round: report, track and version."""

    def to_dict(self) -> dict[str, Any]: ...

    def metrics(self) -> dict[str, float | None]: ...

    def artifacts(self, ws: Workspace) -> list[Path]: ...

    def commit_message(self) -> str: ...

    def save(self, path: Path) -> None: ...


@dataclass
class Context:
    """What a stage gets besides the workspace."""

    params: Params  # validated params.yaml
    round: int  # the round being made (the last tag's number + 1)
    record: RoundSoFar | None = None  # inside a round: its record so far; `coldstart stage`: None
    _clip: LazyClip | None = field(default=None, repr=False)

    @property
    def clip(self) -> LazyClip:
        """The CLIP model of ``params.model``: a handle, built when a stage first encodes."""
        if self._clip is None:
            self._clip = embed.load_model(self.params.model)
        return self._clip

    @classmethod
    def of(cls, ws: Workspace, record: RoundSoFar | None = None) -> "Context":
        """The context of the next round of ``ws``."""
        return cls(ws.params(), ws.next_round(), record)

    def earlier(self, stage: str) -> Any:
        """The result an earlier stage of this round returned (None: alone, or it returned none)."""
        return getattr(self.record, stage, None)

    def in_round(self, stage: str) -> RoundSoFar:
        """The round's record, for a stage that only runs inside a round."""
        if self.record is None:
            raise ConfigError(f"the {stage} stage runs inside a round only (`coldstart round`)")
        return self.record


@dataclass(frozen=True)
class Stage:
    name: str
    result: type[StageResult]  # what run returns (a StageResult; the audit's may be None: nothing to audit yet)
    run: Callable[[Workspace, Context], StageResult | None]
    dvc: bool = False  # a stage of dvc.yaml, writing exactly the outputs declared there (`coldstart stage`)

    @property
    def task(self) -> Any:
        """``run`` as the Prefect task the round flow calls (named after the stage; never cached:
        a stage's inputs are files)."""
        return _TASKS[self.name]


def take_in(ws: Workspace, ctx: Context) -> intake.IntakeResult:
    """The intake entry every caller uses (the round, `coldstart stage intake`, the API's webhook,
    `round --wait`): the inbox and the webhook spool into the label log, as params.yaml says.
    Call with the workspace lock held."""
    cfg = ctx.params.intake
    return intake.intake(ws, ctx.params.ontology.class_names, ctx.round, on_error=cfg.on_error,
                         max_file_mb=cfg.max_file_mb)


def _scan(ws: Workspace, ctx: Context) -> scan.ScanResult:
    result = scan.scan(ws, ctx.params.scan, ctx.round)
    if ctx.record is not None:  # a round needs images; the stage alone just records none
        result.require_images(ws)
    return result


def _embed(ws: Workspace, ctx: Context) -> embed.EmbedResult:
    return embed.embed(ws, ctx.clip, ctx.params.model, ctx.params.views, execution=ctx.params.execution,
                       limits=ctx.params.scan)


def _audit(ws: Workspace, ctx: Context) -> audit.AuditEstimate | None:
    return audit.audit(ws, ctx.params, ctx.clip.model_id, ctx.round)  # model_id: no model is built


def _train(ws: Workspace, ctx: Context) -> train.TrainResult:
    result = train.train(ws, ctx.params, ctx.clip, ctx.round)
    if (estimate := ctx.earlier("audit")) is not None:  # answered audit items, scored out of fold by it
        estimate.use_out_of_fold(result, ctx.round)
    return result


def _relabel(ws: Workspace, ctx: Context) -> relabel.RelabelResult:
    result = relabel.relabel(ws, ctx.params, ctx.round)
    if (estimate := ctx.earlier("audit")) is not None:  # ... estimated for these auto labels (the difference estimator)
        estimate.weight_to_pool(result.auto_confidence)
    return result


def _discover(ws: Workspace, ctx: Context) -> discover.DiscoverResult:
    return discover.discover(ws, ctx.params, ctx.round, ctx.clip)  # the model is built only to name proposals


def _regions(ws: Workspace, ctx: Context) -> regions.RegionsResult:
    return regions.regions(ws, ctx.params, ctx.clip, ctx.round)


def _select(ws: Workspace, ctx: Context) -> select.SelectResult:
    return select.select(ws, ctx.params.round, ctx.round, ctx.params.regions, ctx.params.ontology)


def _report(ws: Workspace, ctx: Context) -> report.ReportResult:
    # In a round a failure is noted in the result, never raised: the report is a view of the round.
    record = ctx.record.to_dict() if ctx.record is not None else None
    return report.report(ws, ctx.round, record, ctx.params, raise_errors=ctx.record is None)


def _track(ws: Workspace, ctx: Context) -> track.TrackResult:
    rec = ctx.in_round("track")
    # The models' ids carry the precision they computed in (":bf16", ":int8"; fp32 adds nothing).
    ids = {"model.id": ctx.clip.model_id}
    if (seg := ctx.earlier("regions")) is not None and seg.enabled:
        ids["regions.model_id"] = seg.sam_model_id
    return track.track(ws, ctx.params, ctx.round, rec.metrics(), rec.artifacts(ws), ctx.earlier("train"), ids)


def _version(ws: Workspace, ctx: Context) -> version.VersionResult:
    rec = ctx.in_round("version")
    rec.save(ws.metrics_dir / "round.json")  # the round's own record, committed with its tag
    found: scan.ScanResult = ctx.earlier("scan")
    return version.version(ws, ctx.params, ctx.round, rec.commit_message(), found.parts, found.hashed, found.unversionable)


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("scan", scan.ScanResult, _scan, dvc=True),  # images -> content ids, manifest, quarantine
    Stage("embed", embed.EmbedResult, _embed, dvc=True),  # new images only -> embedding store
    Stage("intake", intake.IntakeResult, take_in, dvc=True),  # inbox answers -> validated -> label log
    Stage("audit", audit.AuditEstimate, _audit),  # earlier rounds' answered audit items -> accuracy
    Stage("train", train.TrainResult, _train, dvc=True),  # human labels -> the best labeler by CV
    Stage("relabel", relabel.RelabelResult, _relabel, dvc=True),  # every image -> label (human > model)
    Stage("regions", regions.RegionsResult, _regions, dvc=True),  # regions.enabled: SAM masks, labeled
    Stage("discover", discover.DiscoverResult, _discover, dvc=True),  # unlike every class -> proposed classes
    Stage("select", select.SelectResult, _select, dvc=True),  # uncertainty + diversity + audit -> batch
    Stage("report", report.ReportResult, _report, dvc=True),  # data/reports/round-NNN.html
    Stage("track", track.TrackResult, _track),  # one MLflow run
    Stage("version", version.VersionResult, _version),  # dvc commit + push, git commit, tag round-NNN
]}

_TASKS = {name: task(name=name, cache_policy=NO_CACHE)(s.run) for name, s in STAGES.items()}

# After the tag: the MLflow run gets the commit and tag (a task of its own, not a stage).
link_run_task = task(name="link_run", cache_policy=NO_CACHE)(track.link_run)

DVC_STAGES = [name for name, s in STAGES.items() if s.dvc]  # in dvc.yaml's order
