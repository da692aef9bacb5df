"""embed: encode every not-yet-embedded image (and its tiles) with the configured CLIP model.

Decoding and preprocessing run in DataLoader workers so they overlap with the model's compute;
JPEGs are decoded at reduced scale (PIL draft mode) when the model input is smaller and no
tiles are asked for (tiles need the full resolution).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from coldstart.models.clip import ClipConfig, ClipModel, LazyClip, load_clip
from coldstart.tasks.cluster import dask_runner, on_dask
from coldstart.tasks.config import ExecutionConfig, ModelConfig, ScanConfig, ViewsConfig
from coldstart.tasks.imagefiles import ImageDecodeError, load_rgb
from coldstart.tasks.manifest import read_manifest_table
from coldstart.tasks.result import StageResult
from coldstart.tasks.store import EmbeddingStore
from coldstart.tasks.views import view_images
from coldstart.tasks.workspace import Workspace

log = logging.getLogger(__name__)

SHARD_ROWS = 4096  # images per store shard (and per task on a cluster): a killed run keeps most of its work


class ImageFiles(Dataset):
    """Paths -> (index, ``(V, 3, S, S)`` view tensors or None, ``(V-1, 4)`` tile boxes, error)."""
    def __init__(self, paths: list[str], preprocess, image_size: int, views: ViewsConfig | None = None,
                 limits: ScanConfig | None = None):
        self.paths, self.preprocess, self.size = paths, preprocess, image_size
        self.views = views or ViewsConfig()
        self.limits = limits or ScanConfig()  # the scan's caps: a file changed since the scan cannot explode here

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        draft = None if self.views.tiles else self.size
        try:
            with load_rgb(self.paths[i], self.limits, draft=draft) as img:
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
                on_batch=None, progress: bool = True, limits: ScanConfig | None = None) -> list[tuple[int, str]]:
    """Encode image files (and their views); ``on_batch(indices, counts, boxes, vectors)`` gets
    each batch: ``vectors`` ``(sum(counts), D)``, an image's global view first, then its tiles.
    Files are decoded by the scan's guarded ``load_rgb`` under ``limits`` (params.yaml ``scan``).
    Returns [(index, error)] for files that could not be decoded."""
    views = views or ViewsConfig()
    # With tiles one image gives many model inputs; the model still runs in batch_size chunks.
    loader = DataLoader(ImageFiles(paths, clip.preprocess, clip.image_size, views, limits),
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
    return ClipConfig(name=cfg.name, pretrained=cfg.pretrained, device=cfg.device, precision=cfg.precision,
                      family=cfg.family)


def load_model(cfg: ModelConfig) -> LazyClip:
    """The configured CLIP model, built on first use (once per process)."""
    return LazyClip(clip_config(cfg))


def _plan(ws: Workspace, store: EmbeddingStore, tile_store: EmbeddingStore | None
          ) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """What to embed: ids and paths of current images lacking a global vector (or tiles), and
    for each whether it needs the global view ``(n,)`` bool and its tiles ``(n,)`` bool."""
    have = store.ids()
    have_tiles = tile_store.ids() if tile_store is not None else None
    todo: dict[str, str] = {}
    manifest = read_manifest_table(ws, ["image_id"])
    for path, i in zip(manifest["path"].to_pylist(), manifest["image_id"].to_pylist()):
        if i not in have or (have_tiles is not None and i not in have_tiles):
            todo.setdefault(i, str(ws.images / path))
    ids = list(todo)
    need_global = np.array([i not in have for i in ids], bool)
    need_tiles = np.array([have_tiles is not None and i not in have_tiles for i in ids], bool)
    return ids, list(todo.values()), need_global, need_tiles


def _scan_limits(ws: Workspace) -> ScanConfig:
    """The workspace's scan caps (params.yaml ``scan``), which every image decode obeys."""
    return ws.params().scan if ws.params_file.is_file() else ScanConfig()


def embed_shards(clip: ClipModel, store: EmbeddingStore, tile_store: EmbeddingStore | None, ids: list[str],
                 paths: list[str], need_global: np.ndarray, need_tiles: np.ndarray, first_shard: int, *,
                 batch_size: int, num_workers: int, views: ViewsConfig, progress: bool = True,
                 limits: ScanConfig | None = None) -> tuple[list[tuple[str, str]], int]:
    """Encode ``paths`` in one pass; image ``k`` goes to store shard ``first_shard + k //
    SHARD_ROWS``, so that shards are the same whether one process writes them all or a cluster
    writes one each. Returns ([(path, error)] not decoded, tiles written)."""
    pending: dict[str, list] = {"g_ids": [], "g_vec": [], "t_ids": [], "t_vec": [], "t_box": []}
    block = [0]
    n_tiles = 0

    def flush() -> None:
        shard = first_shard + block[0]
        if pending["g_ids"]:
            store.append(pending["g_ids"], np.concatenate(pending["g_vec"]), shard=shard)
        if tile_store is not None and pending["t_ids"]:
            tile_store.append(pending["t_ids"], np.concatenate(pending["t_vec"]), np.concatenate(pending["t_box"]),
                              shard=shard)
        for v in pending.values():
            v.clear()

    def on_batch(idx, counts, boxes, vecs) -> None:
        nonlocal n_tiles
        row = 0
        for i, count, b in zip(idx, counts, boxes):
            if i // SHARD_ROWS != block[0]:  # images arrive in order: the previous shard is complete
                flush()
                block[0] = i // SHARD_ROWS
            if need_global[i]:
                pending["g_ids"].append(ids[i])
                pending["g_vec"].append(vecs[row : row + 1])
            if tile_store is not None and need_tiles[i] and count > 1:  # an image's tiles stay in one shard
                pending["t_ids"].extend([ids[i]] * (count - 1))
                pending["t_vec"].append(vecs[row + 1 : row + count])
                pending["t_box"].append(b)
                n_tiles += count - 1
            row += count

    failed = embed_paths(clip, paths, batch_size=batch_size, num_workers=num_workers, views=views,
                         on_batch=on_batch, progress=progress, limits=limits)
    flush()
    return [(paths[i], err) for i, err in failed], n_tiles


def embed(ws: Workspace, clip: ClipModel, cfg: ModelConfig, views: ViewsConfig | None = None, *,
          progress: bool = True, execution: ExecutionConfig | None = None, limits: ScanConfig | None = None
          ) -> EmbedResult:
    """The embed stage: append every not-yet-embedded current image (and its tiles) to the
    store, data/store/embeddings/ (its declared output), in shards of SHARD_ROWS images: here,
    or one Prefect task per shard on a Dask cluster (``execution``; see coldstart.tasks.cluster).
    ``limits``: params.yaml ``scan``, which every decode obeys (read from the workspace if None)."""
    views = views or ViewsConfig()
    limits = limits or _scan_limits(ws)
    ws.embeddings.mkdir(parents=True, exist_ok=True)  # a versioned output even when nothing is new
    store = EmbeddingStore(ws.embeddings, clip.model_id, views.key("global"))
    tile_store = EmbeddingStore(ws.embeddings, clip.model_id, views.key("tiles")) if views.tiles else None
    ids, paths, need_global, need_tiles = _plan(ws, store, tile_store)
    done = len(store)
    if not ids:  # nothing new: the model is not even built
        return EmbedResult(model_id=clip.model_id, embedded=0, failed=0, total=done, seconds=0.0, tiles=0)
    first = max(store.next_shard(), tile_store.next_shard() if tile_store is not None else 0)
    t0 = time.perf_counter()
    if execution is not None and on_dask(execution):
        failed, n_tiles = _embed_on_dask(ws, cfg, views, limits, execution, ids, paths, need_global, need_tiles,
                                         first)
    else:
        failed, n_tiles = embed_shards(clip, store, tile_store, ids, paths, need_global, need_tiles, first,
                                       batch_size=cfg.batch_size, num_workers=resolve_workers(cfg.num_workers),
                                       views=views, progress=progress, limits=limits)
    seconds = time.perf_counter() - t0
    for path, err in failed:
        log.warning("not embedded (will retry next round): %s: %s", path, err)
    return EmbedResult(model_id=clip.model_id, embedded=len(ids) - len(failed), failed=len(failed),
                       total=len(store), seconds=seconds, tiles=n_tiles)


def _embed_on_dask(ws: Workspace, cfg: ModelConfig, views: ViewsConfig, limits: ScanConfig, execution: ExecutionConfig,
                   ids: list[str], paths: list[str], need_global: np.ndarray, need_tiles: np.ndarray,
                   first: int) -> tuple[list[tuple[str, str]], int]:
    """One task per shard on the cluster. Each shard's work list is a small file in the
    workspace (which workers share), so task parameters stay small at any image count."""
    todo_dir = ws.state_dir / "embed-todo"
    shutil.rmtree(todo_dir, ignore_errors=True)
    todo_dir.mkdir(parents=True)
    shards = []
    for k, s in enumerate(range(0, len(ids), SHARD_ROWS)):
        np.savez(todo_dir / f"{first + k:06d}.npz", ids=np.array(ids[s : s + SHARD_ROWS]),
                 paths=np.array(paths[s : s + SHARD_ROWS]), need_global=need_global[s : s + SHARD_ROWS],
                 need_tiles=need_tiles[s : s + SHARD_ROWS])
        shards.append(first + k)
    try:
        outcomes = embed_on_cluster.with_options(task_runner=dask_runner(execution))(
            str(ws.root), cfg, views, limits, shards)
    finally:
        shutil.rmtree(todo_dir, ignore_errors=True)
    return [f for failed, _ in outcomes for f in failed], sum(t for _, t in outcomes)


@task(name="embed-shard", cache_policy=NO_CACHE, retries=1)
def embed_shard_task(root: str, cfg: ModelConfig, views: ViewsConfig, limits: ScanConfig, shard: int
                     ) -> tuple[list[tuple[str, str]], int]:
    """On a worker: embed one shard's images (its work list in .coldstart/embed-todo/) into the
    store, as shard number ``shard``. The model is built once per worker process."""
    ws = Workspace(Path(root))
    with np.load(ws.state_dir / "embed-todo" / f"{shard:06d}.npz") as z:
        ids, paths = [str(i) for i in z["ids"]], [str(p) for p in z["paths"]]
        need_global, need_tiles = z["need_global"], z["need_tiles"]
    clip = load_clip(clip_config(cfg))
    store = EmbeddingStore(ws.embeddings, clip.model_id, views.key("global"))
    tile_store = EmbeddingStore(ws.embeddings, clip.model_id, views.key("tiles")) if views.tiles else None
    # No DataLoader processes: Dask's worker processes are daemons, which cannot have children;
    # the cluster's own processes are the parallelism.
    return embed_shards(clip, store, tile_store, ids, paths, need_global, need_tiles, shard,
                        batch_size=cfg.batch_size, num_workers=0, views=views, progress=False, limits=limits)


@flow(name="embed-shards")
def embed_on_cluster(root: str, cfg: ModelConfig, views: ViewsConfig, limits: ScanConfig, shards: list[int]
                     ) -> list[tuple[list[tuple[str, str]], int]]:
    """Sub-flow run with the Dask task runner: one embed-shard task per shard."""
    futures = embed_shard_task.map(unmapped(root), unmapped(cfg), unmapped(views), unmapped(limits), shards)
    return [f.result() for f in futures]
