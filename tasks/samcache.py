"""What SAM computed, kept between rounds: the images already segmented by a given segmenter
(Parquet parts, versioned with the regions table) and SAM's image embeddings (a size-capped
cache under .coldstart/, not versioned: recomputable)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from coldstart.models import masks  # by module: tests swap masks' functions
from coldstart.tasks.config import RegionsConfig
from coldstart.tasks.parts import PartTable
from coldstart.tasks.regiontable import Region
from coldstart.tasks.store import model_slug
from coldstart.tasks.workspace import Workspace, atomic_write_bytes

log = logging.getLogger(__name__)


SEGMENTED_DIR = "images"  # beside the regions' parts: which images each SAM model has segmented


def segmented_parts(folder: Path) -> PartTable:
    return PartTable(folder / SEGMENTED_DIR, "key", pa.schema([
        ("key", pa.string()), ("image_id", pa.string()), ("sam_model_id", pa.string()), ("masks", pa.int32()),
        ("kept", pa.int32()), ("round", pa.int32())]))


@dataclass
class Segmented:
    """What segmenting a set of images gave (shared by the stage and `coldstart regions`)."""
    candidates: list[Region]  # unlabeled, one per mask kept by the label-free cleanup, image by image
    X: np.ndarray  # (R, D) unit CLIP embeddings of their crops
    images: list[tuple[str, str, int, int]]  # (image id, path as shown, width, height)
    found: dict[str, tuple[int, int]]  # image id -> (masks, masks kept by the label-free cleanup)
    cleaned: dict[str, int]  # label-free cleanup rule -> masks it removed
    seg_s: float
    embed_s: float


def resolve_checkpoint(ws: Workspace, cfg: RegionsConfig) -> RegionsConfig:
    """``regions.sam_checkpoint`` relative to the workspace, as the other paths in params.yaml."""
    if cfg.sam_checkpoint and not Path(cfg.sam_checkpoint).expanduser().is_absolute():
        return cfg.model_copy(update={"sam_checkpoint": str(ws.root / cfg.sam_checkpoint)})
    return cfg


class SamEmbeddingCache:
    """SAM image embeddings kept between rounds, one file per (SAM model id, image id) under
    ``root/<model-slug>/`` (``.coldstart/cache/sam`` in a workspace: a cache, not versioned).
    Segmenting an image again with other knobs, and outlining its defect, skip the image
    encoder. Float32 as computed (a float16 copy would move mask edges, so a re-segmented
    image would get other region ids). ``max_gb`` bounds the folder: the least recently used
    files go first. ``root`` None: nothing is kept."""
    def __init__(self, root: Path | None, model_id: str, max_gb: float = 2.0):

        self.dir = None if root is None else Path(root) / model_slug(model_id)
        self.model_id, self.max_bytes = model_id, int(max_gb * 2**30)

    def get(self, sam, image_id: str, rgb: np.ndarray):
        """The embedding of ``rgb`` (the image ``image_id``), from the cache or computed and kept."""

        path = None if self.dir is None else self.dir / f"{image_id}.npz"
        if path is not None and path.is_file():
            try:
                emb = masks.ImageEmbedding.load(path)
                if emb.model_id == sam.model_id and emb.original_size == tuple(rgb.shape[:2]):
                    os.utime(path)  # recently used
                    return emb
            except (OSError, ValueError, KeyError) as e:  # a torn or foreign file: compute it again
                log.warning("SAM embedding cache: %s is unreadable (%s); computing it again", path, e)
        emb = masks.image_embedding(sam, rgb)
        if path is not None and self.max_bytes > 0:
            self._put(path, emb)
        return emb

    def _put(self, path: Path, emb) -> None:
        import io


        buf = io.BytesIO()
        emb.save(buf)
        try:
            atomic_write_bytes(path, buf.getvalue())
            # path.parent: the cache folder (get() puts every path there)
            files = sorted(path.parent.glob("*.npz"), key=lambda f: f.stat().st_mtime_ns, reverse=True)
            total = 0
            for f in files:
                total += f.stat().st_size
                if total > self.max_bytes:
                    f.unlink(missing_ok=True)
        except OSError as e:  # a full disk costs speed next time, never the round
            log.warning("SAM embedding cache: cannot keep %s (%s)", path.name, e.strerror or e)


def sam_cache(ws: Workspace, sam, cfg: RegionsConfig) -> SamEmbeddingCache:
    return SamEmbeddingCache(ws.state_dir / "cache" / "sam", sam.model_id, cfg.sam_cache_gb)
