"""inference: the workspace's current labeler, applied on demand (what `coldstart api` serves).

The labeler is the head the last train stage chose (data/models/: a probe, or zero-shot), the
same one the relabel stage applied to every image, over the same CLIP model and views. An
image the workspace knows (its content id is in the resolved table) is answered from that table:
the relabel stage's probabilities, computed from the cached embeddings, so a Label Studio task
costs no forward pass. Any other image goes through the model: its views (the global image and,
with ``views.tiles``, the tiles, each scored and aggregated as the relabel stage does) in one
batched forward pass. A ``Batcher`` gathers concurrent requests into one such pass.

Conventions: probabilities are over ``ontology.labels`` in that order (the classes, then ``unknown``); ``location`` is the
winning tile "x0 y0 x1 y1" in the image's own pixels, "" when the whole image gave the score.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from coldstart.models import masks  # by module: tests swap masks' functions
from coldstart.models import sam as sam_models  # by module: tests swap load_sam
from coldstart.tasks.embed import load_model
from coldstart.tasks.heads import CHOSEN_FILE, HEAD_FILE, load_chosen, zero_shot_head
from coldstart.tasks.manifest import read_manifest_table
from coldstart.tasks.ontology import negative_labels
from coldstart.tasks.regiontable import mask_box, mask_rle
from coldstart.tasks.relabel import plain_column, resolved_parts
from coldstart.tasks.samcache import resolve_checkpoint
from coldstart.tasks.views import aggregate_views, view_images
from coldstart.tasks.workspace import Workspace

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from coldstart.models.sam import SamModel
    from coldstart.models.zeroshot import ZeroShotHead
    from coldstart.tasks.heads import ChosenHead

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    image_id: str
    label: str
    confidence: float
    probs: dict[str, float]  # the top-k classes, most probable first
    location: str = ""
    source: str = "model"  # "workspace": from the resolved table (the relabel stage's); "model": a forward pass
    regions: list[dict] = field(default_factory=list)  # defect regions (regions.enabled), COCO-style

    def to_dict(self) -> dict:
        return {"image_id": self.image_id, "label": self.label, "confidence": round(self.confidence, 6),
                "probs": {k: round(v, 6) for k, v in self.probs.items()}, "location": self.location,
                "source": self.source, "regions": self.regions}


@dataclass
class Views:
    """One image made ready for the model: its view tensors ``(V, 3, S, S)`` (global first) and
    the tiles' ``(V-1, 4)`` XYXY boxes; ``image_id`` the sha256 of its bytes."""
    image_id: str
    pixels: torch.Tensor
    boxes: np.ndarray


class Labeler:
    """The workspace's current labeler. Thread-safe for predictions; ``refresh`` picks up a head
    that a round has trained since (checked by the files' stamps, cheap)."""
    def __init__(self, ws: Workspace, top_k: int = 5):

        self.ws, self.params, self.top_k = ws, ws.params(), top_k
        self.classes = self.params.ontology.labels  # the head's columns: classes, then unknown
        self.clip = load_model(self.params.model)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self.head: ChosenHead | ZeroShotHead | None = None  # set by refresh(), below
        self.labeler_id = ""
        self.round = 0
        self.refresh()

    def _files_stamp(self) -> tuple:

        out: list[tuple[int, int] | None] = []
        for p in (self.ws.model_dir / CHOSEN_FILE, self.ws.model_dir / HEAD_FILE, self.ws.metrics_dir / "round.json"):
            try:
                st = p.stat()
                out.append((st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def refresh(self) -> None:
        """Load the chosen head again when data/models/ changed (a round ran); before the first
        train stage, the ontology's zero-shot head."""

        stamp = self._files_stamp()
        if stamp == self._stamp:
            return
        with self._lock:
            chosen = load_chosen(self.ws)
            if chosen is not None and chosen.model_id == self.clip.model_id:
                self.head, self.labeler_id = chosen, chosen.labeler_id
            else:
                if chosen is not None:  # e.g. model.precision: auto resolved differently on this machine
                    log.warning("the trained head was fitted on %s's embeddings, but this process computes %s: "
                                "answering with the zero-shot head (pin model.precision in params.yaml when rounds "
                                "and this service run on different machines)", chosen.model_id, self.clip.model_id)
                self.head, _ = zero_shot_head(self.ws, self.params, self.clip)
                self.labeler_id = f"{self.clip.model_id}+zero-shot"
            tags = self.ws.round_tags()
            self.round = tags[-1] if tags else 0
            self._stamp = stamp

    @property
    def draft(self) -> int | None:
        """JPEG draft decoding as the embed stage does it (a reduced scale whose short side stays
        >= the model's input; none with tiles, which need full resolution): the same pixels in,
        the same probabilities out as the relabel stage's, and cheaper."""
        return None if self.params.views.tiles else int(self.clip.image_size)

    @property
    def model_version(self) -> str:
        """What Label Studio shows as the prediction's model version: the round whose head this
        is and the head's id (``round-NNN/<labeler id>``)."""
        return f"round-{self.round:03d}/{self.labeler_id}"

    def _top(self, p: np.ndarray) -> dict[str, float]:
        order = np.argsort(-p)[: self.top_k]
        return {self.classes[int(k)]: float(p[k]) for k in order}

    # --- images the workspace knows ---------------------------------------------------------

    def known(self, image_ids: list[str]) -> dict[str, Prediction]:
        """Predictions from the resolved table for the ``image_ids`` it holds (the model's
        probabilities, whether or not a person labeled the image: a suggestion, not the answer)."""
        import pyarrow as pa
        import pyarrow.compute as pc


        parts = resolved_parts(self.ws)
        if not image_ids or not parts.files():
            return {}
        table = parts.read(columns=["probs", "location"])
        table = table.filter(pc.is_in(table["image_id"], value_set=pa.array(sorted(set(image_ids)), pa.string())))
        if not table.num_rows:
            return {}
        probs = plain_column(table["probs"]).flatten().to_numpy().reshape(table.num_rows, -1)
        if probs.shape[1] != len(self.classes):
            return {}  # the ontology changed since the last round: the table's labels are not these
        out = {}
        for i, p, loc in zip(table["image_id"].to_pylist(), probs, table["location"].to_pylist()):
            k = int(p.argmax())
            out[i] = Prediction(i, self.classes[k], float(p[k]), self._top(p), loc or "", "workspace")
        return out

    # --- any image: a forward pass ----------------------------------------------------------

    def prepare(self, img: Image.Image, data: bytes | None = None, image_id: str | None = None) -> Views:
        """An RGB image -> its views, preprocessed (CPU work, done in the caller's thread)."""
        import torch


        images, boxes = view_images(img, self.params.views)
        pixels = torch.stack([self.clip.preprocess(v) for v in images])
        return Views(image_id or (hashlib.sha256(data).hexdigest() if data is not None else ""), pixels, boxes)

    def predict(self, items: list[Views]) -> list[Prediction]:
        """One forward pass over every view of every item, then the head and the relabel stage's
        multi-scale aggregation per image."""
        import torch


        if not items:
            return []
        X = self.clip.encode_images(torch.cat([v.pixels for v in items]))
        with self._lock:
            head = self.head
        assert head is not None, "__init__ runs refresh(), which always sets a head"
        P = np.asarray(head.predict_proba(X), dtype=np.float32)
        out, start = [], 0
        onto, views = self.params.ontology, self.params.views
        negative = self.classes.index(onto.negative_label) if any(s.negative for s in onto.classes.values()) else None
        for v in items:
            n = len(v.pixels)
            p = P[start : start + n]
            start += n
            if n > 1:
                scores, winner = aggregate_views(p[:1], [p[1:]], views.aggregate, views.topk, negative)
                s = scores[0]
                k = int(s.argmax())
                w = int(winner[0, k])
                loc = " ".join(str(int(c)) for c in v.boxes[w - 1]) if w > 0 else ""
            else:
                s, loc = p[0], ""
                k = int(s.argmax())
            out.append(Prediction(v.image_id, self.classes[k], float(s[k]), self._top(s), loc, "model"))
        return out


class Outliner:
    """Defect localization on demand (``regions.enabled``): the tile that gave an image its
    defect label becomes a SAM box prompt, as in the regions stage, and the mask comes back as
    a COCO-style region. SAM is loaded on first use; one image at a time (it is not re-entrant)."""
    def __init__(self, ws: Workspace, params):

        self.cfg = resolve_checkpoint(ws, params.regions)
        self.negatives = negative_labels(params.ontology)
        self._sam: SamModel | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    def wanted(self, pred: Prediction) -> bool:
        return self.cfg.enabled and bool(pred.location) and pred.label not in self.negatives

    def outline(self, pred: Prediction, rgb: np.ndarray) -> list[dict]:
        """``[{"label", "score", "bbox" (XYWH), "area", "segmentation" (COCO RLE)}]``: the defect's
        mask inside its tile, or [] when SAM finds nothing there."""

        if not self.wanted(pred):
            return []
        with self._lock:
            if self._sam is None:
                self._sam = sam_models.load_sam(self.cfg)
            box = [float(v) for v in pred.location.split()]
            mask = masks.segment_box(self._sam, masks.image_embedding(self._sam, rgb), box, rgb.shape[:2])
        if not mask.any():
            return []
        bbox, area = mask_box(mask)
        return [{"label": pred.label, "score": round(pred.confidence, 6), "bbox": [int(v) for v in bbox],
                 "area": area, "segmentation": mask_rle(mask)}]


class Batcher:
    """Micro-batching: concurrent callers ``submit`` prepared images; one worker thread runs
    them through ``Labeler.predict`` together, up to ``max_images`` views' worth at a time,
    waiting at most ``max_wait_ms`` after the first for more to join. On a busy server the
    model runs full batches; a lone request waits ``max_wait_ms`` at most."""
    def __init__(self, labeler: Labeler, max_images: int = 32, max_wait_ms: float = 5.0):
        self.labeler, self.max_images, self.max_wait = labeler, max_images, max_wait_ms / 1000
        self._q: queue.Queue[tuple[Views, Future]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="coldstart-batcher", daemon=True)
        self._stop = False
        self.batches = 0
        self._thread.start()

    def submit(self, item: Views) -> Future:
        fut: Future = Future()
        self._q.put((item, fut))
        return fut

    def close(self) -> None:
        self._stop = True
        self._q.put((None, None))  # type: ignore[arg-type]

    def _run(self) -> None:
        while not self._stop:
            first = self._q.get()
            if first[0] is None:
                return
            batch = [first]
            views = len(first[0].pixels)
            deadline = time.perf_counter() + self.max_wait
            while views < self.max_images:
                left = deadline - time.perf_counter()
                try:
                    nxt = self._q.get(timeout=left) if left > 0 else self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt[0] is None:
                    self._stop = True
                    break
                batch.append(nxt)
                views += len(nxt[0].pixels)
            try:
                results = self.labeler.predict([item for item, _ in batch])
                for (_, fut), res in zip(batch, results):
                    fut.set_result(res)
            except Exception as e:  # every caller of the batch gets the error, the worker lives on
                log.exception("prediction failed for a batch of %d image(s)", len(batch))
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
            self.batches += 1


class ImageIndex:
    """The manifest's paths and ids, read once and again only when a scan changed the manifest
    (its files' stamps): the API looks images up on every request. ``by_path``: path (relative
    to data/images/, as tasks name images) -> image id; ``first_path``: image id -> its first path
    in sorted order (``scan.image_table``'s rule: one file shows for its duplicates)."""
    def __init__(self, ws: Workspace):
        self.ws = ws
        self._stamp: tuple | None = None
        self.by_path: dict[str, str] = {}
        self.first_path: dict[str, str] = {}
        self._lock = threading.Lock()

    def _files_stamp(self) -> tuple:
        root = self.ws.manifest
        files = sorted(root.glob("*")) if root.is_dir() else [root.with_suffix(".csv")]
        return tuple((f.name, f.stat().st_mtime_ns) for f in files if f.is_file())

    def refresh(self) -> ImageIndex:

        stamp = self._files_stamp()
        with self._lock:
            if stamp != self._stamp:
                t = read_manifest_table(self.ws, ["image_id", "path"]).to_pydict()
                self.by_path = dict(zip(t["path"], t["image_id"]))
                first: dict[str, str] = {}
                for path, i in sorted(self.by_path.items()):
                    first.setdefault(i, path)
                self.first_path, self._stamp = first, stamp
        return self


def image_index(ws: Workspace) -> dict[str, str]:
    """Path (relative to data/images/, as tasks name images) -> image id, from the manifest."""
    return ImageIndex(ws).refresh().by_path
