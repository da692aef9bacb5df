"""What `coldstart api` serves: the workspace's labeler on any image, batched across callers,
with the relabel stage's multi-scale aggregation, and defects outlined on demand."""

import threading

import numpy as np
import pytest
from PIL import Image

from coldstart.tasks.inference import Batcher, Labeler, Outliner, Prediction


def _img(seed: int, size=(48, 64)) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8))


def test_batched_predictions_equal_one_by_one_and_callers_share_passes(make_workspace):
    ws = make_workspace()
    labeler = Labeler(ws)
    assert labeler.model_version == "round-000/coldstart-tiny@random-seed0+zero-shot"  # no round yet
    items = [labeler.prepare(_img(k), data=bytes([k])) for k in range(6)]
    together = labeler.predict(items)
    alone = [labeler.predict([v])[0] for v in items]
    for a, b in zip(together, alone):
        assert a.label == b.label and a.confidence == pytest.approx(b.confidence, abs=1e-5)
        assert a.label in labeler.classes and list(a.probs)[0] == a.label and len(a.probs) == 5
    batcher = Batcher(labeler, max_images=32, max_wait_ms=50)
    results = [None] * 6

    def call(k):
        results[k] = batcher.submit(items[k]).result()

    threads = [threading.Thread(target=call, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.label for r in results] == [r.label for r in together]
    assert batcher.batches < 6  # callers that came together shared a forward pass
    batcher.close()


def test_tiles_give_the_label_its_location(make_workspace):
    ws = make_workspace()
    text = ws.params_file.read_text().replace("  tiles: []", "  tiles:\n    - {size: 0.5, stride: 0.5}")
    ws.params_file.write_text(text)
    labeler = Labeler(ws)
    [pred] = labeler.predict([labeler.prepare(_img(1, (60, 80)), data=b"x")])
    views = labeler.prepare(_img(1, (60, 80)))
    assert len(views.pixels) == 1 + len(views.boxes) == 7  # the image and its 3 x 2 tiles of 30 px
    if pred.location:  # the winning view was a tile: its box, in the image's pixels
        x0, y0, x1, y1 = (int(v) for v in pred.location.split())
        assert 0 <= x0 < x1 <= 80 and 0 <= y0 < y1 <= 60 and (x1 - x0, y1 - y0) == (30, 30)


def test_a_defect_is_outlined_inside_its_tile(make_workspace, monkeypatch):
    import coldstart.models.masks as masks
    import coldstart.models.sam as sam

    ws = make_workspace()
    ws.params_file.write_text(ws.params_file.read_text() + "regions:\n  enabled: true\n")
    outliner = Outliner(ws, ws.params())
    monkeypatch.setattr(sam, "load_sam", lambda cfg: object())
    monkeypatch.setattr(masks, "image_embedding", lambda s, rgb: None)

    def box_mask(s, emb, box, size):  # a stand-in SAM: the tile, less a margin
        m = np.zeros(size, bool)
        x0, y0, x1, y1 = (int(v) for v in box)
        m[y0 + 2 : y1 - 2, x0 + 3 : x1 - 3] = True
        return m

    monkeypatch.setattr(masks, "segment_box", box_mask)
    rgb = np.zeros((60, 80, 3), np.uint8)
    pred = Prediction("x", "three", 0.8, {"three": 0.8}, "40 0 80 30")
    [region] = outliner.outline(pred, rgb)
    assert region["bbox"] == [43, 2, 34, 26] and region["area"] == 34 * 26 and region["label"] == "three"
    assert region["segmentation"]["size"] == [60, 80]
    assert outliner.outline(Prediction("x", "three", 0.8, {}, ""), rgb) == []  # no tile: nothing to prompt


def test_a_head_fitted_at_another_precision_is_not_applied(make_workspace, monkeypatch, caplog):
    """model.precision auto can resolve differently where the service runs: the trained head's
    model id then differs from the service's, and it answers with zero-shot, saying why."""
    from coldstart.tasks import inference
    from coldstart.tasks.heads import ChosenHead

    ws = make_workspace()
    labeler = Labeler(ws)
    other = labeler.clip.model_id + ":int8"
    fitted = ChosenHead(head=None, model="probe", model_id=other, labeler_id=f"{other}+probe", temperature=1.0,
                        threshold=0.7)
    monkeypatch.setattr(inference, "load_chosen", lambda ws: fitted)
    labeler._stamp = None  # as after a round: read data/models/ again
    with caplog.at_level("WARNING", logger="coldstart.tasks.inference"):
        labeler.refresh()
    assert labeler.labeler_id.endswith("+zero-shot")
    assert f"fitted on {other}'s embeddings" in caplog.text and "pin model.precision" in caplog.text
