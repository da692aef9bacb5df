"""scan: find the workspace's images, give each a content id, quarantine what cannot be used.

Identity is the sha256 of the file's bytes, so renamed or duplicated files share one id and
one label. A file is hashed again only when its (size, mtime) changed, and decoded (to prove it
is a whole, usable image) only when its content id is new.

What is never opened: anything but a regular file (a FIFO would block the round forever), and
symbolic links unless their target is a regular file inside data/images (a link out of the
image root is quarantined, not read; a link to a folder is not followed). File names must be
UTF-8 without control characters (they travel into CSV, Parquet and DVC files); other names are
quarantined with a rename hint, never opened. Names are kept exactly as on disk (no Unicode
normalisation: an NFD name from macOS is a different file from its NFC twin on Linux).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from coldstart.tasks.config import ScanConfig
from coldstart.tasks.errors import WorkspaceError
from coldstart.tasks.manifest import FIELDS as MANIFEST_FIELDS
from coldstart.tasks.manifest import SCHEMA as MANIFEST_SCHEMA
from coldstart.tasks.manifest import manifest_parts, read_manifest_table
from coldstart.tasks.result import IN_MEMORY, StageResult
from coldstart.tasks.workspace import Workspace, read_csv, write_csv

log = logging.getLogger(__name__)

QUARANTINE_FIELDS = ["path", "sha256", "size_bytes", "mtime_ns", "reason", "round"]


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
            raise ImageDecodeError(f"not a regular file ({_kind(mode)}); remove it from data/images")
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


def _kind(mode: int) -> str:
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
            Image.OPEN[fmt][0](fp)
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


@dataclass
class ScanResult(StageResult):
    images: int  # distinct content ids usable now
    files: int
    new_images: int
    quarantined: int
    duplicates: int  # files whose content another file already has
    # Each image part's digest (top-level folder of data/images, "" for loose files): the
    # version stage re-adds to DVC only the parts whose digest changed.
    parts: dict[str, str] = field(default_factory=dict, metadata=IN_MEMORY)
    hashed: HashedFiles = field(default_factory=HashedFiles, metadata=IN_MEMORY)  # for the version stage
    # Entries nothing may open or list (special files, links refused, names that are not UTF-8 or
    # hold control characters), relative to data/images: the version stage has DVC ignore them.
    unversionable: list[str] = field(default_factory=list, metadata=IN_MEMORY)
    changed: bool = True  # the manifest or the quarantine list changed (files came, went or changed)

    def metrics(self) -> dict[str, float | None]:
        return {"images": self.images, "new_images": self.new_images, "quarantined": self.quarantined,
                "duplicates": self.duplicates}

    def require_images(self, ws: Workspace) -> None:
        """A round needs at least one usable image: say where to put them, and what was refused."""
        if self.images == 0:
            quarantined = f"; {self.quarantined} file(s) were quarantined, see data/store/quarantine.csv" \
                if self.quarantined else ""
            raise WorkspaceError(f"no usable images in {ws.images}{quarantined}. Put images there (nested folders "
                                 f"are fine) and run the round again.")


def part_of(rel: str) -> str:
    """The image part a file belongs to: its top-level folder under data/images, or "" for the
    files directly in data/images. The version stage tracks each part with its own .dvc file."""
    head, sep, _ = rel.partition("/")
    return head if sep else ""


def _walk(root: Path, top: bool = True, real_root: str | None = None
          ) -> Iterator[tuple[str, str, os.stat_result, str | None]]:
    """Every file under ``root`` as (path, path relative to ``root`` in POSIX form, stat,
    problem): a folder's files in name order, then its subfolders in name order; hidden entries,
    and DVC's own ``.dvc`` files at the top, skipped. Nothing is opened here. ``problem`` says
    why an entry must not be opened (not a regular file; a symbolic link that is broken, leads
    to a folder, or leads out of ``root``), else None; ``stat`` is then the file's (a link's
    target's), else the entry's own (lstat). Plain strings and ``os.scandir``: at 100,000
    images, pathlib objects cost more than the stat calls themselves."""
    real_root = real_root or os.path.realpath(root)
    with os.scandir(root) as it:
        entries = sorted((e for e in it if not e.name.startswith(".") and not (top and e.name.endswith(".dvc"))),
                         key=lambda e: e.name)
    folders = []
    for e in entries:
        try:
            st = e.stat(follow_symlinks=False)
        except OSError as err:  # deleted while scanning
            log.warning("skipped %s: %s", e.path, err)
            continue
        problem = None
        if stat.S_ISDIR(st.st_mode):
            folders.append(e)
            continue
        if stat.S_ISLNK(st.st_mode):
            st, problem = _follow(e.path, st, real_root)
        elif not stat.S_ISREG(st.st_mode):
            problem = f"not a regular file ({_kind(st.st_mode)}); remove it from data/images (it is never opened)"
        yield e.path, e.name, st, problem
    for f in folders:
        for path, rel, st, problem in _walk(Path(f.path), top=False, real_root=real_root):
            yield path, f"{f.name}/{rel}", st, problem


def _follow(path: str, lst: os.stat_result, real_root: str) -> tuple[os.stat_result, str | None]:
    """A symbolic link's (stat, problem): followed only to a regular file inside the image root
    (then it is one more name for that file's content); never out of the workspace's images."""
    try:
        st = os.stat(path)
    except OSError as e:  # missing target, or a loop
        return lst, f"broken symbolic link ({e.strerror}); remove it or restore its target"
    target = os.path.realpath(path)
    if os.path.commonpath([target, real_root]) != real_root:
        return lst, ("symbolic link to a file outside data/images (not followed); copy the file itself into "
                     "data/images")
    if stat.S_ISDIR(st.st_mode):
        return lst, ("symbolic link to a folder (not followed: its images would be scanned twice or leave "
                     "data/images); move or copy the folder into data/images")
    if not stat.S_ISREG(st.st_mode):
        return lst, f"symbolic link to {_kind(st.st_mode)}, not a regular file; remove it from data/images"
    return st, None


class PartDigests:
    """sha256 per image part of every file's (path, size, mtime): a part's digest changes when
    any of its files is added, removed, replaced or touched. Built from the scan's own walk, so
    the version stage learns which parts changed without a second walk."""

    def __init__(self) -> None:
        self._h: dict[str, "hashlib._Hash"] = {}

    def add(self, rel: str, st: os.stat_result) -> None:
        part = part_of(rel)
        h = self._h.get(part) or self._h.setdefault(part, hashlib.sha256())
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))

    def result(self) -> dict[str, str]:
        return {part: h.hexdigest() for part, h in sorted(self._h.items())}


def part_digests(images: Path) -> dict[str, str]:
    """Each image part's digest (see PartDigests), by a stat walk of ``images``."""
    digests = PartDigests()
    if images.is_dir():
        for _, rel, st, _ in _walk(images):
            digests.add(rel, st)
    return digests.result()


def scan(ws: Workspace, cfg: ScanConfig, round_no: int) -> ScanResult:
    """The scan stage: record in data/store/manifest/ (one row per usable file; this round's
    part holds only what changed) and data/store/quarantine.csv (one row per bad file), its
    declared outputs."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ws.images.mkdir(parents=True, exist_ok=True)
    # Compared with the manifest as the last tagged round left it, never with a part an attempt
    # at this round killed before its tag wrote: against that, the retry would find "nothing
    # changed", delete the part and tag the round without the new images.
    view = read_manifest_table(ws, before=round_no)
    old_paths = view["path"].to_pylist()
    old = dict(zip(old_paths, range(len(old_paths))))
    old_ids = view["image_id"].to_pylist()
    sizes, mtimes = view["size_bytes"].to_numpy(), view["mtime_ns"].to_numpy()
    widths, heights, firsts = view["width"].to_numpy(), view["height"].to_numpy(), view["first_round"].to_numpy()
    known_ok = dict(zip(old_ids, range(len(old_ids))))  # content id -> a row with its size and first round
    old_q = {r["path"]: r for r in read_csv(ws.quarantine)}
    changed, quarantine, new_rows, seen, ids = [], [], {}, set(), set()
    hashed = HashedFiles()
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in cfg.extensions} if cfg.extensions else None
    digests = PartDigests()

    def refuse(rel: str, sha: str, st: os.stat_result, reason: str) -> None:
        shown = shown_name(rel)
        log.warning("quarantined %s: %s", shown, reason)
        before = old_q.get(shown)  # the same verdict keeps the round it was first given in
        same = before is not None and before["reason"] == reason and before["sha256"] == sha
        quarantine.append(dict(path=shown, sha256=sha, size_bytes=st.st_size, mtime_ns=st.st_mtime_ns, reason=reason,
                               round=before["round"] if same else round_no))

    unversionable: list[str] = []
    for p, rel, st, problem in _walk(ws.images):
        problem = name_problem(rel) or problem
        if problem:
            unversionable.append(rel)  # nor may DVC open it, or git list it: data/images/.dvcignore
        digests.add(rel, st)  # every file DVC tracks, image or not
        if exts is not None and os.path.splitext(rel)[1].lower() not in exts:
            continue
        # Refused without opening: bad names, special files and links, empty or oversized files.
        problem = problem or size_problem(st.st_size, cfg)
        if problem:
            refuse(rel, "", st, problem)
            continue
        k = old.get(rel)  # paths are kept exactly as on disk (NFC and NFD twins are two files)
        if k is not None and sizes[k] == st.st_size and mtimes[k] == st.st_mtime_ns:
            problem = geometry_problem(int(widths[k]), int(heights[k]), cfg)  # the caps may have changed
            if problem:
                refuse(rel, old_ids[k], st, problem)
                continue
            seen.add(rel)  # unchanged: its row stands as it is
            ids.add(old_ids[k])
            continue
        q = old_q.get(rel)
        # An unchanged file keeps its verdict, unless the verdict came from a setting (scan.*)
        # that may have changed since: then it is checked again.
        if q is not None and q["size_bytes"] == str(st.st_size) and q["mtime_ns"] == str(st.st_mtime_ns) \
                and "scan." not in q["reason"]:
            quarantine.append(q)
            continue
        try:  # the only read of a new file here: hashes, and the decode below, use these bytes
            data, digest, md5 = read_and_hash(p, st.st_size)
        except FileNotFoundError as err:  # deleted since the walk
            log.warning("skipped %s: %s", rel, err)
            continue
        except ImageDecodeError as e:  # replaced by a FIFO or the like since the walk
            refuse(rel, "", st, str(e))
            continue
        except OSError as err:
            refuse(rel, "", st, f"cannot read the file ({err.strerror or err}); check its permissions and the disk")
            continue
        hashed.add(p, st, md5)
        if digest in new_rows:
            width, height, first = new_rows[digest]
        elif digest in known_ok:
            j = known_ok[digest]
            width, height, first = int(widths[j]), int(heights[j]), int(firsts[j])
        else:
            width = height = first = 0
        problem = geometry_problem(width, height, cfg) if width else None
        if problem:
            refuse(rel, digest, st, problem)
            continue
        if not width:
            try:
                with load_rgb(p, cfg, data=data) as img:
                    width, height = img.size
            except ImageDecodeError as e:
                refuse(rel, digest, st, str(e))
                continue
            first = round_no
            new_rows[digest] = (width, height, first)
        changed.append((rel, digest, width, height, st.st_size, st.st_mtime_ns, first))
        seen.add(rel)
        ids.add(digest)
    deleted = [path for path in old_paths if path not in seen]
    changed_table = pa.Table.from_pylist([dict(zip(MANIFEST_FIELDS, r)) for r in sorted(changed)], schema=MANIFEST_SCHEMA)

    def full() -> pa.Table:
        drop = pa.array([r[0] for r in changed] + deleted, pa.string())
        kept = view.filter(pc.invert(pc.is_in(view["path"], value_set=drop))) if len(drop) else view
        return pa.concat_tables([kept.cast(MANIFEST_SCHEMA), changed_table]).sort_by("path")

    wrote = manifest_parts(ws).write(round_no, changed_table, deleted, full)
    quarantine_changed = {(q["path"], str(q["sha256"])) for q in quarantine} != \
        {(q["path"], q["sha256"]) for q in old_q.values()}
    write_csv(ws.quarantine, QUARANTINE_FIELDS, quarantine)
    return ScanResult(images=len(ids), files=len(seen) + len(quarantine), new_images=len(new_rows),
                      quarantined=len(quarantine), duplicates=len(seen) - len(ids), parts=digests.result(),
                      hashed=hashed, unversionable=unversionable,
                      changed=wrote or quarantine_changed or bool(changed) or bool(deleted))


def image_table(ws: Workspace) -> dict[str, str]:
    """Content id -> display path (the first path in sorted order), from the manifest."""
    table: dict[str, str] = {}
    for i, path in zip(*read_manifest_table(ws, ["image_id"]).select(["image_id", "path"]).to_pydict().values()):
        table.setdefault(i, path)
    return table
