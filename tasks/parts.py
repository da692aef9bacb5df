"""Tables kept as Parquet parts, so that each round stores what changed and not the whole table.

A folder holds one file per round that changed something:

- ``NNNNNN.parquet``: a delta, the rows (whole rows, keyed by the table's key column) added or
  changed in round NNNNNN, plus a tombstone row (``deleted`` true) for each key removed;
- ``NNNNNN.base.parquet``: a full snapshot. Files before the newest base are not read.

The current view is the newest base, then each later delta in round order, the last row per key
winning and tombstones dropping their key; when it combines several files it is sorted by key
(a base alone is read in the order it was written). A base replaces the deltas when
a round changes half the rows or more (it would store about as much anyway), or after
``MAX_DELTAS`` deltas (so that reading stays cheap). Files older than the previous base are then
removed: old rounds keep them in DVC, at their git tag.

Each file is written atomically (temp file, fsync, rename), and a round that runs again
replaces its own file, computing its delta against the rounds before it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from coldstart.tasks.workspace import atomic_write

MAX_DELTAS = 32
DELETED = "deleted"
_NAME = re.compile(r"^(\d{6})(\.base)?\.parquet$")


class PartTable:
    def __init__(self, folder: Path, key: str, schema: pa.Schema):
        """``schema``: the table's columns, the key among them (``deleted`` is added here)."""
        self.dir, self.key, self.schema = Path(folder), key, schema

    def files(self, before: int | None = None) -> list[tuple[int, bool, Path]]:
        """(round, is_base, path) of the files the view reads, in round order: the newest base
        and what follows it (``before``: only rounds before that one)."""
        found = []
        if self.dir.is_dir():
            for p in self.dir.iterdir():
                m = _NAME.match(p.name)
                if m and (before is None or int(m.group(1)) < before):
                    found.append((int(m.group(1)), bool(m.group(2)), p))
        found.sort(key=lambda f: (f[0], not f[1]))
        bases = [i for i, f in enumerate(found) if f[1]]
        return found[bases[-1]:] if bases else found

    def metadata(self, before: int | None = None) -> dict[bytes, bytes]:
        """The schema metadata of the newest file the view reads (what its writer attached)."""
        files = self.files(before)
        return dict(pq.read_schema(files[-1][2]).metadata or {}) if files else {}

    def read(self, columns: list[str] | None = None, before: int | None = None, sort: bool = True,
             key: bool = True) -> pa.Table:
        """The current view (``before``: as it stood before that round); sorted by key when it
        combines several files, unless ``sort`` is False. ``key=False`` with ``columns``: leave
        the key column out (it is then not even read when the view is one file)."""
        files = self.files(before)
        skip_key = not key and columns is not None and len(files) == 1
        names = None if columns is None else list(dict.fromkeys(([] if skip_key else [self.key]) + [*columns, DELETED]))
        tables = [pq.read_table(p, columns=names) for _, _, p in files]
        if not tables:
            return self.schema.empty_table() if columns is None else \
                pa.schema([self.schema.field(c) for c in dict.fromkeys([self.key, *columns])]).empty_table()
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
        if len(tables) > 1:  # the last row per key wins
            table = table.append_column("__row", pa.array(np.arange(len(table), dtype=np.int64)))
            last = table.group_by(self.key, use_threads=False).aggregate([("__row", "max")])
            table = table.take(last["__row_max"]).drop_columns(["__row"])
        table = table.filter(pc.invert(table[DELETED])).drop_columns([DELETED])
        if sort and len(tables) > 1:
            table = table.take(pc.sort_indices(table[self.key]))
        return table.drop_columns([self.key]) if not key and columns is not None and not skip_key else table

    def write(self, round_no: int, changed: pa.Table, deleted: list[str] | pa.Array, full,
              metadata: dict[str, str] | None = None) -> bool:
        """Record round ``round_no``: ``changed`` rows (added or modified; schema columns),
        ``deleted`` keys, and ``full()``, a callable giving the whole new table, called only
        when a base is due; ``metadata`` goes into the file's schema. Returns whether a file
        was written (nothing changed: none)."""
        earlier = self.files(before=round_no)
        own = [p for p in self.dir.glob(f"{round_no:06d}*.parquet")] if self.dir.is_dir() else []
        if not len(changed) and not deleted:
            for p in own:  # a re-run that found nothing changed after all
                p.unlink()
            return False
        live = sum(pq.read_metadata(p).num_rows for _, is_base, p in earlier if is_base)
        deltas = sum(1 for _, is_base, _ in earlier if not is_base)
        if not earlier or not earlier[0][1] or deltas >= MAX_DELTAS or 2 * (len(changed) + len(deleted)) >= max(live, 1):
            table = full().select(self.schema.names)
            table = table.append_column(DELETED, pa.array(np.zeros(len(table), bool)))
            name = f"{round_no:06d}.base.parquet"
        else:
            gone = pa.table({c: pa.array(deleted, pa.string()) if c == self.key else _blank(len(deleted), self.schema.field(c).type)
                             for c in self.schema.names})
            table = pa.concat_tables([changed.select(self.schema.names).cast(self.schema), gone.cast(self.schema)])
            table = table.append_column(DELETED, pa.array(np.r_[np.zeros(len(changed), bool), np.ones(len(deleted), bool)]))
            name = f"{round_no:06d}.parquet"
        self.dir.mkdir(parents=True, exist_ok=True)
        table = table.cast(self.schema.append(pa.field(DELETED, pa.bool_())))
        _write_atomic(self.dir / name, table.replace_schema_metadata(metadata) if metadata else table)
        for p in own:
            if p.name != name:
                p.unlink()
        if name.endswith(".base.parquet"):  # keep one generation before this base, drop the rest
            previous = [r for r, is_base, _ in earlier if is_base]
            if previous and self.dir.is_dir():
                for p in self.dir.iterdir():
                    m = _NAME.match(p.name)
                    if m and int(m.group(1)) < previous[-1]:
                        p.unlink()
        return True


def _blank(n: int, kind: pa.DataType) -> pa.Array:
    """A tombstone's value: null, or zeros for fixed-size lists (pyarrow 25 writes null ones to
    Parquet but cannot read them back)."""
    if pa.types.is_fixed_size_list(kind):
        return pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(n * kind.list_size), kind.value_type), kind.list_size)
    return pa.nulls(n, kind)


def _write_atomic(path: Path, table: pa.Table) -> None:
    # Keys (content ids, paths) are unique per row: dictionary-encoding them would be tried and
    # abandoned. zstd halves hex ids and paths.
    small = [c for c in table.column_names if c not in ("image_id", "path")]
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, use_dictionary=small, compression="zstd"))
