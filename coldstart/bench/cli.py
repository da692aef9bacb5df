"""`coldstart bench ...`: the benchmark subcommands' parsers and their one entry. Each
benchmark times the code users run (see BENCHMARKS.md); every target is defined once, in
coldstart/bench/targets.py."""

from __future__ import annotations

import argparse

from coldstart.tasks.commands import write_json


def add_bench_parser(sub) -> None:
    """The `bench` command and its subcommands, on the CLI's subparsers ``sub``."""
    s = sub.add_parser("bench", help="benchmarks")
    bsub = s.add_subparsers(dest="bench", required=True)

    def bench_parser(name: str, help_: str, prelabel: bool = False):
        b = bsub.add_parser(name, help=help_)
        if prelabel:
            b.add_argument("--n", type=int, default=256, help="synthetic 640x480 JPEGs")
            b.add_argument("--model", default="ViT-B-32")
            b.add_argument("--pretrained", default=None, help="weights (timing does not depend on them; default random)")
            b.add_argument("--batch-size", type=int, default=32)
        b.add_argument("--json", help="also write the figures as JSON to this file (- for stdout)")
        b.set_defaults(fn=cmd_bench)
        return b

    bench_parser("prelabel", "embed stage vs bare forward pass vs naive loop", prelabel=True)
    bench_parser("all", "prelabel and relabel benchmarks, every target side by side", prelabel=True)
    b = bench_parser("al", "active-learning simulation on scikit-learn's digits (labels to 95%%)")
    b.add_argument("--seeds", type=int, default=5)
    b.add_argument("--batch", type=int, default=10)
    b.add_argument("--start", type=int, default=10)
    b.add_argument("--audit-seeds", type=int, default=None,
                   help="seeds of the audit simulation (default: 4 per --seeds: 20 seeds x rounds 2-8 = 140 pairs)")
    b.add_argument("--audit-seed-start", type=int, default=0,
                   help="first seed of the audit simulation (e.g. 20: a held-out set of seeds)")
    b.add_argument("--audit-policy", choices=["spot-check", "specialist"], default=None,
                   help="round.review_policy of the audit simulation (default specialist: 15 audit items a round)")
    b = bench_parser("relabel", "the relabel stage (head over the store + resolved table) on N images")
    b.add_argument("--n", type=int, default=1_000_000)
    b.add_argument("--dim", type=int, default=512)
    b.add_argument("--classes", type=int, default=10)
    b.add_argument("--cold", action="store_true", help="empty the page cache first (Linux, root): read from disk")
    b = bench_parser("select", "round-1 (TypiClust) and later (hybrid) selection over N embeddings")
    b.add_argument("--n", type=int, default=1_000_000)
    b.add_argument("--dim", type=int, default=512)
    b.add_argument("--budget", type=int, default=50)
    b = bench_parser("train", "the train stage at a fixed number of human labels as the pool grows")
    b.add_argument("--sizes", type=int, nargs="+", default=[1797], help="pool sizes (images), each timed")
    b.add_argument("--labels", type=int, default=100)
    b = bench_parser("scale", "four real rounds on N synthetic images: seconds per stage, peak RSS, bytes stored")
    b.add_argument("--n", type=int, default=2000)
    b.add_argument("--budget", type=int, default=50)
    b.add_argument("--keep", help="build the workspace in this folder and keep it (default: a temporary folder)")
    b = bench_parser("regions", "SAM automatic masks: ours vs segment-anything's generator, same model (vit_t, random)")
    b.add_argument("--size", type=_wxh, default=(1024, 768), help="the compared image, WxH")
    b.add_argument("--points-per-side", type=int, default=16)
    b.add_argument("--big", type=_wxh, default=(8000, 6000), help="ours alone on this WxH, own process: peak RSS (0 skips)")
    b.add_argument("--pred-iou-thresh", type=float, default=0.1, help="random weights: keeps ~1 candidate in 7")
    b.add_argument("--stability-score-thresh", type=float, default=0.0, help="random weights score 0")
    b.add_argument("--box-nms-thresh", type=float, default=1.0, help="random masks all span the image: 0.7 keeps one")
    b.add_argument("--clip-model", default="ViT-B-32", help="labels the regions (random weights), if labeling exists")
    b = bench_parser("api", "coldstart api (own process) over HTTP: 1-client latency, 16-client throughput and a soak "
                            "(errors, RSS) against the bare forward pass")
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


def cmd_bench(a) -> int:
    if a.bench == "all":
        from coldstart.bench.prelabel import bench_prelabel
        from coldstart.bench.relabel import bench_relabel
        from coldstart.bench.targets import TARGETS

        pre = bench_prelabel(n=a.n, model=a.model, pretrained=a.pretrained, batch_size=a.batch_size)
        rel = bench_relabel()
        print("\n  every target, measured in this run:")
        for key, target in TARGETS.items():
            if key in pre or key in rel:  # `bench al` reports its own targets
                print(target.line((pre if key in pre else rel)[key]))
        write_json(a.json, {"prelabel": pre, "relabel": rel})
        return 0
    if a.bench == "al":
        from coldstart.bench.al import bench_al

        figures = bench_al(seeds=a.seeds, batch=a.batch, start=a.start, audit_seeds=a.audit_seeds,
                           audit_seed_start=a.audit_seed_start, audit_policy=a.audit_policy)
    elif a.bench == "select":
        from coldstart.bench.select import bench_select

        figures = bench_select(n=a.n, dim=a.dim, budget=a.budget)
    elif a.bench == "train":
        from coldstart.bench.train import bench_train

        figures = bench_train(sizes=tuple(a.sizes), labels=a.labels)
    elif a.bench == "scale":
        from coldstart.bench.scale import bench_scale

        figures = bench_scale(n=a.n, budget=a.budget, keep=a.keep)
    elif a.bench == "regions":
        from coldstart.bench.regions import bench_regions

        figures = bench_regions(width=a.size[0], height=a.size[1], points_per_side=a.points_per_side,
                                big=a.big if a.big[0] else None, pred_iou_thresh=a.pred_iou_thresh,
                                stability_score_thresh=a.stability_score_thresh, box_nms_thresh=a.box_nms_thresh,
                                clip_model=a.clip_model)
    elif a.bench == "api":
        from coldstart.bench.api import bench_api

        figures = bench_api(model=a.model, clients=a.clients, load_s=a.load_s, soak_s=a.soak_s, warm_s=a.warm_s,
                            requests=a.requests, forward_runs=a.forward_runs, forward_batches=a.forward_batches,
                            size=a.size, port=a.port)
    elif a.bench == "relabel":
        from coldstart.bench.relabel import bench_relabel

        figures = bench_relabel(n=a.n, dim=a.dim, n_classes=a.classes, cold=a.cold)
    else:
        from coldstart.bench.prelabel import bench_prelabel

        figures = bench_prelabel(n=a.n, model=a.model, pretrained=a.pretrained, batch_size=a.batch_size)
    write_json(a.json, figures)
    return 0


def _wxh(text: str) -> tuple[int, int]:
    if text == "0":
        return (0, 0)
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT, e.g. 1024x768") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: both sides must be positive")
    return (w, h)
