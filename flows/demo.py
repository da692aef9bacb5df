"""`coldstart demo`: real rounds on scikit-learn's bundled digits, answered by a simulated annotator.

The annotator reads each round's review CSV and fills in the true label, exactly as a person
would in a spreadsheet, then drops the file into data/inbox/. Nothing else is simulated: the
rounds are the real Prefect flow with real MLflow and DVC.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from coldstart.models.clip import ClipConfig, load_clip
from coldstart.models.errors import WeightsUnavailableError
from coldstart.tasks.commands import command
from coldstart.tasks.errors import WorkspaceError
from coldstart.tasks.relabel import read_resolved
from coldstart.tasks.workspace import Workspace

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DEMO_MARKER = ".coldstart-demo"

DEMO_PARAMS = """\
# The coldstart demo: scikit-learn's handwritten digits, ten classes described in words.
ontology:
  templates: ["a photo of {{}}.", "a scan of {{}}."]
  classes:
{classes}
model:
  name: {model}
  pretrained: {pretrained}
  device: auto
  batch_size: 32
  num_workers: auto
views:
  clahe: false
  tiles: []
scan:
  max_pixels: 100000000
round:
  budget: {budget}
  audit_fraction: 0.1
  first_strategy: typiclust
  strategy: hybrid
  confidence_threshold: 0.7
  threshold_mode: fixed
  target_precision: 0.95
  seed: 0
train:
  seed: 0
  C: 1.0
  cv_folds: 5
  min_labels: 4
tracking:
  uri: null
  experiment: coldstart-demo
"""


def demo_params(pretrained: str | None, budget: int, model: str = "ViT-B-32") -> str:
    classes = "\n".join(f'    {name}: ["the digit {name}", "a handwritten {d}", "the number {d}"]'
                        for d, name in enumerate(DIGITS))
    return DEMO_PARAMS.format(classes=classes, pretrained="null" if pretrained is None else pretrained, budget=budget,
                              model=model)


def write_digits(images_dir: Path, n: int | None = None, size: int = 128) -> dict[str, str]:
    """Write the digits as ``size``x``size`` PNGs (dark ink on white); return path -> true class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    truth: dict[str, str] = {}
    count = len(digits.images) if n is None else min(n, len(digits.images))
    for k in range(count):
        pixels = (255 - digits.images[k] * (255.0 / 16.0)).astype(np.uint8)
        rel = f"scans-{k // 200:02d}/digit-{k:04d}.png"  # no label in the name
        (images_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, "L").resize((size, size), Image.BICUBIC).save(images_dir / rel)
        truth[rel] = DIGITS[int(digits.target[k])]
    return truth


def answer_batch(review_csv: Path, truth: dict[str, str], inbox: Path, annotator: str = "sim-annotator") -> Path:
    """Fill in the review CSV's label column from the truth and drop it into the inbox."""
    with open(review_csv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows, fields = list(reader), reader.fieldnames
    for r in rows:
        r["label"], r["annotator"] = truth[r["image"]], annotator
    out = inbox / f"answers-{review_csv.stem}.csv"
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return out


def auto_label_accuracy(ws: Workspace, truth: dict[str, str]) -> float | None:
    auto = [r for r in read_resolved(ws) if r["source"] != "human"]
    return sum(truth[r["path"]] == r["label"] for r in auto) / len(auto) if auto else None


def banner(pretrained: str, error: str) -> str:
    """The warning shown when the demo falls back to random weights: the error's first sentence
    (what failed), whole, wrapped inside the box; not cut mid-sentence."""
    import textwrap

    cause = error.split(". Tried")[0].rstrip(".") + "."
    wrapped = textwrap.fill(cause, width=88, initial_indent="!!   ", subsequent_indent="!!   ")
    return BANNER.format(pretrained=pretrained, error=wrapped.removeprefix("!!   "))


BANNER = """
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!! Pretrained weights ViT-B-32/{pretrained} are not available here:
!!   {error}
!! The demo continues with RANDOM weights: its zero-shot labels are MEANINGLESS (about 10%
!! right by chance). The loop still learns from the simulated annotator: watch the probe.
!! For the real thing, fill the open_clip cache or pass --pretrained /path/to/checkpoint.
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
"""


def run_demo(workspace: Path, *, rounds: int = 3, json_path: str | None = None, budget: int = 50,
             pretrained: str | None = "laion2b_s34b_b79k", n_images: int | None = None) -> list[dict]:
    from prefect.settings import temporary_settings

    from coldstart.flows.serve import round_prefect
    from coldstart.tasks.version import init_workspace

    workspace = Path(workspace).expanduser().resolve()
    if workspace.exists() and any(workspace.iterdir()):
        if not (workspace / DEMO_MARKER).exists():
            raise WorkspaceError(f"{workspace} exists and is not a demo workspace; pick an empty or new folder")
        shutil.rmtree(workspace)  # a previous demo: start over
    if pretrained is not None:
        try:
            load_clip(ClipConfig("ViT-B-32", pretrained))
        except WeightsUnavailableError as e:
            print(banner(pretrained, str(e)), flush=True)
            pretrained = None
    ws = init_workspace(workspace, params_text=demo_params(pretrained, budget))
    (workspace / DEMO_MARKER).write_text("created by `coldstart demo`; deleted and rebuilt by the next demo\n")
    truth = write_digits(ws.images, n_images)
    print(f"demo workspace {ws.root}: {len(truth)} digit images, {rounds} rounds, batch {budget}\n", flush=True)
    header = (f"{'round':>5} {'human labels':>12} {'model-labeled':>13} {'model':>9} {'audit acc':>9} "
              f"{'95% CI':>13} {'n':>4} {'true acc':>8} {'seconds':>7}")
    # Rounds report to the workspace's own Prefect database, through a server tied to this process.
    with contextlib.ExitStack() as stack:
        stack.enter_context(temporary_settings(stack.enter_context(round_prefect(ws))))
        return _demo_rounds(ws, truth, rounds, json_path, header)


def _demo_rounds(ws, truth: dict[str, str], rounds: int, json_path: str | None, header: str) -> list[dict]:
    from coldstart.flows.round import labeling_round

    table: list[dict] = []
    lines = [header]
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        rec = labeling_round(workspace=str(ws.root))
        seconds = time.perf_counter() - t0
        true_acc = auto_label_accuracy(ws, truth)
        # The round's own audit estimate of its auto labels (out of fold, on every audit item
        # answered before it, weighted by confidence band to its auto labels: tasks/audit.py),
        # with its 95% interval and n.
        est = rec.audit if rec.audit is not None and rec.audit.n else None
        audit_acc, interval = (est.accuracy, list(est.interval)) if est else (None, None)
        if rec.select.batch_size:
            answer_batch(ws.root / rec.select.files[0], truth, ws.inbox)
        humans, auto, model = rec.intake.human_labels, rec.relabel.auto, rec.train.model
        row = dict(round=r, human_labels=humans, model_labeled=auto, model=model, audit_accuracy=audit_acc,
                   audit_interval=interval, audit_n=est.n if est else 0, true_accuracy=true_acc,
                   seconds=round(seconds, 1))
        table.append(row)
        ci = f"{100 * interval[0]:.1f}-{100 * interval[1]:.1f}%" if interval else "-"
        lines.append(f"{r:>5} {humans:>12} {auto:>13} {model:>9} "
                     f"{'-' if audit_acc is None else f'{audit_acc:.1%}':>9} {ci:>13} {row['audit_n']:>4} "
                     f"{'-' if true_acc is None else f'{true_acc:.1%}':>8} {seconds:>7.1f}")
        print("\n".join(lines if r == 1 else lines[-1:]), flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    print("\n'audit acc': the round's auto labels as estimated from the random audit items answered before it\n"
          "(every earlier round's, scored out of fold by the round's labeler and weighted by confidence band\n"
          "to the round's auto labels), with its 95% interval and n; 'true acc': the same auto labels against\n"
          "the known digits. A few audit items give wide intervals: answer more (round.review_policy).")
    with contextlib.suppress(Exception):  # derived now: the next `coldstart status` reads it back
        from coldstart.flows.status import workspace_status

        workspace_status(ws)
    print(demo_hints(ws.root, rounds))
    return table


def demo_hints(root: Path, rounds: int) -> str:
    """What to try next, as commands that run when pasted into a shell (any folder, virtualenv
    activated or not): the executables of this environment by full path, the workspace quoted."""
    import shlex
    import sys


    here, last = shlex.quote(str(root)), max(1, rounds)
    tag = f"round-{last:03d}"
    clone = shlex.quote(str(root.with_name(root.name + "-clone")))
    out = shlex.quote(str(root.with_name(f"resolved-{tag}")))
    labels = json.dumps(str(root.with_name(f"resolved-{tag}")), ensure_ascii=False)  # a Python string literal too
    read = shlex.quote(f"import coldstart; print(coldstart.read_labels({labels}))")
    return (f"\nMLflow UI:   {command('mlflow')} ui --backend-store-uri "
            f"{shlex.quote('sqlite:///' + str(root / 'mlflow.db'))}\n"
            f"Round {last}'s labels, from a fresh clone:\n  git clone {here} {clone} && cd {clone} && "
            f"git checkout {tag} && {command('dvc')} pull data/labels/resolved\n"
            f"  or: {command('dvc')} get {here} data/labels/resolved --rev {tag} -o {out}\n"
            f"  then: {shlex.quote(sys.executable)} -c {read}  (a pandas DataFrame)")
