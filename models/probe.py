"""Linear probe on frozen, L2-normalised CLIP embeddings (multinomial logistic regression).

The fitted head is kept as plain arrays, ``weight`` ``(C, D)`` and ``bias`` ``(C,)`` over the
whole ontology, so it is saved as ``.npz`` (no pickle to trust) and applied as
``softmax(X @ weight.T + bias)``. A class the probe never saw gets bias ``-inf``: probability 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, StratifiedKFold

from models.zeroshot import softmax


@dataclass
class LinearHead:
    weight: np.ndarray  # (C, D) float32
    bias: np.ndarray  # (C,) float32, -inf for classes absent from training

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(N, D)`` -> ``(N, C)`` probabilities."""
        with np.errstate(invalid="ignore"):
            return softmax(X.astype(np.float32) @ self.weight.T + self.bias)

    def save(self, path) -> None:
        np.savez(path, weight=self.weight, bias=self.bias)

    @classmethod
    def load(cls, path) -> "LinearHead":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["weight"], z["bias"])


@dataclass
class ProbeFit:
    head: LinearHead
    estimator: LogisticRegression  # the scikit-learn model on standardised features (logged to MLflow)
    cv_accuracy: float
    cv_predictions: np.ndarray  # (N,) out-of-fold predicted class index


def _estimator(C: float, seed: int) -> LogisticRegression:
    return LogisticRegression(C=C, max_iter=2000, random_state=seed)


def to_head(est: LogisticRegression, n_classes: int, center: np.ndarray, scale: np.ndarray) -> LinearHead:
    """Fold the standardisation into the weights: w.(x - c)/s + b = (w/s).x + (b - (w/s).c)."""
    D = est.coef_.shape[1]
    weight = np.zeros((n_classes, D), np.float32)
    bias = np.full(n_classes, -np.inf, np.float32)
    cls = est.classes_
    if len(cls) == 2:  # scikit-learn keeps one row for binary problems: logit of class 1 vs 0
        weight[cls[1]], bias[cls[1]] = est.coef_[0], est.intercept_[0]
        bias[cls[0]] = 0.0
    else:
        weight[cls], bias[cls] = est.coef_, est.intercept_
    weight /= scale
    seen = np.isfinite(bias)
    bias[seen] -= weight[seen] @ center
    return LinearHead(weight, bias)


def fit_probe(X: np.ndarray, y: np.ndarray, n_classes: int, *, C: float = 1.0, folds: int = 5, seed: int = 0,
              center: np.ndarray | None = None, scale: np.ndarray | None = None) -> ProbeFit:
    """Fit on ``X`` ``(N, D)``, ``y`` ``(N,)`` class indices (>= 2 distinct classes).

    Features are standardised with ``center``/``scale`` ``(D,)`` (give the statistics of every
    image, labeled or not: far steadier than those of a few labels; default: of ``X``). CLIP
    embedding dimensions differ a lot in spread, and an L2 penalty on raw features would
    mostly ignore the narrow ones.

    Cross-validation is stratified when every class has enough examples, else shuffled K-fold
    (few labels per class is the normal cold-start case, not an error).
    """
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        raise ValueError("a probe needs human labels of at least two classes")
    center = X.mean(0) if center is None else np.asarray(center, np.float32)
    scale = X.std(0) + 1e-6 if scale is None else np.asarray(scale, np.float32)
    Z = (X - center) / scale
    counts = np.bincount(y)
    k = min(folds, len(y))
    smallest = int(counts[counts > 0].min())
    splitter = (StratifiedKFold(n_splits=min(k, smallest), shuffle=True, random_state=seed) if smallest >= 2
                else KFold(n_splits=k, shuffle=True, random_state=seed))
    oof = np.empty_like(y)
    for tr, te in splitter.split(Z, y):
        if len(np.unique(y[tr])) < 2:  # a fold with one class can only predict that class
            oof[te] = y[tr][0]
        else:
            oof[te] = _estimator(C, seed).fit(Z[tr], y[tr]).predict(Z[te])
    est = _estimator(C, seed).fit(Z, y)
    return ProbeFit(to_head(est, n_classes, center, scale), est, float((oof == y).mean()), oof)
