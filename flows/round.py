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
from coldstart.tasks.intake import intake_task
from coldstart.tasks.relabel import relabel_task
from coldstart.tasks.scan import scan_task
from coldstart.tasks.select import select_task
from coldstart.tasks.track import link_run_task, track_task
from coldstart.tasks.train import train_task
from coldstart.tasks.version import check_stages, version_task
from coldstart.tasks.workspace import Workspace


@flow(name="labeling_round")
def labeling_round(workspace: str = ".") -> RoundRecord:
    """Run one round on a workspace; return its record (also in MLflow and data/metrics/round.json)."""
    ws = Workspace.open(workspace)
    check_stages(ws)
    with ws.lock():
        return run_round(ws)


def run_round(ws: Workspace) -> RoundRecord:
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
        rec.intake = intake_task(ws, params.ontology.class_names, n)
    with rec.timed("audit"):  # earlier rounds' audit items, now answered -> accuracy estimate
        rec.audit = audit_task(ws, n)
    with rec.timed("train"):  # human labels -> the best labeler by cross-validation
        rec.train = train_task(ws, params, clip, n)
    with rec.timed("relabel"):  # every image -> resolved label (human > model)
        rec.relabel = relabel_task(ws, params, n)
    with rec.timed("select"):  # uncertainty + diversity + random audit -> review batch
        rec.select = select_task(ws, params.round, n)
    with rec.timed("track"):  # one MLflow run
        rec.track = track_task(ws, params, n, rec.metrics(), rec.artifacts(ws), rec.train)
    rec.save(ws.metrics_dir / "round.json")  # the round's own record, committed with its tag
    with rec.timed("version"):  # dvc commit + push, git commit, tag round-NNN
        rec.version = version_task(ws, n, rec.commit_message(), rec.scan.parts, rec.scan.hashed)
    link_run_task(ws, params, rec.run_id, rec.version.commit, rec.version.tag, rec.audit)
    if rec.track.error:
        raise TrackingError(rec.track.error)  # the round is versioned; MLflow missed it
    return rec
