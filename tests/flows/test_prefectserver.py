"""The template of a migrated Prefect database that new workspaces' servers start from."""

from __future__ import annotations

import os
import sqlite3

import pytest

from coldstart.flows.prefectserver import remember_database, seed_database
from coldstart.tasks.dbtemplate import template as _template


def database_template():
    return _template("prefect")


def _migrated(path, rows: int = 3) -> sqlite3.Connection:
    """A stand-in for a database Prefect made: its alembic_version table and some rows (WAL mode,
    as Prefect's server keeps it, with the rows still in the write-ahead log)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE alembic_version (version_num TEXT)")
    con.execute("CREATE TABLE block_type (name TEXT)")
    con.executemany("INSERT INTO block_type VALUES (?)", [(f"b{k}",) for k in range(rows)])
    con.commit()
    return con  # kept open: the WAL is not folded into the file yet


def test_the_first_new_database_becomes_the_template_and_later_homes_start_from_it(tmp_path, monkeypatch):
    monkeypatch.setenv("COLDSTART_CACHE", str(tmp_path / "cache"))
    template = database_template()
    assert template.parent == tmp_path / "cache" and template.name.startswith("prefect-")
    first = tmp_path / "ws?1" / ".prefect"
    first.mkdir(parents=True)
    assert seed_database(first) is True  # no template yet: its server creates the tables
    con = _migrated(first / "prefect.db")
    remember_database(first)
    con.close()
    assert template.is_file() and not list(template.parent.glob(".*tmp"))
    with sqlite3.connect(template) as copy:  # a single file, whatever the source's journal
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    with sqlite3.connect(template) as copy:
        assert copy.execute("SELECT count(*) FROM block_type").fetchone()[0] == 3

    second = tmp_path / "ws #2 %41" / ".prefect"  # characters a SQLite URI would misread
    second.mkdir(parents=True)
    assert seed_database(second) is False  # seeded: nothing to create
    with sqlite3.connect(second / "prefect.db") as seeded:
        assert seeded.execute("SELECT count(*) FROM block_type").fetchone()[0] == 3
    assert sorted(p.name for p in template.parent.iterdir()) == [template.name]  # reading left nothing beside it
    assert seed_database(second) is False  # an existing database is left as it is

    # A later new database does not replace the template.
    third = tmp_path / "ws3" / ".prefect"
    _migrated(third / "prefect.db", rows=5).close()
    remember_database(third)
    with sqlite3.connect(template) as copy:
        assert copy.execute("SELECT count(*) FROM block_type").fetchone()[0] == 3


def test_what_is_not_a_migrated_database_is_never_a_template(tmp_path, monkeypatch):
    monkeypatch.setenv("COLDSTART_CACHE", str(tmp_path / "cache"))
    home = tmp_path / "ws" / ".prefect"
    home.mkdir(parents=True)
    sqlite3.connect(home / "prefect.db").close()  # empty: the server died before creating tables
    remember_database(home)
    assert not database_template().exists()
    # A damaged template is not copied: the server creates its own tables.
    database_template().parent.mkdir(parents=True, exist_ok=True)
    database_template().write_bytes(b"not a database")
    fresh = tmp_path / "ws2" / ".prefect"
    fresh.mkdir(parents=True)
    assert seed_database(fresh) is True and not (fresh / "prefect.db").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through permissions")
def test_a_read_only_cache_costs_time_not_the_round(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o555)
    monkeypatch.setenv("COLDSTART_CACHE", str(cache))
    home = tmp_path / "ws" / ".prefect"
    _migrated(home / "prefect.db").close()
    remember_database(home)  # no error
    assert not database_template().exists()
