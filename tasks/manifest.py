"""The manifest: one row per usable image file, kept as Parquet parts (see coldstart.tasks.parts).

Columns: ``path`` (POSIX, relative to data/images, exactly as on disk: not Unicode-normalised;
the key), ``image_id`` (sha256 of the bytes), ``width``, ``height`` (pixels, EXIF orientation applied), ``size_bytes`` and
``mtime_ns`` (what the scan saw: unchanged files are not read again), ``first_round``. A round
that adds 1% new images adds a part of about 1% of the rows; the view is sorted by path.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.csv as pacsv

from coldstart.tasks.parts import PartTable
from coldstart.tasks.workspace import Workspace

SCHEMA = pa.schema([("path", pa.string()), ("image_id", pa.string()), ("width", pa.int32()),
                    ("height", pa.int32()), ("size_bytes", pa.int64()), ("mtime_ns", pa.int64()),
                    ("first_round", pa.int32())])
FIELDS = SCHEMA.names


def manifest_parts(ws: Workspace) -> PartTable:
    return PartTable(ws.manifest, "path", SCHEMA)


def read_manifest_table(ws: Workspace, columns: list[str] | None = None, before: int | None = None) -> pa.Table:
    """The current manifest (``before``: as before that round) as an Arrow table, by path."""
    parts = manifest_parts(ws)
    legacy = ws.manifest.with_suffix(".csv")  # written by coldstart before manifest parts
    if not parts.files(before) and legacy.is_file():
        types = {f.name: f.type for f in SCHEMA}
        table = pacsv.read_csv(legacy, convert_options=pacsv.ConvertOptions(column_types=types))
        return table.select(columns or FIELDS).sort_by("path")
    return parts.read(columns, before)


def read_manifest(ws: Workspace) -> list[dict]:
    """The current manifest as rows (dicts of ``FIELDS``), by path; [] before the first scan."""
    return read_manifest_table(ws).to_pylist()


def replace_manifest(ws: Workspace, rows: list[dict], round_no: int) -> None:
    """Make ``rows`` (dicts of ``FIELDS``) the manifest as of ``round_no``: the part written
    holds the rows that differ from the view before that round. For tools and tests that build
    a workspace without scanning images; the scan stage computes its own changes."""
    table = pa.Table.from_pylist([{f: r[f] for f in FIELDS} for r in rows], schema=SCHEMA).sort_by("path")
    before = {r["path"]: r for r in read_manifest_table(ws, before=round_no).to_pylist()}
    new = table.to_pylist()
    changed = [r for r in new if before.get(r["path"]) != r]
    keys = {r["path"] for r in new}
    manifest_parts(ws).write(round_no, pa.Table.from_pylist(changed, schema=SCHEMA),
                             [p for p in before if p not in keys], lambda: table)
