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
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from coldstart.tasks.config import ScanConfig
from coldstart.tasks.errors import WorkspaceError
from coldstart.tasks.imagefiles import (
    HashedFiles,
    ImageDecodeError,
    file_kind,
    geometry_problem,
    load_rgb,
    name_problem,
    read_and_hash,
    shown_name,
    size_problem,
)
from coldstart.tasks.manifest import FIELDS as MANIFEST_FIELDS
from coldstart.tasks.manifest import SCHEMA as MANIFEST_SCHEMA
from coldstart.tasks.manifest import manifest_parts, read_manifest_table
from coldstart.tasks.result import IN_MEMORY, StageResult
from coldstart.tasks.workspace import Workspace, read_csv, write_csv

log = logging.getLogger(__name__)

QUARANTINE_FIELDS = ["path", "sha256", "size_bytes", "mtime_ns", "reason", "round"]


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
            problem = f"not a regular file ({file_kind(st.st_mode)}); remove it from data/images (it is never opened)"
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
        return lst, f"symbolic link to {file_kind(st.st_mode)}, not a regular file; remove it from data/images"
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


@dataclass
class ScanPlan:
    """What the scan found on disk, before it writes anything (``plan_scan``)."""

    changed: list[tuple]  # manifest rows (manifest FIELDS order) of new or changed files
    deleted: list[str]  # manifest paths no longer on disk
    quarantine: list[dict]  # the quarantine list as it is to be written
    quarantine_changed: bool  # it differs from the one on disk
    images: int  # distinct content ids usable now
    files: int  # usable files (duplicates included)
    new_images: int  # content ids first seen now
    parts: dict[str, str]  # image part -> digest (the version stage re-adds changed parts only)
    hashed: HashedFiles
    unversionable: list[str]
    view: Any = field(repr=False, default=None)  # the manifest (pyarrow Table) it was compared with


class _Walk:
    """The scan's state while it walks data/images/: each file is either kept as the manifest
    has it, read (hashed, and decoded when its content is new), or refused into quarantine."""

    def __init__(self, view: Any, old_q: dict[str, dict], cfg: ScanConfig, round_no: int):
        self.cfg, self.round_no, self.old_q = cfg, round_no, old_q
        self.old_ids = view["image_id"].to_pylist()
        self.old = {path: k for k, path in enumerate(view["path"].to_pylist())}
        self.sizes, self.mtimes = view["size_bytes"].to_numpy(), view["mtime_ns"].to_numpy()
        self.widths, self.heights = view["width"].to_numpy(), view["height"].to_numpy()
        self.firsts = view["first_round"].to_numpy()
        self.known_ok = {i: k for k, i in enumerate(self.old_ids)}  # content id -> a row with its size
        self.changed: list[tuple] = []
        self.quarantine: list[dict] = []
        self.new_rows: dict[str, tuple[int, int, int]] = {}  # content id -> (width, height, first round)
        self.seen: set[str] = set()
        self.ids: set[str] = set()
        self.hashed, self.digests = HashedFiles(), PartDigests()
        self.unversionable: list[str] = []
        self.exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in cfg.extensions} \
            if cfg.extensions else None

    def refuse(self, rel: str, sha: str, st: os.stat_result, reason: str) -> None:
        shown = shown_name(rel)
        log.warning("quarantined %s: %s", shown, reason)
        before = self.old_q.get(shown)  # the same verdict keeps the round it was first given in
        same = before is not None and before["reason"] == reason and before["sha256"] == sha
        self.quarantine.append(dict(path=shown, sha256=sha, size_bytes=st.st_size, mtime_ns=st.st_mtime_ns,
                                    reason=reason, round=before["round"] if before is not None and same else self.round_no))

    def visit(self, p: str, rel: str, st: os.stat_result, problem: str | None) -> None:
        problem = name_problem(rel) or problem
        if problem:
            self.unversionable.append(rel)  # nor may DVC open it, or git list it: data/images/.dvcignore
        self.digests.add(rel, st)  # every file DVC tracks, image or not
        if self.exts is not None and os.path.splitext(rel)[1].lower() not in self.exts:
            return
        # Refused without opening: bad names, special files and links, empty or oversized files.
        problem = problem or size_problem(st.st_size, self.cfg)
        if problem:
            return self.refuse(rel, "", st, problem)
        k = self.old.get(rel)  # paths are kept exactly as on disk (NFC and NFD twins are two files)
        if k is not None and self.sizes[k] == st.st_size and self.mtimes[k] == st.st_mtime_ns:
            problem = geometry_problem(int(self.widths[k]), int(self.heights[k]), self.cfg)  # caps may have changed
            if problem:
                return self.refuse(rel, self.old_ids[k], st, problem)
            self.seen.add(rel)  # unchanged: its row stands as it is
            self.ids.add(self.old_ids[k])
            return
        q = self.old_q.get(rel)
        # An unchanged file keeps its verdict, unless the verdict came from a setting (scan.*)
        # that may have changed since: then it is checked again.
        if q is not None and q["size_bytes"] == str(st.st_size) and q["mtime_ns"] == str(st.st_mtime_ns) \
                and "scan." not in q["reason"]:
            self.quarantine.append(q)
            return
        self.read(p, rel, st)

    def read(self, p: str, rel: str, st: os.stat_result) -> None:
        """A new or changed file: hashed from one read, decoded only when its content is new."""
        try:  # the only read of a new file here: hashes, and the decode below, use these bytes
            data, digest, md5 = read_and_hash(p, st.st_size)
        except FileNotFoundError as err:  # deleted since the walk
            log.warning("skipped %s: %s", rel, err)
            return
        except ImageDecodeError as e:  # replaced by a FIFO or the like since the walk
            return self.refuse(rel, "", st, str(e))
        except OSError as err:
            return self.refuse(rel, "", st, f"cannot read the file ({err.strerror or err}); check its permissions "
                                            "and the disk")
        self.hashed.add(p, st, md5)
        width, height, first = self.geometry(digest)
        problem = geometry_problem(width, height, self.cfg) if width else None
        if problem:
            return self.refuse(rel, digest, st, problem)
        if not width:
            try:
                with load_rgb(p, self.cfg, data=data) as img:
                    width, height = img.size
            except ImageDecodeError as e:
                return self.refuse(rel, digest, st, str(e))
            first = self.round_no
            self.new_rows[digest] = (width, height, first)
        self.changed.append((rel, digest, width, height, st.st_size, st.st_mtime_ns, first))
        self.seen.add(rel)
        self.ids.add(digest)

    def geometry(self, digest: str) -> tuple[int, int, int]:
        """(width, height, first round) of content seen before (this scan or the manifest); zeros if new."""
        if digest in self.new_rows:
            return self.new_rows[digest]
        if digest in self.known_ok:
            j = self.known_ok[digest]
            return int(self.widths[j]), int(self.heights[j]), int(self.firsts[j])
        return 0, 0, 0


def plan_scan(ws: Workspace, cfg: ScanConfig, round_no: int) -> ScanPlan:
    """Walk data/images/ against the manifest as the last tagged round left it; write nothing.

    Never compared with a part that an attempt at this round, killed before its tag, wrote:
    against that, the retry would find "nothing changed", delete the part and tag the round
    without the new images."""
    view = read_manifest_table(ws, before=round_no)
    old_q = {r["path"]: r for r in read_csv(ws.quarantine)}
    walk = _Walk(view, old_q, cfg, round_no)
    for p, rel, st, problem in _walk(ws.images):
        walk.visit(p, rel, st, problem)
    quarantine_changed = {(q["path"], str(q["sha256"])) for q in walk.quarantine} != \
        {(q["path"], q["sha256"]) for q in old_q.values()}
    return ScanPlan(changed=sorted(walk.changed), deleted=[path for path in walk.old if path not in walk.seen],
                    quarantine=walk.quarantine, quarantine_changed=quarantine_changed, images=len(walk.ids),
                    files=len(walk.seen), new_images=len(walk.new_rows), parts=walk.digests.result(),
                    hashed=walk.hashed, unversionable=walk.unversionable, view=view)


def apply_scan(ws: Workspace, plan: ScanPlan, round_no: int) -> ScanResult:
    """Write the plan: this round's manifest part (only what changed) and the quarantine list."""
    import pyarrow as pa  # heavy (about 0.3 s): only the stage that writes the manifest needs it
    import pyarrow.compute as pc

    changed_table = pa.Table.from_pylist([dict(zip(MANIFEST_FIELDS, r)) for r in plan.changed],
                                         schema=MANIFEST_SCHEMA)

    def full() -> pa.Table:
        view = plan.view
        drop = pa.array([r[0] for r in plan.changed] + plan.deleted, pa.string())
        kept = view.filter(pc.invert(pc.is_in(view["path"], value_set=drop))) if len(drop) else view
        return pa.concat_tables([kept.cast(MANIFEST_SCHEMA), changed_table]).sort_by("path")

    wrote = manifest_parts(ws).write(round_no, changed_table, plan.deleted, full)
    write_csv(ws.quarantine, QUARANTINE_FIELDS, plan.quarantine)
    return ScanResult(images=plan.images, files=plan.files + len(plan.quarantine), new_images=plan.new_images,
                      quarantined=len(plan.quarantine), duplicates=plan.files - plan.images, parts=plan.parts,
                      hashed=plan.hashed, unversionable=plan.unversionable,
                      changed=wrote or plan.quarantine_changed or bool(plan.changed) or bool(plan.deleted))


def scan(ws: Workspace, cfg: ScanConfig, round_no: int) -> ScanResult:
    """The scan stage: record in data/store/manifest/ (one row per usable file; this round's
    part holds only what changed) and data/store/quarantine.csv (one row per bad file), its
    declared outputs."""
    ws.images.mkdir(parents=True, exist_ok=True)
    return apply_scan(ws, plan_scan(ws, cfg, round_no), round_no)


def image_table(ws: Workspace) -> dict[str, str]:
    """Content id -> display path (the first path in sorted order), from the manifest."""
    table: dict[str, str] = {}
    for i, path in zip(*read_manifest_table(ws, ["image_id"]).select(["image_id", "path"]).to_pydict().values()):
        table.setdefault(i, path)
    return table
