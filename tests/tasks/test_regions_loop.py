"""Regions in the loop: labels from probabilities and people's answers, containment as a mark,
the SAM embedding cache, and which regions are offered for review."""

import math

import numpy as np
import pytest

from coldstart.tasks.config import RegionsConfig
from coldstart.tasks.regions import assign_labels, candidate, mark_contained
from coldstart.tasks.regiontable import Region, read_regions, regions_dir, write_regions
from coldstart.tasks.samcache import SamEmbeddingCache
from tests.tasks.test_regions import CLASSES, NEGATIVES, sam_mask, scene


def _candidates(image_id: str = "img-a") -> list[Region]:
    _, masks = scene()
    return [candidate(image_id, "a.png", m) for m in masks]


def test_labels_come_with_their_margin_and_peoples_answers_win():
    regions = _candidates()
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.45, 0.45], [0.1, 0.1, 0.8]])
    square, disc, corner = regions
    out = assign_labels(regions, probs, CLASSES, negatives=NEGATIVES, labeler="probe-1",
                        answers={corner.region_id: ("red thing", "ann")})
    assert [r.region_id for r in out] == [r.region_id for r in regions]  # same regions, same order
    assert (out[0].label, out[0].labeler, out[0].dropped) == ("red thing", "probe-1", "")
    assert out[0].confidence == pytest.approx(0.7) and out[0].margin == pytest.approx(0.5)
    assert out[1].margin == pytest.approx(0.0)  # a tie: the least certain region there is
    # The model called the corner background; a person said otherwise, and the person wins.
    assert (out[2].label, out[2].confidence, out[2].labeler, out[2].dropped) == ("red thing", 1.0, "human:ann", "")
    without = assign_labels(regions, probs, CLASSES, negatives=NEGATIVES, labeler="probe-1")
    assert (without[2].label, without[2].dropped) == ("background", "negative_label")
    assert out[0].rle == square.rle and out[1].bbox == disc.bbox  # geometry untouched
    with pytest.raises(ValueError, match="2 classes"):
        assign_labels(regions, probs, CLASSES[:2])


def test_containment_is_a_mark_that_a_new_label_can_lift():
    img_mask = np.zeros((96, 128), bool)
    img_mask[10:60, 10:80] = True
    inner = np.zeros((96, 128), bool)
    inner[20:40, 20:40] = True
    big, small = candidate("a", "a.png", sam_mask(img_mask, 0.95)), candidate("a", "a.png", sam_mask(inner, 0.9))
    same = assign_labels([big, small], np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1]]), CLASSES, labeler="m")
    marked, n = mark_contained(same, RegionsConfig())
    assert n == 1 and [r.dropped for r in marked] == ["", "contained"]
    # Next round the inner one is labeled otherwise: it is an object of its own again.
    other = assign_labels(marked, np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]]), CLASSES, labeler="m2")
    marked, n = mark_contained(other, RegionsConfig())
    assert n == 0 and [r.dropped for r in marked] == ["", ""]
    # A person's outline outranks SAM's better-scored one of the same label.
    human = assign_labels([big, small], np.array([[0.9, 0.05, 0.05]] * 2), CLASSES, labeler="m",
                          answers={small.region_id: ("red thing", "ann")})
    assert [r.dropped for r in mark_contained(human, RegionsConfig(containment_thresh=0.5))[0]] == ["", ""]
    # Background regions take no part (and stay marked as background).
    bg = assign_labels([big, small], np.array([[0.1, 0.1, 0.8], [0.9, 0.05, 0.05]]), CLASSES, negatives=NEGATIVES)
    assert [r.dropped for r in mark_contained(bg, RegionsConfig())[0]] == ["negative_label", ""]


class _Sam:
    model_id = "vit_t@test"


def test_the_sam_cache_skips_the_encoder_and_stays_within_its_bound(tmp_path, monkeypatch):
    import coldstart.models.masks as masks

    calls = []

    def fake_embedding(sam, rgb):
        calls.append(rgb.shape)
        return masks.ImageEmbedding(np.full((256, 64, 64), len(calls), np.float32), tuple(rgb.shape[:2]),
                                    (1024, 768), sam.model_id)

    monkeypatch.setattr(masks, "image_embedding", fake_embedding)
    cache = SamEmbeddingCache(tmp_path, _Sam.model_id, max_gb=9 * 2**20 / 2**30)  # 9 MiB: room for 2 files of 4 MiB
    a, b = np.zeros((30, 40, 3), np.uint8), np.zeros((50, 40, 3), np.uint8)
    first = cache.get(_Sam(), "a", a)
    again = cache.get(_Sam(), "a", a)
    assert len(calls) == 1 and np.array_equal(first.features, again.features)  # float32, exactly as computed
    assert again.original_size == (30, 40) and again.model_id == _Sam.model_id
    cache.get(_Sam(), "a", b)  # another size under the same id: not this image's embedding, computed anew
    assert len(calls) == 2
    cache.get(_Sam(), "b", b)
    cache.get(_Sam(), "c", b)
    files = sorted(p.stem for p in cache.dir.glob("*.npz"))
    assert len(files) == 2 and "c" in files  # the least recently used went first
    (cache.dir / "c.npz").write_bytes(b"torn")  # a torn file is computed again, not an error
    n = len(calls)
    cache.get(_Sam(), "c", b)
    assert len(calls) == n + 1
    off = SamEmbeddingCache(None, _Sam.model_id)
    off.get(_Sam(), "a", a)
    off.get(_Sam(), "a", a)
    assert len(calls) == n + 3  # no cache: every call encodes


def test_the_least_certain_regions_not_yet_asked_are_offered(make_workspace):
    import datetime

    from coldstart.tasks.labellog import LabelEvent, append_events
    from coldstart.tasks.select import REGION_REVIEW_FIELDS, select_regions
    from coldstart.tasks.workspace import write_csv

    ws = make_workspace()
    regions = _candidates("img-a") + _candidates("img-b")
    probs = np.array([[0.5, 0.4, 0.1], [0.9, 0.05, 0.05], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1], [0.34, 0.33, 0.33],
                      [0.2, 0.1, 0.7]])
    labeled = assign_labels(regions, probs, CLASSES, negatives=NEGATIVES, labeler="m")
    labeled[1] = Region(**{**labeled[1].to_dict(), "dropped": "contained", "margin": 0.0})
    write_regions(regions_dir(ws), 1, labeled)
    margins = {r.region_id: r.margin for r in labeled}
    picked = select_regions(ws, 3, 2)
    # By margin: img-b's square (0.01), img-a's corner (0.1, background counts), img-a's square (0.1);
    # never the contained one, whatever its margin.
    assert [margins[r.region_id] for r in picked] == sorted(margins[r.region_id] for r in picked)
    assert labeled[1].region_id not in {r.region_id for r in picked}
    assert picked[0].region_id == labeled[4].region_id
    # Asked in round 2 and not answered: not asked again in round 3. Answered: not asked either.
    write_csv(ws.review / "round-002.regions.csv", REGION_REVIEW_FIELDS,
              [dict(region_id=picked[0].region_id)] + [dict(region_id=picked[1].region_id)])
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    append_events(ws, [LabelEvent(picked[1].image_id, "blue thing", "ann", "x.csv", "0" * 64, 2, now, 2,
                                   region_id=picked[1].region_id)])
    later = select_regions(ws, 10, 3)
    ids = {r.region_id for r in later}
    assert picked[0].region_id not in ids and picked[1].region_id not in ids
    assert len(later) == 6 - 1 - 2  # every other region, the contained one aside
    assert select_regions(ws, 0, 3) == []
    assert all(not math.isnan(r.margin) for r in read_regions(regions_dir(ws), dropped=True))


def test_adopting_a_region_proposal_asks_its_unknown_regions_again_first(make_workspace):
    import datetime

    from coldstart.tasks.adopt import adopt
    from coldstart.tasks.discover import Proposal, write_proposals
    from coldstart.tasks.labellog import LabelEvent, append_events
    from coldstart.tasks.select import select_regions

    ws = make_workspace()
    labeled = assign_labels(_candidates(), np.full((3, 3), 1 / 3), CLASSES, negatives=NEGATIVES, labeler="m")
    write_regions(regions_dir(ws), 1, labeled)
    odd = labeled[2]
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    append_events(ws, [LabelEvent(odd.image_id, "unknown", "ann", "x.csv", "0" * 64, 2, now, 1, region_id=odd.region_id)])
    assert odd.region_id not in {r.region_id for r in select_regions(ws, 10, 2)}  # answered: not asked
    write_proposals(ws, 2, 3, [Proposal(1, 3, 0.6, None, None, 1, 0, [r.region_id for r in labeled], kind="regions")])
    done = adopt(ws, 1, "bird", ["a small bird"])
    assert (done.new_class, done.reasked) == (True, 1) and "bird" in ws.params().ontology.classes
    first = select_regions(ws, 10, 3)[0]
    assert (first.region_id, first.label) == (odd.region_id, "bird")  # first, the adopted class suggested
    # Answered again (whatever the answer): it trains again and is not asked a third time.
    append_events(ws, [LabelEvent(odd.image_id, "bird", "ann", "y.csv", "1" * 64, 2, now, 3, region_id=odd.region_id)])
    assert odd.region_id not in {r.region_id for r in select_regions(ws, 10, 4)}
