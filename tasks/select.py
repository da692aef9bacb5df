"""select: the next review batch: the most uncertain unlabeled images plus a random audit sample.

Scoring is pure (probabilities in, scores out; higher = ask a human sooner). The audit sample
is drawn first, uniformly from every image without a human label that is not waiting in an
earlier unanswered batch, so its answers are an unbiased estimate of the auto-label accuracy;
the uncertain picks come from the rest.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from coldstart.tasks import labelstudio, strategies
from coldstart.tasks.audit import design_probabilities, systematic_sample
from coldstart.tasks.config import UNKNOWN_LABEL, OntologyConfig, RegionsConfig, RoundConfig
from coldstart.tasks.discover import reask_limit
from coldstart.tasks.errors import SelectionError
from coldstart.tasks.heads import waiting_reasks
from coldstart.tasks.labellog import current_answers, read_events, region_answers
from coldstart.tasks.regionexports import regions_to_labelstudio
from coldstart.tasks.regiontable import read_regions, regions_dir
from coldstart.tasks.relabel import load_probs, read_resolved
from coldstart.tasks.result import StageResult
from coldstart.tasks.store import EmbeddingStore
from coldstart.tasks.strategies import uncertainty
from coldstart.tasks.tokens import image_urls
from coldstart.tasks.workspace import Workspace, atomic_write_text, escape_formula, read_csv, write_csv

log = logging.getLogger(__name__)

BATCH_FIELDS = ["image_id", "image", "purpose", "predicted_label", "confidence", "source", "model_id", "score", "round",
                "note", "inclusion", "audit_pool"]
# note: only for labels sent back for a second look (it says why); empty for everything else.
# inclusion, audit_pool: audit items only, the probability it was drawn with and the number of
# images it was drawn from (round.audit_design), so any round's estimate can be recomputed.
REVIEW_FIELDS = ["image_id", "image", "suggested_label", "confidence", "label", "annotator", "note"]
# The regions to review (round-NNN.regions.csv): answered by region id; bbox "x y w h" in pixels.
REGION_REVIEW_FIELDS = ["region_id", "image_id", "image", "bbox", "suggested_label", "confidence", "label",
                        "annotator", "note"]


def select_indices(probs: np.ndarray, budget: int, *, strategy: str, audit: int, seed: int,
                   X: np.ndarray | None = None, labeled_X: np.ndarray | None = None, factor: int = 5,
                   measure: str = "margin", class_cap: float | None = None,
                   inclusion: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``audit`` rows for the audit, then ``budget - audit`` of the rest by ``strategy``.

    The audit sample is drawn first from the whole pool: uniformly at random, or, given
    ``inclusion`` ``(N,)`` (each row's probability of being drawn, summing to ``audit``:
    ``audit.design_probabilities``), by systematic sampling with exactly those probabilities.
    Either way its answers give an unbiased accuracy estimate. Returns (chosen, audit) indices.
    """
    n = len(probs)
    if n == 0:
        raise SelectionError("nothing to select: every image already has a human label (or there are no images)")
    if budget > n:
        raise SelectionError(f"budget {budget} is larger than the pool of {n} unlabeled images")
    if not 0 <= audit <= budget:
        raise SelectionError(f"audit size {audit} must be between 0 and the budget {budget}")
    options: dict[str, Any] = dict(factor=factor, measure=measure, class_cap=class_cap)
    strategies.build(strategy, **options)  # a bad name or option fails here, even with an all-audit batch
    rng = np.random.default_rng(seed)
    if inclusion is not None and audit:
        if len(inclusion) != n or abs(float(np.sum(inclusion)) - audit) > 1e-6 or np.min(inclusion) < 0:
            raise SelectionError(f"audit inclusion probabilities must be {n} values >= 0 summing to {audit}")
        audit_idx = systematic_sample(inclusion, rng)
    else:
        audit_idx = rng.choice(n, size=audit, replace=False) if audit else np.zeros(0, int)
    rest = np.setdiff1d(np.arange(n), audit_idx)
    if budget - audit == 0:
        return np.zeros(0, int), np.asarray(audit_idx, int)
    picked = strategies.choose(strategy, budget - audit, probs=probs[rest], X=None if X is None else X[rest],
                               labeled_X=labeled_X, seed=seed, **options)
    return rest[picked], np.asarray(audit_idx, int)


# The cold start ends after this many batches at most, however many classes: TypiClust clusters
# the pool into labels + budget clusters, which for an ontology of hundreds of classes would be
# thousands of k-means centres.
COLD_START_MAX_BATCHES = 5


def in_cold_start(n_labels: int, n_classes: int, cfg: RoundConfig) -> bool:
    """Whether a round with ``n_labels`` human labels still picks by ``cfg.first_strategy``: until
    ``cold_start_per_class`` labels per class (at most COLD_START_MAX_BATCHES budgets), and always
    without any label. On digits (`coldstart bench al`), TypiClust's first 3 per class and then
    uncertainty took 42.5 labels to 95% (mean of 20 seeds), against 56 switching at 1 per class."""
    return n_labels < max(1, min(cfg.cold_start_per_class * n_classes, COLD_START_MAX_BATCHES * cfg.budget))


def waiting(ws: Workspace, round_no: int, humans: set[str]) -> set[str]:
    """Image ids in earlier review batches (asked or audited, not re-checks) that are not in
    ``humans`` (the human-labeled ids): their answers may still come."""
    out: set[str] = set()
    for r in range(1, round_no):
        for b in read_csv(ws.review / f"round-{r:03d}.batch.csv"):
            if b["purpose"] != "recheck" and b["image_id"] not in humans:
                out.add(b["image_id"])
    return out


def _cell(value: str) -> str:
    """Escape cells a spreadsheet would run as a formula (CSV injection); intake undoes it."""
    return escape_formula(value)


@dataclass
class SelectResult(StageResult):
    batch_size: int
    chosen: int  # by the strategy
    audit: int
    pool: int
    files: list[str]
    strategy: str = ""
    recheck: int = 0  # human labels sent back for a second look (re-asks included)
    reasked: int = 0  # of them: "none of these" answers asked again after a class was adopted
    regions: int = 0  # regions offered for review (regions.review_budget, least certain first)

    def metrics(self) -> dict[str, float | None]:
        return {"label_flags": self.recheck, "batch_size": self.batch_size, "batch_audit": self.audit,
                "batch_regions": self.regions}


def select_regions(ws: Workspace, budget: int, round_no: int) -> list:
    """The ``budget`` least certain regions (smallest top-1 minus top-2 margin) that a person
    has not labeled and that no earlier, still unanswered regions batch holds. Background
    regions count (the labeler may be wrong that they are); contained ones do not (their
    container is asked)."""
    if budget <= 0:
        return []
    answers = region_answers(read_events(ws))
    answered = set(answers)
    asked = {r["region_id"] for k in range(1, round_no)
             for r in read_csv(ws.review / f"round-{k:03d}.regions.csv")} - answered
    every = read_regions(regions_dir(ws), dropped=True)
    # "None of these" answers of a region proposal adopted since: asked again first, with the
    # adopted class suggested (at most half the budget).
    suggested = {r["region_id"]: r["suggested_label"] for r in waiting_reasks(ws, answers, regions=True)}
    again = [replace(r, label=suggested[r.region_id]) for r in every if r.region_id in suggested]
    again = sorted(again, key=lambda r: r.region_id)[: reask_limit(budget)]
    pool = [r for r in every
            if r.dropped != "contained" and not r.labeler.startswith("human:") and r.region_id not in asked
            and r.region_id not in answered]
    return again + sorted(pool, key=lambda r: (r.margin, r.region_id))[: budget - len(again)]


def _write_regions_batch(ws: Workspace, stem: Path, picked: list) -> list[str]:
    """round-NNN.regions.csv (answer by region id) and round-NNN.regions.tasks.json (Label Studio:
    one task per image, the picked regions as editable polygons), ordered by image path."""
    picked = sorted(picked, key=lambda r: (r.path, r.bbox[1], r.bbox[0]))
    write_csv(stem.with_suffix(".regions.csv"), REGION_REVIEW_FIELDS, [
        dict(region_id=r.region_id, image_id=r.image_id, image=_cell(r.path),
             bbox=" ".join(f"{v:g}" for v in r.bbox), suggested_label=_cell(r.label), confidence=f"{r.confidence:.6f}",
             label="", annotator="", note="") for r in picked])
    images = {r.image_id: (r.image_id, r.path, r.rle["size"][1], r.rle["size"][0]) for r in picked}
    tasks = regions_to_labelstudio(picked, list(images.values()), model_version=picked[0].labeler if picked else "",
                                   url_of=image_urls(ws))
    atomic_write_text(stem.with_suffix(".regions.tasks.json"), labelstudio.tasks_json(tasks))
    return [ws.rel(stem.with_suffix(s)) for s in (".regions.csv", ".regions.tasks.json")]


def select(ws: Workspace, cfg: RoundConfig, round_no: int, regions: RegionsConfig | None = None,
           ontology: OntologyConfig | None = None) -> SelectResult:
    """The select stage: read the resolved table and its probabilities, write its declared output, the
    review batch data/review/round-NNN.{csv,batch.csv,tasks.json} (and label_config.xml); with
    ``regions.enabled``, also the regions to review, round-NNN.regions.{csv,tasks.json}."""
    result = _select_images(ws, cfg, round_no)
    if regions is not None and regions.enabled:
        onto = ontology if ontology is not None else ws.params().ontology  # a round passes its own
        picked = select_regions(ws, regions.review_budget, round_no)
        stem = ws.review / f"round-{round_no:03d}"
        if picked:
            result.files += _write_regions_batch(ws, stem, picked)
            result.regions = len(picked)
        # One project config for both: the image's choice and the region polygons.
        atomic_write_text(ws.review / "label_config.xml", labelstudio.project_config(onto, regions=True))
    return result


def _select_images(ws: Workspace, cfg: RoundConfig, round_no: int) -> SelectResult:
    """The image review batch: the audit sample and the uncertain picks from the images without a
    human label nor a place in an open batch, plus human labels sent back for a second look."""

    ids, probs, classes, (model_id, view) = load_probs(ws)
    resolved = {r["image_id"]: r for r in read_resolved(ws)}
    labeled = [i for i in ids if resolved[i]["source"] == "human"]
    # Images waiting in an earlier, still unanswered batch are not asked again, and above all not
    # drawn for the audit: an answer meant for one round's batch must not count as another's.
    pending = waiting(ws, round_no, set(labeled))
    # "None of these" answers asked again since a class was adopted (coldstart discover --adopt):
    # they come first, as re-checks (they are human labels: never in the pool).
    row_of = {i: k for k, i in enumerate(ids)}
    reasks = _reasks(ws, cfg, resolved, round_no,
                     lambda i, label: float(probs[row_of[i], classes.index(label)]) if label in classes else 0.0)
    pool = [k for k, i in enumerate(ids) if resolved[i]["source"] != "human" and i not in pending]
    written = len([c for c in classes if c != UNKNOWN_LABEL])
    strategy = cfg.first_strategy if in_cold_start(len(labeled), written, cfg) else cfg.strategy
    rechecks = reasks + _rechecks(ws, cfg, resolved, round_no)[: max(0, cfg.budget - len(reasks))]
    # review_policy critical: every auto label goes to review. The batch is the whole pool
    # (round.budget does not cap it), and all of it is audit: a census of this round's labels.
    cap = len(pool) + len(rechecks) if cfg.review_policy == "critical" else cfg.budget
    budget = min(cap - len(rechecks), len(pool))
    stem = ws.review / f"round-{round_no:03d}"
    ws.review.mkdir(parents=True, exist_ok=True)
    if budget == 0 and not rechecks:
        log.warning("every image has a human label or waits in an unanswered review batch: no review batch "
                    "this round (answer the open batches in data/review/)")
        return SelectResult(batch_size=0, chosen=0, audit=0, pool=0, files=[], strategy=strategy)
    if budget < cap - len(rechecks):
        log.warning("only %d unlabeled images left; the batch is smaller than round.budget=%d", budget, cfg.budget)
    n_audit = min(budget, math.ceil(budget * cfg.audit_fraction)) if cfg.audit_fraction > 0 else 0
    seed = cfg.seed * 100_003 + round_no
    sub = probs[pool]
    X = labeled_X = None
    if budget > n_audit and strategies.build(strategy).needs_embeddings:  # an all-audit batch picks nothing
        store = EmbeddingStore(ws.embeddings, model_id, view)
        _, X = store.load([ids[k] for k in pool])
        _, labeled_X = store.load(labeled) if labeled else (None, None)
    # The audit's design: each image's chance of being drawn, recorded with it (tasks/audit.py).
    inclusion = design_probabilities(cfg.audit_design, sub.max(1), n_audit)
    chosen, aud = select_indices(sub, budget, strategy=strategy, audit=n_audit, seed=seed, X=X, labeled_X=labeled_X,
                                 factor=cfg.hybrid_factor, measure=cfg.uncertainty, class_cap=cfg.class_cap,
                                 inclusion=inclusion if cfg.audit_design == "uncertainty" else None) \
        if budget else (np.zeros(0, int), np.zeros(0, int))
    scores = uncertainty(sub, cfg.uncertainty)
    batch = []
    for purpose, picks in ((strategy, chosen), ("audit", aud)):
        for j in picks:
            r = resolved[ids[pool[j]]]
            design = dict(inclusion=f"{inclusion[j]:.9g}", audit_pool=len(pool)) if purpose == "audit" else {}
            batch.append(dict(image_id=r["image_id"], image=r["path"], purpose=purpose, predicted_label=r["label"],
                              confidence=f"{r['confidence']:.6f}", source=r["source"], model_id=r["model_id"],
                              score=f"{scores[j]:.6f}", round=round_no, note="", **design))
    batch.extend(rechecks)
    files = _write_batch(ws, stem, batch, classes, {r["image_id"]: resolved[r["image_id"]]["label"] for r in rechecks
                                                    if r["source"] == "human"})
    return SelectResult(batch_size=len(batch), chosen=len(chosen), audit=len(aud), pool=len(pool), files=files,
                        strategy=strategy, recheck=len(rechecks), reasked=len(reasks))


def _rechecks(ws: Workspace, cfg: RoundConfig, resolved: dict[str, dict], round_no: int) -> list[dict]:
    """Human labels the held-out model disagrees with (data/labels/flags.csv, most confident
    first) as batch rows, to go back for a second look inside the budget: a batch never holds
    more than round.budget images, so at most ``recheck_fraction`` of it are rechecks."""
    rechecks: list[dict] = []
    max_rechecks = min(math.ceil(cfg.recheck_fraction * cfg.budget), cfg.budget)
    for f in read_csv(ws.flags):  # most confident first
        if len(rechecks) >= max_rechecks:
            break
        r = resolved.get(f["image_id"])
        if r is None or r["source"] != "human" or r["label"] != f["human_label"]:
            continue  # image gone, or already corrected since
        rechecks.append(dict(image_id=r["image_id"], image=r["path"], purpose="recheck",
                             predicted_label=f["suggested_label"], confidence=f["probability"], source="human",
                             model_id="", score="", round=round_no,
                             note=f"please check: labeled {f['human_label']!r}, the model (held out) says "
                                  f"{f['suggested_label']!r} with p={float(f['probability']):.2f}"))
    return rechecks


def _reasks(ws: Workspace, cfg: RoundConfig, resolved: dict[str, dict], round_no: int,
            prob: Callable[[str, str], float]) -> list[dict]:
    """The "none of these" answers still waiting to be asked again (data/labels/reask.csv, whose
    answer is still the one adoption found), as batch rows with the adopted class suggested (and
    ``prob(image id, label)``, the head's probability of it): at most ``discover.reask_limit`` of
    the budget this round (the rest, the next)."""
    rows: list[dict] = []
    current = {i: e for (i, region), e in current_answers(read_events(ws)).items() if not region}
    for r in waiting_reasks(ws, current):
        image = resolved.get(r["image_id"])
        if image is None:  # no longer in the workspace
            continue
        if len(rows) >= reask_limit(cfg.budget):
            break
        rows.append(dict(image_id=r["image_id"], image=image["path"], purpose="recheck",
                         predicted_label=r["suggested_label"],
                         confidence=f"{prob(r['image_id'], r['suggested_label']):.6f}", source="reask",
                         model_id=image["model_id"], score="", round=round_no,
                         note=f"asked again: answered {r['answer']!r} before the class {r['suggested_label']!r} "
                              f"was added; pick it if it fits (or 'unknown' again)"))
    return rows


def _write_batch(ws: Workspace, stem: Path, batch: list[dict], classes: list[str], human: dict[str, str]) -> list[str]:
    """round-NNN.batch.csv (what was picked and why), round-NNN.csv and round-NNN.tasks.json (what
    the annotator sees, by path) and label_config.xml; returns the first three, relative.
    ``human``: the rechecked images' own labels, which Label Studio pre-selects."""
    write_csv(stem.with_suffix(".batch.csv"), BATCH_FIELDS, batch)
    # What the annotator sees: sorted by path, so audit items are not told apart from the rest.
    review = sorted(batch, key=lambda b: b["image"])
    write_csv(stem.with_suffix(".csv"), REVIEW_FIELDS, [
        dict(image_id=b["image_id"], image=_cell(b["image"]), suggested_label=_cell(b["predicted_label"]),
             confidence=b["confidence"], label="", annotator="", note=_cell(b["note"])) for b in review])
    url_of = image_urls(ws)
    # A re-check pre-selects the person's own label and says in a note why it is asked again.
    tasks = labelstudio.review_tasks(review, url_of, human=human)
    atomic_write_text(stem.with_suffix(".tasks.json"), labelstudio.tasks_json(tasks))
    atomic_write_text(ws.review / "label_config.xml", labelstudio.label_config(classes))
    return [ws.rel(stem.with_suffix(s)) for s in (".csv", ".batch.csv", ".tasks.json")]
