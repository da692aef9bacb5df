"""The trained heads, data/models/: what the last train stage chose to label images with (a
probe's weights, or the zero-shot text weights), read by the relabel and regions stages and the
API, and the human labels a head is trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from coldstart.models.probe import LinearHead
from coldstart.models.zeroshot import ZeroShotHead, prompt_warnings, softmax
from coldstart.tasks.calibrate import apply_temperature
from coldstart.tasks.config import Params
from coldstart.tasks.labellog import LabelEvent, current_answers, event_key, read_events
from coldstart.tasks.ontology import Answers, map_answers
from coldstart.tasks.store import cached_text_head
from coldstart.tasks.workspace import Workspace, read_csv

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
    # One more label than the classes: "none of these", which no text describes (probability 0).
    head = ZeroShotHead(weights, np.array(onto.label_of_class), len(onto.labels), logit_scale)
    return head, warnings


def read_reask(ws: Workspace) -> list[dict]:
    """data/labels/reask.csv: "none of these" answers to ask again since a class was adopted
    (``coldstart discover --adopt``), each with the adopted class as its suggestion."""
    return read_csv(ws.reask)


def current_human_labels(ws: Workspace, labels: list[str], *, training: bool = True) -> Answers:
    """People's current answers on today's ``labels`` (``OntologyConfig.labels``): "none of
    these" and answers for classes no longer written count as ``unknown`` (the latter listed in
    ``orphaned``). ``training``: an answer waiting to be asked again (reask.csv) is left out: it
    trains nothing meanwhile; it is still the image's label (``training=False``)."""
    current = {image_id: e for (image_id, region), e in current_answers(read_events(ws)).items() if not region}
    pending = pending_reasks(ws, current) if training else set()
    return map_answers({i: e.label for i, e in current.items()}, labels, pending)


def waiting_reasks(ws: Workspace, current: dict[str, LabelEvent], regions: bool = False) -> list[dict]:
    """The rows of reask.csv still waiting to be asked again: of images (``regions``: of regions)
    whose current answer (``current``: id -> its event) is still the one adoption found."""
    key = "region_id" if regions else "image_id"
    return [r for r in read_reask(ws) if bool(r.get("region_id")) == regions
            and r[key] in current and event_key(current[r[key]]) == r["answer_event"]]


def pending_reasks(ws: Workspace, current: dict[str, LabelEvent], regions: bool = False) -> set[str]:
    """The ids of ``waiting_reasks``: image ids, or with ``regions`` region ids."""
    return {r["region_id" if regions else "image_id"] for r in waiting_reasks(ws, current, regions)}


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
