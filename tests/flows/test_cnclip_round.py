"""The Chinese defect example of docs/configuration.md, with a random-weight Chinese-CLIP RN50
checkpoint, runs a round end to end (the `chinese` extra)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("cn_clip", reason="Chinese-CLIP is the `chinese` extra: pip install -e '.[chinese]'")

from tests.models.test_cnclip import defect_params  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from cn_clip.clip.utils import create_model

    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("cn") / "rn50.pt"
    torch.save({"state_dict": create_model("RN50@RBT3-chinese").float().state_dict()}, path)
    return path


def test_the_documented_defect_example_runs_a_round(checkpoint, tmp_path):
    from coldstart.flows.round import labeling_round
    from coldstart.tasks.relabel import read_resolved
    from coldstart.tasks.version import init_workspace
    from tests.conftest import write_image

    ws = init_workspace(tmp_path / "defects", params_text=defect_params(checkpoint, budget=2))
    for k in range(4):
        write_image(ws.images / f"part-{k}.png", seed=k, size=(96, 128))
    record = labeling_round(workspace=str(ws.root))
    assert record.embed.model_id.startswith("cn_clip/RN50@file-") and record.embed.embedded == 4
    assert record.embed.tiles > 0  # the example's sliding windows
    rows = read_resolved(ws)
    assert len(rows) == 4 and {r["label"] for r in rows} <= {"划痕", "凹坑", "合格"}
