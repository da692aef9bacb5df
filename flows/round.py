"""The labeling round: one Prefect flow composing the stages in ``tasks``.

    scan -> embed -> intake -> train -> relabel -> select -> track -> version

Correctness never depends on Prefect's or MLflow's run state: each stage reads and writes the
workspace's own files (content ids, the append-only label log, atomic writes), so a killed
round is simply run again.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
from prefect import flow

from coldstart.models.clip import ClipConfig, ClipModel, load_clip
from coldstart.models.errors import ConfigError, TrackingError, WorkspaceError
from coldstart.models.zeroshot import ZeroShotHead, prompt_warnings
from coldstart.tasks import train as train_mod
from coldstart.tasks.config import Params, RoundConfig, ViewsConfig
from coldstart.tasks.embed import embed_task
from coldstart.tasks.intake import human_labels, intake_task, read_events
from coldstart.tasks.relabel import relabel_task
from coldstart.tasks.scan import image_table, scan_task
from coldstart.tasks.select import latest_audit, select_task
from coldstart.tasks.store import EmbeddingStore, cached_text_weights
from coldstart.tasks.views import aggregate_views
from coldstart.tasks.track import record_audit, record_version, track_task
from coldstart.tasks.version import version_task
from coldstart.tasks.calibrate import apply_temperature, precision_threshold
from coldstart.tasks.workspace import Workspace, atomic_write_text, write_csv

log = logging.getLogger(__name__)


@dataclass
class RoundSummary:
    round: int
    images: int
    new_images: int
    quarantined: int
    embedded_new: int
    files_accepted: list[str]
    files_rejected: list[str]
    human_labels: int
    label_events: int
    events_added: int
    model: str  # "zero-shot" or "probe": what labeled the images without a human label
    model_reason: str
    probe_cv_accuracy: float | None
    zero_shot_accuracy: float | None
    auto_labeled: int
    below_threshold: int
    churn: float | None
    audit_accuracy: float | None  # of the previous round's auto labels, from its audit answers
    audit_n: int
    audit_round: int | None
    batch_size: int
    review_files: list[str]
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    embed_images_per_s: float = 0.0
    run_id: str | None = None
    commit: str | None = None
    tag: str | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # about the ontology (confusable, script)
    zs_probe_cv_accuracy: float | None = None
    audit_interval: tuple[float, float] | None = None  # Wilson 95% of audit_accuracy
    audit_per_class: dict[str, float] = field(default_factory=dict)  # labels with >= 5 audited
    threshold: float | None = None  # auto-accept confidence
    threshold_note: str = ""
    temperature: float = 1.0
    flags: int = 0  # human labels sent back for a second look
    strategy: str = ""
    batch_audit: int = 0  # of batch_size: the random audit sample

    def to_dict(self) -> dict:
        return asdict(self)


def clip_config(params: Params) -> ClipConfig:
    return ClipConfig(name=params.model.name, pretrained=params.model.pretrained, device=params.model.device,
                      precision=params.model.precision)


def current_chunks(ws: Workspace, clip: ClipModel, views: ViewsConfig):
    """Stream ``(ids, (n, D) global-view embeddings)`` of the images in the manifest, shard by shard."""
    table = image_table(ws)
    for ids, X in EmbeddingStore(ws.embeddings, clip.model_id, views.key("global")).iter_chunks():
        keep = [k for k, i in enumerate(ids) if i in table]
        if keep:
            yield [ids[k] for k in keep], X[keep]


@dataclass
class Pool:
    """One streaming pass over the store: what training needs, without holding every embedding
    (unless ``keep_all`` asked for them: small pools, for self-training and a single pass)."""

    n: int
    center: np.ndarray  # (D,) mean over every current image
    scale: np.ndarray  # (D,) std over every current image
    labeled_ids: list[str]
    labeled_X: np.ndarray  # (n_labeled, D)
    all_ids: list[str] | None = None
    all_X: np.ndarray | None = None  # (n, D) when kept

    def predict(self, ws: Workspace, clip: ClipModel, views: ViewsConfig, fn) -> tuple[list[str], np.ndarray]:
        """``fn`` over every current image: from memory when kept, else one more streaming pass
        that keeps only the ``(N, L)`` probabilities."""
        if self.all_X is not None:
            return self.all_ids, fn(self.all_X)
        ids, parts = [], []
        for chunk_ids, X in current_chunks(ws, clip, views):
            ids.extend(chunk_ids)
            parts.append(fn(X))
        return ids, np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def scan_pool(ws: Workspace, clip: ClipModel, humans: dict[str, str], views: ViewsConfig,
              keep_all: bool = False) -> Pool:
    n, total, total_sq, ids, rows = 0, 0.0, 0.0, [], []
    all_ids, chunks = [], []
    for chunk_ids, X in current_chunks(ws, clip, views):
        X64 = X.astype(np.float64)
        n, total, total_sq = n + len(X), total + X64.sum(0), total_sq + (X64 ** 2).sum(0)
        keep = [k for k, i in enumerate(chunk_ids) if i in humans]
        ids.extend(chunk_ids[k] for k in keep)
        rows.append(X[keep])
        if keep_all:
            all_ids.extend(chunk_ids)
            chunks.append(X)
    if n == 0:
        return Pool(0, np.zeros(0, np.float32), np.ones(0, np.float32), [], np.zeros((0, 0), np.float32))
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean ** 2, 0.0)) + 1e-6
    return Pool(n, mean.astype(np.float32), std.astype(np.float32), ids, np.concatenate(rows),
                all_ids if keep_all else None, np.concatenate(chunks) if keep_all else None)


def auto_accept_threshold(cfg: RoundConfig, oof_probs: np.ndarray | None, y: np.ndarray) -> tuple[float, str]:
    """The confidence above which auto labels count as accepted, and how it was chosen."""
    if cfg.threshold_mode != "precision" or oof_probs is None:
        return cfg.confidence_threshold, "fixed"
    found = precision_threshold(oof_probs, y, cfg.target_precision)
    if found is None:
        return 1.0, f"no confidence reaches precision {cfg.target_precision} yet"
    return found, f"precision >= {cfg.target_precision} on held-out labels"


def zero_shot_head(ws: Workspace, params: Params, clip: ClipModel) -> tuple[ZeroShotHead, list[str]]:
    """The ontology's zero-shot head for this model (text weights cached), and its warnings."""
    onto = params.ontology
    prompts = onto.prompts()
    weights = cached_text_weights(ws.text_cache, clip, prompts)
    warnings = prompt_warnings(clip, onto.scoring_classes, prompts, weights, onto.confusable_threshold)
    head = ZeroShotHead(weights, np.array(onto.label_of_class), len(onto.class_names), clip.logit_scale)
    return head, warnings


def classify(ws: Workspace, params: Params, clip: ClipModel, round_no: int, timers: dict[str, float]):
    """train + relabel: shared by the flow and `coldstart stage train|relabel`."""
    classes = params.ontology.class_names
    humans = human_labels(read_events(ws))
    missing = Counter(label for label in humans.values() if label not in classes)
    if missing:
        listed = ", ".join(f"{label!r} ({n} images)" for label, n in missing.most_common())
        raise ConfigError(f"params.yaml: ontology.classes no longer has labels that people gave: {listed}. Put the "
                          f"class(es) back (the answers are kept in data/labels/events.jsonl), or relabel those "
                          f"images with a new CSV in data/inbox/ first.")
    head, warnings = zero_shot_head(ws, params, clip)
    t = time.perf_counter()
    small = len(EmbeddingStore(ws.embeddings, clip.model_id, params.views.key("global"))) \
        <= params.train.self_training_max_pool
    pool = scan_pool(ws, clip, humans, params.views, keep_all=small)
    y = np.array([classes.index(humans[i]) for i in pool.labeled_ids], dtype=int)
    self_training = {}
    if params.train.self_training and len(y) and pool.all_X is not None:
        where = {i: k for k, i in enumerate(pool.all_ids)}
        self_training = dict(pool_X=pool.all_X, rows=np.array([where[i] for i in pool.labeled_ids]))
    trained = train_mod.train_task(pool.labeled_X, y, head, params.train, center=pool.center, scale=pool.scale,
                                   **self_training)
    train_mod.save(ws, trained, clip.model_id)
    flags = train_mod.label_issues(trained.oof_probs, y) if trained.oof_probs is not None and len(y) >= 10 else []
    write_flags(ws, [(pool.labeled_ids[i], classes[y[i]], classes[j], p) for i, j, p in flags], round_no)
    timers["train"] = time.perf_counter() - t
    t = time.perf_counter()
    T = trained.temperature
    base = trained.probe.head.predict_proba if trained.probe is not None else head.predict_proba
    model_id = f"{clip.model_id}+{trained.model}" + (f"-r{round_no:03d}" if trained.probe is not None else "")

    def predict(X: np.ndarray) -> np.ndarray:
        return apply_temperature(base(X), T)  # calibrated on held-out human labels

    ids, probs = pool.predict(ws, clip, params.views, predict)
    if len(ids) == 0:
        probs = np.zeros((0, len(classes)), np.float32)
    locations = None
    if params.views.tiles:
        onto = params.ontology
        has_negative = any(spec.negative for spec in onto.classes.values())
        negative = classes.index(onto.negative_label) if has_negative else None
        probs, locations = multiscale(ws, clip, params.views, ids, probs, predict, negative)
    table = image_table(ws)
    paths = [table[i] for i in ids]
    trained.threshold, trained.threshold_note = auto_accept_threshold(params.round, trained.oof_probs, y)
    relabeled = relabel_task(ws, ids, paths, probs, classes, humans, source=trained.model, model_id=model_id,
                             round_no=round_no, threshold=trained.threshold, locations=locations,
                             store=(clip.model_id, params.views.key("global")))
    timers["relabel"] = time.perf_counter() - t
    return trained, relabeled, humans, warnings


FLAG_FIELDS = ["image_id", "human_label", "suggested_label", "probability", "round"]


def write_flags(ws: Workspace, flags: list[tuple[str, str, str, float]], round_no: int) -> None:
    """data/labels/flags.csv: human labels the held-out model disagrees with, for a second look."""
    write_csv(ws.flags, FLAG_FIELDS, [dict(image_id=i, human_label=g, suggested_label=s, probability=f"{p:.4f}",
                                           round=round_no) for i, g, s, p in flags])


def multiscale(ws: Workspace, clip: ClipModel, views: ViewsConfig, ids: list[str], global_probs: np.ndarray,
               predict, negative: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Combine global and tile probabilities per class; locate each image's label in a tile.

    Returns ``(N, L)`` scores and, per image, its label's location "x0 y0 x1 y1" (original
    pixels, XYXY) when a tile gave the winning score, "" when the whole image did.
    """
    L = global_probs.shape[1]
    tiles: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    store = EmbeddingStore(ws.embeddings, clip.model_id, views.key("tiles"))
    wanted = set(ids)
    for chunk_ids, X, boxes in store.iter_boxes():
        probs = predict(X)
        start = 0
        while start < len(chunk_ids):  # an image's tiles are contiguous within a shard
            end = start
            while end < len(chunk_ids) and chunk_ids[end] == chunk_ids[start]:
                end += 1
            if chunk_ids[start] in wanted:
                tiles[chunk_ids[start]] = (probs[start:end], boxes[start:end])
            start = end
    empty = (np.zeros((0, L), np.float32), np.zeros((0, 4), np.int32))
    per_image = [tiles.get(i, empty) for i in ids]
    scores, winner = aggregate_views(global_probs, [p for p, _ in per_image], views.aggregate, views.topk, negative)
    locations = []
    for n, (_, boxes) in enumerate(per_image):
        w = winner[n, scores[n].argmax()]
        locations.append(" ".join(str(int(v)) for v in boxes[w - 1]) if w > 0 else "")
    return scores, locations


@flow(name="labeling_round")
def labeling_round(workspace: str = ".") -> RoundSummary:
    """Run one round on a workspace; returns its summary (also logged to MLflow)."""
    ws = Workspace.open(workspace)
    with ws.lock():
        return _round(ws)


def _round(ws: Workspace) -> RoundSummary:
    t0 = time.perf_counter()
    params = ws.params()
    round_no = ws.next_round()
    timers: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        timers[name] = time.perf_counter() - t
        return out

    scanned = timed("scan", scan_task, ws, params.scan, round_no)
    if scanned.images == 0:
        quarantined = f"; {scanned.quarantined} file(s) were quarantined, see data/store/quarantine.csv" \
            if scanned.quarantined else ""
        raise WorkspaceError(f"no usable images in {ws.images}{quarantined}. Put images there (nested folders are "
                             f"fine) and run the round again.")
    clip = timed("load_model", load_clip, clip_config(params))
    embedded = timed("embed", embed_task, ws, clip, params.model, params.views)
    taken = timed("intake", intake_task, ws, params.ontology.class_names, round_no)
    trained, relabeled, humans, warnings = classify(ws, params, clip, round_no, timers)
    audit = latest_audit(ws, humans, round_no)
    selected = timed("select", select_task, ws, params.round, round_no)
    events = read_events(ws)

    summary = RoundSummary(
        round=round_no, images=scanned.images, new_images=scanned.new_images, quarantined=scanned.quarantined,
        embedded_new=embedded.embedded, files_accepted=taken.files_accepted, files_rejected=taken.files_rejected,
        human_labels=len(humans), label_events=len(events), events_added=taken.events_added,
        model=trained.model, model_reason=trained.reason, probe_cv_accuracy=trained.probe_cv_accuracy,
        zero_shot_accuracy=trained.zero_shot_accuracy, auto_labeled=relabeled.auto,
        below_threshold=relabeled.below_threshold, churn=relabeled.churn,
        audit_accuracy=audit.accuracy if audit else None, audit_n=audit.n if audit else 0,
        audit_round=audit.round if audit else None, batch_size=selected.batch_size,
        review_files=selected.files, seconds=0.0, stage_seconds=timers,
        embed_images_per_s=embedded.images_per_s, problems=taken.problems, warnings=warnings,
        zs_probe_cv_accuracy=trained.zs_probe_cv_accuracy, audit_interval=audit.interval if audit else None,
        audit_per_class=audit.per_class() if audit else {}, threshold=trained.threshold,
        threshold_note=trained.threshold_note, temperature=trained.temperature, flags=selected.recheck,
        strategy=selected.strategy, batch_audit=selected.audit,
    )
    metrics = {
        "images": scanned.images, "new_images": scanned.new_images, "quarantined": scanned.quarantined,
        "duplicates": scanned.duplicates, "embedded_new": embedded.embedded, "embed_failed": embedded.failed,
        "human_labels": len(humans), "label_events": len(events), "events_added": taken.events_added,
        "files_accepted": len(taken.files_accepted), "files_rejected": len(taken.files_rejected),
        "auto_labeled": relabeled.auto, "below_threshold": relabeled.below_threshold,
        "mean_confidence": relabeled.mean_confidence, "label_churn": relabeled.churn,
        "probe_cv_accuracy": trained.probe_cv_accuracy, "zs_probe_cv_accuracy": trained.zs_probe_cv_accuracy,
        "zero_shot_accuracy_on_human": trained.zero_shot_accuracy, "chosen_cv_accuracy": trained.cv_accuracy,
        "used_probe": float(trained.probe is not None), "temperature": trained.temperature,
        "ece_before": trained.ece_before, "ece_after": trained.ece_after, "auto_accept_threshold": trained.threshold,
        "label_flags": selected.recheck, "audit_accuracy_prev_round": summary.audit_accuracy,
        "audit_low_prev_round": summary.audit_interval[0] if summary.audit_interval else None,
        "audit_high_prev_round": summary.audit_interval[1] if summary.audit_interval else None,
        **{f"audit_accuracy_prev_round.{k}": v for k, v in summary.audit_per_class.items()},
        "audit_n": summary.audit_n, "batch_size": selected.batch_size, "batch_audit": selected.audit,
        "embed_images_per_s": embedded.images_per_s or None,
        **{f"seconds_{k}": v for k, v in timers.items()},
    }
    # The round's own record (git-tracked with the tag): what `coldstart status` judges "done" by.
    atomic_write_text(ws.metrics_dir / "round.json", json.dumps({
        "round": round_no, "human_labels": len(humans), "auto_labeled": relabeled.auto, "churn": relabeled.churn,
        "audit_round": summary.audit_round, "audit_n": summary.audit_n, "audit_accuracy": summary.audit_accuracy,
        "audit_interval": summary.audit_interval, "model": trained.model, "cv_accuracy": trained.cv_accuracy,
    }, indent=2) + "\n")
    artifacts = [ws.root / f for f in selected.files] + [ws.quarantine, ws.metrics_dir / "train.json"]
    tracking_error = None
    t = time.perf_counter()
    try:
        metrics["seconds_total"] = time.perf_counter() - t0
        summary.run_id = track_task(ws, params, round_no, metrics, artifacts, trained.confusion,
                                    trained.probe.head if trained.probe is not None else None,
                                    trained.cv_accuracy if trained.probe is not None else None)
    except TrackingError as e:
        tracking_error = e  # version the data anyway; report after
    timers["track"] = time.perf_counter() - t
    t = time.perf_counter()
    summary.commit, summary.tag = version_task(
        ws, round_no, f"coldstart round {round_no}: {len(humans)} human labels, {relabeled.auto} auto labels "
        f"({trained.model})" + (f", mlflow run {summary.run_id}" if summary.run_id else ""))
    timers["version"] = time.perf_counter() - t
    if summary.run_id:
        record_version(ws, params, summary.run_id, summary.commit, summary.tag)
        if audit is not None and audit.n:
            record_audit(ws, params, audit.round, audit.accuracy, *audit.interval, audit.n)
    if tracking_error:
        raise tracking_error
    summary.seconds = time.perf_counter() - t0
    return summary
