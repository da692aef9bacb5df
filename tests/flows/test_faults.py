"""Faults with real processes: kill -9 mid-embed, two intakes at once (docs/round.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from coldstart.flows.cli import main as cli
from coldstart.tasks.demodata import write_digits
from coldstart.tasks.labellog import read_events
from coldstart.tasks.store import EmbeddingStore

pytestmark = pytest.mark.slow

KILLABLE_EMBED = """
import sys, coldstart.tasks.embed as e
e.SHARD_ROWS = 8  # small shards, so a kill lands between commits
from coldstart.flows.cli import main
sys.exit(main(["stage", "embed", "--workspace", sys.argv[1]]))
"""


def test_kill_9_during_embed_then_resume_gives_the_same_store(make_workspace, tmp_path):
    ws = make_workspace("killed")
    write_digits(ws.images, n=120, size=96)
    assert cli(["stage", "scan", "-w", str(ws.root)]) == 0
    store_dir = ws.embeddings / "coldstart-tiny_random-seed0" / "global"
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE_EMBED, str(ws.root)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(store_dir.glob("*.ids.npy"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(list(store_dir.glob("*.ids.npy")))
    assert partial >= 2, "the embed stage finished before it could be killed"
    assert cli(["stage", "embed", "-w", str(ws.root)]) == 0  # resume: only what is missing
    store = EmbeddingStore(ws.embeddings, "coldstart-tiny@random-seed0")
    ids, X = store.load()
    assert len(ids) == len(set(ids)) == 120  # nothing lost, nothing twice

    clean = make_workspace("clean")
    write_digits(clean.images, n=120, size=96)
    assert cli(["stage", "scan", "-w", str(clean.root)]) == 0
    assert cli(["stage", "embed", "-w", str(clean.root)]) == 0
    ref_ids, ref = EmbeddingStore(clean.embeddings, "coldstart-tiny@random-seed0").load(ids)
    np.testing.assert_allclose(X, ref, atol=1e-5)  # the same results as an uninterrupted run


def test_two_intakes_at_once_import_each_row_exactly_once(make_workspace):
    ws = make_workspace()
    truth = write_digits(ws.images, n=30, size=32)
    assert cli(["stage", "scan", "-w", str(ws.root)]) == 0
    rows = "\n".join(f"{p},{t}" for p, t in truth.items())
    for k in range(3):
        (ws.inbox / f"answers-{k}.csv").write_text("image,label,annotator\n" + rows.replace("\n", f",a{k}\n") +
                                                   f",a{k}\n")
    procs = [subprocess.Popen([sys.executable, "-m", "coldstart.flows.cli", "stage", "intake", "-w", str(ws.root)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    assert all(code == 0 or "busy" in err for code, err in results), results
    # Whatever interleaving happened, a later run finishes the inbox; then every row is in once.
    assert cli(["stage", "intake", "-w", str(ws.root)]) == 0
    events = read_events(ws)
    assert len(events) == 90 and len({(e.source_sha256, e.source_row) for e in events}) == 90
    assert sorted({e.annotator for e in events}) == ["a0", "a1", "a2"]
    assert not list(ws.inbox.glob("*.csv"))


def test_a_failed_first_round_is_retried_cleanly_once_the_cause_is_fixed(make_workspace, prefect_harness):
    """Offline, round 1 fails on its weights after the scan wrote its manifest part; with the
    weights fixed, the very next attempt labels every image (it used to find "nothing changed",
    delete the part and fail on a missing manifest)."""
    from coldstart.flows.round import labeling_round
    from coldstart.tasks.errors import ColdstartError
    from coldstart.tasks.manifest import read_manifest_table
    from coldstart.tasks.relabel import read_resolved

    ws = make_workspace("offline")
    write_digits(ws.images, n=12, size=32)
    good = ws.params_file.read_text()
    ws.params_file.write_text(good.replace("pretrained: null", "pretrained: weights/missing.pt"))
    with pytest.raises(ColdstartError, match="missing.pt"):
        labeling_round(workspace=str(ws.root))
    assert ws.manifest.is_dir() and ws.round_tags() == []  # the failed attempt's part, no tag
    ws.params_file.write_text(good)
    rec = labeling_round(workspace=str(ws.root))
    assert (rec.round, rec.scan.images, rec.scan.new_images) == (1, 12, 12) and ws.round_tags() == [1]
    assert len(read_manifest_table(ws)) == 12 and len(read_resolved(ws)) == 12


def test_a_round_killed_after_its_scan_takes_the_new_images_up_on_the_retry(make_workspace, prefect_harness):
    """An attempt at round 2 fails in embed (a full disk), after its scan recorded the new images: the retry
    compares the disk with round 1 (not with the dead attempt's part), so round 2 has them all
    and its summary says how many are new."""
    import coldstart.tasks.embed as embed
    from coldstart.flows.round import labeling_round
    from coldstart.tasks.relabel import read_resolved

    ws = make_workspace("retry")
    write_digits(ws.images, n=10, size=32)
    labeling_round(workspace=str(ws.root))
    write_digits(ws.images / "new", n=5, size=40)  # another size: new content
    real = embed.embed

    def dies(*a, **k):
        raise OSError(28, "No space left on device")  # nothing after the scan is written

    embed.embed = dies
    try:
        with pytest.raises(Exception, match="space"):
            labeling_round(workspace=str(ws.root))
    finally:
        embed.embed = real
    assert ws.round_tags() == [1]
    rec = labeling_round(workspace=str(ws.root))
    assert not rec.nothing_new and ws.round_tags() == [1, 2]
    assert (rec.scan.images, rec.scan.new_images, rec.embed.embedded) == (15, 5, 5), rec.describe()
    assert len(read_resolved(ws)) == 15
