import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from coldstart.models.probe import LinearHead, SelfTraining, fit_probe, fit_zs_probe
from coldstart.models.zeroshot import zero_shot_probs


def _blobs(n_per=20, classes=(0, 1, 2), dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(classes) + 1, dim)) * 3
    X = np.concatenate([centers[c] + rng.normal(size=(n_per, dim)) for c in classes]).astype(np.float32)
    y = np.repeat(classes, n_per)
    return X, y


def test_probe_learns_separable_classes_and_head_matches_sklearn(tmp_path):
    X, y = _blobs()
    fit = fit_probe(X, y, n_classes=4, seed=0)
    assert fit.cv_accuracy > 0.95 and fit.oof_probs.shape == (60, 4)
    probs = fit.head.predict_proba(X)
    assert probs.shape == (60, 4) and np.all(probs[:, 3] == 0)  # class 3 had no labels: never predicted
    Z = (X - X.mean(0)) / (X.std(0) + 1e-6)
    ref = LogisticRegression(C=1.0, max_iter=1000, tol=1e-3, random_state=0).fit(Z, y)
    np.testing.assert_allclose(probs[:, :3], ref.predict_proba(Z), atol=1e-4)
    fit.head.save(tmp_path / "h.npz")
    np.testing.assert_array_equal(LinearHead.load(tmp_path / "h.npz").predict_proba(X), probs)
    np.testing.assert_allclose(fit.head.to_sklearn().predict_proba(X), probs, atol=1e-5)


def test_binary_probe_keeps_ontology_columns():
    X, y = _blobs(classes=(1, 3))
    probs = fit_probe(X, y, n_classes=5).head.predict_proba(X)
    assert (probs.argmax(1) == y).mean() > 0.95
    assert np.all(probs[:, [0, 2, 4]] == 0)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def test_probe_with_singleton_classes_and_one_class_refused():
    X, y = _blobs(n_per=1, classes=(0, 1, 2, 3))
    fit = fit_probe(X, y, n_classes=4)  # one example per class: plain K-fold, no crash
    # Each held-out image's class is absent from its training folds: the head gives that class
    # probability 0 (bias -inf), so cross-validation can only ever be wrong.
    assert fit.cv_accuracy == 0.0 and np.all(fit.oof_probs[np.arange(4), y] == 0)
    with pytest.raises(ValueError, match="two classes"):
        fit_probe(X[:1], y[:1], n_classes=4)


def _text_world(n_per, seed, dim=32, L=5, noise=1.2):
    """Unit embeddings around per-class directions; the text weights point roughly there."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(L, dim))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    y = np.repeat(np.arange(L), n_per)
    X = dirs[y] + noise * rng.normal(size=(len(y), dim)) / np.sqrt(dim)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    text = dirs + 0.5 * rng.normal(size=dirs.shape) / np.sqrt(dim)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return X.astype(np.float32), y, text.astype(np.float32)


def test_zero_shot_initialised_probe_never_worse_than_zero_shot_with_few_labels():
    outcomes = []
    for seed in range(5):
        X, y, text = _text_world(2, seed)  # 2 labels per class: the cold-start case
        fit = fit_zs_probe(X, y, 100.0 * text, seed=0)
        plain = fit_probe(X, y, 5, seed=0)
        Xn, yn = _fresh(seed, 300)  # new samples of the same world
        acc_zs = (zero_shot_probs(Xn, text, 100.0).argmax(1) == yn).mean()
        acc_zsp = (fit.head.predict_proba(Xn).argmax(1) == yn).mean()
        acc_plain = (plain.head.predict_proba(Xn).argmax(1) == yn).mean()
        outcomes.append((acc_zsp >= acc_zs - 0.02, acc_zsp >= acc_plain))
    assert all(not_worse for not_worse, _ in outcomes)  # a handful of labels never hurts
    assert sum(beats_plain for _, beats_plain in outcomes) >= 4  # and the prior beats no prior


def _fresh(seed, n_per, dim=32, L=5, noise=1.2):
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(L, dim))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    other = np.random.default_rng(seed + 500)
    y = np.repeat(np.arange(L), n_per)
    X = dirs[y] + noise * other.normal(size=(len(y), dim)) / np.sqrt(dim)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32), y


def test_zs_probe_learns_beyond_zero_shot_with_many_labels():
    X, y, text = _text_world(60, 3)
    bad_text = np.roll(text, 1, axis=0)  # the text weights point at the wrong classes
    fit = fit_zs_probe(X, y, 100.0 * bad_text, seed=0)
    Xn, yn = _fresh(3, 100)
    assert (zero_shot_probs(Xn, bad_text, 100.0).argmax(1) == yn).mean() < 0.3
    assert (fit.head.predict_proba(Xn).argmax(1) == yn).mean() > 0.85 and fit.params["lambda"] <= 0.1


def test_self_training_uses_the_unlabeled_pool():
    X, y = _blobs(n_per=60, dim=8, seed=4)
    rows = np.array([0, 1, 60, 61, 120, 121])
    capped = fit_probe(X[rows], y[rows], 3, self_training=SelfTraining(X, rows, 0.9, agreement=False))
    assert capped.params["pseudo_labels"] == 122  # capped: the most confident 70% of the 174 unlabeled
    fit = fit_probe(X[rows], y[rows], 3, self_training=SelfTraining(X, rows, 0.9))
    # With agreement: every image the spreading reached and the first head labels alike (all, here).
    assert fit.params["pseudo_labels"] == 174
    assert (fit.head.predict_proba(X).argmax(1) == y).mean() > 0.95


def test_none_of_these_changes_nothing_until_answered_then_is_learned():
    X, y, text = _text_world(6, 1)
    W0 = 100.0 * text
    with_unknown = np.vstack([W0, np.zeros((1, W0.shape[1]), W0.dtype)])  # the label no text describes
    before, after = fit_zs_probe(X, y, W0, seed=0), fit_zs_probe(X, y, with_unknown, seed=0)
    # Unanswered, "unknown" is left out of the fit: the same head, and probability exactly 0.
    np.testing.assert_array_equal(after.head.weight[:-1], before.head.weight)
    np.testing.assert_array_equal(after.oof_probs[:, :-1], before.oof_probs)
    assert after.head.bias[-1] == -np.inf and (after.head.predict_proba(X)[:, -1] == 0).all()
    # Answered, it is an outcome like any other: a kind of image far from every class is learned.
    rng = np.random.default_rng(7)
    odd = (rng.normal(size=(12, X.shape[1])) + 4.0).astype(np.float32)
    odd /= np.linalg.norm(odd, axis=1, keepdims=True)
    Xu, yu = np.vstack([X, odd[:8]]), np.concatenate([y, np.full(8, len(W0))])
    for fit in (fit_zs_probe(Xu, yu, with_unknown, seed=0), fit_probe(Xu, yu, len(W0) + 1, seed=0)):
        assert (fit.head.predict_proba(odd[8:]).argmax(1) == len(W0)).all()
