"""'None of these' as an answer, proposals from clusters, and ontology edits that lose no answer."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from coldstart.models.errors import ConfigError
from coldstart.tasks.config import DiscoverConfig, parse_params
from coldstart.tasks.discover import centre_of, propose, reask_limit
from coldstart.tasks.labelstudio import label_config, parse_export
from coldstart.tasks.ontology import map_answers, orphan_note, unknown_answer

CFG = DiscoverConfig()


def _blob(rng, centre, n, spread=0.35):
    return centre + spread * rng.standard_normal((n, len(centre)))


def _centres(rng, k, dim=32):
    return [rng.standard_normal(dim) * 3 for _ in range(k)]


@pytest.mark.parametrize("cell, stored", [
    ("unknown", "unknown"), ("?", "unknown"), ("None of these", "unknown"), (" NONE ", "unknown"),
    ("new:scratch", "new:scratch"), ("new: dent ", "new:dent"), ("New:Crack", "new:Crack"),
    ("new:", None), ("cat", None), ("unknowns", None)])
def test_none_of_these_answers_are_read_as_written(cell, stored):
    assert unknown_answer(cell) == stored


def test_a_class_may_not_take_a_reserved_answer_as_its_name():
    for name in ("unknown", "?", "None of these", "new:dent"):
        with pytest.raises(ConfigError, match="reserved for the answer 'none of these'"):
            parse_params({"ontology": {"classes": {"cat": ["a cat"], name: ["x"]}}})
    onto = parse_params({"ontology": {"classes": {"cat": ["a cat"], "dog": ["a dog"]}}}).ontology
    assert onto.labels == ["cat", "dog", "unknown"]


def test_answers_map_onto_todays_labels_and_none_is_dropped():
    raw = {"a": "cat", "b": "unknown", "c": "new:fox", "d": "new:dog", "e": "bird", "f": "unknown"}
    got = map_answers(raw, ["cat", "dog", "unknown"], pending={"f"})
    # new:dog counts as dog (the class exists now); bird (removed) counts as unknown, listed;
    # f waits to be asked again, so it trains nothing meanwhile.
    assert got.labels == {"a": "cat", "b": "unknown", "c": "unknown", "d": "dog", "e": "unknown"}
    assert got.orphaned == Counter({"bird": 1}) and got.proposed == Counter({"fox": 1})
    assert "'bird' (1 images)" in orphan_note(got.orphaned) and orphan_note(Counter()) == ""


def test_two_unnamed_kinds_are_proposed_and_a_part_of_a_class_is_not():
    rng = np.random.default_rng(0)
    cat, dog, new_a, new_b = _centres(rng, 4)
    X = np.vstack([_blob(rng, new_a, 30), _blob(rng, new_b, 20), _blob(rng, cat, 15)])  # the last: unsure cats
    ids = [f"i{k}" for k in range(len(X))]
    answered = np.zeros(len(X), bool)
    answered[[0, 1, 2, 30, 31]] = True
    predicted = np.zeros(len(X), bool)
    predicted[3:30] = True
    centres = {"cat": centre_of(_blob(rng, cat, 10)), "dog": centre_of(_blob(rng, dog, 10))}
    found = propose(X, ids, answered, predicted, centres, CFG)
    assert [p.id for p in found] == [1, 2]
    first, second = found
    assert set(first.members) == set(ids[:30]) and set(second.members) == set(ids[30:50])
    assert (first.unknown_answers, first.predicted_unknown, second.unknown_answers) == (3, 27, 2)
    assert first.cohesion > 0.8 and first.nearest_class in ("cat", "dog")
    # The most typical member comes first: the closest to the cluster's centre.
    U = X[:30] / np.linalg.norm(X[:30], axis=1, keepdims=True)
    c = U.mean(0) / np.linalg.norm(U.mean(0))
    assert first.members[0] == ids[int(np.argmax(U @ c))]


def test_small_or_loose_clusters_are_not_proposed_and_the_count_is_capped():
    rng = np.random.default_rng(1)
    few = _blob(rng, _centres(rng, 1)[0], CFG.min_size - 1)
    assert propose(few, [str(k) for k in range(len(few))], np.ones(len(few), bool), np.zeros(len(few), bool), {},
                   CFG) == []
    noise = rng.standard_normal((60, 32))  # no structure: one loose cluster, cohesion ~0.15
    assert propose(noise, [str(k) for k in range(60)], np.ones(60, bool), np.zeros(60, bool), {}, CFG) == []
    many = np.vstack([_blob(rng, c, 12) for c in _centres(rng, 7)])
    found = propose(many, [str(k) for k in range(len(many))], np.ones(len(many), bool), np.zeros(len(many), bool),
                    {}, DiscoverConfig(max_proposals=3))
    assert len(found) == 3 and all(p.size == 12 for p in found)


def test_label_studio_offers_none_of_these_and_reads_it_back():
    xml = label_config(["cat", "dog"])
    assert '<Choice value="unknown" hint="None of these' in xml and xml.index('"dog"') < xml.index('"unknown"')
    assert xml.count('value="unknown"') == 1 and label_config(["cat", "dog", "unknown"]) == xml
    export = ('[{"id": 1, "data": {"image": "/data/local-files/?d=images/a.png"}, "annotations": [{"id": 5, '
              '"completed_by": 1, "result": [{"from_name": "label", "to_name": "image", "type": "choices", '
              '"value": {"choices": ["unknown"]}}]}]}]')
    rows, problems = parse_export(export, "export.json")
    assert not problems and rows[0][1]["label"] == "unknown"


def test_a_batch_never_spends_more_than_half_on_reasks():
    assert reask_limit(50) == 25 and reask_limit(1) == 0


def test_proposals_are_named_from_a_vocabulary_by_the_model_s_text_tower(tiny_clip, tmp_path):
    from types import SimpleNamespace

    from coldstart.tasks.discover import Proposal, suggest_names, vocabulary
    from coldstart.tasks.store import cached_text_head

    (tmp_path / "words.txt").write_text("# defects\nscratch\ndent\n\nrust\ndent\n", encoding="utf-8")
    words = vocabulary(DiscoverConfig(vocabulary="words.txt"), "open_clip", tmp_path)
    assert words == ["scratch", "dent", "rust"]
    imagenet = vocabulary(CFG, "open_clip", tmp_path)  # 1,000 classes, 998 distinct names
    assert len(imagenet) == 998 and "goldfish" in imagenet
    assert "金鱼" in vocabulary(CFG, "cn_clip", tmp_path)
    with pytest.raises(ConfigError, match="discover.vocabulary"):
        vocabulary(DiscoverConfig(vocabulary="missing.txt"), "open_clip", tmp_path)
    templates = ["a photo of {}."]
    ws = SimpleNamespace(text_cache=tmp_path / "cache")
    weights, _, _ = cached_text_head(ws.text_cache, tiny_clip, [[t.format(w) for t in templates] for w in words])
    found = [Proposal(k + 1, 10, 0.5, None, None, 0, 0, []) for k in range(3)]
    suggest_names(found, weights[[2, 0, 1]], words, tiny_clip, ws, templates)
    assert [p.names[0][0] for p in found] == ["rust", "scratch", "dent"]
    assert all(len(p.names) == 3 and p.names[0][1] == pytest.approx(1.0, abs=1e-4) for p in found)
    found[0].proposed_names = {"corrosion": 2}
    assert found[0].suggested == "corrosion" and found[1].suggested == "scratch"


def test_a_config_that_only_adds_choices_is_safe_to_push():
    from coldstart.flows.wait import only_adds_choices

    old, new = label_config(["cat", "dog"]), label_config(["cat", "dog", "fox"])
    before_unknown = old.replace(old[old.index('    <Choice value="unknown"'):old.index("  </Choices>")], "")
    assert only_adds_choices(old, new) and only_adds_choices(before_unknown, old)
    assert not only_adds_choices(new, old)  # a class removed: answers may not fit
    assert not only_adds_choices(old, old)  # nothing to add
    assert not only_adds_choices("<View><Text name='t' value='$x'/></View>", new)  # someone else's config
    assert not only_adds_choices("not xml", new)
    assert not only_adds_choices(label_config(["cat"]), label_config(["cat"], polygons=["cat"]))  # a control added
