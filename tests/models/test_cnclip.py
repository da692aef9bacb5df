"""Chinese-CLIP (model.family: cn_clip): the tokenizer offline, checkpoints in both formats, the
fp16-to-fp32 CPU path, class weights equal to Chinese-CLIP's own zero-shot classifier, a mixed
Chinese/English ontology, and the documented defect example running a round end to end."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("cn_clip", reason="Chinese-CLIP is the `chinese` extra: pip install -e '.[chinese]'")

from cn_clip.clip import tokenize  # noqa: E402
from cn_clip.clip.utils import create_model  # noqa: E402

from coldstart.models.clip import ClipConfig, load_clip  # noqa: E402
from coldstart.models.errors import ConfigError, WeightsUnavailableError  # noqa: E402

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A randomly initialised RN50@RBT3-chinese, saved as Chinese-CLIP saves checkpoints."""
    torch.manual_seed(123)
    model = create_model("RN50@RBT3-chinese").float().eval()
    path = tmp_path_factory.mktemp("cn") / "rn50.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return model, path


def _config(path, **kw) -> ClipConfig:
    return ClipConfig("RN50", str(path), "cpu", **{"precision": "fp32", "family": "cn_clip", **kw})


def test_the_tokenizer_works_offline_from_the_shipped_vocabulary():
    from cn_clip.clip import _tokenizer

    ids = tokenize(["划痕"])[0]
    assert ids.shape == (52,)
    want = [_tokenizer.vocab[t] for t in ("[CLS]", "划", "痕", "[SEP]")]
    assert ids[:4].tolist() == want and not ids[4:].any()


def test_checkpoint_formats_load_in_fp32_and_embed_as_the_reference(reference, tmp_path):
    model, path = reference
    loaded = load_clip(_config(path))
    assert loaded.model_id.startswith("cn_clip/RN50@file-") and loaded.image_size == 224 and loaded.embed_dim == 1024
    # create_model converts to fp16 for GPUs: every weight is back in fp32 on the CPU
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    x = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        want = torch.nn.functional.normalize(model.encode_image(x), dim=-1).numpy()
    np.testing.assert_allclose(loaded.encode_images(x), want, atol=1e-5)
    # DistributedDataParallel's "module." prefix, and a bare state dict, load the same weights
    prefixed, bare = tmp_path / "ddp.pt", tmp_path / "bare.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, prefixed)
    torch.save(model.state_dict(), bare)
    ref = model.state_dict()
    for p in (prefixed, bare):
        got = load_clip(_config(p)).model.state_dict()  # the same keys: a Chinese-CLIP checkpoint
        assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)


def test_bad_settings_are_one_clear_error(reference, tmp_path):
    _, path = reference
    with pytest.raises(ConfigError, match="not a Chinese-CLIP model; .*ViT-B-16.*RN50"):
        load_clip(ClipConfig("ViT-B-32", str(path), "cpu", family="cn_clip"))
    with pytest.raises(WeightsUnavailableError, match="does not exist; give the path of a Chinese-CLIP checkpoint"):
        load_clip(_config(tmp_path / "missing.pt"))
    with pytest.raises(WeightsUnavailableError, match="not a Chinese-CLIP ViT-B-16 checkpoint"):
        load_clip(ClipConfig("ViT-B-16", str(path), "cpu", "fp32", "cn_clip"))
    with pytest.raises(WeightsUnavailableError, match=r"RN50/official: not in the local cache, and HF_HUB_OFFLINE .* Tried .*clip_cn_rn50.pt"):
        load_clip(ClipConfig("RN50", "official", "cpu", "fp32", "cn_clip"))


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_each_precision_is_its_own_model_id(reference, precision):
    _, path = reference
    fp32, low = load_clip(_config(path)), load_clip(_config(path, precision=precision))
    assert low.model_id == fp32.model_id + ":" + precision
    x = torch.rand(1, 3, 224, 224)
    cos = (fp32.encode_images(x) * low.encode_images(x)).sum(1)
    assert cos.min() > 0.99
    assert np.allclose(low.encode_text(["一张猫的照片"]), fp32.encode_text(["一张猫的照片"]), atol=1e-6)


def _reference_weights(model, classes: dict[str, list[str]], templates: list[str]) -> np.ndarray:
    """Chinese-CLIP's zero-shot classifier, computed as its own evaluation does: per class, every
    template x description tokenized by cn_clip, encoded in fp32, L2-normalised, averaged, renormalised."""
    rows = []
    with torch.inference_mode():
        for descriptions in classes.values():
            texts = [t.replace("{}", d) for d in descriptions for t in templates]
            e = torch.nn.functional.normalize(model.encode_text(tokenize(texts)), dim=-1).mean(0)
            rows.append(torch.nn.functional.normalize(e, dim=0).numpy())
    return np.stack(rows)


def _defect_example() -> str:
    """The Chinese defect-inspection params.yaml of docs/configuration.md, as documented."""
    text = DOCS.read_text(encoding="utf-8")
    block = re.search(r"A defect-inspection ontology.*?```yaml\n(.*?)```", text, re.S)
    assert block is not None
    return block.group(1)


def defect_params(checkpoint: Path, budget: int | None = None) -> str:
    """params.yaml as a quality engineer makes it: `coldstart init`'s template with its sections
    replaced by the documented example's, the small RN50 and a local checkpoint instead of the
    official weights."""
    import yaml

    from coldstart.tasks.version import template_text

    example = yaml.safe_load(_defect_example().replace("name: ViT-B-16", "name: RN50").replace(
        "pretrained: official", f"pretrained: {checkpoint}"))
    params = yaml.safe_load(template_text("params.yaml"))
    params.update(example)
    if budget is not None:
        params["round"]["budget"] = budget
    return yaml.safe_dump(params, allow_unicode=True, sort_keys=False)


def test_prompts_save_equals_chinese_clips_own_classifier_with_a_mixed_ontology(reference, tmp_path, capsys):
    from coldstart.flows.cli import main
    from coldstart.tasks.version import init_workspace

    model, path = reference
    import yaml

    params = yaml.safe_load(defect_params(path))
    params["ontology"]["classes"]["背景"]["descriptions"].append("an empty background")  # both languages
    params = yaml.safe_dump(params, allow_unicode=True, sort_keys=False)
    ws = init_workspace(tmp_path / "ws", params_text=params)
    out = tmp_path / "W.npy"
    assert main(["prompts", "--workspace", str(ws.root), "--save", str(out)]) == 0
    text = capsys.readouterr().out
    onto = ws.params().ontology
    got = np.load(out)
    want = np.concatenate([_reference_weights(model, {n: s.descriptions}, s.templates or onto.templates)
                           for n, s in onto.classes.items()])
    assert got.shape == want.shape == (4, 1024) and np.abs(got - want).max() <= 1e-4
    assert "cn_clip/RN50@file-" in text
    # English prompts are the ones Chinese-CLIP is warned about: the English description, and no Chinese prompt
    assert "WARNING class '背景': description 'an empty background' has no Chinese character" in text
    assert "WARNING class '划痕'" not in text


def test_the_demo_s_chinese_params_describe_every_digit_in_chinese():
    import yaml

    from coldstart.flows.demo import DEMO_MODELS
    from coldstart.tasks.config import parse_params
    from coldstart.tasks.demodata import DIGITS, demo_params

    params = parse_params(yaml.safe_load(demo_params(None, 10, DEMO_MODELS["cn_clip"][0], family="cn_clip")), "demo")
    assert params.model.family == "cn_clip" and params.model.name == "RN50"
    onto = params.ontology
    assert onto.class_names == DIGITS  # the labels the simulated annotator answers with
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in d) for s in onto.classes.values() for d in s.descriptions[:1])
    assert all("{}" in t and any("\u4e00" <= ch <= "\u9fff" for ch in t) for t in onto.templates)
