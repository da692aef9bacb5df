"""Embedding store: append-only shards keyed by (image content id, model id).

Layout: ``data/store/embeddings/<model-slug>/<view>/NNNNNN.vec.npy`` (float32 ``(n, D)``),
optional ``NNNNNN.box.npy`` (int32 ``(n, 4)`` XYXY, for tile views: one row per tile, an image's
tiles contiguous) and ``NNNNNN.ids.npy`` (``S64`` content ids). Keys are thus (image content id,
model id, view). The ids file is written last and is the commit marker: a vectors file without
its ids file (a process killed mid-append) is ignored and overwritten by the next append. Each round adds shards and never rewrites old ones, so DVC
stores only the new ones.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from coldstart.models.zeroshot import english_only_tokenizer, text_weights
from coldstart.tasks.workspace import atomic_write_bytes


def model_slug(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)


class EmbeddingStore:
    def __init__(self, root: Path, model_id: str, view: str = "global"):
        self.dir = Path(root) / model_slug(model_id) / model_slug(view)
        self.model_id = model_id
        self.view = view

    def _shards(self) -> list[Path]:
        return sorted(self.dir.glob("*.ids.npy")) if self.dir.is_dir() else []

    def ids(self) -> set[str]:
        out: set[str] = set()
        for p in self._shards():
            out.update(x.decode() for x in np.load(p))
        return out

    def next_shard(self) -> int:
        """The number the next shard gets: one past the highest committed one."""
        shards = self._shards()
        return int(shards[-1].name.split(".")[0]) + 1 if shards else 0

    def append(self, ids: list[str], vectors: np.ndarray, boxes: np.ndarray | None = None,
               shard: int | None = None) -> None:
        """Add one shard atomically. ``vectors`` ``(len(ids), D)`` float32, ``boxes`` ``(len(ids), 4)``.
        ``shard``: its number (writers on a cluster are given theirs); None: ``next_shard()``."""
        if len(ids) == 0:
            return
        if len(ids) != len(vectors) or (boxes is not None and len(boxes) != len(ids)):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        self.dir.mkdir(parents=True, exist_ok=True)
        stem = self.dir / f"{self.next_shard() if shard is None else shard:06d}"
        parts = [(Path(f"{stem}.vec.npy"), np.asarray(vectors, np.float32))]
        if boxes is not None:
            parts.append((Path(f"{stem}.box.npy"), np.asarray(boxes, np.int32)))
        for path, arr in parts + [(Path(f"{stem}.ids.npy"), np.array(ids, dtype="S64"))]:
            buf = io.BytesIO()
            np.save(buf, arr)
            atomic_write_bytes(path, buf.getvalue())

    def iter_chunks(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """Stream the store shard by shard: ``(ids, (n, D) float32)``; RAM holds one shard."""
        for raw, X in self.iter_raw():
            yield [x.decode() for x in raw], X

    def iter_raw(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Like iter_chunks, ids left as a ``(n,)`` S64 array (no Python string per image)."""
        for p in self._shards():
            yield self.read_shard(p)

    def shards(self) -> list[tuple[Path, int]]:
        """Each committed shard's ids file and row count (read from the .npy header only)."""
        return [(p, np.load(p, mmap_mode="r").shape[0]) for p in self._shards()]

    @staticmethod
    def read_shard(ids_path: Path) -> tuple[np.ndarray, np.ndarray]:
        """One shard: ``(n,)`` S64 ids and ``(n, D)`` float32 vectors."""
        return np.load(ids_path), np.load(str(ids_path).replace(".ids.npy", ".vec.npy"))

    def iter_boxes(self) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
        """Like iter_chunks, with each row's ``(n, 4)`` box (tile views)."""
        for p in self._shards():
            ids = [x.decode() for x in np.load(p)]
            yield ids, np.load(str(p).replace(".ids.npy", ".vec.npy")), np.load(str(p).replace(".ids.npy", ".box.npy"))

    def __len__(self) -> int:
        return sum(np.load(p, mmap_mode="r").shape[0] for p in self._shards())

    def load(self, wanted: list[str] | None = None) -> tuple[list[str], np.ndarray]:
        """All (or the ``wanted``, in that order) ids and their ``(n, D)`` vectors.

        Shards are memory-mapped, so only the rows asked for are read into RAM.
        """
        ids: list[str] = []
        parts = []
        for p in self._shards():
            ids.extend(x.decode() for x in np.load(p))
            parts.append(np.load(str(p).replace(".ids.npy", ".vec.npy"), mmap_mode="r"))
        if not parts:
            return [], np.zeros((0, 0), np.float32)
        if wanted is None:
            return ids, np.concatenate(parts).astype(np.float32, copy=False)
        where = {i: k for k, i in enumerate(ids)}
        missing = [w for w in wanted if w not in where]
        if missing:
            raise KeyError(f"{len(missing)} image(s) have no embedding for {self.model_id}, e.g. {missing[0]}")
        offsets = np.cumsum([0] + [len(a) for a in parts])
        out = np.empty((len(wanted), parts[0].shape[1]), np.float32)
        for row, w in enumerate(wanted):
            k = where[w]
            s = int(np.searchsorted(offsets, k, side="right") - 1)
            out[row] = parts[s][k - offsets[s]]
        return list(wanted), out


def cached_text_head(root: Path, clip, prompts: list[list[str]]) -> tuple[np.ndarray, float, bool]:
    """What the zero-shot head needs from the text tower, computed once per (model, prompts):
    class text weights ``(S, D)``, the model's logit scale, and whether its tokenizer is
    English-only. Cached in ``root/<model-slug>/<sha256 of the prompts>.npz``: a changed
    description or template changes the key, so a stale matrix is never used; a hit touches
    nothing of ``clip`` but ``model_id``, so the model is not even built."""
    import hashlib
    import json


    key = hashlib.sha256(json.dumps(prompts, ensure_ascii=False).encode("utf-8")).hexdigest()[:24]
    path = Path(root) / model_slug(clip.model_id) / f"{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return z["weights"], float(z["logit_scale"]), bool(z["english_only"])
    weights, scale, english = text_weights(clip, prompts), clip.logit_scale, english_only_tokenizer(clip)
    buf = io.BytesIO()
    np.savez(buf, weights=weights, logit_scale=np.float64(scale), english_only=np.bool_(english))
    atomic_write_bytes(path, buf.getvalue())
    return weights, scale, english


def cached_text_weights(root: Path, clip, prompts: list[list[str]]) -> np.ndarray:
    """Class text weights ``(S, D)`` for ``prompts`` (see ``cached_text_head``)."""
    return cached_text_head(root, clip, prompts)[0]
