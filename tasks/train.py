"""train: pick the labeler for this round by cross-validation on the human labels.

Candidates, all scored on the same human labels: zero-shot (never saw them: scored directly),
the plain probe and the zero-shot-initialised probe (out-of-fold predictions). The winner's
out-of-fold probabilities then fit a temperature (calibration), an auto-accept threshold for a
target precision, and flag human labels that look wrong (confident learning).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from coldstart.models.probe import ProbeFit, SelfTraining, fit_probe, fit_zs_probe
from coldstart.models.zeroshot import ZeroShotHead
from coldstart.tasks.calibrate import (
    calibrate_held_out,
    expected_calibration_error,
)
from coldstart.tasks.config import Params, RoundConfig, TrainConfig
from coldstart.tasks.heads import CHOSEN_FILE, HEAD_FILE, current_human_labels, pending_reasks, zero_shot_head
from coldstart.tasks.labellog import read_events, region_answers
from coldstart.tasks.ontology import map_answers, orphan_note
from coldstart.tasks.pool import read_pool
from coldstart.tasks.regiontable import crop_store
from coldstart.tasks.result import IN_MEMORY, StageResult
from coldstart.tasks.scan import image_table
from coldstart.tasks.store import EmbeddingStore
from coldstart.tasks.workspace import Workspace, atomic_write_bytes, atomic_write_text, read_csv, write_csv

if TYPE_CHECKING:  # the relabel stage imports this module: keep torch out of it
    from coldstart.models.clip import ClipModel

log = logging.getLogger(__name__)

FLAG_FIELDS = ["image_id", "human_label", "suggested_label", "probability", "round"]


@dataclass
class TrainResult(StageResult):
    n_labels: int
    model: str  # "zero-shot", "probe" or "zs-probe": what labels the images without a human label
    reason: str
    probe_cv_accuracy: float | None
    zs_probe_cv_accuracy: float | None
    zero_shot_accuracy: float | None  # on the human labels
    confusion: list[list[int]] | None  # chosen model's out-of-fold confusion matrix (rows: truth)
    probe: ProbeFit | None = field(default=None, metadata=IN_MEMORY)  # the chosen probe (None: zero-shot)
    fitted: dict[str, ProbeFit] = field(default_factory=dict, metadata=IN_MEMORY)  # every probe fitted
    temperature: float = 1.0
    ece_before: float | None = None
    ece_after: float | None = None
    oof_probs: np.ndarray | None = field(default=None, metadata=IN_MEMORY)  # (n_labels, L), calibrated
    threshold: float | None = None  # auto-accept confidence used this round
    threshold_note: str = ""
    flags: int = 0  # human labels the held-out model disagrees with (data/labels/flags.csv)
    region_labels: int = 0  # of n_labels: regions people labeled (their crops' embeddings)
    warnings: list[str] = field(default_factory=list)  # about the ontology (confusable, script)

    @property
    def cv_accuracy(self) -> float | None:
        return {"zero-shot": self.zero_shot_accuracy, "probe": self.probe_cv_accuracy,
                "zs-probe": self.zs_probe_cv_accuracy}[self.model]

    def metrics(self) -> dict[str, float | None]:
        return {"probe_cv_accuracy": self.probe_cv_accuracy, "zs_probe_cv_accuracy": self.zs_probe_cv_accuracy,
                "zero_shot_accuracy_on_human": self.zero_shot_accuracy, "chosen_cv_accuracy": self.cv_accuracy,
                "used_probe": float(self.model != "zero-shot"), "temperature": self.temperature,
                "ece_before": self.ece_before, "ece_after": self.ece_after,
                "auto_accept_threshold": self.threshold}


def choose_labeler(X: np.ndarray, y: np.ndarray, zero_shot: ZeroShotHead, cfg: TrainConfig,
          center: np.ndarray | None = None, scale: np.ndarray | None = None,
          pool_X: np.ndarray | None = None, rows: np.ndarray | None = None) -> TrainResult:
    """``X`` ``(N, D)`` embeddings of the human-labeled images, ``y`` ``(N,)`` label indices.

    ``center``/``scale`` ``(D,)``: feature statistics over every image, for the plain probe.
    ``pool_X`` (every image) and ``rows`` (each labeled sample's row in it) enable self-training.
    """
    n, L = len(y), zero_shot.n_labels
    if n == 0:
        return TrainResult(n_labels=0, model="zero-shot", reason="no human labels yet", probe_cv_accuracy=None,
                           zs_probe_cv_accuracy=None, zero_shot_accuracy=None, confusion=None)
    zs_probs = zero_shot.predict_proba(X)
    zs_acc = float((zs_probs.argmax(1) == y).mean())
    if n < cfg.min_labels or len(np.unique(y)) < 2 or cfg.model == "zero-shot":
        why = ("train.model is zero-shot" if cfg.model == "zero-shot" else
               f"{n} human label(s) of {len(np.unique(y))} class(es): too few for a probe "
               f"(need train.min_labels={cfg.min_labels} and two classes)")
        return _finish(TrainResult(n_labels=n, model="zero-shot", reason=why, probe_cv_accuracy=None,
                                   zs_probe_cv_accuracy=None, zero_shot_accuracy=zs_acc, confusion=None), zs_probs, y)
    st = None
    if pool_X is not None and cfg.self_training:
        assert rows is not None, "pool_X comes with rows: each labeled sample's row in it"
        st = SelfTraining(pool_X, rows, cfg.self_training, share=cfg.pseudo_share, agreement=cfg.pseudo_agreement)
    fitted: dict[str, ProbeFit] = {}
    if cfg.model in ("auto", "probe"):
        fitted["probe"] = fit_probe(X, y, L, C=cfg.C, folds=cfg.cv_folds, seed=cfg.seed, center=center, scale=scale,
                                    self_training=st)
    if cfg.model in ("auto", "zs-probe"):
        fitted["zs-probe"] = fit_zs_probe(X, y, zero_shot.label_weights(), folds=cfg.cv_folds, seed=cfg.seed,
                                          self_training=st)
    scores = {"zero-shot": zs_acc, **{k: f.cv_accuracy for k, f in fitted.items()}}
    # max() keeps the first of equals: ties go to the simpler model (zero-shot, then zs-probe).
    best = max(["zero-shot", "zs-probe", "probe"], key=lambda k: scores.get(k, -1.0)) if cfg.model == "auto" \
        else cfg.model
    listed = ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
    reason = f"{best} chosen on {n} human labels by CV accuracy ({listed})"
    chosen = fitted.get(best)
    result = TrainResult(n_labels=n, model=best, reason=reason,
                         probe_cv_accuracy=fitted["probe"].cv_accuracy if "probe" in fitted else None,
                         zs_probe_cv_accuracy=fitted["zs-probe"].cv_accuracy if "zs-probe" in fitted else None,
                         zero_shot_accuracy=zs_acc, confusion=None, probe=chosen, fitted=fitted)
    return _finish(result, chosen.oof_probs if chosen else zs_probs, y)


def _finish(result: TrainResult, oof: np.ndarray, y: np.ndarray) -> TrainResult:
    """Confusion matrix, temperature and ECE from the chosen model's held-out probabilities."""
    L = oof.shape[1]
    confusion = np.zeros((L, L), dtype=int)
    np.add.at(confusion, (y, oof.argmax(1)), 1)
    result.confusion = confusion.tolist()
    result.temperature, result.oof_probs = calibrate_held_out(oof, y)
    result.ece_before = expected_calibration_error(oof, y)
    result.ece_after = expected_calibration_error(result.oof_probs, y)
    return result


def label_issues(oof_probs: np.ndarray, y: np.ndarray, min_prob: float = 0.5) -> list[tuple[int, int, float]]:
    """Human labels that look wrong (confident learning, Northcutt et al.): sample i, labeled g,
    is flagged when some other label j reaches its class threshold t_j (the mean out-of-fold
    probability of j among samples labeled j, but at least ``min_prob``: a weak model must not
    second-guess people) and is the most likely of those that do.

    Returns [(sample index, suggested label, its probability)], most confident first.
    """
    L = oof_probs.shape[1]
    thresholds = np.array([max(min_prob, oof_probs[y == j, j].mean()) if (y == j).any() else 1.1 for j in range(L)])
    flags = []
    for i, g in enumerate(y):
        above = np.flatnonzero(oof_probs[i] >= thresholds)
        if len(above):
            j = int(above[np.argmax(oof_probs[i, above])])
            if j != g:
                flags.append((i, j, float(oof_probs[i, j])))
    return sorted(flags, key=lambda f: -f[2])


def bounded_precision_threshold(probs: np.ndarray, y: np.ndarray, target: float, alpha: float = 0.05
                                ) -> tuple[float, int] | None:
    """The lowest confidence t whose held-out predictions with confidence >= t are right in at
    least ``target`` *with confidence 1 - alpha*: the one-sided Clopper-Pearson lower bound of
    their precision clears ``target``. Returns (t, how many held-out labels are above it), or None.

    A bound, not the point value: with 20 held-out labels all right, the observed precision is
    100% but the bound is 86%. Walking down from the most confident, the candidates are tested
    in a fixed sequence (Learn-then-Test, Angelopoulos et al. 2021): from the first threshold
    that clears the bound down to the last one before the first that does not, instead of the
    lowest of all that clear it, which would pick a lucky stretch among many tries. Only the
    ends of tie groups are candidates (the accepted set is every label with confidence >= t).
    With target 0.95 it takes 59 held-out labels, none wrong, before any t qualifies.
    """
    from scipy.stats import beta

    conf, right = probs.max(1), probs.argmax(1) == y
    order = np.argsort(-conf, kind="stable")
    c, hits = conf[order], np.cumsum(right[order])
    n = np.arange(1, len(c) + 1)
    ends = np.flatnonzero(np.append(c[:-1] > c[1:], True))
    # One-sided Clopper-Pearson lower bound of each candidate's precision (0 with no hit).
    lower = np.where(hits[ends] > 0, beta.ppf(alpha, np.maximum(hits[ends], 1), n[ends] - hits[ends] + 1), 0.0)
    ok = lower >= target
    if not ok.any():
        return None
    first = int(np.argmax(ok))
    fails = np.flatnonzero(~ok[first:])
    last = ends[first + (int(fails[0]) if len(fails) else len(ok) - first) - 1]
    return float(c[last]), int(last) + 1


def auto_accept_threshold(cfg: RoundConfig, oof_probs: np.ndarray | None, y: np.ndarray) -> tuple[float, str]:
    """The confidence above which auto labels count as accepted, and how it was chosen.

    ``round.review_policy: critical`` accepts none (every auto label goes to review). With
    ``threshold_mode: precision`` it is the lowest confidence whose held-out precision is at
    least ``target_precision`` with 95% confidence (``bounded_precision_threshold``). The
    held-out labels are mostly strategy-picked, harder than a random image of the pool at the
    same confidence, which errs on the safe side."""
    if cfg.review_policy == "critical":
        return 1.0, "review_policy critical: every auto label goes to review"
    if cfg.threshold_mode != "precision" or oof_probs is None:
        return cfg.confidence_threshold, "fixed"
    found = bounded_precision_threshold(oof_probs, y, cfg.target_precision)
    if found is None:
        return 1.0, (f"no confidence shows precision >= {cfg.target_precision} with 95% confidence yet "
                     f"({len(y)} held-out labels)")
    return found[0], (f"precision >= {cfg.target_precision} with 95% confidence (one-sided Clopper-Pearson bound) "
                      f"on the {found[1]} held-out labels above it")


def region_samples(ws: Workspace, params: Params, clip: ClipModel) -> tuple[np.ndarray, np.ndarray]:
    """``(R, D)`` crop embeddings and ``(R,)`` label indices of the regions people labeled (the
    latest answer per region), on images still in the workspace, whose crop the regions stage
    has embedded with this model (an outline drawn this round is embedded by this round's
    regions stage, after training: it joins the next round)."""
    classes = params.ontology.labels
    answers = region_answers(read_events(ws))
    if not answers:
        return np.zeros((0, 0), np.float32), np.zeros(0, int)
    # As for images: "none of these" is a label; a removed class's answers count as it; one
    # waiting to be asked again (a class was adopted from its region's proposal) trains nothing.
    mapped = map_answers({rid: e.label for rid, e in answers.items()}, classes,
                         pending_reasks(ws, answers, regions=True)).labels
    store = crop_store(ws, clip.model_id, params.regions)
    have, current = store.ids(), image_table(ws)
    ids = sorted(rid for rid, e in answers.items() if rid in have and e.image_id in current and rid in mapped)
    if not ids:
        return np.zeros((0, 0), np.float32), np.zeros(0, int)
    _, X = store.load(ids)
    return X, np.array([classes.index(mapped[rid]) for rid in ids], dtype=int)


def train(ws: Workspace, params: Params, clip: ClipModel, round_no: int) -> TrainResult:
    """The train stage: pick and fit this round's labeler on the human labels.

    Writes exactly its declared outputs: data/models/ (the chosen head and chosen.json),
    data/labels/flags.csv (human labels to re-check) and data/metrics/train.json.
    """
    classes = params.ontology.labels
    answers = current_human_labels(ws, classes)
    humans = answers.labels
    zero_shot, warnings = zero_shot_head(ws, params, clip)
    if note := orphan_note(answers.orphaned):
        warnings = [note, *warnings]  # first: the summary shows five
    store = EmbeddingStore(ws.embeddings, clip.model_id, params.views.key("global"))
    small = len(store) <= params.train.self_training_max_pool
    pool = read_pool(ws, store, humans, keep_all=small and bool(params.train.self_training))
    y = np.array([classes.index(humans[i]) for i in pool.labeled_ids], dtype=int)
    X = pool.labeled_X
    extra = {}
    if params.train.self_training and len(y) and pool.all_X is not None:
        extra = dict(pool_X=pool.all_X, rows=pool.rows_of_labeled())
    # Regions people labeled are samples too: their crops live in the same CLIP space as whole
    # images (a crop is an image of one object), so they teach the head what each class looks like.
    region_X, region_y = region_samples(ws, params, clip)
    if len(region_y):
        X = np.concatenate([X.reshape(-1, region_X.shape[1]), region_X])
        if extra:
            extra = dict(pool_X=np.concatenate([extra["pool_X"], region_X]), rows=np.concatenate(
                [extra["rows"], len(extra["pool_X"]) + np.arange(len(region_y))]))
        y = np.concatenate([y, region_y])
    result = choose_labeler(X, y, zero_shot, params.train, center=pool.center, scale=pool.scale, **extra)
    result.region_labels = len(region_y)
    result.warnings = warnings
    result.threshold, result.threshold_note = auto_accept_threshold(params.round, result.oof_probs, y)
    flags = label_issues(result.oof_probs, y) if result.oof_probs is not None and len(y) >= 10 else []
    flags = [f for f in flags if f[0] < len(pool.labeled_ids)]  # images only: flags.csv names images
    result.flags = len(flags)
    # A flag raised in an earlier round keeps that round: unchanged flags, unchanged file.
    raised = {(f["image_id"], f["human_label"], f["suggested_label"]): f["round"] for f in read_csv(ws.flags)}
    rows = [dict(image_id=pool.labeled_ids[i], human_label=classes[y[i]], suggested_label=classes[j],
                 probability=f"{p:.4f}") for i, j, p in flags]
    write_csv(ws.flags, FLAG_FIELDS, [dict(r, round=raised.get((r["image_id"], r["human_label"], r["suggested_label"]),
                                                               round_no)) for r in rows])
    save(ws, result, zero_shot, clip.model_id)
    return result


def save(ws: Workspace, result: TrainResult, zero_shot: ZeroShotHead, model_id: str) -> None:
    """Write data/models/{head.npz,chosen.json} and data/metrics/train.json."""
    arrays: dict[str, np.ndarray] = (dict(weight=result.probe.head.weight, bias=result.probe.head.bias) if result.probe is not None else
              dict(weights=zero_shot.weights, label_of_class=zero_shot.label_of_class,
                   n_labels=np.asarray(zero_shot.n_labels), logit_scale=np.asarray(zero_shot.logit_scale)))
    buf = io.BytesIO()
    np.savez(buf, **cast(dict[str, Any], arrays))  # Any: numpy's stub would match **arrays against its keywords
    atomic_write_bytes(ws.model_dir / HEAD_FILE, buf.getvalue())
    # Named by content: a head retrained to the same weights (nothing new this round) keeps its
    # name, so the labels it gives are recorded as unchanged and DVC stores nothing new.
    h = hashlib.sha256(repr(float(result.temperature)).encode())
    for name in sorted(arrays):
        h.update(name.encode() + np.ascontiguousarray(arrays[name]).tobytes())
    labeler = f"{model_id}+{result.model}-{h.hexdigest()[:10]}"
    atomic_write_text(ws.model_dir / CHOSEN_FILE, json.dumps(
        {"model": result.model, "model_id": model_id, "labeler_id": labeler, "temperature": result.temperature,
         "threshold": result.threshold}, indent=2) + "\n")
    keys = ("n_labels", "model", "reason", "probe_cv_accuracy", "zs_probe_cv_accuracy", "zero_shot_accuracy",
            "temperature", "ece_before", "ece_after", "threshold")
    atomic_write_text(ws.metrics_dir / "train.json", json.dumps({k: getattr(result, k) for k in keys}, indent=2) + "\n")
