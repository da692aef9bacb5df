"""`coldstart bench al`: active-learning simulation on scikit-learn's bundled digits.

Real data nobody here wrote: 1,797 handwritten digits, a seeded 70/30 split per seed. Every
strategy drives the same learner (the probe: logistic regression on standardised features)
from 10 labels in batches of 10, and we count the labels needed to reach 95% of the test
accuracy of the same learner trained on the whole pool. coldstart's default policy is what a
round does with its defaults: TypiClust for the first batch, then hybrid (top 3 x batch by
margin, then k-center), a random audit share (10%) whose answers give a Wilson 95% interval for
the auto labels' accuracy (we check how often it covers the true accuracy), and the round's
probe with self-training (label spreading pseudo-labels with confidence >= 0.9 join the
training set). Digits has no text, so the zero-shot candidates of a real round do not apply.
"""

from __future__ import annotations

import math
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from coldstart.bench.targets import TARGETS
from coldstart.models.probe import SelfTraining, _train_set
from coldstart.tasks.audit import clopper_pearson_interval, wilson_interval
from coldstart.tasks.select import select_indices
from coldstart.tasks.strategies import top_uncertain, typiclust

STRATEGIES = ("random", "entropy", "margin", "coldstart")


def _fit(X, y, seed):
    return LogisticRegression(C=1.0, max_iter=3000, random_state=seed).fit(X, y)


def _probs(model, X, n_classes):
    p = np.zeros((len(X), n_classes))
    p[:, model.classes_] = model.predict_proba(X)
    return p


def simulate(strategy: str, Xp, yp, Xt, yt, target: float, seed: int, *, start: int = 10, batch: int = 10,
             max_labels: int = 600, audit_fraction: float = 0.1, self_training: float = 0.9, factor: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    n, C = len(Xp), int(yp.max()) + 1
    if strategy == "coldstart":
        labeled = list(typiclust(Xp, start, seed=seed))
    else:
        labeled = list(rng.choice(n, start, replace=False))
    audits, graph = [], None
    while True:
        if strategy == "coldstart":  # the round's probe: self-training over the whole pool
            rows = np.asarray(labeled)
            st = SelfTraining(Xp, rows, self_training) if graph is None else graph.with_rows(rows)
            graph = st
            Xtr, ytr, _ = _train_set(Xp[rows], yp[rows], st, np.arange(len(rows)), None, C)
            model = _fit(Xtr, ytr, seed)
        else:
            model = _fit(Xp[labeled], yp[labeled], seed)
        acc = float(model.score(Xt, yt))
        if acc >= target or len(labeled) >= max_labels:
            return {"labels": len(labeled) if acc >= target else None, "final_accuracy": acc, "audits": audits}
        pool = np.setdiff1d(np.arange(n), labeled)
        probs = _probs(model, Xp[pool], C)
        if strategy == "random":
            pick = rng.choice(len(pool), batch, replace=False)
        elif strategy in ("entropy", "margin"):
            pick = top_uncertain(probs, batch, strategy, seed)
        elif strategy == "coldstart":
            n_audit = math.ceil(batch * audit_fraction)
            chosen, audit = select_indices(probs, batch, strategy="hybrid", audit=n_audit, seed=seed + len(labeled),
                                           X=Xp[pool], labeled_X=Xp[labeled], factor=factor, measure="margin")
            predicted = probs.argmax(1)
            truth_acc = float((predicted == yp[pool]).mean())  # auto labels of the whole pool
            correct = int((predicted[audit] == yp[pool][audit]).sum())
            lo, hi = wilson_interval(correct, len(audit))
            cp_lo, cp_hi = clopper_pearson_interval(correct, len(audit))
            audits.append({"labels": len(labeled), "true": truth_acc, "low": lo, "high": hi, "n": len(audit),
                           "cp_covered": cp_lo <= truth_acc <= cp_hi})
            pick = np.concatenate([chosen, audit])
        elif strategy.startswith("modal_"):
            from modAL.uncertainty import margin_sampling, uncertainty_sampling

            fn = margin_sampling if strategy == "modal_margin" else uncertainty_sampling
            pick = np.asarray(fn(model, Xp[pool], n_instances=batch))
            pick = pick[0] if pick.ndim > 1 else pick
        else:
            raise ValueError(strategy)
        labeled.extend(pool[np.asarray(pick, int)].tolist())


def bench_al(seeds: int = 5, batch: int = 10, start: int = 10) -> dict:
    digits = load_digits()
    strategies = list(STRATEGIES)
    try:
        import modAL  # noqa: F401

        strategies += ["modal_uncertainty", "modal_margin"]
    except ImportError:
        print("modAL-python is not installed: skipping its strategies (pip install -e '.[bench]')")
    results: dict[str, list] = {s: [] for s in strategies}
    coverage, cp_coverage = [], []
    t0 = time.perf_counter()
    for seed in range(seeds):
        Xp, Xt, yp, yt = train_test_split(digits.data, digits.target, test_size=0.3, random_state=seed,
                                          stratify=digits.target)
        scaler = StandardScaler().fit(Xp)  # unsupervised: pool statistics, no labels used
        Xp, Xt = scaler.transform(Xp).astype(np.float32), scaler.transform(Xt).astype(np.float32)
        full = float(_fit(Xp, yp, seed).score(Xt, yt))
        target = 0.95 * full
        line = [f"seed {seed}: full-pool accuracy {full:.3f}, target {target:.3f}:"]
        for s in strategies:
            r = simulate(s, Xp, yp, Xt, yt, target, seed, start=start, batch=batch)
            results[s].append(r["labels"])
            coverage += [a["low"] <= a["true"] <= a["high"] for a in r["audits"]]
            cp_coverage += [a["cp_covered"] for a in r["audits"]]
            line.append(f"{s}={r['labels']}")
        print(" ".join(line), flush=True)

    def mean(v):
        ok = [x for x in v if x is not None]
        return round(float(np.mean(ok)), 1) if len(ok) == len(v) else None

    labels_to_95 = {s: mean(v) for s, v in results.items()}
    figures = {
        "labels_to_95": labels_to_95,
        "labels_to_95_per_seed": results,
        "audit_coverage": round(float(np.mean(coverage)), 3) if coverage else None,
        "audit_rounds": len(coverage),
        "audit_coverage_clopper_pearson": round(float(np.mean(cp_coverage)), 3) if cp_coverage else None,
        "audit_items_per_round": math.ceil(batch * 0.1),
        "seeds": seeds, "batch": batch, "start": start, "seconds": round(time.perf_counter() - t0, 1),
    }
    print("\nlabels to reach 95% of the full-pool probe accuracy (mean of seeds; lower is better):")
    for s, v in labels_to_95.items():
        print(f"  {s:18s} {v}")
    print("  reference (plain LR on pixels): random 160, entropy 160, margin 100")
    print(f"audit: the Wilson 95% interval covered the true auto-label accuracy in "
          f"{figures['audit_coverage']:.1%} of {len(coverage)} rounds ({figures['audit_items_per_round']} audit "
          f"item(s) per round); the exact Clopper-Pearson interval covered it in "
          f"{figures['audit_coverage_clopper_pearson']:.1%}")
    if labels_to_95.get("coldstart") is not None:
        print(TARGETS["labels_to_95"].line(labels_to_95["coldstart"]))
    if figures["audit_coverage"] is not None:
        print(TARGETS["audit_coverage"].line(figures["audit_coverage"]))
    return figures
