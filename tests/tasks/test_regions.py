"""Region labels: crops of SAM-style masks, batched labeling, the regions table, COCO and Label
Studio exports. Masks are hand-made (pycocotools-encoded), so nothing here depends on SAM."""

import copy
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from coldstart.models.masks import cleanup
from coldstart.models.zeroshot import ZeroShotHead
from coldstart.tasks.config import RegionsConfig
from coldstart.tasks.crops import GREY, region_crops
from coldstart.tasks.labelstudio import IMAGE, POLYGON, label_config
from coldstart.tasks.regionexports import regions_to_coco, regions_to_labelstudio
from coldstart.tasks.regions import ImageMasks, embed_regions, label_regions
from coldstart.tasks.regiontable import read_regions, region_id, write_regions

CLASSES = ["red thing", "blue thing", "background"]  # the labels; background is the negative one
NEGATIVES = {"background"}


class ColourEncoder:
    """A deterministic stand-in with a known answer: embedding = normalise([redness, blueness, 0.05])."""

    model_id, image_size, embed_dim, device = "standin@colour", 32, 3, torch.device("cpu")

    def preprocess(self, img):
        return TF.to_tensor(img.resize((32, 32)))

    def encode_images(self, pixels):
        r, g, b = pixels[:, 0], pixels[:, 1], pixels[:, 2]
        red = (r - (g + b) / 2).clamp(min=0).mean((1, 2))
        blue = (b - (r + g) / 2).clamp(min=0).mean((1, 2))
        v = torch.stack([red, blue, torch.full_like(red, 0.05)], 1)
        return torch.nn.functional.normalize(v, dim=1).numpy()


COLOUR_HEAD = ZeroShotHead(np.eye(3, dtype=np.float32), np.array([0, 1, 2]), 3, 100.0)


def sam_mask(mask: np.ndarray, iou: float = 0.95) -> dict:
    """A mask dict as SamAutomaticMaskGenerator(output_mode="coco_rle") returns it."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("utf-8")
    h, w = mask.shape
    return {"segmentation": rle, "area": int(mask.sum()), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            "predicted_iou": iou, "point_coords": [[0.0, 0.0]], "stability_score": 0.97,
            "crop_box": [0, 0, w, h]}


def scene(h: int = 96, w: int = 128) -> tuple[np.ndarray, list[dict]]:
    """A grey image with a red square, a blue disc and a plain corner, and one mask for each."""
    img = np.full((h, w, 3), 200, np.uint8)
    square = np.zeros((h, w), bool)
    square[10:40, 12:42] = True
    img[square] = (220, 30, 30)
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - 60) ** 2 + (xx - 90) ** 2 <= 18**2
    img[disc] = (30, 40, 220)
    corner = np.zeros((h, w), bool)
    corner[70:, :30] = True  # plain grey: background
    return img, [sam_mask(square, 0.96), sam_mask(disc, 0.93), sam_mask(corner, 0.9)]


def test_different_regions_of_one_image_get_different_classes():
    img, masks = scene()
    regions = label_regions(ColourEncoder(), COLOUR_HEAD, [ImageMasks("img-a", "a.png", img, masks)],
                            RegionsConfig(), CLASSES, negatives=NEGATIVES, labeler="colour")
    assert [r.label for r in regions] == ["red thing", "blue thing"]  # the grey corner is background: dropped
    assert all(r.confidence > 0.9 and r.labeler == "colour" and r.image_id == "img-a" for r in regions)
    red, blue = regions
    assert red.bbox == (12.0, 10.0, 30.0, 30.0) and red.area == 900  # XYWH, original pixels
    assert red.rle == masks[0]["segmentation"] and red.predicted_iou == 0.96 and red.stability_score == 0.97
    assert red.region_id == region_id("img-a", masks[0]["segmentation"]["counts"]) != blue.region_id
    assert len(red.region_id) == 16 and region_id("img-b", masks[0]["segmentation"]["counts"]) != red.region_id
    # Without the negative label the corner is kept, as background.
    kept = label_regions(ColourEncoder(), COLOUR_HEAD, [ImageMasks("img-a", "a.png", img, masks)],
                         RegionsConfig(), CLASSES)
    assert [r.label for r in kept] == ["red thing", "blue thing", "background"]


def test_crops_keep_original_pixel_coordinates():
    img, masks = scene()
    crops, boxes = region_crops(Image.fromarray(img), masks, RegionsConfig(crop_padding=0.1))
    assert boxes.tolist()[0] == [9, 7, 45, 43]  # bbox (12, 10, 30, 30) grown by 3 px each side
    assert boxes.tolist()[2] == [0, 67, 33, 96]  # clipped to the image
    for crop, (x0, y0, x1, y1) in zip(crops, boxes):
        assert np.array_equal(np.asarray(crop), img[y0:y1, x0:x1])
    crops, boxes = region_crops(img, masks[:2], RegionsConfig(crop_padding=0.1, blank_outside=True))
    x0, y0, x1, y1 = boxes[1]
    crop = np.asarray(crops[1])
    disc = (np.mgrid[y0:y1, x0:x1][0] - 60) ** 2 + (np.mgrid[y0:y1, x0:x1][1] - 90) ** 2 <= 18**2
    assert np.array_equal(crop[disc], img[y0:y1, x0:x1][disc]) and (crop[~disc] == GREY).all()
    with pytest.raises(ValueError, match="made for an image of 128x96"):
        region_crops(img[:50], masks, RegionsConfig())


def test_batched_labeling_equals_one_by_one(tiny_clip):
    img, masks = scene()
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, tiny_clip.embed_dim)).astype(np.float32)
    head = ZeroShotHead(w / np.linalg.norm(w, axis=1, keepdims=True), np.array([0, 1, 2]), 3, 100.0)
    items = [ImageMasks("img-a", "a.png", img, masks), ImageMasks("img-b", "b.png", img[:, ::-1].copy(), masks[:1])]
    cfg = RegionsConfig()
    which, X = embed_regions(tiny_clip, items, cfg, batch_size=64)
    which1, X1 = embed_regions(tiny_clip, items, cfg, batch_size=1)
    assert X.shape == (4, tiny_clip.embed_dim)
    assert [(i, p, id(m)) for i, p, m in which] == [(i, p, id(m)) for i, p, m in which1]
    np.testing.assert_allclose(X, X1, atol=1e-5)
    batched = label_regions(tiny_clip, head, items, cfg, CLASSES, batch_size=3)  # a batch spans both images
    single = label_regions(tiny_clip, head, items, cfg, CLASSES, batch_size=1)
    assert [(r.region_id, r.label) for r in batched] == [(r.region_id, r.label) for r in single]
    np.testing.assert_allclose([r.confidence for r in batched], [r.confidence for r in single], atol=1e-4)
    from coldstart.bench.regions import bench_labeling

    ours, naive, labeled = bench_labeling(img, masks, tiny_clip, head, RegionsConfig(min_area=0))
    assert ours > 0 and naive > 0 and labeled == len(cleanup(masks, RegionsConfig(min_area=0))[0])


def test_max_regions_per_image_keeps_the_best_masks():
    img, masks = scene()
    regions = label_regions(ColourEncoder(), COLOUR_HEAD, [ImageMasks("a", "a.png", img, masks)],
                            RegionsConfig(max_regions_per_image=1), CLASSES)
    assert [r.label for r in regions] == ["red thing"]  # predicted_iou 0.96 is the best
    assert label_regions(ColourEncoder(), COLOUR_HEAD, [], RegionsConfig(), CLASSES) == []


def two_images() -> tuple[list, list]:
    img, masks = scene()
    other = np.full((64, 80, 3), 200, np.uint8)
    sq = np.zeros((64, 80), bool)
    sq[5:25, 50:75] = True
    other[sq] = (40, 30, 230)
    items = [ImageMasks("img-a", "a.png", img, masks), ImageMasks("img-b", "sub/b.png", other, [sam_mask(sq)])]
    regions = label_regions(ColourEncoder(), COLOUR_HEAD, items, RegionsConfig(), CLASSES, negatives=NEGATIVES)
    images = [("img-a", "a.png", 128, 96), ("img-b", "sub/b.png", 80, 64)]
    return regions, images


def test_coco_export_round_trips_through_cocoeval(tmp_path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    regions, images = two_images()
    doc = regions_to_coco(regions, images, CLASSES, negatives=NEGATIVES)
    assert [c["name"] for c in doc["categories"]] == ["red thing", "blue thing"]
    assert [a["category_id"] for a in doc["annotations"]] == [1, 2, 2]
    assert doc["images"][1] == {"id": 2, "file_name": "sub/b.png", "width": 80, "height": 64,
                                "coldstart_image_id": "img-b"}
    path = tmp_path / "regions.json"
    path.write_text(json.dumps(doc))
    gt = COCO(str(path))
    assert len(gt.getAnnIds()) == 3 and gt.annToMask(gt.anns[1]).sum() == 900
    for kind in ("segm", "bbox"):
        dt = gt.loadRes(copy.deepcopy(doc["annotations"]))
        ev = COCOeval(gt, dt, kind)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert ev.stats[0] == pytest.approx(1.0), kind
    with pytest.raises(ValueError, match="not a category"):
        regions_to_coco(regions, images, ["red thing", "background"], negatives=NEGATIVES)
    with pytest.raises(ValueError, match="its image a.png is 100x96"):
        regions_to_coco(regions, [("img-a", "a.png", 100, 96), images[1]], CLASSES)


def test_labelstudio_polygons_in_percent_match_the_config():
    regions, images = two_images()
    tasks = regions_to_labelstudio(regions, images, model_version="colour")
    assert [t["data"]["path"] for t in tasks] == ["a.png", "sub/b.png"]
    results = [r for t in tasks for p in t["predictions"] for r in p["result"]]
    assert len(results) == 3
    config = ET.fromstring(label_config(CLASSES, polygons=["red thing", "blue thing"]))
    control = config.find("PolygonLabels")
    assert control.get("name") == POLYGON and control.get("toName") == IMAGE
    allowed = {label.get("value") for label in control.findall("Label")}
    assert config.find("Image").get("name") == IMAGE and config.find("Choices") is not None
    for r in results:
        assert r["type"] == "polygonlabels" and r["from_name"] == POLYGON and r["to_name"] == IMAGE
        assert set(r["value"]["polygonlabels"]) <= allowed
        points = np.array(r["value"]["points"])
        assert points.ndim == 2 and points.shape[1] == 2 and len(points) >= 3
        assert (points >= 0).all() and (points <= 100).all()
    square = np.array(results[0]["value"]["points"])  # (12, 10)-(41, 39) in a 128x96 image
    np.testing.assert_allclose(square.min(0), [12 / 128 * 100, 10 / 96 * 100], atol=1e-3)
    np.testing.assert_allclose(square.max(0), [41 / 128 * 100, 39 / 96 * 100], atol=1e-3)
    assert len(square) == 4  # a square simplifies to its corners
    assert results[0]["original_width"] == 128 and results[2]["original_height"] == 64
    json.dumps(tasks)  # plain JSON types
    # Without polygons the config is the image-level one, as before.
    assert ET.fromstring(label_config(CLASSES)).find("PolygonLabels") is None


def test_regions_table_write_read(tmp_path):
    regions, _ = two_images()
    folder = tmp_path / "regions"
    assert read_regions(folder) == []
    assert write_regions(folder, 1, regions)
    assert sorted(read_regions(folder), key=lambda r: r.region_id) == sorted(regions, key=lambda r: r.region_id)
    assert not write_regions(folder, 2, regions)  # nothing changed: nothing written
    # Round 3 re-labels image a: its disc is gone, its square relabeled; image b keeps its region.
    red = regions[0]
    relabeled = type(red)(**{**red.to_dict(), "label": "blue thing", "confidence": 0.5})
    assert write_regions(folder, 3, [relabeled], images=["img-a"])
    now = {r.region_id: r for r in read_regions(folder)}
    assert set(now) == {red.region_id, regions[2].region_id}
    assert now[red.region_id] == relabeled and now[regions[2].region_id] == regions[2]
    as_before = sorted(read_regions(folder, before=3), key=lambda r: r.region_id)
    assert as_before == sorted(regions, key=lambda r: r.region_id)


def test_export_coco_regions(tmp_path):
    from pycocotools.coco import COCO

    from coldstart.tasks.errors import WorkspaceError
    from coldstart.tasks.export import export
    from coldstart.tasks.regiontable import regions_dir
    from coldstart.tasks.workspace import Workspace
    from tests.conftest import tiny_params

    (tmp_path / "params.yaml").write_text(tiny_params())
    ws = Workspace.open(tmp_path)
    with pytest.raises(WorkspaceError, match="no regions"):
        export(ws, "coco-regions", tmp_path / "out.json")
    regions, _ = two_images()
    regions = [type(r)(**{**r.to_dict(), "label": "zero"}) for r in regions]  # a digits class
    write_regions(regions_dir(ws), 1, regions)
    result = export(ws, "coco-regions", tmp_path / "out.json")
    assert result.rows == 3
    gt = COCO(str(result.out))
    assert len(gt.getAnnIds()) == 3 and len(gt.getImgIds()) == 2 and gt.cats[1]["name"] == "zero"
    from coldstart.flows.cli import main

    assert main(["export", "-w", str(tmp_path), "--format", "coco-regions", "--min-confidence", "1.01",
                 "--out", str(tmp_path / "none.json")]) == 0
    assert json.loads((tmp_path / "none.json").read_text())["annotations"] == []


def test_regions_command_on_a_tiny_workspace(tmp_path, capsys):
    """`coldstart regions`: random MobileSAM (vit_t) and the tiny CLIP, thresholds off so that
    random weights still give masks; the files it writes load in pycocotools and Label Studio's shape."""
    from pycocotools.coco import COCO

    from coldstart.flows.cli import main
    from tests.conftest import tiny_params

    (tmp_path / "params.yaml").write_text(tiny_params() + (
        "regions:\n  sam_type: vit_t\n  device: cpu\n  points_per_side: 4\n  pred_iou_thresh: 0.0\n"
        "  stability_score_thresh: 0.0\n  min_area: 0\n"))
    img, _ = scene()
    path = tmp_path / "data" / "images" / "scene.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(img).save(path)
    coco, ls = tmp_path / "out" / "regions.json", tmp_path / "out" / "tasks.json"
    coco.parent.mkdir()
    rc = main(["regions", "--workspace", str(tmp_path), str(path), "--coco", str(coco), "--labelstudio", str(ls)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "on 1 image(s), labeled by coldstart-tiny@random-seed0+zero-shot" in out and "scene.png:" in out
    gt = COCO(str(coco))
    assert [i["file_name"] for i in gt.dataset["images"]] == ["scene.png"]
    assert [c["name"] for c in gt.dataset["categories"]][:2] == ["zero", "one"]
    tasks = json.loads(ls.read_text())
    assert tasks[0]["data"]["path"] == "scene.png" and tasks[0]["data"][IMAGE].endswith("images/scene.png")
    n_polygons = sum(len(p["result"]) for p in tasks[0]["predictions"])
    assert n_polygons >= len(gt.getAnnIds())
    assert ET.fromstring((tmp_path / "out" / "label_config.xml").read_text()).find("PolygonLabels") is not None


def test_cleanup_after_labeling_drops_a_region_inside_one_of_its_label():
    from coldstart.tasks.regions import cleanup_labeled

    img, masks = scene()
    square = masks[0]
    inner = np.zeros((96, 128), bool)
    inner[15:35, 17:37] = True  # inside the red square
    img[inner] = (230, 20, 20)
    items = [ImageMasks("a", "a.png", img, [square, sam_mask(inner, 0.9), masks[1]])]
    regions = label_regions(ColourEncoder(), COLOUR_HEAD, items, RegionsConfig(), CLASSES, negatives=NEGATIVES)
    assert [r.label for r in regions] == ["red thing", "red thing", "blue thing"]
    kept, counts = cleanup_labeled(regions, RegionsConfig(min_area=0))
    assert kept == [regions[0], regions[2]] and counts["containment"] == 1
    relabeled = [regions[0], type(regions[1])(**{**regions[1].to_dict(), "label": "blue thing"}), regions[2]]
    kept, counts = cleanup_labeled(relabeled, RegionsConfig(min_area=0))
    assert kept == relabeled and counts["containment"] == 0  # inside, but of another label


def test_a_defect_tile_becomes_a_box_prompt_and_its_mask_a_region(monkeypatch, tmp_path):
    """Defect localization: an image labeled as a defect class, with the winning tile of its
    multi-scale view, gets SAM's mask for that tile as a box prompt; negative images and images
    without a tile get none. SAM is replaced by a deterministic stand-in (the box, filled)."""
    import coldstart.models.masks as masks
    from coldstart.tasks.config import parse_params
    from coldstart.tasks.regions import localize_defects

    params = parse_params({"ontology": {"classes": {"scratch": ["a scratched part"], "flawless": {
        "descriptions": ["a flawless part"], "negative": True}}}})
    calls = []

    def box_mask(sam, embedding, box, size):
        calls.append((tuple(box), tuple(size)))
        m = np.zeros(size, bool)
        x0, y0, x1, y1 = (int(v) for v in box)
        m[y0 + 2:y1 - 2, x0 + 3:x1 - 3] = True  # inside the tile, as a real defect would be
        return m

    monkeypatch.setattr(masks, "image_embedding", lambda sam, image: None)
    monkeypatch.setattr(masks, "segment_box", box_mask)
    img = tmp_path / "part.png"
    Image.fromarray(np.full((96, 128, 3), 200, np.uint8)).save(img)
    rows = [dict(image_id="d", path="part.png", label="scratch", confidence=0.8, location="64 32 128 96", model_id="m"),
            dict(image_id="n", path="part.png", label="ok", confidence=0.9, location="0 0 64 64", model_id="m"),
            dict(image_id="u", path="part.png", label="scratch", confidence=0.7, location="", model_id="m")]
    found = localize_defects(None, params, rows, {"d": img, "n": img, "u": img})
    assert calls == [((64.0, 32.0, 128.0, 96.0), (96, 128))]  # the tile, in the image's own pixels
    assert len(found) == 1
    r = found[0]
    assert (r.image_id, r.label, r.confidence, r.labeler) == ("d", "scratch", 0.8, "m+box:64 32 128 96")
    assert r.bbox == (67.0, 34.0, 58.0, 60.0) and r.area == 58 * 60 and r.rle["size"] == [96, 128]
    assert np.isnan(r.predicted_iou)  # a box prompt is not scored: not a made-up number


def test_no_mask_at_the_default_thresholds_prints_what_to_lower(tmp_path, capsys):
    """Random weights keep no mask at SAM's default thresholds: the command says which to lower."""
    from coldstart.flows.cli import main
    from tests.conftest import tiny_params

    (tmp_path / "params.yaml").write_text(tiny_params() + "regions:\n  device: cpu\n  points_per_side: 2\n")
    img, _ = scene()
    path = tmp_path / "data" / "images" / "scene.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(img).save(path)
    assert main(["regions", "--workspace", str(tmp_path), str(path), "--coco", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "scene.png: 0 mask(s)" in out
    assert ("HINT SAM kept no mask on the 1 image(s) it segmented (random weights" in out
            and "regions.pred_iou_thresh (now 0.88)" in out and "regions.points_per_side (now 2)" in out)
