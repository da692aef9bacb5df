import numpy as np
import pytest

from coldstart.tasks.audit import wilson_interval
from coldstart.tasks.calibrate import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    precision_threshold,
)
from coldstart.tasks.train import label_issues


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(5, 5)
    assert hi == 1.0 and lo == pytest.approx(0.5655, abs=1e-3)


def test_temperature_scaling_fixes_overconfidence():
    rng = np.random.default_rng(0)
    n, L = 2000, 4
    y = rng.integers(0, L, n)
    logits = rng.normal(size=(n, L))
    logits[np.arange(n), y] += 1.0  # right ~55% of the time
    overconfident = np.exp(4 * logits) / np.exp(4 * logits).sum(1, keepdims=True)
    T = fit_temperature(overconfident, y)
    assert 3.0 < T < 5.5
    before = expected_calibration_error(overconfident, y)
    after = expected_calibration_error(apply_temperature(overconfident, T), y)
    assert after < before / 3 and after < 0.05


def test_precision_threshold_meets_target_on_held_out_labels():
    conf = np.array([0.99, 0.97, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6])
    right = np.array([1, 1, 1, 1, 1, 0, 1, 0], bool)
    probs = np.c_[conf, 1 - conf]
    y = np.where(right, 0, 1)
    assert precision_threshold(probs, y, 0.95, min_support=3) == 0.85  # top 5 all right
    assert precision_threshold(probs, y, 0.80, min_support=3) == 0.7  # 6 of 7 right
    assert precision_threshold(probs[:2], y[:2], 0.95, min_support=3) is None


def test_label_issues_flag_the_flipped_labels():
    rng = np.random.default_rng(1)
    y_true = np.repeat(np.arange(3), 30)
    probs = np.full((90, 3), 0.05)
    probs[np.arange(90), y_true] = 0.9
    probs += rng.uniform(0, 0.02, probs.shape)
    probs /= probs.sum(1, keepdims=True)
    given = y_true.copy()
    given[[3, 40, 77]] = [1, 2, 0]  # three wrong human labels
    flags = label_issues(probs, given)
    assert sorted(i for i, _, _ in flags) == [3, 40, 77]
    assert {i: j for i, j, _ in flags} == {3: 0, 40: 1, 77: 2}
    weak = np.full((90, 3), 1 / 3)
    assert label_issues(weak, given) == []  # a model that knows nothing flags nothing


def test_a_label_with_probability_zero_stays_zero_and_moves_nothing():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4) * 0.3, size=200)
    y = np.array([rng.choice(4, p=row) for row in p])
    with_zero = np.hstack([p, np.zeros((200, 1))])  # "unknown", never answered: the head gives it 0
    assert fit_temperature(with_zero, y) == fit_temperature(p, y)
    T = fit_temperature(p, y)
    assert (apply_temperature(with_zero, T)[:, -1] == 0).all()
    np.testing.assert_allclose(apply_temperature(with_zero, T)[:, :-1], apply_temperature(p, T), rtol=1e-6)
