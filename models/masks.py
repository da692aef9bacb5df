"""Automatic masks over SAM's parts, CPU-frugal, and the cleanup of SAM's over-segmentation.

:func:`generate_masks` returns what segment-anything's ``SamAutomaticMaskGenerator(...,
output_mode="coco_rle").generate(image)`` returns, for the same model and knobs, computed in a
different order. The stock generator upsamples every candidate of every point batch (3 per
point) to the full image twice, then scores, filters and RLE-encodes all of them: on a CPU that,
not the image encoder, is the cost. Here the predicted-IoU filter, the stability score, the
boxes and box NMS are computed on the decoder's 256x256 low-resolution logits, and only the
survivors are upsampled (exactly the stock way: to 1024, unpadded, to the image size) and
encoded, one at a time, so an 8000x6000 photo never holds more than one full-size mask. The mask
decoder itself runs as ``sam_decoder.decode_prompts``: the same function, fewer operations.

Conventions: images are HWC uint8 RGB; sizes are (H, W); boxes are XYXY in pixels unless a key
says XYWH; every coordinate returned is in the pixels of the image passed in, whatever size SAM
worked at (the encoder always sees the long side resized to 1024).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from coldstart.models.errors import ConfigError
from coldstart.models.sam_decoder import decode_prompts

if TYPE_CHECKING:
    from coldstart.models.sam import CleanupSettings, GeneratorSettings, SamModel

_LOW_RES = 256  # the mask decoder's output side: one logit per 4x4 block of the 1024 input
_DECODE_PROMPTS = 16
RULES = ("min_area", "max_area_fraction", "mask_nms", "containment", "one_mask_per_pixel", "max_regions_per_image")


@dataclass(frozen=True)
class ImageEmbedding:
    """SAM's image embedding of one image: compute once, prompt many times, cache by ``model_id``.

    ``features``: (256, 64, 64) float32, the image encoder's output for the image resized to
    ``input_size`` (long side 1024) and zero-padded to 1024x1024. ``original_size``: (H, W) of
    the image given to :func:`image_embedding`, the frame every mask and box is returned in.
    """
    features: np.ndarray
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model_id: str

    def save(self, path: Path) -> None:
        np.savez(path, features=self.features, original_size=self.original_size, input_size=self.input_size,
                 model_id=self.model_id)

    @classmethod
    def load(cls, path: Path) -> ImageEmbedding:
        with np.load(path) as z:
            (oh, ow), (ih, iw) = (int(v) for v in z["original_size"]), (int(v) for v in z["input_size"])
            return cls(z["features"], (oh, ow), (ih, iw), str(z["model_id"]))


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected an RGB image as an (H, W, 3) uint8 array, got {got}")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"empty image {image.shape}")


@torch.inference_mode()
def image_embedding(sam: SamModel, image: np.ndarray) -> ImageEmbedding:
    """Encode ``image`` (H, W, 3) uint8 once, as ``SamPredictor.set_image`` does."""
    from mobile_sam.utils.transforms import ResizeLongestSide

    _check_image(image)
    resized = ResizeLongestSide(sam.image_size).apply_image(image)  # PIL bilinear, the predictor's resize
    x = torch.as_tensor(resized, device=sam.device).permute(2, 0, 1).contiguous()[None]
    features = sam.model.image_encoder(sam.model.preprocess(x).to(sam.dtype))  # normalise, pad to 1024x1024, encode
    return ImageEmbedding(features[0].float().cpu().numpy(), (int(image.shape[0]), int(image.shape[1])),
                          (int(resized.shape[0]), int(resized.shape[1])), sam.model_id)


def _decode(sam: SamModel, emb: ImageEmbedding, points: tuple[torch.Tensor, torch.Tensor] | None,
            boxes: torch.Tensor | None,
            multimask: bool, iou_thresh: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts in the 1024 input frame -> low-res logits (B, C, h, 256) and predicted IoU (B, C):
    the rows of the 256 grid over the image and one more (below them is only padding).
    ``iou_thresh``: masks at or below it will be dropped (``decode_prompts`` skips their work)."""
    model, dtype = sam.model, sam.dtype
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=None)  # fp32: coordinates
    sparse, dense = sparse.to(dtype), dense.to(dtype)
    feats = torch.as_tensor(emb.features, device=sam.device)[None].to(dtype)
    pe = model.prompt_encoder.get_dense_pe().to(dtype)
    # The stock decoder's math, reordered for many prompts (sam_decoder.py); in slices of
    # _DECODE_PROMPTS so its per-prompt (4096 x 256) tensors stay ~0.5 GB at most.
    rows = math.ceil((math.ceil(emb.input_size[0] / 4) + 1) / 4)  # embedding rows that low-res rows read
    outs = [decode_prompts(model.mask_decoder, feats, pe, sparse[i : i + _DECODE_PROMPTS], dense[:1], multimask,
                           rows, iou_thresh) for i in range(0, len(sparse), _DECODE_PROMPTS)]
    return torch.cat([o[0] for o in outs]).float(), torch.cat([o[1] for o in outs]).float()


def _upsample(low: torch.Tensor, input_size: tuple[int, int], out_hw: tuple[int, int],
              transposed: bool = False) -> torch.Tensor:
    """Low-res logits (N, h, w), top-left crop of the 256 grid with >= 1 cell beyond ``input_size``/4,
    -> logits (N, H, W) as ``Sam.postprocess_masks`` computes them: bilinear x4 to the 1024 frame,
    unpadded to ``input_size``, bilinear to ``out_hw``. Cropping the 256 grid first changes
    nothing: at scale 4 a kept output pixel reads only cells up to input_size/4 + 1.
    ``transposed``: (N, W, H) instead, computed so (bilinear is separable), not copied."""
    x = F.interpolate(low[:, None], scale_factor=4, mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    if transposed:
        x, out_hw = x.transpose(-1, -2), out_hw[::-1]
    return F.interpolate(x, out_hw, mode="bilinear", align_corners=False)[:, 0]


@torch.inference_mode()
def segment_box(sam: SamModel, embedding: ImageEmbedding, box_xyxy: Sequence[float],
                image_size: tuple[int, int]) -> np.ndarray:
    """One mask for a box prompt, as ``SamPredictor.predict(box=..., multimask_output=False)``.

    ``box_xyxy``: (x0, y0, x1, y1) in the pixels of an image of ``image_size`` (H, W): the image
    the embedding was computed from, or the same picture at another resolution (an embedding of a
    downscaled copy serves the full-size original). Returns a bool (H, W) mask in that frame.
    """
    from mobile_sam.utils.transforms import ResizeLongestSide

    H, W = (int(v) for v in image_size)
    eh, ew = embedding.original_size
    box = np.asarray(box_xyxy, dtype=np.float64).reshape(1, 4) * np.array([ew / W, eh / H, ew / W, eh / H])
    box = ResizeLongestSide(sam.image_size).apply_boxes(box, embedding.original_size)
    low, _ = _decode(sam, embedding, None, torch.as_tensor(box, dtype=torch.float, device=sam.device), False)
    rows, cols = (min(_LOW_RES, math.ceil(s / 4) + 1) for s in embedding.input_size)
    logits = _upsample(low[:, 0, :rows, :cols], embedding.input_size, (H, W))
    return (logits[0] > sam.mask_threshold).cpu().numpy()


def _check_cfg(cfg: GeneratorSettings) -> None:
    if cfg.crop_n_layers > 0 and cfg.points_per_side // cfg.crop_n_points_downscale_factor**cfg.crop_n_layers < 1:
        raise ConfigError(f"regions.crop_n_points_downscale_factor: {cfg.crop_n_points_downscale_factor}"
                          f"^{cfg.crop_n_layers} leaves no points of regions.points_per_side {cfg.points_per_side} "
                          "in the smallest crops")


def generate_masks(sam: SamModel, image: np.ndarray, cfg: GeneratorSettings, *,
                   embedding: ImageEmbedding | None = None) -> list[dict[str, Any]]:
    """Every object's mask in ``image`` (H, W, 3) uint8, as SamAutomaticMaskGenerator finds them.

    ``cfg`` carries the generator's knobs by their segment-anything names (points_per_side,
    points_per_batch, pred_iou_thresh, stability_score_thresh, stability_score_offset,
    box_nms_thresh, crop_n_layers, crop_nms_thresh, crop_overlap_ratio,
    crop_n_points_downscale_factor, min_mask_region_area). ``embedding``: a cached
    :func:`image_embedding` of this image by this model (used for the whole-image crop).

    Returns one dict per mask, the stock ``output_mode="coco_rle"`` records, best first:
    ``segmentation`` COCO RLE ``{"size": [H, W], "counts": str}``; ``area`` int pixels;
    ``bbox`` [x, y, w, h] (XYWH, w = x_max - x_min as segment-anything computes it);
    ``predicted_iou`` float; ``point_coords`` [[x, y]] the prompt; ``stability_score`` float;
    ``crop_box`` [x, y, w, h] of the crop the mask came from. All in ``image``'s pixels.

    The stability score and the boxes used for NMS come from the 256x256 logits rather than the
    full-size ones, so a mask right at a threshold can fall on the other side of it than in the
    stock generator. A mask both keep is the stock one up to float rounding (the decoder is
    computed in another order, see sam_decoder.py): a pixel or two of a mask, at most, in tests.
    """
    from mobile_sam.utils.amg import build_all_layer_point_grids, generate_crop_boxes

    _check_image(image)
    _check_cfg(cfg)
    H, W = image.shape[:2]
    if embedding is not None and (embedding.model_id != sam.model_id or embedding.original_size != (H, W)):
        raise ValueError(f"embedding of {embedding.original_size} by {embedding.model_id} does not belong to this "
                         f"{(H, W)} image and model {sam.model_id}")
    crop_boxes, layer_idxs = generate_crop_boxes((H, W), cfg.crop_n_layers, cfg.crop_overlap_ratio)
    grids = build_all_layer_point_grids(cfg.points_per_side, cfg.crop_n_layers, cfg.crop_n_points_downscale_factor)
    found = [_crop_candidates(sam, image, cfg, box, grids[layer], embedding if layer == 0 else None)
             for box, layer in zip(crop_boxes, layer_idxs)]
    cands = _Candidates.cat([c for c in found if c is not None])
    if cands is None:
        return []
    if len(crop_boxes) > 1:  # duplicates between crops: prefer the smaller crop's mask, as the stock generator
        cands = cands.take(_nms(cands.boxes, 1 / _box_area(cands.crop_boxes), cfg.crop_nms_thresh))
    return _encode(sam, cands, (H, W), cfg)


@dataclass
class _Candidates:
    """Masks that passed the filters, still as low-res logits; boxes and points in image pixels."""
    low: list[torch.Tensor]  # each (h, w) logits, the crop's top-left cells of the 256 grid
    iou: torch.Tensor  # (N,)
    stability: torch.Tensor  # (N,)
    boxes: torch.Tensor  # (N, 4) XYXY float, approximate (from the low-res mask)
    points: torch.Tensor  # (N, 2)
    crop_boxes: torch.Tensor  # (N, 4) XYXY
    input_sizes: list[tuple[int, int]]  # per mask: the crop's size at the encoder's input

    def take(self, keep: torch.Tensor) -> _Candidates:
        idx = keep.tolist()
        return _Candidates([self.low[i] for i in idx], self.iou[keep], self.stability[keep], self.boxes[keep],
                           self.points[keep], self.crop_boxes[keep], [self.input_sizes[i] for i in idx])

    @staticmethod
    def cat(parts: list[_Candidates]) -> _Candidates | None:
        if not parts:
            return None
        return _Candidates([t for p in parts for t in p.low], torch.cat([p.iou for p in parts]),
                           torch.cat([p.stability for p in parts]), torch.cat([p.boxes for p in parts]),
                           torch.cat([p.points for p in parts]), torch.cat([p.crop_boxes for p in parts]),
                           [s for p in parts for s in p.input_sizes])


def _nms(boxes: torch.Tensor, scores: torch.Tensor, thresh: float) -> torch.Tensor:
    from torchvision.ops.boxes import batched_nms

    return batched_nms(boxes.float(), scores.float(), torch.zeros(len(boxes)), iou_threshold=thresh)


def _box_area(b: torch.Tensor) -> torch.Tensor:
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def _crop_candidates(sam: SamModel, image: np.ndarray, cfg: GeneratorSettings, crop_box: list[int],
                     grid: np.ndarray, embedding: ImageEmbedding | None) -> _Candidates | None:
    """One crop: encode it, decode the point grid in batches (coarse to fine, skipping covered
    points, with ``cfg.skip_covered_points``), filter on low-res logits, box NMS."""
    from mobile_sam.utils.transforms import ResizeLongestSide

    x0, y0, x1, y1 = crop_box
    ch, cw = y1 - y0, x1 - x0
    emb = embedding or image_embedding(sam, np.ascontiguousarray(image[y0:y1, x0:x1]))
    ih, iw = emb.input_size
    # The cells of the 256 grid that cover the unpadded input, and one more for the upsampling.
    rows, cols = math.ceil(ih / 4), math.ceil(iw / 4)
    keep_rows, keep_cols = min(_LOW_RES, rows + 1), min(_LOW_RES, cols + 1)
    sx, sy = cw / (iw / 4), ch / (ih / 4)  # crop pixels per low-res cell
    points = grid * np.array([cw, ch])  # (P, 2) xy in crop pixels
    in_points = ResizeLongestSide(sam.image_size).apply_coords(points, (ch, cw))
    thr = sam.mask_threshold
    parts: list[_Candidates] = []
    # Coarse to fine: each level's points are prompted only where no point's most specific kept
    # mask already lies (_covers); every point when skipping is off.
    covered = torch.zeros(keep_rows, keep_cols, dtype=torch.bool)
    cells = np.minimum((in_points / 4).astype(np.int64), [keep_cols - 1, keep_rows - 1])  # (P, 2) x, y cells
    skip = cfg.skip_covered_points
    for todo in (point_levels(int(round(math.sqrt(len(points))))) if skip else [np.arange(len(points))]):
        while len(todo):
            if skip:  # coverage grows batch by batch, within a level too
                todo = todo[~covered[cells[todo, 1], cells[todo, 0]].numpy()]
            batch, todo = todo[: cfg.points_per_batch], todo[cfg.points_per_batch :]
            found = _decode_points(sam, emb, cfg, batch, points, in_points, crop_box, image.shape,
                                   (rows, cols, keep_rows, keep_cols, sx, sy)) if len(batch) else None
            if found is not None:
                parts.append(found[0])
                if skip:
                    covered |= _covers(torch.stack(found[0].low), found[1], thr, 0.95 * rows * cols)
    cands = _Candidates.cat(parts)
    if cands is None:
        return None
    cands = cands.take(_nms(cands.boxes, cands.iou, cfg.box_nms_thresh))  # duplicates within the crop
    cands.boxes = cands.boxes + torch.tensor([x0, y0, x0, y0], dtype=torch.float)
    cands.points = cands.points + torch.tensor([x0, y0], dtype=torch.float64)
    return cands


def point_levels(n: int) -> list[np.ndarray]:
    """Indices of an n x n point grid (row-major, as segment-anything builds it) in coarse-to-fine
    levels: every 4th point of every 4th row first (for n >= 8), then every 2nd, then the rest;
    every index exactly once. A grid that is not square (crops' grids are) is one level."""
    if n * n == 0:
        return [np.arange(0)]
    rows, cols = np.divmod(np.arange(n * n), n)
    seen = np.zeros(n * n, dtype=bool)
    levels = []
    for stride in (s for s in (8, 4, 2, 1) if s == 1 or n >= 4 * s):
        # offset stride//2: a level's points sit between the previous level's, not on them
        this = ~seen & (rows % stride == stride // 2) & (cols % stride == stride // 2) if stride > 1 else ~seen
        levels.append(np.flatnonzero(this))
        seen |= this
    return [lv for lv in levels if len(lv)]


def _covers(low: torch.Tensor, point_of: torch.Tensor, thr: float, max_cells: float) -> torch.Tensor:
    """The low-res cells where a point is not prompted again: inside the smallest kept mask of
    each decoded point. A point's masks are nested (part, object, object and surroundings); a
    point inside the smallest one, the most specific object there, would find the same masks
    again, while a point only inside a larger one may find other parts. ``low``: (N, h, w) kept
    logits; ``point_of``: (N,) which point each came from; a mask of more than ``max_cells``
    cells (about the whole crop) covers nothing."""
    inside = low > thr
    area = inside.flatten(1).sum(1)
    covered = torch.zeros(low.shape[1:], dtype=torch.bool)
    for p in point_of.unique():
        mine = (point_of == p).nonzero()[:, 0]
        k = mine[area[mine].argmin()]
        if area[k] <= max_cells:
            covered |= inside[k]
    return covered


def _decode_points(sam: SamModel, emb: ImageEmbedding, cfg: GeneratorSettings, idx: np.ndarray,
                   points: np.ndarray, in_points: np.ndarray, crop_box: list[int], image_shape: tuple[int, ...],
                   geometry: tuple[int, int, int, int, float, float]) -> tuple[_Candidates, torch.Tensor] | None:
    """Decode the points ``idx`` of the crop's grid (``points`` in crop pixels, ``in_points`` in
    the encoder's frame) and keep the masks that pass the generator's filters, as low-res logits,
    with the point (its position in ``idx``) each came from; None when none does. ``geometry``: the crop's low-res rows and cols, the rows and cols kept
    for upsampling, and crop pixels per low-res cell (x, y)."""
    from mobile_sam.utils.amg import calculate_stability_score, is_box_near_crop_edge

    rows, cols, keep_rows, keep_cols, sx, sy = geometry
    ch, cw = crop_box[3] - crop_box[1], crop_box[2] - crop_box[0]
    thr = sam.mask_threshold
    with torch.inference_mode():
        p = torch.as_tensor(in_points[idx], dtype=torch.float, device=sam.device)
        low, iou = _decode(sam, emb, (p[:, None, :], torch.ones(len(p), 1, dtype=torch.int, device=sam.device)),
                           None, True, cfg.pred_iou_thresh if cfg.pred_iou_thresh > 0 else None)
        low, iou = low.flatten(0, 1), iou.flatten(0, 1)  # (B*3, 256, 256), (B*3,): 3 masks per point
        pts = torch.as_tensor(points[idx]).repeat_interleave(3, dim=0)  # float64, as the stock records
        keep = iou > cfg.pred_iou_thresh if cfg.pred_iou_thresh > 0 else torch.ones_like(iou, dtype=torch.bool)
        valid = low[keep][:, :rows, :cols]
        stab = calculate_stability_score(valid, thr, cfg.stability_score_offset)
        k2 = stab >= cfg.stability_score_thresh if cfg.stability_score_thresh > 0 else torch.ones_like(stab, dtype=torch.bool)
        kept = keep.nonzero()[:, 0][k2]
        boxes = _cell_boxes(valid[k2] > thr, sx, sy, cw, ch)
        near = is_box_near_crop_edge(boxes, crop_box, [0, 0, image_shape[1], image_shape[0]])
        kept, boxes, stab = kept[~near], boxes[~near], stab[k2][~near]
        if len(kept) == 0:
            return None
        # Keep only the cells the upsampling reads: 50 KB a candidate instead of 256 KB.
        low_kept = low[kept][:, :keep_rows, :keep_cols].float().cpu().clone()
        return (_Candidates(list(low_kept), iou[kept].float().cpu(), stab.float().cpu(), boxes.cpu(),
                            pts[kept.cpu()], torch.tensor([crop_box] * len(kept)), [emb.input_size] * len(kept)),
                kept.cpu() // 3)


def _cell_boxes(masks: torch.Tensor, sx: float, sy: float, w: int, h: int) -> torch.Tensor:
    """Bool low-res masks (N, h, w) -> XYXY boxes in crop pixels covering their cells; an empty
    mask gets [0, 0, 0, 0] as segment-anything's ``batched_mask_to_box`` gives it."""
    from mobile_sam.utils.amg import batched_mask_to_box

    cells = batched_mask_to_box(masks).float()  # inclusive cell indices
    empty = ~masks.flatten(1).any(1)
    box = torch.stack([cells[:, 0] * sx, cells[:, 1] * sy, (cells[:, 2] + 1) * sx - 1, (cells[:, 3] + 1) * sy - 1], 1)
    box = torch.minimum(box.clamp(min=0), torch.tensor([w - 1, h - 1, w - 1, h - 1], dtype=torch.float, device=box.device))
    box[empty] = 0
    return box


def _encode(sam: SamModel, c: _Candidates, size: tuple[int, int], cfg: GeneratorSettings) -> list[dict[str, Any]]:
    """Upsample the survivors to the image, threshold, (optionally) fill holes and drop islands,
    and write the stock records. Masks are built transposed, (W, H) C-order, which is the (H, W)
    Fortran order pycocotools encodes from: no transposing copy of a full-size mask is made."""
    from mobile_sam.utils.amg import remove_small_regions
    from pycocotools import mask as mask_utils

    H, W = size
    records: list[dict[str, Any]] = []
    boxes: list[list[int]] = []
    unchanged: list[float] = []
    crop = c.crop_boxes.tolist()
    for i in range(len(c.low)):  # one at a time: an 8000x6000 mask's logits alone are 192 MB
        x0, y0, x1, y1 = crop[i]
        logits = _upsample(c.low[i][None].to(sam.device), c.input_sizes[i], (y1 - y0, x1 - x0), True)
        m = (logits[0] > sam.mask_threshold).cpu().numpy().view(np.uint8)  # (w, h) in the crop, transposed
        del logits
        changed = False
        if cfg.min_mask_region_area > 0:  # the stock post-process: holes, then islands
            m_np, ch1 = remove_small_regions(m.T.astype(bool), cfg.min_mask_region_area, mode="holes")
            m_np, ch2 = remove_small_regions(m_np, cfg.min_mask_region_area, mode="islands")
            m, changed = np.ascontiguousarray(m_np.T).view(np.uint8), ch1 or ch2
        if (x0, y0, x1, y1) == (0, 0, W, H):
            full = m
        else:
            full = np.zeros((W, H), dtype=np.uint8)  # transposed: the Fortran (H, W) layout of RLE
            full[x0:x1, y0:y1] = m
        del m
        box = _mask_box(full)
        rle = mask_utils.encode(full.T[:, :, None])[0]
        del full
        rle["counts"] = rle["counts"].decode("utf-8")
        boxes.append(box)
        unchanged.append(0.0 if changed else 1.0)
        records.append({
            "segmentation": rle,
            "area": int(mask_utils.area(rle)),
            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
            "predicted_iou": float(c.iou[i]),
            "point_coords": [c.points[i].tolist()],
            "stability_score": float(c.stability[i]),
            "crop_box": [x0, y0, x1 - x0, y1 - y0],
        })
    if cfg.min_mask_region_area > 0 and records:
        # Masks changed by the post-process can now duplicate others: box NMS again, preferring
        # the unchanged ones, at the larger of the two NMS thresholds (the stock rule).
        keep = _nms(torch.tensor(boxes, dtype=torch.float), torch.tensor(unchanged),
                    max(cfg.box_nms_thresh, cfg.crop_nms_thresh))
        records = [records[i] for i in keep.tolist()]
    return records


def _mask_box(mask_t: np.ndarray) -> list[int]:
    """Transposed mask (W, H) -> [x0, y0, x1, y1] inclusive; [0, 0, 0, 0] when empty."""
    xs = np.flatnonzero(mask_t.any(axis=1))
    if len(xs) == 0:
        return [0, 0, 0, 0]
    ys = np.flatnonzero(mask_t[xs[0] : xs[-1] + 1].any(axis=0))
    return [int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])]


# --- cleanup: the over-segmentation rules -----------------------------------------------------


def _quality_order(masks: Sequence[dict[str, Any]]) -> list[int]:
    return sorted(range(len(masks)), key=lambda i: (-masks[i]["predicted_iou"], -masks[i]["stability_score"], i))


def cleanup(masks: Sequence[dict[str, Any]], cfg: CleanupSettings,
            labels: Sequence[Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Apply the over-segmentation rules to ``masks`` (records as :func:`generate_masks` returns).

    "Better" means higher ``predicted_iou`` (then ``stability_score``). The rules run in this
    order, each counted by the number of masks it removed (``counts``, keys = :data:`RULES`):

    - ``min_area``: area < ``cfg.min_area`` pixels;
    - ``max_area_fraction``: area > ``cfg.max_area_fraction`` of the image (whole-image masks);
    - ``mask_nms``: mask IoU with a better kept mask > ``cfg.mask_nms_thresh``;
    - ``containment``: at least ``cfg.containment_thresh`` of the mask lies inside a better kept
      mask *of the same label*; only with ``labels`` (one per mask), else it removes nothing;
    - ``one_mask_per_pixel`` (if enabled): each pixel stays with the best mask covering it; a
      mask left with fewer than ``max(1, cfg.min_area)`` pixels is removed, the others shrink;
    - ``max_regions_per_image``: only the best ``cfg.max_regions_per_image`` are kept.

    Returns the kept masks, best first, each a copy of its record with ``index`` (its position
    in ``masks``, to find its label) added; ``segmentation``, ``area`` and ``bbox`` are updated
    where ``one_mask_per_pixel`` took pixels away.
    """
    from pycocotools import mask as mask_utils

    if labels is not None and len(labels) != len(masks):
        raise ValueError(f"{len(labels)} labels for {len(masks)} masks")
    counts = dict.fromkeys(RULES, 0)
    order = _quality_order(masks)
    if not order:
        return [], counts
    H, W = masks[0]["segmentation"]["size"]

    def drop(rule: str, idx: list[int], bad) -> list[int]:
        kept = [i for i in idx if not bad(i)]
        counts[rule] += len(idx) - len(kept)
        return kept

    order = drop("min_area", order, lambda i: masks[i]["area"] < cfg.min_area)
    order = drop("max_area_fraction", order, lambda i: masks[i]["area"] > cfg.max_area_fraction * H * W)
    rles = {i: masks[i]["segmentation"] for i in order}
    order = _greedy(order, rles, lambda a, b: mask_utils.iou([a], [b], [0])[0, 0] > cfg.mask_nms_thresh, counts,
                    "mask_nms")
    if labels is not None:
        # iou with iscrowd=1 is intersection / area of the first mask: the fraction of it inside.
        order = _greedy(order, rles, lambda a, b: mask_utils.iou([a], [b], [1])[0, 0] >= cfg.containment_thresh,
                        counts, "containment", same=lambda i, j: labels[i] == labels[j])
    out = {i: {**masks[i], "index": i} for i in order}
    if cfg.one_mask_per_pixel:
        order = _one_mask_per_pixel(order, out, (H, W), max(1, cfg.min_area), counts)
    counts["max_regions_per_image"] = max(0, len(order) - cfg.max_regions_per_image)
    return [out[i] for i in order[: cfg.max_regions_per_image]], counts


def _greedy(order: list[int], rles: dict[int, dict], clash, counts: dict[str, int], rule: str,
            same=lambda i, j: True) -> list[int]:
    """Walk ``order`` best first; drop a mask that clashes with an already kept (better) one."""
    kept: list[int] = []
    for i in order:
        if any(same(i, j) and clash(rles[i], rles[j]) for j in kept):
            counts[rule] += 1
        else:
            kept.append(i)
    return kept


def _one_mask_per_pixel(order: list[int], out: dict[int, dict], size: tuple[int, int], min_px: int,
                        counts: dict[str, int]) -> list[int]:
    from pycocotools import mask as mask_utils

    claimed = np.zeros(size[::-1], dtype=bool)  # transposed, as the RLE's Fortran layout
    kept = []
    for i in order:
        m = mask_utils.decode(out[i]["segmentation"]).T.astype(bool)  # (W, H) view of Fortran data
        lost = m & claimed
        if lost.any():
            m &= ~claimed
            if m.sum() < min_px:
                counts["one_mask_per_pixel"] += 1
                continue
            rle = mask_utils.encode(m.astype(np.uint8).T[:, :, None])[0]
            rle["counts"] = rle["counts"].decode("utf-8")
            x0, y0, x1, y1 = _mask_box(m)
            out[i].update(segmentation=rle, area=int(mask_utils.area(rle)), bbox=[x0, y0, x1 - x0, y1 - y0])
        claimed |= m
        kept.append(i)
    return kept
