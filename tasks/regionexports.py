"""The regions table in the formats other tools read: COCO instances (RLE masks) and Label
Studio tasks with polygon pre-annotations."""

from __future__ import annotations

from typing import Any, Collection, Sequence

import numpy as np

from coldstart.tasks import labelstudio
from coldstart.tasks.regiontable import Region, decode_mask

ImageInfo = tuple[str, str, int, int]  # (image_id, path, width, height)


def _check_images(regions: Sequence[Region], images: Sequence[ImageInfo]) -> dict[str, ImageInfo]:
    by_id = {i[0]: i for i in images}
    for r in regions:
        info = by_id.get(r.image_id)
        if info is None:
            raise ValueError(f"region {r.region_id} is on image {r.image_id}, which is not among the images given")
        if list(r.rle["size"]) != [info[3], info[2]]:
            raise ValueError(f"region {r.region_id}: its mask is {r.rle['size'][1]}x{r.rle['size'][0]} pixels, its "
                             f"image {info[1]} is {info[2]}x{info[3]}")
    return by_id


def regions_to_coco(regions: Sequence[Region], images: Sequence[ImageInfo], classes: Sequence[str], *,
                    negatives: Collection[str] = (), description: str = "coldstart regions") -> dict:
    """A COCO instances document: ``images`` (ids 1..N in the order given, ``file_name`` the
    path), ``categories`` (ids 1.. for ``classes`` minus ``negatives``, in order) and one
    annotation per region: RLE ``segmentation`` (counts as a string), ``bbox`` XYWH, ``area``,
    ``iscrowd`` 0, ``score`` (the confidence), ``region_id``. Loads in
    ``pycocotools.coco.COCO``; the annotations also serve as results for ``COCO.loadRes``."""
    by_id = _check_images(regions, images)
    names = [c for c in classes if c not in negatives]
    cat = {n: k + 1 for k, n in enumerate(names)}
    img = {image_id: k + 1 for k, image_id in enumerate(by_id)}
    anns: list[dict[str, Any]] = []
    for r in regions:
        if r.label not in cat:
            raise ValueError(f"region {r.region_id} is labeled {r.label!r}, which is not a category "
                             f"({', '.join(names)})")
        anns.append({"id": len(anns) + 1, "image_id": img[r.image_id], "category_id": cat[r.label],
                     "segmentation": {"size": list(r.rle["size"]), "counts": r.rle["counts"]},
                     "area": r.area, "bbox": list(r.bbox), "iscrowd": 0, "score": r.confidence,
                     "region_id": r.region_id})
    return {
        "info": {"description": description},
        "images": [{"id": img[i], "file_name": p, "width": w, "height": h, "coldstart_image_id": i}
                   for i, p, w, h in by_id.values()],
        "categories": [{"id": cat[n], "name": n} for n in names],
        "annotations": anns,
    }


def mask_polygons(rle: dict, *, tolerance: float = 1.0) -> list[np.ndarray]:
    """The outer contours of a mask as ``(P, 2)`` float XY pixel polygons (P >= 3), simplified
    by Douglas-Peucker within ``tolerance`` pixels; one per connected part, largest first."""
    import cv2

    mask = decode_mask(rle)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in sorted(contours, key=cv2.contourArea, reverse=True):
        c = cv2.approxPolyDP(c, tolerance, True) if tolerance > 0 else c
        if len(c) >= 3:
            polys.append(c.reshape(-1, 2).astype(np.float64))
    return polys


def regions_to_labelstudio(regions: Sequence[Region], images: Sequence[ImageInfo], *,
                           model_version: str = "coldstart-regions", tolerance: float = 1.0,
                           url_of=None) -> list[dict]:
    """Label Studio tasks, one per image (in the order given), each region a ``polygonlabels``
    pre-annotation (one per connected part of its mask) with points in percent of the image's
    width and height, editable in Label Studio with ``labelstudio.label_config(classes,
    polygons=...)``. Images are served as ``labelstudio.task`` serves them (local files), or at
    ``url_of(image_id, path)``."""
    by_id = _check_images(regions, images)
    results: dict[str, list[dict]] = {i: [] for i in by_id}
    for r in regions:
        _, _, w, h = by_id[r.image_id]
        for k, poly in enumerate(mask_polygons(r.rle, tolerance=tolerance)):
            points = np.clip(poly / [w, h] * 100.0, 0.0, 100.0)
            results[r.image_id].append({
                "id": r.region_id if k == 0 else f"{r.region_id}-{k}",
                "from_name": labelstudio.POLYGON, "to_name": labelstudio.IMAGE, "type": "polygonlabels",
                "original_width": w, "original_height": h, "image_rotation": 0, "score": r.confidence,
                "value": {"points": points.round(4).tolist(), "closed": True, "polygonlabels": [r.label]},
            })
    tasks = []
    for image_id, path, _, _ in by_id.values():
        found = results[image_id]
        scores = [res["score"] for res in found]
        tasks.append({
            "data": {labelstudio.IMAGE: url_of(image_id, path) if url_of else labelstudio.LOCAL_FILES_PREFIX + path,
                     "image_id": image_id, "path": path},
            "predictions": [{"model_version": model_version, "score": float(np.mean(scores)) if scores else 0.0,
                             "result": found}],
        })
    return tasks
