import numpy as np
import pytest

from coldstart.tasks.errors import SelectionError
from coldstart.tasks.strategies import (
    STRATEGIES,
    ClassCapped,
    Hybrid,
    Strategy,
    Uncertain,
    build,
    cap_per_class,
    choose,
    kcenter_greedy,
    typiclust,
)


def test_kcenter_greedy_spreads_out_exactly():
    X = np.array([[0, 0], [0.1, 0], [10, 0], [10, 0.1], [0, 10], [5, 5]], np.float32)
    # Nothing labeled: start nearest the mean (5, 5) -> index 5, then the farthest each time.
    assert kcenter_greedy(X, 3, seed=0).tolist()[:1] == [5]
    picks = kcenter_greedy(X, 3, labeled_X=np.array([[0, 0]], np.float32), seed=0)
    # [10, 0.1] is the farthest from the labeled [0, 0]; then [0, 10]; then the middle [5, 5].
    assert picks.tolist() == [3, 4, 5]
    probs = np.full((6, 2), 0.5)
    assert choose("kcenter", 3, probs=probs, X=X, labeled_X=np.array([[0, 0]], np.float32)).tolist() == [3, 4, 5]


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
    probs = np.full((120, 3), 1 / 3)
    same = choose("typiclust", 2, probs=probs, X=X, labeled_X=np.array([[20, 0]], np.float32))
    assert same.tolist() == picks.tolist()


def test_hybrid_is_uncertain_and_diverse():
    # Three uncertain near-duplicates and one uncertain outlier; confident points elsewhere.
    probs = np.array([[0.5, 0.5]] * 3 + [[0.52, 0.48]] + [[0.99, 0.01]] * 5)
    X = np.array([[0, 0], [0, 0.01], [0.01, 0], [9, 9]] + [[5, k] for k in range(5)], np.float32)
    picks = Hybrid(factor=2)(probs, 2, X=X, seed=0)  # shortlist: the 4 most uncertain
    assert 3 in picks and len([p for p in picks if p < 3]) == 1  # not two near-duplicates
    assert all(p < 4 for p in picks)  # never a confident point
    assert choose("hybrid", 2, probs=probs, X=X, factor=2).tolist() == picks.tolist()


def test_class_cap_limits_one_predicted_class():
    order = np.arange(6)
    predicted = np.array([0, 0, 0, 1, 0, 2])
    assert cap_per_class(order, predicted, 3, cap=1).tolist() == [0, 3, 5]
    assert cap_per_class(order, predicted, 4, cap=1).tolist() == [0, 3, 5, 1]  # short: best of the rest
    probs = np.array([[0.5, 0.5, 0]] * 6 + [[0.1, 0.3, 0.6]] * 2)
    picked = choose("margin", 4, probs=probs, seed=0, class_cap=0.5)
    assert sum(probs[picked].argmax(1) == 0) <= 2


def test_class_cap_wraps_the_inner_ranking_exactly():
    # Three zero-margin images of class 0, then one of class 1 and one of class 2, less uncertain.
    probs = np.array([[0.5, 0.5, 0]] * 3 + [[0.2, 0.6, 0.2], [0.1, 0.2, 0.7]])
    assert Uncertain("margin")(probs, 5, seed=0).tolist() == [2, 1, 0, 3, 4]  # ties in seeded order
    capped = ClassCapped(Uncertain("margin"), 0.34)  # at most ceil(0.34 x budget) per class
    assert capped(probs, 3, seed=0).tolist() == [2, 1, 3]  # cap 2: the third class-0 image waits
    assert capped(probs, 5, seed=0).tolist() == [2, 1, 3, 4, 0]  # caps leave it short: best of the rest
    assert choose("margin", 3, probs=probs, class_cap=0.34).tolist() == [2, 1, 3]
    assert isinstance(build("margin", class_cap=0.5), ClassCapped) and build("kcenter", class_cap=0.5).needs_embeddings


def test_registry_builds_every_strategy_with_one_signature():
    assert list(STRATEGIES) == ["margin", "least_confidence", "entropy", "random", "kcenter", "typiclust", "hybrid"]
    rng = np.random.default_rng(0)
    probs, X = rng.dirichlet(np.ones(3), size=30), rng.normal(size=(30, 4)).astype(np.float32)
    for name in STRATEGIES:
        assert isinstance(build(name, factor=2, measure="entropy"), Strategy)
        picks = choose(name, 5, probs=probs, X=X, seed=1, factor=2, measure="entropy")
        assert picks.shape == (5,) and len(set(picks.tolist())) == 5 and picks.dtype.kind == "i", name
        assert choose(name, 0, probs=probs, X=X).shape == (0,)
    assert build("hybrid", factor=2, measure="entropy") == Hybrid(2, "entropy")


P3 = np.full((3, 2), 0.5)


@pytest.mark.parametrize("call, message", [
    (lambda: choose("smart", 1, probs=P3),
     "unknown strategy 'smart'; valid: margin, least_confidence, entropy, random, kcenter, typiclust, hybrid"),
    (lambda: choose("margin", 1, probs=P3, fator=3),
     "unknown selection option(s) fator; valid: factor, measure, class_cap"),
    (lambda: choose("hybrid", 1, probs=P3, X=np.zeros((3, 2)), measure="certainty"),
     "unknown uncertainty measure 'certainty'; valid: margin, least_confidence, entropy"),
    (lambda: choose("hybrid", 1, probs=P3, X=np.zeros((3, 2)), factor=0),
     "the hybrid factor must be a whole number >= 1, got 0"),
    (lambda: choose("margin", 1, probs=P3, class_cap=1.5), "class_cap must be a share of the batch in (0, 1], got 1.5"),
    (lambda: choose("kcenter", 1, probs=P3),
     "strategy 'kcenter' needs embeddings of the pool (X, one row per image); none given"),
    (lambda: choose("typiclust", 1, probs=P3, X=np.zeros((4, 2))),
     "strategy 'typiclust' needs one embedding per pool image: X has shape (4, 2), the pool has 3 images"),
    (lambda: choose("kcenter", 1, probs=P3, X=np.zeros((3, 2)), labeled_X=np.zeros((1, 5))),
     "labeled embeddings have shape (1, 5); they must be 2-D with the pool's embedding width 2"),
    (lambda: choose("random", 4, probs=P3), "budget 4 is larger than the pool of 3 unlabeled images"),
    (lambda: choose("random", -1, probs=P3), "budget must be >= 0, got -1"),
    (lambda: choose("random", 1.5, probs=P3), "budget must be a whole number of images, got 1.5"),
    (lambda: choose("margin", 1, probs=np.zeros((0, 2))), "nothing to select: the pool of unlabeled images is empty"),
    (lambda: choose("margin", 1, probs=np.full(3, 0.5)),
     "probabilities must be a 2-D array, one row per pool image and one column per class; got shape (3,)"),
    (lambda: choose("margin", 1, probs=np.array([[0.5, 0.5], [np.nan, 1.0]])),
     "probabilities must be finite numbers; 1 row(s) hold NaN or infinity (first: row 1)"),
    (lambda: choose("margin", 1, probs=np.array([[0.5, 0.5], [2.0, 3.0]])),
     "each row of probabilities must sum to 1; row 1 sums to 5 (1 row(s) off): pass probabilities, "
     "not scores or logits"),
])
def test_bad_input_is_refused_at_the_entry_in_words(call, message):
    with pytest.raises(SelectionError) as e:
        call()
    assert str(e.value) == message


def test_typiclust_on_a_sample_still_takes_one_typical_point_per_blob(monkeypatch):
    """Large pools are clustered on a sample and judged on a subset of each cluster: with four
    well-separated blobs the picks are still one per blob, each near its blob's centre."""
    from coldstart.tasks import strategies

    monkeypatch.setattr(strategies, "FIT_SAMPLE", 200)
    monkeypatch.setattr(strategies, "TYPICAL_SAMPLE", 50)
    rng = np.random.default_rng(0)
    centres = np.array([[10, 0], [-10, 0], [0, 10], [0, -10]], np.float32)
    blob = np.repeat(np.arange(4), [400, 300, 200, 100])
    X = centres[blob] + rng.standard_normal((1000, 2)).astype(np.float32)
    picks = strategies.choose("typiclust", 4, probs=np.full((1000, 2), 0.5), X=X, seed=3)
    assert sorted(blob[picks]) == [0, 1, 2, 3]
    assert np.all(np.linalg.norm(X[picks] - centres[blob[picks]], axis=1) < 1.0)
    again = strategies.choose("typiclust", 4, probs=np.full((1000, 2), 0.5), X=X, seed=3)
    np.testing.assert_array_equal(picks, again)
