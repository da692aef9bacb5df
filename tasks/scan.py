"""scan: find the workspace's images, give each a content id, quarantine what cannot be used.

Identity is the sha256 of the file's bytes, so renamed or duplicated files share one id and
one label. A file is hashed again only when its (size, mtime) changed, and decoded (to prove it
is a whole, usable image) only when its content id is new.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from prefect import task
from prefect.cache_policies import NO_CACHE

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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


WHOLE_READ_MAX = 64 << 20  # files up to this size are read once into memory, hashed and decoded from there


def read_and_hash(path: str, size: int) -> tuple[bytes | None, str, str]:
    """One read of a file: its bytes (None when over WHOLE_READ_MAX, then streamed), sha256
    (the content id) and md5 (DVC's hash, handed to DVC so that it need not read the file)."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        if size <= WHOLE_READ_MAX:
            data = f.read()
            sha.update(data)
            md5.update(data)
            return data, sha.hexdigest(), md5.hexdigest()
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


def load_rgb(path: str | os.PathLike, *, max_pixels: int = 100_000_000, draft: int | None = None,
             data: bytes | None = None) -> Image.Image:
    """Decode one image file fully: EXIF orientation applied, 8-bit RGB.

    ``draft``: for JPEG, let libjpeg decode at a reduced scale whose short side stays >= draft
    pixels (much cheaper when the model input is 224 px). ``data``: the file's bytes, already
    read (``path`` then only names it). Raises ImageDecodeError with a reason.
    """
    if (len(data) if data is not None else os.path.getsize(path)) == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data) if data is not None else path)
            w, h = img.size
            # Check the header's size against our cap before any pixel is decoded (bombs).
            if w * h > max_pixels:
                raise ImageDecodeError(f"image too large: {w}x{h} = {w * h} pixels over the cap scan.max_pixels={max_pixels}")
            if draft and img.format == "JPEG":
                img.draft("RGB", (draft, draft))
            img.load()  # raises on truncated data; LOAD_TRUNCATED_IMAGES stays False
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (no known image format in the file's bytes)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"image too large, refused as a decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"truncated or corrupt image data: {e}") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as e:  # corrupt EXIF: orientation unknown, keep pixels as stored
        log.warning("%s: unreadable EXIF orientation (%s); using the image as stored", path, e)
    return _to_rgb(img)


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


def _walk(root: Path, top: bool = True) -> Iterator[tuple[str, str, os.stat_result]]:
    """Every file under ``root`` as (path, path relative to ``root`` in POSIX form, stat): a
    folder's files in name order, then its subfolders in name order; hidden entries, and DVC's
    own ``.dvc`` files at the top, skipped; symlinked folders not followed. Plain strings and
    ``os.scandir``: at 100,000 images, pathlib objects cost more than the stat calls themselves."""
    with os.scandir(root) as it:
        entries = sorted((e for e in it if not e.name.startswith(".") and not (top and e.name.endswith(".dvc"))),
                         key=lambda e: e.name)
    folders = []
    for e in entries:
        if e.is_dir():  # a symlink to a folder counts as one, and is not descended into (as os.walk)
            if not e.is_symlink():
                folders.append(e)
        else:
            try:
                st = os.stat(e.path)
            except OSError as err:  # a dangling symlink, or a file deleted while scanning
                log.warning("skipped %s: %s", e.path, err)
                continue
            yield e.path, e.name, st
    for f in folders:
        for path, rel, st in _walk(Path(f.path), top=False):
            yield path, f"{f.name}/{rel}", st


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
        for _, rel, st in _walk(images):
            digests.add(rel, st)
    return digests.result()


def scan(ws: Workspace, cfg: ScanConfig, round_no: int) -> ScanResult:
    """The scan stage: record in data/store/manifest/ (one row per usable file; this round's
    part holds only what changed) and data/store/quarantine.csv (one row per bad file), its
    declared outputs."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ws.images.mkdir(parents=True, exist_ok=True)
    view = read_manifest_table(ws)
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
    for p, rel, st in _walk(ws.images):
        digests.add(rel, st)  # every file DVC tracks, image or not
        if exts is not None and os.path.splitext(rel)[1].lower() not in exts:
            continue
        rel = unicodedata.normalize("NFC", rel)
        k = old.get(rel)
        if k is not None and sizes[k] == st.st_size and mtimes[k] == st.st_mtime_ns:
            seen.add(rel)  # unchanged: its row stands as it is
            ids.add(old_ids[k])
            continue
        q = old_q.get(rel)
        if q is not None and q["size_bytes"] == str(st.st_size) and q["mtime_ns"] == str(st.st_mtime_ns):
            quarantine.append(q)
            continue
        try:  # the only read of a new file here: hashes, and the decode below, use these bytes
            data, digest, md5 = read_and_hash(p, st.st_size)
        except OSError as err:  # deleted or unreadable since the walk
            log.warning("skipped %s: %s", rel, err)
            continue
        hashed.add(p, st, md5)
        if digest in new_rows:
            width, height, first = new_rows[digest]
        elif digest in known_ok:
            j = known_ok[digest]
            width, height, first = int(widths[j]), int(heights[j]), int(firsts[j])
        else:
            try:
                with load_rgb(p, max_pixels=cfg.max_pixels, data=data) as img:
                    width, height = img.size
            except ImageDecodeError as e:
                log.warning("quarantined %s: %s", rel, e)
                quarantine.append(dict(path=rel, sha256=digest, size_bytes=st.st_size, mtime_ns=st.st_mtime_ns,
                                       reason=str(e), round=round_no))
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
                      hashed=hashed, changed=wrote or quarantine_changed or bool(changed) or bool(deleted))


def image_table(ws: Workspace) -> dict[str, str]:
    """Content id -> display path (the first path in sorted order), from the manifest."""
    table: dict[str, str] = {}
    for i, path in zip(*read_manifest_table(ws, ["image_id"]).select(["image_id", "path"]).to_pydict().values()):
        table.setdefault(i, path)
    return table


@task(name="scan", cache_policy=NO_CACHE)
def scan_task(ws: Workspace, cfg: ScanConfig, round_no: int) -> ScanResult:
    return scan(ws, cfg, round_no)
