"""train: fit a linear probe on human labels, and keep it only if it beats zero-shot.

Both are scored on the same human labels: the probe by out-of-fold (cross-validated)
predictions, zero-shot directly (it never saw the labels).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from models.probe import LinearHead, ProbeFit, fit_probe
from models.zeroshot import ZeroShotHead
from tasks.config import TrainConfig
from tasks.workspace import Workspace, atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

PROBE_FILE = "probe.npz"


@dataclass
class TrainResult:
    n_labels: int
    model: str  # "probe" or "zero-shot"
    reason: str
    probe_cv_accuracy: float | None
    zero_shot_accuracy: float | None  # on the human labels
    confusion: list[list[int]] | None  # probe CV confusion matrix, ontology order (rows: truth)
    probe: ProbeFit | None


def train(X: np.ndarray, y: np.ndarray, zero_shot: ZeroShotHead, cfg: TrainConfig,
          center: np.ndarray | None = None, scale: np.ndarray | None = None) -> TrainResult:
    """``X`` ``(N, D)`` embeddings of the human-labeled images, ``y`` ``(N,)`` class indices.

    ``center``/``scale`` ``(D,)``: feature statistics over every image, for the probe.
    """
    n, C = len(y), zero_shot.n_labels
    if n == 0:
        return TrainResult(0, "zero-shot", "no human labels yet", None, None, None, None)
    zs_acc = float((zero_shot.predict_proba(X).argmax(1) == y).mean())
    if n < cfg.min_labels or len(np.unique(y)) < 2:
        return TrainResult(n, "zero-shot", f"{n} human label(s) of {len(np.unique(y))} class(es): too few for a probe "
                           f"(need train.min_labels={cfg.min_labels} and two classes)", None, zs_acc, None, None)
    fit = fit_probe(X, y, C, C=cfg.C, folds=cfg.cv_folds, seed=cfg.seed, center=center, scale=scale)
    confusion = np.zeros((C, C), dtype=int)
    np.add.at(confusion, (y, fit.cv_predictions), 1)
    if fit.cv_accuracy > zs_acc:
        model, reason = "probe", f"probe CV accuracy {fit.cv_accuracy:.3f} > zero-shot {zs_acc:.3f} on {n} human labels"
    else:
        model, reason = "zero-shot", f"probe CV accuracy {fit.cv_accuracy:.3f} <= zero-shot {zs_acc:.3f}: keeping zero-shot"
    return TrainResult(n, model, reason, fit.cv_accuracy, zs_acc, confusion.tolist(), fit)


def save(ws: Workspace, result: TrainResult, model_id: str) -> None:
    """Write data/models/ (the probe, if chosen) and data/metrics/train.json."""
    ws.model_dir.mkdir(parents=True, exist_ok=True)
    probe_path = ws.model_dir / PROBE_FILE
    if result.model == "probe":
        import io

        buf = io.BytesIO()
        result.probe.head.save(buf)
        atomic_write_bytes(probe_path, buf.getvalue())
    elif probe_path.exists():
        probe_path.unlink()
    metrics = {k: getattr(result, k) for k in ("n_labels", "model", "reason", "probe_cv_accuracy", "zero_shot_accuracy")}
    atomic_write_text(ws.metrics_dir / "train.json", json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(ws.model_dir / "chosen.json", json.dumps({"model": result.model, "model_id": model_id}) + "\n")


def load_chosen(ws: Workspace, model_id: str) -> LinearHead | None:
    """The probe chosen by the last train stage for this embedding model, or None (zero-shot)."""
    chosen = ws.model_dir / "chosen.json"
    if not chosen.is_file() or not (ws.model_dir / PROBE_FILE).is_file():
        return None
    info = json.loads(chosen.read_text())
    if info.get("model") != "probe" or info.get("model_id") != model_id:
        return None
    return LinearHead.load(ws.model_dir / PROBE_FILE)


@task(name="train", cache_policy=NO_CACHE)
def train_task(*args, **kwargs) -> TrainResult:
    return train(*args, **kwargs)
