"""`coldstart bench scale`: what a round costs as the workspace grows, stage by stage.

A synthetic workspace of N small PNGs (the tiny model, so that everything but the model's
forward pass is what is measured) goes through four real rounds, each `coldstart round` in a
fresh process as users run it (coldstart/bench/rounds.py): round 1, a round with one answered
review batch, a round with 1% new images, and a round with nothing new (no answers, no images).
Per round: seconds per stage, the round process's peak RSS, and the bytes the round added to the
DVC cache and to the DVC remote.
"""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from coldstart.bench.rounds import run_round
from coldstart.tasks.demodata import DIGITS, demo_params
from coldstart.tasks.version import init_workspace

SIZE = 32  # pixels: small images keep decode cheap, so the workspace's own costs show


def write_pngs(folder: Path, start: int, n: int, seed: int) -> list[str]:
    """``n`` distinct random ``SIZE`` x ``SIZE`` PNGs in batches of 10,000 per folder."""
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(start, start + n):
        rel = f"batch-{k // 10_000:04d}/img-{k:08d}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / rel, compress_level=1)
        paths.append(rel)
    return paths


def folder_bytes(folder: Path) -> int:
    """The bytes of every file below ``folder`` (links not followed; files gone meanwhile skipped)."""
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _run_round(ws_root: Path, env: dict[str, str]) -> dict[str, Any]:
    """`coldstart round` in a fresh process: the figures kept of it, and the review batch it wrote."""
    run = run_round(ws_root, env)
    record = run.record
    select = record.get("select") or {}
    return {"round": record["round"], "stage_seconds": record["seconds"], "seconds_total": record["seconds_total"],
            "peak_rss_mb": run.peak_rss_mb, "batch": select["files"][0] if select.get("files") else None,
            "nothing_new": record["nothing_new"],
            "process_seconds": run.process_seconds}  # with Prefect's start-up and imports


def _answer(ws_root: Path, batch: str, classes: list[str], seed: int) -> int:
    """Fill the review CSV's labels (random classes: the answers' content does not matter here)."""
    rng = np.random.default_rng(seed)
    with open(ws_root / batch, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows, fields = list(reader), list(reader.fieldnames or [])
    for r in rows:
        r["label"], r["annotator"] = classes[int(rng.integers(len(classes)))], "bench"
    with open(ws_root / "data" / "inbox" / "answers.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return len(rows)


def bench_scale(n: int = 2000, budget: int = 50, keep: str | None = None) -> dict[str, Any]:
    """Four rounds on N images; ``keep``: leave the workspace in this folder (else a temp dir)."""
    with contextlib.ExitStack() as stack:
        tmp = None if keep else stack.enter_context(tempfile.TemporaryDirectory(prefix="coldstart-bench-scale-"))
        base = Path(keep or str(tmp))
        params = demo_params(None, budget, model="coldstart-tiny").replace("num_workers: auto", "num_workers: 0")
        ws = init_workspace(base / "ws", params_text=params)
        t = time.perf_counter()
        write_pngs(ws.images, 0, n, seed=0)
        print(f"bench scale: {n:,} {SIZE}x{SIZE} PNGs written in {time.perf_counter() - t:.1f} s", flush=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1", "PREFECT_HOME": str(base / "prefect"),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
        cache, remote = ws.root / ".dvc" / "cache", ws.root / ".dvc-remote"
        rounds: list[dict[str, Any]] = []
        answered = 0
        for kind in ("first", "answers", "1% new images", "nothing new"):
            if kind == "answers":
                answered = _answer(ws.root, rounds[-1]["batch"], DIGITS, seed=1)
            if kind == "1% new images":
                write_pngs(ws.images, n, max(1, n // 100), seed=2)
            before = folder_bytes(cache), folder_bytes(remote)
            r = _run_round(ws.root, env)
            r["bytes_added"] = {"cache": folder_bytes(cache) - before[0], "remote": folder_bytes(remote) - before[1]}
            r["kind"] = kind
            rounds.append(r)
            stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stage_seconds"].items())
            print(f"  round {r['round']} ({kind}{f', {answered} answers' if kind == 'answers' else ''}): "
                  f"{r['seconds_total']:.1f} s in the flow ({r['process_seconds']:.1f} s process), peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB, +{r['bytes_added']['cache'] / 2**20:.1f} MiB cache, "
                  f"+{r['bytes_added']['remote'] / 2**20:.1f} MiB remote\n    seconds: {stages}", flush=True)
        return {"n": n, "budget": budget, "image_size": SIZE, "machine": f"{os.uname().machine} {os.cpu_count()} cpus",
                "rounds": [{k: v for k, v in r.items() if k != "batch"} for r in rounds]}
