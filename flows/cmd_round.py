"""`coldstart round`, `stage` and `demo`: the handlers that run rounds and stages."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shlex
import sys
import time
from pathlib import Path

from prefect.settings import temporary_settings

from coldstart.flows.demo import run_demo
from coldstart.flows.prefectserver import round_prefect
from coldstart.flows.round import labeling_round
from coldstart.flows.status import workspace_status
from coldstart.flows.wait import latest_batch, wait_for_answers
from coldstart.models.errors import ConfigError
from coldstart.tasks.commands import command, write_json
from coldstart.tasks.labelstudio import preflight
from coldstart.tasks.stages import DVC_STAGES, STAGES, Context
from coldstart.tasks.track import tracking_uri
from coldstart.tasks.version import check_stages
from coldstart.tasks.workspace import Workspace, atomic_write_text

EXIT_REJECTED = 3  # `coldstart round`: the round ran and was versioned, but answer files (or rows) were rejected


WARNED = "warned.json"  # in .coldstart/: the ontology warnings shown already, for which ontology and model


def _fresh_warnings(ws, params, warnings: list[str]) -> tuple[list[str], int]:
    """The ontology warnings a round's summary shows: each once per workspace, until the ontology
    (or the model reading it) changes. Returns (those not shown before, how many were). The
    record (JSON, MLflow, the Prefect run's log) keeps them all; `coldstart prompts` lists them."""
    key = hashlib.sha256(json.dumps([params.ontology.model_dump(mode="json"), params.model.name,
                                     params.model.pretrained], sort_keys=True, default=str).encode()).hexdigest()
    path = ws.state_dir / WARNED
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        seen = set(kept["warnings"]) if kept.get("ontology") == key else set()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        seen = set()
    fresh = [w for w in warnings if w not in seen]
    if fresh:
        try:
            path.parent.mkdir(exist_ok=True)
            atomic_write_text(path, json.dumps({"ontology": key, "warnings": sorted(seen | set(fresh))},
                                               ensure_ascii=False) + "\n")
        except OSError:
            pass  # shown again next time
    return fresh, len(warnings) - len(fresh)


def _summary(ws, record, started: float) -> str:
    """A round's terminal summary: its time counted from ``started`` (the process start: Python,
    imports and Prefect's start-up included, as a person waits for it), ontology warnings shown
    before left out, and how to open MLflow's UI."""
    shown, repeated = record, 0
    if record.train is not None and record.train.warnings:
        fresh, repeated = _fresh_warnings(ws, ws.params(), record.train.warnings)
        if repeated:
            shown = dataclasses.replace(shown, train=dataclasses.replace(record.train, warnings=fresh))
    if not record.nothing_new:
        shown = dataclasses.replace(shown, seconds_total=time.monotonic() - started)
    me, where = command("coldstart"), shlex.quote(str(ws.root))
    # The record's hints name the bare command; here they become commands one can paste.
    text = shown.describe().replace("`coldstart round --force`", f"`{me} round --force -w {where}`") \
        .replace("coldstart prompts --workspace DIR", f"{me} prompts --workspace {where}")
    lines = [text]
    if repeated:
        lines.append(f"  ({repeated} ontology warning(s) as in an earlier round, not repeated: "
                     f"{command('coldstart')} prompts -w {shlex.quote(str(ws.root))} lists them all)")
    if not record.nothing_new:

        uri = tracking_uri(ws, ws.params())
        lines.append("  MLflow UI   " + (uri if uri.startswith(("http://", "https://")) else
                                         f"{command('mlflow')} ui --backend-store-uri {shlex.quote(uri)}"))
    return "\n".join(lines)


def _warm_status(ws) -> None:
    """Derive the status now, while the modules it needs are loaded: the next `coldstart status`
    reads it back (.coldstart/status.json) instead of importing them."""
    try:
        workspace_status(ws)
    except Exception as e:  # best effort: status derives it itself
        logging.getLogger(__name__).debug("status not derived: %s", e)


def cmd_round(a) -> int:
    ws = Workspace.open(a.workspace)
    ws.params()  # a mistake in params.yaml fails now, before a Prefect server is started for the round
    started = a.started
    found = None
    if a.wait:  # a bad project title, token or server fails now, not after a whole round

        found = preflight(ws)
    with round_prefect(ws) as settings, temporary_settings(settings):
        record = labeling_round(workspace=a.workspace, force=a.force)
        batch = None
        if a.wait:

            # Nothing new: the open batch (the latest round's) is still what people should answer.
            batch = latest_batch(ws) if record.nothing_new else \
                record.round if record.select and record.select.batch_size else None
        if batch is not None:
            out = sys.stderr if a.json == "-" else sys.stdout
            if record.nothing_new:  # not the advice to drop files or --force: the wait is the way on
                print("\n".join([*record.rejections(), f"nothing new since round {record.round - 1}: round "
                                 f"{batch}'s batch is still open"]), file=out)
            else:
                print(_summary(ws, record, started), file=out)
            print(f"waiting for answers to round {batch}'s batch ...", file=out, flush=True)
            waited = wait_for_answers(ws, batch, answers=a.answers, timeout_min=a.timeout, found=found)
            print(f"  {waited.answered} of {waited.asked} answered in {waited.seconds:.0f} s"
                  + (f" ({waited.pushed} task(s) in Label Studio project {waited.project})" if waited.project else "")
                  + (f", {waited.rechecks} of them re-checks" if waited.rechecks else "")
                  + (": timed out, going on with what came" if waited.timed_out else ""), file=out, flush=True)
            if waited.answered or not record.nothing_new:
                started = time.monotonic()
                record = labeling_round(workspace=a.workspace, force=True)
    if not (record.nothing_new and batch is not None):  # else said above: nothing came, no round made
        print(_summary(ws, record, started), file=sys.stderr if a.json == "-" else sys.stdout)  # stdout: the JSON
    write_json(a.json, record.to_dict())
    _warm_status(ws)
    # The round is versioned, but a person must fix an answer file: say so in the exit status.
    return EXIT_REJECTED if record.intake and (record.intake.files_rejected or record.intake.rows_rejected) else 0


def cmd_stage(a) -> int:
    """One stage on its own (what `dvc repro` runs), without Prefect, MLflow or tagging. Each
    writes exactly the outputs dvc.yaml declares for it."""
    if a.name not in DVC_STAGES:  # audit, track and version run inside a round only
        raise ConfigError(f"coldstart stage: unknown stage {a.name!r}; the stages of dvc.yaml are "
                          f"{', '.join(DVC_STAGES)}")
    ws = Workspace.open(a.workspace)
    ctx = Context.of(ws)  # params.yaml validated first: its mistakes are the likelier ones
    check_stages(ws)
    with ws.lock():
        result = STAGES[a.name].run(ws, ctx)
    print(f"{a.name}: " + json.dumps(result and result.to_dict(), ensure_ascii=False, default=str))
    return 0


def cmd_demo(a) -> int:
    run_demo(Path(a.workspace), rounds=a.rounds, json_path=a.json, budget=a.budget, pretrained=a.pretrained,
             family=a.family)
    return 0
