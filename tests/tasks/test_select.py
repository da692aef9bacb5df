import numpy as np
import pytest

from coldstart.tasks.audit import audit_estimate, inclusion_probabilities
from coldstart.tasks.errors import SelectionError
from coldstart.tasks.select import select_indices, uncertainty

P = np.array([
    [0.90, 0.05, 0.05],  # 0 confident
    [0.40, 0.35, 0.25],  # 1 small margin, high entropy
    [0.50, 0.50, 0.00],  # 2 zero margin
    [0.34, 0.33, 0.33],  # 3 near uniform
    [0.70, 0.20, 0.10],  # 4
])


@pytest.mark.parametrize("strategy, expected", [
    ("margin", [2, 3, 1]),
    ("least_confidence", [3, 1, 2]),
    ("entropy", [3, 1, 4]),  # H(0.7,0.2,0.1)=0.80 > H(0.5,0.5,0)=0.69
])
def test_uncertainty_strategies_pick_exact_indices(strategy, expected):
    picked, audit = select_indices(P, 3, strategy=strategy, audit=0, seed=0)
    assert picked.tolist() == expected and audit.size == 0


def test_scores_by_hand():
    np.testing.assert_allclose(uncertainty(P[:2], "margin"), [1 - 0.85, 1 - 0.05])
    np.testing.assert_allclose(uncertainty(P[:1], "least_confidence"), [0.1])
    np.testing.assert_allclose(uncertainty(np.array([[0.5, 0.5]]), "entropy"), [np.log(2)])


def test_audit_is_random_disjoint_and_seeded():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), size=200)
    a1 = select_indices(probs, 20, strategy="margin", audit=5, seed=7)
    a2 = select_indices(probs, 20, strategy="margin", audit=5, seed=7)
    assert [x.tolist() for x in a1] == [x.tolist() for x in a2]
    picked, audit = a1
    assert len(picked) == 15 and len(audit) == 5 and not set(picked) & set(audit)
    random_pick, _ = select_indices(probs, 10, strategy="random", audit=0, seed=3)
    assert len(set(random_pick.tolist())) == 10


def test_errors_are_explicit():
    with pytest.raises(SelectionError, match="nothing to select"):
        select_indices(np.zeros((0, 3)), 1, strategy="margin", audit=0, seed=0)
    with pytest.raises(SelectionError, match="larger than the pool"):
        select_indices(P, 6, strategy="margin", audit=0, seed=0)
    with pytest.raises(SelectionError, match="valid: margin"):
        select_indices(P, 2, strategy="smart", audit=0, seed=0)
    with pytest.raises(SelectionError, match="unknown strategy 'smart'"):  # even when the audit takes it all
        select_indices(P, 2, strategy="smart", audit=2, seed=0)
    with pytest.raises(SelectionError, match="needs embeddings"):
        select_indices(P, 2, strategy="hybrid", audit=1, seed=0)


def test_class_cap_passes_through():
    q = np.array([[0.50, 0.45, 0.05], [0.51, 0.44, 0.05], [0.52, 0.43, 0.05],  # class 0, most uncertain
                  [0.30, 0.60, 0.10], [0.90, 0.05, 0.05]])
    assert select_indices(q, 3, strategy="margin", audit=0, seed=0)[0].tolist() == [0, 1, 2]
    capped, _ = select_indices(q, 3, strategy="margin", audit=0, seed=0, class_cap=0.34)  # <= 2 per class
    assert capped.tolist() == [0, 1, 3]


def test_audit_estimate_counts_only_answered_audit_items():
    batch = [dict(image_id="a", purpose="audit", predicted_label="cat", round="1"),
             dict(image_id="b", purpose="audit", predicted_label="dog", round="1"),
             dict(image_id="c", purpose="audit", predicted_label="dog", round="1"),
             dict(image_id="d", purpose="uncertain", predicted_label="dog", round="1")]
    est = audit_estimate(batch, {"a": "cat", "b": "cat", "d": "dog"})
    assert (est.round, est.n, est.correct, est.accuracy) == (1, 2, 1, 0.5)
    assert audit_estimate(batch[3:], {}) is None


def test_an_audit_drawn_by_inclusion_probabilities_is_seeded_and_checked():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(3, 0.3), size=60)
    pi = inclusion_probabilities(probs.max(1), 6)
    chosen, audit = select_indices(probs, 10, strategy="margin", audit=6, seed=5, inclusion=pi)
    again = select_indices(probs, 10, strategy="margin", audit=6, seed=5, inclusion=pi)
    assert audit.tolist() == again[1].tolist() and len(set(audit.tolist())) == 6 and not set(audit) & set(chosen)
    with pytest.raises(SelectionError, match="summing to 6"):
        select_indices(probs, 10, strategy="margin", audit=6, seed=5, inclusion=pi * 2)


def test_an_as_labeled_audit_drawn_unequally_is_weighted_back():
    """Two items drawn with probability 0.5 (both wrong) and two with 0.1 (both right): the share
    right is 0.5 unweighted, but each right item stands for five times as many pool images."""
    batch = [dict(image_id=x, purpose="audit", predicted_label="dog", round="2", inclusion=pi, audit_pool="40")
             for x, pi in zip("abcd", ("0.5", "0.5", "0.1", "0.1"))]
    est = audit_estimate(batch, {"a": "cat", "b": "cat", "c": "dog", "d": "dog"})
    assert est.unweighted_accuracy == 0.5 and est.accuracy == pytest.approx(20 / 24)
    assert est.estimator == "ipw-share" and "inverse-probability weighted share" in est.describe()
    lo, hi = est.interval
    assert lo < est.accuracy < hi and est.lower_bound < 0.5  # the gates keep the exact unweighted bound


def test_the_cold_start_lasts_until_enough_labels_per_class_or_five_batches():
    from coldstart.tasks.config import RoundConfig
    from coldstart.tasks.select import in_cold_start

    cfg = RoundConfig(budget=50)  # cold_start_per_class 3
    assert in_cold_start(0, 10, cfg) and in_cold_start(29, 10, cfg) and not in_cold_start(30, 10, cfg)
    assert in_cold_start(249, 1000, cfg) and not in_cold_start(250, 1000, cfg)  # 5 batches at most
    off = RoundConfig(budget=50, cold_start_per_class=0)
    assert in_cold_start(0, 10, off) and not in_cold_start(1, 10, off)  # round 1 only, as before
