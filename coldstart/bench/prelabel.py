"""`coldstart bench prelabel`: the embed stage vs the bare forward pass vs a naive loop.

All three run on the same N synthetic 640x480 JPEGs on one machine, so the ratios hold for the
machine they ran on: the bare forward pass, the naive loop and the embed stage (the stage's own
function, ``tasks.embed.embed``, on a scanned workspace of the same images, with the model the
forward pass warmed) in this process; and a whole round, `coldstart round` in its own process as
users run it, for the round's overhead (process start, imports, the Prefect server, the model's
construction, bookkeeping). Weights do not change the compute, so random weights are the default.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from coldstart.bench.rounds import RoundRun, run_round
from coldstart.bench.targets import TARGETS
from coldstart.models.clip import ClipConfig, ClipModel, LoadedClip, load_clip
from coldstart.models.zeroshot import text_weights
from coldstart.tasks.demodata import DIGITS, demo_params
from coldstart.tasks.embed import clip_config, embed
from coldstart.tasks.scan import scan
from coldstart.tasks.version import init_workspace


def synthetic_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Smooth random 640x480 colour images (JPEG-compressible like photos, unlike noise)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC)
        p = folder / f"img-{k:05d}.jpg"
        img.save(p, quality=90)
        paths.append(p)
    return paths


def _forward_img_s(clip: LoadedClip, paths: list[Path], batch_size: int) -> float:
    """Bare ``encode_image`` throughput on ready tensors, at the model's precision."""
    pixels = torch.stack([clip.preprocess(Image.open(p).convert("RGB")) for p in paths])
    clip.encode_images(pixels[:batch_size])  # warm-up
    t = time.perf_counter()
    for i in range(0, len(pixels), batch_size):
        clip.encode_images(pixels[i : i + batch_size])
    if clip.device.type == "cuda":
        torch.cuda.synchronize()
    return len(pixels) / (time.perf_counter() - t)


def _naive_img_s(clip: ClipModel, paths: list[Path], prompts: list[list[str]]) -> float:
    """What a first script does: per image, decode fully, preprocess, re-encode prompts, batch 1."""
    t = time.perf_counter()
    for p in paths:
        weights = text_weights(clip, prompts)
        emb = clip.encode_images(clip.preprocess(Image.open(p).convert("RGB")).unsqueeze(0))
        (emb @ weights.T).argmax()
    return len(paths) / (time.perf_counter() - t)


def bench_prelabel(n: int = 256, model: str = "ViT-B-32", pretrained: str | None = None, batch_size: int = 32,
                   naive_n: int | None = None) -> dict[str, Any]:
    """The three throughputs on ``n`` images (the naive loop on ``naive_n``, default up to 16)
    with ``model`` and ``pretrained`` weights (None: random) at ``batch_size``; print and return
    the figures."""
    params = demo_params(pretrained, budget=10, model=model).replace("batch_size: 32", f"batch_size: {batch_size}")
    with tempfile.TemporaryDirectory(prefix="coldstart-bench-") as tmp:
        ws = init_workspace(Path(tmp) / "ws", params_text=params)
        paths = synthetic_jpegs(ws.images, n)
        clip = load_clip(ClipConfig(model, pretrained))
        ontology = ws.params().ontology
        print(f"bench prelabel: {n} synthetic 640x480 JPEGs, {model} ({clip.model_id}), batch {batch_size}, "
              f"{torch.get_num_threads()} torch threads, device {clip.device}", flush=True)
        forward = _forward_img_s(clip, paths, batch_size)
        print(f"  bare forward pass on ready tensors ({clip.precision}): {forward:8.2f} img/s", flush=True)
        run = run_round(ws.root)
        embed = _embed_img_s(Path(tmp) / "embed-ws", params, paths)
        print(f"  embed stage (decode+preprocess+encode+store): {embed:8.2f} img/s", flush=True)
        naive_paths = paths[: naive_n or min(n, 16)]
        naive = _naive_img_s(clip, naive_paths, ontology.prompts())
        print(f"  naive loop ({len(naive_paths)} images, {len(DIGITS)} classes x prompts re-encoded): "
              f"{naive:8.2f} img/s")
    figures = {
        "embed_img_s": round(embed, 3),
        "forward_img_s": round(forward, 3),
        "naive_img_s": round(naive, 3),
        "embed_vs_forward": round(embed / forward, 3),
        "embed_vs_naive": round(embed / naive, 2),
        **_round_figures(run, n, forward),
        "precision": clip.precision,  # `coldstart bench precision` compares them
        "n_images": n,
        "model": model,
        "batch_size": batch_size,
        "device": str(clip.device),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
    }
    _print_summary(figures)
    return figures


def _embed_img_s(folder: Path, params_text: str, paths: list[Path]) -> float:
    """The embed stage's images per second (its own timing: decode, preprocess, encode, store) on
    a workspace holding ``paths``, scanned as a round would, with the configured model built
    (and warmed by the forward pass) beforehand, as in a long-running process."""
    ws = init_workspace(folder, params_text=params_text)
    for p in paths:
        os.link(p, ws.images / p.name)
    params = ws.params()
    scan(ws, params.scan, 1)
    clip = load_clip(clip_config(params.model))
    return embed(ws, clip, params.model, params.views, progress=False, limits=params.scan).images_per_s


def _round_figures(run: RoundRun, n: int, forward: float) -> dict[str, Any]:
    """Where the round's time went beyond the model's compute (``n`` images at ``forward`` img/s)."""
    round_s, stage_seconds = run.process_seconds, run.record["seconds"]
    in_stages = sum(stage_seconds.values())
    return {
        "round_overhead_s": round(round_s - n / forward, 2),
        "round_seconds": round(round_s, 2),
        # Outside our stages: the `coldstart round` process's start-up (interpreter, imports), the
        # Prefect API server it starts for the round, flow bookkeeping, the status it derives after.
        "prefect_and_flow_s": round(round_s - in_stages, 2),
        "stage_overhead_s": round(in_stages - n / forward, 2),
        "stage_seconds": {k: round(v, 2) for k, v in stage_seconds.items()},
    }


def _print_summary(figures: dict[str, Any]) -> None:
    """The two targets' lines, the round's overhead and its stages' seconds."""
    overhead, round_s = figures["round_overhead_s"], figures["round_seconds"]
    print("\n" + TARGETS["embed_vs_forward"].line(figures["embed_vs_forward"]) + "\n"
          + TARGETS["embed_vs_naive"].line(figures["embed_vs_naive"]) +
          f"\n  round overhead beyond model compute: {overhead:.1f} s of a {round_s:.1f} s round "
          f"({figures['stage_overhead_s']:.1f} s in our stages, {figures['prefect_and_flow_s']:.1f} s process and "
          f"Prefect start-up and flow bookkeeping)"
          f"\n  stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in figures["stage_seconds"].items()))
