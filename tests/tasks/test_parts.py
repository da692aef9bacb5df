"""Tables in Parquet parts: each round stores its changes; the view is the current table."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from coldstart.tasks import parts as parts_module
from coldstart.tasks.parts import PartTable

SCHEMA = pa.schema([("key", pa.string()), ("value", pa.int64())])


def _rows(table: pa.Table) -> dict[str, int]:
    return dict(zip(table["key"].to_pylist(), table["value"].to_pylist()))


def _write(t: PartTable, round_no: int, want: dict[str, int]) -> bool:
    """Record ``want`` as the table of ``round_no``, as a stage does: changed rows and deletions."""
    before = _rows(t.read(before=round_no))
    changed = {k: v for k, v in want.items() if before.get(k) != v}
    full = pa.table({"key": sorted(want), "value": [want[k] for k in sorted(want)]}, schema=SCHEMA)
    return t.write(round_no, pa.table({"key": list(changed), "value": list(changed.values())}, schema=SCHEMA),
                   [k for k in before if k not in want], lambda: full)


def test_each_round_stores_its_changes_and_the_view_is_the_current_table(tmp_path):
    t = PartTable(tmp_path / "t", "key", SCHEMA)
    table = {f"k{i:03d}": i for i in range(100)}
    assert _write(t, 1, table)
    assert [p.name for _, _, p in t.files()] == ["000001.base.parquet"]
    table.update({"k005": -5, "k100": 100})  # one changed, one new
    del table["k007"]
    assert _write(t, 2, table)
    assert pq.read_table(tmp_path / "t" / "000002.parquet").num_rows == 3  # 2 rows + 1 tombstone
    assert _rows(t.read()) == table and t.read()["key"].to_pylist() == sorted(table)
    assert not _write(t, 3, table)  # nothing changed: no file
    assert _rows(t.read(before=2)) == {f"k{i:03d}": i for i in range(100)}  # the table as round 1 left it
    # Round 2 runs again with other changes: its own file is replaced, computed against round 1.
    table["k007"], table["k005"] = 7, 5
    del table["k100"]
    assert not _write(t, 2, table) and [p.name for _, _, p in t.files()] == ["000001.base.parquet"]
    # Most rows change: a new base, and the view no longer reads the files before it.
    assert _write(t, 4, {k: v + 1000 for k, v in table.items()})
    assert [p.name for _, _, p in t.files()] == ["000004.base.parquet"]
    assert _rows(t.read()) == {k: v + 1000 for k, v in table.items()}


def test_a_base_after_max_deltas_and_files_before_the_previous_base_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(parts_module, "MAX_DELTAS", 2)
    t = PartTable(tmp_path / "t", "key", SCHEMA)
    table = {f"k{i:03d}": i for i in range(10)}
    for r in range(1, 8):
        table[f"k{r:03d}"] = -r
        _write(t, r, table)
        assert _rows(t.read()) == table
    names = sorted(p.name for p in (tmp_path / "t").iterdir())
    # bases at rounds 1, 4, 7 (after 2 deltas each); what is before round 4's base is gone.
    assert names == ["000004.base.parquet", "000005.parquet", "000006.parquet", "000007.base.parquet"]
