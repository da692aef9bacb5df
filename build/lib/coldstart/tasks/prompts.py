"""Prompt ablation: which templates and descriptions help, measured on the human labels so far.

The value of a prompt set depends on the model: measure, don't assume. Every variant keeps the
other classes' full ensembles and changes one thing, so each row answers one question.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coldstart.models.clip import ClipModel
from coldstart.models.zeroshot import ZeroShotHead, text_weights
from coldstart.tasks.config import OntologyConfig


@dataclass
class AblationRow:
    variant: str  # "ensemble", "single prompt", "template: ...", "description: class / text"
    accuracy: float  # over all human-labeled images
    class_recall: float | None  # for a description row: recall of that class's label
    n: int


def ablate(clip: ClipModel, onto: OntologyConfig, X: np.ndarray, y: np.ndarray) -> list[AblationRow]:
    """``X`` ``(N, D)`` embeddings of human-labeled images, ``y`` ``(N,)`` label indices."""
    labels, label_of = onto.class_names, np.array(onto.label_of_class)
    specs = list(onto.classes.items())
    per_class = [(s.templates or onto.templates, s.descriptions) for _, s in specs]
    # One text-tower pass for every (class, description) group; templates are averaged within.
    groups = [[t.format(d) for t in tpl] for tpl, descs in per_class for d in descs]
    desc_w = text_weights(clip, groups)
    prompt_w = text_weights(clip, [[p] for p in
                                   [t.format(d) for tpl, descs in per_class for d in descs for t in tpl]])

    def acc(weights: np.ndarray, label: int | None = None) -> tuple[float, float | None]:
        pred = ZeroShotHead(weights, label_of, len(labels), clip.logit_scale).predict_proba(X).argmax(1)
        recall = None
        if label is not None and (y == label).any():
            recall = float((pred[y == label] == label).mean())
        return float((pred == y).mean()), recall

    def ensemble_from(rows: list[np.ndarray]) -> np.ndarray:
        w = np.stack([r / np.linalg.norm(r) for r in rows])
        return w.astype(np.float32)

    # Prompt embeddings for class s, description d, template t, in a flat index.
    offsets, k, dk = [], 0, 0
    desc_index = []
    for tpl, descs in per_class:
        offsets.append(k)
        desc_index.append(list(range(dk, dk + len(descs))))
        k += len(tpl) * len(descs)
        dk += len(descs)
    full = ensemble_from([desc_w[idx].mean(0) for idx in desc_index])  # = mean over all prompts
    rows = [AblationRow("ensemble (all templates x descriptions)", *acc(full)[:1], None, len(y))]
    single = ensemble_from([prompt_w[offsets[s]] for s in range(len(specs))])
    rows.append(AblationRow("single prompt (first template x first description)", acc(single)[0], None, len(y)))
    for t, template in enumerate(onto.templates):
        alone = []
        for s, (tpl, descs) in enumerate(per_class):
            if tpl is onto.templates:
                alone.append(np.mean([prompt_w[offsets[s] + d * len(tpl) + t] for d in range(len(descs))], 0))
            else:
                alone.append(desc_w[desc_index[s]].mean(0))  # per-class templates: unchanged
        rows.append(AblationRow(f"template alone: {template!r}", acc(ensemble_from(alone))[0], None, len(y)))
    for s, (name, spec) in enumerate(specs):
        label = int(label_of[s])
        for d, desc in enumerate(spec.descriptions):
            w = full.copy()
            w[s] = desc_w[desc_index[s][d]] / np.linalg.norm(desc_w[desc_index[s][d]])
            a, r = acc(w, label)
            rows.append(AblationRow(f"description alone: {name} / {desc!r}", a, r, len(y)))
    return rows
