"""`coldstart bench precision`: CLIP's image tower at fp32, bf16 and int8, side by side.

On N of scikit-learn's digits (real images, written as the demo writes them), in one process:

- **Speed**: the bare forward pass (``LoadedClip.encode_images`` on ready tensors, batch 32)
  at each precision, as milliseconds per image, and the embed stage's own images per second
  (``tasks.embed.embed``: decode, preprocess, encode, store) at fp32 and at the fastest one.
- **The limit**: an fp32 GEMM (2048 x 2048 x 2048, torch's own BLAS) timed in the same run,
  and the model's multiply-adds per image (torch's FLOP counter), so ``frac_of_peak`` says how
  close fp32 runs to the machine's fp32 limit.
- **Agreement**: every precision embeds the same images into one workspace through the embed
  stage (each precision is its own model id, so its own store), then the production scoring
  (``tasks.relabel.score_store``) applies the zero-shot head (``tasks.heads.zero_shot_head``)
  and a probe trained on 10 human labels per class (``models.probe.fit_probe``, fitted on that
  precision's own embeddings as a round would) to every stored image: ``agreement`` is the
  share of images whose top-1 label equals fp32's, the lower of the two heads.
  ``min_cosine`` is the lowest cosine between an image's embedding and its fp32 one.

Weights: random unless ``--pretrained`` names a tag or checkpoint available here; with random
weights the zero-shot head separates little (its margins are tiny), so its agreement is the
harder test. The figures record which weights were used, the CPU model and flags.
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

from coldstart.bench.load import MachineLoad
from coldstart.bench.targets import TARGETS
from coldstart.models.clip import LoadedClip, load_clip, resolve_precision
from coldstart.models.probe import LinearHead, fit_probe
from coldstart.models.quant import cpu_flags, cpu_model
from coldstart.tasks.demodata import DIGITS, demo_params, write_digits
from coldstart.tasks.embed import clip_config, embed
from coldstart.tasks.heads import zero_shot_head
from coldstart.tasks.manifest import read_manifest
from coldstart.tasks.relabel import score_store
from coldstart.tasks.scan import scan
from coldstart.tasks.store import EmbeddingStore
from coldstart.tasks.version import init_workspace
from coldstart.tasks.workspace import Workspace

PRECISIONS = ("fp32", "bf16", "int8")
_AGREEMENT_FLOOR, _COSINE_FLOOR = 0.995, 0.999  # what "holds accuracy" means (the targets)


def gemm_gflops(n: int = 2048, reps: int = 5) -> float:
    """The machine's fp32 GEMM rate now, GFLOP/s: the best of ``reps`` n x n x n products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def image_gflop(clip: LoadedClip) -> float:
    """The image tower's floating-point operations per image (GFLOP, multiply and add counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, clip.image_size, clip.image_size)
    with FlopCounterMode(display=False) as counter:
        clip.encode_images(x)
    return counter.get_total_flops() / 1e9


def _ms_per_img(clip: LoadedClip, pixels: torch.Tensor, batch: int) -> float:
    """Bare ``encode_images`` time per image on ready tensors (after one warm-up batch)."""
    clip.encode_images(pixels[:batch])
    t = time.perf_counter()
    for i in range(0, len(pixels), batch):
        clip.encode_images(pixels[i : i + batch])
    return 1000 * (time.perf_counter() - t) / len(pixels)


def _workspace(root: Path, n: int, model: str, pretrained: str | None) -> tuple[Workspace, dict[str, str]]:
    """A scanned workspace of ``n`` digits; returns it and image path -> true class."""
    ws = init_workspace(root, params_text=demo_params(pretrained, budget=10, model=model))
    truth = write_digits(ws.images, n, size=224)
    scan(ws, ws.params().scan, 1)
    return ws, truth


def _embedded(ws: Workspace, precision: str) -> tuple[LoadedClip, float, EmbeddingStore]:
    """Embed every image at ``precision`` through the embed stage: the model, img/s, its store."""
    params = ws.params()
    cfg = params.model.model_copy(update={"precision": precision})
    clip = load_clip(clip_config(cfg))
    result = embed(ws, clip, cfg, params.views, progress=False, limits=params.scan)
    return clip, result.images_per_s, EmbeddingStore(ws.embeddings, clip.model_id, params.views.key("global"))


def _labels(ws: Workspace, truth: dict[str, str], store: EmbeddingStore, clip: LoadedClip,
            fp32_probe: LinearHead | None, seed: int = 0) -> dict[str, Any]:
    """Top-1 labels of every stored image (sorted by id) from the zero-shot head, from a probe
    trained on this store's embeddings of 10 labeled images per class (a round after a change of
    precision retrains), and from ``fp32_probe`` (the fp32 store's probe; None: this is fp32),
    all three applied by the production scoring."""
    params = ws.params()
    zs, _ = zero_shot_head(ws, params, clip)
    raw_ids, zs_probs = score_store(store, zs.predict_proba)
    order = np.argsort(raw_ids)
    ids = [i.decode() for i in raw_ids[order]]
    _, X = store.load(ids)
    true_of = {row["image_id"]: truth[row["path"]] for row in read_manifest(ws)}
    y = np.array([DIGITS.index(true_of[i]) for i in ids])
    rng = np.random.default_rng(seed)
    labeled = np.concatenate([rng.choice(np.flatnonzero(y == c), min(10, int((y == c).sum()) // 2), replace=False)
                              for c in np.unique(y)])
    probe = fit_probe(X[labeled], y[labeled], len(DIGITS), center=X.mean(0), scale=X.std(0) + 1e-6).head
    _, probe_probs = score_store(store, probe.predict_proba)
    _, fixed_probs = score_store(store, (fp32_probe or probe).predict_proba)
    return {"zero_shot": zs_probs[order].argmax(1), "retrained_probe": probe_probs[order].argmax(1),
            "probe": fixed_probs[order].argmax(1), "probe_head": probe, "ids": np.array(ids), "X": X, "truth": y}


def bench_precision(n: int = 512, model: str = "ViT-B-32", pretrained: str | None = None,
                    batch_size: int = 32) -> dict[str, Any]:
    """Every precision on ``n`` digits with ``model`` (``pretrained`` weights, None: random):
    speed, the limit, agreement with fp32; print and return the figures."""
    with MachineLoad() as load:
        figures = _run(n, model, pretrained, batch_size)
    figures.update(load.figures())
    print(load.line())
    return figures


def _run(n: int, model: str, pretrained: str | None, batch_size: int) -> dict[str, Any]:
    gflops = gemm_gflops()
    with tempfile.TemporaryDirectory(prefix="coldstart-bench-") as tmp:
        ws, truth = _workspace(Path(tmp) / "ws", n, model, pretrained)
        print(f"bench precision: {n} digits at 224x224, {model} ({'random weights' if pretrained is None else pretrained})"
              f", batch {batch_size}, {torch.get_num_threads()} torch threads; fp32 GEMM {gflops:.0f} GFLOP/s",
              flush=True)
        runs: dict[str, dict[str, Any]] = {}
        for precision in PRECISIONS:
            clip, embed_img_s, store = _embedded(ws, precision)
            pixels = torch.stack([clip.preprocess(Image.open(ws.images / p).convert("RGB"))
                                  for p in sorted(truth)[: 4 * batch_size]])
            ms = _ms_per_img(clip, pixels, batch_size)
            fp32_probe = runs["fp32"]["probe_head"] if runs else None
            runs[precision] = {"clip": clip, "ms": ms, "embed_img_s": embed_img_s,
                               **_labels(ws, truth, store, clip, fp32_probe)}
            print(f"  {precision:5s} {ms:7.1f} ms/img bare forward, embed stage {embed_img_s:6.1f} img/s "
                  f"({clip.model_id})", flush=True)
        gflop = image_gflop(runs["fp32"]["clip"])
    return _figures(runs, gflops, gflop, n, model, pretrained, batch_size)


def _figures(runs: dict[str, dict[str, Any]], gflops: float, gflop: float, n: int, model: str,
             pretrained: str | None, batch_size: int) -> dict[str, Any]:
    """Agreement and cosine of each precision with fp32; the best that holds both; print them."""
    ref = runs["fp32"]
    held: dict[str, dict[str, float]] = {}
    for precision, r in runs.items():
        assert (r["ids"] == ref["ids"]).all()
        cos = float((r["X"] * ref["X"]).sum(1).min())
        to_neighbour = float(np.median(np.linalg.norm(r["X"] - ref["X"], axis=1) / _neighbour_distance(ref["X"])))
        agree = {head: float((r[head] == ref[head]).mean()) for head in ("zero_shot", "probe", "retrained_probe")}
        acc = {head: float((r[head] == r["truth"]).mean()) for head in ("zero_shot", "probe", "retrained_probe")}
        held[precision] = {"min_cosine": cos, "agreement": min(agree["zero_shot"], agree["probe"]),
                           "error_to_neighbour": to_neighbour,
                           **{f"agreement_{k}": v for k, v in agree.items()},
                           **{f"accuracy_{k}": v for k, v in acc.items()}}
        print(f"  {precision:5s} agreement with fp32: zero-shot {agree['zero_shot']:.4f}, fp32's probe "
              f"{agree['probe']:.4f}, probe retrained {agree['retrained_probe']:.4f}; min cosine {cos:.5f}; "
              f"error / nearest other image {to_neighbour:.3f}; retrained probe's accuracy {acc['retrained_probe']:.3f}")
    ok = [p for p in runs if held[p]["agreement"] >= _AGREEMENT_FLOOR and held[p]["min_cosine"] >= _COSINE_FLOOR]
    best = min(ok, key=lambda p: runs[p]["ms"])
    fp32_ms = ref["ms"]
    figures = {
        **{f"{p}_ms_per_img": round(r["ms"], 2) for p, r in runs.items()},
        "best": best, "speedup": round(fp32_ms / runs[best]["ms"], 2),
        "agreement": round(held[best]["agreement"], 4), "min_cosine": round(held[best]["min_cosine"], 5),
        "gemm_gflops": round(gflops, 1), "image_gflop": round(gflop, 4),
        "frac_of_peak": round(gflop / (fp32_ms / 1000) / gflops, 3),
        "embed_img_s": {p: round(r["embed_img_s"], 2) for p, r in runs.items()},
        "per_precision": {p: {k: round(v, 5) for k, v in h.items()} for p, h in held.items()},
        "auto_on_this_cpu": resolve_precision("auto", torch.device("cpu")),
        # How packed the fp32 embeddings are, and each precision's error against that spacing:
        # random weights put every image at cosine ~0.99 of the others, so an error that a real
        # model's spread would dwarf moves images across a probe's boundaries.
        "median_pairwise_cosine": round(_median_pairwise_cosine(ref["X"]), 4),
        "settings": {"n_images": n, "model": model, "weights": pretrained or "random (seed 0)",
                     "batch_size": batch_size, "torch_threads": torch.get_num_threads()},
        "machine": machine(),
    }
    print(f"  best holding agreement >= {_AGREEMENT_FLOOR} and cosine >= {_COSINE_FLOOR}: {best}; fp32 runs at "
          f"{figures['frac_of_peak']:.0%} of the fp32 GEMM rate ({gflop:.2f} GFLOP/img); auto here: "
          f"{figures['auto_on_this_cpu']}")
    for key in ("speedup", "agreement", "min_cosine"):
        print(TARGETS[f"precision_{key}"].line(figures[key]))
    return figures


def _median_pairwise_cosine(X: np.ndarray, limit: int = 1000) -> float:
    X = X[:limit]
    return float(np.median((X @ X.T)[np.triu_indices(len(X), 1)]))


def _neighbour_distance(X: np.ndarray) -> np.ndarray:
    """(N,) distance of each unit embedding to its nearest other one (N is a few thousand here)."""
    d = 2 - 2 * (X @ X.T)
    np.fill_diagonal(d, np.inf)
    return np.sqrt(np.maximum(d.min(1), 0))


def machine() -> dict[str, Any]:
    """The CPU model, the flags that decide precision, cores and torch."""
    model = cpu_model() or platform.processor() or platform.machine()
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "asimddp", "i8mm")
    return {"cpu": model, "flags": sorted(f for f in cpu_flags() if f in wanted), "cpus": os.cpu_count(),
            "torch": torch.__version__, "quantized_engine": torch.backends.quantized.engine}

