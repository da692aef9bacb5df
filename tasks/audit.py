"""audit: how right a round's auto labels were, from its uniformly random audit sample.

Each review batch holds a few items drawn uniformly at random from every image without a human
label (before the strategy picked anything). Once people answer them, comparing their answers
with the labels that round predicted is an unbiased estimate of the auto-label accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prefect import task
from prefect.cache_policies import NO_CACHE

from coldstart.tasks.intake import human_labels, read_events
from coldstart.tasks.result import StageResult
from coldstart.tasks.workspace import Workspace, read_csv


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); (0, 1) when n == 0.

    Unlike the normal approximation it stays inside [0, 1] and is sensible for tiny n and for
    proportions near 0 or 1, which is exactly the audit's situation.
    """
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def clopper_pearson_interval(correct: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (conservative) binomial interval; coverage >= 1 - alpha for every true accuracy.

    Reported beside Wilson for tiny audits, where Wilson's coverage can fall below nominal.
    """
    from scipy.stats import beta

    if n == 0:
        return 0.0, 1.0
    lo = 0.0 if correct == 0 else float(beta.ppf(alpha / 2, correct, n - correct + 1))
    hi = 1.0 if correct == n else float(beta.ppf(1 - alpha / 2, correct + 1, n - correct))
    return lo, hi


@dataclass
class AuditEstimate(StageResult):
    """The audit of one round. Its items are compared with the labels that round predicted,
    before their answers could train any model; afterwards they train later rounds like any
    label (calibration and thresholds use out-of-fold predictions, never these estimates)."""

    round: int  # the round whose auto labels were audited
    n: int  # audit items answered
    correct: int
    by_label: dict[str, list[int]] = field(default_factory=dict)  # predicted label -> [correct, n]

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """Wilson 95% interval of ``accuracy``."""
        return wilson_interval(self.correct, self.n) if self.n else None

    def per_class(self, min_n: int = 5) -> dict[str, float]:
        """Accuracy per predicted label, where at least ``min_n`` were audited."""
        return {k: c / n for k, (c, n) in sorted(self.by_label.items()) if n >= min_n}

    def metrics(self) -> dict[str, float | None]:
        low, high = self.interval or (None, None)
        return {"audit_accuracy_prev_round": self.accuracy, "audit_low_prev_round": low,
                "audit_high_prev_round": high, "audit_n": self.n,
                **{f"audit_accuracy_prev_round.{k}": v for k, v in self.per_class().items()}}


def audit_estimate(batch_rows: list[dict], humans: dict[str, str]) -> AuditEstimate | None:
    """Accuracy of a batch's auto labels on its answered audit items (None if it had no audit)."""
    audit = [b for b in batch_rows if b["purpose"] == "audit"]
    if not audit:
        return None
    answered = [b for b in audit if b["image_id"] in humans]
    by_label: dict[str, list[int]] = {}
    for b in answered:
        c, n = by_label.get(b["predicted_label"], [0, 0])
        by_label[b["predicted_label"]] = [c + (humans[b["image_id"]] == b["predicted_label"]), n + 1]
    return AuditEstimate(int(audit[0]["round"]), len(answered),
                         sum(humans[b["image_id"]] == b["predicted_label"] for b in answered), by_label)


def latest_audit(ws: Workspace, humans: dict[str, str], before_round: int) -> AuditEstimate | None:
    """The audit of the newest earlier round that has answered audit items."""
    for r in range(before_round - 1, 0, -1):
        est = audit_estimate(read_csv(ws.review / f"round-{r:03d}.batch.csv"), humans)
        if est is not None and est.n:
            return est
    return None


def every_audit(ws: Workspace, before_round: int) -> list[AuditEstimate]:
    """The audit estimate of every earlier round with answered audit items, oldest first: each
    answered item counts for the round whose batch it was drawn for."""
    humans = human_labels(read_events(ws))
    out = []
    for r in range(1, before_round):
        est = audit_estimate(read_csv(ws.review / f"round-{r:03d}.batch.csv"), humans)
        if est is not None and est.n:
            out.append(est)
    return out


def audit(ws: Workspace, round_no: int) -> AuditEstimate | None:
    """The audit stage: the newest answered audit of an earlier round, with the answers now in."""
    return latest_audit(ws, human_labels(read_events(ws)), round_no)


@task(name="audit", cache_policy=NO_CACHE)
def audit_task(ws: Workspace, round_no: int) -> AuditEstimate | None:
    return audit(ws, round_no)
