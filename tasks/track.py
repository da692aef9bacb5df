"""track: one MLflow run per round (the only module that imports MLflow).

Default store: SQLite inside the workspace (``mlflow.db``), artifacts in ``mlartifacts/``;
``tracking.uri`` points elsewhere. MLflow's run state is informative only: our own files are
the record, so a failure here is reported (TrackingError) but never loses labels.
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from coldstart.tasks import dbtemplate
from coldstart.tasks.audit import every_audit
from coldstart.tasks.config import Params, flatten
from coldstart.tasks.errors import TrackingError
from coldstart.tasks.heads import load_chosen
from coldstart.tasks.result import StageResult
from coldstart.tasks.workspace import Workspace, atomic_write_text, read_csv, write_csv

if TYPE_CHECKING:
    from coldstart.tasks.audit import AuditEstimate
    from coldstart.tasks.train import TrainResult

log = logging.getLogger(__name__)


@dataclass
class TrackResult(StageResult):
    run_id: str | None  # None when MLflow could not record the round
    error: str = ""  # why not: reported after the round is versioned (labels are never held back)
    registered_version: str | None = None  # of the head in the Model Registry, when a probe was logged


def tracking_uri(ws: Workspace, params: Params) -> str:
    """The MLflow tracking URI. For a server (http/https), MLflow's retry ladder (7 retries with
    exponential backoff: minutes against an unreachable host) is cut to one retry with a 4 s
    timeout, so a round fails its tracking within ~10 s and goes on to version its data; a user's
    own MLFLOW_HTTP_REQUEST_* settings win."""
    import os

    uri = params.tracking.uri or f"sqlite:///{ws.root / 'mlflow.db'}"
    if uri.startswith(("http://", "https://")):
        for key, value in (("MLFLOW_HTTP_REQUEST_TIMEOUT", "4"), ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"),
                           ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")):
            os.environ.setdefault(key, value)
    return uri


def mlflow_client(ws: Workspace, params: Params):
    """An ``MlflowClient`` on the round's tracking store. A new SQLite store (the default,
    ``mlflow.db``, on a workspace's first round) starts as a copy of an empty one MLflow made,
    kept in the user's cache (tasks/dbtemplate.py): MLflow then finds its tables made instead of
    running its migrations, 1-2 s of CPU, in every new workspace."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(ws, params)
    if uri.startswith("sqlite:///") and "?" not in uri:
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.exists():
            with contextlib.suppress(Exception):  # best effort: without a template MLflow creates its tables
                if not dbtemplate.template("mlflow").exists():
                    dbtemplate.make("mlflow", _create_tables)
                dbtemplate.seed(db, "mlflow")
    return MlflowClient(uri)


def _create_tables(path: Path) -> None:
    """What MLflow's SQL store runs on a database without its tables (every migration), on ``path``."""
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()


def close_interrupted_runs(client, exp_id: str, ws: Workspace, round_no: int, run_id: str) -> list[str]:
    """Runs that killed rounds of this workspace left behind, settled by the next round.

    A round killed after its run started leaves that run RUNNING (or FINISHED, if killed while
    versioning), and its retry starts another run for the same round. So: an earlier attempt at
    this round is marked KILLED with a note naming the run that replaced it; a run still RUNNING
    for a round that was tagged meanwhile is marked KILLED; a tagged round's only run that never
    got its git commit (killed between the tag and the link) is linked now. Returns the ids
    marked KILLED."""
    import subprocess

    root, tagged = str(ws.root), set(ws.round_tags())
    killed = []
    for r in client.search_runs([exp_id], filter_string=f"tags.`coldstart.round` = '{round_no}'") + \
            client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'"):
        if r.info.run_id == run_id or r.data.tags.get("coldstart.workspace") != root or r.info.run_id in killed:
            continue
        n = int(r.data.tags.get("coldstart.round", "0"))
        if n == round_no or (r.info.status == "RUNNING" and n not in tagged):
            note = (f"an interrupted attempt at round {n}; the round was re-run as run {run_id}" if n == round_no
                    else f"interrupted; round {n} was never completed")
        elif r.info.status == "RUNNING":
            note = f"interrupted after round {n} was tagged; its data is at git tag round-{n:03d}"
        else:
            continue
        client.set_tag(r.info.run_id, "coldstart.note", note)
        client.set_terminated(r.info.run_id, status="KILLED")
        killed.append(r.info.run_id)
    # A tagged round whose run missed its git tag: link it (one run per round, so no ambiguity).
    for n in sorted(tagged)[-3:]:
        runs = [r for r in client.search_runs([exp_id], filter_string=f"tags.`coldstart.round` = '{n}'")
                if r.data.tags.get("coldstart.workspace") == root and r.info.status != "KILLED"]
        if len(runs) == 1 and "coldstart.git_tag" not in runs[0].data.tags:
            tag = f"round-{n:03d}"
            commit = subprocess.run(["git", "rev-parse", f"{tag}^{{commit}}"], cwd=ws.root, capture_output=True,
                                    text=True).stdout.strip()
            if commit:
                client.set_tag(runs[0].info.run_id, "mlflow.source.git.commit", commit)
                client.set_tag(runs[0].info.run_id, "coldstart.git_tag", tag)
    if killed:
        log.warning("MLflow: marked %d run(s) of interrupted rounds KILLED, with a note: %s", len(killed),
                    ", ".join(killed))
    return killed


def _experiment_id(client, name: str, artifact_root: Path) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root.as_uri())


def confusion_png(confusion: list[list[int]], classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Class names are often Chinese: prefer a CJK font when one is installed (glyph fallback).
    plt.rcParams["font.sans-serif"] = ["DejaVu Sans", "Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei",
                                       "SimHei", "Microsoft YaHei", "PingFang SC"]

    cm = np.asarray(confusion)
    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("probe prediction (out-of-fold)")
    ax.set_ylabel("human label")
    for (i, j), v in np.ndenumerate(cm):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set_title("probe cross-validation confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def registered_name(params: Params) -> str:
    return params.tracking.registered_model or f"{params.tracking.experiment}-head"


def log_round(ws: Workspace, params: Params, round_no: int, metrics: dict[str, float | None],
              artifacts: list[Path], confusion: list[list[int]] | None, head=None,
              head_cv_accuracy: float | None = None, labeler_id: str | None = None,
              model_ids: dict[str, str] | None = None) -> tuple[str, str | None]:
    """Log one round as one finished MLflow run; return its run id and the head's registry version.

    ``head`` (a LinearHead over raw CLIP embeddings) is logged as a scikit-learn model,
    registered in the Model Registry, and given the alias ``champion`` when its CV accuracy
    is at least the current champion's.
    """
    import mlflow

    uri = tracking_uri(ws, params)
    version = None
    try:
        mlflow.set_tracking_uri(uri)
        client = mlflow_client(ws, params)
        exp_id = _experiment_id(client, params.tracking.experiment, ws.root / "mlartifacts")
        with mlflow.start_run(experiment_id=exp_id, run_name=f"round-{round_no:03d}") as run:
            mlflow.set_tags({"coldstart.round": str(round_no), "coldstart.workspace": str(ws.root)})
            close_interrupted_runs(client, exp_id, ws, round_no, run.info.run_id)
            mlflow.log_params(mlflow_names({**flatten(params), **(model_ids or {})}))
            # step = round: the MLflow UI's charts across the experiment's runs put rounds on the x axis.
            mlflow.log_metrics(mlflow_names({k: float(v) for k, v in metrics.items() if v is not None}), step=round_no)
            # The learning curve so far, in this run too: one chart of a run shows every round.
            for row in read_curve(ws):
                for key in CURVE_FIELDS[1:]:
                    if row.get(key) not in (None, ""):
                        mlflow.log_metric(f"curve_{key}", float(row[key]), step=int(row["round"]))
            for path in artifacts:
                if path.is_file():
                    mlflow.log_artifact(str(path), artifact_path="review" if "review" in path.parts else None)
            if confusion is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    png = Path(tmp) / "probe_cv_confusion.png"
                    confusion_png(confusion, params.ontology.labels, png)
                    mlflow.log_artifact(str(png), artifact_path="plots")
            if head is not None:
                import mlflow.sklearn
                import sklearn

                # Explicit requirements: inferring them costs seconds per round.
                info = mlflow.sklearn.log_model(head.to_sklearn(), name="probe",
                                                pip_requirements=[f"scikit-learn=={sklearn.__version__}"])
                version = _register(client, registered_name(params), info.model_uri, run.info.run_id,
                                    head_cv_accuracy, labeler_id)
            return run.info.run_id, version
    except Exception as e:
        raise TrackingError(
            f"MLflow at {uri} could not record round {round_no} ({type(e).__name__}: {e}). The round's labels are "
            f"safe in data/; fix tracking.uri in params.yaml (or the server) and run the next round."
        ) from e


def _register(client, name: str, model_uri: str, run_id: str, cv_accuracy: float | None,
              labeler_id: str | None = None) -> str:
    """Register the head as a new version of ``name``, unless a version with the same
    ``labeler_id`` (the same weights, temperature and model) is registered already: a head
    retrained to the same weights is the same model, so its version is returned instead."""
    import mlflow

    if labeler_id:
        try:
            same = client.search_model_versions(f"name = '{name}' and tags.labeler_id = '{labeler_id}'")
        except Exception:  # a store without tag search: look through the versions' tags
            same = [v for v in client.search_model_versions(f"name = '{name}'") if v.tags.get("labeler_id") == labeler_id]
        if same:
            return str(max(int(v.version) for v in same))
    tags = {"cv_accuracy": str(cv_accuracy), **({"labeler_id": labeler_id} if labeler_id else {})}
    with _prints_to_log("mlflow"):  # "Registered model ... Created version ...": the log file, not the terminal
        version = mlflow.register_model(model_uri, name, tags=tags)
    try:
        champion = client.get_model_version_by_alias(name, "champion")
        best = float(champion.tags.get("cv_accuracy", "nan"))
    except Exception:  # no champion yet
        best = float("-inf")
    # ">=": with equal CV accuracy the newer head, trained on more labels, takes over.
    if cv_accuracy is not None and not cv_accuracy < best:
        client.set_registered_model_alias(name, "champion", version.version)
    return str(version.version)


class _LogLines:
    """A text stream whose lines go to a logger at INFO (MLflow prints some news to stderr)."""
    def __init__(self, logger: logging.Logger, original):
        self.logger, self.original, self.buffer, self.emitting = logger, original, "", False

    def write(self, text: str) -> int:
        if self.emitting:  # a handler that writes to sys.stderr (MLflow's own, outside the CLI): pass through
            return self.original.write(text)
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        self._emit(self.buffer)
        self.buffer = ""

    def _emit(self, line: str) -> None:
        if line.strip():
            self.emitting = True
            try:
                self.logger.info("%s", line.rstrip())
            finally:
                self.emitting = False


@contextlib.contextmanager
def _prints_to_log(name: str) -> Iterator[None]:
    """What is printed to stderr meanwhile goes to logger ``name`` (INFO) instead: for the CLI,
    into the workspace's log file, off the terminal."""
    stream = _LogLines(logging.getLogger(name), sys.stderr)
    try:
        with contextlib.redirect_stderr(stream):
            yield
    finally:
        stream.flush()


def mlflow_name(name: str) -> str:
    """``name`` as MLflow accepts a param or metric name: letters (any script), digits, ``_ - .
    / : space``; anything else (full-width brackets in a Chinese class name, ``+``, ``<``) becomes
    ``_``, and a name that would read as another path ("a//b", "../x") has its slashes replaced."""
    out = re.sub(r"[^/\w.\- :]", "_", name)
    if posixpath.normpath(out) != out or out.startswith(("/", "..")) or out in ("", "."):
        out = out.replace("/", "_").lstrip(".") or "_"
    return out


def mlflow_names(values: dict) -> dict:
    """``mlflow_name`` on every key; two keys that meet keep apart with ``_2``, ``_3``, ..."""
    out: dict = {}
    for key, value in values.items():
        name = base = mlflow_name(key)
        k = 1
        while name in out:
            k += 1
            name = f"{base}_{k}"
        out[name] = value
    return out


def record_audit(ws: Workspace, params: Params, audited_round: int, accuracy: float, low: float, high: float,
                 n: int) -> None:
    """Log an audit result onto the run of the round whose auto labels were audited, so MLflow
    charts line each round's labels up with their measured accuracy."""
    client = mlflow_client(ws, params)
    exp = client.get_experiment_by_name(params.tracking.experiment)
    if exp is None:
        return
    runs = client.search_runs([exp.experiment_id], f"tags.`coldstart.round` = '{audited_round}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if runs:
        # "as labeled": that round's own predictions on its audit items (the estimate a later round
        # logs, out of fold, is audit_accuracy on that later round's run).
        for key, value in (("audit_as_labeled_accuracy", accuracy), ("audit_as_labeled_low", low),
                           ("audit_as_labeled_high", high), ("audit_as_labeled_n", n)):
            client.log_metric(runs[0].info.run_id, key, float(value))


def record_version(ws: Workspace, params: Params, run_id: str, commit: str, tag: str) -> None:
    """Attach the git commit and round tag to a (finished) run."""
    client = mlflow_client(ws, params)
    client.set_tag(run_id, "mlflow.source.git.commit", commit)
    client.set_tag(run_id, "coldstart.git_tag", tag)


# The learning curve, one row per round (data/metrics/learning_curve.csv, a DVC plot).
CURVE_FIELDS = ["round", "human_labels", "auto_labeled", "audit_accuracy", "audit_low", "audit_high", "audit_n",
                "chosen_cv_accuracy"]
# Where each curve column comes from in the round's metrics (the first key present).
_CURVE_KEYS = {"audit_accuracy": ("audit_accuracy", "audit_accuracy_prev_round"),
               "audit_low": ("audit_low", "audit_low_prev_round"),
               "audit_high": ("audit_high", "audit_high_prev_round")}


def read_curve(ws: Workspace) -> list[dict]:

    return read_csv(ws.metrics_dir / "learning_curve.csv")


def _number(v: float) -> int | float:
    """Counts as integers (``12``, not ``12.0``: what `dvc metrics diff` shows), the rest rounded."""
    v = float(v)
    return int(v) if v.is_integer() else round(v, 6)


def write_metrics_files(ws: Workspace, round_no: int, metrics: dict[str, float | None]) -> None:
    """What `dvc metrics diff` and `dvc plots diff` compare between round tags (both git-tracked
    and declared at the top of dvc.yaml): data/metrics/round-metrics.json, the round's metrics
    flat (timings aside, but the total: they differ every run), and
    data/metrics/learning_curve.csv, this round's row after the earlier rounds' (a round run
    again replaces its row)."""
    flat = {k: _number(v) for k, v in sorted(metrics.items())
            if v is not None and (not k.startswith("seconds_") or k == "seconds_total")}
    ws.metrics_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ws.metrics_dir / "round-metrics.json", json.dumps({"round": round_no, **flat}, indent=1) + "\n")

    def pick(name: str):
        for key in _CURVE_KEYS.get(name, (name,)):
            value = metrics.get(key)
            if value is not None:
                return _number(value)
        return ""

    rows = [r for r in read_curve(ws) if r.get("round", "").isdigit() and int(r["round"]) < round_no]
    rows.append({"round": round_no, **{k: pick(k) for k in CURVE_FIELDS[1:]}})
    write_csv(ws.metrics_dir / "learning_curve.csv", CURVE_FIELDS, rows)


def track(ws: Workspace, params: Params, round_no: int, metrics: dict[str, float | None], artifacts: list[Path],
          train: "TrainResult", model_ids: dict[str, str] | None = None) -> TrackResult:
    """The track stage: the round's metrics files for DVC, and one MLflow run for the round
    (params, metrics by round, the learning curve, plots, the fitted head). ``model_ids``: the
    models' ids as MLflow params (``model.id``, ``regions.model_id``: with their precision).

    A tracking failure is returned, not raised: the round's data is versioned first, then the
    flow reports it (MLflow is a view of the round; the workspace's files are the record).
    """
    write_metrics_files(ws, round_no, metrics)
    head = train.probe.head if train.probe is not None else None

    chosen = load_chosen(ws) if head is not None else None
    try:
        run_id, version = log_round(ws, params, round_no, metrics, artifacts, train.confusion, head,
                                    train.cv_accuracy if head is not None else None,
                                    chosen.labeler_id if chosen is not None else None, model_ids)
    except TrackingError as e:
        return TrackResult(run_id=None, error=str(e))
    return TrackResult(run_id=run_id, registered_version=version)


def link_run(ws: Workspace, params: Params, run_id: str | None, commit: str, tag: str, audit: "AuditEstimate | None"
             ) -> None:
    """After versioning: the git commit and tag onto the round's run, and the audit onto the run
    of the round it audited."""
    if run_id is None:
        return
    record_version(ws, params, run_id, commit, tag)

    # Each earlier round's run gets the audit of its own batch, as its answers come in.
    round_no = int(tag.rsplit("-", 1)[-1])
    for est in every_audit(ws, round_no, params.ontology.labels):
        accuracy, interval = est.accuracy, est.interval
        assert accuracy is not None and interval is not None, "every_audit returns estimates with answered items"
        record_audit(ws, params, est.round, accuracy, *interval, est.n)


def load_champion(ws: Workspace, params: Params):
    """The registered head with the alias ``champion`` (the best by CV so far), as a fitted
    scikit-learn estimator over raw, L2-normalised CLIP embeddings ``(N, D)``; its
    ``predict_proba`` columns follow ``params.ontology.labels``."""
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException

    name = registered_name(params)
    mlflow.set_tracking_uri(tracking_uri(ws, params))
    try:
        return mlflow.sklearn.load_model(f"models:/{name}@champion")
    except MlflowException as e:
        raise TrackingError(f"no champion head registered as {name!r} in {tracking_uri(ws, params)} yet: a probe is "
                            f"registered once a round chooses one over zero-shot (answer more review batches)") from e
