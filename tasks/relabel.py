"""relabel: give every embedded image a label: the human's where one exists, else the model's."""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from coldstart.tasks.workspace import Workspace, atomic_write_bytes, read_csv, write_csv

# location: "x0 y0 x1 y1" (original pixels) of the tile that gave the label's score, or "".
RESOLVED_FIELDS = ["image_id", "path", "label", "confidence", "source", "model_id", "round", "location"]


@dataclass
class RelabelResult:
    images: int
    human: int
    auto: int
    source: str  # "probe" or "zero-shot" for the auto labels
    mean_confidence: float | None  # over auto labels
    below_threshold: int  # auto labels with confidence < round.confidence_threshold
    churn: float | None  # fraction of images present last round whose label changed
    per_class: dict[str, int]


def relabel(ws: Workspace, ids: list[str], paths: list[str], probs: np.ndarray, class_names: list[str],
            humans: dict[str, str], *, source: str, model_id: str, round_no: int, threshold: float,
            locations: list[str] | None = None, store: tuple[str, str] = ("", "global")) -> RelabelResult:
    """Write data/labels/resolved.csv and data/store/probs.npz.

    ``probs`` ``(N, C)`` are the model's probabilities for ``ids`` (ontology order); they are
    kept for every image, human-labeled or not, so selection and audits can use them.
    """
    previous = {r["image_id"]: r["label"] for r in read_csv(ws.resolved)}
    top = probs.argmax(1) if len(probs) else np.zeros(0, int)
    conf = probs.max(1) if len(probs) else np.zeros(0)
    rows, auto_conf = [], []
    for k, (i, p) in enumerate(zip(ids, paths)):
        if i in humans:
            rows.append(dict(image_id=i, path=p, label=humans[i], confidence="1.0", source="human",
                             model_id="", round=round_no, location=""))
        else:
            rows.append(dict(image_id=i, path=p, label=class_names[top[k]], confidence=f"{conf[k]:.6f}",
                             source=source, model_id=model_id, round=round_no,
                             location=locations[k] if locations else ""))
            auto_conf.append(float(conf[k]))
    write_csv(ws.resolved, RESOLVED_FIELDS, rows)
    buf = io.BytesIO()
    # store: (embedding model id, view) whose embeddings these are, for diversity-based selection.
    np.savez(buf, ids=np.array(ids, dtype="S64"), probs=probs.astype(np.float32), classes=np.array(class_names),
             store=np.array(list(store)))
    atomic_write_bytes(ws.probs, buf.getvalue())
    common = [r for r in rows if r["image_id"] in previous]
    churn = sum(r["label"] != previous[r["image_id"]] for r in common) / len(common) if common else None
    return RelabelResult(
        images=len(rows), human=len(rows) - len(auto_conf), auto=len(auto_conf), source=source,
        mean_confidence=float(np.mean(auto_conf)) if auto_conf else None,
        below_threshold=int(sum(c < threshold for c in auto_conf)), churn=churn,
        per_class=dict(Counter(r["label"] for r in rows)),
    )


def load_probs(ws: Workspace) -> tuple[list[str], np.ndarray, list[str], tuple[str, str]]:
    """(ids, ``(N, L)`` probabilities, label names, (embedding model id, view))."""
    with np.load(ws.probs, allow_pickle=False) as z:
        store = tuple(str(x) for x in z["store"]) if "store" in z else ("", "global")
        return [x.decode() for x in z["ids"]], z["probs"], [str(c) for c in z["classes"]], store


@task(name="relabel", cache_policy=NO_CACHE)
def relabel_task(*args, **kwargs) -> RelabelResult:
    return relabel(*args, **kwargs)
