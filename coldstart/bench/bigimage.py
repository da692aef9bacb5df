"""`coldstart bench regions`' big image: our automatic masks on a photo-sized synthetic image, in
a fresh process so that its peak RSS is its own (``run_big``). Apart from coldstart/bench/regions.py
so that this process imports only what our masks need: whatever a module imports counts in the
figure. Also the synthetic image and the regions config that both sides of the bench use."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import numpy as np

from coldstart.bench.rss import peak_rss_mb
from coldstart.models.masks import generate_masks
from coldstart.models.sam import load_sam
from coldstart.tasks.config import RegionsConfig


def synthetic_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: a gradient with 40 flat rectangles and ellipses, some overlapping."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    x = np.arange(width, dtype=np.float32)[None, :, None] / width * 80 * np.array([1, 2, 3], np.float32) / 3
    for y0 in range(0, height, 256):  # in bands: an 8000x6000 image never has a float copy
        y = np.arange(y0, min(height, y0 + 256), dtype=np.float32)[:, None, None]
        img[y0 : y0 + 256] = (60 + x + 40 * y / height).astype(np.uint8)
    for _ in range(40):
        w, h = (int(v) for v in rng.integers([width // 20, height // 20], [width // 4, height // 4]))
        left, top = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        color = rng.integers(0, 256, 3).astype(np.uint8)
        if rng.random() < 0.5:
            img[top : top + h, left : left + w] = color
        else:
            cy, cx = np.ogrid[0:h, 0:w]
            inside = ((cy - h / 2) / (h / 2)) ** 2 + ((cx - w / 2) / (w / 2)) ** 2 <= 1
            img[top : top + h, left : left + w][inside] = color
    return img


def regions_config(points_per_side: int, pred_iou_thresh: float, stability_score_thresh: float,
                   box_nms_thresh: float) -> RegionsConfig:
    """The regions config both generators run with: vit_t on the CPU, these knobs."""
    return RegionsConfig(sam_type="vit_t", sam_checkpoint=None, device="cpu", points_per_side=points_per_side,
                         pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
                         box_nms_thresh=box_nms_thresh)


def child_big(width: int, height: int, points_per_side: int, pred_iou_thresh: float,
              stability_score_thresh: float, box_nms_thresh: float) -> None:
    """In a fresh process: ours on a big image; prints seconds, mask count and peak RSS."""
    cfg = regions_config(points_per_side, pred_iou_thresh, stability_score_thresh, box_nms_thresh)
    sam = load_sam(cfg)
    image = synthetic_image(width, height, seed=1)
    t = time.perf_counter()
    masks = generate_masks(sam, image, cfg)
    seconds = time.perf_counter() - t
    sizes = {tuple(m["segmentation"]["size"]) for m in masks}
    print(json.dumps({"seconds": seconds, "masks": len(masks), "peak_rss_mb": peak_rss_mb(),
                      "mask_sizes": sorted(sizes)}))


def run_big(width: int, height: int, *knobs: float) -> dict[str, Any]:
    """``child_big`` in a fresh Python process (its peak RSS its own); its figures."""
    args = ", ".join(map(repr, (width, height, *knobs)))
    code = f"from coldstart.bench.bigimage import child_big; child_big({args})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"regions big-image child failed: {out.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures
