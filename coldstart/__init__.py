"""coldstart: a first labeled image dataset without a first labeled dataset.

For scripts and notebooks::

    import coldstart

    coldstart.init_workspace("parts")            # git + DVC repo, params.yaml; put images in parts/data/images
    record = coldstart.run_round("parts")        # one labeling round (the Prefect flow `labeling_round`)
    print(record.describe())                     # what the terminal summary shows
    print(record.relabel.auto, record.train.model, record.metrics()["label_churn"])

    last = coldstart.read_round("parts")         # the newest round's record, from data/metrics/round.json
    head = coldstart.load_champion("parts")      # the best head so far (scikit-learn, over CLIP embeddings)
    probs = head.predict_proba(embeddings)       # columns: params.ontology.labels
    labels = coldstart.read_labels("parts/data/labels/resolved")  # the label table, one row per image

Names resolve lazily, so ``import coldstart`` stays cheap (no torch, Prefect or MLflow).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from coldstart.version import __version__ as __version__  # re-exported: coldstart.__version__

__all__ = ["ColdstartError", "RoundRecord", "Workspace", "init_workspace", "load_champion", "open_workspace",
           "read_labels", "read_round", "run_round"]

# Each name as "module:attribute", imported on first use (PEP 562 __getattr__): the one lazy
# import here, so that ``import coldstart`` (and so every ``import coldstart.x``) pays for no
# torch, Prefect or MLflow. tests/import_graph.py counts these names as imports.
_LAZY = {
    "ColdstartError": "coldstart.models.errors:ColdstartError",
    "RoundRecord": "coldstart.flows.record:RoundRecord",
    "Workspace": "coldstart.tasks.workspace:Workspace",
    "init_workspace": "coldstart.tasks.version:init_workspace",
    "open_workspace": "coldstart.workspace_api:open_workspace",
    "run_round": "coldstart.public:run_round",
    "read_round": "coldstart.public:read_round",
    "load_champion": "coldstart.public:load_champion",
    "read_labels": "coldstart.public:read_labels",
}

if TYPE_CHECKING:  # what the names are, for editors and mypy
    from coldstart.flows.record import RoundRecord
    from coldstart.models.errors import ColdstartError
    from coldstart.public import load_champion, read_labels, read_round, run_round
    from coldstart.tasks.version import init_workspace
    from coldstart.tasks.workspace import Workspace
    from coldstart.workspace_api import open_workspace


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name].split(":")
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'coldstart' has no attribute {name!r}")
