"""embed: encode every not-yet-embedded image with the configured CLIP model.

Decoding and preprocessing run in DataLoader workers so they overlap with the model's compute;
JPEGs are decoded at reduced scale (PIL draft mode) when the model input is smaller.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from models.clip import ClipModel
from tasks.config import ModelConfig
from tasks.scan import ImageDecodeError, load_rgb
from tasks.store import EmbeddingStore
from tasks.workspace import Workspace, read_csv

log = logging.getLogger(__name__)

SHARD_ROWS = 4096  # flush a shard this often, so a killed run keeps most of its work


class ImageFiles(Dataset):
    """Paths -> (index, preprocessed ``(3, S, S)`` tensor or None, error or None)."""

    def __init__(self, paths: list[str], preprocess, image_size: int, max_pixels: int = 100_000_000):
        self.paths, self.preprocess, self.size, self.max_pixels = paths, preprocess, image_size, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            with load_rgb(self.paths[i], max_pixels=self.max_pixels, draft=self.size) as img:
                return i, self.preprocess(img), None
        except (ImageDecodeError, OSError) as e:  # file changed or vanished since scan
            return i, None, str(e)


def _collate(items):
    ok = [(i, t) for i, t, e in items if t is not None]
    failed = [(i, e) for i, t, e in items if t is None]
    idx = [i for i, _ in ok]
    pixels = torch.stack([t for _, t in ok]) if ok else None
    return idx, pixels, failed


def resolve_workers(num_workers: int | str) -> int:
    if num_workers == "auto":
        # One decoder process is enough to hide JPEG decode behind a ViT forward pass on small
        # machines; more workers steal cores from the model's intra-op threads.
        return 1 if (os.cpu_count() or 1) <= 4 else min(4, (os.cpu_count() or 2) // 2)
    return int(num_workers)


def embed_paths(clip: ClipModel, paths: list[str], *, batch_size: int, num_workers: int,
                on_batch=None, progress: bool = True) -> tuple[list[int], np.ndarray, list[tuple[int, str]]]:
    """Encode image files. Returns (indices encoded, ``(n, D)`` float32, [(index, error)])."""
    loader = DataLoader(ImageFiles(paths, clip.preprocess, clip.image_size), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=_collate,
                        pin_memory=clip.device.type == "cuda", persistent_workers=False)
    done_idx, parts, failed = [], [], []
    with tqdm(total=len(paths), desc="embed", unit="img", disable=not progress or not paths) as bar:
        for idx, pixels, bad in loader:
            failed.extend(bad)
            if pixels is not None:
                vecs = clip.encode_images(pixels)
                done_idx.extend(idx)
                parts.append(vecs)
                if on_batch:
                    on_batch(idx, vecs)
            bar.update(len(idx) + len(bad))
    vecs = np.concatenate(parts) if parts else np.zeros((0, clip.embed_dim), np.float32)
    return done_idx, vecs, failed


@dataclass
class EmbedResult:
    model_id: str
    embedded: int
    failed: int
    total: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 and self.embedded else 0.0


def embed(ws: Workspace, clip: ClipModel, cfg: ModelConfig, *, progress: bool = True) -> EmbedResult:
    store = EmbeddingStore(ws.embeddings, clip.model_id)
    have = store.ids()
    todo: dict[str, str] = {}
    for r in read_csv(ws.manifest):
        if r["image_id"] not in have:
            todo.setdefault(r["image_id"], str(ws.images / r["path"]))
    ids, paths = list(todo), list(todo.values())
    pending_ids: list[str] = []
    pending_vecs: list[np.ndarray] = []

    def flush() -> None:
        if pending_ids:
            store.append(pending_ids, np.concatenate(pending_vecs))
            pending_ids.clear()
            pending_vecs.clear()

    def on_batch(idx: list[int], vecs: np.ndarray) -> None:
        pending_ids.extend(ids[i] for i in idx)
        pending_vecs.append(vecs)
        if len(pending_ids) >= SHARD_ROWS:
            flush()

    t0 = time.perf_counter()
    _, _, failed = embed_paths(clip, paths, batch_size=cfg.batch_size, num_workers=resolve_workers(cfg.num_workers),
                               on_batch=on_batch, progress=progress)
    flush()
    seconds = time.perf_counter() - t0
    for i, err in failed:
        log.warning("not embedded (will retry next round): %s: %s", paths[i], err)
    total = len(have) + len(ids) - len(failed)
    return EmbedResult(clip.model_id, len(ids) - len(failed), len(failed), total, seconds)


@task(name="embed", cache_policy=NO_CACHE)
def embed_task(ws: Workspace, clip: ClipModel, cfg: ModelConfig) -> EmbedResult:
    return embed(ws, clip, cfg)
