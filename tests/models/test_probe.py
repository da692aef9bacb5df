import numpy as np
import pytest

from models.probe import LinearHead, fit_probe


def _blobs(n_per=20, classes=(0, 1, 2), dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(classes) + 1, dim)) * 3
    X = np.concatenate([centers[c] + rng.normal(size=(n_per, dim)) for c in classes]).astype(np.float32)
    y = np.repeat(classes, n_per)
    return X, y


def test_probe_learns_separable_classes_and_head_matches_sklearn(tmp_path):
    X, y = _blobs()
    fit = fit_probe(X, y, n_classes=4, seed=0)
    assert fit.cv_accuracy > 0.95
    probs = fit.head.predict_proba(X)
    assert probs.shape == (60, 4)
    assert np.all(probs[:, 3] == 0)  # class 3 had no labels: never predicted
    Z = (X - X.mean(0)) / (X.std(0) + 1e-6)
    np.testing.assert_allclose(probs[:, :3], fit.estimator.predict_proba(Z), atol=1e-4)
    fit.head.save(tmp_path / "h.npz")
    np.testing.assert_array_equal(LinearHead.load(tmp_path / "h.npz").predict_proba(X), probs)


def test_binary_probe_keeps_ontology_columns():
    X, y = _blobs(classes=(1, 3))
    fit = fit_probe(X, y, n_classes=5)
    probs = fit.head.predict_proba(X)
    assert (probs.argmax(1) == y).mean() > 0.95
    assert np.all(probs[:, [0, 2, 4]] == 0)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def test_probe_with_singleton_classes_and_one_class_refused():
    X, y = _blobs(n_per=1, classes=(0, 1, 2, 3))
    fit = fit_probe(X, y, n_classes=4)  # one example per class: plain K-fold, no crash
    assert 0.0 <= fit.cv_accuracy <= 1.0
    with pytest.raises(ValueError, match="two classes"):
        fit_probe(X[:1], y[:1], n_classes=4)
