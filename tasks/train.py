"""train: pick the labeler for this round by cross-validation on the human labels.

Candidates, all scored on the same human labels: zero-shot (never saw them: scored directly),
the plain probe and the zero-shot-initialised probe (out-of-fold predictions). The winner's
out-of-fold probabilities then fit a temperature (calibration), an auto-accept threshold for a
target precision, and flag human labels that look wrong (confident learning).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from coldstart.models.probe import LinearHead, ProbeFit, SelfTraining, fit_probe, fit_zs_probe
from coldstart.models.zeroshot import ZeroShotHead
from coldstart.tasks.calibrate import apply_temperature, expected_calibration_error, fit_temperature
from coldstart.tasks.config import TrainConfig
from coldstart.tasks.workspace import Workspace, atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

PROBE_FILE = "probe.npz"


@dataclass
class TrainResult:
    n_labels: int
    model: str  # "zero-shot", "probe" or "zs-probe": what labels the images without a human label
    reason: str
    probe_cv_accuracy: float | None
    zs_probe_cv_accuracy: float | None
    zero_shot_accuracy: float | None  # on the human labels
    confusion: list[list[int]] | None  # chosen model's out-of-fold confusion matrix (rows: truth)
    probe: ProbeFit | None  # the chosen probe (None for zero-shot)
    fitted: dict[str, ProbeFit] = field(default_factory=dict)  # every probe fitted this round
    temperature: float = 1.0
    ece_before: float | None = None
    ece_after: float | None = None
    oof_probs: np.ndarray | None = None  # (n_labels, L), calibrated, of the chosen model
    threshold: float | None = None  # auto-accept confidence used this round
    threshold_note: str = ""

    @property
    def cv_accuracy(self) -> float | None:
        return {"zero-shot": self.zero_shot_accuracy, "probe": self.probe_cv_accuracy,
                "zs-probe": self.zs_probe_cv_accuracy}[self.model]


def train(X: np.ndarray, y: np.ndarray, zero_shot: ZeroShotHead, cfg: TrainConfig,
          center: np.ndarray | None = None, scale: np.ndarray | None = None,
          pool_X: np.ndarray | None = None, rows: np.ndarray | None = None) -> TrainResult:
    """``X`` ``(N, D)`` embeddings of the human-labeled images, ``y`` ``(N,)`` label indices.

    ``center``/``scale`` ``(D,)``: feature statistics over every image, for the plain probe.
    ``pool_X`` (every image) and ``rows`` (each labeled sample's row in it) enable self-training.
    """
    n, L = len(y), zero_shot.n_labels
    if n == 0:
        return TrainResult(0, "zero-shot", "no human labels yet", None, None, None, None, None)
    zs_probs = zero_shot.predict_proba(X)
    zs_acc = float((zs_probs.argmax(1) == y).mean())
    if n < cfg.min_labels or len(np.unique(y)) < 2 or cfg.model == "zero-shot":
        why = ("train.model is zero-shot" if cfg.model == "zero-shot" else
               f"{n} human label(s) of {len(np.unique(y))} class(es): too few for a probe "
               f"(need train.min_labels={cfg.min_labels} and two classes)")
        return _finish(TrainResult(n, "zero-shot", why, None, None, zs_acc, None, None), zs_probs, y)
    st = dict(self_training=SelfTraining(pool_X, rows, cfg.self_training)
              if pool_X is not None and cfg.self_training else None)
    fitted: dict[str, ProbeFit] = {}
    if cfg.model in ("auto", "probe"):
        fitted["probe"] = fit_probe(X, y, L, C=cfg.C, folds=cfg.cv_folds, seed=cfg.seed, center=center, scale=scale, **st)
    if cfg.model in ("auto", "zs-probe"):
        fitted["zs-probe"] = fit_zs_probe(X, y, zero_shot.label_weights(), folds=cfg.cv_folds, seed=cfg.seed, **st)
    scores = {"zero-shot": zs_acc, **{k: f.cv_accuracy for k, f in fitted.items()}}
    # max() keeps the first of equals: ties go to the simpler model (zero-shot, then zs-probe).
    best = max(["zero-shot", "zs-probe", "probe"], key=lambda k: scores.get(k, -1.0)) if cfg.model == "auto" \
        else cfg.model
    listed = ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
    reason = f"{best} chosen on {n} human labels by CV accuracy ({listed})"
    chosen = fitted.get(best)
    result = TrainResult(n, best, reason, fitted["probe"].cv_accuracy if "probe" in fitted else None,
                         fitted["zs-probe"].cv_accuracy if "zs-probe" in fitted else None, zs_acc, None, chosen, fitted)
    return _finish(result, chosen.oof_probs if chosen else zs_probs, y)


def _finish(result: TrainResult, oof: np.ndarray, y: np.ndarray) -> TrainResult:
    """Confusion matrix, temperature and ECE from the chosen model's held-out probabilities."""
    L = oof.shape[1]
    confusion = np.zeros((L, L), dtype=int)
    np.add.at(confusion, (y, oof.argmax(1)), 1)
    result.confusion = confusion.tolist()
    result.temperature = fit_temperature(oof, y) if len(y) >= 10 else 1.0
    result.ece_before = expected_calibration_error(oof, y)
    result.oof_probs = apply_temperature(oof, result.temperature)
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


def save(ws: Workspace, result: TrainResult, model_id: str) -> None:
    """Write data/models/ (the chosen probe, if any) and data/metrics/train.json."""
    ws.model_dir.mkdir(parents=True, exist_ok=True)
    probe_path = ws.model_dir / PROBE_FILE
    if result.probe is not None:
        buf = io.BytesIO()
        result.probe.head.save(buf)
        atomic_write_bytes(probe_path, buf.getvalue())
    elif probe_path.exists():
        probe_path.unlink()
    keys = ("n_labels", "model", "reason", "probe_cv_accuracy", "zs_probe_cv_accuracy", "zero_shot_accuracy",
            "temperature", "ece_before", "ece_after")
    metrics = {k: getattr(result, k) for k in keys}
    atomic_write_text(ws.metrics_dir / "train.json", json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(ws.model_dir / "chosen.json", json.dumps(
        {"model": result.model, "model_id": model_id, "temperature": result.temperature}) + "\n")


def load_chosen(ws: Workspace, model_id: str) -> LinearHead | None:
    """The probe chosen by the last train stage for this embedding model, or None (zero-shot)."""
    chosen = ws.model_dir / "chosen.json"
    if not chosen.is_file() or not (ws.model_dir / PROBE_FILE).is_file():
        return None
    info = json.loads(chosen.read_text())
    if info.get("model") == "zero-shot" or info.get("model_id") != model_id:
        return None
    return LinearHead.load(ws.model_dir / PROBE_FILE)


@task(name="train", cache_policy=NO_CACHE)
def train_task(*args, **kwargs) -> TrainResult:
    return train(*args, **kwargs)
