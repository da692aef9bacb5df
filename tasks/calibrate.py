"""Calibration and auto-accept thresholds, fitted on held-out (out-of-fold) human labels."""

from __future__ import annotations

import numpy as np

from coldstart.models.zeroshot import softmax


def _logits(probs: np.ndarray) -> np.ndarray:
    """log p, floored at 1e-12, except that a probability of exactly 0 (a label the head cannot
    give: "unknown" before anyone answered it, a class with no label yet) stays -inf, so that no
    temperature gives it mass or moves the others."""
    with np.errstate(divide="ignore"):
        return np.where(probs > 0, np.log(np.clip(probs, 1e-12, 1.0)), -np.inf)


def apply_temperature(probs: np.ndarray, T: float) -> np.ndarray:
    """Rescale probabilities as softmax(log p / T): T > 1 softens over-confident scores."""
    return softmax(_logits(probs) / T) if T != 1.0 else probs


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``y`` (Guo et al., 2017)."""
    if len(y) == 0:
        return 1.0
    z = _logits(probs)

    def nll(log_t: float) -> float:
        p = softmax(z / np.exp(log_t))
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())

    from scipy.optimize import minimize_scalar  # lazy: SciPy's optimisers cost ~0.2 s to import, used once here

    return float(np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded").x))


MIN_LABELS_FOR_TEMPERATURE = 10  # fewer held-out labels fit noise, not a temperature


def calibrate_held_out(probs: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """The train stage's calibration: a temperature fitted on held-out ``(N, L)`` probabilities
    and their labels ``y`` (1.0 with fewer than ``MIN_LABELS_FOR_TEMPERATURE``), and the
    probabilities rescaled by it."""
    T = fit_temperature(probs, y) if len(y) >= MIN_LABELS_FOR_TEMPERATURE else 1.0
    return T, apply_temperature(probs, T)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """ECE: |accuracy - confidence| averaged over equal-width confidence bins, weighted by size."""
    if len(y) == 0:
        return 0.0
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs((pred[m] == y[m]).mean() - conf[m].mean())
    return float(ece)


def precision_threshold(probs: np.ndarray, y: np.ndarray, target: float, *, min_support: int = 5) -> float | None:
    """Lowest confidence t such that predictions with confidence >= t are right in >= ``target``
    of the held-out cases (at least ``min_support`` of them); None when no t reaches it."""
    conf, right = probs.max(1), probs.argmax(1) == y
    order = np.argsort(-conf)
    hits = np.cumsum(right[order])
    n = np.arange(1, len(order) + 1)
    ok = (hits / n >= target) & (n >= min_support)
    if not ok.any():
        return None
    k = int(np.flatnonzero(ok)[-1])
    return float(conf[order][k])
