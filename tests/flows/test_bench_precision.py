"""`coldstart bench precision` on the tiny model: every precision embeds through the embed stage
into its own store, and the figures say how each compares with fp32."""

from __future__ import annotations

import json

from coldstart.flows.cli import main as cli


def test_bench_precision_compares_every_precision_with_fp32(tmp_path, capsys):
    out = tmp_path / "precision.json"
    assert cli(["bench", "precision", "--n", "40", "--model", "coldstart-tiny", "--batch-size", "8",
                "--json", str(out)]) == 0
    f = json.loads(out.read_text())
    assert all(f[f"{p}_ms_per_img"] > 0 for p in ("fp32", "bf16", "int8"))
    per = f["per_precision"]
    assert per["fp32"]["agreement"] == per["fp32"]["min_cosine"] == 1.0  # fp32 against itself
    assert 0.9 < per["int8"]["min_cosine"] < 1.0 and 0.9 < per["bf16"]["min_cosine"] <= 1.0  # (rounded to 5 places)
    assert per["int8"]["error_to_neighbour"] > per["bf16"]["error_to_neighbour"] > 0  # both differ from fp32
    # The best is the fastest precision that holds agreement >= 0.995 and cosine >= 0.999.
    holding = [p for p, h in per.items() if h["agreement"] >= 0.995 and h["min_cosine"] >= 0.999]
    assert f["best"] == min(holding, key=lambda p: f[f"{p}_ms_per_img"])
    assert f["speedup"] == round(f["fp32_ms_per_img"] / f[f"{f['best']}_ms_per_img"], 2)
    assert f["gemm_gflops"] > 0 and 0 < f["frac_of_peak"] and f["image_gflop"] > 0
    assert f["settings"]["weights"] == "random (seed 0)" and f["machine"]["cpu"]
    assert f["other_cores_busy"] >= 0 and isinstance(f["machine_busy"], bool)
    assert set(f["embed_img_s"]) == {"fp32", "bf16", "int8"} and f["auto_on_this_cpu"] in {"fp32", "bf16", "int8"}
    text = capsys.readouterr().out
    assert "coldstart-tiny@random-seed0:int8" in text and "precision: fp32 / best image tower" in text
