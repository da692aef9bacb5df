"""`coldstart bench prelabel`: the embed stage vs the bare forward pass vs a naive loop.

All three run in one process on the same N synthetic 640x480 JPEGs, so the ratios hold for
the machine they ran on. Weights do not change the compute, so random weights are the default.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from coldstart.bench.targets import TARGETS
from coldstart.models.clip import ClipConfig, load_clip
from coldstart.models.zeroshot import text_weights


def synthetic_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Smooth random 640x480 colour images (JPEG-compressible like photos, unlike noise)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((640, 480), Image.BICUBIC)
        p = folder / f"img-{k:05d}.jpg"
        img.save(p, quality=90)
        paths.append(p)
    return paths


def _forward_img_s(clip, paths: list[Path], batch_size: int, dtype: torch.dtype | None = None) -> float:
    """Bare ``encode_image`` throughput on ready tensors (autocast to ``dtype`` if given)."""
    import dataclasses

    clip = dataclasses.replace(clip, autocast_dtype=dtype)
    pixels = torch.stack([clip.preprocess(Image.open(p).convert("RGB")) for p in paths])
    clip.encode_images(pixels[:batch_size])  # warm-up
    t = time.perf_counter()
    for i in range(0, len(pixels), batch_size):
        clip.encode_images(pixels[i : i + batch_size])
    if clip.device.type == "cuda":
        torch.cuda.synchronize()
    return len(pixels) / (time.perf_counter() - t)


def _naive_img_s(clip, paths: list[Path], prompts: list[list[str]]) -> float:
    """What a first script does: per image, decode fully, preprocess, re-encode prompts, batch 1."""
    t = time.perf_counter()
    for p in paths:
        weights = text_weights(clip, prompts)
        emb = clip.encode_images(clip.preprocess(Image.open(p).convert("RGB")).unsqueeze(0))
        (emb @ weights.T).argmax()
    return len(paths) / (time.perf_counter() - t)


def bench_prelabel(n: int = 256, model: str = "ViT-B-32", pretrained: str | None = None, batch_size: int = 32,
                   naive_n: int | None = None) -> dict:
    from coldstart.flows.demo import DIGITS, demo_params
    from coldstart.flows.round import labeling_round
    from coldstart.tasks.version import init_workspace

    params = demo_params(pretrained, budget=10, model=model).replace("batch_size: 32", f"batch_size: {batch_size}")
    with tempfile.TemporaryDirectory(prefix="coldstart-bench-") as tmp:
        ws = init_workspace(Path(tmp) / "ws", params_text=params)
        paths = synthetic_jpegs(ws.images, n)
        clip = load_clip(ClipConfig(model, pretrained))
        ontology = ws.params().ontology
        print(f"bench prelabel: {n} synthetic 640x480 JPEGs, {model} ({clip.model_id}), batch {batch_size}, "
              f"{torch.get_num_threads()} torch threads, device {clip.device}", flush=True)
        forward = _forward_img_s(clip, paths, batch_size, clip.autocast_dtype)
        print(f"  bare forward pass on ready tensors ({clip.autocast_dtype or 'fp32'}): {forward:8.2f} img/s", flush=True)
        # The precision choice is measured, not assumed: the other candidate on this device.
        other = torch.bfloat16 if clip.device.type == "cpu" else (None if clip.autocast_dtype else torch.float16)
        other_s = _forward_img_s(clip, paths[: max(batch_size * 2, 1)], batch_size, other)
        print(f"  bare forward pass with {other or 'fp32'} instead: {other_s:8.2f} img/s", flush=True)
        t0 = time.perf_counter()
        record = labeling_round(workspace=str(ws.root))
        round_s = time.perf_counter() - t0
        embed = record.embed.images_per_s
        print(f"  embed stage (decode+preprocess+encode+store): {embed:8.2f} img/s", flush=True)
        naive_paths = paths[: naive_n or min(n, 16)]
        naive = _naive_img_s(clip, naive_paths, ontology.prompts())
        print(f"  naive loop ({len(naive_paths)} images, {len(DIGITS)} classes x prompts re-encoded): {naive:8.2f} img/s")
    overhead = round_s - n / forward
    in_stages = sum(record.seconds.values())
    figures = {
        "embed_img_s": round(embed, 3),
        "forward_img_s": round(forward, 3),
        "naive_img_s": round(naive, 3),
        "round_overhead_s": round(overhead, 2),
        "embed_vs_forward": round(embed / forward, 3),
        "embed_vs_naive": round(embed / naive, 2),
        "round_seconds": round(round_s, 2),
        "precision": str(clip.autocast_dtype or "fp32"),
        "forward_other_precision": {"dtype": str(other or "fp32"), "img_s": round(other_s, 3)},
        # Outside our stages: Prefect's temporary API server starting in this process (first
        # flow run only; ~1 s per run against a running `prefect server`), flow bookkeeping.
        "prefect_and_flow_s": round(round_s - in_stages, 2),
        "stage_overhead_s": round(in_stages - n / forward, 2),
        "stage_seconds": {k: round(v, 2) for k, v in record.seconds.items()},
        "n_images": n,
        "model": model,
        "batch_size": batch_size,
        "device": str(clip.device),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
    }
    print("\n" + TARGETS["embed_vs_forward"].line(figures["embed_vs_forward"]) + "\n"
          + TARGETS["embed_vs_naive"].line(figures["embed_vs_naive"]) +
          f"\n  round overhead beyond model compute: {overhead:.1f} s of a {round_s:.1f} s round "
          f"({figures['stage_overhead_s']:.1f} s in our stages, {figures['prefect_and_flow_s']:.1f} s Prefect start-up "
          f"and flow bookkeeping)"
          f"\n  stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in figures["stage_seconds"].items()))
    return figures
