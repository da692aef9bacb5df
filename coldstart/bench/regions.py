"""`coldstart bench regions`: our automatic masks against segment-anything's generator.

One synthetic image (1024x768 by default), one SAM (vit_t, random weights seeded 0: nothing is
downloaded here, and timing does not depend on the weights), the same knobs for both:
``SamAutomaticMaskGenerator(...).generate`` and :func:`coldstart.models.masks.generate_masks`,
each timed once from the raw image (image encoder included). ``mask_match`` is the smaller of
the two fractions "masks of one set with a mask of IoU >= 0.9 in the other". Random weights
give no masks under the default thresholds and their masks all span the image (box NMS at 0.7
keeps one), so the defaults here are thresholds that keep about a hundred masks, as SAM finds in
a real photo: pred_iou_thresh 0.1, stability_score_thresh 0, box_nms_thresh 1.0. Then, in a
fresh process so its peak RSS is its own, ours on a big photo-sized image (8000x6000): seconds
and peak RSS. The labeling figures, ours (batched) against a naive loop over the same masks,
come from ``coldstart.tasks.regions.bench_labeling``.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from coldstart.bench.bigimage import regions_config, run_big, synthetic_image
from coldstart.bench.targets import TARGETS
from coldstart.models.clip import ClipConfig, load_clip
from coldstart.models.masks import cleanup, generate_masks, image_embedding
from coldstart.models.probe import LinearHead
from coldstart.models.sam import load_sam
from coldstart.tasks.config import RegionsConfig
from coldstart.tasks.regions import bench_labeling


def mask_match(a: list[dict[str, Any]], b: list[dict[str, Any]], iou: float = 0.9) -> tuple[float, float]:
    """(fraction of ``a`` with a mask of IoU >= ``iou`` in ``b``, and of ``b`` in ``a``)."""
    if not a or not b:
        return (float(not a), float(not b))
    m = mask_utils.iou([r["segmentation"] for r in a], [r["segmentation"] for r in b], [0] * len(b))
    return float((m.max(axis=1) >= iou).mean()), float((m.max(axis=0) >= iou).mean())


def _labeling(image: np.ndarray, masks: list[dict[str, Any]], clip_model: str) -> tuple[float, float]:
    """Seconds to label ``masks`` batched (ours) and naively, with ``clip_model`` (random weights)
    and a random 10-class head over its embeddings."""
    clip = load_clip(ClipConfig(name=clip_model, pretrained=None, device="cpu"))
    w = np.random.default_rng(0).standard_normal((10, clip.embed_dim)).astype(np.float32)
    ours, naive = bench_labeling(image, masks, clip, LinearHead(w, np.zeros(10, np.float32)))
    return round(float(ours), 3), round(float(naive), 3)


def bench_regions(width: int = 1024, height: int = 768, points_per_side: int = 16,
                  big: tuple[int, int] | None = (8000, 6000), pred_iou_thresh: float = 0.1,
                  stability_score_thresh: float = 0.0, box_nms_thresh: float = 1.0,
                  clip_model: str = "ViT-B-32") -> dict[str, Any]:
    """Both generators on one ``width`` x ``height`` image, our cleanup and labeling of its masks,
    ours alone on ``big`` (own process; None skips); print and return the figures."""
    cfg = regions_config(points_per_side, pred_iou_thresh, stability_score_thresh, box_nms_thresh)
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
    kept, removed = cleanup(ours, cfg)  # the cleanup rules at their defaults (cfg sets only the generator), counted
    print(f"  cleanup (defaults): {len(ours)} -> {len(kept)} masks; removed "
          + ", ".join(f"{rule} {n}" for rule, n in removed.items()), flush=True)
    label_s, naive_s = _labeling(image, ours, clip_model)
    child = run_big(*big, points_per_side, pred_iou_thresh, stability_score_thresh, box_nms_thresh) if big else None
    figures = {
        "stock_s_per_img": round(stock_s, 3), "ours_s_per_img": round(ours_s, 3),
        "speedup": round(stock_s / ours_s, 2),
        "mask_match": round(min(stock_in_ours, ours_in_stock), 4),
        "mask_match_stock_in_ours": round(stock_in_ours, 4), "mask_match_ours_in_stock": round(ours_in_stock, 4),
        "stock_masks": len(stock), "ours_masks": len(ours),
        "label_s_per_img": label_s, "naive_label_s_per_img": naive_s,
        "label_share": round(label_s / ours_s, 3),
        "label_speedup": round(naive_s / label_s, 2) if label_s else None,
        "cleanup_removed": removed, "masks_after_cleanup": len(kept),
        **_big_figures(child),
        "settings": _settings(cfg, width, height, big, clip_model),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine(), "torch": torch.__version__},
    }
    _print_rest(figures, len(ours), big, child)
    return figures


def _big_figures(child: dict[str, Any] | None) -> dict[str, Any]:
    """The big image's figures (its process's peak RSS under both names), None without one."""
    return {
        "peak_rss_mb": round(child["peak_rss_mb"], 1) if child else None,
        "big_image_peak_rss_mb": round(child["peak_rss_mb"], 1) if child else None,
        "big_image_s": round(child["seconds"], 3) if child else None,
        "big_image_masks": child["masks"] if child else None,
    }


def _settings(cfg: RegionsConfig, width: int, height: int, big: tuple[int, int] | None,
              clip_model: str) -> dict[str, Any]:
    """What the figures were measured with."""
    return {"sam_type": "vit_t", "weights": "random (seed 0)", "image": [width, height],
            "big_image": list(big) if big else None, "points_per_side": cfg.points_per_side,
            "points_per_batch": cfg.points_per_batch, "pred_iou_thresh": cfg.pred_iou_thresh,
            "stability_score_thresh": cfg.stability_score_thresh, "box_nms_thresh": cfg.box_nms_thresh,
            "crop_n_layers": cfg.crop_n_layers, "min_mask_region_area": cfg.min_mask_region_area,
            "clip_model": clip_model}


def _print_rest(figures: dict[str, Any], n_masks: int, big: tuple[int, int] | None,
                child: dict[str, Any] | None) -> None:
    """The labeling and big-image lines, then every target's."""
    print(f"  labeling {n_masks} regions: {figures['label_s_per_img']:.2f} s "
          f"(naive {figures['naive_label_s_per_img']:.2f} s)")
    if big and child:
        print(f"  ours on {big[0]}x{big[1]}: {child['seconds']:.2f} s, {child['masks']} masks, "
              f"peak RSS {child['peak_rss_mb']:.0f} MB (own process)")
    for key in ("speedup", "mask_match", "ours_s_per_img", "big_image_peak_rss_mb", "label_share", "label_speedup"):
        if figures[key] is not None:
            print(TARGETS[key].line(figures[key]))
