"""embed: encode every not-yet-embedded image (and its tiles) with the configured CLIP model.

Decoding and preprocessing run in DataLoader workers so they overlap with the model's compute;
JPEGs are decoded at reduced scale (PIL draft mode) when the model input is smaller and no
tiles are asked for (tiles need the full resolution).
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

from coldstart.models.clip import ClipConfig, ClipModel, LazyClip
from coldstart.tasks.config import ModelConfig, ViewsConfig
from coldstart.tasks.result import StageResult
from coldstart.tasks.scan import ImageDecodeError, load_rgb
from coldstart.tasks.store import EmbeddingStore
from coldstart.tasks.views import view_images
from coldstart.tasks.workspace import Workspace, read_csv

log = logging.getLogger(__name__)

SHARD_ROWS = 4096  # flush a shard this often, so a killed run keeps most of its work


class ImageFiles(Dataset):
    """Paths -> (index, ``(V, 3, S, S)`` view tensors or None, ``(V-1, 4)`` tile boxes, error)."""

    def __init__(self, paths: list[str], preprocess, image_size: int, views: ViewsConfig | None = None,
                 max_pixels: int = 100_000_000):
        self.paths, self.preprocess, self.size, self.max_pixels = paths, preprocess, image_size, max_pixels
        self.views = views or ViewsConfig()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        draft = None if self.views.tiles else self.size
        try:
            with load_rgb(self.paths[i], max_pixels=self.max_pixels, draft=draft) as img:
                images, boxes = view_images(img, self.views)
                return i, torch.stack([self.preprocess(v) for v in images]), boxes, None
        except (ImageDecodeError, OSError) as e:  # file changed or vanished since scan
            return i, None, None, str(e)


def _collate(items):
    ok = [it for it in items if it[1] is not None]
    failed = [(i, e) for i, t, _, e in items if t is None]
    pixels = torch.cat([t for _, t, _, _ in ok]) if ok else None
    return [i for i, *_ in ok], [len(t) for _, t, _, _ in ok], [b for _, _, b, _ in ok], pixels, failed


def resolve_workers(num_workers: int | str) -> int:
    if num_workers == "auto":
        # One decoder process is enough to hide JPEG decode behind a ViT forward pass on small
        # machines; more workers steal cores from the model's intra-op threads.
        return 1 if (os.cpu_count() or 1) <= 4 else min(4, (os.cpu_count() or 2) // 2)
    return int(num_workers)


def embed_paths(clip: ClipModel, paths: list[str], *, batch_size: int, num_workers: int, views: ViewsConfig | None = None,
                on_batch=None, progress: bool = True) -> list[tuple[int, str]]:
    """Encode image files (and their views); ``on_batch(indices, counts, boxes, vectors)`` gets
    each batch: ``vectors`` ``(sum(counts), D)``, an image's global view first, then its tiles.
    Returns [(index, error)] for files that could not be decoded."""
    views = views or ViewsConfig()
    # With tiles one image gives many model inputs; the model still runs in batch_size chunks.
    loader = DataLoader(ImageFiles(paths, clip.preprocess, clip.image_size, views),
                        batch_size=batch_size, num_workers=num_workers, collate_fn=_collate,
                        pin_memory=clip.device.type == "cuda", persistent_workers=False)
    failed = []
    with tqdm(total=len(paths), desc="embed", unit="img", disable=not progress or not paths) as bar:
        for idx, counts, boxes, pixels, bad in loader:
            failed.extend(bad)
            if pixels is not None:
                vecs = np.concatenate([clip.encode_images(pixels[s : s + batch_size])
                                       for s in range(0, len(pixels), batch_size)])
                if on_batch:
                    on_batch(idx, counts, boxes, vecs)
            bar.update(len(idx) + len(bad))
    return failed


@dataclass
class EmbedResult(StageResult):
    model_id: str
    embedded: int
    failed: int
    total: int
    seconds: float  # decode + preprocess + encode + store, model load excluded
    tiles: int = 0

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 and self.embedded else 0.0

    def metrics(self) -> dict[str, float | None]:
        return {"embedded_new": self.embedded, "embed_failed": self.failed,
                "embed_images_per_s": self.images_per_s or None}


def clip_config(cfg: ModelConfig) -> ClipConfig:
    """The model section of params.yaml as the CLIP adapter's config."""
    return ClipConfig(name=cfg.name, pretrained=cfg.pretrained, device=cfg.device, precision=cfg.precision)


def load_model(cfg: ModelConfig) -> LazyClip:
    """The configured CLIP model, built on first use (once per process)."""
    return LazyClip(clip_config(cfg))


def embed(ws: Workspace, clip: ClipModel, cfg: ModelConfig, views: ViewsConfig | None = None, *,
          progress: bool = True) -> EmbedResult:
    """The embed stage: append every not-yet-embedded current image (and its tiles) to the
    store, data/store/embeddings/ (its declared output), in shards."""
    views = views or ViewsConfig()
    ws.embeddings.mkdir(parents=True, exist_ok=True)  # a versioned output even when nothing is new
    store = EmbeddingStore(ws.embeddings, clip.model_id, views.key("global"))
    tile_store = EmbeddingStore(ws.embeddings, clip.model_id, views.key("tiles")) if views.tiles else None
    have = store.ids()
    have_tiles = tile_store.ids() if tile_store is not None else None
    todo: dict[str, str] = {}
    for r in read_csv(ws.manifest):
        i = r["image_id"]
        if i not in have or (have_tiles is not None and i not in have_tiles):
            todo.setdefault(i, str(ws.images / r["path"]))
    ids, paths = list(todo), list(todo.values())
    if not ids:  # nothing new: the model is not even built
        return EmbedResult(clip.model_id, 0, 0, len(have), 0.0, 0)
    pending: dict[str, list] = {"g_ids": [], "g_vec": [], "t_ids": [], "t_vec": [], "t_box": []}
    n_tiles = 0

    def flush() -> None:
        if pending["g_ids"]:
            store.append(pending["g_ids"], np.concatenate(pending["g_vec"]))
        if tile_store is not None and pending["t_ids"]:
            tile_store.append(pending["t_ids"], np.concatenate(pending["t_vec"]), np.concatenate(pending["t_box"]))
        for v in pending.values():
            v.clear()

    def on_batch(idx, counts, boxes, vecs) -> None:
        nonlocal n_tiles
        row = 0
        for i, count, b in zip(idx, counts, boxes):
            image_id = ids[i]
            if image_id not in have:
                pending["g_ids"].append(image_id)
                pending["g_vec"].append(vecs[row : row + 1])
            if tile_store is not None and image_id not in have_tiles and count > 1:
                pending["t_ids"].extend([image_id] * (count - 1))
                pending["t_vec"].append(vecs[row + 1 : row + count])
                pending["t_box"].append(b)
                n_tiles += count - 1
            row += count
        if len(pending["g_ids"]) + len(pending["t_ids"]) >= SHARD_ROWS:
            flush()  # an image's tiles always land in one shard, contiguous

    t0 = time.perf_counter()
    failed = embed_paths(clip, paths, batch_size=cfg.batch_size, num_workers=resolve_workers(cfg.num_workers),
                         views=views, on_batch=on_batch, progress=progress)
    flush()
    seconds = time.perf_counter() - t0
    for i, err in failed:
        log.warning("not embedded (will retry next round): %s: %s", paths[i], err)
    total = len(have) + len(ids) - len(failed)
    return EmbedResult(clip.model_id, len(ids) - len(failed), len(failed), total, seconds, n_tiles)


@task(name="load_model", cache_policy=NO_CACHE)
def load_model_task(cfg: ModelConfig) -> LazyClip:
    return load_model(cfg)


@task(name="embed", cache_policy=NO_CACHE)
def embed_task(ws: Workspace, clip: ClipModel, cfg: ModelConfig, views: ViewsConfig) -> EmbedResult:
    return embed(ws, clip, cfg, views)
