"""The functions ``import coldstart`` offers scripts and notebooks that run or read rounds
(coldstart/__init__.py names them; this module, which loads the round, is imported on first
use; ``open_workspace`` is in the light coldstart/workspace_api.py)."""

from __future__ import annotations

from pathlib import Path

from coldstart.flows.record import RoundRecord
from coldstart.flows.round import labeling_round
from coldstart.tasks.commands import command
from coldstart.tasks.parts import PartTable
from coldstart.tasks.relabel import RESOLVED_FIELDS, resolved_schema
from coldstart.tasks.track import load_champion as load
from coldstart.tasks.workspace import Workspace


def run_round(workspace: str = ".", force: bool = False) -> RoundRecord:
    """Run one labeling round; returns its record (also in MLflow and data/metrics/round.json).
    With nothing new (images, answers, params) the round does nothing and its record says
    ``nothing_new``; ``force`` runs it anyway."""
    return labeling_round(workspace=str(workspace), force=force)


def read_round(workspace: str = ".") -> RoundRecord | None:
    """The newest round's record, or None before the first round."""
    path = Workspace.open(workspace).metrics_dir / "round.json"
    return RoundRecord.load(path) if path.is_file() else None


def load_champion(workspace: str = "."):
    """The registered champion head (see ``coldstart.tasks.track.load_champion``)."""
    ws = Workspace.open(workspace)
    return load(ws, ws.params())


def read_labels(folder: str, probs: bool = False):
    """The resolved label table in ``folder`` (a workspace's data/labels/resolved, or a copy from
    ``dvc get ... --rev round-NNN``) as a pandas DataFrame, one row per image, by image id:
    image_id, path, label, confidence, source, model_id, round, location (and ``probs``, the
    head's per-class probabilities, if asked). The folder holds Parquet parts, one per round
    that changed labels; this applies them in order."""

    path = Path(folder).expanduser()
    table = PartTable(path, "image_id", resolved_schema(1))
    if not table.files():
        raise FileNotFoundError(f"{path}: no resolved-label parts here (NNNNNN.parquet files); pull them with "
                                f"`{command('dvc')} pull data/labels/resolved` in the workspace, or run a round first")
    return table.read(columns=RESOLVED_FIELDS[1:] + (["probs"] if probs else [])).to_pandas()
