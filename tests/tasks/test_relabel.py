"""The relabel stage on a hand-built workspace whose answer is known row by row."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from coldstart.models.errors import ConfigError
from coldstart.models.probe import LinearHead, ProbeFit
from coldstart.models.zeroshot import ZeroShotHead
from coldstart.tasks.calibrate import apply_temperature
from coldstart.tasks.config import parse_params
from coldstart.tasks.errors import WorkspaceError
from coldstart.tasks.labellog import LabelEvent
from coldstart.tasks.manifest import read_manifest, replace_manifest
from coldstart.tasks.relabel import RESOLVED_FIELDS, id_keys, load_probs, lookup, read_resolved, relabel
from coldstart.tasks.store import EmbeddingStore
from coldstart.tasks.train import TrainResult, save
from coldstart.tasks.workspace import Workspace, atomic_write_text

CLASSES = ["cat", "dog", "bird"]
MODEL = "m@random"


def _id(k: int) -> str:
    return f"{k:064x}"


@pytest.fixture
def ws(tmp_path):
    (tmp_path / "params.yaml").write_text("ontology:\n  classes: {cat: [a cat], dog: [a dog], bird: [a bird]}\n")
    ws = Workspace(tmp_path)
    # 6 stored images; image 5 was deleted since (not in the manifest); image 1 has two paths.
    rows = [(0, "a.jpg"), (1, "b.jpg"), (1, "copy/b.jpg"), (2, "c.jpg"), (3, "d.jpg"), (4, "e.jpg")]
    replace_manifest(ws, [dict(image_id=_id(k), path=p, width=1, height=1, size_bytes=1, mtime_ns=1, first_round=1)
                          for k, p in rows], 1)
    X = np.eye(6, 4, dtype=np.float32)[[0, 1, 2, 3, 0, 1]]  # images 4 and 5 look like images 0 and 1
    store = EmbeddingStore(ws.embeddings, MODEL)
    store.append([_id(k) for k in range(4)], X[:4])
    store.append([_id(4), _id(5)], X[4:])
    return ws


def _train(ws, weight, temperature=1.0, threshold=0.7):
    """A probe over the classes' rows of ``weight``, plus "unknown" (no answer of it: probability 0)."""
    weight = np.vstack([weight, np.zeros((1, weight.shape[1]), weight.dtype)])
    bias = np.zeros(len(weight), np.float32)
    bias[-1] = -np.inf
    head = LinearHead(weight.astype(np.float32), bias)
    fit = ProbeFit(head, "probe", 0.8, np.zeros((0, len(weight))), {})
    result = TrainResult(3, "probe", "test", 0.8, None, 0.5, None, probe=fit, temperature=temperature,
                         threshold=threshold)
    save(ws, result, ZeroShotHead(head.weight[:3], np.arange(3), 4, 1.0), MODEL)
    return head


def _label(ws, events):
    atomic_write_text(ws.events, "".join(json.dumps(LabelEvent(i, lab, "t", "f.csv", "0" * 64, 2, "", 1).__dict__)
                                         + "\n" for i, lab in events))


def test_every_current_image_once_human_labels_win(ws):
    W = np.array([[5, 0, 0, 0], [0, 5, 0, 0], [0, 0, 5, 0]], np.float32)
    head = _train(ws, W, temperature=2.0, threshold=0.5)
    _label(ws, [(_id(2), "dog")])
    params = parse_params({"ontology": {"classes": {c: [f"a {c}"] for c in CLASSES}}})
    result = relabel(ws, params, 3)
    rows = {r["image_id"]: r for r in read_resolved(ws)}
    assert list(read_resolved(ws)[0]) == RESOLVED_FIELDS
    assert set(rows) == {_id(k) for k in range(5)}  # image 5 left the manifest
    assert rows[_id(1)]["path"] == "b.jpg"  # the first of its paths
    assert rows[_id(2)] == dict(image_id=_id(2), path="c.jpg", label="dog", confidence=1.0, source="human",
                                model_id="", round=3, location="")
    labeler = json.loads((ws.model_dir / "chosen.json").read_text())["labeler_id"]
    assert labeler.startswith("m@random+probe-") and len(labeler) == len("m@random+probe-") + 10
    expected = apply_temperature(head.predict_proba(np.eye(6, 4, dtype=np.float32)[[0, 1, 3, 0]]), 2.0)
    for k, p in zip((0, 1, 3, 4), expected):
        r = rows[_id(k)]
        assert (r["label"], r["source"], r["model_id"], r["round"]) == \
            (CLASSES[p.argmax()], "probe", labeler, 3)
        assert r["confidence"] == pytest.approx(p.max(), rel=1e-6)
    assert (result.images, result.human, result.auto, result.churn) == (5, 1, 4, None)
    assert result.per_class == {"cat": 3, "dog": 2}  # image 3 scores a tie: the first label
    assert result.below_threshold == int((expected.max(1) < 0.5).sum())
    # The table keeps the head's probabilities for every image, the human-labeled one too.
    ids, probs, classes, store = load_probs(ws)
    assert ids == [_id(k) for k in range(5)] and classes == [*CLASSES, "unknown"] and store == (MODEL, "global")
    np.testing.assert_allclose(probs[[0, 1, 3, 4]], expected, rtol=1e-6, atol=1e-6)  # unknown: 0, not ~1e-6

    # Next round: a person relabels image 0; one of the 5 labels changed.
    _label(ws, [(_id(2), "dog"), (_id(0), "bird")])
    again = relabel(ws, params, 4)
    assert again.churn == pytest.approx(1 / 5) and again.human == 2
    # Each row keeps the round its label was set in: only image 0's changed.
    assert [r["round"] for r in read_resolved(ws)] == [4, 3, 3, 3, 3]
    # ... and round 4 stored that row alone.
    assert pq.read_table(ws.resolved / "000004.parquet")["image_id"].to_pylist() == [_id(0)]
    # A round that changes nothing stores nothing (so DVC stores nothing new).
    files = sorted(p.name for p in ws.resolved.iterdir())
    assert relabel(ws, params, 5).churn == 0.0
    assert sorted(p.name for p in ws.resolved.iterdir()) == files == ["000003.base.parquet", "000004.parquet"]
    # Images came and went (image 4 deleted, image 5 back): churn over the images in both tables.
    replace_manifest(ws, [{**r, "image_id": _id(5) if r["image_id"] == _id(4) else r["image_id"]}
                          for r in read_manifest(ws)], 5)
    _label(ws, [(_id(2), "cat"), (_id(0), "bird")])
    third = relabel(ws, params, 6)
    assert {r["image_id"] for r in read_resolved(ws)} == {_id(k) for k in (0, 1, 2, 3, 5)}
    assert third.churn == pytest.approx(1 / 4)  # of 0-3 (in both), image 2 changed
    # Image 2's new label, image 5, and image 4 gone: 3 of 5 rows, so round 6 wrote a new base.
    assert sorted(p.name for p in ws.resolved.iterdir()) == ["000003.base.parquet", "000004.parquet",
                                                             "000006.base.parquet"]
    ids, probs, _, _ = load_probs(ws)
    assert ids == sorted(_id(k) for k in (0, 1, 2, 3, 5)) and probs.shape == (5, 4)  # 3 classes + unknown


def test_a_relabel_run_again_in_its_round_replaces_its_own_part(ws):
    """A round killed after relabel and run again: the part is recomputed against the rounds
    before it, and the view is that of one run."""
    _train(ws, np.eye(3, 4, dtype=np.float32))
    params = parse_params({"ontology": {"classes": {c: [f"a {c}"] for c in CLASSES}}})
    relabel(ws, params, 1)
    replace_manifest(ws, [r for r in read_manifest(ws) if r["image_id"] != _id(4)], 2)  # image 4 removed
    relabel(ws, params, 2)
    once = read_resolved(ws)
    relabel(ws, params, 2)
    assert read_resolved(ws) == once and _id(4) not in {r["image_id"] for r in once}
    assert sorted(p.name for p in ws.resolved.iterdir()) == ["000001.base.parquet", "000002.parquet"]
    assert load_probs(ws)[0] == [r["image_id"] for r in once]


def test_relabel_needs_a_trained_head_of_this_ontology(ws):
    params = parse_params({"ontology": {"classes": {c: [f"a {c}"] for c in CLASSES}}})
    with pytest.raises(WorkspaceError, match="run the train stage first"):
        relabel(ws, params, 1)
    _train(ws, np.eye(2, 4, dtype=np.float32))  # trained for two labels
    with pytest.raises(ConfigError, match="labels changed since the head was trained"):
        relabel(ws, params, 1)


def test_lookup_is_exact_even_when_64_bit_keys_collide():
    a, b = "ab" * 8 + "0" * 48, "ab" * 8 + "f" * 48  # same first 16 hex digits, different ids
    of = np.array([a, _id(7), a], "S64")
    assert id_keys(np.array([a, b], "S64"))[0] == id_keys(np.array([a, b], "S64"))[1]
    np.testing.assert_array_equal(lookup(of, np.array([_id(7), a, b], "S64")), [1, 0, -1])
    np.testing.assert_array_equal(lookup(of, np.array([a, _id(9)], "S64")), [0, -1])
