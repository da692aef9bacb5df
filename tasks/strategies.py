"""Selection strategies: arrays in, indices out. No files, no models, no Prefect.

Conventions: ``probs`` ``(N, C)`` class probabilities of the unlabeled pool; ``X`` ``(N, D)``
embeddings of the pool; ``labeled_X`` ``(M, D)`` embeddings already labeled (they count as
covered for diversity). Every strategy returns ``budget`` distinct pool indices, most wanted
first, and breaks ties with a seeded random order, so a run is reproducible.

Layout: the maths as plain functions (``uncertainty``, ``top_uncertain``, ``kcenter_greedy``,
``typiclust``, ``cap_per_class``); :class:`Strategy` subclasses adapt them to one call
signature; :data:`STRATEGIES` names them; :func:`choose` is the one validated entry.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np

from coldstart.tasks.errors import SelectionError

# --- uncertainty measures: (N, C) probabilities -> (N,) scores, higher = more uncertain ------------


def _least_confidence(probs: np.ndarray) -> np.ndarray:
    return 1.0 - probs.max(1)


def _margin(probs: np.ndarray) -> np.ndarray:
    # One class: pad with a zero column, so every image has margin 1 (nothing to choose between).
    top2 = np.sort(probs, axis=1)[:, -2:] if probs.shape[1] > 1 else np.c_[np.zeros(len(probs)), probs]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def _entropy(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 1e-12, 1.0)  # log(0) is -inf, and 0 * -inf is nan
    return -(p * np.log(p)).sum(1)


MEASURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "margin": _margin, "least_confidence": _least_confidence, "entropy": _entropy}


def _check_measure(measure: str) -> None:
    if measure not in MEASURES:
        raise SelectionError(f"unknown uncertainty measure {measure!r}; valid: {', '.join(MEASURES)}")


def uncertainty(probs: np.ndarray, measure: str) -> np.ndarray:
    """``(N, C)`` probabilities -> ``(N,)`` scores by ``measure``, higher = more uncertain."""
    _check_measure(measure)
    return MEASURES[measure](probs)


# --- the maths; inputs are trusted here (choose() validates them) ----------------------------------


def top_uncertain(probs: np.ndarray, budget: int, measure: str, seed: int) -> np.ndarray:
    """``(N, C)`` -> ``(budget,)`` indices of the highest scores by ``measure``; ties in seeded order."""
    scores = uncertainty(probs, measure)
    tiebreak = np.random.default_rng(seed).random(len(probs))
    return np.lexsort((tiebreak, -scores))[:budget]


def kcenter_greedy(X: np.ndarray, budget: int, *, labeled_X: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Coreset by k-center greedy: each pick is the point farthest from everything chosen or labeled.

    ``X`` ``(N, D)``, ``labeled_X`` ``(M, D)`` -> ``(budget,)``. With nothing labeled, the first
    pick is the point nearest the pool's mean (deterministic).
    """
    X = np.asarray(X, np.float32)
    if labeled_X is not None and len(labeled_X):
        dist = _min_dist(X, np.asarray(labeled_X, np.float32))
    else:
        dist = np.full(len(X), np.inf, np.float32)
    picks: list[int] = []
    jitter = np.random.default_rng(seed).random(len(X)) * 1e-9  # ties: seeded, not index order
    for _ in range(budget):
        if np.isinf(dist).all():
            i = int(np.argmin(((X - X.mean(0)) ** 2).sum(1) + jitter))
        else:
            i = int(np.argmax(dist + jitter))
        picks.append(i)
        dist = np.minimum(dist, ((X - X[i]) ** 2).sum(1))
        dist[i] = -np.inf
    return np.array(picks, dtype=int)


def _min_dist(X: np.ndarray, C: np.ndarray, block: int = 4096) -> np.ndarray:
    """``(N, D)``, ``(M, D)`` -> ``(N,)`` squared distance to the nearest row of ``C``, in blocks
    so that an ``N x M`` matrix never has to fit in memory at once."""
    out = np.empty(len(X), np.float32)
    c2 = (C ** 2).sum(1)
    for s in range(0, len(X), block):
        x = X[s : s + block]
        d = (x ** 2).sum(1)[:, None] - 2 * x @ C.T + c2[None, :]
        out[s : s + block] = np.maximum(d.min(1), 0)
    return out


FIT_SAMPLE = 50_000  # typiclust: most points the clustering is fitted on
TYPICAL_SAMPLE = 5_000  # typiclust: most members of one cluster typicality is computed among


def typiclust(X: np.ndarray, budget: int, *, labeled_X: np.ndarray | None = None, seed: int = 0,
              knn: int = 20) -> np.ndarray:
    """TypiClust (Hacohen et al., 2022): cluster into ``labeled + budget`` clusters, and from each
    of the largest clusters holding no labeled point take its most typical point (highest inverse
    mean distance to its ``knn`` nearest neighbours). The cold-start choice: no model needed.

    ``X`` ``(N, D)``, ``labeled_X`` ``(M, D)`` -> ``(budget,)``.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans  # lazy: config imports this module for names

    X = np.asarray(X, np.float32)
    n_lab = 0 if labeled_X is None else len(labeled_X)
    k = min(len(X), budget + n_lab)
    rng = np.random.default_rng(seed)
    # Large pools: fit the clusters on a seeded sample and assign every point to them (the
    # centres of 50 clusters are as well placed by 50,000 points as by a million), and judge
    # typicality within a cluster on at most TYPICAL_SAMPLE of its members: exact kNN inside a
    # 100,000-point cluster is the quadratic cost that made round 1 slow at scale.
    fit_rows = rng.choice(len(X), FIT_SAMPLE, replace=False) if len(X) > FIT_SAMPLE else slice(None)
    km_cls = MiniBatchKMeans if min(len(X), FIT_SAMPLE) > 20_000 else KMeans
    km = km_cls(n_clusters=k, random_state=seed, n_init=3).fit(X[fit_rows])
    labels = km.labels_ if len(X) <= FIT_SAMPLE else np.concatenate(
        [km.predict(X[s : s + 65_536]) for s in range(0, len(X), 65_536)])
    covered = set(km.predict(np.asarray(labeled_X, np.float32)).tolist()) if n_lab else set()
    sizes = np.bincount(labels, minlength=k)
    order = [c for c in np.argsort(-sizes, kind="stable") if c not in covered and sizes[c] > 0]
    picks = []
    for c in order[:budget]:
        members = np.flatnonzero(labels == c)
        if len(members) > TYPICAL_SAMPLE:
            members = np.sort(rng.choice(members, TYPICAL_SAMPLE, replace=False))
        picks.append(_most_typical(X, members, knn))
    if len(picks) < budget:  # fewer uncovered clusters than budget: fill by diversity
        rest = np.setdiff1d(np.arange(len(X)), picks)
        more = kcenter_greedy(X[rest], budget - len(picks), labeled_X=np.vstack(
            [a for a in (labeled_X, X[picks]) if a is not None and len(a)]) if (n_lab or picks) else None, seed=seed)
        picks.extend(rest[more].tolist())
    return np.array(picks, dtype=int)


def _most_typical(X: np.ndarray, members: np.ndarray, knn: int) -> int:
    """The member of a cluster with the highest typicality (inverse mean distance to its neighbours)."""
    from sklearn.neighbors import NearestNeighbors

    nn = min(knn, len(members) - 1)
    if nn < 1:
        return int(members[0])
    dist, _ = NearestNeighbors(n_neighbors=nn + 1).fit(X[members]).kneighbors(X[members])
    typicality = 1.0 / (dist[:, 1:].mean(1) + 1e-12)  # column 0 is the point itself
    return int(members[np.argmax(typicality)])


def cap_per_class(order: np.ndarray, predicted: np.ndarray, budget: int, cap: int) -> np.ndarray:
    """Walk ``order`` (most wanted first), taking at most ``cap`` per predicted class, until
    ``budget``; if the caps leave the batch short, the best of the rest fill it.

    ``order`` ``(K,)`` pool indices, ``predicted`` ``(N,)`` class per pool image -> ``(budget,)``.
    """
    counts: dict[int, int] = {}
    taken, skipped = [], []
    for i in order:
        c = int(predicted[i])
        if counts.get(c, 0) < cap:
            counts[c] = counts.get(c, 0) + 1
            taken.append(int(i))
        else:
            skipped.append(int(i))
        if len(taken) == budget:
            break
    return np.array((taken + skipped)[:budget], dtype=int)


# --- strategies: one call signature --------------------------------------------------------------


class Strategy(ABC):
    """Ranks pool images for a person to label, most wanted first.

    ``strategy(probs (N, C), budget, *, X (N, D) | None, labeled_X (M, D) | None, seed)`` ->
    ``(budget,)`` distinct int pool indices. Inputs are trusted: call through :func:`choose`,
    which validates them. ``needs_embeddings``: ``X`` is required.
    """

    needs_embeddings: ClassVar[bool] = False

    @abstractmethod
    def __call__(self, probs: np.ndarray, budget: int, *, X: np.ndarray | None = None,
                 labeled_X: np.ndarray | None = None, seed: int = 0) -> np.ndarray: ...

    def ranking_length(self, n: int, budget: int) -> int:
        """How many ranked picks a wrapper (the class cap) may ask for: by default the whole pool."""
        return n


@dataclass(frozen=True)
class Random(Strategy):
    """Uniformly random: the baseline."""

    def __call__(self, probs, budget, *, X=None, labeled_X=None, seed=0):
        return np.random.default_rng(seed).permutation(len(probs))[:budget]


@dataclass(frozen=True)
class Uncertain(Strategy):
    """The highest uncertainty scores by ``measure`` (margin, least_confidence, entropy)."""

    measure: str

    def __post_init__(self) -> None:
        _check_measure(self.measure)

    def __call__(self, probs, budget, *, X=None, labeled_X=None, seed=0):
        return top_uncertain(probs, budget, self.measure, seed)


@dataclass(frozen=True)
class KCenter(Strategy):
    """Diversity only: k-center greedy over the embeddings."""

    needs_embeddings: ClassVar[bool] = True

    def __call__(self, probs, budget, *, X=None, labeled_X=None, seed=0):
        return kcenter_greedy(X, budget, labeled_X=labeled_X, seed=seed)

    def ranking_length(self, n: int, budget: int) -> int:
        return min(n, 4 * budget)  # the greedy costs N per pick: enough slack for a cap, not the pool


@dataclass(frozen=True)
class TypiClust(Strategy):
    """Typical points of uncovered clusters; needs no model, so it is the first round's choice."""

    knn: int = 20
    needs_embeddings: ClassVar[bool] = True

    def __call__(self, probs, budget, *, X=None, labeled_X=None, seed=0):
        return typiclust(X, budget, labeled_X=labeled_X, seed=seed, knn=self.knn)

    def ranking_length(self, n: int, budget: int) -> int:
        return budget  # the clusters depend on the budget: a longer ranking would be other picks


@dataclass(frozen=True)
class Hybrid(Strategy):
    """Top ``factor x budget`` by uncertainty, then k-center greedy among them: uncertain *and*
    different from each other and from what is labeled (no batch of near-duplicates)."""

    factor: int = 5
    measure: str = "margin"
    needs_embeddings: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_measure(self.measure)
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, np.integer)) or self.factor < 1:
            raise SelectionError(f"the hybrid factor must be a whole number >= 1, got {self.factor!r}")

    def __call__(self, probs, budget, *, X=None, labeled_X=None, seed=0):
        n = len(probs)
        shortlist = top_uncertain(probs, min(n, max(budget, self.factor * budget)), self.measure, seed)
        return shortlist[kcenter_greedy(X[shortlist], budget, labeled_X=labeled_X, seed=seed)]

    def ranking_length(self, n: int, budget: int) -> int:
        return min(n, 4 * budget)  # as KCenter: k-center greedy over the shortlist


@dataclass(frozen=True)
class ClassCapped(Strategy):
    """At most ``share`` of a batch per predicted class (``probs.argmax(1)``), at least one each,
    so one dominant class cannot fill the batch. Asks ``inner`` for a longer ranking and walks it
    under the cap; if the caps leave the batch short, the best of the rest fill it."""

    inner: Strategy
    share: float

    def __post_init__(self) -> None:
        if not 0 < self.share <= 1:
            raise SelectionError(f"class_cap must be a share of the batch in (0, 1], got {self.share!r}")

    @property
    def needs_embeddings(self) -> bool:  # type: ignore[override]
        return self.inner.needs_embeddings

    def __call__(self, probs, budget, *, X=None, labeled_X=None, seed=0):
        longer = self.inner(probs, self.inner.ranking_length(len(probs), budget), X=X, labeled_X=labeled_X, seed=seed)
        cap = max(1, math.ceil(self.share * budget))
        return cap_per_class(longer, probs.argmax(1), budget, cap)


# --- the registry and the one entry --------------------------------------------------------------

# name -> builder. Every builder takes the same keyword options and uses those it needs, so a
# caller can pass a round's settings (factor, measure) whatever the strategy.
STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "margin": lambda **_: Uncertain("margin"),
    "least_confidence": lambda **_: Uncertain("least_confidence"),
    "entropy": lambda **_: Uncertain("entropy"),
    "random": lambda **_: Random(),
    "kcenter": lambda **_: KCenter(),
    "typiclust": lambda **_: TypiClust(),
    "hybrid": lambda factor=5, measure="margin", **_: Hybrid(factor, measure),
}
OPTIONS = ("factor", "measure", "class_cap")


def build(name: str, *, class_cap: float | None = None, **options) -> Strategy:
    """The strategy called ``name``, built with ``options`` (factor, measure: hybrid's) and, with a
    ``class_cap`` (a share of the batch), wrapped in :class:`ClassCapped`. Raises SelectionError."""
    if name not in STRATEGIES:
        raise SelectionError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise SelectionError(f"unknown selection option(s) {', '.join(unknown)}; valid: {', '.join(OPTIONS)}")
    strategy = STRATEGIES[name](**options)
    return strategy if class_cap is None else ClassCapped(strategy, class_cap)


def choose(name: str, budget: int, *, probs: np.ndarray, X: np.ndarray | None = None,
           labeled_X: np.ndarray | None = None, seed: int = 0, **options) -> np.ndarray:
    """Pick ``budget`` images of the pool by the strategy ``name``: the one validated entry.

    ``probs`` ``(N, C)`` class probabilities of the pool (rows sum to 1); ``X`` ``(N, D)`` its
    embeddings, required by strategies with ``needs_embeddings``; ``labeled_X`` ``(M, D)``
    embeddings of labeled images; ``options``: ``factor``, ``measure`` (hybrid), ``class_cap``.
    Returns ``(budget,)`` distinct int pool indices, most wanted first. Every problem with the
    inputs raises SelectionError in words a user can act on, before any work is done.
    """
    strategy = build(name, **options)
    probs = _checked_probs(probs)
    _check_budget(budget, len(probs))
    if strategy.needs_embeddings:
        X, labeled_X = _checked_embeddings(name, X, labeled_X, len(probs))
    if budget == 0:
        return np.zeros(0, dtype=int)  # nothing asked: no clustering of zero clusters
    return np.asarray(strategy(probs, budget, X=X, labeled_X=labeled_X, seed=seed), dtype=int)


def _checked_probs(probs: np.ndarray) -> np.ndarray:
    """``probs`` as an ``(N, C)`` array of finite rows that sum to ~1, N >= 1."""
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise SelectionError(f"probabilities must be a 2-D array, one row per pool image and one column per "
                             f"class; got shape {probs.shape}")
    if len(probs) == 0:
        raise SelectionError("nothing to select: the pool of unlabeled images is empty")
    bad = np.flatnonzero(~np.isfinite(probs).all(1))
    if bad.size:
        raise SelectionError(f"probabilities must be finite numbers; {bad.size} row(s) hold NaN or infinity "
                             f"(first: row {bad[0]})")
    sums = probs.sum(1)
    off = np.flatnonzero(np.abs(sums - 1) > 1e-3)  # float32 rounding, not a different scale
    if off.size:
        raise SelectionError(f"each row of probabilities must sum to 1; row {off[0]} sums to {sums[off[0]]:.4g} "
                             f"({off.size} row(s) off): pass probabilities, not scores or logits")
    return probs


def _check_budget(budget: int, n: int) -> None:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise SelectionError(f"budget must be a whole number of images, got {budget!r}")
    if budget < 0:
        raise SelectionError(f"budget must be >= 0, got {budget}")
    if budget > n:
        raise SelectionError(f"budget {budget} is larger than the pool of {n} unlabeled images")


def _checked_embeddings(name: str, X, labeled_X, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``X`` as ``(n, D)`` and ``labeled_X`` as ``(M, D)`` (or None), for a strategy that needs them."""
    if X is None:
        raise SelectionError(f"strategy {name!r} needs embeddings of the pool (X, one row per image); none given")
    X = np.asarray(X)
    if X.ndim != 2 or len(X) != n:
        raise SelectionError(f"strategy {name!r} needs one embedding per pool image: X has shape {X.shape}, "
                             f"the pool has {n} images")
    if labeled_X is None or len(labeled_X) == 0:
        return X, None  # nothing labeled yet
    labeled_X = np.asarray(labeled_X)
    if labeled_X.ndim != 2 or labeled_X.shape[1] != X.shape[1]:
        raise SelectionError(f"labeled embeddings have shape {labeled_X.shape}; they must be 2-D with the "
                             f"pool's embedding width {X.shape[1]}")
    return X, labeled_X
