"""A whole real round (Prefect, MLflow, DVC) over the hostile image corpus: no crash, no hang,
every accepted file embedded and labeled (NFD names included), and later rounds unblocked."""

from __future__ import annotations

import unicodedata

import pytest

import coldstart
from coldstart.flows.round import labeling_round
from coldstart.tasks.manifest import read_manifest
from coldstart.tasks.store import EmbeddingStore
from coldstart.tasks.workspace import read_csv
from tests.conftest import write_image
from tests.corpus.make_images import make_image_corpus
from tests.tasks.test_corpus_images import check, deadline, outcomes

pytestmark = pytest.mark.slow


def test_rounds_over_the_corpus(prefect_harness, make_workspace):
    ws = make_workspace()
    expected = make_image_corpus(ws.images)
    with deadline(540):
        r1 = labeling_round(workspace=str(ws.root))
    check(expected, outcomes(ws))
    manifest = read_manifest(ws)
    ids = {m["image_id"] for m in manifest}
    assert r1.scan.quarantined == sum(v.startswith("quarantined") for v in expected.values())
    assert (r1.embed.embedded, r1.embed.failed) == (len(ids), 0)
    store = EmbeddingStore(ws.embeddings, r1.embed.model_id, ws.params().views.key("global"))
    assert set(store.ids()) == ids
    labels = coldstart.read_labels(ws.resolved)
    assert set(labels["image_id"]) == ids and labels["label"].notna().all()
    # NFD names (as macOS writes them) are embedded and labeled like any other, under their own id.
    nfd = [m["image_id"] for m in manifest if m["path"] != unicodedata.normalize("NFC", m["path"])]
    assert len(nfd) == 4 and labels.set_index("image_id").loc[nfd, "label"].notna().all()

    # Round 2: the bad files are still there (and one more image, one fixed file): nothing blocks.
    write_image(ws.images / "later" / "new.png", seed=5)
    (ws.images / "corrupt" / "zero-bytes.png").unlink()
    write_image(ws.images / "corrupt" / "zero-bytes.png", seed=6)
    with deadline(300):
        r2 = labeling_round(workspace=str(ws.root))
    assert r2.scan.quarantined == r1.scan.quarantined - 1 and r2.embed.embedded == 2
    assert {q["path"] for q in read_csv(ws.quarantine)} == \
        {p for p, v in expected.items() if v.startswith("quarantined")} - {"corrupt/zero-bytes.png"}
    assert len(coldstart.read_labels(ws.resolved)) == len(ids) + 2
    assert ws.round_tags() == [1, 2]  # FIFOs, sockets, loops and bad names never reach DVC or git


def test_round_with_non_utf8_names(prefect_harness, make_workspace):
    ws = make_workspace("ws-names")
    write_image(ws.images / "ok" / "a.png", seed=1)
    write_image(ws.images / "ok" / "b.png", seed=2)
    with open(bytes(ws.images / "ok") + b"/caf\xe9.png", "wb") as f:
        f.write(b"any bytes: the name alone quarantines it")
    with deadline(300):
        rec = labeling_round(workspace=str(ws.root))
    assert rec.scan.quarantined == 1 and rec.embed.embedded == 2
    assert "not valid UTF-8" in read_csv(ws.quarantine)[0]["reason"]
    assert ws.round_tags() == [1]  # git and DVC version the round around the bad name


def test_round_with_a_symlink_loop(prefect_harness, make_workspace):
    import os

    ws = make_workspace("ws-links")
    write_image(ws.images / "ok" / "a.png", seed=1)
    write_image(ws.images / "ok" / "b.png", seed=2)
    os.symlink("loop-b.png", ws.images / "ok" / "loop-a.png")
    os.symlink("loop-a.png", ws.images / "ok" / "loop-b.png")
    with deadline(300):
        rec = labeling_round(workspace=str(ws.root))
    assert rec.scan.quarantined == 2 and rec.embed.embedded == 2
    assert ws.round_tags() == [1]  # DVC does not follow the loop: the round is versioned
