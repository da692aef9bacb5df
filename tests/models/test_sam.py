"""load_sam: seeded random weights, weights-only checkpoints, one clear error for missing weights."""

from __future__ import annotations

import pytest
import torch

from coldstart.models.errors import ConfigError, WeightsUnavailableError
from coldstart.models.sam import WEIGHTS_URLS, load_sam
from coldstart.tasks.config import RegionsConfig

CPU = RegionsConfig(sam_type="vit_t", sam_checkpoint=None, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def sam():
    return load_sam(CPU)


def test_random_vit_t_is_seeded_the_same_in_every_load(sam):
    state_before = torch.random.get_rng_state()
    again = load_sam(CPU)
    assert torch.equal(torch.random.get_rng_state(), state_before)  # the caller's RNG is left alone
    a, b = sam.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sam.model_id == "vit_t@random-seed0" and sam.image_size == 1024 and sam.device.type == "cpu"
    assert not sam.model.training


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_a_reduced_precision_is_its_own_model_id_and_never_the_stock_reference(precision):
    from coldstart.models.quant import PackedSelfAttention  # noqa: F401  (int8 reaches every linear layer)

    reduced = load_sam(CPU.model_copy(update={"precision": precision}))
    assert reduced.model_id == f"vit_t@random-seed0:{precision}" and reduced.precision == precision
    encoder = reduced.model.image_encoder
    if precision == "bf16":
        assert reduced.dtype == torch.bfloat16 and next(encoder.parameters()).dtype == torch.bfloat16
        assert next(reduced.model.prompt_encoder.parameters()).dtype == torch.float32  # coordinates need fp32
    else:
        assert not any(type(m) is torch.nn.Linear for m in encoder.modules())
    with pytest.raises(ValueError, match="stock generator runs SAM in fp32"):
        reduced.stock_generator(CPU)


def test_a_checkpoint_is_loaded_weights_only_and_named_by_its_digest(sam, tmp_path):
    path = tmp_path / "mobile_sam.pt"
    torch.save(sam.model.state_dict(), path)
    loaded = load_sam(CPU.model_copy(update={"sam_checkpoint": str(path)}))
    assert loaded.model_id.startswith("vit_t@file-") and len(loaded.model_id) == len("vit_t@file-") + 12
    name = "mask_decoder.iou_token.weight"
    assert torch.equal(loaded.model.state_dict()[name], sam.model.state_dict()[name])


@pytest.mark.parametrize("sam_type", ["vit_t", "vit_b", "vit_l", "vit_h"])
def test_a_missing_checkpoint_names_the_key_and_the_official_weights(tmp_path, sam_type):
    cfg = RegionsConfig(sam_type=sam_type, sam_checkpoint=str(tmp_path / "nope.pth"), device="cpu")
    with pytest.raises(WeightsUnavailableError) as e:
        load_sam(cfg)
    msg = str(e.value)
    assert "regions.sam_checkpoint" in msg and "nope.pth" in msg and WEIGHTS_URLS[sam_type] in msg
    assert "does not exist" in msg


def test_official_weight_urls_are_the_published_ones():
    assert WEIGHTS_URLS["vit_b"] == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    assert "ChaoningZhang/MobileSAM" in WEIGHTS_URLS["vit_t"] and WEIGHTS_URLS["vit_t"].endswith("weights/mobile_sam.pt")


class _Evil:
    def __reduce__(self):  # what weights_only=True exists to refuse
        return (print, ("pickled code ran",))


@pytest.mark.parametrize("content", [b"not a torch file", "pickle"])
def test_an_unreadable_checkpoint_is_one_clear_error(tmp_path, content, capsys):
    path = tmp_path / "bad.pt"
    if content == "pickle":
        torch.save({"x": _Evil()}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(WeightsUnavailableError, match="regions.sam_checkpoint: .*could not be read as a weights-only"):
        load_sam(CPU.model_copy(update={"sam_checkpoint": str(path)}))
    assert "pickled code ran" not in capsys.readouterr().out


def test_a_state_dict_of_another_model_says_so(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(WeightsUnavailableError, match="is not a vit_t state dict .*regions.sam_type"):
        load_sam(CPU.model_copy(update={"sam_checkpoint": str(path)}))


def test_a_bad_device_is_a_config_error():
    with pytest.raises(ConfigError, match="regions.device"):
        load_sam(CPU.model_copy(update={"device": "tpu9"}))
