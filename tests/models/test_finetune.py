import dataclasses

import numpy as np
import pytest
import torch

from coldstart.models.clip import ClipConfig, load_clip
from coldstart.models.finetune import FinetuneConfig, finetune, save_weights, trainable_parameters
from coldstart.models.probe import LinearHead


@pytest.fixture
def fresh_tiny():
    # Not the shared cached model: this test changes weights in place.
    return load_clip(ClipConfig("coldstart-tiny", None, "cpu", "fp32"), fresh=True)


def test_one_step_trains_only_the_last_blocks_and_reloads(fresh_tiny, tmp_path):
    clip = fresh_tiny
    blocks = clip.model.visual.transformer.resblocks
    first, last = [p.clone() for p in blocks[0].parameters()], [p.clone() for p in blocks[-1].parameters()]
    text_before = [p.clone() for p in clip.model.transformer.parameters()]
    torch.manual_seed(0)
    pixels, labels = torch.rand(4, 3, 64, 64), torch.tensor([0, 1, 2, 1])
    head = LinearHead(np.random.default_rng(0).normal(size=(3, clip.embed_dim)).astype(np.float32),
                      np.zeros(3, np.float32))
    new_head = finetune(clip, [(pixels, labels)], head, FinetuneConfig(blocks=1, epochs=1, lr=1e-2))
    assert not np.allclose(new_head.weight, head.weight)
    assert all(torch.equal(a, b) for a, b in zip(first, blocks[0].parameters()))  # frozen
    assert any(not torch.equal(a, b) for a, b in zip(last, blocks[-1].parameters()))  # trained
    assert all(torch.equal(a, b) for a, b in zip(text_before, clip.model.transformer.parameters()))
    assert not any(p.requires_grad for p in clip.model.parameters()) and not clip.model.training

    path = tmp_path / "finetuned.safetensors"
    save_weights(clip, path)
    reloaded = load_clip(ClipConfig("coldstart-tiny", str(path), "cpu", "fp32"))
    x = torch.rand(2, 3, 64, 64)
    np.testing.assert_allclose(reloaded.encode_images(x), clip.encode_images(x), atol=1e-5)
    assert reloaded.model_id.startswith("coldstart-tiny@file-")


def test_block_count_is_checked(fresh_tiny):
    with pytest.raises(ValueError, match="between 1 and 2"):
        trainable_parameters(fresh_tiny, 3)
    assert dataclasses.asdict(FinetuneConfig())["blocks"] == 2
