"""generate_masks against segment-anything's own generator on the same random vit_t; the
decoder rewrite against the stock decoder; box prompts; cleanup rules on hand-made masks."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from coldstart.bench.regions import mask_match, synthetic_image
from coldstart.models.masks import ImageEmbedding, cleanup, generate_masks, image_embedding, segment_box
from coldstart.models.sam import load_sam
from coldstart.models.sam_decoder import decode_prompts
from coldstart.tasks.config import RegionsConfig

STOCK_KEYS = {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"}
# Random weights give no mask under the default thresholds, and their masks all span the image
# (box NMS at 0.7 keeps one): these thresholds keep all 48 candidates of a 4x4 grid.
# fp32 and every point: the exact path (pruning and bf16 are checked against it below).
CFG = RegionsConfig(device="cpu", points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                    box_nms_thresh=1.0, precision="fp32", skip_covered_points=False)


@pytest.fixture(scope="module")
def sam():
    model = load_sam(CFG)
    _remember_outputs(model.model.image_encoder)
    return model


def _remember_outputs(encoder: torch.nn.Module) -> None:
    """The image encoder is a pure function of its input, and not what this file tests (what goes
    into it and what follows it are): remember its outputs by input, so that ours and the stock
    generator, which each encode the same image or crop, pay for one pass between them (6 passes
    of the random vit_t instead of 20: about 25 s of the suite's CPU)."""
    seen: dict[tuple, torch.Tensor] = {}
    forward = encoder.forward

    def remembered(x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), str(x.dtype), hashlib.sha1(x.detach().cpu().contiguous().numpy().tobytes()).digest())
        if key not in seen:
            seen[key] = forward(x)
        return seen[key].clone()

    encoder.forward = remembered


@pytest.fixture(scope="module")
def image():
    return synthetic_image(200, 150, seed=3)


@pytest.fixture(scope="module")
def ours_and_stock(sam, image):
    return generate_masks(sam, image, CFG), sam.stock_generator(CFG).generate(image)


def test_the_rewritten_decoder_computes_the_stock_decoder(sam):
    torch.manual_seed(0)
    m = sam.model
    feats = torch.randn(1, 256, 64, 64)
    points = (torch.rand(5, 1, 2) * 1024, torch.ones(5, 1, dtype=torch.int))
    with torch.inference_mode():
        sparse, dense = m.prompt_encoder(points=points, boxes=None, masks=None)
        pe = m.prompt_encoder.get_dense_pe()
        for multimask in (True, False):
            want, want_iou = m.mask_decoder(feats, pe, sparse, dense, multimask)
            got, got_iou = decode_prompts(m.mask_decoder, feats, pe, sparse, dense[:1], multimask)
            assert got.shape == want.shape and got_iou.shape == want_iou.shape
            assert torch.allclose(got, want, atol=1e-4 * want.abs().max().item())
            assert torch.allclose(got_iou, want_iou, atol=1e-5)
        # With the generator's IoU threshold, prompts with no mask above it skip the upscaling:
        # the others' logits are exactly the unfiltered call's; theirs are -inf (never kept).
        full, iou = decode_prompts(m.mask_decoder, feats, pe, sparse, dense[:1], True)
        thresh = float(iou.max(1).values.median())
        part, part_iou = decode_prompts(m.mask_decoder, feats, pe, sparse, dense[:1], True, iou_thresh=thresh)
        kept = (iou > thresh).any(1)
        assert 0 < int(kept.sum()) < len(kept) and torch.equal(part_iou, iou)
        assert torch.allclose(part[kept], full[kept], atol=1e-6 * full.abs().max().item())
        assert torch.isneginf(part[~kept]).all()


def test_masks_are_the_stock_generators(ours_and_stock):
    ours, stock = ours_and_stock
    assert len(stock) >= 20 and len(ours) >= 20  # thresholds that keep many masks: a real comparison
    stock_in_ours, ours_in_stock = mask_match(stock, ours)
    assert stock_in_ours >= 0.95 and ours_in_stock >= 0.95
    # The same candidate (prompt point and predicted IoU) gives the same record, pixel for pixel.
    key = lambda m: (tuple(m["point_coords"][0]), round(m["predicted_iou"], 4))  # noqa: E731
    by_key = {key(m): m for m in ours}
    common = [(m, by_key[key(m)]) for m in stock if key(m) in by_key]
    assert len(common) >= 0.95 * len(stock)
    for s, o in common:  # random masks are alike (IoU ~0.95 between neighbours): compare pixels too
        assert o["bbox"] == s["bbox"] and o["crop_box"] == s["crop_box"]
        assert abs(o["area"] - s["area"]) <= 2 and mask_utils.iou([o["segmentation"]], [s["segmentation"]], [0]) > 0.999


def test_point_levels_run_coarse_to_fine_over_every_point_once():
    from coldstart.models.masks import point_levels

    levels = point_levels(16)
    assert [len(lv) for lv in levels] == [16, 64, 176]  # every 4th, every 2nd (between them), the rest
    assert sorted(np.concatenate(levels).tolist()) == list(range(256))
    rows, cols = np.divmod(levels[0], 16)
    assert set(rows.tolist()) == set(cols.tolist()) == {2, 6, 10, 14}  # spread over the image
    assert [len(lv) for lv in point_levels(32)] == [16, 64, 256, 688]
    assert [lv.tolist() for lv in point_levels(3)] == [list(range(9))]  # too few points for levels


def test_pruned_and_bf16_masks_match_the_stock_generators(sam, image, ours_and_stock):
    """Skipping points inside found objects, and SAM in bf16, keep the stock generator's masks:
    each side's masks have an IoU >= 0.9 match in the other's, on the same random vit_t."""
    from coldstart.models import masks as masks_mod

    cfg = CFG.model_copy(update={"points_per_side": 8, "skip_covered_points": True})
    decoded: list[int] = []
    real = masks_mod._decode_points

    def counting(sam_, emb, cfg_, idx, *args):
        decoded.append(len(idx))
        return real(sam_, emb, cfg_, idx, *args)

    masks_mod._decode_points = counting
    try:
        pruned = generate_masks(sam, image, cfg)
    finally:
        masks_mod._decode_points = real
    stock = sam.stock_generator(cfg).generate(image)
    assert len(stock) >= 100 and sum(decoded) < 64  # fewer prompts than the 8x8 grid
    assert min(mask_match(stock, pruned)) >= 0.95
    bf16 = load_sam(CFG.model_copy(update={"precision": "bf16"}))
    ours = generate_masks(bf16, image, CFG)
    assert min(mask_match(ours_and_stock[1], ours)) >= 0.95


def test_records_have_exactly_the_stock_keys_and_types(ours_and_stock, image):
    ours, _ = ours_and_stock
    H, W = image.shape[:2]
    for m in ours:
        assert set(m) == STOCK_KEYS
        assert m["segmentation"]["size"] == [H, W] and isinstance(m["segmentation"]["counts"], str)
        assert isinstance(m["area"], int) and m["area"] == int(mask_utils.area(m["segmentation"]))
        x, y, w, h = m["bbox"]
        dense = mask_utils.decode(m["segmentation"])
        ys, xs = np.nonzero(dense)
        assert [x, y, w, h] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        assert m["crop_box"] == [0, 0, W, H] and len(m["point_coords"]) == 1
    assert [m["predicted_iou"] for m in ours] == sorted((m["predicted_iou"] for m in ours), reverse=True)


def test_a_cached_embedding_gives_the_same_masks(sam, image, ours_and_stock, tmp_path):
    emb = image_embedding(sam, image)
    emb.save(tmp_path / "e.npz")
    again = ImageEmbedding.load(tmp_path / "e.npz")
    assert again.model_id == sam.model_id and again.original_size == (150, 200) and again.input_size == (768, 1024)
    assert generate_masks(sam, image, CFG, embedding=again) == ours_and_stock[0]
    with pytest.raises(ValueError, match="does not belong"):
        generate_masks(sam, image[:100], CFG, embedding=again)


def test_thresholds_and_small_region_removal_match_the_stock_generator(sam, image):
    iou = sorted(m["predicted_iou"] for m in generate_masks(sam, image, CFG))
    cfg = CFG.model_copy(update={"pred_iou_thresh": iou[len(iou) * 3 // 4], "min_mask_region_area": 200})
    assert cfg.pred_iou_thresh > 0  # 0 and below: no filter (segment-anything's rule)
    ours, stock = generate_masks(sam, image, cfg), sam.stock_generator(cfg).generate(image)
    assert len(stock) >= 10 and min(mask_match(stock, ours)) >= 0.9
    assert min(m["predicted_iou"] for m in ours) > cfg.pred_iou_thresh


def test_crop_layers_match_the_stock_generator(sam, image):
    # Random masks fill their crop, so the 4 sub-crops' masks touch inner crop edges and are dropped
    # (the rule under test, decided here on low-res boxes); the whole-image crop's 12 remain.
    cfg = CFG.model_copy(update={"points_per_side": 2, "crop_n_layers": 1, "crop_nms_thresh": 1.0})
    ours, stock = generate_masks(sam, image, cfg), sam.stock_generator(cfg).generate(image)
    assert {tuple(m["crop_box"]) for m in stock} == {tuple(m["crop_box"]) for m in ours}
    assert len(stock) >= 3 and min(mask_match(stock, ours)) >= 0.9


def test_a_big_image_is_segmented_downscaled_and_answered_in_its_own_pixels(sam):
    # A flat image looks the same to SAM at any size (its input is always 1024 on the long side),
    # so the masks of a 10x larger copy are the small ones scaled by 10.
    small, big = np.full((150, 200, 3), 120, np.uint8), np.full((1500, 2000, 3), 120, np.uint8)
    cfg = CFG.model_copy(update={"points_per_side": 4})
    a, b = generate_masks(sam, small, cfg), generate_masks(sam, big, cfg)
    assert len(a) == len(b) > 0
    for s, g in zip(a, b):
        assert g["segmentation"]["size"] == [1500, 2000] and g["crop_box"] == [0, 0, 2000, 1500]
        assert np.allclose(np.array(g["point_coords"]), 10 * np.array(s["point_coords"]))
        assert np.allclose(g["bbox"], 10 * np.array(s["bbox"]), atol=12)
        assert g["area"] == pytest.approx(100 * s["area"], rel=0.05, abs=400)


def test_a_box_prompt_is_the_predictors(sam, image):
    from mobile_sam import SamPredictor

    box = np.array([40, 30, 150, 120])
    predictor = SamPredictor(sam.model)
    predictor.set_image(image)
    want = predictor.predict(box=box, multimask_output=False)[0][0]
    emb = image_embedding(sam, image)
    got = segment_box(sam, emb, box, (150, 200))
    assert got.shape == (150, 200) and got.dtype == bool
    assert (got != want).sum() <= 2
    # The same box in the pixels of a 3x larger original: the mask comes back at that size.
    big = segment_box(sam, emb, 3 * box, (450, 600))
    assert big.shape == (450, 600)
    assert (big[1::3, 1::3] == got).mean() > 0.99


def test_bad_images_are_refused(sam):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        generate_masks(sam, np.zeros((10, 10), np.uint8), CFG)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        image_embedding(sam, np.zeros((10, 10, 3), np.float32))


# --- cleanup: hand-made masks with known answers --------------------------------------------------


def rec(mask: np.ndarray, iou: float, stability: float = 0.9) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    ys, xs = np.nonzero(mask)
    return {"segmentation": rle, "area": int(mask.sum()), "bbox": [int(xs.min()), int(ys.min()),
            int(xs.max() - xs.min()), int(ys.max() - ys.min())], "predicted_iou": iou, "point_coords": [[0, 0]],
            "stability_score": stability, "crop_box": [0, 0, mask.shape[1], mask.shape[0]]}


def box(y0: int, y1: int, x0: int, x1: int, size=(100, 100)) -> np.ndarray:
    m = np.zeros(size, bool)
    m[y0:y1, x0:x1] = True
    return m


RULES_OFF = RegionsConfig(min_area=0, max_area_fraction=1.0, mask_nms_thresh=1.0, containment_thresh=1.0,
                          max_regions_per_image=1000)


def test_min_area_and_whole_image_masks_are_dropped_and_counted():
    masks = [rec(box(0, 5, 0, 5), 0.9), rec(box(0, 100, 0, 100), 0.95), rec(box(0, 97, 0, 99), 0.8),
             rec(box(10, 30, 10, 30), 0.7)]
    kept, counts = cleanup(masks, RULES_OFF.model_copy(update={"min_area": 26, "max_area_fraction": 0.95}))
    assert [m["index"] for m in kept] == [3]
    assert counts["min_area"] == 1 and counts["max_area_fraction"] == 2


def test_mask_nms_keeps_the_better_of_two_near_duplicates():
    a, b, c = box(0, 50, 0, 50), box(0, 50, 0, 45), box(0, 50, 0, 20)  # IoU(a, b) = 0.9, IoU(a, c) = 0.4
    masks = [rec(b, 0.8), rec(a, 0.9), rec(c, 0.7)]
    kept, counts = cleanup(masks, RULES_OFF.model_copy(update={"mask_nms_thresh": 0.85}))
    assert [m["index"] for m in kept] == [1, 2] and counts["mask_nms"] == 1
    kept, counts = cleanup(masks, RULES_OFF.model_copy(update={"mask_nms_thresh": 0.95}))
    assert len(kept) == 3 and counts["mask_nms"] == 0


def test_containment_drops_a_part_inside_a_better_mask_of_the_same_label_only():
    whole, part = box(0, 60, 0, 60), box(10, 20, 10, 20)  # the part lies wholly inside
    cfg = RULES_OFF.model_copy(update={"containment_thresh": 0.95})
    masks = [rec(whole, 0.9), rec(part, 0.8)]
    assert cleanup(masks, cfg, labels=["car", "car"])[1]["containment"] == 1
    assert len(cleanup(masks, cfg, labels=["car", "wheel"])[0]) == 2
    assert len(cleanup(masks, cfg)[0]) == 2  # without labels the rule cannot know "same label"
    better_part = [rec(whole, 0.8), rec(part, 0.9)]  # only a *better* container removes a mask
    assert len(cleanup(better_part, cfg, labels=["car", "car"])[0]) == 2
    with pytest.raises(ValueError, match="labels"):
        cleanup(masks, cfg, labels=["car"])


def test_one_mask_per_pixel_gives_each_pixel_to_the_best_mask():
    a, b, c = box(0, 10, 0, 10), box(5, 10, 0, 20), box(0, 10, 2, 8)  # c lies inside a
    masks = [rec(b, 0.8), rec(a, 0.9), rec(c, 0.7)]
    kept, counts = cleanup(masks, RULES_OFF.model_copy(update={"one_mask_per_pixel": True}))
    assert [m["index"] for m in kept] == [1, 0] and counts["one_mask_per_pixel"] == 1
    shrunk = mask_utils.decode(kept[1]["segmentation"]).astype(bool)
    assert (shrunk == box(5, 10, 10, 20)).all() and kept[1]["area"] == 50 and kept[1]["bbox"] == [10, 5, 9, 4]
    assert masks[0]["area"] == 100  # the input records are not changed


def test_max_regions_keeps_the_best():
    masks = [rec(box(10 * k, 10 * k + 5, 0, 5), iou) for k, iou in enumerate([0.5, 0.9, 0.7, 0.8])]
    kept, counts = cleanup(masks, RULES_OFF.model_copy(update={"max_regions_per_image": 2}))
    assert [m["index"] for m in kept] == [1, 3] and counts["max_regions_per_image"] == 2
    assert cleanup([], RULES_OFF) == ([], dict.fromkeys(counts, 0))
