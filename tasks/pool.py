"""The pool: the current images' global-view embeddings, read in one streaming pass.

"Current" means in the manifest now: the store keeps embeddings of images that were deleted or
replaced since, and those must not be trained on or labeled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from coldstart.tasks.scan import image_table
from coldstart.tasks.store import EmbeddingStore
from coldstart.tasks.workspace import Workspace


def current_chunks(ws: Workspace, store: EmbeddingStore) -> Iterator[tuple[list[str], np.ndarray]]:
    """Stream ``(ids, (n, D) embeddings)`` of the images in the manifest, shard by shard."""
    table = image_table(ws)
    for ids, X in store.iter_chunks():
        keep = [k for k, i in enumerate(ids) if i in table]
        if keep:
            yield [ids[k] for k in keep], X[keep]


def labeled_order(ws: Workspace, store: EmbeddingStore, labeled: dict[str, str] | set[str]) -> list[str]:
    """The ids ``read_pool`` returns as ``labeled_ids``, in that order (the store's shards in
    order, images in the manifest, labeled), from the shards' id files alone: no vectors read."""
    table = image_table(ws)
    return [i for path, _ in store.shards() for i in (x.decode() for x in np.load(path))
            if i in table and i in labeled]


@dataclass
class Pool:
    """What training needs from one pass over the store, without holding every embedding
    (unless ``keep_all`` asked for them: small pools, for self-training)."""

    n: int
    center: np.ndarray  # (D,) mean over every current image
    scale: np.ndarray  # (D,) std over every current image
    labeled_ids: list[str]
    labeled_X: np.ndarray  # (n_labeled, D), rows in labeled_ids order
    all_ids: list[str] | None = None
    all_X: np.ndarray | None = None  # (n, D) when kept

    def rows_of_labeled(self) -> np.ndarray:
        """``(n_labeled,)`` row of each labeled image in ``all_X`` (needs ``keep_all``)."""
        where = {i: k for k, i in enumerate(self.all_ids or [])}
        return np.array([where[i] for i in self.labeled_ids], dtype=int)


def read_pool(ws: Workspace, store: EmbeddingStore, labeled: dict[str, str] | set[str], *,
              keep_all: bool = False) -> Pool:
    """One streaming pass: feature statistics, the labeled rows, and optionally everything."""
    n, total, total_sq = 0, 0.0, 0.0  # the sums become (D,) float64 arrays with the first chunk
    ids: list[str] = []
    rows: list[np.ndarray] = []
    all_ids: list[str] = []
    chunks: list[np.ndarray] = []
    for chunk_ids, X in current_chunks(ws, store):
        X64 = X.astype(np.float64)
        n, total, total_sq = n + len(X), total + X64.sum(0), total_sq + (X64 ** 2).sum(0)
        keep = [k for k, i in enumerate(chunk_ids) if i in labeled]
        ids.extend(chunk_ids[k] for k in keep)
        rows.append(X[keep])
        if keep_all:
            all_ids.extend(chunk_ids)
            chunks.append(X)
    if n == 0:
        return Pool(0, np.zeros(0, np.float32), np.ones(0, np.float32), [], np.zeros((0, 0), np.float32))
    mean = np.asarray(total / n)
    std = np.sqrt(np.maximum(total_sq / n - mean ** 2, 0.0)) + 1e-6
    return Pool(n, mean.astype(np.float32), std.astype(np.float32), ids, np.concatenate(rows),
                all_ids if keep_all else None, np.concatenate(chunks) if keep_all else None)
