"""The workspace: where each file lives, the round lock, atomic writes, round numbering."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import os
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from coldstart.tasks.commands import command
from coldstart.tasks.config import Params, load_params
from coldstart.tasks.errors import WorkspaceError

ROUND_TAG = re.compile(r"^round-(\d{3,})$")


@dataclass(frozen=True)
class Workspace:
    """Paths of one workspace (a git + DVC repo). Every path here is part of the contract."""

    root: Path

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Workspace":
        root = Path(root).expanduser().resolve()
        if not (root / "params.yaml").is_file():
            raise WorkspaceError(
                f"{root} is not a coldstart workspace (no params.yaml); create one with `{command('coldstart')} init {shlex.quote(str(root))}`"
            )
        return cls(root)

    def params(self) -> Params:
        params = load_params(self.params_file)
        pre = params.model.pretrained
        # A relative checkpoint path means relative to the workspace, not to the caller's cwd.
        if pre and not pre.startswith("local-dir:") and (os.sep in pre or Path(pre).suffix) and not Path(pre).is_absolute():
            params = params.model_copy(update={"model": params.model.model_copy(update={"pretrained": str(self.root / pre)})})
        return params

    params_file = property(lambda self: self.root / "params.yaml")
    images = property(lambda self: self.root / "data" / "images")
    inbox = property(lambda self: self.root / "data" / "inbox")
    rejected = property(lambda self: self.root / "data" / "inbox" / "rejected")
    labels = property(lambda self: self.root / "data" / "labels")
    events = property(lambda self: self.root / "data" / "labels" / "events.jsonl")
    imported = property(lambda self: self.root / "data" / "labels" / "imported")
    resolved = property(lambda self: self.root / "data" / "labels" / "resolved")  # Parquet parts: tasks/relabel.py
    flags = property(lambda self: self.root / "data" / "labels" / "flags.csv")
    # "none of these" answers to ask again after `coldstart discover --adopt` (tasks/discover.py)
    reask = property(lambda self: self.root / "data" / "labels" / "reask.csv")
    proposals = property(lambda self: self.root / "data" / "labels" / "proposals.json")
    store = property(lambda self: self.root / "data" / "store")
    manifest = property(lambda self: self.root / "data" / "store" / "manifest")  # Parquet parts: tasks/manifest.py
    quarantine = property(lambda self: self.root / "data" / "store" / "quarantine.csv")
    embeddings = property(lambda self: self.root / "data" / "store" / "embeddings")
    # A cache (recomputable), not a stage output: kept out of data/ and out of DVC.
    text_cache = property(lambda self: self.root / ".coldstart" / "cache" / "text")
    model_dir = property(lambda self: self.root / "data" / "models")
    metrics_dir = property(lambda self: self.root / "data" / "metrics")
    review = property(lambda self: self.root / "data" / "review")
    state_dir = property(lambda self: self.root / ".coldstart")

    def rel(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root).as_posix()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock for a round or an intake: two at once would interleave the label log."""
        self.state_dir.mkdir(exist_ok=True)
        fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                raise WorkspaceError(
                    f"{self.root} is busy: a round or intake is running (pid {holder}); wait for it to finish"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the flock; a killed process releases it too

    def round_tags(self) -> list[int]:
        """Round numbers already tagged in the workspace's git repo, ascending."""
        try:
            out = subprocess.run(
                ["git", "tag", "--list", "round-*"], cwd=self.root, capture_output=True, text=True, check=True
            ).stdout
        except (subprocess.CalledProcessError, FileNotFoundError):
            return []
        return sorted(int(m.group(1)) for t in out.split() if (m := ROUND_TAG.match(t)))

    def next_round(self) -> int:
        tags = self.round_tags()
        return (tags[-1] if tags else 0) + 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` into a temp file in the same folder, fsync, ``os.replace``: readers
    see the old file or the new, never half. The file gets the permissions a plain ``open()``
    would (0644 under umask 0022), not the temp file's 0600: review batches must be readable by
    other people and by Label Studio."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``data`` into ``path`` atomically (see atomic_write)."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# A cell starting with one of these is run as a formula by Excel/LibreOffice/Sheets (CSV
# injection). CSVs that people open get such text cells prefixed with a single quote (OWASP).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def escape_formula(value: str) -> str:
    """``value`` as a spreadsheet shows it literally: ``'`` before a formula-like start."""
    return "'" + value if value[:1] in FORMULA_START else value


def unescape_formula(value: str) -> str:
    """Undo ``escape_formula``. Ambiguous for text that really starts with ``'=``: readers try
    the cell as written first (see tasks/intake.py)."""
    return value[1:] if value[:1] == "'" and value[1:2] in FORMULA_START else value


def write_csv(path: Path, fieldnames: list[str], rows: Iterable[dict], *, escape_formulas: bool = False) -> None:
    """Rows to a UTF-8 CSV, atomically. ``escape_formulas``: for CSVs a person opens in a
    spreadsheet (review batches, exports, rows handed back): text cells that would run as a
    formula get a leading ``'`` (see escape_formula)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fieldnames, lineterminator="\n")
            # The csv module quotes a field holding the line terminator, not one holding a bare CR,
            # which a reader then takes for a line end: such rows are written fully quoted.
            quoted = csv.DictWriter(f, fieldnames=fieldnames, lineterminator="\n", quoting=csv.QUOTE_ALL)
            w.writeheader()
            for row in rows:
                if escape_formulas:
                    row = {k: escape_formula(v) if isinstance(v, str) else v for k, v in row.items()}
                cr = any(isinstance(v, str) and "\r" in v for v in row.values())
                (quoted if cr else w).writerow(row)

    atomic_write(path, write)


def read_csv(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
