"""The `coldstart` command: the parser and the dispatch. Only this layer prints; user mistakes
exit 2 with a message.

Each subcommand names its handler as ``"module:function"`` (tasks/commands.py ``resolve``) (``coldstart.flows.cmd_round:cmd_round``):
``main`` imports that one module when the command runs, so ``coldstart --help`` or ``status`` never
pay for torch, Prefect and MLflow (about 6 s) that a round needs. The handlers sit in
``cmd_round`` (round, stage, demo), ``cmd_init``, ``cmd_intake`` (intake --check), ``cmd_data`` (export, report),
``cmd_models`` (regions, prompts, finetune), ``cmd_discover`` and ``cmd_labelstudio``; ``serve``, ``api`` and
``status`` hold their own.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from coldstart.bench.cli import add_bench_parser
from coldstart.flows.clilog import configure_logging, process_seconds, quiet_prefect
from coldstart.models.errors import ColdstartError
from coldstart.tasks.commands import resolve


def ws_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--workspace", "-w", default=".", help="workspace folder")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coldstart", description="Label images with CLIP, spend human effort where it pays.")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show every library's log lines on the terminal (they are always kept in the workspace's "
                        ".coldstart/logs/coldstart.log)")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_round_commands, _data_commands, _model_commands, _service_commands):
        add(sub)
    add_bench_parser(sub)
    _describe(p)
    return p


def _round_commands(sub) -> None:
    """init, round, intake --check, stage."""
    s = sub.add_parser("init", help="create a workspace: git + DVC + local remote + params.yaml")
    s.add_argument("directory")
    s.add_argument("--remote", help="DVC remote folder (default: DIR/.dvc-remote)")
    s.set_defaults(fn="coldstart.flows.cmd_init:cmd_init")

    s = sub.add_parser("round", help="run one labeling round (Prefect flow labeling_round)")
    ws_arg(s)
    s.add_argument("--json", help="also write the round summary as JSON to this file (- for stdout)")
    s.add_argument("--force", action="store_true",
                   help="run the whole round even when nothing is new (by default such a round records nothing)")
    s.add_argument("--wait", action="store_true",
                   help="hand the batch to people (into Label Studio when labelstudio.url is set), wait for their "
                        "answers, then run the next round on them")
    s.add_argument("--answers", type=int, help="--wait: answers to wait for (default labelstudio.wait_answers, "
                                               "else the whole batch)")
    s.add_argument("--timeout", type=float, metavar="MIN", help="--wait: give up waiting after this many minutes "
                                                                "(default labelstudio.wait_timeout_min)")
    # The round's Prefect server starts before the round's imports, so that the two overlap.
    s.set_defaults(fn="coldstart.flows.cmd_round:cmd_round", early="coldstart.flows.prefectserver:start_early")

    s = sub.add_parser("intake", help="check answer files as a round would, without merging anything")
    ws_arg(s)
    s.add_argument("--check", nargs="+", required=True, metavar="FILE",
                   help="CSV or Label Studio JSON files; every problem is printed, exit status 1 if any")
    s.set_defaults(fn="coldstart.flows.cmd_intake:cmd_intake")

    s = sub.add_parser("stage", help="run one stage alone (used by dvc.yaml / dvc repro)")
    s.add_argument("name", help="a stage of dvc.yaml (scan, embed, ...: an unknown name gets the list)")
    ws_arg(s)
    s.set_defaults(fn="coldstart.flows.cmd_round:cmd_stage")


def _data_commands(sub) -> None:
    """export, discover, status, report."""
    s = sub.add_parser("export", help="the labeled files as csv, an ImageFolder tree, Label Studio tasks or COCO")
    ws_arg(s)
    s.add_argument("--format", required=True, choices=["csv", "imagefolder", "labelstudio", "coco", "coco-regions"],
                   help="coco-regions: the regions table (SAM masks, one RLE annotation each) as COCO instances")
    s.add_argument("--out", required=True,
                   help="output file (csv, labelstudio, coco, coco-regions) or new folder (imagefolder)")
    s.add_argument("--round", type=int, default=None, help="as this round left the labels (default: the latest)")
    s.add_argument("--min-confidence", type=float, default=None,
                   help="leave out auto labels less confident than this (human labels are always kept)")
    s.add_argument("--link", action="store_true", help="imagefolder: symlink the images (a read-only view that "
                   "takes no space) instead of copying them")
    s.add_argument("--copy", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    s.set_defaults(fn="coldstart.flows.cmd_data:cmd_export")

    s = sub.add_parser("discover", help="the classes the rounds proposed (images unlike every class); adopt, rename "
                                        "or remove a class without losing an answer")
    ws_arg(s)
    s.add_argument("--adopt", type=int, metavar="N", help="make proposal N a class (--name, --description)")
    s.add_argument("--name", help="the class's name (--adopt: a new class, or an existing one to add the images to; "
                                  "--rename: the new name)")
    s.add_argument("--description", action="append", help="--adopt: what the class's images show, in words (CLIP "
                                                          "reads it); repeat for several")
    s.add_argument("--rename", metavar="OLD", help="rename class OLD to --name (answers restated, none lost)")
    s.add_argument("--remove", metavar="NAME", help="remove a class (its answers stay in the log and count as "
                                                    "'none of these')")
    s.set_defaults(fn="coldstart.flows.cmd_discover:cmd_discover")

    s = sub.add_parser("status", help="summarise a workspace")
    ws_arg(s)
    s.add_argument("--json", help="also write the status as JSON to this file (- for stdout)")
    s.set_defaults(fn="coldstart.flows.status:cmd_status")

    s = sub.add_parser("report", help="write a round's HTML report (data/reports/round-NNN.html) again")
    ws_arg(s)
    s.add_argument("--round", type=int, default=None, help="the round (default: the latest)")
    s.add_argument("--out", default=None, help="write it to this file instead of data/reports/round-NNN.html")
    s.set_defaults(fn="coldstart.flows.cmd_data:cmd_report")


def _model_commands(sub) -> None:
    """regions, prompts, finetune."""
    s = sub.add_parser("regions", help="segment images with SAM and label every mask with the workspace's labeler "
                       "(the last round's chosen head, else zero-shot); writes COCO instances JSON (RLE masks) and "
                       "optionally Label Studio polygon pre-annotations. Knobs: params.yaml regions")
    ws_arg(s)
    s.add_argument("images", nargs="+", metavar="IMAGE", help="image files (anywhere; those inside data/images/ are "
                   "named relative to it, as Label Studio's local files serve them)")
    s.add_argument("--coco", required=True, metavar="FILE", help="write the regions as COCO instances JSON here")
    s.add_argument("--labelstudio", metavar="FILE", default=None,
                   help="also write Label Studio tasks with polygon pre-annotations here, and label_config.xml beside it")
    s.set_defaults(fn="coldstart.flows.cmd_models:cmd_regions")

    s = sub.add_parser("prompts", help="class weight matrix, confusable-class warnings, prompt ablation")
    ws_arg(s)
    s.add_argument("--save", help="write the class weight matrix (classes x dim, float32) to this .npy file")
    s.add_argument("--ablate", action="store_true", help="accuracy of each prompt variant on the human labels")
    s.add_argument("--json", help="with --ablate: also write the ablation rows as JSON")
    s.set_defaults(fn="coldstart.flows.cmd_models:cmd_prompts")

    s = sub.add_parser("finetune", help="fine-tune the last vision blocks on the human labels (GPU)")
    ws_arg(s)
    s.add_argument("--blocks", type=int, default=2, help="last vision transformer blocks to train")
    s.add_argument("--epochs", type=int, default=3)
    s.add_argument("--lr", type=float, default=1e-5)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--out", help="checkpoint path (default: data/finetuned/<model>-ft<blocks>.safetensors)")
    s.set_defaults(fn="coldstart.flows.cmd_models:cmd_finetune")


def _service_commands(sub) -> None:
    """demo, serve, api, labelstudio."""
    s = sub.add_parser("demo", help="3 simulated rounds on scikit-learn's digits")
    s.add_argument("--workspace", "-w", default="demo-workspace", help="where to build the demo workspace")
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--budget", type=int, default=50)
    s.add_argument("--family", choices=["open_clip", "cn_clip"], default="open_clip",
                   help="open_clip: ViT-B-32, English descriptions; cn_clip: Chinese-CLIP RN50, Chinese descriptions "
                        "(pip install 'coldstart[chinese]')")
    s.add_argument("--pretrained", default="default",
                   help="the model's weights (tag or local file); default laion2b_s34b_b79k, or official for cn_clip")
    s.add_argument("--json", help="write the per-round table as JSON")
    s.set_defaults(fn="coldstart.flows.cmd_round:cmd_demo")

    s = sub.add_parser("serve", help="run rounds on a schedule through a Prefect server")
    ws_arg(s)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--cron", help="cron schedule, e.g. '0 2 * * *'")
    g.add_argument("--interval", type=float, help="seconds between rounds")
    s.add_argument("--port", type=int, default=4200, help="port of the Prefect server started when none is configured")
    s.set_defaults(fn="coldstart.flows.serve:cmd_serve")

    s = sub.add_parser("api", help="the web service: Label Studio ML backend (predict, webhook), signed image URLs, "
                                   "and the inspection endpoint POST /v1/classify")
    ws_arg(s)
    s.add_argument("--host", default="127.0.0.1", help="listen address (not loopback: reachable from other machines)")
    s.add_argument("--port", type=int, default=8750)
    s.add_argument("--max-body-mb", type=float, default=20.0, help="bigger request bodies get 413 before they are read")
    s.set_defaults(fn="coldstart.flows.api:cmd_api")

    s = sub.add_parser("labelstudio", help="Label Studio helpers")
    lsub = s.add_subparsers(dest="labelstudio", required=True)
    ls = lsub.add_parser("config", help="print the labeling config (XML) for a Label Studio project: the ontology's "
                                        "classes as choices, and polygons when regions are enabled")
    ws_arg(ls)
    ls.set_defaults(fn="coldstart.flows.cmd_labelstudio:cmd_labelstudio")
    ls = lsub.add_parser("check", help="check labelstudio.url, the token and the project title as `round --wait` "
                                       "does before it starts")
    ws_arg(ls)
    ls.set_defaults(fn="coldstart.flows.cmd_labelstudio:cmd_labelstudio")


def _describe(parser: argparse.ArgumentParser) -> None:
    """Every subcommand's help page: its one-line help as the description, and the defaults shown."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sp in action.choices.items():
                sp.description = sp.description or helps.get(name)
                sp.formatter_class = argparse.ArgumentDefaultsHelpFormatter
                _describe(sp)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.started = time.monotonic() - process_seconds()  # a round's printed time counts from the process start
    configure_logging(args)
    if not args.verbose:
        # Prefect logs a failed run with its traceback; the Prefect UI keeps it (API handler),
        # the terminal gets our one-line message instead.
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).propagate = False
    quiet_prefect()
    try:
        if getattr(args, "early", None):  # work to start before the command's own imports
            resolve(args.early)(args)
        return resolve(args.fn)(args)
    except ColdstartError as e:
        print(f"coldstart: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("coldstart: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
