import numpy as np
import pytest

from coldstart.models.errors import SelectionError
from coldstart.tasks.select import audit_estimate, select_indices, uncertainty

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


def test_audit_estimate_counts_only_answered_audit_items():
    batch = [dict(image_id="a", purpose="audit", predicted_label="cat", round="1"),
             dict(image_id="b", purpose="audit", predicted_label="dog", round="1"),
             dict(image_id="c", purpose="audit", predicted_label="dog", round="1"),
             dict(image_id="d", purpose="uncertain", predicted_label="dog", round="1")]
    est = audit_estimate(batch, {"a": "cat", "b": "cat", "d": "dog"})
    assert (est.round, est.n, est.correct, est.accuracy) == (1, 2, 1, 0.5)
    assert audit_estimate(batch[3:], {}) is None
