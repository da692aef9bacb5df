"""Reading one image file safely: regular files only (a FIFO never blocks a round), one read that
both hashes and decodes, and decoding under the scan's limits (pixels, aspect ratio, formats).

scan.py walks data/images/ with these; the API, regions and the report open images with them too.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import threading
import unicodedata
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from coldstart.tasks.config import ScanConfig

log = logging.getLogger(__name__)


class ImageDecodeError(Exception):
    """Internal: why one file cannot be used as an image (becomes a quarantine reason)."""


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file (checked on the open descriptor,
    so a file swapped for a FIFO after the walk cannot block): O_NONBLOCK makes opening a FIFO
    return at once instead of waiting for a writer. Raises ImageDecodeError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ImageDecodeError(f"not a regular file ({file_kind(mode)}); remove it from data/images")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open_regular(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


WHOLE_READ_MAX = 64 << 20  # files up to this size are read once into memory, hashed and decoded from there


def read_and_hash(path: str, size: int) -> tuple[bytes | None, str, str]:
    """One read of a file: its bytes (None when over WHOLE_READ_MAX, then streamed), sha256
    (the content id) and md5 (DVC's hash, handed to DVC so that it need not read the file).
    Raises ImageDecodeError when ``path`` is not a regular file any more."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open_regular(path) as f:
        if size <= WHOLE_READ_MAX:
            data = f.read(WHOLE_READ_MAX + 1)  # bounded even if the file grew since its stat
            if len(data) <= WHOLE_READ_MAX:
                sha.update(data)
                md5.update(data)
                return data, sha.hexdigest(), md5.hexdigest()
            sha.update(data)
            md5.update(data)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
            md5.update(chunk)
    return None, sha.hexdigest(), md5.hexdigest()


class HashedFiles:
    """The files the scan read this round, with the (size, mtime) it read and their md5: the
    version stage gives these hashes to DVC, so a new image is read once by the scan (hash and
    decode) and once by the embed stage, never by DVC's `add`. A plain class, not a collection,
    so Prefect passes it between tasks without walking a million entries."""

    __slots__ = ("paths", "sizes", "mtimes", "md5s")

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.sizes: list[int] = []
        self.mtimes: list[int] = []
        self.md5s: list[str] = []

    def add(self, path: str, st: os.stat_result, md5: str) -> None:
        self.paths.append(path)
        self.sizes.append(st.st_size)
        self.mtimes.append(st.st_mtime_ns)
        self.md5s.append(md5)

    def __len__(self) -> int:
        return len(self.paths)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. 16-bit and float images are rescaled, not clipped to white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0 if arr.max(initial=0) <= 65535 else arr * (255.0 / arr.max())
        elif img.mode == "F":
            lo, hi = float(arr.min(initial=0)), float(arr.max(initial=1))
            arr = (arr - lo) * (255.0 / (hi - lo or 1.0))
        img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent -> white
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def _is_control(c: str) -> bool:
    # Cc: C0/C1 controls (CR, LF, TAB, ESC, DEL, NEL, ...); Zl/Zp: U+2028/U+2029, line breaks
    # to many CSV readers and editors.
    return unicodedata.category(c) in ("Cc", "Zl", "Zp")


def shown_name(rel: str) -> str:
    """A file name as it can be written into CSV, Parquet and logs: bytes that are not UTF-8 as
    ``\\xNN``, control characters escaped (``\\r``, ``\\n``, ``\\t``, ``\\x1b``, ``\\u2028``)."""
    text = os.fsencode(rel).decode("utf-8", "backslashreplace") if _not_utf8(rel) else rel
    return "".join(c.encode("unicode_escape").decode("ascii") if _is_control(c) else c for c in text)


def _not_utf8(rel: str) -> bool:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:  # os.scandir gave undecodable bytes as lone surrogates
        return True
    return False


def name_problem(rel: str) -> str | None:
    """Why a file's path (relative to data/images) cannot be kept as it is, or None."""
    if _not_utf8(rel):
        return "file name is not valid UTF-8 (the bytes shown as \\xNN); rename it with a UTF-8 name"
    bad = sorted({c for c in rel if _is_control(c)})
    if bad:
        shown = ", ".join(c.encode("unicode_escape").decode("ascii") for c in bad)
        return f"file name contains control character(s) {shown}; rename it without them"
    return None


def geometry_problem(width: int, height: int, cfg: ScanConfig, max_pixels: int | None = None) -> str | None:
    """Why an image of ``width`` x ``height`` pixels (from its header) is refused, or None."""
    cap = max_pixels or cfg.max_pixels
    if width * height > cap:
        return (f"image too large: {width}x{height} = {width * height} pixels, over scan.max_pixels={cap} "
                f"(checked before decoding); downscale it, or raise scan.max_pixels")
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > cfg.max_aspect_ratio or min(width, height) < 1:
        return (f"extreme aspect ratio: {width}x{height} is {ratio:.0f}:1, over scan.max_aspect_ratio="
                f"{cfg.max_aspect_ratio:g} (the model's resize would blow it up); crop it into pieces, "
                f"or raise scan.max_aspect_ratio")
    return None


def size_problem(size: int, cfg: ScanConfig) -> str | None:
    """Why a file of ``size`` bytes is refused without reading it, or None."""
    if size == 0:
        return "empty file (0 bytes); replace it with the image it should hold"
    if size > cfg.max_file_mb * 2**20:
        return (f"file too large: {size / 2**20:.0f} MB, over scan.max_file_mb={cfg.max_file_mb:g}; "
                f"recompress or downscale it, or raise scan.max_file_mb")
    return None


_FTYP = {b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC", b"heim": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF",
         b"avif": "AVIF", b"avis": "AVIF", b"crx ": "CR3 (camera raw)"}


def sniff_format(head: bytes) -> str | None:
    """The format a file's first bytes announce (Pillow's name where Pillow has one), or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        return _FTYP.get(head[8:12], "an ISO media file (video or HEIF)")
    for offset, magic, name in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    return None


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False  # (a cut multi-byte character at the end is possible, but rare enough)
    return bool(text) and all(c.isprintable() or c in "\r\n\t" for c in text.lstrip("\ufeff"))


def _unidentified(head: bytes, fp: BinaryIO, formats: list[str]) -> str:
    """Why Pillow, restricted to ``formats``, could not identify a file: the reason to quarantine it."""
    fmt = sniff_format(head)
    if fmt in formats:  # an accepted format's signature, but its header does not parse: say why
        detail = "its header does not parse"
        try:
            fp.seek(0)
            Image.OPEN[fmt][0](fp, "")  # filename "" is what None becomes
        except Exception as e:  # noqa: BLE001 (any error of the plugin is the answer wanted)
            detail = str(e) or type(e).__name__
        crc = " (bad CRC checksum)" if "checksum" in detail.lower() or "crc" in detail.lower() else ""
        return f"corrupt {fmt} data{crc}: {detail}; re-export the image or copy it again"
    accepted = ", ".join(formats)
    if fmt:
        return f"format {fmt} is not accepted (scan.formats: {accepted}); convert it to PNG or JPEG"
    if _looks_like_text(head):
        kind = "an HTML page" if b"<html" in head.lower() or b"<!doctype" in head.lower() else "text"
        return f"not an image: the file holds {kind}; replace it with the image itself"
    return (f"not an image in an accepted format (scan.formats: {accepted}); if it is an image, "
            f"convert it to PNG or JPEG")


# Image.MAX_IMAGE_PIXELS is Pillow's process-wide bomb limit: set to our cap only around
# Image.open (header parsing), under this lock, and restored, so scan.max_pixels is the one limit
# and nobody else's Pillow calls keep a changed global.
_PILLOW_LIMIT = threading.Lock()


def _open_header(fp: BinaryIO, formats: list[str], cap: int) -> Image.Image:
    Image.init()  # every plugin registered (MPO, WEBP, ...), so that ``formats`` can name them
    with _PILLOW_LIMIT:
        saved = Image.MAX_IMAGE_PIXELS
        try:
            Image.MAX_IMAGE_PIXELS = cap  # Pillow warns above it, refuses above 2x; we check ourselves
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return Image.open(fp, formats=formats)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def load_rgb(path: str | os.PathLike, limits: ScanConfig | None = None, *, max_pixels: int | None = None,
             draft: int | None = None, data: bytes | None = None) -> Image.Image:
    """Decode one image file fully: EXIF orientation applied, 8-bit RGB. The one guarded decode
    every reader of images uses (scan, embed).

    ``limits``: the scan section (formats, max_pixels, max_aspect_ratio, max_file_mb; defaults
    when None); ``max_pixels`` overrides its pixel cap. ``draft``: for JPEG, let libjpeg decode
    at a reduced scale whose short side stays >= draft pixels (much cheaper when the model input
    is 224 px). ``data``: the file's bytes, already read (``path`` then only names it). The size
    and geometry are checked from the header before any pixel is decoded. Raises
    ImageDecodeError with a reason that names the fix.
    """
    limits = limits or ScanConfig()
    if data is not None:
        return _decode(io.BytesIO(data), path, limits, max_pixels or limits.max_pixels, draft)
    with open_regular(path) as f:
        problem = size_problem(os.fstat(f.fileno()).st_size, limits)
        if problem:
            raise ImageDecodeError(problem)
        return _decode(f, path, limits, max_pixels or limits.max_pixels, draft)


def _decode(fp: BinaryIO, path: str | os.PathLike, limits: ScanConfig, cap: int, draft: int | None) -> Image.Image:
    head = fp.read(64)
    fp.seek(0)
    if not head:
        raise ImageDecodeError("empty file (0 bytes); replace it with the image it should hold")
    fmt = sniff_format(head) or "image"
    try:
        img = _open_header(fp, limits.formats, cap)
        fmt = img.format or fmt
        problem = geometry_problem(*img.size, limits, cap)
        if problem:
            raise ImageDecodeError(problem)
        if draft and img.format == "JPEG":
            img.draft("RGB", (draft, draft))
        img.load()  # raises on truncated data; LOAD_TRUNCATED_IMAGES stays False
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(_unidentified(head, fp, limits.formats)) from None
    except Image.DecompressionBombError as e:  # over twice the cap: Pillow refuses it in the header
        raise ImageDecodeError(f"image too large: over scan.max_pixels={cap} (checked before decoding: {e}); "
                               f"downscale it, or raise scan.max_pixels") from None
    except Exception as e:  # noqa: BLE001 (Pillow raises OSError, SyntaxError, ValueError, struct.error, ...)
        detail = str(e) or type(e).__name__
        crc = " (bad CRC checksum)" if "checksum" in detail.lower() or "crc" in detail.lower() else ""
        raise ImageDecodeError(f"truncated or corrupt {fmt} data{crc}: {detail}; re-export the image or "
                               f"copy it again") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as e:  # corrupt EXIF: orientation unknown, keep pixels as stored
        log.warning("%s: unreadable EXIF orientation (%s); using the image as stored", path, e)
    try:
        return _to_rgb(img)
    except Exception as e:  # noqa: BLE001 (an exotic mode Pillow cannot convert)
        raise ImageDecodeError(f"colour mode {img.mode} cannot be converted to RGB ({e}); convert the file to "
                               f"an 8-bit RGB PNG or JPEG") from None


# Magic bytes -> format name: to say what a file is when Pillow, restricted to scan.formats,
# cannot identify it (never by asking Pillow's other plugins: EPS would reach Ghostscript).
_MAGIC: list[tuple[int, bytes, str]] = [
    (0, b"\xff\xd8\xff", "JPEG"), (0, b"\x89PNG\r\n\x1a\n", "PNG"), (0, b"GIF87a", "GIF"), (0, b"GIF89a", "GIF"),
    (0, b"II*\x00", "TIFF"), (0, b"MM\x00*", "TIFF"), (0, b"II+\x00", "TIFF (BigTIFF)"), (0, b"BM", "BMP"),
    (0, b"%PDF", "PDF"), (0, b"%!PS-Adobe-3.0 EPSF", "EPS"), (0, b"\xc5\xd0\xd3\xc6", "EPS"), (0, b"%!", "PS"),
    (0, b"\x00\x00\x00\x0cjP  \r\n", "JPEG2000"), (0, b"\xffO\xffQ", "JPEG2000"), (0, b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (0, b"\xff\x0a", "JPEG XL"), (0, b"8BPS", "PSD"), (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"icns", "ICNS"), (0, b"qoif", "QOI"), (0, b"DDS ", "DDS"), (0, b"gimp xcf", "XCF"), (0, b"P6", "PPM"),
    (0, b"P5", "PGM"), (0, b"P4", "PBM"), (0, b"\x01\xda", "SGI"), (0, b"PK\x03\x04", "ZIP archive"),
    (0, b"\x1f\x8b", "gzip archive"), (0, b"7z\xbc\xaf", "7z archive"), (0, b"Rar!", "RAR archive"),
]
