"""`coldstart bench regions`: our automatic masks against segment-anything's generator.

One synthetic image (1024x768 by default), one SAM (vit_t, random weights seeded 0: nothing is
downloaded here, and timing does not depend on the weights), the same knobs for both:
``SamAutomaticMaskGenerator(...).generate`` and :func:`coldstart.models.masks.generate_masks`,
each timed once from the raw image (image encoder included). ``mask_match`` is the smaller of
the two fractions "masks of one set with a mask of IoU >= 0.9 in the other". Random weights
give no masks under the default thresholds and their masks all span the image (box NMS at 0.7
keeps one), so the defaults here are thresholds that keep about a hundred masks, as SAM finds in
a real photo: pred_iou_thresh 0.1, stability_score_thresh 0, box_nms_thresh 1.0. Then, in a fresh process so its peak RSS is its own, ours on a big photo-sized image
(8000x6000): seconds and peak RSS. Labeling figures come from
``coldstart.tasks.regions.bench_labeling`` when that function exists, else they are null.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from coldstart.bench.relabel import peak_rss_mb
from coldstart.bench.targets import TARGETS


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
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        color = rng.integers(0, 256, 3).astype(np.uint8)
        if rng.random() < 0.5:
            img[y : y + h, x : x + w] = color
        else:
            cy, cx = np.ogrid[0:h, 0:w]
            inside = ((cy - h / 2) / (h / 2)) ** 2 + ((cx - w / 2) / (w / 2)) ** 2 <= 1
            img[y : y + h, x : x + w][inside] = color
    return img


def mask_match(a: list[dict], b: list[dict], iou: float = 0.9) -> tuple[float, float]:
    """(fraction of ``a`` with a mask of IoU >= ``iou`` in ``b``, and of ``b`` in ``a``)."""
    from pycocotools import mask as mask_utils

    if not a or not b:
        return (float(not a), float(not b))
    m = mask_utils.iou([r["segmentation"] for r in a], [r["segmentation"] for r in b], [0] * len(b))
    return float((m.max(axis=1) >= iou).mean()), float((m.max(axis=0) >= iou).mean())


def _cfg(points_per_side: int, pred_iou_thresh: float, stability_score_thresh: float, box_nms_thresh: float):
    from coldstart.tasks.config import RegionsConfig

    return RegionsConfig(sam_type="vit_t", sam_checkpoint=None, device="cpu", points_per_side=points_per_side,
                         pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
                         box_nms_thresh=box_nms_thresh)


def _child_big(width: int, height: int, points_per_side: int, pred_iou_thresh: float,
               stability_score_thresh: float, box_nms_thresh: float) -> None:
    """In a fresh process: ours on a big image; prints seconds, mask count and peak RSS."""
    from coldstart.models.masks import generate_masks
    from coldstart.models.sam import load_sam

    cfg = _cfg(points_per_side, pred_iou_thresh, stability_score_thresh, box_nms_thresh)
    sam = load_sam(cfg)
    image = synthetic_image(width, height, seed=1)
    t = time.perf_counter()
    masks = generate_masks(sam, image, cfg)
    seconds = time.perf_counter() - t
    sizes = {tuple(m["segmentation"]["size"]) for m in masks}
    print(json.dumps({"seconds": seconds, "masks": len(masks), "peak_rss_mb": peak_rss_mb(),
                      "mask_sizes": sorted(sizes)}))


def _run_big(width: int, height: int, *knobs: float) -> dict:
    code = f"from coldstart.bench.regions import _child_big; _child_big({width}, {height}, {', '.join(map(repr, knobs))})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"regions big-image child failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _labeling(image: np.ndarray, masks: list[dict], clip_model: str) -> tuple[float | None, float | None]:
    try:
        from coldstart.tasks import regions
    except ImportError:
        return None, None
    fn = getattr(regions, "bench_labeling", None)
    if not callable(fn):
        return None, None
    import inspect

    from coldstart.models.clip import ClipConfig, load_clip
    from coldstart.models.probe import LinearHead

    clip = load_clip(ClipConfig(name=clip_model, pretrained=None, device="cpu"))
    args = [image, masks, clip]
    if "head" in inspect.signature(fn).parameters:  # a 10-class head over the CLIP embeddings
        w = np.random.default_rng(0).standard_normal((10, clip.embed_dim)).astype(np.float32)
        args.append(LinearHead(w, np.zeros(10, np.float32)))
    ours, naive = fn(*args)
    return round(float(ours), 3), round(float(naive), 3)


def bench_regions(width: int = 1024, height: int = 768, points_per_side: int = 16,
                  big: tuple[int, int] | None = (8000, 6000), pred_iou_thresh: float = 0.1,
                  stability_score_thresh: float = 0.0, box_nms_thresh: float = 1.0,
                  clip_model: str = "ViT-B-32") -> dict:
    import torch

    from coldstart.models.masks import generate_masks, image_embedding
    from coldstart.models.sam import load_sam

    cfg = _cfg(points_per_side, pred_iou_thresh, stability_score_thresh, box_nms_thresh)
    sam = load_sam(cfg)
    image = synthetic_image(width, height)
    image_embedding(sam, image)  # warm-up (thread pools, allocator), timed for neither side
    t = time.perf_counter()
    stock = sam.stock_generator(cfg).generate(image)
    stock_s = time.perf_counter() - t
    t = time.perf_counter()
    ours = generate_masks(sam, image, cfg)
    ours_s = time.perf_counter() - t
    stock_in_ours, ours_in_stock = mask_match(stock, ours)
    print(f"bench regions: vit_t (random weights), {width}x{height}, {points_per_side}x{points_per_side} points, "
          f"pred_iou_thresh {pred_iou_thresh}, stability_score_thresh {stability_score_thresh}, "
          f"box_nms_thresh {box_nms_thresh}", flush=True)
    print(f"  stock SamAutomaticMaskGenerator {stock_s:8.2f} s  {len(stock)} masks")
    print(f"  ours (generate_masks)           {ours_s:8.2f} s  {len(ours)} masks")
    print(f"  matched at mask IoU >= 0.9: {stock_in_ours:.3f} of stock's, {ours_in_stock:.3f} of ours", flush=True)
    from coldstart.models.masks import cleanup

    kept, removed = cleanup(ours, cfg)  # the cleanup rules at their defaults (cfg sets only the generator), counted
    print(f"  cleanup (defaults): {len(ours)} -> {len(kept)} masks; removed "
          + ", ".join(f"{rule} {n}" for rule, n in removed.items()), flush=True)
    label_s, naive_s = _labeling(image, ours, clip_model)
    child = _run_big(*big, points_per_side, pred_iou_thresh, stability_score_thresh, box_nms_thresh) if big else None
    figures = {
        "stock_s_per_img": round(stock_s, 3), "ours_s_per_img": round(ours_s, 3),
        "speedup": round(stock_s / ours_s, 2),
        "mask_match": round(min(stock_in_ours, ours_in_stock), 4),
        "mask_match_stock_in_ours": round(stock_in_ours, 4), "mask_match_ours_in_stock": round(ours_in_stock, 4),
        "stock_masks": len(stock), "ours_masks": len(ours),
        "label_s_per_img": label_s, "naive_label_s_per_img": naive_s,
        "label_share": round(label_s / ours_s, 3) if label_s is not None else None,
        "label_speedup": round(naive_s / label_s, 2) if label_s else None,
        "cleanup_removed": removed, "masks_after_cleanup": len(kept),
        "peak_rss_mb": round(child["peak_rss_mb"], 1) if child else None,
        "big_image_peak_rss_mb": round(child["peak_rss_mb"], 1) if child else None,
        "big_image_s": round(child["seconds"], 3) if child else None,
        "big_image_masks": child["masks"] if child else None,
        "settings": {"sam_type": "vit_t", "weights": "random (seed 0)", "image": [width, height],
                     "big_image": list(big) if big else None, "points_per_side": points_per_side,
                     "points_per_batch": cfg.points_per_batch, "pred_iou_thresh": pred_iou_thresh,
                     "stability_score_thresh": stability_score_thresh, "box_nms_thresh": cfg.box_nms_thresh,
                     "crop_n_layers": cfg.crop_n_layers, "min_mask_region_area": cfg.min_mask_region_area,
                     "clip_model": clip_model if label_s is not None else None},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine(), "torch": torch.__version__},
    }
    if label_s is not None:
        print(f"  labeling {len(ours)} regions: {label_s:.2f} s (naive {naive_s:.2f} s)")
    if child:
        print(f"  ours on {big[0]}x{big[1]}: {child['seconds']:.2f} s, {child['masks']} masks, "
              f"peak RSS {child['peak_rss_mb']:.0f} MB (own process)")
    for key in ("speedup", "mask_match", "ours_s_per_img", "big_image_peak_rss_mb", "label_share", "label_speedup"):
        if figures[key] is not None:
            print(TARGETS[key].line(figures[key]))
    return figures
