"""`coldstart bench train`: the train stage's time at a fixed number of human labels as the pool grows.

The workspace is what the earlier stages leave: a manifest of N images, their ViT-B-32-sized
(512-d) embeddings in the store, and L human labels in the event log. The embeddings are
scikit-learn's digits (1,797 real 8×8 images, 64 pixels) projected at random to 512-d and
normalised, repeated with noise past 1,797, so the classes have real structure; the model
itself (random ViT-B-32 weights) is only used for its text head, which a round has cached.
Then ``coldstart.tasks.train.train``, the production stage, runs once and is timed.
"""

from __future__ import annotations

import binascii
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_digits

from coldstart.bench.targets import TARGETS
from coldstart.models.clip import ClipModel
from coldstart.tasks.config import Params
from coldstart.tasks.demodata import DIGITS, demo_params
from coldstart.tasks.embed import load_model
from coldstart.tasks.heads import zero_shot_head
from coldstart.tasks.manifest import replace_manifest
from coldstart.tasks.store import EmbeddingStore
from coldstart.tasks.train import train
from coldstart.tasks.workspace import Workspace, atomic_write_text


def build(root: Path, n: int, labels: int, seed: int = 0) -> tuple[Workspace, Params, ClipModel]:
    """A workspace as the earlier stages leave it: ``n`` images' 512-d embeddings (the digits
    projected at random, see the module docstring) and ``labels`` human labels; the text head built."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(demo_params(None, 50), encoding="utf-8")
    ws = Workspace(root)
    params = ws.params()
    rng = np.random.default_rng(seed)
    digits = load_digits()
    proj = rng.standard_normal((64, 512)).astype(np.float32)
    k = np.arange(n) % len(digits.data)
    X = digits.data[k].astype(np.float32) @ proj
    X += rng.standard_normal(X.shape).astype(np.float32) * (0.05 * np.linalg.norm(X, axis=1, keepdims=True) / 22.6)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    ids = [binascii.hexlify(rng.bytes(32)).decode() for _ in range(n)]
    replace_manifest(ws, [dict(path=f"img-{i:07d}.png", image_id=ids[i], width=8, height=8, size_bytes=1, mtime_ns=1,
                               first_round=1) for i in range(n)], 1)
    clip = load_model(params.model)
    store = EmbeddingStore(ws.embeddings, clip.model_id, params.views.key("global"))
    for s in range(0, n, 4096):
        store.append(ids[s : s + 4096], X[s : s + 4096])
    chosen = rng.choice(n, size=labels, replace=False)
    events = [dict(image_id=ids[i], label=DIGITS[digits.target[k[i]]], annotator="bench", source_file="bench.csv",
                   source_sha256="0" * 64, source_row=r + 2, imported_at="2026-01-01T00:00:00+00:00", round=1)
              for r, i in enumerate(chosen.tolist())]
    ws.events.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ws.events, "".join(json.dumps(e) + "\n" for e in events))
    zero_shot_head(ws, params, clip)  # a round has the text head cached: build it now, untimed
    return ws, params, clip


def bench_train(sizes: tuple[int, ...] = (1797,), labels: int = 100) -> dict[str, Any]:
    """The train stage timed once per pool size in ``sizes``, each with ``labels`` human labels."""
    runs: list[dict[str, Any]] = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="coldstart-bench-train-") as tmp:
            ws, params, clip = build(Path(tmp) / "ws", n, labels)
            t = time.perf_counter()
            result = train(ws, params, clip, 2)
            seconds = time.perf_counter() - t
        runs.append({"images": n, "labels": labels, "train_s": round(seconds, 3), "model": result.model,
                     "cv_accuracy": result.cv_accuracy})
        print(f"  train stage, {n:,} images, {labels} labels: {seconds:.2f} s (chose {result.model}, "
              f"CV accuracy {result.cv_accuracy:.3f})", flush=True)
    first = runs[0]
    figures = {"train_s": first["train_s"], "labels": labels, "images": first["images"], "runs": runs}
    if first["images"] == 1797:
        print(TARGETS["train_s"].line(first["train_s"]))
    return figures
