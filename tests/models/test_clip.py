import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import open_clip
import pytest
import torch

from coldstart.models.clip import ClipConfig, load_clip, model_id_for
from coldstart.models.errors import ConfigError, WeightsUnavailableError
from coldstart.models.zeroshot import class_text_weights, zero_shot_probs
from tests.conftest import TINY


def test_tiny_model_encodes_unit_vectors(tiny_clip):
    pixels = torch.rand(3, 3, tiny_clip.image_size, tiny_clip.image_size)
    emb = tiny_clip.encode_images(pixels)
    assert emb.shape == (3, tiny_clip.embed_dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    txt = tiny_clip.encode_text(["a photo of a cat", "一张猫的照片"])
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)


def test_random_weights_are_the_same_in_every_load(tiny_clip):
    from coldstart.models.clip import _load_clip_cached

    fresh = _load_clip_cached.__wrapped__(TINY)
    x = torch.rand(2, 3, 64, 64)
    np.testing.assert_allclose(fresh.encode_images(x), tiny_clip.encode_images(x), atol=1e-6)
    assert fresh.model_id == tiny_clip.model_id == "coldstart-tiny@random-seed0"


def test_class_weights_equal_open_clip_reference(tiny_clip):
    classes = {"cat": ["cat"], "dog": ["dog"], "car": ["car"]}
    templates = ["a photo of a {}.", "a blurry photo of a {}."]
    ours = class_text_weights(tiny_clip, classes, templates)
    ref = open_clip.build_zero_shot_classifier(tiny_clip.model, tiny_clip.tokenizer, list(classes),
                                               [lambda c, t=t: t.format(c) for t in templates],
                                               num_classes_per_batch=None, device="cpu", use_tqdm=False)
    assert np.abs(ours - ref.T.numpy()).max() <= 1e-5


def test_zero_shot_probabilities_rows_sum_to_one():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(5, 8)).astype(np.float32)
    w = rng.normal(size=(3, 8)).astype(np.float32)
    p = zero_shot_probs(e, w, 100.0)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    assert (p.argmax(1) == (e @ w.T).argmax(1)).all()


def test_local_checkpoint_path_is_loaded(tiny_clip, tmp_path):
    torch.manual_seed(123)
    other, _, _ = open_clip.create_model_and_transforms("coldstart-tiny", pretrained=None)
    ckpt = tmp_path / "tiny.pt"
    torch.save(other.state_dict(), ckpt)
    loaded = load_clip(ClipConfig("coldstart-tiny", str(ckpt), "cpu", "fp32"))
    assert loaded.model_id.startswith("coldstart-tiny@file-") and loaded.model_id == model_id_for(
        ClipConfig("coldstart-tiny", str(ckpt), precision="fp32"))
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(other.eval().encode_image(x), dim=-1).numpy()
    np.testing.assert_allclose(loaded.encode_images(x), expected, atol=1e-5)
    assert not np.allclose(tiny_clip.encode_images(x), expected, atol=1e-3)


def test_local_dir_as_documented_is_loaded(tiny_clip, tmp_path):
    """model.pretrained: local-dir:/folder (open_clip_config.json + a checkpoint), as docs/configuration.md
    documents; open_clip itself takes the folder as the model name."""
    import json

    from safetensors.torch import save_file

    torch.manual_seed(321)
    other, _, _ = open_clip.create_model_and_transforms("coldstart-tiny", pretrained=None)
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": open_clip.get_model_config("coldstart-tiny")}))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, folder / "open_clip_model.safetensors")
    cfg = ClipConfig("coldstart-tiny", f"local-dir:{folder}", "cpu", "fp32")
    loaded = load_clip(cfg)
    assert loaded.model_id.startswith("coldstart-tiny@dir-") and loaded.model_id == model_id_for(cfg)
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(other.eval().encode_image(x), dim=-1).numpy()
    np.testing.assert_allclose(loaded.encode_images(x), expected, atol=1e-5)
    assert loaded.tokenizer(["a photo"]).shape[-1] == open_clip.get_model_config("coldstart-tiny")["text_cfg"][
        "context_length"]


def test_missing_weights_fail_with_instructions(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        load_clip(ClipConfig("coldstart-tiny", str(tmp_path / "nope.safetensors"), "cpu", "fp32"))
    with pytest.raises(ConfigError, match="not a pretrained tag"):
        load_clip(ClipConfig("ViT-B-32", "no_such_tag", "cpu"))
    with pytest.raises(ConfigError, match="unknown open_clip architecture"):
        load_clip(ClipConfig("ViT-Nope", None, "cpu"))


@pytest.mark.slow
def test_hub_tag_offline_says_what_was_tried():
    # HF_HUB_OFFLINE=1 (conftest): the hub is not reachable, as on this machine.
    with pytest.raises(WeightsUnavailableError) as e:
        load_clip(ClipConfig("ViT-B-32", "laion2b_s34b_b79k", "cpu"))
    assert "Hugging Face hub" in str(e.value) and "model.pretrained" in str(e.value)



@pytest.fixture
def hub(monkeypatch, tmp_path):
    """huggingface_hub online (conftest sets HF_HUB_OFFLINE=1), an empty private cache, and
    ``hub(endpoint)`` to point the probe and the downloads at ``endpoint``."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # real weights here must not count

    def point_at(endpoint: str) -> None:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)  # both are read once, at import
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            endpoint + "/{repo_id}/resolve/{revision}/{filename}")

    return point_at


@pytest.fixture
def fake_hub():
    """A local HTTP server that answers 404 to every file and records what was asked."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self):
            asked.append(self.path)
            self.send_response(200 if self.path == "/" else 404)
            self.end_headers()

        do_GET = do_HEAD

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", asked
    server.shutdown()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_line_with_fix(msg: str) -> None:
    assert "\n" not in msg
    assert "could not load pretrained weights ViT-B-32/laion2b_s34b_b79k" in msg and "model.pretrained" in msg
    assert "local-dir:" in msg
    assert "open_clip.create_model_and_transforms('ViT-B-32', pretrained='laion2b_s34b_b79k')" in msg


def test_uncached_tag_offline_fails_at_once_in_one_line():
    # HF_HUB_OFFLINE=1 (conftest); nothing on the network is tried
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as e:
        load_clip(ClipConfig("ViT-B-32", "laion2b_s34b_b79k", "cpu"), fresh=True)
    assert time.perf_counter() - t0 < 10
    assert_one_line_with_fix(str(e.value))
    assert "HF_HUB_OFFLINE" in str(e.value) and "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K" in str(e.value)


def test_unreachable_hub_fails_after_one_probe_in_one_line(hub, caplog, capfd):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    hub(endpoint)
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as e:
        load_clip(ClipConfig("ViT-B-32", "laion2b_s34b_b79k", "cpu"), fresh=True)
    elapsed = time.perf_counter() - t0
    assert elapsed < 10, f"{elapsed:.1f} s: retried instead of one probe"
    assert_one_line_with_fix(str(e.value))
    assert f"one probe of {endpoint}" in str(e.value) and "unreachable" in str(e.value)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING] and not capfd.readouterr().err


def test_reachable_hub_without_the_file_fails_quietly_in_one_line(hub, fake_hub, caplog, capfd):
    endpoint, asked = fake_hub
    hub(endpoint)
    with pytest.raises(WeightsUnavailableError) as e:
        load_clip(ClipConfig("ViT-B-32", "laion2b_s34b_b79k", "cpu"), fresh=True)
    assert_one_line_with_fix(str(e.value))
    assert "download from the Hugging Face hub failed" in str(e.value)
    assert any(p.endswith("/open_clip_model.safetensors") for p in asked)  # the probe passed: open_clip tried
    # open_clip's ERROR log and the hub's warnings are held back: the message above says it all
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING] and not capfd.readouterr().err


def test_cached_tag_loads_without_touching_the_hub(hub, fake_hub, monkeypatch, tmp_path):
    from huggingface_hub import constants
    from safetensors.torch import save_file

    endpoint, asked = fake_hub
    hub(endpoint)
    tags = {"fake": {"url": "", "hf_hub": "org/tiny/"}}  # a hub tag for the tiny model, in a private cache
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "coldstart-tiny", tags)
    snapshot = tmp_path / "hf-cache/models--org--tiny/snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "hf-cache/models--org--tiny/refs").mkdir()
    (tmp_path / "hf-cache/models--org--tiny/refs/main").write_text("0" * 40)
    torch.manual_seed(7)
    ref, _, _ = open_clip.create_model_and_transforms("coldstart-tiny", pretrained=None)
    save_file(ref.state_dict(), snapshot / "open_clip_model.safetensors")
    loaded = load_clip(ClipConfig("coldstart-tiny", "fake", "cpu", "fp32"), fresh=True)
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(ref.eval().encode_image(x), dim=-1).numpy()
    np.testing.assert_allclose(loaded.encode_images(x), expected, atol=1e-5)
    assert asked == [] and constants.HF_HUB_OFFLINE is False  # no probe, no HEAD; offline only during the load


@pytest.mark.weights
def test_real_weights_label_a_synthetic_image_when_available():
    try:
        clip = load_clip(ClipConfig("ViT-B-32", "laion2b_s34b_b79k", "cpu"))
    except WeightsUnavailableError:
        pytest.skip("ViT-B-32 laion2b_s34b_b79k weights are not in the local cache")
    from PIL import Image

    red, blue = Image.new("RGB", (224, 224), (220, 20, 20)), Image.new("RGB", (224, 224), (20, 20, 220))
    w = class_text_weights(clip, {"red": ["a red square"], "blue": ["a blue square"]}, ["a photo of {}."])
    emb = clip.encode_images(torch.stack([clip.preprocess(red), clip.preprocess(blue)]))
    assert list(zero_shot_probs(emb, w, clip.logit_scale).argmax(1)) == [0, 1]


def test_multilingual_model_without_transformers_says_how_to_install():
    pytest.importorskip("open_clip")
    try:
        import transformers  # noqa: F401

        pytest.skip("transformers is installed here")
    except ImportError:
        pass
    with pytest.raises(WeightsUnavailableError) as e:
        load_clip(ClipConfig("xlm-roberta-base-ViT-B-32", None, "cpu"))
    assert "coldstart[multilingual]" in str(e.value) and "Hugging Face cache" in str(e.value)


def test_precision_policy(monkeypatch):
    from coldstart.models import clip as clip_mod
    from coldstart.models.clip import autocast_dtype, resolve_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cuda) == "fp16" and autocast_dtype("auto", cuda) is torch.float16
    monkeypatch.setattr(clip_mod, "has_int8_dot", lambda: True)
    monkeypatch.setattr(clip_mod, "has_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16" and autocast_dtype("auto", cpu) is None
    monkeypatch.setattr(clip_mod, "has_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "int8"
    monkeypatch.setattr(clip_mod, "has_int8_dot", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    assert autocast_dtype("bf16", cpu) is None and autocast_dtype("bf16", cuda) is torch.bfloat16
    with pytest.raises(ConfigError, match="model.precision.*int4"):
        resolve_precision("int4", cpu)
    with pytest.raises(ConfigError, match="regions.precision: int8 runs on the CPU"):
        resolve_precision("int8", cuda, "regions.precision")


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_each_precision_loads_embeds_close_to_fp32_under_its_own_model_id(tiny_clip, precision):
    """A reduced precision is a different model id (no mixing in the store), its embeddings stay
    float32 unit vectors close to fp32's, and int8 reaches attention's projections too."""
    import dataclasses

    from coldstart.models.clip import LazyClip
    from coldstart.models.quant import PackedSelfAttention
    from tests.conftest import TINY

    cfg = dataclasses.replace(TINY, precision=precision)
    lazy = LazyClip(cfg)
    assert lazy.model_id == f"{tiny_clip.model_id}:{precision}" != tiny_clip.model_id
    x = torch.rand(4, 3, 64, 64)
    emb = lazy.encode_images(x)
    assert lazy.precision == precision and lazy.load().model_id == lazy.model_id
    assert emb.dtype == np.float32 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    cos = (emb * tiny_clip.encode_images(x)).sum(1)
    assert cos.min() > 0.99, cos
    if precision == "int8":
        names = {type(m).__name__ for m in lazy.model.visual.modules()}
        assert "DynamicQuantizedLinear" in names or "Linear" in {n.split(".")[-1] for n in names}
        assert any(isinstance(m, PackedSelfAttention) for m in lazy.model.visual.modules())
        assert not any(type(m) is torch.nn.Linear for m in lazy.model.visual.modules())  # every linear quantised
    else:  # bf16: the products in bf16, everything between them (norms, residual stream) fp32
        from coldstart.models.quant import LowPrecisionProduct

        visual = lazy.model.visual
        assert not any(type(m) is torch.nn.Linear and not isinstance(p, LowPrecisionProduct)
                       for p in visual.modules() for m in p.children())  # every linear wrapped
        assert all(m.layer.weight.dtype is torch.bfloat16 for m in visual.modules() if isinstance(m, LowPrecisionProduct))
        assert all(p.dtype is torch.float32 for n, p in visual.named_parameters() if "ln" in n)
    text = lazy.encode_text(["a photo of a cat"])  # the text tower stays fp32: same text weights
    assert np.allclose(text, tiny_clip.encode_text(["a photo of a cat"]), atol=1e-6)


def test_packed_self_attention_equals_multihead_attention():
    from coldstart.models.quant import PackedSelfAttention

    torch.manual_seed(0)
    for batch_first in (True, False):
        mha = torch.nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
        x = torch.randn(2, 7, 32) if batch_first else torch.randn(7, 2, 32)
        mask = torch.triu(torch.full((7, 7), float("-inf")), 1)
        for m in (None, mask):
            want = mha(x, x, x, need_weights=False, attn_mask=m)[0]
            got, none = PackedSelfAttention(mha)(x, x, x, need_weights=False, attn_mask=m)
            assert none is None and torch.allclose(got, want, atol=1e-5)


def test_lazy_model_is_built_only_when_used():
    from coldstart.models.clip import LazyClip, model_id_for
    from tests.conftest import TINY

    lazy = LazyClip(TINY)
    assert lazy.model_id == model_id_for(TINY) and "not built yet" in repr(lazy)
    import copy

    copy.copy(lazy)  # introspection probes do not build it
    assert lazy._model is None
    assert lazy.embed_dim == 32 and "built" in repr(lazy) and lazy.load() is load_clip(TINY)
