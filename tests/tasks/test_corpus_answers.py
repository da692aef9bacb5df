"""Intake over a corpus of 100+ answer files (tests/corpus/make_answers.py): each file ends
accepted, rejected whole, or with rows set aside, exactly as expected; no event is lost or
doubled; a FIFO does not hang the round; the next intake still works. Plus the faults of the
log itself: a torn last line, a full disk."""

from __future__ import annotations

import collections
import errno
import signal

import pytest

from coldstart.tasks import labellog
from coldstart.tasks.config import ScanConfig
from coldstart.tasks.errors import LabelLogError
from coldstart.tasks.intake import intake
from coldstart.tasks.labellog import read_events
from coldstart.tasks.manifest import read_manifest
from coldstart.tasks.scan import scan
from coldstart.tasks.workspace import Workspace, read_csv
from tests.conftest import write_image
from tests.corpus.make_answers import CLASSES, IMAGES, QUARANTINED, make_answer_corpus


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "params.yaml").write_text("")
    w = Workspace(root)
    for k, name in enumerate(IMAGES):
        write_image(w.images / name, seed=k, fmt="PNG" if name.endswith(".png") else "JPEG")
    (w.images / QUARANTINED).write_bytes(b"")
    scan(w, ScanConfig(), round_no=1)
    w.inbox.mkdir(parents=True, exist_ok=True)
    return w


@pytest.fixture
def no_hang():
    """Fail, not hang, if intake blocks (a FIFO opened for reading waits for a writer)."""
    def stop(*_):
        raise TimeoutError("intake hung")
    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def ids(ws):
    return {r["path"]: r["image_id"] for r in read_manifest(ws)}


def test_every_corpus_file_gets_its_outcome(ws, no_hang):
    expected = make_answer_corpus(ws.inbox, ids(ws))
    assert len(expected) >= 100
    result = intake(ws, CLASSES, round_no=2)
    events = read_events(ws)
    per_file = collections.Counter(e.source_file for e in events)
    wrong = []
    for name, exp in expected.items():
        rel = f"data/inbox/{name}"
        got = ("rejected" if rel in result.files_rejected else
               "rows" if (ws.rejected / f"{name.rsplit('.', 1)[0]}.rows.csv").exists() and rel in result.files_accepted
               else "accepted" if rel in result.files_accepted else "missing")
        detail = ""
        if exp.outcome == "rejected" and got == "rejected":
            report = (ws.rejected / f"{name}.errors.txt").read_text(encoding="utf-8")
            detail = "" if exp.keyword in report else f"keyword {exp.keyword!r} not in {report[:300]!r}"
            if not (ws.rejected / name).is_symlink() and not (ws.rejected / name).exists():
                detail += " (not moved to rejected/)"
        elif got in ("accepted", "rows"):
            if per_file[rel] != exp.events:
                detail = f"{per_file[rel]} events, expected {exp.events}"
            if exp.outcome == "rows" and got == "rows":
                reasons = [r["reason"] for r in read_csv(ws.rejected / f"{name.rsplit('.', 1)[0]}.rows.csv")]
                if len(reasons) != exp.rows or not all(exp.keyword in r for r in reasons):
                    detail += f" rows {reasons[:3]} (expected {exp.rows} with {exp.keyword!r})"
        if got != exp.outcome or detail:
            wrong.append(f"{name}: {got}, expected {exp.outcome} {detail}")
    assert wrong == [], "\n".join(wrong)
    # No event lost or doubled: exactly the expected count, one per (file, row).
    assert len(events) == sum(e.events for e in expected.values()) == result.events_added
    assert len({(e.source_sha256, e.source_row) for e in events}) == len(events)
    assert result.rows_rejected == sum(e.rows for e in expected.values())
    # Nothing left in the inbox but the folder; the file a symlink pointed to is untouched.
    assert sorted(p.name for p in ws.inbox.iterdir()) == ["rejected", "s06-folder"]
    assert (ws.root.parent / "outside-secret.csv").read_bytes() == b"image,label\na.jpg,cat\n"
    # Listings are capped: 120 bad rows, 50 listed in the summary line's .rows.csv note, all in the .rows.csv.
    assert len(read_csv(ws.rejected / "r23-many-bad.rows.csv")) == 120
    # The review CSV round trip maps each row to the exact image (=x.png and '=x.png both exist).
    by_id = {e.image_id: e.label for e in events if e.source_file.endswith("v21-review-roundtrip.csv")}
    assert by_id == {ids(ws)[p]: CLASSES[k % 2] for k, p in enumerate(
        [" space.jpg", "+p.jpg", "=x.png", "'=x.png", "-m.jpg", "café.jpg"])}
    # A later round still works, and re-dropping an imported file adds nothing.
    (ws.inbox / "later.csv").write_text("image,label\nb.jpg,cat\n", encoding="utf-8")
    (ws.inbox / "again.csv").write_bytes((ws.imported / "v01-basic.csv").read_bytes())
    again = intake(ws, CLASSES, round_no=3)
    assert again.files_accepted == ["data/inbox/later.csv"] and again.events_added == 1
    assert again.files_already_imported == ["data/inbox/again.csv"] and not again.files_rejected


def test_problem_listings_are_capped(ws):
    lines = ["image,label"] + [f"nope{k}.jpg,dog" for k in range(5000)]
    (ws.inbox / "bad.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = intake(ws, CLASSES, round_no=2, on_error="reject_file")
    report = (ws.rejected / "bad.csv.errors.txt").read_text(encoding="utf-8")
    assert "(5000 problem(s))" in report and "... and 4950 more" in report
    assert report.count("unknown image") == 50 and len(r.problems[0]) < 10_000


def test_a_file_of_mostly_bad_rows_is_rejected_whole_not_copied_row_by_row(ws):
    """keep_good_rows hands typos back row by row; 5,000 bad rows and one good one are not typos
    (a wrong file, an old class list): the file is rejected whole, the listing capped, and no
    .rows.csv as big as the file is written."""
    lines = ["image,label", "a.jpg,cat"] + [f"nope{k}.jpg,dog" for k in range(5000)]
    (ws.inbox / "mostly-bad.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = intake(ws, CLASSES, round_no=2, on_error="keep_good_rows")
    assert r.files_rejected == ["data/inbox/mostly-bad.csv"] and r.events_added == 0 and r.rows_rejected == 0
    report = (ws.rejected / "mostly-bad.csv.errors.txt").read_text(encoding="utf-8")
    assert "5000 of 5001 answered rows are bad" in report and report.count("unknown image") == 50
    assert not (ws.rejected / "mostly-bad.rows.csv").exists() and len(report) < 20_000


def test_size_cap_rejects_unread(ws):
    (ws.inbox / "big.csv").write_bytes(b"image,label\n" + b"a.jpg,cat\n" * 120_000)  # 1.2 MB
    r = intake(ws, CLASSES, round_no=2, max_file_mb=1)
    assert r.files_rejected == ["data/inbox/big.csv"] and "split it into files under 1 MB" in r.problems[0]


def _event_line(ws, k):
    return ('{"image_id": "%s", "label": "cat", "annotator": "", "source_file": "f%d", "source_sha256": "%064x", '
            '"source_row": 2, "imported_at": "2024-01-01T00:00:00+00:00", "round": 1}\n' % (ids(ws)["a.jpg"], k, k))


def test_a_torn_last_line_is_set_aside_and_the_log_repaired(ws, caplog):
    ws.events.parent.mkdir(parents=True, exist_ok=True)
    good = _event_line(ws, 1) + _event_line(ws, 2)
    ws.events.write_bytes(good.encode() + b'{"image_id": "ab", "lab')  # crash mid-append
    assert len(read_events(ws)) == 2  # readers skip it, with a warning
    (ws.inbox / "next.csv").write_text("image,label\nb.jpg,dog\n", encoding="utf-8")
    r = intake(ws, CLASSES, round_no=2)
    assert r.events_added == 1 and r.label_events == 3
    assert ws.events.read_bytes().startswith(good.encode()) and ws.events.read_bytes().endswith(b"\n")
    torn = list((ws.state_dir / "torn").iterdir())
    assert len(torn) == 1 and torn[0].read_bytes() == b'{"image_id": "ab", "lab'
    assert torn[0].name in caplog.text
    # A last event complete but for its newline is kept, not set aside.
    ws.events.write_bytes(good.encode()[:-1])
    assert len(read_events(ws)) == 2


def test_a_full_disk_during_the_append_is_a_clear_error(ws, monkeypatch):
    (ws.inbox / "first.csv").write_text("image,label\na.jpg,cat\n", encoding="utf-8")
    intake(ws, CLASSES, round_no=2)
    before = ws.events.read_bytes()
    (ws.inbox / "second.csv").write_text("image,label\nb.jpg,dog\n", encoding="utf-8")

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(labellog, "atomic_write_bytes", full)  # the log's append
    with pytest.raises(LabelLogError, match="No space left on device.*intact.*second.csv"):
        intake(ws, CLASSES, round_no=3)
    assert ws.events.read_bytes() == before and (ws.inbox / "second.csv").is_file()
    monkeypatch.undo()
    assert intake(ws, CLASSES, round_no=3).events_added == 1  # retried once there is space


def test_formula_cells_are_escaped_for_spreadsheets_and_undone_on_read(tmp_path):
    from coldstart.tasks.workspace import escape_formula, unescape_formula, write_csv

    values = ["=1+1", "+a", "-a", "@a", "\tx", "\rx", "plain", " lead"]
    write_csv(tmp_path / "x.csv", ["v"], [{"v": v} for v in values], escape_formulas=True)
    cells = [r["v"] for r in read_csv(tmp_path / "x.csv")]
    assert cells == ["'=1+1", "'+a", "'-a", "'@a", "'\tx", "'\rx", "plain", " lead"]
    assert [unescape_formula(c) for c in cells] == values == [unescape_formula(escape_formula(v)) for v in values]
