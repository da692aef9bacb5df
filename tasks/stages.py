"""The stages of a round, in order: the one registry that `coldstart stage NAME`, the round
record (its fields and round.json), the CLI's choices and the dvc.yaml check read.

Each stage has one entry, ``run(ws, ctx) -> result``: the context carries the validated params,
the round number and the CLIP handle (built on first use), so no stage reads params.yaml
itself. The round flow (flows/round.py) calls the same stage functions through its Prefect
tasks, with the results of the earlier stages some of them need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from coldstart.models.clip import LazyClip
from coldstart.tasks import audit, embed, intake, regions, relabel, report, scan, select, train
from coldstart.tasks.config import Params
from coldstart.tasks.result import StageResult
from coldstart.tasks.track import TrackResult
from coldstart.tasks.version import VersionResult
from coldstart.tasks.workspace import Workspace


@dataclass
class Context:
    """What a stage gets besides the workspace."""

    params: Params  # validated params.yaml
    round: int  # the round being made (the last tag's number + 1)
    _clip: LazyClip | None = field(default=None, repr=False)

    @property
    def clip(self) -> LazyClip:
        """The CLIP model of ``params.model``: a handle, built when a stage first encodes."""
        if self._clip is None:
            self._clip = embed.load_model(self.params.model)
        return self._clip

    @classmethod
    def of(cls, ws: Workspace) -> "Context":
        """The context of the next round of ``ws``."""
        return cls(ws.params(), ws.next_round())


@dataclass(frozen=True)
class Stage:
    name: str
    result: type  # what run returns (a StageResult; the audit's may be None: nothing to audit yet)
    # The stage alone (what `coldstart stage NAME` and `dvc repro` run); None: it only runs inside
    # a round, on what the earlier stages returned (track: the round's metrics; version: its record).
    run: Callable[[Workspace, Context], StageResult | None] | None = None
    dvc: bool = False  # a stage of dvc.yaml, writing exactly the outputs declared there


def take_in(ws: Workspace, ctx: Context) -> intake.IntakeResult:
    """The intake entry every caller uses (the round, `coldstart stage intake`, the API's webhook,
    `round --wait`): the inbox and the webhook spool into the label log, as params.yaml says.
    Call with the workspace lock held."""
    cfg = ctx.params.intake
    return intake.intake(ws, ctx.params.ontology.class_names, ctx.round, on_error=cfg.on_error,
                         max_file_mb=cfg.max_file_mb)


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("scan", scan.ScanResult, lambda ws, ctx: scan.scan(ws, ctx.params.scan, ctx.round), dvc=True),
    Stage("embed", embed.EmbedResult,
          lambda ws, ctx: embed.embed(ws, ctx.clip, ctx.params.model, ctx.params.views,
                                      execution=ctx.params.execution), dvc=True),
    Stage("intake", intake.IntakeResult, take_in, dvc=True),
    Stage("audit", audit.AuditEstimate, lambda ws, ctx: audit.audit(ws, ctx.round)),
    Stage("train", train.TrainResult, lambda ws, ctx: train.train(ws, ctx.params, ctx.clip, ctx.round), dvc=True),
    Stage("relabel", relabel.RelabelResult, lambda ws, ctx: relabel.relabel(ws, ctx.params, ctx.round), dvc=True),
    Stage("regions", regions.RegionsResult,
          lambda ws, ctx: regions.regions(ws, ctx.params, ctx.clip, ctx.round), dvc=True),
    Stage("select", select.SelectResult,
          lambda ws, ctx: select.select(ws, ctx.params.round, ctx.round, ctx.params.regions), dvc=True),
    Stage("report", report.ReportResult,
          lambda ws, ctx: report.report(ws, ctx.round, params=ctx.params, raise_errors=True), dvc=True),
    Stage("track", TrackResult),
    Stage("version", VersionResult),
]}

@task(name="intake", cache_policy=NO_CACHE)
def intake_task(ws: Workspace, ctx: Context) -> intake.IntakeResult:
    """The round's intake (``take_in``) as a Prefect task."""
    return take_in(ws, ctx)


DVC_STAGES = [name for name, s in STAGES.items() if s.dvc]  # in dvc.yaml's order
