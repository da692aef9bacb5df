"""New SQLite databases that start as a copy of a freshly migrated, empty one.

A new workspace gets two SQLite databases: Prefect's (``.prefect/prefect.db``) and MLflow's
(``mlflow.db``). Each tool creates its tables by running every one of its migrations, about 5 s
of CPU for Prefect and 1-2 s for MLflow, in every new workspace. Instead an empty database of
each tool, its tables made, is kept in the user's cache (``template``), and every later new
workspace's database starts as a copy of it: the same tables, the same migration revision, no
rows. Prefect's is a copy of the first database a Prefect server made (``remember``); MLflow's
is made by MLflow's own table creation on a file of its own (``make``, tasks/track.py). A
template is named by the tool's version (another version has other tables), and every step is
best effort: without a template (none yet, a read-only cache, a copy that fails) the tool
creates its tables as it always does.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import sqlite3
from pathlib import Path
from typing import Callable


def cache_dir() -> Path:
    """``$COLDSTART_CACHE``, default ``$XDG_CACHE_HOME/coldstart`` (i.e. ``~/.cache/coldstart``)."""
    cache = os.environ.get("COLDSTART_CACHE")
    return Path(cache) if cache else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "coldstart"


def template(tool: str) -> Path:
    """The cached empty database of the installed version of ``tool`` ("prefect", "mlflow"):
    ``cache_dir()/<tool>-<version>.db``."""
    return cache_dir() / f"{tool}-{importlib.metadata.version(tool)}.db"


def seed(db: Path, tool: str) -> bool:
    """Copy ``tool``'s template to ``db`` if ``db`` does not exist and there is a template. True
    when it was copied (the tool then finds its tables made)."""
    if db.exists():
        return False
    with contextlib.suppress(OSError, sqlite3.Error, RuntimeError):  # RuntimeError: no home folder
        copy_database(template(tool), db)
        return True
    return False


def remember(db: Path, tool: str) -> None:
    """Keep a copy of ``db``, a database ``tool`` has just created its tables in (and nothing
    else yet), as its template, unless there is one."""
    with contextlib.suppress(OSError, sqlite3.Error, RuntimeError):
        path = template(tool)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            copy_database(db, path)


def make(tool: str, create: Callable[[Path], None]) -> None:
    """Make ``tool``'s template by calling ``create(path)`` on a new database file, for a tool
    whose first database cannot be the template (MLflow adds rows naming its workspace as soon as
    its tables are made). Concurrent makers each write their own file; the last rename wins."""
    path = template(tool)
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = path.with_name(f".{path.name}.{os.getpid()}.new")
    try:
        fresh.unlink(missing_ok=True)
        create(fresh)
        copy_database(fresh, path)
    finally:
        fresh.unlink(missing_ok=True)


def copy_database(src: Path, dst: Path) -> None:
    """A consistent copy of a migrated SQLite database (a server may be writing to it: SQLite's
    online backup, which also folds in the write-ahead log), written under a temporary name, then
    renamed. Refuses a database without an ``alembic_version`` table (both tools migrate with
    Alembic): not one whose tables were made."""
    if not src.is_file():
        raise FileNotFoundError(src)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with contextlib.closing(sqlite3.connect(f"{src.resolve().as_uri()}?mode=ro", uri=True)) as a, \
                contextlib.closing(sqlite3.connect(tmp)) as b:
            if a.execute("SELECT count(*) FROM sqlite_master WHERE name = 'alembic_version'").fetchone()[0] != 1:
                raise sqlite3.DatabaseError(f"{src} is not a migrated database")
            a.backup(b)
            # One self-contained file (the copy keeps the source's WAL mode otherwise, and even a
            # read-only reader then leaves -wal/-shm files beside it); a tool that wants WAL turns
            # it back on when it opens its copy.
            b.execute("PRAGMA journal_mode=DELETE")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
