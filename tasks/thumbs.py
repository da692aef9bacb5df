"""The report's thumbnails: small JPEG data URIs (with a box, and a mask, drawn on defect images),
under a count and a byte budget for the whole page."""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from coldstart.tasks.imagefiles import load_rgb
from coldstart.tasks.regiontable import decode_mask

log = logging.getLogger(__name__)


THUMB_PX = 96  # long side of a thumbnail


JPEG_QUALITY = 70


MAX_THUMBS = 600  # thumbnails in one report, all sections together


MAX_THUMB_BYTES = 2_000_000  # their data URIs, in bytes: with the capped text, the file stays under ~3 MB


class Thumbs:
    """Small JPEG data URIs of the workspace's images, within a budget of count and bytes."""

    def __init__(self, images: Path, scan=None, max_count: int = MAX_THUMBS, max_bytes: int = MAX_THUMB_BYTES):
        self.images, self.scan = Path(images), scan
        self.max_count, self.max_bytes = max_count, max_bytes
        self.count = self.bytes = self.left_out = 0
        self._cache: dict[tuple, tuple[str, int, int] | None] = {}

    def get(self, path: str, size: int = THUMB_PX, box: str = "", rle: dict | None = None
            ) -> tuple[str, int, int] | None:
        """(data URI, width, height) of ``path`` (under the images folder), or None when the
        budget is spent or the image cannot be read. ``box`` "x0 y0 x1 y1" and ``rle`` (a COCO
        mask) are drawn on it, in original pixels."""
        if self.count >= self.max_count or self.bytes >= self.max_bytes:
            self.left_out += 1
            return None
        key = (path, size, box, rle["counts"] if rle else "")
        if key not in self._cache:
            self._cache[key] = self._encode(path, size, box, rle)
        got = self._cache[key]
        if got is None or self.bytes + len(got[0]) > self.max_bytes:
            self.left_out += 1
            return None
        self.count += 1
        self.bytes += len(got[0])
        return got

    def _encode(self, path: str, size: int, box: str, rle: dict | None) -> tuple[str, int, int] | None:
        file = self.images / path
        try:
            with load_rgb(file, self.scan, draft=None if (box or rle) else size) as img:
                img = img.convert("RGB")
                full = img.size
                if rle is not None:
                    mask = decode_mask(rle).astype(bool)
                    if mask.shape == (full[1], full[0]):
                        tint = Image.new("RGB", full, (255, 0, 64))
                        alpha = Image.fromarray((mask * 110).astype(np.uint8))
                        img = Image.composite(tint, img, alpha)
                if box:
                    x0, y0, x1, y1 = (float(v) for v in box.split()[:4])
                    width = max(2, round(max(full) / size * 2))
                    ImageDraw.Draw(img).rectangle([x0, y0, x1, y1], outline=(255, 215, 0), width=width)
                img.thumbnail((size, size))
                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
                return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), *img.size
        except Exception as e:  # a deleted, moved or undecodable image: no preview, the page goes on
            log.info("report: no thumbnail of %s (%s)", path, e)
            return None
