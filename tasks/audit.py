"""audit: how right the auto labels are, from the audit items of every round.

What is sampled
    Let U_k be the images of round k that had no human label and were not waiting in an
    unanswered batch when round k's review batch was drawn. The select stage draws the audit
    items A_k *first*, before any strategy looks at the images, each image i with a known
    probability pi_i > 0 (``round.audit_design``): ``uncertainty`` (default) makes pi_i grow with
    the uncertainty of its auto label (``inclusion_probabilities``), ``uniform`` makes them
    equal. The draw is systematic sampling over a seeded random order (``systematic_sample``:
    each image drawn with exactly pi_i), and the batch file records pi_i and |U_k| for each audit
    item (columns ``inclusion`` and ``audit_pool``). Once answered, audit items are human labels
    like any other: they train every later head.

Scored out of fold: the current labeling procedure on every audit item
    Round n's train stage fits the labeler on all human labels H_n (which hold every answered
    audit item) and cross-validates it: every human label gets a prediction, with its
    confidence, from the same procedure fitted without that label's fold
    (``TrainResult.oof_probs``, calibrated with the round's temperature). The head itself cannot
    be scored on the audit items (it trained on them); its fold models can, each on items it
    never saw. This uses the audit items of *every* earlier round, so n grows round by round.

The estimate (``difference_estimate``, what is reported)
    The model expects mean(c_i) of today's N auto labels to be right (c_i: calibrated
    confidence). The audit measures how far that expectation is off: the residual r_j = right_j
    - c_j of each audit item, averaged per audited round with Horvitz-Thompson weights
    1 / (|U_k| pi_j), which is unbiased for the mean residual of U_k whatever the design:

        accuracy = mean_i c_i + sum_k (n_k / n) * (1/n_k) sum_{j in A_k} r_j n_k / (|U_k| pi_j)

    This is prediction-powered inference (Angelopoulos et al. 2023) with the confidence as the
    prediction, under an adaptive design (Zrnic & Candes 2024): the residual is small where the
    model is sure, so the audit draws where it is not. It assumes today's pool is miscalibrated
    as the audited pools were (the audited pools are older and harder, since the review took
    the uncertain images out); ``coldstart bench al`` measures what that costs (the bias column).

The interval
    Estimate +- 1.96 standard errors. Per audited round, the variance is the larger of the
    items' own spread (the with-replacement approximation) and the spread the model's confidence
    implies (sum w^2 c (1 - c): errors that happen at that confidence but were not drawn yet;
    without it an audit that has seen few errors claims too narrow an interval), plus the chance
    in which today's auto labels are right given their confidences (sum c (1 - c) / N^2).
    Measured (``coldstart bench al``, BENCHMARKS.md "Audit coverage"). The estimator used
    before, ``weighted_accuracy`` (a ratio of errors found to errors expected per confidence
    band, with exact Poisson limits), is kept: the report shows its bands, and the benchmark
    compares both under both designs. Before the relabel stage has run, or without auto labels,
    the estimate is the unweighted share with its Clopper-Pearson interval (exact, from the
    beta distribution).

Gates
    Gates (``stop.audit_lower_bound``, the auto-accept threshold) decide "is it at least x?":
    they use the one-sided 95% Clopper-Pearson lower bound on the audit items, unweighted,
    P(accuracy >= bound) >= 95%. Under the uncertainty design the audit items are the harder
    ones, so the bound sits further below today's accuracy: the gates stay on the safe side (the
    bound never exceeded the truth in the benchmark); the estimate is what a person reads.

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

from coldstart.tasks.config import Params
from coldstart.tasks.heads import current_human_labels
from coldstart.tasks.pool import labeled_order
from coldstart.tasks.result import IN_MEMORY, StageResult
from coldstart.tasks.store import EmbeddingStore
from coldstart.tasks.workspace import Workspace, read_csv

if TYPE_CHECKING:
    from coldstart.tasks.train import TrainResult

log = logging.getLogger(__name__)

ALPHA = 0.05  # 95% intervals and bounds
GATE_NOTE = "the gates' exact bound, unweighted"  # how summaries name ``lower_bound``


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


# Confidence bands for the weighted estimate: fine where auto labels crowd (near 1), merged
# until each band's audit items expect at least MIN_EXPECTED_ERRORS errors (see confidence_bands).
BAND_EDGES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 1.0)
MIN_EXPECTED_ERRORS = 1.0
DRAWS = 20_000  # Monte Carlo draws for the weighted interval (fixed seed: a record is reproducible)
MIN_Q = 1e-6  # 1 - confidence is floored here: float32 softmax saturates at exactly 1


def confidence_bands(audit_conf: np.ndarray, min_expected: float = MIN_EXPECTED_ERRORS) -> np.ndarray:
    """Band edges over [0, 1]: ``BAND_EDGES``, neighbours merged until the audit items in every
    band expect at least ``min_expected`` errors (sum of 1 - confidence), so each band's error
    ratio rests on evidence; one band [0, 1] when all of them together expect fewer."""
    edges = list(BAND_EDGES)
    q = np.maximum(1.0 - np.asarray(audit_conf, np.float64), MIN_Q)
    while len(edges) > 2:
        expected = np.bincount(band_of(audit_conf, edges), weights=q, minlength=len(edges) - 1)
        short = np.flatnonzero(expected < min_expected)
        if not len(short):
            break
        i = int(short[0])  # merge the first short band into its smaller neighbour
        if i == 0:
            del edges[1]
        elif i == len(expected) - 1 or expected[i - 1] <= expected[i + 1]:
            del edges[i]
        else:
            del edges[i + 1]
    return np.asarray(edges)


def band_of(conf: np.ndarray, edges) -> np.ndarray:
    """``(N,)`` band index of each confidence (the top band includes 1.0)."""
    return np.clip(np.searchsorted(np.asarray(edges)[1:-1], np.asarray(conf), side="right"), 0, len(edges) - 2)


@dataclass
class Weighted:
    """The audit weighted to today's auto labels (``weighted_accuracy``)."""
    accuracy: float
    low: float
    high: float
    # Per band: [low edge, high edge, auto labels, errors the model expects among them,
    #            audit items, errors the model expected among them, errors people found].
    bands: list[list[float]]


def weighted_accuracy(pool_conf: np.ndarray, audit_conf: np.ndarray, audit_correct: np.ndarray, *,
                      alpha: float = ALPHA, draws: int = DRAWS, seed: int = 0) -> Weighted:
    """Accuracy of today's auto labels from the audit items, weighted band by band.

    ``pool_conf`` ``(N,)``: the calibrated confidence of each auto label this round (what the
    relabel stage gave); ``audit_conf`` ``(n,)``/``audit_correct`` ``(n,)``: each audit item's
    out-of-fold confidence and whether that prediction matched the person's answer.

    Per confidence band b (``confidence_bands``): the model expects ``E_b = sum(1 - conf)``
    errors among the band's audit items, people found ``k_b``; the ratio ``k_b / E_b`` says how
    far the model's own error estimate is off in that band, and it is applied to the
    ``M_b = sum(1 - conf)`` errors the model expects among the band's auto labels:

        accuracy = 1 - sum_b M_b * k_b / E_b / N.

    Interval: ``k_b`` is a count of rare events, so each ratio gets Garwood's exact Poisson
    limits (as gamma draws: ``Gamma(k_b) / E_b`` for the low side, ``Gamma(k_b + 1) / E_b``
    for the high side); the errors among today's auto labels are themselves random given the
    ratio (``Poisson(M_b * ratio)``, at most the band's count); the 95% interval takes the
    alpha/2 quantiles of the simulated totals. With one band and equal confidences it is close
    to Clopper-Pearson on the audit items.
    """
    pool_conf = np.asarray(pool_conf, np.float64)
    audit_conf = np.asarray(audit_conf, np.float64)
    audit_correct = np.asarray(audit_correct, bool)
    N = len(pool_conf)
    if N == 0 or len(audit_conf) == 0:
        raise ValueError("weighted_accuracy needs auto labels and scored audit items")
    edges = confidence_bands(audit_conf)
    bp, ba = band_of(pool_conf, edges), band_of(audit_conf, edges)
    qp, qa = np.maximum(1 - pool_conf, MIN_Q), np.maximum(1 - audit_conf, MIN_Q)
    rng = np.random.default_rng(seed)
    errors, lo_errors, hi_errors, bands = 0.0, np.zeros(draws), np.zeros(draws), []
    for b in range(len(edges) - 1):
        in_pool, in_audit = bp == b, ba == b
        n_pool, M = int(in_pool.sum()), float(qp[in_pool].sum())
        n_audit, E, k = int(in_audit.sum()), float(qa[in_audit].sum()), int((~audit_correct[in_audit]).sum())
        bands.append([float(edges[b]), float(edges[b + 1]), n_pool, round(M, 3), n_audit, round(E, 3), k])
        if n_pool == 0:  # (every band holds audit items: confidence_bands merged the others away)
            continue
        errors += M * k / E
        low_ratio = rng.gamma(k, 1.0, draws) / E if k else np.zeros(draws)
        high_ratio = rng.gamma(k + 1, 1.0, draws) / E
        lo_errors += np.minimum(rng.poisson(M * low_ratio), n_pool)
        hi_errors += np.minimum(rng.poisson(M * high_ratio), n_pool)
    accuracy = max(0.0, 1.0 - errors / N)
    low = max(0.0, 1.0 - float(np.quantile(hi_errors, 1 - alpha / 2)) / N)
    high = min(1.0, 1.0 - float(np.quantile(lo_errors, alpha / 2)) / N)
    return Weighted(accuracy, min(low, accuracy), max(high, accuracy), bands)


# --- the adaptive audit: who is drawn, with which probability, and the estimator ---------------

AUDIT_DESIGNS = ("uncertainty", "uniform")  # round.audit_design
# The share of the audit drawn as if uniformly (a defensive mixture): no image's inclusion
# probability falls below UNIFORM_SHARE x n / N, however sure the model is of it.
UNIFORM_SHARE = 0.25


def inclusion_probabilities(conf: np.ndarray, n: int, uniform_share: float = UNIFORM_SHARE) -> np.ndarray:
    """Each pool image's probability of being in an audit of ``n`` items, ``(N,)``, summing to n.

    ``conf`` ``(N,)``: the calibrated confidence of each auto label. An audit answer is worth most
    where the label's correctness is least predictable: the standard deviation of "is it right",
    sqrt(q (1 - q)) with q = 1 - confidence, is the optimal (Neyman) allocation for the
    difference estimator below. Mixed with the uniform design (``uniform_share``), so every
    image can be drawn; probabilities above 1 are set to 1 and the rest rescaled."""
    conf = np.asarray(conf, np.float64)
    N = len(conf)
    if n >= N:
        return np.ones(N)
    if n <= 0:
        return np.zeros(N)
    q = np.clip(1.0 - conf, 0.0, 1.0)
    sd = np.sqrt(q * (1.0 - q))
    share = sd / sd.sum() if sd.sum() > 0 else np.full(N, 1.0 / N)
    weight = (1 - uniform_share) * share + uniform_share / N
    pi = np.zeros(N)
    full = np.zeros(N, bool)
    while True:  # at most N passes; in practice one or two
        pi[~full] = (n - full.sum()) * weight[~full] / weight[~full].sum()
        over = ~full & (pi >= 1.0)
        if not over.any():
            return pi
        full |= over
        pi[full] = 1.0


def design_probabilities(design: str, conf: np.ndarray, n: int) -> np.ndarray:
    """Each pool image's probability of being in an audit of ``n`` items under ``design``
    (``AUDIT_DESIGNS``): ``inclusion_probabilities`` for ``uncertainty``, n / N for ``uniform``."""
    if design == "uncertainty":
        return inclusion_probabilities(conf, n)
    return np.full(len(conf), min(1.0, n / max(1, len(conf))))


def systematic_sample(pi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a sample in which item i is drawn with probability exactly ``pi[i]``
    (``pi`` sums to a whole number n: n items). Systematic sampling over a random order: a
    random start in [0, 1) and steps of 1 along the cumulated probabilities."""
    pi = np.asarray(pi, np.float64)
    n = int(round(pi.sum()))
    if n == 0:
        return np.zeros(0, int)
    order = rng.permutation(len(pi))
    cum = np.cumsum(pi[order])
    hits = np.searchsorted(cum, rng.uniform(0.0, 1.0) + np.arange(n), side="right")
    return np.sort(order[np.minimum(hits, len(pi) - 1)])


@dataclass
class Difference:
    """The audit's difference estimate (``difference_estimate``)."""
    accuracy: float
    low: float
    high: float
    se: float  # its standard error
    residual: float  # the mean of (right - confidence) the audit found: the model's miscalibration


def difference_estimate(pool_conf: np.ndarray, audit_conf: np.ndarray, audit_correct: np.ndarray,
                        inclusion: np.ndarray, pool_size: np.ndarray, drawn: np.ndarray,
                        z: float = 1.959964) -> Difference:
    """Accuracy of today's auto labels: the model's own expectation, corrected by the audit.

        accuracy = mean(pool_conf) + mean residual,   residual = right - confidence

    (prediction-powered inference with the model's confidence as the prediction of "right").
    The mean residual is, per audited round k, the Horvitz-Thompson mean over that round's pool:
    ``sum_j r_j / (N_k pi_j) / n_k`` over its n_k audit items (``inclusion`` pi_j,
    ``pool_size`` N_k, ``drawn`` k), unbiased for any inclusion probabilities that are never 0;
    rounds are combined by their n_k. NaN in ``inclusion`` or ``pool_size``: an item of a batch
    drawn before inclusion probabilities were recorded (uniformly), weighted 1.

    Variance: per round, the larger of the items' own spread (with-replacement approximation)
    and the spread the model's confidence implies, sum w^2 c (1 - c) (errors that happen at that
    confidence but were not drawn yet: without it the interval is too narrow when the audit has
    seen few errors); plus the chance in which today's auto labels are right given their
    confidences, sum c (1 - c) / N^2. The interval is the estimate +- z standard errors.
    """
    pool_conf = np.asarray(pool_conf, np.float64)
    conf = np.asarray(audit_conf, np.float64)
    r = np.asarray(audit_correct, np.float64) - conf
    pi, size, drawn = (np.asarray(a, np.float64) for a in (inclusion, pool_size, drawn))
    n, N = len(r), len(pool_conf)
    if N == 0 or n == 0:
        raise ValueError("difference_estimate needs auto labels and scored audit items")
    mean_r = var = 0.0
    for k in np.unique(drawn):
        mine = drawn == k
        nk = int(mine.sum())
        known = np.isfinite(pi[mine]) & np.isfinite(size[mine]) & (pi[mine] > 0)
        w = np.where(known, nk / np.where(known, size[mine] * pi[mine], 1.0), 1.0)  # 1 under a uniform draw
        est = w * r[mine]  # each item's estimate of its pool's mean residual
        mean_r += nk / n * float(est.mean())
        spread = float(est.var(ddof=1)) if nk > 1 else float(est[0] ** 2)
        implied = float((w**2 * conf[mine] * (1 - conf[mine])).mean())
        var += (nk / n) ** 2 * max(spread, implied) / nk
    var += float((pool_conf * (1 - pool_conf)).sum()) / N**2
    accuracy = float(np.clip(pool_conf.mean() + mean_r, 0.0, 1.0))
    se = math.sqrt(var)
    return Difference(accuracy, max(0.0, accuracy - z * se), min(1.0, accuracy + z * se), se, mean_r)


# How the report, status and the round summary name the estimator of an audit figure.
ESTIMATORS = {
    "as-labeled": "the share of the newest audit items its round labeled right (Clopper-Pearson interval)",
    "out-of-fold": "the share of audit items the round's labeler got right out of fold (Clopper-Pearson interval)",
    "difference": "difference estimator (the model's confidence corrected by the audit, inverse-probability "
                  "weighted)",
    "ipw-share": "inverse-probability weighted share (Clopper-Pearson at the effective n)",
    "bands": "weighted by confidence band",  # round records from before the difference estimator
}


@dataclass
class AuditItem:
    """One answered audit item, drawn from round ``drawn``'s pool with probability ``inclusion``."""
    image_id: str
    drawn: int  # the round whose batch drew it
    answer: str  # the person's label (the latest answer)
    labeled: str  # the label that round gave it (before the answer could train anything)
    inclusion: float = math.nan  # its probability of being drawn (NaN: a batch from before they were recorded)
    pool: float = math.nan  # the images it was drawn from (that round's pool)


@dataclass
class AuditEstimate(StageResult):
    """The audit estimate: accuracy of auto labels, with its 95% interval and n.

    ``method`` says which: ``out-of-fold`` (the current round's labeling procedure, scored out
    of fold on the answered audit items of every earlier round; ``round`` is the current round)
    or ``as labeled`` (the newest answered batch against the labels its round gave; ``round`` is
    that batch's round). An out-of-fold estimate is then weighted to the round's auto labels by
    confidence band (``weighted``: ``weighted_accuracy``); before that (or without auto labels)
    the estimate is the audited share with its Clopper-Pearson interval. See the module
    docstring for the population and its caveats.
    """
    round: int  # the round whose auto labels are estimated
    n: int  # audit items counted
    correct: int
    by_label: dict[str, list[int]] = field(default_factory=dict)  # predicted label -> [correct, n]
    method: str = "as labeled"
    drawn_in: list[int] = field(default_factory=list)  # the rounds whose batches drew the items
    # Each audited batch against the labels its own round gave: round -> [correct, n].
    as_labeled: dict[str, list[int]] = field(default_factory=dict)
    # Estimated for this round's auto labels (``weight_to_pool``), once the relabel stage has run:
    # the difference estimate and its 95% interval, and how the errors lay by confidence band
    # (``Weighted.bands``: what the report shows beside it).
    weighted: list[float] | None = None  # [accuracy, low, high]
    bands: list[list[float]] = field(default_factory=list)
    auto_labels: int = 0  # the auto labels it was weighted to
    # Which estimator ``accuracy`` comes from: ESTIMATORS' keys.
    estimator: str = "as-labeled"
    # For the out-of-fold estimate, once the train stage has run (not recorded):
    items: list[AuditItem] = field(default_factory=list, metadata=IN_MEMORY)
    scored: tuple[np.ndarray, np.ndarray] | None = field(default=None, metadata=IN_MEMORY, compare=False)  # (conf, right)
    # Per scored item: (inclusion probability, pool size, round drawn), as its batch recorded them.
    design: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, metadata=IN_MEMORY, compare=False)
    sample_ids: list[str] | None = field(default=None, metadata=IN_MEMORY)  # the train stage's image rows
    classes: list[str] = field(default_factory=list, metadata=IN_MEMORY)

    @property
    def accuracy(self) -> float | None:
        """The estimate: weighted to today's auto labels when it could be, else the share of
        audit items predicted right."""
        if self.weighted:
            return self.weighted[0]
        return self.correct / self.n if self.n else None

    @property
    def unweighted_accuracy(self) -> float | None:
        """The share of audit items predicted right, unweighted."""
        return self.correct / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """95% interval of ``accuracy``: the weighted one (``weighted_accuracy``), else
        Clopper-Pearson on the audit items (None without items)."""
        if self.weighted:
            return self.weighted[1], self.weighted[2]
        return clopper_pearson_interval(self.correct, self.n) if self.n else None

    @property
    def lower_bound(self) -> float | None:
        """One-sided 95% lower bound: what gates compare with. Exact (Clopper-Pearson on the
        audit items, unweighted), so a gate keeps its guarantee; it sits below the weighted
        interval's low end, because the audited pools were harder than today's (module docstring)."""
        return clopper_pearson_lower(self.correct, self.n) if self.n else None

    @property
    def estimator_key(self) -> str:
        """Which estimator ``accuracy`` comes from (``ESTIMATORS``' keys); a weighted out-of-fold
        record written before the difference estimator existed was weighted by confidence band."""
        if self.weighted and self.method == "out-of-fold" and self.estimator != "difference":
            return "bands"
        return self.estimator

    def per_class(self, min_n: int = 5) -> dict[str, float]:
        """Accuracy per predicted label, where at least ``min_n`` were audited."""
        return {k: c / n for k, (c, n) in sorted(self.by_label.items()) if n >= min_n}

    def describe(self) -> str:
        """``96.0% correct (95% CI 91.2-98.7%, n=75, out-of-fold on the audits of rounds 1-5)``."""
        if not self.n:
            return "no answered audit items yet"
        accuracy, interval = self.accuracy, self.interval
        assert accuracy is not None and interval is not None, "both are known once an item was answered"
        lo, hi = interval
        rounds = sorted(set(self.drawn_in))
        where = (f"rounds {rounds[0]}-{rounds[-1]}" if len(rounds) > 1 else f"round {rounds[0]}") if rounds \
            else f"round {self.round}"
        how = f"out-of-fold on the audits of {where}" if self.method == "out-of-fold" else f"{where}'s audit as labeled"
        if self.weighted and self.estimator_key in ("difference", "bands"):
            how += f", {self.correct}/{self.n} right, {ESTIMATORS[self.estimator_key]} over {self.auto_labels:,} " \
                   "auto labels"
        elif self.weighted:
            how += f", {self.correct}/{self.n} right, {ESTIMATORS[self.estimator_key]}"
        return f"{100 * accuracy:.1f}% correct (95% CI {100 * lo:.1f}-{100 * hi:.1f}%, n={self.n}, {how})"

    def metrics(self) -> dict[str, float | None]:
        low, high = self.interval or (None, None)
        return {"audit_accuracy": self.accuracy, "audit_low": low, "audit_high": high, "audit_n": self.n,
                "audit_lower_bound": self.lower_bound, "audit_unweighted_accuracy": self.unweighted_accuracy,
                **{f"audit_accuracy.{k}": v for k, v in self.per_class().items()}}

    def weight_to_pool(self, auto_conf: np.ndarray | None) -> bool:
        """Weight the out-of-fold estimate to today's auto labels (``weighted_accuracy``), given
        their ``(N,)`` calibrated confidences. True if done; False (the estimate unchanged) before
        ``use_out_of_fold`` or without auto labels."""
        if self.method != "out-of-fold" or self.scored is None or self.design is None or auto_conf is None \
                or not len(auto_conf):
            return False
        d = difference_estimate(auto_conf, *self.scored, *self.design)
        self.weighted, self.auto_labels = [d.accuracy, d.low, d.high], int(len(auto_conf))
        self.bands, self.estimator = weighted_accuracy(auto_conf, *self.scored).bands, "difference"
        return True

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
        items = [it for it in self.items if it.image_id in row]
        if not items:
            return False
        probs = oof[[row[it.image_id] for it in items]]  # (n, L): each item's out-of-fold probabilities
        labels = [self.classes[p] if p < len(self.classes) else str(p) for p in probs.argmax(1)]
        right = np.array([label == it.answer for it, label in zip(items, labels)])
        self.scored = (probs.max(1).astype(np.float64), right)
        self.design = (np.array([it.inclusion for it in items]), np.array([it.pool for it in items]),
                       np.array([it.drawn for it in items], np.float64))
        by_label: dict[str, list[int]] = {}
        for label, ok in zip(labels, right):
            c, n = by_label.get(label, [0, 0])
            by_label[label] = [c + int(ok), n + 1]
        self.round, self.method, self.estimator, self.weighted = round_no, "out-of-fold", "out-of-fold", None
        self.n, self.correct, self.by_label = len(items), int(right.sum()), by_label
        self.drawn_in = sorted({it.drawn for it in items})
        return True


def audit_items(batch_rows: list[dict], humans: dict[str, str]) -> list[AuditItem]:
    """A batch's audit items that people have answered."""
    return [AuditItem(b["image_id"], int(b["round"]), humans[b["image_id"]], b["predicted_label"],
                      _number(b.get("inclusion")), _number(b.get("audit_pool")))
            for b in batch_rows if b["purpose"] == "audit" and b["image_id"] in humans]


def _number(cell: str | None) -> float:
    """A batch file's number cell; NaN when empty or absent (batches from before the column)."""
    try:
        return float(cell) if cell not in (None, "") else math.nan
    except ValueError:
        return math.nan


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
    est = AuditEstimate(round=r, n=len(answered), correct=correct, by_label=by_label, drawn_in=[r] if answered else [],
                        as_labeled={str(r): [correct, len(answered)]}, items=answered)
    pi = np.array([it.inclusion for it in answered])
    if len(pi) and np.isfinite(pi).all() and (pi > 0).all() and np.ptp(pi) > 1e-12:  # drawn unequally
        est.weighted, est.estimator = ipw_share(np.array([it.answer == it.labeled for it in answered]), pi), "ipw-share"
    return est


def ipw_share(right: np.ndarray, inclusion: np.ndarray, alpha: float = ALPHA) -> list[float]:
    """[share, low, high]: the share of a pool's auto labels that are right, from audit items
    drawn with unequal probabilities: each weighted 1 / inclusion (Hajek), with the
    Clopper-Pearson interval at Kish's effective sample size (sum w)^2 / sum w^2."""
    from scipy.stats import beta

    w = 1.0 / np.asarray(inclusion, np.float64)
    share = float((w * right).sum() / w.sum())
    n_eff = float(w.sum() ** 2 / (w**2).sum())
    k = share * n_eff
    low = 0.0 if k <= 0 else float(beta.ppf(alpha / 2, k, n_eff - k + 1))
    high = 1.0 if k >= n_eff else float(beta.ppf(1 - alpha / 2, k + 1, n_eff - k))
    return [share, min(low, share), max(high, share)]


def every_audit(ws: Workspace, before_round: int, labels: list[str]) -> list[AuditEstimate]:
    """The as-labeled audit of every earlier round with answered audit items, oldest first:
    each answered item counts for the round whose batch it was drawn for."""
    humans = current_human_labels(ws, labels, training=False).labels  # "unknown": an error of the class given
    out = []
    for r in range(1, before_round):
        est = audit_estimate(read_csv(ws.review / f"round-{r:03d}.batch.csv"), humans)
        if est is not None and est.n:
            out.append(est)
    return out


def sample_order(ws: Workspace, params: Params, model_id: str, humans: dict[str, str]) -> list[str]:
    """The human-labeled image ids in the order of the train stage's samples (its
    ``read_pool``'s ``labeled_ids``), from the store of ``model_id`` (the CLIP model's)."""
    return labeled_order(ws, EmbeddingStore(ws.embeddings, model_id, params.views.key("global")), humans)


def audit(ws: Workspace, params: Params, model_id: str | None, round_no: int) -> AuditEstimate | None:
    """The audit stage: every answered audit item of the earlier rounds. Its estimate is the
    newest batch's as-labeled one until ``use_out_of_fold`` scores the items with the train
    stage's out-of-fold predictions (the round record does, once the train stage has run)."""
    # On today's labels: an audit item answered "none of these" is an error of the class it got.
    humans = current_human_labels(ws, params.ontology.labels, training=False).labels
    batches = [audit_estimate(read_csv(ws.review / f"round-{r:03d}.batch.csv"), humans) for r in range(1, round_no)]
    answered = [b for b in batches if b is not None and b.n]
    if not answered:
        return None
    est = answered[-1]
    est.items = [it for b in answered for it in b.items]
    est.as_labeled = {str(b.round): [b.correct, b.n] for b in answered}
    est.classes = params.ontology.labels
    if model_id is None:  # the sample order is for the train stage's out-of-fold scores
        return est
    try:
        # The train stage's samples: its answers leave out those waiting to be asked again.
        est.sample_ids = sample_order(ws, params, model_id, current_human_labels(ws, params.ontology.labels).labels)
    except Exception as e:  # no store yet, or an unreadable one: the train stage reports it
        log.warning("audit: cannot line the audit items up with the training samples (%s)", e)
    return est
