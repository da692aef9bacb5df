"""The labeling round: one Prefect flow, one task per stage, read top to bottom.

Correctness never depends on Prefect's or MLflow's run state: each stage reads and writes the
workspace's own files (content ids, the append-only label log, atomic writes), so a killed
round is simply run again. Each stage is one module in coldstart.tasks; the same functions
run alone as ``coldstart stage NAME`` (what ``dvc repro`` calls).
"""

from __future__ import annotations

from prefect import flow

from coldstart.flows.record import RoundRecord
from coldstart.tasks.audit import audit_task
from coldstart.tasks.embed import embed_task, load_model_task
from coldstart.tasks.errors import TrackingError
from coldstart.tasks.regions import regions_task
from coldstart.tasks.relabel import relabel_task
from coldstart.tasks.report import report_task
from coldstart.tasks.scan import scan_task
from coldstart.tasks.select import select_task
from coldstart.tasks.stages import Context, intake_task
from coldstart.tasks.track import link_run_task, track_task
from coldstart.tasks.train import train_task
from coldstart.tasks.version import check_stages, config_changed, unversioned_images, version_task
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
    params, n = ws.params(), ws.next_round()
    rec = RoundRecord(round=n)
    with rec.timed("scan"):  # images -> content ids, manifest, quarantine
        rec.scan = scan_task(ws, params.scan, n)
    rec.scan.require_images(ws)
    with rec.timed("load_model"):  # a handle: the model is built when a stage first needs it
        clip = load_model_task(params.model)
    with rec.timed("embed"):  # new images only -> embedding store
        rec.embed = embed_task(ws, clip, params.model, params.views, params.execution)
    with rec.timed("intake"):  # inbox answers -> validated -> label-event log
        rec.intake = intake_task(ws, Context(params, n))
    if not force and n > 1 and not (rec.scan.changed or rec.embed.embedded or rec.intake.events_added
                                    or config_changed(ws) or interrupted_work(ws, n, rec.scan.parts)):
        return nothing_new(ws, rec)
    with rec.timed("audit"):  # earlier rounds' audit items, now answered -> accuracy estimate
        rec.audit = audit_task(ws, n)
    with rec.timed("train"):  # human labels -> the best labeler by cross-validation
        rec.train = train_task(ws, params, clip, n)
    if rec.audit is not None:  # every round's answered audit items, scored out of fold by this labeler
        rec.audit.use_out_of_fold(rec.train, n)
    with rec.timed("relabel"):  # every image -> resolved label (human > model)
        rec.relabel = relabel_task(ws, params, n)
    if rec.audit is not None:  # ... weighted by confidence band to this round's auto labels
        rec.audit.weight_to_pool(rec.relabel.auto_confidence)
    with rec.timed("regions"):  # regions.enabled: SAM masks of new images, each labeled
        rec.regions = regions_task(ws, params, clip, n)
    with rec.timed("select"):  # uncertainty + diversity + random audit -> review batch
        rec.select = select_task(ws, params.round, n, params.regions)
    with rec.timed("report"):  # what a person reads: data/reports/round-NNN.html (never fails the round)
        rec.report = report_task(ws, n, rec.to_dict())
    with rec.timed("track"):  # one MLflow run
        rec.track = track_task(ws, params, n, rec.metrics(), rec.artifacts(ws), rec.train)
    rec.save(ws.metrics_dir / "round.json")  # the round's own record, committed with its tag
    with rec.timed("version"):  # dvc commit + push, git commit, tag round-NNN
        rec.version = version_task(ws, n, rec.commit_message(), rec.scan.parts, rec.scan.hashed,
                                   rec.scan.unversionable)
    link_run_task(ws, params, rec.run_id, rec.version.commit, rec.version.tag, rec.audit)
    publish(rec)
    if rec.track.error:
        raise TrackingError(rec.track.error)  # the round is versioned; MLflow missed it
    return rec


def interrupted_work(ws: Workspace, n: int, parts: dict[str, str] | None) -> bool:
    """What an attempt at round ``n`` killed before its tag already took in: answers (their
    events carry round ``n``) or images (parts differ from the last tagged round's). Without
    this, the retry would find "nothing new" and the work would wait for unrelated news."""
    from coldstart.tasks.labellog import read_events

    return any(e.round == n for e in read_events(ws)) or (parts is not None and unversioned_images(ws, parts))


def nothing_new(ws: Workspace, rec: RoundRecord) -> RoundRecord:
    """Record a round that found nothing to do: in .coldstart/last-check.json (what `status`
    shows) and in the flow run's log; nothing is versioned or tracked."""
    import datetime
    import json

    from prefect.logging import get_run_logger

    rec.nothing_new = True
    check = {"checked_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "last_round": rec.round - 1, "result": "nothing new",
             "rejected": rec.intake.problems if rec.intake else []}
    atomic_write_text(ws.state_dir / "last-check.json", json.dumps(check) + "\n")
    get_run_logger().info(rec.describe())
    return rec


def publish(rec: RoundRecord) -> None:
    """The round's summary in its flow run: logged, and a markdown artifact in the Prefect UI."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.logging import get_run_logger

    text = rec.describe()
    get_run_logger().info(text)
    create_markdown_artifact(markdown=f"## coldstart round {rec.round}\n\n```\n{text}\n```\n",
                             key=f"round-{rec.round:03d}", description=f"coldstart round {rec.round} summary")
