"""Trainable heads on frozen, L2-normalised CLIP embeddings.

Every head is kept as plain arrays, ``weight`` ``(L, D)`` and ``bias`` ``(L,)`` over the whole
label set, saved as ``.npz`` (no pickle to trust) and applied as ``softmax(X @ weight.T + bias)``.
A label the head never saw gets bias ``-inf``: probability 0.

Two probes:

- ``fit_probe``: multinomial logistic regression on standardised features (scikit-learn).
- ``fit_zs_probe``: logistic regression in the raw embedding space whose weights start at the
  zero-shot text weights and are pulled toward them (``lam / 2 * ||V - V0||^2`` on the unit-scale
  directions), the strength
  chosen by cross-validation. With few labels CV picks a strong pull and the head stays near
  zero-shot; with many it learns freely.

Both can add pseudo-labels (self-training): label spreading over the kNN graph of every image
gives confident labels to unlabeled images, which join the training set (never the CV test
folds). Cross-validated, out-of-fold probabilities are returned for calibration and label-error
flags.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from coldstart.models.zeroshot import softmax

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

log = logging.getLogger(__name__)

LAMBDAS = (0.001, 0.01, 0.1, 1.0, 10.0)  # zs-probe pull toward the text directions, for CV to pick


@dataclass
class LinearHead:
    weight: np.ndarray  # (L, D) float32
    bias: np.ndarray  # (L,) float32, -inf for labels absent from training

    def logits(self, X: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return X.astype(np.float32, copy=False) @ self.weight.T + self.bias

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(N, D)`` -> ``(N, L)`` probabilities."""
        return softmax(self.logits(X))

    def save(self, path) -> None:
        np.savez(path, weight=self.weight, bias=self.bias)

    @classmethod
    def load(cls, path) -> "LinearHead":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["weight"], z["bias"])

    def to_sklearn(self) -> LogisticRegression:
        """The same head as a fitted scikit-learn estimator (input: raw CLIP embeddings)."""
        from sklearn.linear_model import LogisticRegression  # lazy, like every scikit-learn/SciPy import here (below)

        est = LogisticRegression()
        est.classes_ = np.arange(len(self.bias))
        est.coef_ = self.weight.astype(np.float64)
        est.intercept_ = np.where(np.isfinite(self.bias), self.bias, -1e9).astype(np.float64)
        est.n_features_in_ = self.weight.shape[1]
        return est


@dataclass
class ProbeFit:
    head: LinearHead
    kind: str  # "probe" or "zs-probe"
    cv_accuracy: float
    oof_probs: np.ndarray  # (N, L) out-of-fold probabilities of the labeled samples
    params: dict  # what CV chose (C, lambda, pseudo-label count)

    @property
    def cv_predictions(self) -> np.ndarray:
        return self.oof_probs.argmax(1)


def splits(y: np.ndarray, folds: int, seed: int):
    """Stratified when every class has enough examples, else shuffled K-fold (few labels per
    class is the normal cold-start case, not an error)."""
    counts = np.bincount(y)
    k = min(folds, len(y))
    smallest = int(counts[counts > 0].min())
    from sklearn.model_selection import KFold, StratifiedKFold  # lazy: see _lr

    splitter = (StratifiedKFold(n_splits=min(k, smallest), shuffle=True, random_state=seed) if smallest >= 2
                else KFold(n_splits=k, shuffle=True, random_state=seed))
    return list(splitter.split(np.zeros(len(y)), y))


class SelfTraining:
    """Pseudo-labels by label spreading (Zhou et al., 2004) over the kNN graph of every image.

    The graph is built once; each spread (one per CV fold) is a few sparse matrix products.
    ``pool_X`` ``(P, D)`` every image; ``rows`` ``(N,)`` each labeled sample's row in it.
    ``threshold``: the least spreading confidence a pseudo-label needs; ``share``: at most this
    share of the images without a human label get one, the most confident first; ``agreement``:
    a pseudo-label is kept only where the head fitted with all of them predicts the same class
    (the graph and the linear head are two views of the pool; where they disagree, the
    pseudo-label is the likelier error), and the head is fitted again on those.

    Measured on digits (`coldstart bench al`, 20 seeds, with the round's cold-start switch): share
    0.7 with agreement took the labels to 95% from a median of 70 (at most 10 pseudo-labels per
    human label, no agreement) to 40.
    """

    def __init__(self, pool_X: np.ndarray, rows: np.ndarray, threshold: float, k: int = 10, alpha: float = 0.2,
                 share: float = 0.7, agreement: bool = True):
        from scipy import sparse
        from scipy.sparse import csgraph
        from sklearn.neighbors import kneighbors_graph

        self.X, self.rows, self.threshold, self.alpha = pool_X, np.asarray(rows), threshold, alpha
        self.share, self.agreement = share, agreement
        # The affinity of scikit-learn's LabelSpreading(kernel="knn"): the directed kNN graph
        # (self included), minus its normalised Laplacian with a zero diagonal. A symmetrised
        # graph was measurably worse on digits (92 vs 66 labels to 95%, `coldstart bench al`).
        A = kneighbors_graph(pool_X, n_neighbors=min(k, len(pool_X) - 1), mode="connectivity", include_self=True)
        S = -csgraph.laplacian(A, normed=True)
        S.setdiag(0)
        self.S = sparse.csr_matrix(S)
        self._cache: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def spread(self, tr: np.ndarray, y: np.ndarray, n_classes: int, exclude: np.ndarray | None = None,
               iters: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Label spreading from the labeled samples ``tr``: (rows the labels reached, none of them
        human-labeled nor in ``exclude``; their labels; their confidence), by ascending row."""
        key = tr.tobytes() + (b"" if exclude is None else exclude.tobytes())
        if key not in self._cache:
            Y0 = np.zeros((len(self.X), n_classes))
            Y0[self.rows[tr], y[tr]] = 1.0
            F = Y0.copy()
            for _ in range(iters):
                F = self.alpha * (self.S @ F) + (1 - self.alpha) * Y0
            total = F.sum(1)
            conf = np.divide(F.max(1), total, out=np.zeros(len(F)), where=total > 0)
            mask = total > 0
            mask[self.rows] = False  # never relabel a human-labeled image
            if exclude is not None:
                mask[self.rows[exclude]] = False
            keep = np.flatnonzero(mask)
            self._cache[key] = (keep, F[keep].argmax(1), conf[keep])
        return self._cache[key]

    def pseudo(self, tr: np.ndarray, y: np.ndarray, n_classes: int,
               exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(pool rows, labels) spread from the labeled samples ``tr`` with confidence >= threshold,
        the most confident ``share`` of the images without a human label at most."""
        rows, labels, conf = self.spread(tr, y, n_classes, exclude)
        keep = np.flatnonzero(conf >= self.threshold)
        limit = int(np.ceil(self.share * (len(self.X) - len(np.unique(self.rows)))))
        if len(keep) > limit:
            keep = np.sort(keep[np.argsort(-conf[keep], kind="stable")[:limit]])
        return rows[keep], labels[keep]

    def with_rows(self, rows: np.ndarray) -> "SelfTraining":
        """The same graph for a new labeled set (the graph depends on the images only)."""
        other = object.__new__(SelfTraining)
        other.__dict__.update(self.__dict__)
        other.rows, other._cache = np.asarray(rows), {}
        return other

    def fit(self, fit: Callable[[np.ndarray, np.ndarray], LinearHead], X: np.ndarray, y: np.ndarray, tr: np.ndarray,
            te: np.ndarray | None, n_classes: int) -> tuple[LinearHead, int]:
        """``fit(X_train, y_train)`` on the samples ``tr`` and their pseudo-labels; with
        ``agreement``, again on those pseudo-labels the first head agrees with. Returns the head
        and the pseudo-labels it was fitted with."""
        prow, plab = self.pseudo(tr, y, n_classes, te)
        head = fit(np.vstack([X[tr], self.X[prow]]), np.concatenate([y[tr], plab]))
        if self.agreement and len(prow):
            # Every image the spreading reached, confident or not: where the head trained on the
            # confident ones agrees, the two views together are right far more often than either.
            prow, plab, _ = self.spread(tr, y, n_classes, te)
            agree = head.predict_proba(self.X[prow]).argmax(1) == plab
            prow, plab = prow[agree], plab[agree]
            head = fit(np.vstack([X[tr], self.X[prow]]), np.concatenate([y[tr], plab]))
        return head, len(prow)


def _lr(C: float, seed: int) -> LogisticRegression:
    # scikit-learn and SciPy are imported where a head is fitted: ~0.7 s of CPU that every
    # `coldstart` command importing this module (a round with nothing new, a zero-shot round 1,
    # `coldstart serve`'s scheduled checks) would otherwise pay.
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=1000, tol=1e-3, random_state=seed)


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


def fit_with(fit: Callable[[np.ndarray, np.ndarray], LinearHead], X: np.ndarray, y: np.ndarray,
             st: SelfTraining | None, tr: np.ndarray, te: np.ndarray | None, n_classes: int) -> tuple[LinearHead, int]:
    """``fit`` on the samples ``tr``, with ``st``'s pseudo-labels when it is given (``SelfTraining.fit``)."""
    if st is None:
        return fit(X[tr], y[tr]), 0
    return st.fit(fit, X, y, tr, te, n_classes)


def _fit_plain(Xtr, ytr, n_classes, C, seed, center, scale) -> LinearHead:
    if len(np.unique(ytr)) < 2:  # one class seen: it is all the head can say
        bias = np.full(n_classes, -np.inf, np.float32)
        bias[ytr[0]] = 0.0
        return LinearHead(np.zeros((n_classes, Xtr.shape[1]), np.float32), bias)
    return to_head(_lr(C, seed).fit((Xtr - center) / scale, ytr), n_classes, center, scale)


def fit_probe(X: np.ndarray, y: np.ndarray, n_classes: int, *, C: float = 1.0, folds: int = 5, seed: int = 0,
              center: np.ndarray | None = None, scale: np.ndarray | None = None,
              self_training: SelfTraining | None = None) -> ProbeFit:
    """Plain probe on ``X`` ``(N, D)``, ``y`` ``(N,)`` label indices (>= 2 distinct labels).

    Features are standardised with ``center``/``scale`` ``(D,)`` (statistics of every image:
    far steadier than those of a few labels; default: of ``X``). With ``pool_X`` (every image),
    ``rows`` (each labeled sample's row in it) and ``self_training`` (a confidence threshold),
    pseudo-labels join the training set.
    """
    X, y = np.asarray(X, np.float32), np.asarray(y)
    if len(np.unique(y)) < 2:
        raise ValueError("a probe needs human labels of at least two classes")
    center = X.mean(0) if center is None else np.asarray(center, np.float32)
    scale = X.std(0) + 1e-6 if scale is None else np.asarray(scale, np.float32)
    oof = np.zeros((len(y), n_classes), np.float32)
    def fit(Xtr: np.ndarray, ytr: np.ndarray) -> LinearHead:
        return _fit_plain(Xtr, ytr, n_classes, C, seed, center, scale)

    for tr, te in splits(y, folds, seed):
        oof[te] = fit_with(fit, X, y, self_training, tr, te, n_classes)[0].predict_proba(X[te])
    head, n_pseudo = fit_with(fit, X, y, self_training, np.arange(len(y)), None, n_classes)
    return ProbeFit(head, "probe", float((oof.argmax(1) == y).mean()), oof, {"C": C, "pseudo_labels": n_pseudo})


def _fit_prior(X: np.ndarray, y: np.ndarray, W0: np.ndarray, lam: float,
               start: LinearHead | None = None) -> LinearHead:
    """Multinomial LR in the raw space: W = s * V with s the text weights' logit scale, and
    minimise mean CE + lam/2 ||V - V0||^2 by L-BFGS from V0 = W0 / s.

    Working on V (unit scale) rather than W (x100 for CLIP) keeps the problem well conditioned:
    a wrong text direction can be overturned in a few steps instead of hundreds.
    """
    L, D = W0.shape
    s = float(np.linalg.norm(W0, axis=1).mean()) or 1.0
    V0 = W0.astype(np.float64) / s
    Y = np.eye(L, dtype=np.float64)[y]
    X64 = X.astype(np.float64)

    def loss(theta):
        V, b = theta[: L * D].reshape(L, D), theta[L * D :]
        Z = s * (X64 @ V.T) + b
        m = Z.max(1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(Z - m).sum(1))  # exact log-softmax: CLIP-scale logits saturate
        ce = (lse - (Z * Y).sum(1)).mean()
        G = (np.exp(Z - lse[:, None]) - Y) / len(y)
        diff = V - V0
        gV = s * (G.T @ X64) + lam * diff
        gb = G.sum(0) + 1e-4 * b
        return ce + 0.5 * lam * (diff ** 2).sum() + 0.5e-4 * (b ** 2).sum(), np.concatenate([gV.ravel(), gb])

    if start is None:
        theta0 = np.concatenate([V0.ravel(), np.zeros(L)])
    else:  # warm start from the solution for a stronger pull: a few steps instead of hundreds
        theta0 = np.concatenate([(start.weight.astype(np.float64) / s).ravel(), start.bias.astype(np.float64)])
    # A loose tolerance: CV compares accuracies, which settle long before the loss does.
    from scipy.optimize import minimize  # lazy: see _lr

    res = minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 100, "gtol": 1e-4, "ftol": 1e-7})
    V, b = res.x[: L * D].reshape(L, D), res.x[L * D :]
    return LinearHead((s * V).astype(np.float32), b.astype(np.float32))


def fit_zs_probe(X: np.ndarray, y: np.ndarray, W0: np.ndarray, *, folds: int = 5, seed: int = 0,
                 lambdas: tuple[float, ...] = LAMBDAS, self_training: SelfTraining | None = None) -> ProbeFit:
    """Zero-shot-initialised probe over the labels that have a text direction or a sample.

    A label with neither ("none of these" before anyone answered it: a zero row of ``W0``) is
    left out of the fit and gets probability 0, so that it changes nothing until people use it;
    a written class with no sample yet keeps its text direction (zero-shot's knowledge of it).
    """
    L = len(W0)
    y = np.asarray(y)
    free = np.flatnonzero(np.any(W0 != 0, axis=1) | np.isin(np.arange(L), y))
    if len(free) == L:
        return _fit_zs_probe(X, y, W0, folds=folds, seed=seed, lambdas=lambdas, self_training=self_training)
    fit = _fit_zs_probe(X, np.searchsorted(free, y), W0[free], folds=folds, seed=seed, lambdas=lambdas,
                        # its own cache: the spread labels are indices among ``free`` here
                        self_training=None if self_training is None else self_training.with_rows(self_training.rows))
    weight = np.zeros((L, W0.shape[1]), np.float32)
    bias = np.full(L, -np.inf, np.float32)
    weight[free], bias[free] = fit.head.weight, fit.head.bias
    oof = np.zeros((len(y), L), np.float32)
    oof[:, free] = fit.oof_probs
    return ProbeFit(LinearHead(weight, bias), fit.kind, fit.cv_accuracy, oof, fit.params)


def _fit_zs_probe(X: np.ndarray, y: np.ndarray, W0: np.ndarray, *, folds: int = 5, seed: int = 0,
                  lambdas: tuple[float, ...] = LAMBDAS, self_training: SelfTraining | None = None) -> ProbeFit:
    """Zero-shot-initialised probe. ``W0`` ``(L, D)``: logit_scale x the labels' text weights.

    The pull ``lam`` is chosen by CV accuracy on the human labels alone; ties go to the strongest
    pull (closest to zero-shot). With self-training, only the chosen ``lam`` is then
    cross-validated with the pseudo-labels (its accuracy and out-of-fold probabilities are those
    of the model used): 5 fits with the pseudo-labels instead of 25, which took 16 s of a
    17 s train stage on 1,797 images with 100 labels.
    """
    X, y = np.asarray(X, np.float32), np.asarray(y)
    L = len(W0)
    cv = list(splits(y, folds, seed)) if len(y) >= 2 else []
    plain = [(tr, te, (X[tr], y[tr], 0)) for tr, te in cv]
    best: tuple[float, float, np.ndarray, list[LinearHead | None]] | None = None
    warm: list[LinearHead | None] = [None] * len(cv)
    for lam in sorted(lambdas, reverse=True):  # strongest pull first; each fit warm-starts the next
        oof = np.zeros((len(y), L), np.float32)
        for f, (_, te, (Xtr, ytr, _n)) in enumerate(plain):
            fold_head = _fit_prior(Xtr, ytr, W0, lam, warm[f])
            warm[f] = fold_head
            oof[te] = fold_head.predict_proba(X[te])
        acc = float((oof.argmax(1) == y).mean()) if cv else 0.0
        if best is None or acc > best[1]:
            best = (lam, acc, oof, list(warm))
    if best is None:
        raise ValueError("fit_zs_probe: lambdas is empty; give at least one pull strength")
    lam, acc, oof, starts = best
    if self_training is not None and cv:
        oof = np.zeros((len(y), L), np.float32)
        for f, (tr, te) in enumerate(cv):
            def fold_fit(Xtr: np.ndarray, ytr: np.ndarray, start: LinearHead | None = starts[f]) -> LinearHead:
                return _fit_prior(Xtr, ytr, W0, lam, start)

            oof[te] = fit_with(fold_fit, X, y, self_training, tr, te, L)[0].predict_proba(X[te])
        acc = float((oof.argmax(1) == y).mean())
    head, n_pseudo = fit_with(lambda Xtr, ytr: _fit_prior(Xtr, ytr, W0, lam), X, y, self_training,
                              np.arange(len(y)), None, L)
    return ProbeFit(head, "zs-probe", acc, oof, {"lambda": lam, "pseudo_labels": n_pseudo})
