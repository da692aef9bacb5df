"""`coldstart bench al`: active-learning simulation on scikit-learn's bundled digits.

Real data nobody here wrote: 1,797 handwritten digits, a seeded 70/30 split per seed.

Labels to 95%: every strategy drives the same learner (the probe: logistic regression on
standardised features) from 10 labels in batches of 10, and we count the labels needed to reach
95% of the test accuracy of the same learner trained on the whole pool. coldstart's default
policy is what a round does with its defaults: TypiClust for the first batch, then hybrid (top
3 x batch by margin, then k-center), a random audit share (10%) drawn first, and the round's
probe with self-training (label spreading pseudo-labels with confidence >= 0.9 join the
training set). Digits has no text, so the zero-shot candidates of a real round do not apply.

The audit (``simulate_audit``): rounds as the flow runs them, with a review batch of 50 (the
default ``round.budget``) under a review policy (default ``specialist``: 30% of each batch is the
uniformly random audit, drawn first from the images without a human label; the rest by TypiClust
in round 1, hybrid later). Each round n >= 2 the train stage's probe (``fit_probe``: the same
5-fold CV, seed, pool statistics and self-training) is fitted on every answer so far and
calibrated as the train stage does (a temperature from its out-of-fold probabilities), labels the
pool, and the audit estimate scores the audit items of rounds 1..n-1 out of fold and weights them
by confidence band to the pool's auto labels (``tasks/audit.py: weighted_accuracy``, the function
the round calls). The truth it must cover is the accuracy of that round's auto labels: the head's
labels of every image without a human label, against the digits' true classes. Reported:
``audit_coverage`` (share of (seed, round) pairs whose 95% interval covers the truth),
``audit_median_width`` (rounds >= 4), ``audit_bias`` (mean estimate minus truth), and for
comparison the same items unweighted (the share right with Clopper-Pearson: ``*_unweighted``,
what the report showed before; its one-sided bound is the gates', ``audit_lower_bound_coverage``),
Wilson's interval on those counts, and the newest batch alone (out of fold, and as its round
labeled it: what the audit was before that). ``--audit-seed-start 20 --audit-seeds 20`` runs the
same on seeds the estimator was not tuned on.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from coldstart.bench.targets import TARGETS
from coldstart.models.probe import SelfTraining, fit_probe, fit_with, to_head
from coldstart.tasks.audit import (
    AUDIT_DESIGNS,
    clopper_pearson_interval,
    clopper_pearson_lower,
    design_probabilities,
    difference_estimate,
    weighted_accuracy,
    wilson_interval,
)
from coldstart.tasks.calibrate import apply_temperature, calibrate_held_out
from coldstart.tasks.config import REVIEW_POLICIES, RoundConfig
from coldstart.tasks.select import in_cold_start, select_indices
from coldstart.tasks.strategies import top_uncertain, typiclust

STRATEGIES = ("random", "entropy", "margin", "coldstart")
# The audit simulation: seeds (20 seeds x rounds 2-8 = 140 (seed, round) pairs, 100 of them
# from round 4 on), rounds per seed, the batch (round.budget's default) and the review policy.
AUDIT_SEEDS = 20
AUDIT_ROUNDS = 8
AUDIT_BATCH = 50
AUDIT_POLICY = "specialist"


def _fit(X: np.ndarray, y: np.ndarray, seed: int) -> LogisticRegression:
    """The learner every strategy drives: logistic regression on the given rows."""
    return LogisticRegression(C=1.0, max_iter=3000, random_state=seed).fit(X, y)


def _probs(model: LogisticRegression, X: np.ndarray, n_classes: int) -> np.ndarray:
    """``model``'s class probabilities on ``X`` over all ``n_classes`` (0 for classes it never saw)."""
    p = np.zeros((len(X), n_classes))
    p[:, model.classes_] = model.predict_proba(X)
    return p


def simulate(strategy: str, Xp: np.ndarray, yp: np.ndarray, Xt: np.ndarray, yt: np.ndarray, target: float, seed: int,
             *, start: int = 10, batch: int = 10, max_labels: int = 600, audit_fraction: float = 0.1,
             self_training: float = 0.9, factor: int = 3) -> dict[str, Any]:
    """Label the pool ``Xp`` batch by batch as ``strategy`` picks until the learner reaches ``target``
    accuracy on the test set (or ``max_labels``): the labels it took (None: never) and its accuracy."""
    rng = np.random.default_rng(seed)
    n, C = len(Xp), int(yp.max()) + 1
    if strategy == "coldstart":
        labeled = list(typiclust(Xp, start, seed=seed))
    else:
        labeled = list(rng.choice(n, start, replace=False))
    graph = None
    zeros, ones = np.zeros(Xp.shape[1], np.float32), np.ones(Xp.shape[1], np.float32)
    while True:
        if strategy == "coldstart":  # the round's probe: self-training over the whole pool
            rows = np.asarray(labeled)
            st = SelfTraining(Xp, rows, self_training) if graph is None else graph.with_rows(rows)
            graph = st
            head, _ = fit_with(lambda Xtr, ytr: to_head(_fit(Xtr, ytr, seed), C, zeros, ones), Xp[rows], yp[rows],
                               st, np.arange(len(rows)), None, C)
            model: Any = head.to_sklearn()
        else:
            model = _fit(Xp[labeled], yp[labeled], seed)
        acc = float(model.score(Xt, yt))
        if acc >= target or len(labeled) >= max_labels:
            return {"labels": len(labeled) if acc >= target else None, "final_accuracy": acc}
        pool = np.setdiff1d(np.arange(n), labeled)
        probs = _probs(model, Xp[pool], C)
        if strategy == "random":
            pick = rng.choice(len(pool), batch, replace=False)
        elif strategy in ("entropy", "margin"):
            pick = top_uncertain(probs, batch, strategy, seed)
        elif strategy == "coldstart" and in_cold_start(len(labeled), C, RoundConfig(budget=batch)):  # the round's rule
            pick = typiclust(Xp[pool], batch, labeled_X=Xp[labeled], seed=seed)
        elif strategy == "coldstart":  # a random audit share first, then hybrid (the audit: simulate_audit)
            chosen, audit = select_indices(probs, batch, strategy="hybrid", audit=math.ceil(batch * audit_fraction),
                                           seed=seed + len(labeled), X=Xp[pool], labeled_X=Xp[labeled], factor=factor,
                                           measure="margin")
            pick = np.concatenate([chosen, audit])
        elif strategy.startswith("modal_"):
            from modAL.uncertainty import margin_sampling, uncertainty_sampling  # optional: the `bench` extra

            fn = margin_sampling if strategy == "modal_margin" else uncertainty_sampling
            pick = np.asarray(fn(model, Xp[pool], n_instances=batch))
            pick = pick[0] if pick.ndim > 1 else pick
        else:
            raise ValueError(strategy)
        labeled.extend(pool[np.asarray(pick, int)].tolist())


def simulate_audit(Xp: np.ndarray, yp: np.ndarray, seed: int, *, batch: int = 50, policy: str = "specialist",
                   rounds: int = 8, self_training: float = 0.9, factor: int = 3,
                   folds: int = 5, design: str = "uncertainty") -> list[dict[str, Any]]:
    """Rounds 1..``rounds`` as the flow runs them, answers coming back at once; for each round
    n >= 2, the audit estimate of its auto labels against their true accuracy (module docstring).

    Round n's estimate uses the audit items of batches 1..n-1 (answered before round n), scored
    out of fold by round n's probe, exactly as ``AuditEstimate.use_out_of_fold`` scores them
    with the train stage's ``oof_probs``.
    """
    n, C = len(Xp), int(yp.max()) + 1
    n_audit = min(batch, math.ceil(batch * REVIEW_POLICIES[policy]))
    center, scale = Xp.mean(0), Xp.std(0) + 1e-6  # statistics of every image, as the train stage uses
    labeled: list[int] = []  # answered images, in the order they were answered
    audited: list[int] = []  # of them, the audit items
    batches: list[tuple[np.ndarray, np.ndarray]] = []  # (audit items, the labels their round gave them)
    drawn: list[tuple[float, int, int]] = []  # per audit item: (inclusion probability, pool size, round)
    graph, out, truths = None, [], []
    probs = np.full((n, C), 1.0 / C)  # round 1: no model yet (its strategy, TypiClust, needs none)
    for r in range(1, rounds + 1):
        pool = np.setdiff1d(np.arange(n), labeled)
        if r > 1:
            rows = np.asarray(labeled)
            graph = SelfTraining(Xp, rows, self_training) if graph is None else graph.with_rows(rows)
            fit = fit_probe(Xp[rows], yp[rows], C, folds=folds, seed=seed, center=center, scale=scale,
                            self_training=graph)
            # The train stage's calibration: a temperature from the out-of-fold probabilities,
            # applied to them and to the head's labels of the pool (as relabel applies it).
            T, oof_probs = calibrate_held_out(fit.oof_probs, yp[rows])
            probs = apply_temperature(fit.head.predict_proba(Xp[pool]), T)
        truths.append(float((probs.argmax(1) == yp[pool]).mean()))  # this round's auto labels
        if r > 1:
            out.append(_audit_pair(r, probs, oof_probs, yp, labeled, audited, batches, drawn, truths))
        if r == rounds:
            break
        strategy = "typiclust" if in_cold_start(len(labeled), C, RoundConfig(budget=batch)) else "hybrid"
        inclusion = design_probabilities(design, probs.max(1), n_audit)
        chosen, aud = select_indices(probs, batch, strategy=strategy, audit=n_audit, seed=seed * 100_003 + r,
                                     X=Xp[pool], labeled_X=Xp[labeled] if labeled else None, factor=factor,
                                     measure="margin", inclusion=inclusion if design == "uncertainty" else None)
        batches.append((pool[aud], probs[aud].argmax(1)))
        drawn.extend((float(inclusion[j]), len(pool), r) for j in aud)
        labeled.extend(pool[chosen].tolist() + pool[aud].tolist())
        audited.extend(pool[aud].tolist())
    return out


def _audit_pair(r: int, probs: np.ndarray, oof_probs: np.ndarray, yp: np.ndarray, labeled: list[int],
                audited: list[int], batches: list[tuple[np.ndarray, np.ndarray]], drawn: list[tuple[float, int, int]],
                truths: list[float]) -> dict[str, Any]:
    """Round ``r``'s figures: its audit items (every earlier batch's) scored out of fold, by the
    shipped estimator (``difference_estimate``, as ``AuditEstimate.weight_to_pool`` applies it)
    and by the others kept for comparison, against the truth of its auto labels."""
    where = {i: k for k, i in enumerate(labeled)}
    scored = oof_probs[[where[i] for i in audited]]
    oof = scored.argmax(1)
    k, m = int((oof == yp[audited]).sum()), len(audited)
    pi, size, when = np.array(drawn).T
    d = difference_estimate(probs.max(1), scored.max(1), oof == yp[audited], pi, size, when)
    w = weighted_accuracy(probs.max(1), scored.max(1), oof == yp[audited])  # the estimator before
    cp = clopper_pearson_interval(k, m)
    last_items, last_labels = batches[-1]  # the newest batch alone, as its round labeled it
    k1, m1 = int((last_labels == yp[last_items]).sum()), len(last_items)
    newest = oof[-m1:] == yp[last_items]  # the newest batch alone, out of fold: ~no pool shift
    return {"round": r, "labels": len(labeled), "true": truths[-1], "n": m, "estimate": d.accuracy,
            "low": d.low, "high": d.high, "banded": (w.accuracy, w.low, w.high), "bands": len(w.bands),
            "unweighted": (k / m, *cp), "lower_bound": clopper_pearson_lower(k, m),
            "wilson": wilson_interval(k, m),
            "newest": (float(newest.mean()), *clopper_pearson_interval(int(newest.sum()), m1)),
            "as_labeled": (k1 / m1, *clopper_pearson_interval(k1, m1), m1), "prev_true": truths[-2]}


def audit_figures(pairs: list[dict[str, Any]], from_round: int = 4) -> dict[str, Any]:
    """Coverage, width and bias of the audit intervals over (seed, round) pairs."""
    def covered(p: dict[str, Any], lo: float, hi: float) -> bool:
        """Whether the pair's true accuracy lies in [lo, hi]."""
        return lo <= p["true"] <= hi

    late = [p for p in pairs if p["round"] >= from_round]
    as_labeled = [p for p in pairs if p["round"] >= 3]  # round 1's labels are a placeholder here (no zero-shot)

    def share(v: list[bool]) -> float | None:
        """The share true, rounded (None without any)."""
        return round(float(np.mean(v)), 3) if len(v) else None

    return {
        "audit_coverage": share([covered(p, p["low"], p["high"]) for p in pairs]),
        "audit_pairs": len(pairs),
        f"audit_coverage_from_round_{from_round}": share([covered(p, p["low"], p["high"]) for p in late]),
        "audit_median_width": round(float(np.median([p["high"] - p["low"] for p in late])), 3) if late else None,
        "audit_pairs_from_round_4": len(late),
        "audit_median_n_from_round_4": float(np.median([p["n"] for p in late])) if late else None,
        "audit_bias": round(float(np.mean([p["estimate"] - p["true"] for p in pairs])), 4) if pairs else None,
        "audit_median_bands": float(np.median([p["bands"] for p in late])) if late else None,
        # The gate's one-sided 95% bound: how often the truth is at least the bound.
        "audit_lower_bound_coverage": share([p["lower_bound"] <= p["true"] for p in pairs]),
        # The same items unweighted (the share right, Clopper-Pearson): what the report showed before.
        "audit_coverage_unweighted": share([covered(p, *p["unweighted"][1:]) for p in pairs]),
        "audit_median_width_unweighted": round(float(np.median([p["unweighted"][2] - p["unweighted"][1]
                                                                for p in late])), 3) if late else None,
        "audit_bias_unweighted": round(float(np.mean([p["unweighted"][0] - p["true"] for p in pairs])), 4)
        if pairs else None,
        "audit_coverage_wilson": share([covered(p, *p["wilson"]) for p in pairs]),
        # The newest batch's audit items alone, out of fold: drawn from the pool just before the
        # current one, so its bias is mostly the fold models' (trained on 4/5 of the labels), and
        # audit_bias minus it is mostly the older pools' (harder images, since picked by strategy).
        "audit_bias_newest_batch": round(float(np.mean([p["newest"][0] - p["true"] for p in pairs])), 4)
        if pairs else None,
        "audit_coverage_newest_batch": share([covered(p, *p["newest"][1:]) for p in pairs]),
        "audit_median_width_newest_batch": round(float(np.median([p["newest"][2] - p["newest"][1] for p in late])), 3)
        if late else None,
        # Before: the newest batch alone, against the labels its round gave (truth: that round's).
        "audit_coverage_as_labeled": share([p["as_labeled"][1] <= p["prev_true"] <= p["as_labeled"][2]
                                            for p in as_labeled]),
        "audit_median_width_as_labeled": round(float(np.median([p["as_labeled"][2] - p["as_labeled"][1]
                                                                for p in late])), 3) if late else None,
        "audit_by_round": {str(r): {"pairs": len(v), "coverage": share([covered(p, p["low"], p["high"]) for p in v]),
                                    "median_n": float(np.median([p["n"] for p in v])),
                                    "median_width": round(float(np.median([p["high"] - p["low"] for p in v])), 3),
                                    "mean_true": round(float(np.mean([p["true"] for p in v])), 4),
                                    "mean_estimate": round(float(np.mean([p["estimate"] for p in v])), 4)}
                           for r in sorted({p["round"] for p in pairs})
                           for v in [[p for p in pairs if p["round"] == r]]},
    }


def design_figures(pairs: list[dict[str, Any]], key: str | None, seeds: list[int],
                   from_round: int = 4) -> dict[str, Any]:
    """Coverage, median width (rounds >= ``from_round``) and bias of one estimator's intervals:
    ``key`` None for the shipped one (``estimate``, ``low``, ``high``), else a pair's
    ``(estimate, low, high)`` under that key; with the seeds they came from."""
    est = [(p["estimate"], p["low"], p["high"]) if key is None else p[key] for p in pairs]
    late = [e for p, e in zip(pairs, est) if p["round"] >= from_round]
    return {"coverage": round(float(np.mean([lo <= p["true"] <= hi for p, (_, lo, hi) in zip(pairs, est)])), 3),
            "median_width": round(float(np.median([hi - lo for _, lo, hi in late])), 3),
            "bias": round(float(np.mean([e - p["true"] for p, (e, _, _) in zip(pairs, est)])), 4),
            "pairs": len(pairs), "seeds": [seeds[0], seeds[-1]] if seeds else []}


def _simulate_seed(digits: Any, seed: int, batch: int, policy: str, rounds: int, design: str) -> list[dict[str, Any]]:
    """``simulate_audit`` on the seed's pool."""
    Xp, _, yp, _ = _split(digits, seed)
    return simulate_audit(Xp, yp, seed, batch=batch, policy=policy, rounds=rounds, design=design)


def _split(digits: Any, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The seed's stratified 70/30 split, standardised with the pool's statistics: (Xp, Xt, yp, yt)."""
    Xp, Xt, yp, yt = train_test_split(digits.data, digits.target, test_size=0.3, random_state=seed,
                                      stratify=digits.target)
    scaler = StandardScaler().fit(Xp)  # unsupervised: pool statistics, no labels used
    return scaler.transform(Xp).astype(np.float32), scaler.transform(Xt).astype(np.float32), yp, yt


def bench_al(seeds: int = 20, batch: int = 10, start: int = 10, *, seed_start: int = 0, audit_seeds: int | None = None,
             audit_batch: int | None = None, audit_policy: str | None = None, audit_rounds: int | None = None,
             audit_seed_start: int = 0) -> dict[str, Any]:
    """Labels to 95% over ``seeds`` seeds from ``seed_start``; the audit over ``audit_seeds``
    (default ``AUDIT_SEEDS``) from ``audit_seed_start``, ``audit_rounds`` rounds each, under every
    audit design."""
    audit_batch = AUDIT_BATCH if audit_batch is None else audit_batch
    audit_policy = AUDIT_POLICY if audit_policy is None else audit_policy
    audit_rounds = AUDIT_ROUNDS if audit_rounds is None else audit_rounds
    digits = load_digits()
    strategies = _strategies()
    t0 = time.perf_counter()
    results = labels_to_95_runs(digits, strategies, range(seed_start, seed_start + seeds), batch=batch, start=start)
    seconds_al = time.perf_counter() - t0

    t1 = time.perf_counter()
    audit_seeds = AUDIT_SEEDS if audit_seeds is None else audit_seeds
    used = list(range(audit_seed_start, audit_seed_start + audit_seeds))
    by_design = {design: [pair for seed in used for pair in _simulate_seed(digits, seed, audit_batch, audit_policy,
                                                                          audit_rounds, design)]
                 for design in AUDIT_DESIGNS}  # the shipped design (round.audit_design's default) first
    pairs = by_design[AUDIT_DESIGNS[0]]
    audit = audit_figures(pairs)
    designs = {f"{design}+{name}": design_figures(by_design[design], key, used)
               for design in AUDIT_DESIGNS for name, key in (("difference", None), ("bands", "banded"))}
    seconds_audit = time.perf_counter() - t1

    labels_to_95 = {s: _median_labels(v) for s, v in results.items()}
    figures = {
        "labels_to_95": labels_to_95,
        "labels_to_95_mean": {s: _mean_labels(v) for s, v in results.items()},
        "labels_to_95_per_seed": results,
        "labels_to_95_seeds": [seed_start, seed_start + seeds - 1],
        **audit,
        "audit_design": AUDIT_DESIGNS[0], "audit_estimator": "difference",
        # Every design with each estimator, on the same seeds: uniform+bands is what shipped before.
        "audit_designs": designs,
        "audit_rounds": audit["audit_pairs"],  # (seed, round) pairs counted in audit_coverage
        "audit_policy": audit_policy, "audit_batch": audit_batch,
        "audit_items_per_round": min(audit_batch, math.ceil(audit_batch * REVIEW_POLICIES[audit_policy])),
        "audit_seeds": audit_seeds, "audit_seed_start": audit_seed_start, "audit_rounds_per_seed": audit_rounds,
        "seeds": seeds, "batch": batch, "start": start,
        "seconds_labels_to_95": round(seconds_al, 1), "seconds_audit": round(seconds_audit, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _print_labels_to_95(labels_to_95)
    if pairs:
        _print_audit(figures)
    print()
    ours = labels_to_95.get("coldstart")
    if ours is not None:
        print(TARGETS["labels_to_95"].line(ours))
    width = "audit_median_width_spot_check" if audit_policy == "spot-check" else "audit_median_width"
    for key, target in (("audit_coverage", "audit_coverage"), ("audit_median_width", width)):
        if figures.get(key) is not None:
            print(TARGETS[target].line(figures[key]))
    return figures


def _strategies() -> list[str]:
    """Ours and the textbook ones, with modAL's when it is installed."""
    strategies = list(STRATEGIES)
    try:
        import modAL  # noqa: F401  # optional (the `bench` extra): only its two strategies need it

        strategies += ["modal_uncertainty", "modal_margin"]
    except ImportError:
        print("modAL-python is not installed: skipping its strategies (pip install -e '.[bench]')")
    return strategies


def labels_to_95_runs(digits: Any, strategies: list[str], seeds: range, *, batch: int,
                      start: int) -> dict[str, list[int | None]]:
    """Per strategy, the labels it needed to reach 95% of the full-pool accuracy on each seed (None: never)."""
    results: dict[str, list[int | None]] = {s: [] for s in strategies}
    for seed in seeds:
        Xp, Xt, yp, yt = _split(digits, seed)
        full = float(_fit(Xp, yp, seed).score(Xt, yt))
        target = 0.95 * full
        line = [f"seed {seed}: full-pool accuracy {full:.3f}, target {target:.3f}:"]
        for s in strategies:
            r = simulate(s, Xp, yp, Xt, yt, target, seed, start=start, batch=batch)
            results[s].append(r["labels"])
            line.append(f"{s}={r['labels']}")
        print(" ".join(line), flush=True)
    return results


def _median_labels(v: list[int | None]) -> float | None:
    """The median over seeds, or None when a seed never reached the target."""
    ok = [x for x in v if x is not None]
    return round(float(np.median(ok)), 1) if ok and len(ok) == len(v) else None


def _mean_labels(v: list[int | None]) -> float | None:
    """The mean over seeds, or None when a seed never reached the target."""
    ok = [x for x in v if x is not None]
    return round(float(np.mean(ok)), 1) if len(ok) == len(v) else None


def _print_labels_to_95(labels_to_95: dict[str, float | None]) -> None:
    """The labels-to-95% table, with the textbook reference."""
    print("\nlabels to reach 95% of the full-pool probe accuracy (median of seeds; lower is better):")
    for s, v in labels_to_95.items():
        print(f"  {s:18s} {v}")
    print("  reference (plain LR on pixels): random 160, entropy 160, margin 100")


def _print_audit(a: dict[str, Any]) -> None:
    """The audit simulation's figures ``a`` in words, then its table by round."""
    first, last = a["audit_seed_start"], a["audit_seed_start"] + a["audit_seeds"] - 1
    print(f"\naudit ({a['audit_policy']}: {a['audit_items_per_round']} of each batch of {a['audit_batch']}, "
          f"seeds {first}-{last} x rounds 2-{a['audit_rounds_per_seed']}; items drawn by {a['audit_design']}): the 95% "
          f"interval of the difference estimate (out of fold, inverse-probability weighted) covered the true accuracy "
          f"of the round's auto labels in {a['audit_coverage']:.1%} of "
          f"{a['audit_pairs']} (seed, round) pairs ({a['audit_coverage_from_round_4']:.1%} of "
          f"{a['audit_pairs_from_round_4']} from round 4, median width {a['audit_median_width']:.3f}, "
          f"median n {a['audit_median_n_from_round_4']:g}); mean estimate - truth {a['audit_bias']:+.4f}. "
          f"Unweighted (the share right, Clopper-Pearson): coverage {a['audit_coverage_unweighted']:.1%}, "
          f"median width {a['audit_median_width_unweighted']:.3f}, bias {a['audit_bias_unweighted']:+.4f} "
          f"(the newest batch alone: {a['audit_bias_newest_batch']:+.4f}); its one-sided 95% lower bound "
          f"(the gates') was at most the truth in {a['audit_lower_bound_coverage']:.1%}. Wilson on the same counts: "
          f"{a['audit_coverage_wilson']:.1%}. The newest batch alone, out of fold: "
          f"{a['audit_coverage_newest_batch']:.1%}, median width {a['audit_median_width_newest_batch']:.3f};"
          f" as its round labeled it (before, against that round's truth): "
          f"{a['audit_coverage_as_labeled']:.1%}, median width {a['audit_median_width_as_labeled']:.3f}.")
    print("  design+estimator          coverage  median width  bias     (same seeds; uniform+bands: before)")
    for name, d in a["audit_designs"].items():
        print(f"  {name:24s}  {d['coverage']:>8.1%}  {d['median_width']:>12.3f}  {d['bias']:+.4f}")
    print("  round  pairs  median n  median width  coverage  mean truth  mean estimate")
    for r, v in a["audit_by_round"].items():
        print(f"  {r:>5}  {v['pairs']:>5}  {v['median_n']:>8g}  {v['median_width']:>12.3f}  {v['coverage']:>8.1%}"
              f"  {v['mean_true']:>10.4f}  {v['mean_estimate']:>13.4f}")
