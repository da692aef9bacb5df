"""regions: label each SAM mask with the round's labeler (zero-shot head or probe), and write the
regions as a table, COCO instances JSON or Label Studio polygon pre-annotations.

A mask is a dict as segment-anything's ``SamAutomaticMaskGenerator(output_mode="coco_rle")``
returns it: ``segmentation`` (COCO RLE ``{"size": [H, W], "counts": str}``), ``area`` (pixels),
``bbox`` (XYWH, pixels of the original image), ``predicted_iou``, ``stability_score``, ...

Each mask is seen by the model as a crop: its box grown by ``crop_padding`` of its size on every
side (context), clipped to the image, the pixels outside the mask optionally greyed out, then
letterboxed to a square with the same grey (the model's centre crop would cut a long box short).
The crops of all images are embedded together in batches, so labeling costs one batched forward
pass per ``batch_size`` regions whatever the image count. A region whose label is a negative one
(``ontology.negative_label`` when the ontology has negative classes: "background", "ok") is
dropped.

Coordinates: boxes are in pixels of the EXIF-oriented original image (what a person sees);
``bbox`` is XYWH as in COCO, crop boxes are XYXY.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Iterable, Iterator, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from coldstart.models import masks as sam_masks  # by module: tests swap its functions
from coldstart.models import sam as sam_models  # by module, as masks
from coldstart.tasks.config import Params, RegionsConfig
from coldstart.tasks.crops import letterbox, region_crops
from coldstart.tasks.heads import load_chosen, zero_shot_head
from coldstart.tasks.imagefiles import load_rgb
from coldstart.tasks.labellog import read_events, region_answers
from coldstart.tasks.manifest import read_manifest_table
from coldstart.tasks.ontology import map_answers, negative_labels
from coldstart.tasks.parts import PartTable
from coldstart.tasks.regiontable import (
    DEFECTS_DIR,
    Region,
    crop_store,
    decode_mask,
    mask_box,
    mask_rle,
    read_regions,
    region_id,
    regions_dir,
    regions_parts,
    rle_text,
    write_regions,
)
from coldstart.tasks.relabel import resolved_parts
from coldstart.tasks.result import StageResult
from coldstart.tasks.samcache import SamEmbeddingCache, Segmented, resolve_checkpoint, sam_cache, segmented_parts
from coldstart.tasks.workspace import Workspace

if TYPE_CHECKING:
    import torch

    from coldstart.models.clip import ClipModel

log = logging.getLogger(__name__)


class Head(Protocol):
    """What labels an embedding: ``ZeroShotHead`` or the round's ``ChosenHead`` (a probe)."""

    def predict_proba(self, X: np.ndarray) -> np.ndarray:  # (N, D) unit embeddings -> (N, L)
        ...


@dataclass
class ImageMasks:
    """One image and its masks, the unit ``label_regions`` reads. ``image``: RGB, ``HxWx3`` uint8
    array or PIL image, EXIF orientation already applied (``scan.load_rgb`` does)."""

    image_id: str
    path: str
    image: Image.Image | np.ndarray
    masks: list[dict]


# --- crops ----------------------------------------------------------------------------------------


# --- labeling -------------------------------------------------------------------------------------


def _best_masks(masks: list[dict], limit: int) -> list[dict]:
    """The ``limit`` masks with the highest predicted_iou (ties: the earlier), in their given order."""
    if len(masks) <= limit:
        return masks
    order = sorted(range(len(masks)), key=lambda k: -float(masks[k].get("predicted_iou", 0.0)))
    return [masks[k] for k in sorted(order[:limit])]


def _crop_tensors(clip: ClipModel, items: Iterable[ImageMasks], cfg: RegionsConfig, pool: ThreadPoolExecutor
                  ) -> Iterator[tuple[tuple[str, str, dict], torch.Tensor]]:
    """((image id, path, mask), preprocessed ``(3, S, S)`` crop) for every kept mask of every
    image, in order; nothing keeps a reference to an image once its crops are made.

    An image's crops are preprocessed on ``pool``'s threads (PIL's resize releases the GIL), so
    they are ready while the model encodes the previous batch: per region, preprocessing costs
    about as much as a ViT-B-32 forward pass on a GPU."""
    for item in items:
        masks = _best_masks(list(item.masks), cfg.max_regions_per_image)
        crops, _ = region_crops(item.image, masks, cfg)
        yield from zip(((item.image_id, item.path, m) for m in masks),
                       pool.map(lambda crop: clip.preprocess(letterbox(crop)), crops))


def embed_regions(clip: ClipModel, items: Iterable[ImageMasks], cfg: RegionsConfig, *, batch_size: int = 64
                  ) -> tuple[list[tuple[str, str, dict]], np.ndarray]:
    """Embed the crops of all masks of all ``items`` in batches of ``batch_size`` (a batch spans
    images). Returns ([(image id, path, mask)] in order, ``(R, D)`` float32 unit embeddings)."""
    import torch  # lazy: torch is heavy, and only embedding needs it here

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    which: list[tuple[str, str, dict]] = []
    vectors: list[np.ndarray] = []
    pending: list[torch.Tensor] = []

    def flush() -> None:
        vectors.append(clip.encode_images(torch.stack(pending)))
        pending.clear()

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="region-crops") as pool:
        for where, pixels in _crop_tensors(clip, items, cfg, pool):
            which.append(where)
            pending.append(pixels)
            if len(pending) == batch_size:
                flush()
        if pending:
            flush()
    dim = int(getattr(clip, "embed_dim", 0))
    return which, np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)


def candidate(image_id: str, path: str, mask: dict) -> Region:
    """An unlabeled region from one SAM mask (as ``generate_masks`` returns it) of an image."""
    counts = rle_text(mask["segmentation"]["counts"])
    rle = {"size": [int(v) for v in mask["segmentation"]["size"]], "counts": counts}
    x, y, w, h = (float(v) for v in mask["bbox"])  # XYWH
    return Region(region_id(image_id, counts), image_id, path, "", math.nan, (x, y, w, h),
                  int(mask["area"]), rle, float(mask.get("predicted_iou", math.nan)),
                  float(mask.get("stability_score", math.nan)))


def assign_labels(regions: Sequence[Region], probs: np.ndarray, classes: Sequence[str], *,
                  negatives: Collection[str] = (), labeler: str = "",
                  answers: dict[str, tuple[str, str]] | None = None) -> list[Region]:
    """Each region's label from its row of ``probs`` ``(R, L)`` over ``classes``: the top class,
    its probability as confidence and the top-1 minus top-2 margin. ``answers`` (region id ->
    (label, annotator)) override the model: a person's label, confidence 1, labeler
    ``"human:<annotator>"``. A region whose label is in ``negatives`` is marked
    ``dropped="negative_label"``; the others are not dropped (containment is ``mark_contained``)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(regions), len(classes)):
        raise ValueError(f"the head gives {probs.shape[-1]} probabilities per region, but {len(classes)} classes "
                         f"were given ({', '.join(classes)}): pass the labels the head was trained on, in its order")
    answers = answers or {}
    top2 = np.sort(probs, axis=1)[:, -2:] if len(classes) > 1 else np.concatenate([np.zeros_like(probs), probs], 1)
    best = probs.argmax(1) if len(regions) else np.zeros(0, int)
    out = []
    for r, k, p, (second, first) in zip(regions, best, probs, top2):
        if r.region_id in answers:
            label, who = answers[r.region_id]
            conf, margin, by = 1.0, 1.0, f"human:{who}"
        else:
            label, conf, margin, by = classes[int(k)], float(p[k]), float(first - second), labeler
        out.append(replace(r, label=label, confidence=conf, margin=margin, labeler=by,
                           dropped="negative_label" if label in negatives else ""))
    return out


def mark_contained(regions: Sequence[Region], cfg: RegionsConfig) -> tuple[list[Region], int]:
    """The cleanup rule that needs labels, per image: a region mostly inside a better one of the
    same label (``containment_thresh``) is marked ``dropped="contained"``; regions already
    dropped take no part. Returns (the regions in their order, how many were marked)."""

    by_image: dict[str, list[int]] = {}
    for k, r in enumerate(regions):
        if not r.dropped or r.dropped == "contained":
            by_image.setdefault(r.image_id, []).append(k)
    out = [replace(r, dropped="") if r.dropped == "contained" else r for r in regions]
    marked = 0
    for rows in by_image.values():
        masks = [{"segmentation": out[k].rle, "area": out[k].area, "bbox": list(out[k].bbox),
                  "predicted_iou": _quality(out[k]), "stability_score": _finite(out[k].stability_score)}
                 for k in rows]
        only_containment = dict(min_area=0, max_area_fraction=1.0, mask_nms_thresh=1.0, one_mask_per_pixel=False,
                                max_regions_per_image=len(rows))
        kept, _ = sam_masks.cleanup(masks, cfg.model_copy(update=only_containment),
                          labels=[out[k].label for k in rows])
        keep = {rows[m["index"]] for m in kept}
        for k in rows:
            if k not in keep:
                out[k] = replace(out[k], dropped="contained")
                marked += 1
    return out, marked


def _finite(v: float) -> float:
    return 0.0 if math.isnan(v) else v


def _quality(r: Region) -> float:
    """A region's rank in the containment rule: a person's outline first, then SAM's own score."""
    return 2.0 if r.labeler.startswith("human:") else _finite(r.predicted_iou)


def label_regions(clip: ClipModel, head: Head, items: Iterable[ImageMasks], cfg: RegionsConfig,
                  classes: Sequence[str], *, negatives: Collection[str] = (), labeler: str = "",
                  batch_size: int = 64) -> list[Region]:
    """Label every mask of every image; regions labeled a ``negatives`` label are left out.

    ``items``: images with their masks (read lazily: an image is released once its crops are
    made); ``cfg``: crop padding, blanking and ``max_regions_per_image`` (the masks with the best
    predicted_iou are kept); ``head.predict_proba`` maps ``(R, D)`` embeddings to ``(R, L)``
    probabilities over ``classes`` (the labels, in the head's order). Returns the kept regions,
    in image order and, within an image, in mask order.
    """
    which, X = embed_regions(clip, items, cfg, batch_size=batch_size)
    if not which:
        return []
    labeled = assign_labels([candidate(*w) for w in which], head.predict_proba(X), classes, negatives=negatives,
                            labeler=labeler)
    regions = [r for r in labeled if not r.dropped]
    log.info("%d region(s) labeled, %d dropped as negative", len(regions), len(which) - len(regions))
    return regions


def cleanup_labeled(regions: Sequence[Region], cfg: RegionsConfig) -> tuple[list[Region], dict[str, int]]:
    """``mark_contained`` for regions that are all kept: returns (the regions not contained, in
    their order, {"containment": how many were})."""
    marked, n = mark_contained(regions, cfg)
    return [r for r in marked if not r.dropped], {"containment": n}


def region_head(ws: Workspace, params: Params, clip: ClipModel) -> tuple[Head, str]:
    """The round's labeler for regions: the head the last train stage chose when it reads this
    model's embeddings, else the ontology's zero-shot head. Returns (head, labeler id)."""

    chosen = load_chosen(ws)
    if chosen is not None and chosen.model_id == clip.model_id:
        return chosen, chosen.labeler_id
    head, _ = zero_shot_head(ws, params, clip)
    return head, f"{clip.model_id}+zero-shot"


# --- the regions table ----------------------------------------------------------------------------


# --- exports --------------------------------------------------------------------------------------


# --- the stage -------------------------------------------------------------------------------------


def segment_images(params: Params, sam, clip: ClipModel, images: Iterable[tuple[str, str, Path]], *,
                   cache: SamEmbeddingCache | None = None, progress: bool = False) -> Segmented:
    """SAM masks of each image (one image in memory at a time), the label-free cleanup, and the
    CLIP embedding of every kept mask's crop (batched across images). ``images``: (image id,
    path as shown, file). Boxes and masks are in original pixels."""

    cfg = params.regions
    cache = cache or SamEmbeddingCache(None, getattr(sam, "model_id", ""))
    shown_images: list[tuple[str, str, int, int]] = []
    found: dict[str, tuple[int, int]] = {}
    cleaned: Counter[str] = Counter()
    seg_s = read_s = 0.0

    def segmented() -> Iterator[ImageMasks]:
        nonlocal seg_s, read_s
        for k, (image_id, shown, file) in enumerate(images, start=1):
            t_read = time.perf_counter()
            with load_rgb(file, params.scan) as img:
                rgb = np.asarray(img.convert("RGB"))
            t_seg = time.perf_counter()
            read_s += t_seg - t_read
            masks = sam_masks.generate_masks(sam, rgb, cfg, embedding=cache.get(sam, image_id, rgb))
            kept, counts = sam_masks.cleanup(masks, cfg)
            seg_s += time.perf_counter() - t_seg
            cleaned.update(counts)
            shown_images.append((image_id, shown, rgb.shape[1], rgb.shape[0]))
            found[image_id] = (len(masks), len(kept))
            if progress:
                log.info("regions: image %d (%s): %d mask(s), %d kept", k, shown, len(masks), len(kept))
            yield ImageMasks(image_id, shown, rgb, kept)

    t0 = time.perf_counter()
    which, X = embed_regions(clip, segmented(), cfg)
    embed_s = time.perf_counter() - t0 - seg_s - read_s
    return Segmented([candidate(*w) for w in which], X, shown_images, found, dict(cleaned), seg_s, embed_s)


def segment_and_label(params: Params, sam, clip: ClipModel, head: Head, labeler: str,
                      images: Iterable[tuple[str, str, Path]], *, progress: bool = False
                      ) -> tuple[Segmented, list[Region], float]:
    """``segment_images`` then every region labeled by ``head``, background and contained
    regions marked as dropped. Returns (what segmenting gave, the labeled regions, seconds the
    labeling took in all: crops, embeddings, head)."""
    seg = segment_images(params, sam, clip, images, progress=progress)
    t0 = time.perf_counter()
    labeled = assign_labels(seg.candidates, head.predict_proba(seg.X) if len(seg.X) else
                            np.zeros((0, len(params.ontology.labels))), params.ontology.labels,
                            negatives=negative_labels(params.ontology), labeler=labeler)
    labeled, _ = mark_contained(labeled, params.regions)
    return seg, labeled, seg.embed_s + time.perf_counter() - t0




def localize_defects(sam, params: Params, rows: Iterable[dict], files: dict[str, Path],
                     cache: SamEmbeddingCache | None = None) -> list[Region]:
    """Defect localization: for each resolved row (``read_resolved``) labeled with a class that is
    not negative and carrying a ``location`` (the multi-scale view's winning tile, "x0 y0 x1 y1"
    in original pixels), that tile is a box prompt to SAM over the image's embedding, giving the
    defect's mask and its tight box. One Region per image: label and confidence are the image's;
    ``predicted_iou`` and ``stability_score`` are NaN (a box prompt is not scored);
    ``labeler`` records what gave it, "<labeler>+box:<location>"."""

    negative = negative_labels(params.ontology)
    cache = cache or SamEmbeddingCache(None, getattr(sam, "model_id", ""))
    out = []
    for row in rows:
        if row["label"] in negative or not row.get("location") or row["image_id"] not in files:
            continue
        with load_rgb(files[row["image_id"]], params.scan) as img:
            rgb = np.asarray(img.convert("RGB"))
        box = [float(v) for v in row["location"].split()]
        mask = sam_masks.segment_box(sam, cache.get(sam, row["image_id"], rgb), box, rgb.shape[:2])
        if not mask.any():
            continue  # SAM found nothing in the tile: no region rather than a made-up one
        rle = mask_rle(mask)
        bbox, area = mask_box(mask)
        out.append(Region(region_id(row["image_id"], rle["counts"]), row["image_id"], row["path"], row["label"],
                          float(row["confidence"]), bbox, area, rle, math.nan, math.nan,
                          f"{row.get('model_id', '')}+box:{row['location']}"))
    return out


# The settings that change which regions an image gets (not `enabled`, the device or the batch size).
_SEGMENTER_KEYS = ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "stability_score_offset",
                   "box_nms_thresh", "crop_n_layers", "crop_nms_thresh", "crop_overlap_ratio",
                   "crop_n_points_downscale_factor", "min_mask_region_area", "skip_covered_points", "mask_nms_thresh", "containment_thresh",
                   "min_area", "max_area_fraction", "one_mask_per_pixel", "crop_padding", "blank_outside",
                   "max_regions_per_image")


def segmenter_id(sam_model_id: str, cfg: RegionsConfig) -> str:
    """``"<SAM model id>/<digest of the segmenting settings>"``: what the segmented-images table
    records, so that an image is segmented again when the model or a setting changes."""
    settings = repr(tuple(getattr(cfg, k) for k in _SEGMENTER_KEYS)).encode()
    return f"{sam_model_id}/{hashlib.sha256(settings).hexdigest()[:10]}"


@dataclass
class RegionsResult(StageResult):
    enabled: bool = False
    sam_model_id: str = ""
    labeler: str = ""
    images_segmented: int = 0  # this round: images not segmented before by this SAM model with these settings
    masks: int = 0  # SAM's masks on them, before cleanup
    new_regions: int = 0  # objects (regions not dropped) found on them
    regions: int = 0  # objects in the table, all images
    relabeled: int = 0  # regions of earlier images whose label changed (a new head, or a person's answer)
    human: int = 0  # regions labeled by a person (answers applied), outlines people drew included
    drawn: int = 0  # of them, outlines people drew that SAM had not proposed
    cleaned: dict[str, int] = field(default_factory=dict)  # this round's masks removed per label-free rule
    dropped: dict[str, int] = field(default_factory=dict)  # regions in the table dropped, per reason
    defects_localized: int = 0  # this round: images labeled as a defect whose tile SAM outlined (again)
    seg_s: float = 0.0
    label_s: float = 0.0
    hint: str = ""  # what to change when SAM found nothing on the images it segmented

    def metrics(self) -> dict[str, float | None]:
        if not self.enabled:
            return {}
        return {"regions": self.regions, "regions_new": self.new_regions, "regions_images_segmented":
                self.images_segmented, "regions_masks": self.masks, "regions_relabeled": self.relabeled,
                "regions_human": self.human, "regions_defects_localized": self.defects_localized,
                **{f"regions_removed_{k}": v for k, v in self.cleaned.items()},
                **{f"regions_dropped_{k}": v for k, v in self.dropped.items()}}


def _drawn_regions(answers: dict, known: set[str], paths: dict[str, str]) -> list[Region]:
    """Unlabeled regions for the outlines people drew (answers carrying an outline that no
    proposed region has), on images still in the workspace."""
    out = []
    for rid, e in sorted(answers.items()):
        if e.region is None or rid in known or e.image_id not in paths:
            continue
        mask = decode_mask(e.region)
        if not mask.any():
            continue
        bbox, area = mask_box(mask)
        out.append(Region(rid, e.image_id, paths[e.image_id], "", math.nan, bbox, area,
                          {"size": list(e.region["size"]), "counts": e.region["counts"]}, math.nan, math.nan))
    return out


def region_vectors(ws: Workspace, params: Params, clip: ClipModel, regions: Sequence[Region],
                   files: dict[str, Path]) -> np.ndarray:
    """``(R, D)`` crop embeddings of ``regions``, from the crop store; those it lacks (outlines
    people drew, a store made with other crop settings) are cropped from their images, embedded
    in batches and added to it. ``files``: image id -> file."""
    cfg = params.regions
    store = crop_store(ws, clip.model_id, cfg)
    have = store.ids()
    missing = [r for r in regions if r.region_id not in have]
    if missing:
        by_image: dict[str, list[Region]] = {}
        for r in missing:
            by_image.setdefault(r.image_id, []).append(r)

        def items() -> Iterator[ImageMasks]:
            for image_id, rs in by_image.items():
                with load_rgb(files[image_id], params.scan) as img:
                    rgb = np.asarray(img.convert("RGB"))
                yield ImageMasks(image_id, rs[0].path, rgb, [
                    {"segmentation": r.rle, "bbox": list(r.bbox), "area": r.area, "region_id": r.region_id,
                     "predicted_iou": _finite(r.predicted_iou)} for r in rs])

        which, X = embed_regions(clip, items(), cfg.model_copy(update={"max_regions_per_image": 10**9}))
        store.append([m["region_id"] for _, _, m in which], X)
    if not regions:
        return np.zeros((0, int(getattr(clip, "embed_dim", 0))), np.float32)
    return store.load([r.region_id for r in regions])[1]


def regions(ws: Workspace, params: Params, clip: ClipModel, round_no: int) -> RegionsResult:
    """The regions stage (``regions.enabled``). SAM segments each image this SAM model has not
    segmented with these settings (the image embedding comes from the SAM cache when it can);
    every region of every image, earlier ones too, is labeled by the round's labeler (the head
    the train stage chose, else zero-shot) from its stored crop embedding, unless a person
    labeled it (answers by region id in the label log; outlines people drew become regions).
    Background and contained regions are kept in the table, marked dropped. Defects are
    localized on images labeled as one. The regions table (data/labels/regions/, Parquet parts
    keyed by region id) records it all with the segmented images (images/), the crop
    embeddings (embeddings/) and the defects (defects/); a round stores only what changed.

    Writes exactly its declared output, data/labels/regions/ (created empty when disabled, so
    that DVC can record the stage either way)."""

    folder = regions_dir(ws)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = resolve_checkpoint(ws, params.regions)
    if not cfg.enabled:
        return RegionsResult(enabled=False)
    params = params.model_copy(update={"regions": cfg})
    sam = sam_models.load_sam(cfg)
    cache = sam_cache(ws, sam, cfg)
    done_parts = segmented_parts(folder)
    # Segmented by this model *with these settings*: a change to the generator's knobs or the
    # cleanup rules segments every image again (their regions are replaced).
    segmenter = segmenter_id(sam.model_id, cfg)
    done = {r["image_id"] for r in done_parts.read(["image_id", "sam_model_id"]).to_pylist()
            if r["sam_model_id"] == segmenter}
    first_path = _first_paths(ws)
    files = {i: ws.images / p for i, p in first_path.items()}
    todo = [(i, p, ws.images / p) for i, p in sorted(first_path.items(), key=lambda r: r[1]) if i not in done]
    head, labeler = region_head(ws, params, clip)
    seg = segment_images(params, sam, clip, todo, cache=cache, progress=True)
    crop_store(ws, clip.model_id, cfg).append([r.region_id for r in seg.candidates], seg.X)

    t0 = time.perf_counter()
    redone = {i for i, _, _ in todo}
    before = read_regions(folder, dropped=True)
    earlier, drawn, labeled = _label_every(ws, params, clip, head, labeler, seg, before, redone, first_path, files)
    label_s = time.perf_counter() - t0 + seg.embed_s
    old = {r.region_id: (r.label, r.dropped) for r in before}
    relabeled = sum(1 for r in labeled[:len(earlier)] if old[r.region_id] != (r.label, r.dropped))
    write_regions(folder, round_no, labeled, images=set(files) | {r.image_id for r in before})
    if todo:
        _record_segmented(done_parts, [i for i, _, _ in todo], seg, segmenter, round_no)
    found = _localize(ws, params, sam, cache, folder, first_path, files, round_no)
    kept = [r for r in labeled if not r.dropped]
    new_ids = {r.region_id for r in seg.candidates}
    return RegionsResult(
        enabled=True, sam_model_id=sam.model_id, labeler=labeler, images_segmented=len(todo),
        masks=sum(m for m, _ in seg.found.values()),
        new_regions=sum(1 for r in kept if r.region_id in new_ids), regions=len(kept), relabeled=relabeled,
        human=sum(1 for r in labeled if r.labeler.startswith("human:")), drawn=len(drawn), cleaned=seg.cleaned,
        dropped=dict(Counter(r.dropped for r in labeled if r.dropped)), defects_localized=found,
        seg_s=round(seg.seg_s, 3), label_s=round(label_s, 3),
        hint=no_masks_hint(cfg, len(todo)) if todo and not any(m for m, _ in seg.found.values()) else "")


def no_masks_hint(cfg: RegionsConfig, images: int) -> str:
    """The one line a round prints when SAM kept no mask on any of the ``images`` it segmented."""
    weights = (" (random weights, sam_checkpoint null: only thresholds near 0 keep masks)"
               if cfg.sam_checkpoint is None else "")
    return (f"SAM kept no mask on the {images} image(s) it segmented{weights}: lower regions.pred_iou_thresh "
            f"(now {cfg.pred_iou_thresh}) and regions.stability_score_thresh (now {cfg.stability_score_thresh}), "
            f"e.g. to 0.7 and 0.85, or raise regions.points_per_side (now {cfg.points_per_side})")


def _first_paths(ws: Workspace) -> dict[str, str]:
    """image id -> its first path in the manifest (by path): an image stored twice (duplicates)
    is segmented once, from one file, for all its copies."""
    first_path: dict[str, str] = {}
    manifest = read_manifest_table(ws, ["image_id", "path"]).to_pydict()
    for image_id, path in sorted(zip(manifest["image_id"], manifest["path"]), key=lambda r: r[1]):
        first_path.setdefault(image_id, path)  # duplicates: one file segments for all
    return first_path


def _label_every(ws: Workspace, params: Params, clip: ClipModel, head: Head, labeler: str, seg: Segmented,
                 before: list[Region], redone: set[str], first_path: dict[str, str],
                 files: dict[str, Path]
                 ) -> tuple[list[Region], list[Region], list[Region]]:
    """Every region, labeled again: earlier images' rows (dropped ones too: a new head may see an
    object where the last one saw background), this round's, and the outlines people drew; a
    person's answer wins over the labeler. Returns (the earlier regions, the drawn ones, all of
    them labeled, earlier ones first)."""
    earlier = [r for r in before if r.image_id not in redone and r.image_id in files]
    answers = region_answers(read_events(ws))
    drawn = _drawn_regions(answers, {r.region_id for r in earlier} | {r.region_id for r in seg.candidates},
                           first_path)
    every = earlier + seg.candidates + drawn
    X = region_vectors(ws, params, clip, every, files)
    classes = params.ontology.labels
    probs = head.predict_proba(X) if len(every) else np.zeros((0, len(classes)))
    # People's answers on today's labels ("none of these", a removed class's: unknown).
    mapped = map_answers({rid: e.label for rid, e in answers.items()}, classes).labels
    human = {rid: (mapped[rid], e.annotator) for rid, e in answers.items()}
    labeled = assign_labels(every, probs, classes, negatives=negative_labels(params.ontology), labeler=labeler,
                            answers=human)
    labeled, _ = mark_contained(labeled, params.regions)
    return earlier, drawn, labeled


def _record_segmented(done_parts: PartTable, image_ids: list[str], seg: Segmented, segmenter: str,
                      round_no: int) -> None:
    """The segmented-images table (images/): one row per image segmented this round, replacing
    its earlier row, so that the next round knows what this segmenter has done."""
    rows = [dict(key=i, image_id=i, sam_model_id=segmenter, masks=seg.found[i][0],
                 kept=seg.found[i][1], round=round_no) for i in image_ids]
    table = pa.Table.from_pylist(rows, schema=done_parts.schema)
    again = pa.array(sorted(set(image_ids)), pa.string())

    def full() -> pa.Table:  # earlier images, then this round's (one row per image)
        old = done_parts.read()
        return pa.concat_tables([old.filter(pc.invert(pc.is_in(old["image_id"], value_set=again))), table])

    done_parts.write(round_no, table, [], full)


def _localize(ws: Workspace, params: Params, sam, cache: SamEmbeddingCache, folder: Path,
              first_path: dict[str, str], files: dict[str, Path], round_no: int) -> int:
    """Defect localization for the images whose label or winning tile changed since they were
    outlined; returns how many were outlined this round."""

    defects = regions_parts(folder / DEFECTS_DIR)
    outlined = {(r["image_id"], r["label"], r["labeler"]) for r in defects.read(["image_id", "label", "labeler"]).to_pylist()}
    # Only the rows that can matter are read out: candidates (a non-negative label with a tile)
    # and images outlined before (whose region must go if they stopped being candidates).
    resolved = resolved_parts(ws).read(columns=["path", "label", "confidence", "model_id", "location"])
    candidate_rows = pc.and_(pc.invert(pc.is_in(resolved["label"], value_set=pa.array(sorted(negative_labels(
        params.ontology)), pa.string()))), pc.not_equal(resolved["location"], ""))
    before = pc.is_in(resolved["image_id"], value_set=pa.array(sorted({i for i, _, _ in outlined}), pa.string()))
    stale = [r for r in resolved.filter(pc.or_(candidate_rows, before)).to_pylist()
             if (r["image_id"], r["label"], f"{r['model_id']}+box:{r['location']}") not in outlined]
    found = localize_defects(sam, params, stale, files, cache)
    write_regions(folder / DEFECTS_DIR, round_no, found, images=[r["image_id"] for r in stale])
    return len(found)
