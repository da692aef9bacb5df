"""`coldstart bench ...`: the benchmark subcommands' parsers and their one entry. Each
benchmark times the code users run (see BENCHMARKS.md); every target is defined once, in
coldstart/bench/targets.py.

This module stays light: the CLI imports it to build its parser (`coldstart --help` must not
import torch), so a benchmark's module is imported only when that benchmark runs, from the
``BENCHES`` table."""

from __future__ import annotations

import argparse
from typing import Any

from coldstart.bench.targets import TARGETS
from coldstart.tasks.commands import resolve, write_json

# Each subcommand's function, as "module:function" (imported on use: tasks/commands.py ``resolve``).
BENCHES = {
    "prelabel": "coldstart.bench.prelabel:bench_prelabel",
    "relabel": "coldstart.bench.relabel:bench_relabel",
    "select": "coldstart.bench.select:bench_select",
    "train": "coldstart.bench.train:bench_train",
    "scale": "coldstart.bench.scale:bench_scale",
    "al": "coldstart.bench.al:bench_al",
    "regions": "coldstart.bench.regions:bench_regions",
    "precision": "coldstart.bench.precision:bench_precision",
    "api": "coldstart.bench.api:bench_api",
    "discover": "coldstart.bench.discover:bench_discover",
}

# The options passed on unchanged, by their parameter's name; `_kwargs` converts the others.
OPTIONS = {
    "prelabel": ("n", "model", "pretrained", "batch_size"),
    "relabel": ("n", "dim", "cold"),
    "select": ("n", "dim", "budget"),
    "train": ("labels",),
    "scale": ("n", "budget", "keep"),
    "al": ("seeds", "seed_start", "batch", "start", "audit_seeds", "audit_seed_start", "audit_policy"),
    "discover": ("seeds", "seed_start"),
    "precision": ("n", "model", "pretrained", "batch_size"),
    "regions": ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "clip_model"),
    "api": ("model", "clients", "load_s", "soak_s", "warm_s", "requests", "forward_runs", "forward_batches", "size",
            "port"),
}


def add_bench_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `bench` command and its subcommands, on the CLI's subparsers ``sub``."""
    s = sub.add_parser("bench", help="benchmarks")
    bsub = s.add_subparsers(dest="bench", required=True)
    _bench_parser(bsub, "prelabel", "embed stage vs bare forward pass vs naive loop", prelabel=True)
    _bench_parser(bsub, "all", "prelabel and relabel benchmarks, every target side by side", prelabel=True)
    _al_options(_bench_parser(bsub, "al", "active-learning simulation on scikit-learn's digits (labels to 95%%)"))
    _relabel_options(_bench_parser(bsub, "relabel", "the relabel stage (head over the store + resolved table) on N "
                                                    "images"))
    _select_options(_bench_parser(bsub, "select", "round-1 (TypiClust) and later (hybrid) selection over N "
                                                  "embeddings"))
    _train_options(_bench_parser(bsub, "train", "the train stage at a fixed number of human labels as the pool grows"))
    _scale_options(_bench_parser(bsub, "scale", "four real rounds on N synthetic images: seconds per stage, peak RSS, "
                                                "bytes stored"))
    _precision_options(_bench_parser(bsub, "precision", "CLIP's image tower at fp32, bf16 and int8: speed, the "
                                                          "machine's fp32 limit, label agreement with fp32"))
    _regions_options(_bench_parser(bsub, "regions", "SAM automatic masks: ours vs segment-anything's generator, same "
                                                    "model (vit_t, random)"))
    _api_options(_bench_parser(bsub, "api", "coldstart api (own process) over HTTP: 1-client latency, 16-client "
                                            "throughput and a soak (errors, RSS) against the bare forward pass"))
    _discover_options(_bench_parser(bsub, "discover", "digits with 2 of 10 classes left out of the ontology: proposals, "
                                                      "their recall and the auto labels' accuracy, before and after "
                                                      "adopting them"))


def _bench_parser(bsub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_: str,
                  prelabel: bool = False) -> argparse.ArgumentParser:
    """One benchmark's subcommand: the prelabel options (``prelabel``), then --json."""
    b = bsub.add_parser(name, help=help_)
    if prelabel:
        b.add_argument("--n", type=int, default=256, help="synthetic 640x480 JPEGs")
        b.add_argument("--model", default="ViT-B-32")
        b.add_argument("--pretrained", default=None, help="weights (timing does not depend on them; default random)")
        b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--json", help="also write the figures as JSON to this file (- for stdout)")
    b.set_defaults(fn="coldstart.bench.cli:cmd_bench")
    return b


def _al_options(b: argparse.ArgumentParser) -> None:
    """`bench al`: the labels-to-95% seeds and batches, and the audit simulation's seeds and policy."""
    b.add_argument("--seeds", type=int, default=20, help="seeds of labels to 95%%")
    b.add_argument("--seed-start", type=int, default=0, help="first seed of labels to 95%% (e.g. 20: held out)")
    b.add_argument("--batch", type=int, default=10)
    b.add_argument("--start", type=int, default=10)
    b.add_argument("--audit-seeds", type=int, default=None,
                   help="seeds of the audit simulation (default 20: x rounds 2-8 = 140 pairs)")
    b.add_argument("--audit-seed-start", type=int, default=0,
                   help="first seed of the audit simulation (e.g. 20: a held-out set of seeds)")
    b.add_argument("--audit-policy", choices=["spot-check", "specialist"], default=None,
                   help="round.review_policy of the audit simulation (default specialist: 15 audit items a round)")


def _discover_options(b: argparse.ArgumentParser) -> None:
    """`bench discover`: the seeds (each hides its own two digits)."""
    b.add_argument("--seeds", type=int, default=10)
    b.add_argument("--seed-start", type=int, default=0, help="first seed (e.g. 10: held out)")


def _relabel_options(b: argparse.ArgumentParser) -> None:
    """`bench relabel`: N embeddings of a dimension, the classes, a cold page cache."""
    b.add_argument("--n", type=int, default=1_000_000)
    b.add_argument("--dim", type=int, default=512)
    b.add_argument("--classes", type=int, default=10)
    b.add_argument("--cold", action="store_true", help="empty the page cache first (Linux, root): read from disk")


def _select_options(b: argparse.ArgumentParser) -> None:
    """`bench select`: N embeddings of a dimension, the batch."""
    b.add_argument("--n", type=int, default=1_000_000)
    b.add_argument("--dim", type=int, default=512)
    b.add_argument("--budget", type=int, default=50)


def _train_options(b: argparse.ArgumentParser) -> None:
    """`bench train`: the pool sizes timed, the human labels."""
    b.add_argument("--sizes", type=int, nargs="+", default=[1797], help="pool sizes (images), each timed")
    b.add_argument("--labels", type=int, default=100)


def _scale_options(b: argparse.ArgumentParser) -> None:
    """`bench scale`: the images, the batch, a folder to keep the workspace in."""
    b.add_argument("--n", type=int, default=2000)
    b.add_argument("--budget", type=int, default=50)
    b.add_argument("--keep", help="build the workspace in this folder and keep it (default: a temporary folder)")


def _precision_options(b: argparse.ArgumentParser) -> None:
    """`bench precision`: the digits, the model and its weights, the batch."""
    b.add_argument("--n", type=int, default=512, help="digits (real images, 224x224)")
    b.add_argument("--model", default="ViT-B-32")
    b.add_argument("--pretrained", default=None, help="weights: a tag or checkpoint available here (default random)")
    b.add_argument("--batch-size", type=int, default=32)


def _regions_options(b: argparse.ArgumentParser) -> None:
    """`bench regions`: the compared image, the generator's knobs, the big image and the labeling model."""
    b.add_argument("--size", type=_wxh, default=(1024, 768), help="the compared image, WxH")
    b.add_argument("--points-per-side", type=int, default=16)
    b.add_argument("--big", type=_wxh, default=(8000, 6000), help="ours alone on this WxH, own process: peak RSS (0 skips)")
    b.add_argument("--pred-iou-thresh", type=float, default=0.1, help="random weights: keeps ~1 candidate in 7")
    b.add_argument("--stability-score-thresh", type=float, default=0.0, help="random weights score 0")
    b.add_argument("--box-nms-thresh", type=float, default=1.0, help="random masks all span the image: 0.7 keeps one")
    b.add_argument("--clip-model", default="ViT-B-32", help="labels the regions (random weights), if labeling exists")


def _api_options(b: argparse.ArgumentParser) -> None:
    """`bench api`: the model, the load (clients, phases' seconds, requests), the bare passes, the image, the port."""
    b.add_argument("--model", default="ViT-B-32", help="the workspace's model.name (random weights)")
    b.add_argument("--clients", type=int, default=16, help="concurrent clients in the load and soak phases")
    b.add_argument("--load-s", type=float, default=60.0, help="load phase: seconds measured (after --warm-s)")
    b.add_argument("--warm-s", type=float, default=5.0, help="load phase: ramp-up seconds not measured")
    b.add_argument("--soak-s", type=float, default=300.0, help="soak phase: seconds at the same load")
    b.add_argument("--requests", type=int, default=50, help="1-client phase: sequential requests (after 5 warm-up)")
    b.add_argument("--forward-runs", type=int, default=30, help="bare single-image forward passes timed")
    b.add_argument("--forward-batches", type=int, default=3, help="bare batched forward passes timed per batch size")
    b.add_argument("--size", type=_wxh, default=(640, 480), help="the posted JPEG, WxH")
    b.add_argument("--port", type=int, default=0, help="the server's port (0: a free one)")


def cmd_bench(a: argparse.Namespace) -> int:
    """Run the chosen benchmark (`bench all`: prelabel and relabel) and write its figures."""
    if a.bench == "all":
        figures = _bench_all(a)
    else:
        figures = resolve(BENCHES[a.bench])(**_kwargs(a))
    write_json(a.json, figures)
    return 0


def _bench_all(a: argparse.Namespace) -> dict[str, Any]:
    """`bench all`: the prelabel and relabel benchmarks, then every target they measured."""
    pre = resolve(BENCHES["prelabel"])(**_kwargs(a, "prelabel"))
    rel = resolve(BENCHES["relabel"])()
    print("\n  every target, measured in this run:")
    for key, target in TARGETS.items():
        if key in pre or key in rel:  # `bench al` reports its own targets
            print(target.line((pre if key in pre else rel)[key]))
    return {"prelabel": pre, "relabel": rel}


def _kwargs(a: argparse.Namespace, bench: str | None = None) -> dict[str, Any]:
    """The keyword arguments of ``bench``'s function (default: the chosen one's) from the options."""
    bench = bench or a.bench
    kwargs = {name: getattr(a, name) for name in OPTIONS[bench]}
    if bench == "train":
        kwargs["sizes"] = tuple(a.sizes)
    elif bench == "relabel":
        kwargs["n_classes"] = a.classes
    elif bench == "regions":
        kwargs.update(width=a.size[0], height=a.size[1], big=a.big if a.big[0] else None)
    return kwargs


def _wxh(text: str) -> tuple[int, int]:
    """An argparse type: "WIDTHxHEIGHT" as (width, height), "0" as (0, 0) (the option's "skip")."""
    if text == "0":
        return (0, 0)
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT, e.g. 1024x768") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: both sides must be positive")
    return (w, h)
