"""The `coldstart` command. Only this layer prints; user mistakes exit 2 with a message."""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import os
import shlex
import sys
import time
from pathlib import Path

from coldstart.bench.cli import add_bench_parser
from coldstart.models.errors import ColdstartError, ConfigError
from coldstart.tasks.commands import command, write_json

LOG_FILE = Path(".coldstart") / "logs" / "coldstart.log"  # in the workspace: every library's log lines
def _process_seconds() -> float:
    """Seconds since this process started (its start-up and imports included)."""
    try:
        import psutil

        return max(0.0, time.time() - psutil.Process().create_time())
    except Exception:  # no psutil, or no /proc: since this module was imported
        return time.time() - _IMPORTED


_IMPORTED = time.time()


def _quiet_prefect() -> None:
    # Prefect's temporary server logs analytics noise; and no scheduled work needs heartbeats.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # our own summary says what happened
    # ... but a flow run's own log lines (get_run_logger: the round summary, the "nothing new"
    # reason, stage timings) must reach its run page in the Prefect UI: those two loggers log
    # INFO to the API whatever PREFECT_LOGGING_LEVEL says. Environment variables, so that the
    # runs `coldstart serve` starts in subprocesses get them too. coldstart's own loggers go to
    # the run page as well (Prefect's "extra loggers"); outside a run they are not sent.
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "coldstart")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    # MLflow's loggers go through ours (the log file), not its own stderr handler.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    if "prefect.logging.configuration" in sys.modules:  # Prefect configured its logging already (tests, notebooks)
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).setLevel(logging.INFO)


class TerminalFilter(logging.Filter):
    """What the terminal shows (without --verbose): coldstart's own messages from INFO up, and
    other libraries' errors. Everything else (MLflow's registry and database lines, alembic's,
    Python warnings such as timm's FutureWarnings) goes to the workspace's log file only. (DVC
    prints through handlers of its own, on its loggers.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "coldstart" or record.name.startswith("coldstart."):
            # zero-shot's ontology warnings: the round summary shows them (once, see _fresh_warnings)
            return record.levelno >= (logging.WARNING if record.name == "coldstart.models.zeroshot" else logging.INFO)
        return record.levelno >= logging.ERROR


class WorkspaceLogHandler(logging.handlers.RotatingFileHandler):
    """Appends to ``<workspace>/.coldstart/logs/coldstart.log`` (2 MB, then one older file kept),
    once the folder is a workspace (it has a params.yaml): the file is opened on the first record
    after that, and opened again if the workspace is rebuilt meanwhile (`coldstart demo`)."""

    def __init__(self, root: Path):
        self.root = root
        super().__init__(root / LOG_FILE, maxBytes=2_000_000, backupCount=1, encoding="utf-8", delay=True)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if not (self.root / "params.yaml").is_file():
                return
            if self.stream is not None and not os.path.exists(self.baseFilename):
                self.close()  # the workspace was deleted and made again: a new file
            Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            return
        super().emit(record)


def _configure_logging(args: argparse.Namespace) -> None:
    """The terminal gets coldstart's own messages (all of every logger with --verbose); the
    workspace's log file (LOG_FILE) gets every library's warnings and coldstart's, MLflow's
    and Prefect's INFO lines. Called once per ``main()``: it replaces what an earlier call set."""
    root = logging.getLogger()
    for h in list(root.handlers):
        # ours from an earlier call; Prefect's console handler where Prefect was imported first
        # (tests, notebooks: in the CLI, Prefect sees ours and adds none).
        if getattr(h, "coldstart", False) or type(h).__name__ == "PrefectConsoleHandler":
            root.removeHandler(h)
            if getattr(h, "coldstart", False):
                h.close()
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not args.verbose:
        terminal.addFilter(TerminalFilter())
    handlers: list[logging.Handler] = [terminal]
    folder = getattr(args, "workspace", None) or getattr(args, "directory", None)
    if folder:
        file = WorkspaceLogHandler(Path(folder).expanduser().resolve())
        file.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
        handlers.append(file)
    for h in handlers:
        h.coldstart = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(logging.INFO if args.verbose else logging.WARNING)
    for name in ("coldstart", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.INFO)
    # MLflow imported before main() (a notebook, a test) has put its own stderr handlers on
    # "mlflow" and "alembic" and stopped propagation: their lines must go through ours
    # (MLFLOW_CONFIGURE_LOGGING, set by _quiet_prefect, keeps a later import from doing it).
    for name in ("mlflow", "alembic"):
        lib = logging.getLogger(name)
        for h in list(lib.handlers):
            lib.removeHandler(h)
        lib.propagate = True
    logging.captureWarnings(True)  # warnings.warn (FutureWarning, ...) -> logger py.warnings -> the file


def cmd_init(a) -> int:
    from coldstart.tasks.version import init_workspace

    ws = init_workspace(a.directory, remote=a.remote)
    print(f"created workspace {ws.root}\n  put images in {ws.images}/, edit {ws.params_file}, then run:\n"
          f"  {command('coldstart')} round --workspace {shlex.quote(str(ws.root))}")
    return 0


WARNED = "warned.json"  # in .coldstart/: the ontology warnings shown already, for which ontology and model


def _fresh_warnings(ws, params, warnings: list[str]) -> tuple[list[str], int]:
    """The ontology warnings a round's summary shows: each once per workspace, until the ontology
    (or the model reading it) changes. Returns (those not shown before, how many were). The
    record (JSON, MLflow, the Prefect run's log) keeps them all; `coldstart prompts` lists them."""
    import hashlib

    from coldstart.tasks.workspace import atomic_write_text

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
    import dataclasses

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
        from coldstart.tasks.track import tracking_uri

        uri = tracking_uri(ws, ws.params())
        lines.append("  MLflow UI   " + (uri if uri.startswith(("http://", "https://")) else
                                         f"{command('mlflow')} ui --backend-store-uri {shlex.quote(uri)}"))
    return "\n".join(lines)


def _warm_status(ws) -> None:
    """Derive the status now, while the modules it needs are loaded: the next `coldstart status`
    reads it back (.coldstart/status.json) instead of importing them."""
    from coldstart.flows.status import workspace_status

    try:
        workspace_status(ws)
    except Exception as e:  # best effort: status derives it itself
        logging.getLogger(__name__).debug("status not derived: %s", e)


def cmd_round(a) -> int:
    from prefect.settings import temporary_settings

    from coldstart.flows.round import labeling_round
    from coldstart.flows.serve import round_prefect
    from coldstart.tasks.workspace import Workspace

    ws = Workspace.open(a.workspace)
    started = a.started
    found = None
    if a.wait:  # a bad project title, token or server fails now, not after a whole round
        from coldstart.tasks.labelstudio import preflight

        found = preflight(ws)
    with round_prefect(ws) as settings, temporary_settings(settings):
        record = labeling_round(workspace=a.workspace, force=a.force)
        batch = None
        if a.wait:
            from coldstart.flows.wait import latest_batch, wait_for_answers

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


def cmd_intake(a) -> int:
    """`coldstart intake --check FILE...`: validate answer files as a round would, merge nothing."""
    from coldstart.tasks.answerfiles import MAX_LISTED, read_answer_file
    from coldstart.tasks.errors import LabelFileError
    from coldstart.tasks.intake import RowSpool, validate_file
    from coldstart.tasks.workspace import Workspace

    ws = Workspace.open(a.workspace)
    params = ws.params()
    classes, keep_good = params.ontology.class_names, params.intake.on_error == "keep_good_rows"
    max_bytes = int(params.intake.max_file_mb * 1024 * 1024)
    bad = 0
    for name in a.check:
        path = Path(name)
        bad_rows = RowSpool() if keep_good else None
        try:
            # As a round reads it: no symlink or FIFO is followed, the size cap holds.
            rows, blank = validate_file(path, read_answer_file(path, name, max_bytes), ws, classes, bad_rows=bad_rows)
            if bad_rows:  # keep_good_rows: a round would merge the good rows and set these aside
                listed = [f"  - {why}" for _, (_, why) in zip(range(MAX_LISTED), bad_rows)]
                more = f"\n  ... and {len(bad_rows) - MAX_LISTED} more" if len(bad_rows) > MAX_LISTED else ""
                print(f"{name}: {len(bad_rows)} row(s) would be set aside, {len(rows)} answer(s) merged:\n"
                      + "\n".join(listed) + more)
                bad += 1
            else:
                print(f"{name}: ok, {len(rows)} answer(s), {blank} blank row(s)")
        except LabelFileError as e:
            print(str(e).replace(": rejected, nothing merged", ": would be rejected"))
            bad += 1
        except OSError as e:
            print(f"{name}: cannot read it ({e})")
            bad += 1
        finally:
            if bad_rows is not None:
                bad_rows.close()
    return 1 if bad else 0


def cmd_export(a) -> int:
    from coldstart.tasks.export import export
    from coldstart.tasks.workspace import Workspace

    result = export(Workspace.open(a.workspace), a.format, Path(a.out), round_no=a.round,
                    min_confidence=a.min_confidence, copy=not a.link)
    left = f" ({result.skipped} auto label(s) under --min-confidence left out)" if result.skipped else ""
    print(f"exported {result.rows} file(s) as {a.format} to {result.out}{left}")
    return 0


def cmd_regions(a) -> int:
    """Segment images with SAM, clean the masks up, label each with the workspace's labeler (the
    last round's chosen head, else zero-shot), and write COCO (and Label Studio) files."""
    from collections import Counter

    from coldstart.models.sam import load_sam
    from coldstart.tasks import labelstudio
    from coldstart.tasks.embed import load_model
    from coldstart.tasks.ontology import negative_labels
    from coldstart.tasks.regionexports import regions_to_coco, regions_to_labelstudio
    from coldstart.tasks.regions import region_head, segment_and_label
    from coldstart.tasks.samcache import resolve_checkpoint
    from coldstart.tasks.scan import sha256_file
    from coldstart.tasks.workspace import Workspace, atomic_write_text

    ws = Workspace.open(a.workspace)
    params = ws.params()
    cfg = resolve_checkpoint(ws, params.regions)
    params = params.model_copy(update={"regions": cfg})
    sam = load_sam(cfg)
    clip = load_model(params.model)
    head, labeler = region_head(ws, params, clip)
    classes, negatives = params.ontology.class_names, negative_labels(params.ontology)

    def named():
        for name in a.images:
            path = Path(name).expanduser().resolve()
            # as Label Studio's local files and the workspace's tables name images: relative to data/images/
            shown = path.relative_to(ws.images).as_posix() if path.is_relative_to(ws.images) else str(path)
            yield sha256_file(path), shown, path

    seg, labeled, label_s = segment_and_label(params, sam, clip, head, labeler, named())
    regions, images, found, seg_s = [r for r in labeled if not r.dropped], seg.images, seg.found, seg.seg_s
    cleaned = Counter({k: v for k, v in seg.cleaned.items()})
    cleaned["containment"] += sum(1 for r in labeled if r.dropped == "contained")
    negative = sum(1 for r in labeled if r.dropped == "negative_label")
    doc = regions_to_coco(regions, images, classes, negatives=negatives, description=f"coldstart regions ({labeler})")
    atomic_write_text(Path(a.coco), json.dumps(doc, ensure_ascii=False) + "\n")
    if a.labelstudio:
        out = Path(a.labelstudio)
        atomic_write_text(out, labelstudio.tasks_json(regions_to_labelstudio(regions, images, model_version=labeler)))
        atomic_write_text(out.with_name("label_config.xml"), labelstudio.label_config(
            classes, polygons=[c for c in classes if c not in negatives]))
    print(f"{len(regions)} region(s) on {len(images)} image(s), labeled by {labeler}")
    for image_id, shown, _, _ in images:
        labels = Counter(r.label for r in regions if r.image_id == image_id)
        masks, kept = found[image_id]
        listed = ", ".join(f"{label} {n}" for label, n in labels.most_common()) or "none"
        print(f"  {shown}: {masks} mask(s), {kept} after cleanup, {sum(labels.values())} region(s): {listed}")
    if any(cleaned.values()) or negative:
        print("  removed: " + ", ".join([f"{why} {n}" for why, n in cleaned.items() if n] +
                                         ([f"negative label {negative}"] if negative else [])))
    share = f" ({label_s / seg_s:.0%} of segmentation)" if seg_s > 0 else ""
    print(f"  segmentation {seg_s:.2f} s, labeling {label_s:.2f} s{share}")
    print(f"  COCO: {Path(a.coco).resolve()}" + (f"\n  Label Studio: {Path(a.labelstudio).resolve()} (config: "
                                                 f"{Path(a.labelstudio).resolve().with_name('label_config.xml')})"
                                                 if a.labelstudio else ""))
    return 0


EXIT_REJECTED = 3  # `coldstart round`: the round ran and was versioned, but answer files (or rows) were rejected


def cmd_status(a) -> int:
    from coldstart.flows.status import format_status, workspace_status
    from coldstart.tasks.workspace import Workspace

    s = workspace_status(Workspace.open(a.workspace))
    print(format_status(s), file=sys.stderr if a.json == "-" else sys.stdout)  # stdout: the JSON
    write_json(a.json, s)
    return 0


def cmd_report(a) -> int:
    """`coldstart report`: write a round's HTML report again, from the workspace as that round left it."""
    from coldstart.tasks.errors import WorkspaceError
    from coldstart.tasks.report import write_report
    from coldstart.tasks.workspace import Workspace

    ws = Workspace.open(a.workspace)
    tags = ws.round_tags()
    if not tags:
        raise WorkspaceError(f"{ws.root}: no round yet; run `{command('coldstart')} round -w "
                             f"{shlex.quote(str(ws.root))}` first")
    n = tags[-1] if a.round is None else a.round
    if n not in tags:
        raise WorkspaceError(f"there is no round {n} (rounds: {', '.join(map(str, tags))})")
    with ws.lock():
        path = write_report(ws, n, out=Path(a.out) if a.out else None)
    print(f"round {n}'s report: {path}")
    return 0


def cmd_stage(a) -> int:
    """One stage on its own (what `dvc repro` runs), without Prefect, MLflow or tagging. Each
    writes exactly the outputs dvc.yaml declares for it."""
    from coldstart.tasks.stages import DVC_STAGES, STAGES, Context
    from coldstart.tasks.version import check_stages
    from coldstart.tasks.workspace import Workspace

    if a.name not in DVC_STAGES:  # audit, track and version run inside a round only
        raise ConfigError(f"coldstart stage: unknown stage {a.name!r}; the stages of dvc.yaml are "
                          f"{', '.join(DVC_STAGES)}")
    ws = Workspace.open(a.workspace)
    ctx = Context.of(ws)  # params.yaml validated first: its mistakes are the likelier ones
    check_stages(ws)
    with ws.lock():
        result = STAGES[a.name].run(ws, ctx)
    print(f"{a.name}: " + json.dumps(result.to_dict(), ensure_ascii=False, default=str))
    return 0


def cmd_prompts(a) -> int:
    """Class weight matrix (saved as .npy), ontology warnings, and optionally the ablation."""
    import numpy as np

    from coldstart.tasks.embed import load_model
    from coldstart.tasks.heads import zero_shot_head
    from coldstart.tasks.labellog import human_labels, read_events
    from coldstart.tasks.pool import read_pool
    from coldstart.tasks.store import EmbeddingStore
    from coldstart.tasks.workspace import Workspace

    ws = Workspace.open(a.workspace)
    params = ws.params()
    clip = load_model(params.model)
    head, warnings = zero_shot_head(ws, params, clip)
    onto = params.ontology
    print(f"{clip.model_id}: {len(onto.scoring_classes)} classes -> {len(onto.class_names)} labels, "
          f"{sum(len(p) for p in onto.prompts())} prompts")
    for w in warnings:
        print(f"WARNING {w}")  # all of them: this command is where a person reviews the ontology
    if a.save:
        np.save(a.save, head.weights.astype(np.float32))
        print(f"saved the class weight matrix {head.weights.shape} (classes x dim, float32, ontology order) to {a.save}")
    if a.ablate:
        from coldstart.tasks.prompts import ablate

        humans = human_labels(read_events(ws))
        pool = read_pool(ws, EmbeddingStore(ws.embeddings, clip.model_id, params.views.key("global")), humans)
        if not pool.labeled_ids:
            print("no human labels yet: run a round and answer a review batch first")
            return 0
        y = np.array([onto.class_names.index(humans[i]) for i in pool.labeled_ids])
        rows = ablate(clip, onto, pool.labeled_X, y)
        print(f"\nzero-shot accuracy on {len(y)} human-labeled images:")
        for r in rows:
            extra = f"   (recall of its class {r.class_recall:.1%})" if r.class_recall is not None else ""
            print(f"  {r.accuracy:6.1%}  {r.variant}{extra}")
        write_json(a.json, [r.__dict__ for r in rows])
    return 0


def cmd_finetune(a) -> int:
    """Fine-tune the last vision blocks on the human labels; write a loadable checkpoint."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from coldstart.models.clip import load_clip
    from coldstart.models.finetune import FinetuneConfig, finetune, save_weights
    from coldstart.models.probe import LinearHead
    from coldstart.tasks.embed import ImageFiles, clip_config
    from coldstart.tasks.heads import load_chosen, zero_shot_head
    from coldstart.tasks.labellog import human_labels, read_events
    from coldstart.tasks.scan import image_table
    from coldstart.tasks.workspace import Workspace

    ws = Workspace.open(a.workspace)
    params = ws.params()
    clip = load_clip(clip_config(params.model), fresh=True)  # trained in place: never the shared copy
    humans = human_labels(read_events(ws))
    table = image_table(ws)
    items = [(str(ws.images / table[i]), params.ontology.class_names.index(label))
             for i, label in humans.items() if i in table]
    if len(items) < 2:
        print("coldstart: error: fine-tuning needs human labels; run rounds and answer review batches first",
              file=sys.stderr)
        return 2
    chosen = load_chosen(ws)
    head = chosen.head if chosen is not None and chosen.model_id == clip.model_id else None
    if not isinstance(head, LinearHead):  # zero-shot (or nothing trained yet): start from the text weights
        zs, _ = zero_shot_head(ws, params, clip)
        head = LinearHead(zs.label_weights(), np.zeros(zs.n_labels, np.float32))
    files = ImageFiles([p for p, _ in items], clip.preprocess, clip.image_size)
    labels = torch.tensor([y for _, y in items])

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, k):
            _, pixels, _, err = files[k]
            if pixels is None:
                raise RuntimeError(f"{files.paths[k]}: {err}")
            return pixels[0], labels[k]

    cfg = FinetuneConfig(blocks=a.blocks, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size)
    if clip.device.type != "cuda":
        print("note: no GPU visible; fine-tuning on the CPU is slow beyond the tiniest models", file=sys.stderr)
    loader = DataLoader(Pairs(), batch_size=cfg.batch_size, shuffle=True)
    finetune(clip, loader, head, cfg)
    out = Path(a.out) if a.out else ws.root / "data" / "finetuned" / f"{params.model.name}-ft{a.blocks}.safetensors"
    save_weights(clip, out)
    print(f"fine-tuned the last {a.blocks} vision block(s) of {clip.model_id} on {len(items)} human labels "
          f"for {a.epochs} epoch(s): {out}\nto use it: set model.pretrained: {ws.rel(out) if out.is_relative_to(ws.root) else out} "
          f"in params.yaml (the next round re-embeds every image), and version it: cd {shlex.quote(str(ws.root))} && "
          f"{command('dvc')} add {shlex.quote(str(out))}")
    return 0


def cmd_demo(a) -> int:
    from coldstart.flows.demo import run_demo

    run_demo(Path(a.workspace), rounds=a.rounds, json_path=a.json, budget=a.budget, pretrained=a.pretrained)
    return 0


def cmd_serve(a) -> int:
    from coldstart.flows.serve import serve

    serve(a.workspace, cron=a.cron, interval=a.interval, port=a.port)
    return 0


def cmd_api(a) -> int:
    from coldstart.flows.api import serve
    from coldstart.tasks.tokens import TOKEN_FILE, api_token
    from coldstart.tasks.workspace import Workspace

    ws = Workspace.open(a.workspace)
    api_token(ws)  # made now, so the message below can point at it
    print(f"coldstart api on http://{a.host}:{a.port} for {ws.root}\n  token: {ws.state_dir / TOKEN_FILE} "
          f"(send 'Authorization: Bearer <token>'; Label Studio: basic auth, any user, the token as password)",
          flush=True)
    serve(str(ws.root), host=a.host, port=a.port, max_body_mb=a.max_body_mb)
    return 0


def cmd_labelstudio(a) -> int:
    from coldstart.tasks import labelstudio
    from coldstart.tasks.workspace import Workspace

    ws = Workspace.open(a.workspace)
    params = ws.params()
    if a.labelstudio == "check":  # what `round --wait` checks first: title, server, token
        found = labelstudio.preflight(ws, params)
        if found is None:
            print("labelstudio.url is not set: rounds hand their batch over as files (data/review/)")
            return 0
        found.client.close()
        print(f"Label Studio at {found.url}: the token of {found.user} is accepted\n  project {found.title!r}: "
              + (f"id {found.project}" if found.project is not None else "not there yet; the first `round --wait` "
                 "creates it"))
        return 0
    sys.stdout.write(labelstudio.project_config(params.ontology, regions=params.regions.enabled))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coldstart", description="Label images with CLIP, spend human effort where it pays.")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show every library's log lines on the terminal (they are always kept in the workspace's "
                        ".coldstart/logs/coldstart.log)")
    sub = p.add_subparsers(dest="command", required=True)

    def ws_arg(sp):
        sp.add_argument("--workspace", "-w", default=".", help="workspace folder")

    s = sub.add_parser("init", help="create a workspace: git + DVC + local remote + params.yaml")
    s.add_argument("directory")
    s.add_argument("--remote", help="DVC remote folder (default: DIR/.dvc-remote)")
    s.set_defaults(fn=cmd_init)

    s = sub.add_parser("round", help="run one labeling round (Prefect flow labeling_round)")
    ws_arg(s)
    s.add_argument("--json", help="also write the round summary as JSON to this file (- for stdout)")
    s.add_argument("--force", action="store_true",
                   help="run the whole round even when nothing is new (by default such a round records nothing)")
    s.add_argument("--wait", action="store_true",
                   help="hand the batch to people (into Label Studio when labelstudio.url is set), wait for their "
                        "answers, then run the next round on them")
    s.add_argument("--answers", type=int, help="--wait: answers to wait for (default labelstudio.wait_answers, "
                                               "else the whole batch)")
    s.add_argument("--timeout", type=float, metavar="MIN", help="--wait: give up waiting after this many minutes "
                                                                "(default labelstudio.wait_timeout_min)")
    s.set_defaults(fn=cmd_round)

    s = sub.add_parser("intake", help="check answer files as a round would, without merging anything")
    ws_arg(s)
    s.add_argument("--check", nargs="+", required=True, metavar="FILE",
                   help="CSV or Label Studio JSON files; every problem is printed, exit status 1 if any")
    s.set_defaults(fn=cmd_intake)

    s = sub.add_parser("export", help="the labeled files as csv, an ImageFolder tree, Label Studio tasks or COCO")
    ws_arg(s)
    s.add_argument("--format", required=True, choices=["csv", "imagefolder", "labelstudio", "coco", "coco-regions"],
                   help="coco-regions: the regions table (SAM masks, one RLE annotation each) as COCO instances")
    s.add_argument("--out", required=True,
                   help="output file (csv, labelstudio, coco, coco-regions) or new folder (imagefolder)")
    s.add_argument("--round", type=int, default=None, help="as this round left the labels (default: the latest)")
    s.add_argument("--min-confidence", type=float, default=None,
                   help="leave out auto labels less confident than this (human labels are always kept)")
    s.add_argument("--link", action="store_true", help="imagefolder: symlink the images (a read-only view that "
                   "takes no space) instead of copying them")
    s.add_argument("--copy", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("regions", help="segment images with SAM and label every mask with the workspace's labeler "
                       "(the last round's chosen head, else zero-shot); writes COCO instances JSON (RLE masks) and "
                       "optionally Label Studio polygon pre-annotations. Knobs: params.yaml regions")
    ws_arg(s)
    s.add_argument("images", nargs="+", metavar="IMAGE", help="image files (anywhere; those inside data/images/ are "
                   "named relative to it, as Label Studio's local files serve them)")
    s.add_argument("--coco", required=True, metavar="FILE", help="write the regions as COCO instances JSON here")
    s.add_argument("--labelstudio", metavar="FILE", default=None,
                   help="also write Label Studio tasks with polygon pre-annotations here, and label_config.xml beside it")
    s.set_defaults(fn=cmd_regions)

    s = sub.add_parser("status", help="summarise a workspace")
    ws_arg(s)
    s.add_argument("--json", help="also write the status as JSON to this file (- for stdout)")
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser("report", help="write a round's HTML report (data/reports/round-NNN.html) again")
    ws_arg(s)
    s.add_argument("--round", type=int, default=None, help="the round (default: the latest)")
    s.add_argument("--out", default=None, help="write it to this file instead of data/reports/round-NNN.html")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("stage", help="run one stage alone (used by dvc.yaml / dvc repro)")
    s.add_argument("name", help="a stage of dvc.yaml (scan, embed, ...: an unknown name gets the list)")
    ws_arg(s)
    s.set_defaults(fn=cmd_stage)

    s = sub.add_parser("prompts", help="class weight matrix, confusable-class warnings, prompt ablation")
    ws_arg(s)
    s.add_argument("--save", help="write the class weight matrix (classes x dim, float32) to this .npy file")
    s.add_argument("--ablate", action="store_true", help="accuracy of each prompt variant on the human labels")
    s.add_argument("--json", help="with --ablate: also write the ablation rows as JSON")
    s.set_defaults(fn=cmd_prompts)

    s = sub.add_parser("finetune", help="fine-tune the last vision blocks on the human labels (GPU)")
    ws_arg(s)
    s.add_argument("--blocks", type=int, default=2, help="last vision transformer blocks to train")
    s.add_argument("--epochs", type=int, default=3)
    s.add_argument("--lr", type=float, default=1e-5)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--out", help="checkpoint path (default: data/finetuned/<model>-ft<blocks>.safetensors)")
    s.set_defaults(fn=cmd_finetune)

    s = sub.add_parser("demo", help="3 simulated rounds on scikit-learn's digits")
    s.add_argument("--workspace", "-w", default="demo-workspace", help="where to build the demo workspace")
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--budget", type=int, default=50)
    s.add_argument("--pretrained", default="laion2b_s34b_b79k", help="ViT-B-32 weights (tag or local file)")
    s.add_argument("--json", help="write the per-round table as JSON")
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("serve", help="run rounds on a schedule through a Prefect server")
    ws_arg(s)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--cron", help="cron schedule, e.g. '0 2 * * *'")
    g.add_argument("--interval", type=float, help="seconds between rounds")
    s.add_argument("--port", type=int, default=4200, help="port of the Prefect server started when none is configured")
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("api", help="the web service: Label Studio ML backend (predict, webhook), signed image URLs, "
                                   "and the inspection endpoint POST /v1/classify")
    ws_arg(s)
    s.add_argument("--host", default="127.0.0.1", help="listen address (not loopback: reachable from other machines)")
    s.add_argument("--port", type=int, default=8750)
    s.add_argument("--max-body-mb", type=float, default=20.0, help="bigger request bodies get 413 before they are read")
    s.set_defaults(fn=cmd_api)

    s = sub.add_parser("labelstudio", help="Label Studio helpers")
    lsub = s.add_subparsers(dest="labelstudio", required=True)
    ls = lsub.add_parser("config", help="print the labeling config (XML) for a Label Studio project: the ontology's "
                                        "classes as choices, and polygons when regions are enabled")
    ws_arg(ls)
    ls.set_defaults(fn=cmd_labelstudio)
    ls = lsub.add_parser("check", help="check labelstudio.url, the token and the project title as `round --wait` "
                                       "does before it starts")
    ws_arg(ls)
    ls.set_defaults(fn=cmd_labelstudio)

    add_bench_parser(sub)
    _describe(p)
    return p


def _describe(parser: argparse.ArgumentParser) -> None:
    """Every subcommand's help page: its one-line help as the description, and the defaults shown."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sp in action.choices.items():
                sp.description = sp.description or helps.get(name)
                sp.formatter_class = argparse.ArgumentDefaultsHelpFormatter
                _describe(sp)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.started = time.monotonic() - _process_seconds()  # a round's printed time counts from the process start
    _configure_logging(args)
    if not args.verbose:
        # Prefect logs a failed run with its traceback; the Prefect UI keeps it (API handler),
        # the terminal gets our one-line message instead.
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).propagate = False
    _quiet_prefect()
    try:
        return args.fn(args)
    except ColdstartError as e:
        print(f"coldstart: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("coldstart: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
