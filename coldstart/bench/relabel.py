"""`coldstart bench relabel`: re-label N cached embeddings by streaming the embedding store.

The store is filled with N synthetic unit vectors (written shard by shard, as the embed stage
does); then a fresh child process, which imports neither torch nor open_clip, streams it
through a zero-shot head and reports wall time and its peak RSS. Run with the page cache warm
(the store was just written): the figure is compute + memory bandwidth, not disk.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def stream_relabel(store, predict_proba) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Label every stored embedding: -> (ids, ``(N,)`` int16 label index, ``(N,)`` float32 confidence)."""
    ids: list[str] = []
    labels, conf = [], []
    for chunk_ids, X in store.iter_chunks():
        p = predict_proba(X)
        ids.extend(chunk_ids)
        labels.append(p.argmax(1).astype(np.int16))
        conf.append(p.max(1).astype(np.float32))
    return ids, np.concatenate(labels), np.concatenate(conf)


def _peak_rss_mb() -> float:
    """This process's peak resident set. VmHWM belongs to the current address space; ru_maxrss
    would also count the parent's memory when the child was forked before exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _child(store_root: str, model_id: str, n_classes: int, dim: int) -> None:
    from coldstart.models.zeroshot import ZeroShotHead
    from coldstart.tasks.store import EmbeddingStore

    rng = np.random.default_rng(1)
    w = rng.normal(size=(n_classes, dim)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    head = ZeroShotHead(w, np.arange(n_classes), n_classes, 100.0)
    store = EmbeddingStore(Path(store_root), model_id)
    t = time.perf_counter()
    ids, labels, conf = stream_relabel(store, head.predict_proba)
    seconds = time.perf_counter() - t
    peak_mb = _peak_rss_mb()
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, "n": len(ids),
                      "label_counts": np.bincount(labels, minlength=n_classes).tolist()}))


def bench_relabel(n: int = 1_000_000, dim: int = 512, n_classes: int = 10, shard_rows: int = 4096) -> dict:
    from coldstart.tasks.store import EmbeddingStore

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="coldstart-bench-relabel-") as tmp:
        store = EmbeddingStore(Path(tmp), "synthetic@bench")
        t = time.perf_counter()
        for start in range(0, n, shard_rows):
            rows = min(shard_rows, n - start)
            X = rng.standard_normal((rows, dim), dtype=np.float32)
            X /= np.linalg.norm(X, axis=1, keepdims=True)
            store.append([f"{k:064x}" for k in range(start, start + rows)], X)
        write_s = time.perf_counter() - t
        print(f"bench relabel: wrote {n:,} x {dim} float32 embeddings in {(n + shard_rows - 1) // shard_rows} "
              f"shards ({n * dim * 4 / 2**30:.2f} GiB) in {write_s:.1f} s", flush=True)
        code = f"from coldstart.bench.relabel import _child; _child({tmp!r}, 'synthetic@bench', {n_classes}, {dim})"
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                             cwd=Path(__file__).resolve().parents[1])
        if out.returncode != 0:
            raise RuntimeError(f"relabel child failed: {out.stderr[-2000:]}")
        child = json.loads(out.stdout.strip().splitlines()[-1])
    figures = {
        "relabel_1m_s": round(child["seconds"] * 1_000_000 / n, 3),
        "peak_rss_mb": round(child["peak_rss_mb"], 1),
        "n": n, "dim": dim, "classes": n_classes, "seconds": round(child["seconds"], 3),
        "machine": f"{os.uname().machine} {os.cpu_count()} cpus",
    }
    print(f"  streamed re-label of {n:,} embeddings into {n_classes} classes: {child['seconds']:.2f} s "
          f"(target <= 2 s per 1M), peak RSS of the re-labeling process {child['peak_rss_mb']:.0f} MB "
          f"(target <= 1536 MB)")
    return figures
