"""`coldstart bench regions`: our automatic masks against segment-anything's generator.

One synthetic image (1024x768 by default), one SAM checkpoint (vit_t, random weights seeded 0:
nothing is downloaded here, and timing does not depend on the weights), the same knobs for all:
``SamAutomaticMaskGenerator(...).generate`` on the fp32 model; ours,
:func:`coldstart.models.masks.generate_masks`, as a round runs it (``regions.precision: auto``,
the points prompted coarse to fine, covered points skipped); and ours on the exact path (fp32,
every point), for what each part gives. Each is timed once from the raw image (image encoder
included), after a warm-up run of each on another image (the kernels of every batch shape are
built then, as on a round's first image); ``ours_s_per_img`` is ours as a round runs it, the
mean over that image and three more. ``mask_match`` is the smaller of
the two fractions "masks of one set with a mask of IoU >= 0.9 in the other". Random weights
give no masks under the default thresholds and their masks all span the image (box NMS at 0.7
keeps one), so the defaults here are thresholds that keep about a hundred masks, as SAM finds in
a real photo: pred_iou_thresh 0.1, stability_score_thresh 0, box_nms_thresh 1.0. Then, in a
fresh process so its peak RSS is its own, ours on a big photo-sized image (8000x6000): seconds
and peak RSS. Labeling (:func:`bench_labeling`): ours as the regions stage does it (the
label-free cleanup first, then the kept masks' crops in batches) against a first script's loop
(one CLIP call per generated mask).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from coldstart.bench.bigimage import regions_config, run_big, synthetic_image
from coldstart.bench.load import MachineLoad
from coldstart.bench.precision import machine
from coldstart.bench.targets import TARGETS
from coldstart.models.clip import ClipConfig, ClipModel, load_clip
from coldstart.models.masks import cleanup, generate_masks
from coldstart.models.probe import LinearHead
from coldstart.models.sam import SamModel, load_sam
from coldstart.tasks.config import RegionsConfig
from coldstart.tasks.crops import letterbox, region_crops
from coldstart.tasks.regions import Head, ImageMasks, label_regions


def mask_match(a: list[dict[str, Any]], b: list[dict[str, Any]], iou: float = 0.9) -> tuple[float, float]:
    """(fraction of ``a`` with a mask of IoU >= ``iou`` in ``b``, and of ``b`` in ``a``)."""
    if not a or not b:
        return (float(not a), float(not b))
    m = mask_utils.iou([r["segmentation"] for r in a], [r["segmentation"] for r in b], [0] * len(b))
    return float((m.max(axis=1) >= iou).mean()), float((m.max(axis=0) >= iou).mean())


def bench_labeling(image: np.ndarray, masks: list[dict[str, Any]], clip: ClipModel, head: Head,
                   cfg: RegionsConfig) -> tuple[float, float, int]:
    """Seconds to label the generated ``masks`` of ``image`` as the regions stage does (the
    label-free cleanup, then ``label_regions``: the kept masks' crops preprocessed on threads and
    encoded in batches) and as a first script does (per generated mask: crop, preprocess, encode
    one, predict), after one warm-up call each. Returns (ours_s, naive_s, masks ours labeled)."""
    if not masks:
        raise ValueError("bench_labeling needs at least one mask")
    n_labels = np.asarray(head.predict_proba(np.zeros((1, clip.embed_dim), np.float32))).shape[1]
    classes = [str(k) for k in range(n_labels)]
    kept: list[dict[str, Any]] = []

    def ours() -> None:
        kept[:] = cleanup(masks, cfg)[0]
        label_regions(clip, head, [ImageMasks("bench", "bench", image, kept)], cfg, classes)

    def naive() -> None:
        for m in masks:
            crops, _ = region_crops(image, [m], cfg)
            head.predict_proba(clip.encode_images(torch.stack([clip.preprocess(letterbox(crops[0]))])))

    times = []
    for fn in (ours, naive):
        fn()  # warm-up: first-call allocations, lazy model build
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times[0], times[1], len(kept)


def _labeling(image: np.ndarray, masks: list[dict[str, Any]], clip_model: str,
              cfg: RegionsConfig) -> tuple[float, float, int, str]:
    """Seconds to label ``masks`` ours and naively with ``clip_model`` (random weights, the
    precision ``auto`` gives here) and a random 10-class head; masks labeled; the model id."""
    clip = load_clip(ClipConfig(name=clip_model, pretrained=None, device="cpu"))
    w = np.random.default_rng(0).standard_normal((10, clip.embed_dim)).astype(np.float32)
    ours, naive, n = bench_labeling(image, masks, clip, LinearHead(w, np.zeros(10, np.float32)), cfg)
    return round(float(ours), 3), round(float(naive), 3), n, clip.model_id


_MORE_IMAGES = 3  # ours_s_per_img: the mean over the image and this many more (a round's steady state)


def _timed_masks(sam: SamModel, image: np.ndarray, cfg: RegionsConfig) -> tuple[list[dict[str, Any]], float]:
    t = time.perf_counter()
    masks = generate_masks(sam, image, cfg)
    return masks, time.perf_counter() - t


def bench_regions(width: int = 1024, height: int = 768, points_per_side: int = 16,
                  big: tuple[int, int] | None = (8000, 6000), pred_iou_thresh: float = 0.1,
                  stability_score_thresh: float = 0.0, box_nms_thresh: float = 1.0,
                  clip_model: str = "ViT-B-32") -> dict[str, Any]:
    """Both generators on one ``width`` x ``height`` image, our cleanup and labeling of its masks,
    ours alone on ``big`` (own process; None skips); print and return the figures."""
    with MachineLoad() as load:
        figures = _run(width, height, points_per_side, big, pred_iou_thresh, stability_score_thresh,
                       box_nms_thresh, clip_model)
    figures.update(load.figures())
    print(load.line())
    return figures


def _run(width: int, height: int, points_per_side: int, big: tuple[int, int] | None, pred_iou_thresh: float,
         stability_score_thresh: float, box_nms_thresh: float, clip_model: str) -> dict[str, Any]:
    cfg = regions_config(points_per_side, pred_iou_thresh, stability_score_thresh, box_nms_thresh)
    exact_cfg = cfg.model_copy(update={"precision": "fp32", "skip_covered_points": False})
    sam, fp32 = load_sam(cfg), load_sam(exact_cfg)
    image = synthetic_image(width, height)
    # Warm-up on another image, timed for none: thread pools, the allocator, and the kernels of
    # every batch shape (bf16 kernels are built on first use of a shape: a round pays that once,
    # on its first image). The stock generator's one shape: a batch of points_per_batch points.
    warm = synthetic_image(width, height, seed=1)
    fp32.stock_generator(exact_cfg.model_copy(update={"points_per_side": 8, "points_per_batch": 64})).generate(warm)
    generate_masks(fp32, warm, exact_cfg)
    generate_masks(sam, warm, cfg)
    print(f"bench regions: vit_t (random weights), {width}x{height}, {points_per_side}x{points_per_side} points, "
          f"pred_iou_thresh {pred_iou_thresh}, stability_score_thresh {stability_score_thresh}, "
          f"box_nms_thresh {box_nms_thresh}; ours: {sam.precision}, skip_covered_points {cfg.skip_covered_points}",
          flush=True)
    t = time.perf_counter()
    stock = fp32.stock_generator(exact_cfg).generate(image)
    stock_s = time.perf_counter() - t
    print(f"  stock SamAutomaticMaskGenerator {stock_s:8.2f} s  {len(stock)} masks (fp32, every point)", flush=True)
    exact, exact_s = _timed_masks(fp32, image, exact_cfg)
    print(f"  ours, exact path                {exact_s:8.2f} s  {len(exact)} masks (fp32, every point)", flush=True)
    ours, ours_s = _timed_masks(sam, image, cfg)
    print(f"  ours, as a round runs it        {ours_s:8.2f} s  {len(ours)} masks ({sam.precision}, coarse to fine)")
    more = [_timed_masks(sam, synthetic_image(width, height, seed=k), cfg)[1] for k in range(2, 2 + _MORE_IMAGES)]
    mean_s = float(np.mean([ours_s, *more]))
    print(f"  ours, as a round runs it, mean of {1 + len(more)} images: {mean_s:.2f} s "
          f"({', '.join(f'{t:.2f}' for t in [ours_s, *more])})", flush=True)
    stock_in_ours, ours_in_stock = mask_match(stock, ours)
    print(f"  matched at mask IoU >= 0.9: {stock_in_ours:.3f} of stock's, {ours_in_stock:.3f} of ours "
          f"(exact path: {min(mask_match(stock, exact)):.3f} both ways)", flush=True)
    settings = _per_setting(cfg, image, stock, {"fp32": fp32, sam.precision: sam},
                            {("fp32", False): (exact, exact_s), (sam.precision, cfg.skip_covered_points): (ours, ours_s)})
    kept, removed = cleanup(ours, cfg)  # the cleanup rules at their defaults (cfg sets only the generator), counted
    print(f"  cleanup (defaults): {len(ours)} -> {len(kept)} masks; removed "
          + ", ".join(f"{rule} {n}" for rule, n in removed.items()), flush=True)
    label_s, naive_s, labeled, clip_id = _labeling(image, ours, clip_model, cfg)
    child = run_big(*big, points_per_side, pred_iou_thresh, stability_score_thresh, box_nms_thresh) if big else None
    figures = {
        "stock_s_per_img": round(stock_s, 3), "ours_s_per_img": round(mean_s, 3),
        "ours_s_first_image": round(ours_s, 3),
        "speedup": round(stock_s / ours_s, 2),
        "mask_match": round(min(stock_in_ours, ours_in_stock), 4),
        "mask_match_stock_in_ours": round(stock_in_ours, 4), "mask_match_ours_in_stock": round(ours_in_stock, 4),
        "stock_masks": len(stock), "ours_masks": len(ours),
        "ours_exact_s_per_img": round(exact_s, 3), "ours_exact_masks": len(exact),
        "exact_speedup": round(stock_s / exact_s, 2), "sam_precision": sam.precision,
        "labeled_masks": labeled, "clip_model_id": clip_id, "per_setting": settings,
        "label_s_per_img": label_s, "naive_label_s_per_img": naive_s,
        "label_share": round(label_s / ours_s, 3),
        "label_speedup": round(naive_s / label_s, 2) if label_s else None,
        "cleanup_removed": removed, "masks_after_cleanup": len(kept),
        **_big_figures(child),
        "settings": _settings(cfg, width, height, big, clip_model),
        "machine": {**machine(), "torch_threads": torch.get_num_threads()},
    }
    _print_rest(figures, len(ours), big, child)
    return figures


def _per_setting(cfg: RegionsConfig, image: np.ndarray, stock: list[dict[str, Any]], models: dict[str, SamModel],
                 done: dict[tuple[str, bool], tuple[list[dict[str, Any]], float]]) -> list[dict[str, Any]]:
    """Ours with each of ``models`` (by precision: fp32 and what ``auto`` gives here, already
    warmed up), every point and coarse to fine: seconds, masks and the match with ``stock`` of
    each (``done``: the settings already timed)."""
    rows = []
    for precision, sam in models.items():
        for skip in (False, True):
            if (precision, skip) not in done:
                run_cfg = cfg.model_copy(update={"precision": precision, "skip_covered_points": skip})
                done[(precision, skip)] = _timed_masks(sam, image, run_cfg)
            masks, seconds = done[(precision, skip)]
            rows.append({"precision": precision, "skip_covered_points": skip, "s_per_img": round(seconds, 3),
                         "masks": len(masks), "mask_match": round(min(mask_match(stock, masks)), 4)})
            print(f"    setting {precision}, skip_covered_points {str(skip).lower():5s}: {seconds:6.2f} s, "
                  f"{len(masks)} masks, matched {rows[-1]['mask_match']:.3f} both ways", flush=True)
    return rows


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
            "skip_covered_points": cfg.skip_covered_points, "precision": cfg.precision, "clip_model": clip_model}


def _print_rest(figures: dict[str, Any], n_masks: int, big: tuple[int, int] | None,
                child: dict[str, Any] | None) -> None:
    """The labeling and big-image lines, then every target's."""
    print(f"  labeling: {figures['label_s_per_img']:.2f} s (cleanup, then {figures['labeled_masks']} kept masks in "
          f"batches); naive, one call per each of the {n_masks} masks: {figures['naive_label_s_per_img']:.2f} s "
          f"({figures['clip_model_id']})")
    if big and child:
        print(f"  ours on {big[0]}x{big[1]}: {child['seconds']:.2f} s, {child['masks']} masks, "
              f"peak RSS {child['peak_rss_mb']:.0f} MB (own process)")
    for key in ("speedup", "mask_match", "ours_s_per_img", "big_image_peak_rss_mb", "label_share", "label_speedup"):
        if figures[key] is not None:
            print(TARGETS[key].line(figures[key]))
