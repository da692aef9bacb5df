import numpy as np
import pytest

from coldstart.models.errors import SelectionError
from coldstart.tasks.strategies import cap_per_class, hybrid, kcenter_greedy, select, typiclust


def test_kcenter_greedy_spreads_out_exactly():
    X = np.array([[0, 0], [0.1, 0], [10, 0], [10, 0.1], [0, 10], [5, 5]], np.float32)
    # Nothing labeled: start nearest the mean (5, 5) -> index 5, then the farthest each time.
    assert kcenter_greedy(X, 3, seed=0).tolist()[:1] == [5]
    picks = kcenter_greedy(X, 3, labeled_X=np.array([[0, 0]], np.float32), seed=0)
    # [10, 0.1] is the farthest from the labeled [0, 0]; then [0, 10]; then the middle [5, 5].
    assert picks.tolist() == [3, 4, 5]


def test_typiclust_takes_the_most_typical_point_of_each_cluster():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [20, 0], [0, 20]], np.float32)
    X = np.concatenate([c + rng.normal(size=(40, 2)).astype(np.float32) for c in centers])
    X[0] = [0.0, 0.0]  # exactly at a center: the densest, most typical spot of cluster 0
    picks = typiclust(X, 3, seed=0)
    assert sorted(p // 40 for p in picks) == [0, 1, 2]  # one per cluster
    assert np.linalg.norm(X[[p for p in picks if p < 40][0]]) < 1.0  # near the dense centre
    # A cluster that already holds a labeled point is skipped.
    picks = typiclust(X, 2, labeled_X=np.array([[20, 0]], np.float32), seed=0)
    assert sorted(p // 40 for p in picks) == [0, 2]


def test_hybrid_is_uncertain_and_diverse():
    # Three uncertain near-duplicates and one uncertain outlier; confident points elsewhere.
    probs = np.array([[0.5, 0.5]] * 3 + [[0.52, 0.48]] + [[0.99, 0.01]] * 5)
    X = np.array([[0, 0], [0, 0.01], [0.01, 0], [9, 9]] + [[5, k] for k in range(5)], np.float32)
    picks = hybrid(probs, X, 2, factor=2, seed=0)  # shortlist: the 4 most uncertain
    assert 3 in picks and len([p for p in picks if p < 3]) == 1  # not two near-duplicates
    assert all(p < 4 for p in picks)  # never a confident point


def test_class_cap_limits_one_predicted_class():
    order = np.arange(6)
    predicted = np.array([0, 0, 0, 1, 0, 2])
    assert cap_per_class(order, predicted, 3, cap=1).tolist() == [0, 3, 5]
    assert cap_per_class(order, predicted, 4, cap=1).tolist() == [0, 3, 5, 1]  # short: best of the rest
    probs = np.array([[0.5, 0.5, 0]] * 6 + [[0.1, 0.3, 0.6]] * 2)
    picked = select("margin", 4, probs=probs, seed=0, class_cap=0.5)
    assert sum(probs[picked].argmax(1) == 0) <= 2


def test_dispatch_errors():
    probs = np.full((3, 2), 0.5)
    with pytest.raises(SelectionError, match="valid: margin, least_confidence, entropy, random, kcenter"):
        select("smart", 1, probs=probs)
    with pytest.raises(SelectionError, match="needs embeddings"):
        select("kcenter", 1, probs=probs)
    with pytest.raises(SelectionError, match="larger than the pool"):
        select("random", 4, probs=probs)
    with pytest.raises(SelectionError, match="empty"):
        select("margin", 1, probs=np.zeros((0, 2)))
