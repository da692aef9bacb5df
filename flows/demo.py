"""`coldstart demo`: real rounds on scikit-learn's bundled digits, answered by a simulated annotator.

The annotator reads each round's review CSV and fills in the true label, exactly as a person
would in a spreadsheet, then drops the file into data/inbox/. Nothing else is simulated: the
rounds are the real Prefect flow with real MLflow and DVC. The digits, their params.yaml and the
simulated annotator are coldstart.tasks.demodata (shared with the benchmarks and tests).
"""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import sys
import textwrap
import time
from pathlib import Path

from prefect.settings import temporary_settings

from coldstart.flows.prefectserver import round_prefect
from coldstart.flows.round import labeling_round
from coldstart.flows.status import workspace_status
from coldstart.models.clip import ClipConfig, load_clip
from coldstart.models.errors import WeightsUnavailableError
from coldstart.tasks.commands import command
from coldstart.tasks.demodata import answer_batch, demo_params, write_digits
from coldstart.tasks.errors import WorkspaceError
from coldstart.tasks.relabel import read_resolved
from coldstart.tasks.version import init_workspace
from coldstart.tasks.workspace import Workspace

DEMO_MARKER = ".coldstart-demo"


def auto_label_accuracy(ws: Workspace, truth: dict[str, str]) -> float | None:
    auto = [r for r in read_resolved(ws) if r["source"] != "human"]
    return sum(truth[r["path"]] == r["label"] for r in auto) / len(auto) if auto else None


def banner(pretrained: str, error: str, model: str = "ViT-B-32") -> str:
    """The warning shown when the demo falls back to random weights: the error's first sentence
    (what failed), whole, wrapped inside the box; not cut mid-sentence."""
    cause = error.split(". Tried")[0].rstrip(".") + "."
    wrapped = textwrap.fill(cause, width=88, initial_indent="!!   ", subsequent_indent="!!   ")
    return BANNER.format(pretrained=pretrained, error=wrapped.removeprefix("!!   "), model=model)


BANNER = """
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!! Pretrained weights {model}/{pretrained} are not available here:
!!   {error}
!! The demo continues with RANDOM weights: its zero-shot labels are MEANINGLESS (about 10%
!! right by chance). The loop still learns from the simulated annotator: watch the probe.
!! For the real thing, fill the model's cache or pass --pretrained /path/to/checkpoint.
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
"""


# Per model family: the demo's model and its default weights. Chinese-CLIP's smallest model: the
# demo embeds 1,797 images, on a CPU as often as not.
DEMO_MODELS = {"open_clip": ("ViT-B-32", "laion2b_s34b_b79k"), "cn_clip": ("RN50", "official")}


def run_demo(workspace: Path, *, rounds: int = 3, json_path: str | None = None, budget: int = 50,
             pretrained: str | None = "default", n_images: int | None = None, family: str = "open_clip") -> list[dict]:
    """Build the demo workspace and run ``rounds`` simulated rounds; ``pretrained`` "default":
    the family's usual weights (``DEMO_MODELS``), None: random."""

    workspace = Path(workspace).expanduser().resolve()
    if workspace.exists() and any(workspace.iterdir()):
        if not (workspace / DEMO_MARKER).exists():
            raise WorkspaceError(f"{workspace} exists and is not a demo workspace; pick an empty or new folder")
        shutil.rmtree(workspace)  # a previous demo: start over
    model, default = DEMO_MODELS[family]
    pretrained = default if pretrained == "default" else pretrained
    if pretrained is not None:
        try:
            load_clip(ClipConfig(model, pretrained, family=family))
        except WeightsUnavailableError as e:
            print(banner(pretrained, str(e), model), flush=True)
            pretrained = None
    ws = init_workspace(workspace, params_text=demo_params(pretrained, budget, model, family))
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

    table: list[dict] = []
    lines = [header]
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        rec = labeling_round(workspace=str(ws.root))
        seconds = time.perf_counter() - t0
        true_acc = auto_label_accuracy(ws, truth)
        # The round's own audit estimate of its auto labels (out of fold, on every audit item
        # answered before it, the difference estimator: tasks/audit.py), with its 95% interval and n.
        assert rec.select is not None and rec.intake is not None and rec.relabel is not None and rec.train is not None
        est = rec.audit if rec.audit is not None and rec.audit.n else None
        audit_acc, interval = (est.accuracy, list(est.interval or ())) if est else (None, None)
        if rec.select.batch_size:
            answer_batch(ws.root / rec.select.files[0], truth, ws.inbox)
        humans, auto, model = rec.intake.human_labels, rec.relabel.auto, rec.train.model
        row = dict(round=r, human_labels=humans, model_labeled=auto, model=model, audit_accuracy=audit_acc,
                   audit_interval=interval, audit_n=est.n if est else 0,
                   audit_estimator=est.estimator_key if est else None, true_accuracy=true_acc,
                   seconds=round(seconds, 1))
        table.append(row)
        ci = f"{100 * interval[0]:.1f}-{100 * interval[1]:.1f}%" if interval else "-"
        lines.append(f"{r:>5} {humans:>12} {auto:>13} {model:>9} "
                     f"{'-' if audit_acc is None else f'{audit_acc:.1%}':>9} {ci:>13} {row['audit_n']:>4} "
                     f"{'-' if true_acc is None else f'{true_acc:.1%}':>8} {seconds:>7.1f}")
        print("\n".join(lines if r == 1 else lines[-1:]), flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    print("\n'audit acc': the round's auto labels as estimated from the audit items answered before it (every\n"
          "earlier round's, drawn more often where the model was unsure, scored out of fold by the round's labeler;\n"
          "the model's confidence corrected by the audit, inverse-probability weighted: the difference estimator),\n"
          "with its 95% interval and n; 'true acc': the same auto labels against the known digits. A few audit\n"
          "items give wide intervals: answer more (round.review_policy).")
    with contextlib.suppress(Exception):  # derived now: the next `coldstart status` reads it back

        workspace_status(ws)
    print(demo_hints(ws.root, rounds))
    return table


def demo_hints(root: Path, rounds: int) -> str:
    """What to try next, as commands that run when pasted into a shell (any folder, virtualenv
    activated or not): the executables of this environment by full path, the workspace quoted."""
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
