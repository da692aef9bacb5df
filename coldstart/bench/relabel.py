"""`coldstart bench relabel`: the production relabel stage over N images, timed.

A workspace is filled as the earlier stages leave it at scale: a manifest of N images (Parquet, as the scan stage writes it), an
embedding store of N x D float32 (shards as the embed stage writes them), a trained head in
data/models/ (written by the train stage's own ``save``) and some human labels. Then
``coldstart.tasks.relabel.relabel`` (what `coldstart round` and `coldstart stage relabel` run)
runs in a fresh process per round, as every `coldstart round` does: round 1 (no previous table),
then a later round (label churn against round 1's table), which is the figure timed against the
target; each reports wall time and its process's peak RSS. Files are flushed to disk
(``os.sync``) between steps, as earlier rounds' files would long have been. Beside it, in the same process, the floor: the bare head streamed over the store (no
table, no I/O beyond the store). The store was just written, so it is in the page cache: the
figures are compute and memory bandwidth, not disk.
"""

from __future__ import annotations

import binascii
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from coldstart.bench.rss import peak_rss_mb
from coldstart.bench.targets import TARGETS
from coldstart.models.probe import LinearHead, ProbeFit
from coldstart.models.zeroshot import ZeroShotHead
from coldstart.tasks.heads import load_chosen
from coldstart.tasks.labellog import LabelEvent
from coldstart.tasks.manifest import SCHEMA as MANIFEST_SCHEMA
from coldstart.tasks.manifest import manifest_parts
from coldstart.tasks.relabel import relabel, score_store
from coldstart.tasks.store import EmbeddingStore
from coldstart.tasks.train import TrainResult, save
from coldstart.tasks.workspace import Workspace, atomic_write_text

ROUND = 2  # the child's steady-state round number


def _params(n_classes: int) -> str:
    """A params.yaml with ``n_classes`` classes and the model `bench` (nothing is loaded)."""
    classes = "\n".join(f'    class{k}: ["a photo of class {k}"]' for k in range(n_classes))
    return f"ontology:\n  classes:\n{classes}\nmodel:\n  name: bench\n  pretrained: null\n"


def build_workspace(root: Path, n: int, dim: int, n_classes: int, n_human: int, shard_rows: int = 4096,
                    seed: int = 0) -> None:
    """A workspace as scan, embed, intake and train leave it, for N images (no image files)."""
    rng = np.random.default_rng(seed)
    (root / "params.yaml").write_text(_params(n_classes), encoding="utf-8")
    ws = Workspace(root)
    ids = [binascii.hexlify(rng.bytes(32)).decode() for _ in range(n)]
    manifest = pa.table({"path": [f"batch-{k // 10_000:03d}/img-{k:07d}.jpg" for k in range(n)], "image_id": ids,
                         "width": np.full(n, 640, np.int32), "height": np.full(n, 480, np.int32),
                         "size_bytes": np.full(n, 48_000), "mtime_ns": np.full(n, 1_700_000_000_000_000_000),
                         "first_round": np.ones(n, np.int32)}, schema=MANIFEST_SCHEMA)
    manifest_parts(ws).write(1, manifest, [], lambda: manifest)  # as the scan stage leaves it
    model_id = "bench@random-seed0"
    store = EmbeddingStore(ws.embeddings, model_id)
    for start in range(0, n, shard_rows):
        X = rng.standard_normal((min(shard_rows, n - start), dim), dtype=np.float32)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        store.append(ids[start : start + len(X)], X)
    # The classes, then "unknown" (ontology.labels): a probe after people answered "none of these".
    W = rng.standard_normal((n_classes + 1, dim)).astype(np.float32)
    head = LinearHead(10 * W / np.linalg.norm(W, axis=1, keepdims=True), np.zeros(n_classes + 1, np.float32))
    fit = ProbeFit(head, "probe", 0.9, np.zeros((0, n_classes + 1), np.float32), {})
    result = TrainResult(n_labels=n_human, model="probe", reason="bench", probe_cv_accuracy=0.9,
                         zs_probe_cv_accuracy=None, zero_shot_accuracy=0.5, confusion=None, probe=fit,
                         temperature=1.3, threshold=0.7)
    zero_shot = ZeroShotHead(head.weight[:n_classes], np.arange(n_classes), n_classes + 1, 100.0)
    save(ws, result, zero_shot, model_id)
    events = [LabelEvent(ids[k], f"class{k % n_classes}", "bench", "bench.csv", "0" * 64, k + 2, "", 1).__dict__
              for k in rng.choice(n, size=n_human, replace=False).tolist()]
    atomic_write_text(ws.events, "".join(json.dumps(e) + "\n" for e in events))


def _child(root: str, round_no: int, floor: bool) -> None:
    """Runs in a fresh process, as every `coldstart round` does: the production stage once, then
    (``floor``) the bare head streamed over the same store."""
    ws = Workspace(Path(root))
    params = ws.params()
    t = time.perf_counter()
    result = relabel(ws, params, round_no)
    seconds = time.perf_counter() - t
    rss = peak_rss_mb()
    floor_s = None
    if floor:
        chosen = load_chosen(ws)
        if chosen is None:
            raise RuntimeError(f"no trained head in {ws.model_dir}")
        t = time.perf_counter()
        score_store(EmbeddingStore(ws.embeddings, chosen.model_id), chosen.head.predict_proba)
        floor_s = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "floor_s": floor_s, "peak_rss_mb": rss, "images": result.images,
                      "human": result.human, "churn": result.churn,
                      "table_mb": sum(p.stat().st_size for p in ws.resolved.iterdir()) / 2**20}))


def _run_child(root: str, round_no: int, floor: bool = False) -> dict[str, Any]:
    """``_child`` in a fresh Python process; its figures."""
    code = f"from coldstart.bench.relabel import _child; _child({root!r}, {round_no}, {floor})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"relabel child failed: {out.stderr[-3000:]}")
    os.sync()  # the next round finds this one's files on disk, as it would hours later
    return json.loads(out.stdout.strip().splitlines()[-1])


def drop_page_cache() -> None:
    """Empty the kernel's page cache (Linux, root), so the next read comes from disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        raise RuntimeError(f"--cold needs root on Linux: it writes /proc/sys/vm/drop_caches ({e})") from e


def bench_relabel(n: int = 1_000_000, dim: int = 512, n_classes: int = 10, n_human: int = 1000,
                  cold: bool = False) -> dict[str, Any]:
    """``cold``: empty the page cache before the timed round, so the store (N x D x 4 bytes) and
    the manifest are read from disk, as after a reboot; by default they are in memory, as when
    the embed stage wrote them recently."""
    with tempfile.TemporaryDirectory(prefix="coldstart-bench-relabel-") as tmp:
        t = time.perf_counter()
        build_workspace(Path(tmp), n, dim, n_classes, min(n_human, n))
        # In a real round the store was written in earlier rounds, long since flushed: flush the
        # 2 GB just written, or the kernel's writeback competes with the stage being timed.
        os.sync()
        print(f"bench relabel: workspace with {n:,} images, {n:,} x {dim} float32 embeddings "
              f"({n * dim * 4 / 2**30:.2f} GiB), a {n_classes}-class probe, {min(n_human, n)} human labels, "
              f"built in {time.perf_counter() - t:.1f} s", flush=True)
        first = _run_child(tmp, ROUND - 1)  # round 1: no previous table
        if cold:
            drop_page_cache()
        child = _run_child(tmp, ROUND, floor=True)  # a later round: label churn against round 1's table
    scale = 1_000_000 / n
    figures = {
        "path": "production",  # coldstart.tasks.relabel.relabel, as `coldstart round` runs it
        "page_cache": "cold" if cold else "warm",
        "relabel_1m_s": round(child["seconds"] * scale, 3),
        "peak_rss_mb": round(max(first["peak_rss_mb"], child["peak_rss_mb"]), 1),
        "first_round_1m_s": round(first["seconds"] * scale, 3),
        "bare_head_1m_s": round(child["floor_s"] * scale, 3),
        "stage_vs_bare_head": round(child["seconds"] / child["floor_s"], 2),
        "resolved_table_mb": round(child["table_mb"], 1),
        "n": n, "dim": dim, "classes": n_classes, "human_labels": child["human"], "seconds": round(child["seconds"], 3),
        "machine": f"{os.uname().machine} {os.cpu_count()} cpus",
    }
    print(f"  relabel stage, a later round (fresh process, {'cold' if cold else 'warm'} page cache): "
          f"{child['seconds']:.2f} s for {n:,} images "
          f"(round 1, no previous table: {first['seconds']:.2f} s)\n"
          f"  bare head streamed over the store:  {child['floor_s']:.2f} s  "
          f"(stage / bare head = {figures['stage_vs_bare_head']:.2f})\n"
          f"  data/labels/resolved/ (the table with its probabilities, all parts): {child['table_mb']:.1f} MiB")
    for key in ("relabel_1m_s", "peak_rss_mb"):
        print(TARGETS[key].line(figures[key]))
    return figures
