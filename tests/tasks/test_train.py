"""choose_labeler, the train stage's pure decision: which head labels the images, on seeded
synthetic embeddings with a known answer (until now reached only through whole rounds)."""

from __future__ import annotations

import numpy as np

from coldstart.models.zeroshot import ZeroShotHead
from coldstart.tasks.config import TrainConfig
from coldstart.tasks.train import choose_labeler


def _clusters(n_per: int, centers: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings around each center, ``(n_per * L, D)``, and their labels."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([c + 0.15 * rng.standard_normal((n_per, centers.shape[1])) for c in centers])
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), np.repeat(np.arange(len(centers)), n_per)


def _head(weights: np.ndarray) -> ZeroShotHead:
    return ZeroShotHead(weights.astype(np.float32), np.arange(len(weights)), len(weights), 100.0)


CENTERS = np.eye(3, 16)  # three orthogonal directions in 16 dimensions


def test_without_labels_or_with_too_few_the_zero_shot_head_labels():
    head = _head(CENTERS)
    X, y = _clusters(1, CENTERS)
    none = choose_labeler(X[:0], y[:0], head, TrainConfig())
    assert (none.model, none.reason, none.n_labels) == ("zero-shot", "no human labels yet", 0)
    few = choose_labeler(X[:2], y[:2], head, TrainConfig(min_labels=4))
    assert few.model == "zero-shot" and "too few for a probe" in few.reason and few.zero_shot_accuracy == 1.0


def test_a_probe_replaces_a_zero_shot_head_that_is_wrong():
    """The text weights point at the wrong clusters (rolled): zero-shot is 0% right, a probe
    trained on 30 human labels is right on held-out folds, and auto picks a probe."""
    X, y = _clusters(10, CENTERS, seed=1)
    wrong = _head(np.roll(CENTERS, 1, axis=0))
    result = choose_labeler(X, y, wrong, TrainConfig(seed=0))
    assert result.zero_shot_accuracy == 0.0
    assert result.model in ("probe", "zs-probe") and "chosen on 30 human labels" in result.reason
    chosen_cv = result.probe_cv_accuracy if result.model == "probe" else result.zs_probe_cv_accuracy
    assert chosen_cv >= 0.9


def test_ties_go_to_the_simpler_head_and_a_forced_model_is_kept():
    X, y = _clusters(10, CENTERS, seed=2)
    right = _head(CENTERS)
    auto = choose_labeler(X, y, right, TrainConfig(seed=0))
    assert auto.zero_shot_accuracy == 1.0 and auto.model == "zero-shot"  # the probes can only tie
    forced = choose_labeler(X, y, right, TrainConfig(seed=0, model="probe"))
    assert forced.model == "probe" and forced.zs_probe_cv_accuracy is None
