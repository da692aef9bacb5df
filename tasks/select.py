"""select: the next review batch: the most uncertain unlabeled images plus a random audit sample.

Scoring is pure (probabilities in, scores out; higher = ask a human sooner). The audit sample
is drawn first, uniformly from every image without a human label, so its answers are an
unbiased estimate of the auto-label accuracy; the uncertain picks come from the rest.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from coldstart.models.errors import SelectionError
from coldstart.tasks import strategies
from coldstart.tasks.audit import wilson_interval
from coldstart.tasks.config import RoundConfig
from coldstart.tasks.store import EmbeddingStore
from coldstart.tasks.strategies import STRATEGIES, uncertainty
from coldstart.tasks.workspace import Workspace, atomic_write_text, read_csv, write_csv

log = logging.getLogger(__name__)

BATCH_FIELDS = ["image_id", "image", "purpose", "predicted_label", "confidence", "source", "model_id", "score", "round",
                "note"]
# note: only for labels sent back for a second look (it says why); empty for everything else.
REVIEW_FIELDS = ["image_id", "image", "suggested_label", "confidence", "label", "annotator", "note"]


def select_indices(probs: np.ndarray, budget: int, *, strategy: str, audit: int, seed: int,
                   X: np.ndarray | None = None, labeled_X: np.ndarray | None = None, factor: int = 5,
                   measure: str = "margin", class_cap: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``audit`` uniformly random rows, then ``budget - audit`` of the rest by ``strategy``.

    The audit sample is drawn first from the whole pool, so it stays a uniform sample of the
    auto-labeled images (an unbiased accuracy estimate). Returns (chosen, audit) indices.
    """
    n = len(probs)
    if n == 0:
        raise SelectionError("nothing to select: every image already has a human label (or there are no images)")
    if budget > n:
        raise SelectionError(f"budget {budget} is larger than the pool of {n} unlabeled images")
    if not 0 <= audit <= budget:
        raise SelectionError(f"audit size {audit} must be between 0 and the budget {budget}")
    if strategy not in STRATEGIES:
        raise SelectionError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    rng = np.random.default_rng(seed)
    audit_idx = rng.choice(n, size=audit, replace=False) if audit else np.zeros(0, int)
    rest = np.setdiff1d(np.arange(n), audit_idx)
    if budget - audit == 0:
        return np.zeros(0, int), np.asarray(audit_idx, int)
    picked = strategies.select(strategy, budget - audit, probs=probs[rest], X=None if X is None else X[rest],
                               labeled_X=labeled_X, seed=seed, factor=factor, measure=measure, class_cap=class_cap)
    return rest[picked], np.asarray(audit_idx, int)


def _cell(value: str) -> str:
    """Escape cells a spreadsheet would run as a formula (CSV injection)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value


@dataclass
class SelectResult:
    batch_size: int
    chosen: int  # by the strategy
    audit: int
    pool: int
    files: list[str]
    strategy: str = ""
    recheck: int = 0  # human labels sent back for a second look


def select(ws: Workspace, cfg: RoundConfig, round_no: int) -> SelectResult:
    """Read resolved.csv + probs.npz, write data/review/round-NNN.{csv,batch.csv,tasks.json}."""
    from coldstart.tasks.relabel import load_probs

    ids, probs, classes, (model_id, view) = load_probs(ws)
    resolved = {r["image_id"]: r for r in read_csv(ws.resolved)}
    pool = [k for k, i in enumerate(ids) if resolved[i]["source"] != "human"]
    labeled = [i for i in ids if resolved[i]["source"] == "human"]
    strategy = cfg.strategy if labeled else cfg.first_strategy
    budget = min(cfg.budget, len(pool))
    stem = ws.review / f"round-{round_no:03d}"
    ws.review.mkdir(parents=True, exist_ok=True)
    if budget == 0:
        log.warning("every image has a human label: no review batch this round")
        return SelectResult(0, 0, 0, 0, [], strategy)
    if budget < cfg.budget:
        log.warning("only %d unlabeled images left; the batch is smaller than round.budget=%d", budget, cfg.budget)
    n_audit = min(budget, math.ceil(budget * cfg.audit_fraction)) if cfg.audit_fraction > 0 else 0
    seed = cfg.seed * 100_003 + round_no
    sub = probs[pool]
    X = labeled_X = None
    if strategy in ("kcenter", "typiclust", "hybrid"):
        store = EmbeddingStore(ws.embeddings, model_id, view)
        _, X = store.load([ids[k] for k in pool])
        _, labeled_X = store.load(labeled) if labeled else (None, None)
    chosen, aud = select_indices(sub, budget, strategy=strategy, audit=n_audit, seed=seed, X=X, labeled_X=labeled_X,
                                 factor=cfg.hybrid_factor, measure=cfg.uncertainty, class_cap=cfg.class_cap)
    scores = uncertainty(sub, cfg.uncertainty)
    batch = []
    for purpose, picks in ((strategy, chosen), ("audit", aud)):
        for j in picks:
            r = resolved[ids[pool[j]]]
            batch.append(dict(image_id=r["image_id"], image=r["path"], purpose=purpose, predicted_label=r["label"],
                              confidence=r["confidence"], source=r["source"], model_id=r["model_id"],
                              score=f"{scores[j]:.6f}", round=round_no, note=""))
    # Human labels the held-out model disagrees with go back for a second look, on top of the budget.
    rechecks, max_rechecks = 0, math.ceil(cfg.recheck_fraction * cfg.budget)
    for f in read_csv(ws.flags):  # most confident first
        if rechecks >= max_rechecks:
            break
        r = resolved.get(f["image_id"])
        if r is None or r["source"] != "human" or r["label"] != f["human_label"]:
            continue  # image gone, or already corrected since
        batch.append(dict(image_id=r["image_id"], image=r["path"], purpose="recheck", predicted_label=f["suggested_label"],
                          confidence=f["probability"], source="human", model_id="", score="", round=round_no,
                          note=f"please check: labeled {f['human_label']!r}, the model (held out) says "
                               f"{f['suggested_label']!r} with p={float(f['probability']):.2f}"))
        rechecks += 1
    write_csv(stem.with_suffix(".batch.csv"), BATCH_FIELDS, batch)
    # What the annotator sees: sorted by path, so audit items are not told apart from the rest.
    review = sorted(batch, key=lambda b: b["image"])
    write_csv(stem.with_suffix(".csv"), REVIEW_FIELDS, [
        dict(image_id=b["image_id"], image=_cell(b["image"]), suggested_label=_cell(b["predicted_label"]),
             confidence=b["confidence"], label="", annotator="", note=_cell(b["note"])) for b in review])
    tasks = [{
        "data": {"image": f"/data/local-files/?d=images/{b['image']}", "image_id": b["image_id"], "path": b["image"]},
        "predictions": [{
            "model_version": b["model_id"] or b["source"],
            "score": float(b["confidence"]),
            "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                        "value": {"choices": [b["predicted_label"]]}}],
        }],
    } for b in review]
    atomic_write_text(stem.with_suffix(".tasks.json"), json.dumps(tasks, ensure_ascii=False, indent=1) + "\n")
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    atomic_write_text(ws.review / "label_config.xml", f'<View>\n  <Image name="image" value="$image"/>\n'
                      f'  <Choices name="label" toName="image" choice="single" showInLine="true">\n{choices}\n'
                      f'  </Choices>\n</View>\n')
    files = [ws.rel(stem.with_suffix(s)) for s in (".csv", ".batch.csv", ".tasks.json")]
    return SelectResult(len(batch), len(chosen), len(aud), len(pool), files, strategy, rechecks)


@dataclass
class AuditEstimate:
    """How right a round's auto labels were, from its uniformly random audit sample.

    The audit items were drawn before the strategy picked anything, from every image without a
    human label, and are compared with the labels that round predicted, before their answers
    could train any model: an unbiased estimate. Their answers then train later rounds like any
    label; calibration and thresholds use out-of-fold predictions, never these estimates.
    """

    round: int  # the round whose auto labels were audited
    n: int  # audit items answered
    correct: int
    by_label: dict[str, tuple[int, int]] = field(default_factory=dict)  # predicted label -> (correct, n)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson_interval(self.correct, self.n) if self.n else None

    def per_class(self, min_n: int = 5) -> dict[str, float]:
        """Accuracy per predicted label, where at least ``min_n`` were audited."""
        return {k: c / n for k, (c, n) in sorted(self.by_label.items()) if n >= min_n}


def audit_estimate(batch_rows: list[dict], humans: dict[str, str]) -> AuditEstimate | None:
    """Accuracy of a batch's auto labels on its answered audit items (None if it had no audit)."""
    audit = [b for b in batch_rows if b["purpose"] == "audit"]
    if not audit:
        return None
    answered = [b for b in audit if b["image_id"] in humans]
    by_label: dict[str, tuple[int, int]] = {}
    for b in answered:
        c, n = by_label.get(b["predicted_label"], (0, 0))
        by_label[b["predicted_label"]] = (c + (humans[b["image_id"]] == b["predicted_label"]), n + 1)
    return AuditEstimate(int(audit[0]["round"]), len(answered),
                         sum(humans[b["image_id"]] == b["predicted_label"] for b in answered), by_label)


def latest_audit(ws: Workspace, humans: dict[str, str], before_round: int) -> AuditEstimate | None:
    """The audit of the newest earlier round that has answered audit items."""
    for r in range(before_round - 1, 0, -1):
        est = audit_estimate(read_csv(ws.review / f"round-{r:03d}.batch.csv"), humans)
        if est is not None and est.n:
            return est
    return None


@task(name="select", cache_policy=NO_CACHE)
def select_task(ws: Workspace, cfg: RoundConfig, round_no: int) -> SelectResult:
    return select(ws, cfg, round_no)
