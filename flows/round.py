"""The labeling round: one Prefect flow, one task per stage, read top to bottom.

Correctness never depends on Prefect's or MLflow's run state: each stage reads and writes the
workspace's own files (content ids, the append-only label log, atomic writes), so a killed
round is simply run again. The stages are the registry in tasks/stages.py, each one entry
``run(ws, ctx)``; the same entries run alone as ``coldstart stage NAME`` (what ``dvc repro`` calls).
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from coldstart.flows.record import RoundRecord
from coldstart.tasks.errors import TrackingError
from coldstart.tasks.labellog import read_events
from coldstart.tasks.stages import STAGES, Context, Stage, link_run_task
from coldstart.tasks.version import check_stages, config_changed, unversioned_images
from coldstart.tasks.workspace import Workspace, atomic_write_text


@flow(name="labeling_round")
def labeling_round(workspace: str = ".", force: bool = False) -> RoundRecord:
    """Run one round on a workspace; return its record (also in MLflow and data/metrics/round.json).

    A round that finds nothing new (no new or changed image, no new answer, no change to
    params.yaml or dvc.yaml) stops there and records nothing: no tag, MLflow run, model version
    or review batch; its record says ``nothing_new``. ``force`` runs the whole round anyway.
    """
    ws = Workspace.open(workspace)
    check_stages(ws)
    with ws.lock():
        return run_round(ws, force)


def run_round(ws: Workspace, force: bool = False) -> RoundRecord:
    """The stages of the registry (tasks/stages.py ``STAGES``) in order, each a Prefect task,
    each result kept in the record and handed to the later stages; after the intake, a round
    with nothing new stops."""
    ctx = Context.of(ws)
    rec = RoundRecord(round=ctx.round)
    ctx.record = rec
    for stage in STAGES.values():
        with rec.timed(stage.name):
            result = run_stage(stage, ws, ctx)
        setattr(rec, stage.name, result)
        if stage.name == "intake" and not force and nothing_changed(ws, rec):
            return nothing_new(ws, rec)
    assert rec.version is not None
    link_run_task(ws, ctx.params, rec.run_id, rec.version.commit, rec.version.tag, rec.audit)
    publish(rec)
    if rec.track is not None and rec.track.error:
        raise TrackingError(rec.track.error)  # the round is versioned; MLflow missed it
    return rec


def run_stage(stage: Stage, ws: Workspace, ctx: Context) -> Any:
    """One stage as a task of the round's flow run (the seam the fault-matrix test kills at)."""
    return stage.task(ws, ctx)


def nothing_changed(ws: Workspace, rec: RoundRecord) -> bool:
    """After the intake: no new or changed image, no new answer, no params.yaml/dvc.yaml change
    and no work of a killed attempt. The first round always runs."""
    assert rec.scan is not None and rec.embed is not None and rec.intake is not None
    return rec.round > 1 and not (rec.scan.changed or rec.embed.embedded or rec.intake.events_added
                                  or config_changed(ws) or interrupted_work(ws, rec.round, rec.scan.parts))


def interrupted_work(ws: Workspace, n: int, parts: dict[str, str] | None) -> bool:
    """What an attempt at round ``n`` killed before its tag already took in: answers (their
    events carry round ``n``) or images (parts differ from the last tagged round's). Without
    this, the retry would find "nothing new" and the work would wait for unrelated news."""
    return any(e.round == n for e in read_events(ws)) or (parts is not None and unversioned_images(ws, parts))


def nothing_new(ws: Workspace, rec: RoundRecord) -> RoundRecord:
    """Record a round that found nothing to do: in .coldstart/last-check.json (what `status`
    shows) and in the flow run's log; nothing is versioned or tracked."""
    rec.nothing_new = True
    check = {"checked_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "last_round": rec.round - 1, "result": "nothing new",
             "rejected": rec.intake.problems if rec.intake else []}
    atomic_write_text(ws.state_dir / "last-check.json", json.dumps(check) + "\n")
    get_run_logger().info(rec.describe())
    return rec


def publish(rec: RoundRecord) -> None:
    """The round's summary in its flow run: logged, and a markdown artifact in the Prefect UI."""
    text = rec.describe()
    get_run_logger().info(text)
    create_markdown_artifact(markdown=f"## coldstart round {rec.round}\n\n```\n{text}\n```\n",
                             key=f"round-{rec.round:03d}", description=f"coldstart round {rec.round} summary")
