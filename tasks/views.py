"""Views of an image for the model: CLAHE contrast enhancement, sliding-window tiles, and the
per-class aggregation of view scores (multi-scale defect analysis).

Coordinates: boxes are XYXY in pixels of the EXIF-oriented original image (what a person sees).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from coldstart.tasks.config import TileSpec, ViewsConfig


def clahe(img: Image.Image, clip_limit: float = 2.0, tiles: int = 8) -> Image.Image:
    """Equalise the lightness channel (LAB) locally; colours are kept. RGB uint8 in and out."""
    import cv2

    lab = cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles)).apply(lab[..., 0])
    return Image.fromarray(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB))


def _positions(length: int, size: int, stride: int) -> list[int]:
    if size >= length:
        return [0]
    pos = list(range(0, length - size + 1, stride))
    if pos[-1] != length - size:  # cover the far edge too
        pos.append(length - size)
    return pos


def tile_boxes(width: int, height: int, specs: list[TileSpec]) -> np.ndarray:
    """``(T, 4)`` int XYXY square tiles for every spec, row-major, clipped to the image."""
    short = min(width, height)
    boxes = []
    for spec in specs:
        size = int(round(spec.size * short if spec.size <= 1 else spec.size))
        stride = max(1, int(round(spec.stride * short if spec.stride <= 1 else spec.stride)))
        size = max(1, min(size, short))
        for y in _positions(height, size, stride):
            for x in _positions(width, size, stride):
                boxes.append((x, y, x + size, y + size))
    return np.array(boxes, dtype=np.int32).reshape(-1, 4)


def aggregate_views(global_probs: np.ndarray, tile_probs: list[np.ndarray], how: str = "max",
                    k: int = 3, negative: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Combine per-view label probabilities into image scores.

    ``global_probs`` ``(N, L)``; ``tile_probs[n]`` ``(T_n, L)``. Returns ``scores`` ``(N, L)``
    (rows renormalised to sum to 1) and ``winner`` ``(N, L)``: for each class, the view that gave
    its score under max/top-k (0 = global, t + 1 = tile t), -1 for mean.

    The ``negative`` label (e.g. ``ok``) aggregates the other way round (min, or the mean of
    the k smallest): a part is only as flawless as its worst view. With max for every class, a
    part with one scratched tile and eight clean ones would score "ok" as high as "scratch".
    """
    N, L = global_probs.shape
    scores = np.empty((N, L), np.float32)
    winner = np.full((N, L), -1, np.int32)
    for n in range(N):
        views = np.vstack([global_probs[n : n + 1], tile_probs[n]]) if len(tile_probs[n]) else global_probs[n : n + 1]
        kk = min(k, len(views))
        if how == "mean":
            scores[n] = views.mean(0)
        elif how == "max":
            scores[n] = views.max(0)
            winner[n] = views.argmax(0)
        elif how == "topk":
            scores[n] = np.sort(views, axis=0)[-kk:].mean(0)
            winner[n] = views.argmax(0)
        else:
            raise ValueError(f"unknown aggregate {how!r}; valid: max, mean, topk")
        if negative is not None and how != "mean":
            col = views[:, negative]
            scores[n, negative] = col.min() if how == "max" else np.sort(col)[:kk].mean()
            winner[n, negative] = col.argmin()
    scores /= np.maximum(scores.sum(1, keepdims=True), 1e-12)
    return scores, winner


def view_images(img: Image.Image, cfg: ViewsConfig) -> tuple[list[Image.Image], np.ndarray]:
    """The global image and its tiles (after CLAHE if enabled) and the tiles' ``(T, 4)`` boxes."""
    if cfg.clahe:
        img = clahe(img, cfg.clahe_clip_limit, cfg.clahe_tiles)
    boxes = tile_boxes(img.width, img.height, cfg.tiles) if cfg.tiles else np.zeros((0, 4), np.int32)
    return [img] + [img.crop((int(b[0]), int(b[1]), int(b[2]), int(b[3]))) for b in boxes], boxes
