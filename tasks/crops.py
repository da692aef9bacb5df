"""A region's crop, as the labeler sees it: the mask's box with some context around it, the
pixels outside the mask optionally greyed, letterboxed to the model's square input."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

from coldstart.tasks.config import RegionsConfig
from coldstart.tasks.regiontable import decode_mask

GREY = (128, 128, 128)  # what blanked and letterboxed pixels become: neutral, close to CLIP's mean colour


def crop_box(bbox: Sequence[float], width: int, height: int, padding: float) -> tuple[int, int, int, int]:
    """XYWH ``bbox`` grown by ``padding`` x its width/height on each side -> XYXY int box clipped
    to the ``width`` x ``height`` image, at least 1 pixel each way."""
    x, y, w, h = (float(v) for v in bbox)
    x0 = min(max(0, math.floor(x - padding * w)), width - 1)
    y0 = min(max(0, math.floor(y - padding * h)), height - 1)
    x1 = max(min(width, math.ceil(x + w + padding * w)), x0 + 1)
    y1 = max(min(height, math.ceil(y + h + padding * h)), y0 + 1)
    return x0, y0, x1, y1


def region_crops(image: Image.Image | np.ndarray, masks: Sequence[dict], cfg: RegionsConfig | None = None
                 ) -> tuple[list[Image.Image], np.ndarray]:
    """The crop the model sees of each mask, and the crops' ``(M, 4)`` int XYXY boxes in pixels
    of ``image`` (``crop == image[y0:y1, x0:x1]``, outside the mask greyed when
    ``cfg.blank_outside``). ``image``: RGB ``HxWx3`` uint8 or PIL; ``cfg``: padding and blanking."""
    cfg = cfg or RegionsConfig()
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"region_crops needs an RGB image (HxWx3), not an array of shape {pixels.shape}")
    H, W = pixels.shape[:2]
    crops, boxes = [], []
    for k, m in enumerate(masks):
        size = list(m["segmentation"]["size"])
        if size != [H, W]:
            raise ValueError(f"mask {k} was made for an image of {size[1]}x{size[0]} pixels, this one is {W}x{H}")
        x0, y0, x1, y1 = crop_box(m["bbox"], W, H, cfg.crop_padding)
        crop = pixels[y0:y1, x0:x1]
        if cfg.blank_outside:
            inside = decode_mask(m["segmentation"])[y0:y1, x0:x1].astype(bool)
            crop = np.where(inside[..., None], crop, np.array(GREY, np.uint8))
        crops.append(Image.fromarray(np.ascontiguousarray(crop)))
        boxes.append((x0, y0, x1, y1))
    return crops, np.array(boxes, dtype=np.int32).reshape(-1, 4)


def letterbox(img: Image.Image) -> Image.Image:
    """``img`` centred on a grey square of its longer side (nothing cut by a centre crop)."""
    side = max(img.size)
    if img.width == img.height:
        return img
    square = Image.new("RGB", (side, side), GREY)
    square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return square
