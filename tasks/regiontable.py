"""The regions table, data/labels/regions/: every labeled mask of every segmented image, kept as
Parquet parts keyed by region id (tasks/parts.py), with its crop embeddings beside it. The
regions stage writes it; intake (region answers), select, report, export and the API read it.
Masks are COCO RLE over the whole image: ``{"size": [H, W], "counts": str}``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from coldstart.tasks.config import RegionsConfig
from coldstart.tasks.parts import PartTable
from coldstart.tasks.store import EmbeddingStore
from coldstart.tasks.workspace import Workspace

REGIONS_DIR = ("data", "labels", "regions")  # the regions table, Parquet parts keyed by region_id

DEFECTS_DIR = "defects"  # beside the regions' parts: one SAM mask per image labeled as a defect


@dataclass(frozen=True)
class Region:
    """One labeled mask. ``bbox`` XYWH and ``area`` in pixels of the original image; ``rle`` the
    COCO RLE of the mask over the whole image: ``{"size": [H, W], "counts": str}``."""

    region_id: str  # sha256(image_id + RLE counts), 16 hex: the same mask of the same image, the same id
    image_id: str  # sha256 of the image file's bytes (as the scan names images)
    path: str
    label: str
    confidence: float  # the head's probability of ``label`` (calibrated when the head is)
    bbox: tuple[float, float, float, float]
    area: int
    rle: dict
    predicted_iou: float  # SAM's own quality estimates of the mask
    stability_score: float
    labeler: str = ""  # what gave the label: the chosen head's labeler id, "<model id>+zero-shot", "human:<who>"
    # Why the region is not one of the image's objects: "" (it is), "negative_label" (labeled a
    # negative class: background), "contained" (inside a better region of the same label).
    # Dropped regions stay in the table: the next labeler may see them differently.
    dropped: str = ""
    margin: float = 1.0  # top-1 minus top-2 probability: low = uncertain (review); 1.0 for a human's label

    def to_dict(self) -> dict:
        return asdict(self)


def region_id(image_id: str, counts: str | bytes) -> str:
    """The stable id of a mask of an image: 16 hex of sha256(image_id + RLE counts)."""
    counts = counts.encode("ascii") if isinstance(counts, str) else counts
    return hashlib.sha256(image_id.encode("utf-8") + counts).hexdigest()[:16]


def decode_mask(rle: dict) -> np.ndarray:
    """COCO RLE -> ``HxW`` uint8 {0, 1}."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    return mask_utils.decode({"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str)
                              else counts})


def rle_text(counts: str | bytes) -> str:
    return counts.decode("ascii") if isinstance(counts, bytes) else counts


def regions_dir(ws: Workspace) -> Path:
    return ws.root.joinpath(*REGIONS_DIR)


def regions_schema() -> pa.Schema:
    codes = pa.dictionary(pa.int32(), pa.string())
    return pa.schema([("region_id", pa.string()), ("image_id", pa.string()), ("path", pa.string()),
                      ("label", codes), ("confidence", pa.float64()), ("bbox", pa.list_(pa.float64(), 4)),
                      ("area", pa.int64()), ("height", pa.int32()), ("width", pa.int32()), ("counts", pa.string()),
                      ("predicted_iou", pa.float64()), ("stability_score", pa.float64()), ("labeler", codes),
                      ("dropped", codes), ("margin", pa.float64())])


def regions_parts(folder: Path) -> PartTable:
    return PartTable(folder, "region_id", regions_schema())


def regions_table(regions: Sequence[Region]) -> pa.Table:
    """Regions as an Arrow table with ``regions_schema()`` (the mask's RLE as height, width, counts)."""
    schema = regions_schema()
    cols = {
        "region_id": [r.region_id for r in regions], "image_id": [r.image_id for r in regions],
        "path": [r.path for r in regions], "label": [r.label for r in regions],
        "confidence": [r.confidence for r in regions], "bbox": [list(r.bbox) for r in regions],
        "area": [r.area for r in regions], "height": [r.rle["size"][0] for r in regions],
        "width": [r.rle["size"][1] for r in regions], "counts": [r.rle["counts"] for r in regions],
        "predicted_iou": [r.predicted_iou for r in regions], "stability_score": [r.stability_score for r in regions],
        "labeler": [r.labeler for r in regions], "dropped": [r.dropped for r in regions],
        "margin": [r.margin for r in regions],
    }
    return pa.table({name: pa.array(cols[name]).cast(schema.field(name).type) if pa.types.is_dictionary(
        schema.field(name).type) else pa.array(cols[name], schema.field(name).type) for name in schema.names},
        schema=schema)


def regions_of(table: pa.Table) -> list[Region]:
    """Rows of a regions table (``regions_schema()``) as Region records."""
    return [Region(r["region_id"], r["image_id"], r["path"], r["label"], r["confidence"], tuple(r["bbox"]), r["area"],
                   {"size": [r["height"], r["width"]], "counts": r["counts"]}, r["predicted_iou"],
                   r["stability_score"], r["labeler"], r["dropped"], r["margin"]) for r in table.to_pylist()]


def write_regions(folder: Path, round_no: int, regions: Sequence[Region], *,
                  images: Collection[str] | None = None) -> bool:
    """Record round ``round_no``'s regions in the table at ``folder`` (``regions_dir(ws)``): the
    regions of ``images`` (image ids; default: those of ``regions``) become exactly ``regions``,
    other images keep theirs. Only changed rows are stored (a delta part). Returns whether a file
    was written."""
    new = regions_table(regions)
    replaced = set(images) if images is not None else {r.image_id for r in regions}
    stray = {r.image_id for r in regions} - replaced
    if stray:
        raise ValueError(f"{len(stray)} region(s) belong to images not listed in images= (e.g. {sorted(stray)[0]})")
    parts = regions_parts(folder)
    old = parts.read(before=round_no)
    hit = pc.is_in(old["image_id"], value_set=pa.array(sorted(replaced), pa.string()))
    before = {r["region_id"]: r for r in old.filter(hit).to_pylist()}
    rows = new.to_pylist()
    changed = [k for k, r in enumerate(rows) if not _same_row(before.get(r["region_id"]), r)]
    deleted = sorted(set(before) - {r["region_id"] for r in rows})
    kept = old.filter(pc.invert(hit))
    return parts.write(round_no, new.take(pa.array(changed, pa.int64())), deleted,
                       lambda: pa.concat_tables([kept.cast(regions_schema()), new]))


def _same_row(a: dict | None, b: dict) -> bool:
    """Row equality where NaN equals NaN (a box-prompted region has no predicted IoU)."""
    return a is not None and a.keys() == b.keys() and all(
        a[k] == b[k] or (isinstance(a[k], float) and isinstance(b[k], float) and math.isnan(a[k]) and math.isnan(b[k]))
        for k in a)


def read_regions(folder: Path, *, before: int | None = None, dropped: bool = False) -> list[Region]:
    """The current regions table at ``folder`` (empty when there is none yet), by region id:
    the image's objects, or with ``dropped`` every proposed region, dropped ones included
    (background, contained); ``before``: as it stood before that round."""
    table = regions_parts(folder).read(before=before)
    if not dropped and table.num_rows:
        table = table.filter(pc.equal(table["dropped"].cast(pa.string()), ""))
    return regions_of(table)


def crop_store(ws: Workspace, model_id: str, cfg: RegionsConfig):
    """The regions' crop embeddings (``EmbeddingStore`` keyed by region id), versioned with the
    regions table: relabeling with a new head reads them instead of cropping every image again,
    and training reads those of the regions people labeled. The crop settings name the view."""

    view = f"crops-pad{cfg.crop_padding:g}{'-blank' if cfg.blank_outside else ''}"
    return EmbeddingStore(regions_dir(ws) / CROPS_DIR, model_id, view)


CROPS_DIR = "embeddings"  # beside the regions' parts: the crop embeddings


def mask_box(mask: np.ndarray) -> tuple[tuple[float, float, float, float], int]:
    """A non-empty ``HxW`` mask's tight box, XYWH in pixels (w = x_max - x_min + 1), and its area."""
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)), len(xs)


def mask_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle_text(rle["counts"])}
