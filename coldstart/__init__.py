"""coldstart: a first labeled image dataset without a first labeled dataset.

For scripts and notebooks::

    import coldstart

    coldstart.init_workspace("parts")            # git + DVC repo, params.yaml; put images in parts/data/images
    record = coldstart.run_round("parts")        # one labeling round (the Prefect flow `labeling_round`)
    print(record.describe())                     # what the terminal summary shows
    print(record.relabel.auto, record.train.model, record.metrics()["label_churn"])

    last = coldstart.read_round("parts")         # the newest round's record, from data/metrics/round.json
    head = coldstart.load_champion("parts")      # the best head so far (scikit-learn, over CLIP embeddings)
    probs = head.predict_proba(embeddings)       # columns: params.ontology.class_names
    labels = coldstart.read_labels("parts/data/labels/resolved")  # the label table, one row per image

Names resolve lazily, so ``import coldstart`` stays cheap (no torch, Prefect or MLflow).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from coldstart.version import __version__ as __version__  # re-exported: coldstart.__version__

__all__ = ["ColdstartError", "RoundRecord", "Workspace", "init_workspace", "load_champion", "open_workspace",
           "read_labels", "read_round", "run_round"]

_LAZY = {
    "ColdstartError": ("coldstart.models.errors", "ColdstartError"),
    "RoundRecord": ("coldstart.flows.record", "RoundRecord"),
    "Workspace": ("coldstart.tasks.workspace", "Workspace"),
    "init_workspace": ("coldstart.tasks.version", "init_workspace"),
}

if TYPE_CHECKING:
    from coldstart.flows.record import RoundRecord
    from coldstart.tasks.workspace import Workspace


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'coldstart' has no attribute {name!r}")


def open_workspace(path: str = ".") -> "Workspace":
    """An existing workspace (raises WorkspaceError, saying how to create one, if it is not)."""
    from coldstart.tasks.workspace import Workspace

    return Workspace.open(path)


def run_round(workspace: str = ".", force: bool = False) -> "RoundRecord":
    """Run one labeling round; returns its record (also in MLflow and data/metrics/round.json).
    With nothing new (images, answers, params) the round does nothing and its record says
    ``nothing_new``; ``force`` runs it anyway."""
    from coldstart.flows.round import labeling_round

    return labeling_round(workspace=str(workspace), force=force)


def read_round(workspace: str = ".") -> "RoundRecord | None":
    """The newest round's record, or None before the first round."""
    from coldstart.flows.status import last_round

    return last_round(open_workspace(workspace))


def load_champion(workspace: str = "."):
    """The registered champion head (see ``coldstart.tasks.track.load_champion``)."""
    from coldstart.tasks.track import load_champion as load

    ws = open_workspace(workspace)
    return load(ws, ws.params())


def read_labels(folder: str, probs: bool = False):
    """The resolved label table in ``folder`` (a workspace's data/labels/resolved, or a copy from
    ``dvc get ... --rev round-NNN``) as a pandas DataFrame, one row per image, by image id:
    image_id, path, label, confidence, source, model_id, round, location (and ``probs``, the
    head's per-class probabilities, if asked). The folder holds Parquet parts, one per round
    that changed labels; this applies them in order."""
    from pathlib import Path

    from coldstart.tasks.commands import command  # only here: `import coldstart` stays light
    from coldstart.tasks.parts import PartTable
    from coldstart.tasks.relabel import RESOLVED_FIELDS, resolved_schema

    path = Path(folder).expanduser()
    table = PartTable(path, "image_id", resolved_schema(1))
    if not table.files():
        raise FileNotFoundError(f"{path}: no resolved-label parts here (NNNNNN.parquet files); pull them with "
                                f"`{command('dvc')} pull data/labels/resolved` in the workspace, or run a round first")
    return table.read(columns=RESOLVED_FIELDS[1:] + (["probs"] if probs else [])).to_pandas()
