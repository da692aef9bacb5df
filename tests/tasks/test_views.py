import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from coldstart.models.zeroshot import ZeroShotHead
from coldstart.tasks.config import ModelConfig, ScanConfig, TileSpec, ViewsConfig
from coldstart.tasks.embed import embed
from coldstart.tasks.manifest import read_manifest
from coldstart.tasks.relabel import multiscale
from coldstart.tasks.scan import scan
from coldstart.tasks.store import EmbeddingStore
from coldstart.tasks.views import aggregate_views, clahe, tile_boxes
from coldstart.tasks.workspace import Workspace


def test_tile_grid_covers_the_image_in_original_pixels():
    boxes = tile_boxes(640, 480, [TileSpec(size=0.5, stride=0.25)])
    assert boxes.shape == (5 * 3, 4) and (boxes[:, 2] - boxes[:, 0] == 240).all()
    assert boxes[:, 2].max() == 640 and boxes[:, 3].max() == 480 and boxes.min() == 0
    assert tile_boxes(100, 100, [TileSpec(size=300, stride=50)]).tolist() == [[0, 0, 100, 100]]


def test_aggregation_rules():
    g = np.array([[0.1, 0.9]], np.float32)  # global: looks ok
    t = [np.array([[0.05, 0.95], [0.8, 0.2], [0.3, 0.7]], np.float32)]  # tile 1 shows the defect
    s, w = aggregate_views(g, t, "max", negative=1)
    np.testing.assert_allclose(s, [[0.8 / 1.0, 0.2 / 1.0]], rtol=1e-6)
    assert w[0, 0] == 2  # view 2 = tile index 1
    s, _ = aggregate_views(g, t, "max")  # without the negative rule both are ~max: ambiguous
    assert abs(s[0, 0] - s[0, 1]) < 0.1
    s, _ = aggregate_views(g, t, "mean")
    np.testing.assert_allclose(s[0], [0.3125, 0.6875], rtol=1e-5)
    s, _ = aggregate_views(g, t, "topk", k=2, negative=1)
    np.testing.assert_allclose(s[0] * (0.55 + 0.45), [0.55, 0.45], rtol=1e-5)


def test_clahe_raises_local_contrast():
    rng = np.random.default_rng(0)
    flat = (120 + rng.integers(0, 8, (64, 64, 3))).astype(np.uint8)
    out = np.asarray(clahe(Image.fromarray(flat), 2.0, 8))
    assert out.shape == flat.shape and out.dtype == np.uint8 and out.std() > 2 * flat.std()


class RednessEncoder:
    """A deterministic stand-in with a known answer: embedding = normalise([40 * redness, 1])."""

    model_id, image_size, embed_dim, device = "standin@redness", 32, 2, torch.device("cpu")

    def preprocess(self, img):
        return TF.to_tensor(img.resize((32, 32)))

    def encode_images(self, pixels):
        red = (pixels[:, 0] - pixels[:, 1:].mean(1)).clamp(min=0).mean((1, 2))
        v = torch.stack([40 * red, torch.ones_like(red)], 1)
        return torch.nn.functional.normalize(v, dim=1).numpy()


def test_defect_is_located_in_its_tile(tmp_path):
    ws = Workspace(tmp_path)
    ws.images.mkdir(parents=True)
    img = np.full((256, 256, 3), 235, np.uint8)
    img[150:180, 160:200] = (220, 20, 20)  # a red "defect" inside tile (128, 128, 256, 256)
    Image.fromarray(img).save(ws.images / "part.png")
    Image.fromarray(np.full((256, 256, 3), 235, np.uint8)).save(ws.images / "clean.png")
    scan(ws, ScanConfig(), 1)
    views = ViewsConfig(tiles=[TileSpec(size=0.5, stride=0.5)], aggregate="max")
    enc = RednessEncoder()
    result = embed(ws, enc, ModelConfig(batch_size=3, num_workers=0), views, progress=False)
    assert result.embedded == 2 and result.tiles == 8
    head = ZeroShotHead(np.eye(2, dtype=np.float32), np.array([0, 1]), 2, 100.0)  # [defect, ok]
    ids, X = EmbeddingStore(ws.embeddings, enc.model_id, views.key("global")).load()
    global_probs = head.predict_proba(X)
    assert (global_probs.argmax(1) == 1).all()  # the whole image looks fine at global scale
    scores, locations = multiscale(ws, enc.model_id, views, ids, global_probs, head.predict_proba, negative=1)
    by_path = {r["image_id"]: r["path"] for r in read_manifest(ws)}
    found = {by_path[i]: (int(s.argmax()), loc) for i, s, loc in zip(ids, scores, locations)}
    assert found["part.png"] == (0, "128 128 256 256")
    assert found["clean.png"][0] == 1
    # Cached: a second embed call encodes nothing.
    assert embed(ws, enc, ModelConfig(batch_size=3, num_workers=0), views, progress=False).embedded == 0
