"""audit: how right the auto labels are, from the uniformly random audit items of every round.

What is sampled
    Let U_k be the images of round k that had no human label and were not waiting in an
    unanswered batch when round k's review batch was drawn. The select stage draws the audit
    items A_k *first*, a simple random sample (without replacement) of U_k, before any strategy
    looks at the images. Once a person answers them they are human labels like any other: they
    train every later head.

What is estimated (the current labeling procedure, out of fold)
    Round n's train stage fits the labeler on all human labels H_n (which hold every answered
    audit item) and cross-validates it: every human label gets a prediction from the same
    procedure fitted without that label's fold (``TrainResult.oof_probs``). The head itself
    cannot be scored on the audit items (it trained on them); its fold models can, each on items
    it never saw. So the estimate is

        p_hat = #{audit items whose out-of-fold prediction equals the person's answer} / n,

    over the answered audit items of *every* earlier round, and n grows round by round (15 per
    round with a batch of 50 and the ``specialist`` policy) instead of restarting at the newest
    batch's 5. p_hat is the accuracy of the current labeling procedure on a stratified uniform
    sample of the pools U_1, ..., U_{n-1} (stratum k weighted by its count of audit items).

Caveats: what it does not measure exactly
    - The auto labels this round are on U_n, and U_n is a subset of every earlier pool: the
      pools shrink as people label batches, and the strategy takes the *uncertain* images out
      first. So the earlier pools are harder than today's, and p_hat tends to sit *below* the
      accuracy of today's auto labels (measured on digits by ``coldstart bench al``:
      ``audit_bias``). Images added after round k are represented only by audits drawn after
      they arrived.
    - Each fold model is fitted on (K-1)/K of the labels: slightly weaker than the head that
      labels the pool (again conservative). Choosing the labeler among three candidates by the
      same out-of-fold accuracy is slightly optimistic (three candidates: small).
    - The interval treats the n right/wrong outcomes as independent Bernoulli(p) draws: random
      samples from pools much larger than the sample, scored by the K fold models (the usual
      cross-validation approximation).
    Measured (``coldstart bench al``: digits, ``specialist``, batches of 50, 20 seeds x rounds
    2-8 = 140 pairs): p_hat sat 3.7 points below the true accuracy of the round's auto labels on
    average (the newest batch alone: 2.0, so about 1.7 from the older, harder pools and 2.0 from
    the weaker fold models); the two-sided interval held the truth in 64% of the pairs (the
    truth above it), the one-sided lower bound in 100%. So the bound is safe for gates, and the
    estimate errs low: it is a conservative figure, not an unbiased one, for today's labels.

The interval
    Clopper-Pearson (exact, from the beta distribution): its coverage is at least 95% for every
    true accuracy and every n. Wilson's score interval, used before, covered only 88.5% of
    benchmark rounds: at n <= 20 its coverage dips to about 0.83, at p ~ 0.96-0.99, which is
    exactly where auto-label accuracy lives. Gates (``stop.audit_lower_bound``, the auto-accept
    threshold) decide "is it at least x?": they use the one-sided 95% lower bound, P(accuracy >=
    bound) >= 95%.

Until the train stage has run (or when its out-of-fold predictions do not line up with the
human labels), the estimate is the newest answered batch's own audit: its items against the
labels that round gave them, before their answers trained anything (``method: as labeled``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from coldstart.tasks.intake import human_labels, read_events
from coldstart.tasks.result import IN_MEMORY, StageResult
from coldstart.tasks.workspace import Workspace, read_csv

if TYPE_CHECKING:
    from coldstart.tasks.train import TrainResult

log = logging.getLogger(__name__)

ALPHA = 0.05  # 95% intervals and bounds


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); (0, 1) when n == 0.

    Kept for comparison only: at small n and p near 1 its coverage falls well below nominal
    (see the module docstring); the audit reports Clopper-Pearson.
    """
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def clopper_pearson_interval(correct: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Exact two-sided binomial interval: coverage >= 1 - alpha for every true proportion.

    Bounds are beta quantiles: low = Beta(alpha/2; k, n-k+1), high = Beta(1-alpha/2; k+1, n-k),
    with 0 when k == 0 and 1 when k == n; (0, 1) when n == 0.
    """
    from scipy.stats import beta

    if n == 0:
        return 0.0, 1.0
    lo = 0.0 if correct == 0 else float(beta.ppf(alpha / 2, correct, n - correct + 1))
    hi = 1.0 if correct == n else float(beta.ppf(1 - alpha / 2, correct + 1, n - correct))
    return lo, hi


def clopper_pearson_lower(correct: int, n: int, alpha: float = ALPHA) -> float:
    """One-sided exact lower bound: P(true proportion >= bound) >= 1 - alpha; 0 when n == 0.

    What a gate ("is the accuracy at least x?") needs: the whole alpha on one side, so it is
    higher than the two-sided interval's lower end (e.g. 50/50: 0.942 against 0.929).
    """
    from scipy.stats import beta

    if n == 0 or correct == 0:
        return 0.0
    return float(beta.ppf(alpha, correct, n - correct + 1))


@dataclass
class AuditItem:
    """One answered audit item: drawn uniformly from round ``drawn``'s pool."""

    image_id: str
    drawn: int  # the round whose batch drew it
    answer: str  # the person's label (the latest answer)
    labeled: str  # the label that round gave it (before the answer could train anything)


@dataclass
class AuditEstimate(StageResult):
    """The audit estimate: accuracy of auto labels, with its 95% Clopper-Pearson interval and n.

    ``method`` says which: ``out-of-fold`` (the current round's labeling procedure, scored out
    of fold on the answered audit items of every earlier round; ``round`` is the current round)
    or ``as labeled`` (the newest answered batch against the labels its round gave; ``round`` is
    that batch's round). See the module docstring for the population and its caveats.
    """

    round: int  # the round whose auto labels are estimated
    n: int  # audit items counted
    correct: int
    by_label: dict[str, list[int]] = field(default_factory=dict)  # predicted label -> [correct, n]
    method: str = "as labeled"
    drawn_in: list[int] = field(default_factory=list)  # the rounds whose batches drew the items
    # Each audited batch against the labels its own round gave: round -> [correct, n].
    as_labeled: dict[str, list[int]] = field(default_factory=dict)
    # For the out-of-fold estimate, once the train stage has run (not recorded):
    items: list[AuditItem] = field(default_factory=list, metadata=IN_MEMORY)
    sample_ids: list[str] | None = field(default=None, metadata=IN_MEMORY)  # the train stage's image rows
    classes: list[str] = field(default_factory=list, metadata=IN_MEMORY)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """Clopper-Pearson 95% interval of ``accuracy`` (None without items)."""
        return clopper_pearson_interval(self.correct, self.n) if self.n else None

    @property
    def lower_bound(self) -> float | None:
        """One-sided 95% lower bound of ``accuracy``: what gates compare with."""
        return clopper_pearson_lower(self.correct, self.n) if self.n else None

    def per_class(self, min_n: int = 5) -> dict[str, float]:
        """Accuracy per predicted label, where at least ``min_n`` were audited."""
        return {k: c / n for k, (c, n) in sorted(self.by_label.items()) if n >= min_n}

    def describe(self) -> str:
        """``96.0% correct (95% CI 91.2-98.7%, n=75, out-of-fold on the audits of rounds 1-5)``."""
        if not self.n:
            return "no answered audit items yet"
        lo, hi = self.interval
        rounds = sorted(set(self.drawn_in))
        where = (f"rounds {rounds[0]}-{rounds[-1]}" if len(rounds) > 1 else f"round {rounds[0]}") if rounds \
            else f"round {self.round}"
        how = f"out-of-fold on the audits of {where}" if self.method == "out-of-fold" else f"{where}'s audit as labeled"
        return f"{100 * self.accuracy:.1f}% correct (95% CI {100 * lo:.1f}-{100 * hi:.1f}%, n={self.n}, {how})"

    def metrics(self) -> dict[str, float | None]:
        low, high = self.interval or (None, None)
        return {"audit_accuracy": self.accuracy, "audit_low": low, "audit_high": high, "audit_n": self.n,
                "audit_lower_bound": self.lower_bound,
                **{f"audit_accuracy.{k}": v for k, v in self.per_class().items()}}

    def use_out_of_fold(self, train: "TrainResult", round_no: int) -> bool:
        """Replace the estimate by the current labeler's out-of-fold one (see the module
        docstring), from ``train.oof_probs``: its rows are the train stage's samples, the
        human-labeled images in ``sample_ids`` order, then any labeled regions. True if done;
        False (the estimate unchanged) when there is nothing to score or the rows do not line up."""
        oof = getattr(train, "oof_probs", None)
        if self.method == "out-of-fold" or oof is None or not self.items or self.sample_ids is None:
            return False
        if len(self.sample_ids) + train.region_labels != len(oof):
            log.warning("audit: the train stage has %d samples, expected %d images + %d regions: keeping the "
                        "as-labeled estimate", len(oof), len(self.sample_ids), train.region_labels)
            return False
        row = {i: k for k, i in enumerate(self.sample_ids)}
        scored = [(it, int(np.argmax(oof[row[it.image_id]]))) for it in self.items if it.image_id in row]
        if not scored:
            return False
        by_label: dict[str, list[int]] = {}
        for it, pred in scored:
            label = self.classes[pred] if pred < len(self.classes) else str(pred)
            c, n = by_label.get(label, [0, 0])
            by_label[label] = [c + (label == it.answer), n + 1]
        self.round, self.method = round_no, "out-of-fold"
        self.n = len(scored)
        self.correct = sum(c for c, _ in by_label.values())
        self.by_label = by_label
        self.drawn_in = sorted({it.drawn for it, _ in scored})
        return True


def audit_items(batch_rows: list[dict], humans: dict[str, str]) -> list[AuditItem]:
    """A batch's audit items that people have answered."""
    return [AuditItem(b["image_id"], int(b["round"]), humans[b["image_id"]], b["predicted_label"])
            for b in batch_rows if b["purpose"] == "audit" and b["image_id"] in humans]


def audit_estimate(batch_rows: list[dict], humans: dict[str, str]) -> AuditEstimate | None:
    """A batch's auto labels against its answered audit items, as that round labeled them (None
    if the batch had no audit)."""
    audit = [b for b in batch_rows if b["purpose"] == "audit"]
    if not audit:
        return None
    answered = audit_items(batch_rows, humans)
    by_label: dict[str, list[int]] = {}
    for it in answered:
        c, n = by_label.get(it.labeled, [0, 0])
        by_label[it.labeled] = [c + (it.answer == it.labeled), n + 1]
    r = int(audit[0]["round"])
    correct = sum(it.answer == it.labeled for it in answered)
    return AuditEstimate(r, len(answered), correct, by_label, drawn_in=[r] if answered else [],
                         as_labeled={str(r): [correct, len(answered)]}, items=answered)


def latest_audit(ws: Workspace, humans: dict[str, str], before_round: int) -> AuditEstimate | None:
    """The as-labeled audit of the newest earlier round that has answered audit items."""
    for r in range(before_round - 1, 0, -1):
        est = audit_estimate(read_csv(ws.review / f"round-{r:03d}.batch.csv"), humans)
        if est is not None and est.n:
            return est
    return None


def every_audit(ws: Workspace, before_round: int) -> list[AuditEstimate]:
    """The as-labeled audit of every earlier round with answered audit items, oldest first:
    each answered item counts for the round whose batch it was drawn for."""
    humans = human_labels(read_events(ws))
    out = []
    for r in range(1, before_round):
        est = audit_estimate(read_csv(ws.review / f"round-{r:03d}.batch.csv"), humans)
        if est is not None and est.n:
            out.append(est)
    return out


def sample_order(ws: Workspace, humans: dict[str, str]) -> list[str]:
    """The human-labeled image ids in the order of the train stage's samples (``read_pool``:
    the global-view store's shards in order, images in the manifest, with a human label)."""
    from coldstart.tasks.embed import load_model
    from coldstart.tasks.scan import image_table
    from coldstart.tasks.store import EmbeddingStore

    params = ws.params()
    store = EmbeddingStore(ws.embeddings, load_model(params.model).model_id, params.views.key("global"))
    table = image_table(ws)
    return [i for path, _ in store.shards() for i in (x.decode() for x in np.load(path))
            if i in table and i in humans]


def audit(ws: Workspace, round_no: int) -> AuditEstimate | None:
    """The audit stage: every answered audit item of the earlier rounds. Its estimate is the
    newest batch's as-labeled one until ``use_out_of_fold`` scores the items with the train
    stage's out-of-fold predictions (the round record does, once the train stage has run)."""
    humans = human_labels(read_events(ws))
    batches = [audit_estimate(read_csv(ws.review / f"round-{r:03d}.batch.csv"), humans) for r in range(1, round_no)]
    answered = [b for b in batches if b is not None and b.n]
    if not answered:
        return None
    est = answered[-1]
    est.items = [it for b in answered for it in b.items]
    est.as_labeled = {str(b.round): [b.correct, b.n] for b in answered}
    est.classes = ws.params().ontology.class_names
    try:
        est.sample_ids = sample_order(ws, humans)
    except Exception as e:  # no store yet, or an unreadable one: the train stage reports it
        log.warning("audit: cannot line the audit items up with the training samples (%s)", e)
    return est


@task(name="audit", cache_policy=NO_CACHE)
def audit_task(ws: Workspace, round_no: int) -> AuditEstimate | None:
    return audit(ws, round_no)
