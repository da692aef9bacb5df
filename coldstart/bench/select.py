"""`coldstart bench select`: round-1 and later-round selection over N embeddings, timed.

Calls the production entry point (``coldstart.tasks.strategies.choose``) on N synthetic unit
vectors with cluster structure (60 blobs in D dimensions) and uniform / random probabilities:
TypiClust for round 1 (no labels), hybrid for a later round (with labeled rows).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from coldstart.bench.rss import peak_rss_mb
from coldstart.tasks.strategies import choose


def bench_select(n: int = 1_000_000, dim: int = 512, budget: int = 50, seed: int = 0) -> dict[str, Any]:
    """Round 1's and a later round's selection of ``budget`` among ``n`` ``dim``-d embeddings, timed;
    print and return the figures."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((60, dim)).astype(np.float32)
    X = centres[rng.integers(60, size=n)] + 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    probs = rng.dirichlet(np.ones(10), size=n).astype(np.float32)
    figures = {"n": n, "dim": dim, "budget": budget, "machine": f"{os.uname().machine} {os.cpu_count()} cpus"}
    t = time.perf_counter()
    picked = choose("typiclust", budget, probs=np.full((n, 10), 0.1, np.float32), X=X, seed=seed)
    figures["typiclust_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    choose("hybrid", budget, probs=probs, X=X, labeled_X=X[picked], seed=seed, factor=3)
    figures["hybrid_s"] = round(time.perf_counter() - t, 2)
    figures["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(f"bench select: {n:,} x {dim} embeddings, budget {budget}: round 1 (typiclust) {figures['typiclust_s']} s, "
          f"a later round (hybrid x3 with {budget} labeled) {figures['hybrid_s']} s, peak RSS "
          f"{figures['peak_rss_mb']:.0f} MB (of which the embeddings {n * dim * 4 / 2**20:.0f} MB)")
    return figures
