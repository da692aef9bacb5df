import numpy as np
import open_clip
import pytest
import yaml
from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

from coldstart.models.zeroshot import (
    ZeroShotHead,
    confusable_pairs,
    english_only_tokenizer,
    prompt_warnings,
    text_weights,
    to_labels,
)
from coldstart.tasks.config import parse_params
from coldstart.tasks.store import cached_text_weights

ROOT_PARAMS = yaml.safe_load(open(__file__.rsplit("/tests/", 1)[0] + "/params.yaml"))


def _onto(ontology: dict):
    raw = dict(ROOT_PARAMS)
    raw["ontology"] = ontology
    return parse_params(raw).ontology


def test_config_path_equals_open_clip_reference_with_a_template_set(tiny_clip):
    names = ["goldfish", "tabby cat", "fire truck", "espresso"]
    onto = _onto({"templates": "simple7", "classes": {n: [n] for n in names}})
    ours = text_weights(tiny_clip, onto.prompts())
    ref = open_clip.build_zero_shot_classifier(tiny_clip.model, tiny_clip.tokenizer, names, SIMPLE_IMAGENET_TEMPLATES,
                                               num_classes_per_batch=2, device="cpu", use_tqdm=False)
    assert ours.shape == (4, tiny_clip.embed_dim) and ours.dtype == np.float32
    assert np.abs(ours - ref.T.numpy()).max() <= 1e-5


def test_negative_classes_sum_into_one_label():
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]], np.float32)
    out = to_labels(probs, np.array([0, 1, 2, 2]), 3)
    np.testing.assert_allclose(out, [[0.1, 0.2, 0.7], [0.7, 0.1, 0.2]], rtol=1e-6)
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 8)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    head = ZeroShotHead(w, np.array([0, 1, 2, 2]), 3, 50.0)
    X = w[[3]]  # an image that looks exactly like the 2nd negative class
    assert head.predict_proba(X).argmax(1).tolist() == [2]
    np.testing.assert_allclose(head.predict_proba(X).sum(1), 1.0, rtol=1e-5)


def test_confusable_pairs_are_reported():
    w = np.array([[1, 0, 0], [0.999, 0.0447, 0], [0, 1, 0]], np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    pairs = confusable_pairs(w, ["scratch", "crack", "stain"], 0.95)
    assert [(a, b) for a, b, _ in pairs] == [("scratch", "crack")] and pairs[0][2] > 0.99


def test_chinese_prompts_with_english_tokenizer_warn_and_name_the_fix(tiny_clip):
    onto = _onto({"templates": ["工业产品照片，显示{}"], "classes": {"划痕": ["金属表面的划痕"], "ok": ["a flawless part"]}})
    weights = text_weights(tiny_clip, onto.prompts())
    english = english_only_tokenizer(tiny_clip)
    assert english  # the tiny model uses open_clip's default (English-only) tokenizer
    warnings = prompt_warnings(tiny_clip.model_id, english, onto.scoring_classes, onto.prompts(), weights,
                               threshold=1.0)
    assert len(warnings) == 2 and "'划痕'" in warnings[0]
    assert "English-only" in warnings[0] and "xlm-roberta-base-ViT-B-32" in warnings[0]
    latin = _onto({"classes": {"rayure": ["une rayure fine"], "ok": ["pièce parfaite"]}})
    assert prompt_warnings(tiny_clip.model_id, english, latin.scoring_classes, latin.prompts(),
                           text_weights(tiny_clip, latin.prompts()), threshold=1.0) == []
    # The tokenizer round-trips the Chinese text (byte-level BPE), so nothing is garbled on the way.
    tokens = tiny_clip.tokenizer(["金属表面的划痕"])[0]
    assert "金属表面的划痕" in tiny_clip.tokenizer.decode(tokens[tokens > 0].tolist())


def test_text_weights_cached_per_model_and_prompts(tiny_clip, tmp_path, monkeypatch):
    prompts = [["a photo of a cat."], ["a photo of a dog.", "a dog"]]
    first = cached_text_weights(tmp_path, tiny_clip, prompts)
    calls = []
    monkeypatch.setattr(tiny_clip, "encode_text", lambda *a, **k: calls.append(a) or pytest.fail("re-encoded"))
    np.testing.assert_array_equal(cached_text_weights(tmp_path, tiny_clip, prompts), first)
    assert calls == []
    monkeypatch.undo()
    changed = cached_text_weights(tmp_path, tiny_clip, [["a photo of a cat."], ["a photo of a wolf."]])
    assert not np.allclose(changed, first) and len(list(tmp_path.rglob("*.npz"))) == 2
    # A hit needs nothing of the model but its id: a round with cached prompts never builds it.
    from coldstart.models.clip import LazyClip
    from coldstart.tasks.store import cached_text_head
    from tests.conftest import TINY

    lazy = LazyClip(TINY)
    weights, scale, english = cached_text_head(tmp_path, lazy, prompts)
    assert lazy._model is None and english and scale == pytest.approx(tiny_clip.logit_scale)
    np.testing.assert_array_equal(weights, first)
