"""The trained heads, data/models/: what the last train stage chose to label images with (a
probe's weights, or the zero-shot text weights), read by the relabel and regions stages and the
API, and the human labels a head is trained on.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from coldstart.models.errors import ConfigError
from coldstart.models.probe import LinearHead
from coldstart.models.zeroshot import ZeroShotHead, prompt_warnings, softmax
from coldstart.tasks.calibrate import apply_temperature
from coldstart.tasks.config import Params
from coldstart.tasks.labellog import human_labels, read_events
from coldstart.tasks.store import cached_text_head
from coldstart.tasks.workspace import Workspace

if TYPE_CHECKING:  # the relabel stage imports this module: keep torch out of it
    from coldstart.models.clip import ClipModel


# data/models/: the head that labels images without a human label, whichever won (a probe's
# weights, or the zero-shot text weights), and what the relabel stage needs to apply it.
HEAD_FILE = "head.npz"


CHOSEN_FILE = "chosen.json"


def zero_shot_head(ws: Workspace, params: Params, clip: ClipModel) -> tuple[ZeroShotHead, list[str]]:
    """The ontology's zero-shot head for this model (text weights cached), and its warnings."""
    onto = params.ontology
    prompts = onto.prompts()
    weights, logit_scale, english_only = cached_text_head(ws.text_cache, clip, prompts)
    warnings = prompt_warnings(clip.model_id, english_only, onto.scoring_classes, prompts, weights,
                               onto.confusable_threshold, [spec.descriptions for spec in onto.classes.values()])
    head = ZeroShotHead(weights, np.array(onto.label_of_class), len(onto.class_names), logit_scale)
    return head, warnings


def current_human_labels(ws: Workspace, classes: list[str]) -> dict[str, str]:
    """image id -> human label; refuses an ontology that dropped a label people already gave."""
    humans = human_labels(read_events(ws))
    missing = Counter(label for label in humans.values() if label not in classes)
    if missing:
        listed = ", ".join(f"{label!r} ({n} images)" for label, n in missing.most_common())
        raise ConfigError(f"params.yaml: ontology.classes no longer has labels that people gave: {listed}. Put the "
                          f"class(es) back (the answers are kept in data/labels/events.jsonl), or relabel those "
                          f"images with a new CSV in data/inbox/ first.")
    return humans


@dataclass
class ChosenHead:
    """The head the last train stage chose, as the relabel stage applies it."""

    head: LinearHead | ZeroShotHead
    model: str  # "zero-shot", "probe" or "zs-probe"
    model_id: str  # the embedding model whose embeddings it reads
    labeler_id: str  # recorded with every auto label
    temperature: float
    threshold: float

    @property
    def n_labels(self) -> int:
        return len(self.head.bias) if isinstance(self.head, LinearHead) else self.head.n_labels

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(N, D)`` embeddings -> ``(N, L)`` calibrated label probabilities."""
        if isinstance(self.head, LinearHead):
            # softmax(log softmax(z) / T) = softmax(z / T): one pass instead of three, and a
            # label the head never saw (logit -inf) keeps probability 0.
            return softmax(self.head.logits(X) / np.float32(self.temperature))
        return apply_temperature(self.head.predict_proba(X), self.temperature)


def load_chosen(ws: Workspace) -> ChosenHead | None:
    """The head written by the last train stage, or None before the first one."""
    chosen, head_file = ws.model_dir / CHOSEN_FILE, ws.model_dir / HEAD_FILE
    if not chosen.is_file() or not head_file.is_file():
        return None
    info = json.loads(chosen.read_text(encoding="utf-8"))
    with np.load(head_file, allow_pickle=False) as z:
        head = LinearHead(z["weight"], z["bias"]) if "weight" in z else ZeroShotHead(
            z["weights"], z["label_of_class"], int(z["n_labels"]), float(z["logit_scale"]))
    return ChosenHead(head, info["model"], info["model_id"], info.get("labeler_id", info["model_id"]),
                      float(info.get("temperature", 1.0)), float(info.get("threshold") or 0.0))
