"""Selection strategies: arrays in, indices out. No files, no models, no Prefect.

Conventions: ``probs`` ``(N, C)`` class probabilities of the unlabeled pool; ``X`` ``(N, D)``
embeddings of the pool; ``labeled_X`` ``(M, D)`` embeddings already labeled (they count as
covered for diversity). Every function returns ``budget`` distinct pool indices, most wanted
first, and breaks ties with a seeded random order, so a run is reproducible.
"""

from __future__ import annotations

import math

import numpy as np

from coldstart.models.errors import SelectionError

UNCERTAINTY = ("margin", "least_confidence", "entropy")
STRATEGIES = UNCERTAINTY + ("random", "kcenter", "typiclust", "hybrid")


def uncertainty(probs: np.ndarray, strategy: str) -> np.ndarray:
    """``(N, C)`` probabilities -> ``(N,)`` scores, higher = more uncertain."""
    if strategy == "least_confidence":
        return 1.0 - probs.max(1)
    if strategy == "margin":
        top2 = np.sort(probs, axis=1)[:, -2:] if probs.shape[1] > 1 else np.c_[np.zeros(len(probs)), probs]
        return 1.0 - (top2[:, 1] - top2[:, 0])
    if strategy == "entropy":
        p = np.clip(probs, 1e-12, 1.0)
        return -(p * np.log(p)).sum(1)
    raise SelectionError(f"unknown uncertainty measure {strategy!r}; valid: {', '.join(UNCERTAINTY)}")


def _check(n: int, budget: int) -> None:
    if n == 0:
        raise SelectionError("nothing to select: the pool of unlabeled images is empty")
    if budget > n:
        raise SelectionError(f"budget {budget} is larger than the pool of {n} unlabeled images")
    if budget < 0:
        raise SelectionError(f"budget must be >= 0, got {budget}")


def top_uncertain(probs: np.ndarray, budget: int, strategy: str, seed: int) -> np.ndarray:
    _check(len(probs), budget)
    scores = uncertainty(probs, strategy)
    tiebreak = np.random.default_rng(seed).random(len(probs))
    return np.lexsort((tiebreak, -scores))[:budget]


def kcenter_greedy(X: np.ndarray, budget: int, *, labeled_X: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Coreset by k-center greedy: each pick is the point farthest from everything chosen or labeled.

    With nothing labeled, the first pick is the point nearest the pool's mean (deterministic).
    """
    _check(len(X), budget)
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
    out = np.empty(len(X), np.float32)
    c2 = (C ** 2).sum(1)
    for s in range(0, len(X), block):
        x = X[s : s + block]
        d = (x ** 2).sum(1)[:, None] - 2 * x @ C.T + c2[None, :]
        out[s : s + block] = np.maximum(d.min(1), 0)
    return out


def typiclust(X: np.ndarray, budget: int, *, labeled_X: np.ndarray | None = None, seed: int = 0,
              knn: int = 20) -> np.ndarray:
    """TypiClust (Hacohen et al., 2022): cluster into ``labeled + budget`` clusters, and from each
    of the largest clusters holding no labeled point take its most typical point (highest inverse
    mean distance to its ``knn`` nearest neighbours). The cold-start choice: no model needed.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.neighbors import NearestNeighbors

    _check(len(X), budget)
    X = np.asarray(X, np.float32)
    n_lab = 0 if labeled_X is None else len(labeled_X)
    k = min(len(X), budget + n_lab)
    km_cls = MiniBatchKMeans if len(X) > 20_000 else KMeans
    km = km_cls(n_clusters=k, random_state=seed, n_init=3).fit(X)
    covered = set(km.predict(np.asarray(labeled_X, np.float32)).tolist()) if n_lab else set()
    sizes = np.bincount(km.labels_, minlength=k)
    order = [c for c in np.argsort(-sizes, kind="stable") if c not in covered and sizes[c] > 0]
    picks: list[int] = []
    for c in order[:budget]:
        members = np.flatnonzero(km.labels_ == c)
        nn = min(knn, len(members) - 1)
        if nn < 1:
            picks.append(int(members[0]))
            continue
        dist, _ = NearestNeighbors(n_neighbors=nn + 1).fit(X[members]).kneighbors(X[members])
        typicality = 1.0 / (dist[:, 1:].mean(1) + 1e-12)
        picks.append(int(members[np.argmax(typicality)]))
    if len(picks) < budget:  # fewer uncovered clusters than budget: fill by diversity
        rest = np.setdiff1d(np.arange(len(X)), picks)
        more = kcenter_greedy(X[rest], budget - len(picks), labeled_X=np.vstack(
            [a for a in (labeled_X, X[picks]) if a is not None and len(a)]) if (n_lab or picks) else None, seed=seed)
        picks.extend(rest[more].tolist())
    return np.array(picks, dtype=int)


def hybrid(probs: np.ndarray, X: np.ndarray, budget: int, *, labeled_X: np.ndarray | None = None,
           factor: int = 5, measure: str = "margin", seed: int = 0) -> np.ndarray:
    """Top ``factor x budget`` by uncertainty, then k-center greedy among them: uncertain *and*
    different from each other and from what is labeled (no batch of near-duplicates)."""
    _check(len(probs), budget)
    shortlist = top_uncertain(probs, min(len(probs), max(budget, factor * budget)), measure, seed)
    return shortlist[kcenter_greedy(X[shortlist], budget, labeled_X=labeled_X, seed=seed)]


def cap_per_class(order: np.ndarray, predicted: np.ndarray, budget: int, cap: int) -> np.ndarray:
    """Walk ``order`` (most wanted first), taking at most ``cap`` per predicted class, until
    ``budget``; if the caps leave the batch short, the best of the rest fill it."""
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


def select(strategy: str, budget: int, *, probs: np.ndarray, X: np.ndarray | None = None,
           labeled_X: np.ndarray | None = None, seed: int = 0, factor: int = 5, measure: str = "margin",
           class_cap: float | None = None) -> np.ndarray:
    """Dispatch by name. ``class_cap``: at most this share of the batch per predicted class."""
    if strategy not in STRATEGIES:
        raise SelectionError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    n = len(probs)
    _check(n, budget)
    if strategy in ("kcenter", "typiclust", "hybrid") and X is None:
        raise SelectionError(f"strategy {strategy!r} needs embeddings")
    # With a class cap, rank the whole pool, then walk it under the cap.
    want = n if class_cap else budget
    if strategy == "random":
        order = np.random.default_rng(seed).permutation(n)[:want]
    elif strategy in UNCERTAINTY:
        order = top_uncertain(probs, want, strategy, seed)
    elif strategy == "kcenter":
        order = kcenter_greedy(X, min(want, budget * 4) if class_cap else budget, labeled_X=labeled_X, seed=seed)
    elif strategy == "typiclust":
        order = typiclust(X, budget, labeled_X=labeled_X, seed=seed)
    else:
        order = hybrid(probs, X, min(n, budget * 4) if class_cap else budget, labeled_X=labeled_X, factor=factor,
                       measure=measure, seed=seed)
    if class_cap:
        cap = max(1, math.ceil(class_cap * budget))
        return cap_per_class(order, probs.argmax(1), budget, cap)
    return np.asarray(order[:budget], dtype=int)
