"""`coldstart bench regions` on a small setting: every figure is written, with its settings."""

from __future__ import annotations

import json

import pytest

from coldstart.flows.cli import main as cli


def test_bench_regions_compares_ours_with_the_stock_generator(tmp_path, capsys):
    out = tmp_path / "regions.json"
    assert cli(["bench", "regions", "--size", "200x150", "--points-per-side", "3", "--big", "1200x900",
                "--pred-iou-thresh", "0", "--clip-model", "coldstart-tiny", "--json", str(out)]) == 0
    f = json.loads(out.read_text())
    assert f["stock_masks"] == f["ours_exact_masks"] == 27  # 3x3 points, 3 masks each: these thresholds keep all
    assert f["mask_match"] >= 0.95 and f["stock_s_per_img"] > 0 and f["ours_s_per_img"] > 0
    assert f["other_cores_busy"] >= 0 and isinstance(f["machine_busy"], bool)
    assert f["sam_precision"] in {"fp32", "bf16", "int8"} and f["settings"]["skip_covered_points"] is True
    # The speedup is the unrounded times' ratio; the times are printed to the millisecond.
    assert f["speedup"] == pytest.approx(f["stock_s_per_img"] / f["ours_s_first_image"], abs=0.01)
    assert 0 < f["peak_rss_mb"] == f["big_image_peak_rss_mb"] < 3072 and f["big_image_masks"] > 0
    assert f["settings"]["points_per_side"] == 3 and f["settings"]["big_image"] == [1200, 900]
    assert f["settings"]["weights"] == "random (seed 0)" and f["settings"]["box_nms_thresh"] == 1.0
    assert f["label_s_per_img"] > 0 and f["naive_label_s_per_img"] > 0
    assert 1 <= f["labeled_masks"] == f["masks_after_cleanup"]  # ours labels what the cleanup keeps
    # (the figures are rounded after the ratios are taken: compare within that rounding)
    assert f["label_share"] == pytest.approx(f["label_s_per_img"] / f["ours_s_first_image"], abs=0.002)
    assert f["label_speedup"] == pytest.approx(f["naive_label_s_per_img"] / f["label_s_per_img"], abs=0.011)
    # The cleanup at its defaults, counted per rule: every mask is either kept or removed by one.
    assert f["masks_after_cleanup"] + sum(f["cleanup_removed"].values()) == f["ours_masks"]
    text = capsys.readouterr().out
    assert "stock SamAutomaticMaskGenerator" in text and "masks matched both ways" in text
    with pytest.raises(SystemExit) as e:  # argparse: WIDTHxHEIGHT
        cli(["bench", "regions", "--size", "200"])
    assert e.value.code == 2 and "give WIDTHxHEIGHT" in capsys.readouterr().err
