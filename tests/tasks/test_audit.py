"""The audit estimate: exact intervals, and the current labeler scored out of fold on every
answered audit item (tasks/audit.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import binom

from coldstart.tasks.audit import (
    AuditEstimate,
    AuditItem,
    audit_estimate,
    clopper_pearson_interval,
    clopper_pearson_lower,
    confidence_bands,
    difference_estimate,
    inclusion_probabilities,
    systematic_sample,
    weighted_accuracy,
    wilson_interval,
)


def _coverage(interval, n: int, p: float) -> float:
    """Exact coverage at (n, p): the binomial probability of the counts whose interval holds p."""
    return sum(binom.pmf(k, n, p) for k in range(n + 1) if interval(k, n)[0] <= p <= interval(k, n)[1])


def test_clopper_pearson_known_values():
    assert clopper_pearson_interval(8, 10) == pytest.approx((0.4439, 0.9748), abs=1e-4)
    lo, hi = clopper_pearson_interval(50, 50)  # all right: low = (alpha/2)^(1/n)
    assert lo == pytest.approx(0.025 ** (1 / 50)) and hi == 1.0
    assert clopper_pearson_interval(0, 5) == pytest.approx((0.0, 1 - 0.025 ** (1 / 5)))
    assert clopper_pearson_interval(0, 0) == (0.0, 1.0)
    # One-sided: all of alpha below, so above the two-sided interval's low end.
    assert clopper_pearson_lower(50, 50) == pytest.approx(0.05 ** (1 / 50))  # 0.942 vs 0.929
    assert clopper_pearson_lower(9, 10) == pytest.approx(0.6058, abs=1e-4)
    assert clopper_pearson_lower(0, 10) == clopper_pearson_lower(3, 0) == 0.0


def test_clopper_pearson_covers_at_least_95_percent_where_wilson_does_not():
    """Exact coverage over n <= 20 and the accuracies auto labels have (0.80-0.995): the
    Clopper-Pearson interval never falls below 95%, its one-sided bound never above the truth
    more than 5% of the time, while Wilson dips to ~0.83 (the issue's benchmark)."""
    grid = np.linspace(0.80, 0.995, 40)
    cp = min(_coverage(clopper_pearson_interval, n, p) for n in range(1, 21) for p in grid)
    wilson = min(_coverage(wilson_interval, n, p) for n in range(1, 21) for p in grid)
    lower = min(sum(binom.pmf(k, n, p) for k in range(n + 1) if clopper_pearson_lower(k, n) <= p)
                for n in range(1, 21) for p in grid)
    assert cp >= 0.95 and lower >= 0.95
    assert wilson < 0.86


def _estimate(items, sample_ids):
    est = AuditEstimate(3, 0, 0, items=items, sample_ids=sample_ids, classes=["cat", "dog", "fox"])
    est.as_labeled = {"1": [1, 2]}
    return est


def test_out_of_fold_scores_every_answered_audit_item_on_its_own_training_row():
    """Rows of oof_probs follow the train stage's samples (sample_ids, then regions): each audit
    item is read at its own row, wherever it sits, and compared with the person's answer."""
    items = [AuditItem("b", 1, "dog", "cat"), AuditItem("d", 1, "cat", "cat"), AuditItem("e", 2, "fox", "dog"),
             AuditItem("gone", 2, "dog", "dog")]  # no longer a training sample (image deleted)
    sample_ids = ["a", "b", "c", "d", "e"]
    oof = np.array([[1, 0, 0], [0.1, 0.8, 0.1], [1, 0, 0], [0.2, 0.7, 0.1], [0, 0.3, 0.7], [1, 0, 0]], np.float32)
    train = SimpleNamespace(oof_probs=oof, region_labels=1)  # the last row is a labeled region
    est = _estimate(items, sample_ids)
    assert est.use_out_of_fold(train, 5)
    assert (est.round, est.method, est.n, est.correct, est.drawn_in) == (5, "out-of-fold", 3, 2, [1, 2])
    assert est.by_label == {"dog": [1, 2], "fox": [1, 1]}  # by the out-of-fold prediction
    assert est.interval == clopper_pearson_interval(2, 3) and est.lower_bound == clopper_pearson_lower(2, 3)
    assert est.as_labeled == {"1": [1, 2]}  # each batch as its round labeled it, kept beside
    m = est.metrics()
    assert (m["audit_accuracy"], m["audit_n"], m["audit_low"], m["audit_high"]) == \
        (pytest.approx(2 / 3), 3, *est.interval)
    assert "n=3, out-of-fold on the audits of rounds 1-2" in est.describe()
    # Done once: a second call changes nothing.
    assert not est.use_out_of_fold(SimpleNamespace(oof_probs=np.eye(3)[[0, 0, 0, 0, 0, 0]], region_labels=1), 6)
    assert (est.round, est.correct) == (5, 2)


def test_out_of_fold_keeps_the_as_labeled_estimate_when_rows_do_not_line_up():
    items = [AuditItem("b", 1, "dog", "cat")]
    est = _estimate(items, ["a", "b"])
    est.n, est.correct = 1, 0
    assert not est.use_out_of_fold(SimpleNamespace(oof_probs=np.eye(3), region_labels=0), 3)  # 3 rows, 2 samples
    assert not est.use_out_of_fold(SimpleNamespace(oof_probs=None, region_labels=0), 3)  # no train result
    assert (est.method, est.n, est.correct) == ("as labeled", 1, 0)


def test_a_record_read_back_from_json_keeps_its_estimate():
    est = _estimate([AuditItem("b", 1, "dog", "dog")], ["b"])
    assert est.use_out_of_fold(SimpleNamespace(oof_probs=np.array([[0.0, 1.0, 0.0]]), region_labels=0), 2)
    back = AuditEstimate.from_dict(est.to_dict())
    assert (back.round, back.n, back.correct, back.method, back.drawn_in) == (2, 1, 1, "out-of-fold", [1])
    assert back.items == [] and back.interval == est.interval
    assert not back.use_out_of_fold(SimpleNamespace(oof_probs=np.eye(3), region_labels=0), 3)


def test_weighted_estimate_with_equal_confidences_is_the_audited_share():
    """One band and the same confidence everywhere: the ratio cancels, the estimate is the
    share right, and the interval is close to Clopper-Pearson's (Poisson limits for the errors)."""
    w = weighted_accuracy(np.full(1000, 0.9), np.full(40, 0.9), np.arange(40) >= 4)  # 4 errors of 40
    assert w.accuracy == pytest.approx(0.9) and len(w.bands) == 1
    assert w.bands[0][:5] == [0.0, 1.0, 1000, pytest.approx(100.0), 40] and w.bands[0][6] == 4
    cp = clopper_pearson_interval(36, 40)
    assert w.low < 0.9 < w.high and abs(w.low - cp[0]) < 0.05 and abs(w.high - cp[1]) < 0.03
    # All right: the estimate is 1, the interval still allows errors.
    w = weighted_accuracy(np.full(500, 0.95), np.full(30, 0.95), np.ones(30, bool))
    assert w.accuracy == w.high == 1.0 and 0.8 < w.low < 1.0


def test_confidence_bands_merge_until_each_expects_an_error():
    conf = np.r_[np.full(10, 0.6), np.full(20, 0.85), np.full(200, 0.999)]  # expects 4, 3 and 0.2 errors
    edges = confidence_bands(conf)
    assert edges[0] == 0.0 and edges[-1] == 1.0
    expected = [(1 - conf[(conf >= lo) & ((conf < hi) | (hi == 1.0))]).sum() for lo, hi in zip(edges[:-1], edges[1:])]
    assert len(edges) >= 3 and min(expected) >= 1.0  # the 0.999 items joined a band with errors to expect
    assert confidence_bands(np.full(5, 0.999)).tolist() == [0.0, 1.0]  # too little evidence: one band


def _shifted_audit(rng, n_audit=60, n_pool=1500):
    """Calibrated confidences; the audit drawn from an earlier pool with many uncertain images,
    today's pool without most of them (the review took them out)."""
    def draw(n, hard):
        conf = np.where(rng.random(n) < hard, rng.uniform(0.4, 0.8, n), rng.uniform(0.97, 1.0, n))
        return conf, rng.random(n) < conf
    (ac, ar), (pc, pr) = draw(n_audit, 0.4), draw(n_pool, 0.05)
    return pc, pr.mean(), ac, ar


def test_weighted_estimate_follows_today_s_easier_pool_where_the_audited_share_does_not():
    rng = np.random.default_rng(0)
    pool_conf, truth, audit_conf, right = _shifted_audit(rng, n_audit=400)
    w = weighted_accuracy(pool_conf, audit_conf, right)
    assert right.mean() < truth - 0.1  # the raw share right is far below today's accuracy ...
    assert abs(w.accuracy - truth) < 0.02 and w.low <= truth <= w.high  # ... the weighted one is not
    assert len(w.bands) >= 2 and sum(b[2] for b in w.bands) == len(pool_conf)


def test_weighted_interval_covers_today_s_accuracy_at_least_95_percent_of_the_time():
    """300 simulated audits (60 items, calibrated confidences, today's pool easier than the
    audited one): the interval holds the realised accuracy of today's auto labels."""
    rng = np.random.default_rng(1)
    hits = []
    for _ in range(300):
        pool_conf, truth, audit_conf, right = _shifted_audit(rng)
        w = weighted_accuracy(pool_conf, audit_conf, right, draws=4000)
        hits.append(w.low <= truth <= w.high)
    assert np.mean(hits) >= 0.95


def test_weighting_to_today_s_auto_labels_after_out_of_fold():
    items = [AuditItem(x, 1, "dog" if k % 4 else "cat", "dog") for k, x in enumerate("abcdefgh")]
    est = _estimate(items, list("abcdefgh"))
    assert not est.weight_to_pool(np.full(100, 0.9))  # not out of fold yet: nothing to weight
    oof = np.tile(np.array([[0.1, 0.8, 0.1]], np.float32), (8, 1))  # predicts dog at 0.8: 2 of 8 wrong
    assert est.use_out_of_fold(SimpleNamespace(oof_probs=oof, region_labels=0), 3)
    assert est.interval == clopper_pearson_interval(6, 8)
    assert est.weight_to_pool(np.full(200, 0.95))  # today's auto labels: far surer than the audited ones
    expected = 0.95 + (6 / 8 - 0.8)  # the model's expectation + the audit's residual (right - confidence)
    assert est.accuracy == pytest.approx(expected, abs=1e-5) and est.unweighted_accuracy == 0.75
    lo, hi = est.interval
    assert lo < expected < hi and est.lower_bound == clopper_pearson_lower(6, 8)  # gates stay exact
    assert est.estimator == "difference" and "6/8 right, difference estimator" in est.describe()
    assert est.bands and sum(b[6] for b in est.bands) == 2  # where the errors lay, for the report
    m = est.metrics()
    assert (m["audit_accuracy"], m["audit_low"], m["audit_high"], m["audit_unweighted_accuracy"]) == \
        (est.accuracy, lo, hi, 0.75)
    back = AuditEstimate.from_dict(est.to_dict())  # the round record keeps the weighted estimate
    assert (back.accuracy, back.interval, back.bands, back.auto_labels, back.estimator) == \
        (est.accuracy, (lo, hi), est.bands, 200, "difference")
    assert not back.weight_to_pool(np.full(10, 0.5))  # read back: its items are gone, nothing to redo


def test_audit_estimate_of_one_batch_as_labeled():
    batch = [dict(image_id="a", purpose="audit", predicted_label="cat", round="4"),
             dict(image_id="b", purpose="audit", predicted_label="dog", round="4"),
             dict(image_id="c", purpose="hybrid", predicted_label="dog", round="4")]
    est = audit_estimate(batch, {"a": "cat", "b": "cat", "c": "dog"})
    assert (est.round, est.n, est.correct, est.method, est.drawn_in) == (4, 2, 1, "as labeled", [4])
    assert [it.image_id for it in est.items] == ["a", "b"]
    assert "round 4's audit as labeled" in est.describe()


def test_the_round_s_audit_is_the_train_stage_s_out_of_fold_accuracy_on_every_audit_item(make_workspace):
    """A real workspace: images scanned and embedded (tiny model), two rounds' audit items
    answered, the audit stage, then the train stage; the estimate is the train stage's
    out-of-fold predictions read at each audit item's row of read_pool (the train's samples)."""
    from coldstart.flows.cli import main as cli
    from coldstart.tasks.audit import audit, sample_order
    from coldstart.tasks.demodata import DIGITS, write_digits
    from coldstart.tasks.embed import load_model
    from coldstart.tasks.labellog import human_labels, read_events
    from coldstart.tasks.pool import read_pool
    from coldstart.tasks.select import BATCH_FIELDS
    from coldstart.tasks.store import EmbeddingStore
    from coldstart.tasks.train import train
    from coldstart.tasks.workspace import read_csv, write_csv

    ws = make_workspace()  # round.budget 6
    ws.params_file.write_text(ws.params_file.read_text().replace("train:\n", "train:\n  model: probe\n"))
    truth = write_digits(ws.images, n=40, size=32)
    assert cli(["stage", "scan", "-w", str(ws.root)]) == 0
    assert cli(["stage", "embed", "-w", str(ws.root)]) == 0
    from coldstart.tasks.scan import image_table

    ids = {path: i for i, path in image_table(ws).items()}
    paths = sorted(truth)
    # Rounds 1 and 2: 4 audit items each (every other one "labeled" wrong then) and 6 picks.
    for r, chunk in ((1, paths[:10]), (2, paths[10:20])):
        rows = [dict(image_id=ids[p], image=p, purpose="audit" if k < 4 else "hybrid",
                     predicted_label=truth[p] if k % 2 else DIGITS[(DIGITS.index(truth[p]) + 1) % 10],
                     confidence="0.5", source="zero-shot", model_id="", score="", round=r, note="")
                for k, p in enumerate(chunk)]
        write_csv(ws.review / f"round-{r:03d}.batch.csv", BATCH_FIELDS, rows)
    (ws.inbox / "answers.csv").write_text("image,label\n" + "".join(f"{p},{truth[p]}\n" for p in paths[:20]))
    assert cli(["stage", "intake", "-w", str(ws.root)]) == 0

    est = audit(ws, ws.params(), load_model(ws.params().model).model_id, 3)
    assert (est.round, est.method, est.n, est.correct) == (2, "as labeled", 4, 2)  # the newest batch
    assert est.as_labeled == {"1": [2, 4], "2": [2, 4]} and len(est.items) == 8
    params = ws.params()
    clip = load_model(params.model)
    humans = human_labels(read_events(ws))
    pool = read_pool(ws, EmbeddingStore(ws.embeddings, clip.model_id, params.views.key("global")), humans)
    assert est.sample_ids == pool.labeled_ids == sample_order(ws, params, clip.model_id, humans)

    result = train(ws, params, clip, 3)
    assert result.model == "probe" and result.oof_probs.shape[0] == 20
    assert est.use_out_of_fold(result, 3)
    classes = params.ontology.class_names
    audited = [paths[k] for k in (0, 1, 2, 3, 10, 11, 12, 13)]
    row = {i: k for k, i in enumerate(pool.labeled_ids)}
    expected = sum(classes[int(result.oof_probs[row[ids[p]]].argmax())] == truth[p] for p in audited)
    assert (est.round, est.method, est.n, est.correct, est.drawn_in) == (3, "out-of-fold", 8, expected, [1, 2])

    # review_policy critical: every auto label goes to review, all of it audit; none is accepted.
    from coldstart.tasks.relabel import relabel
    from coldstart.tasks.select import select

    critical = params.round.model_copy(update={"review_policy": "critical", "audit_fraction": 1.0})
    labels = relabel(ws, params.model_copy(update={"round": critical}), 3)
    assert labels.auto == len(labels.auto_confidence) == 20  # the auto labels the estimate is weighted to
    assert est.weight_to_pool(labels.auto_confidence) and est.auto_labels == 20 and est.unweighted_accuracy == \
        expected / 8 and est.interval[0] <= est.accuracy <= est.interval[1]
    result = select(ws, critical, 3)
    batch = read_csv(ws.review / "round-003.batch.csv")
    assert result.batch_size == result.audit == len(batch) == 20 > params.round.budget
    assert {b["purpose"] for b in batch} == {"audit"} and not {b["image_id"] for b in batch} & set(humans)


def test_review_policy_presets_set_the_audit_share_and_refuse_a_contradiction():
    from coldstart.models.errors import ConfigError
    from coldstart.tasks.config import parse_params

    def round_of(**kw):
        return parse_params({"ontology": {"classes": {"a": ["x"], "b": ["y"]}}, "round": kw}).round

    assert round_of().review_policy == "custom" and round_of().audit_fraction == 0.1
    assert round_of(audit_fraction=0.2).audit_fraction == 0.2  # custom: as written
    assert round_of(review_policy="spot-check").audit_fraction == 0.1
    assert round_of(review_policy="specialist").audit_fraction == 0.3
    assert round_of(review_policy="critical").audit_fraction == 1.0
    assert round_of(review_policy="specialist", audit_fraction=0.3).audit_fraction == 0.3
    with pytest.raises(ConfigError, match="audit_fraction 0.1 contradicts review_policy specialist"):
        round_of(review_policy="specialist", audit_fraction=0.1)
    with pytest.raises(ConfigError, match="round.review_policy"):
        round_of(review_policy="lenient")


def test_the_auto_accept_gate_is_a_lower_bound_on_held_out_precision():
    from coldstart.tasks.config import RoundConfig
    from coldstart.tasks.train import auto_accept_threshold, bounded_precision_threshold

    def held_out(conf, right):
        conf = np.asarray(conf, float)
        probs = np.stack([conf, 1 - conf], 1)
        return probs, np.where(right, 0, 1)

    # 40 at 0.99 all right, then 40 at 0.9 all right, then 40 at 0.8 half right.
    probs, y = held_out([0.99] * 40 + [0.9] * 40 + [0.8] * 40, [True] * 80 + [True, False] * 20)
    # 40 right: bound 0.928 < 0.95; 80 right: 0.963 clears it; adding the 0.8s: 100/120, 0.77.
    assert bounded_precision_threshold(probs, y, 0.95) == (0.9, 80)
    assert bounded_precision_threshold(probs[:40], y[:40], 0.95) is None  # 100% observed, not shown
    assert bounded_precision_threshold(probs, y, 0.7) == (0.8, 120)
    cfg = RoundConfig(threshold_mode="precision", target_precision=0.95)
    assert auto_accept_threshold(cfg, probs, y)[0] == 0.9
    t, why = auto_accept_threshold(cfg, probs[:40], y[:40])
    assert t == 1.0 and "with 95% confidence" in why
    critical = RoundConfig(review_policy="critical")
    assert auto_accept_threshold(critical, probs, y) == (1.0, "review_policy critical: every auto label goes to review")


def test_inclusion_probabilities_follow_uncertainty_sum_to_n_and_are_never_zero():
    conf = np.array([0.999999, 0.99, 0.9, 0.7, 0.5, 1.0] + [0.98] * 94)
    pi = inclusion_probabilities(conf, 10)
    assert pi.sum() == pytest.approx(10) and (pi <= 1).all()
    assert (pi >= 0.25 * 10 / 100 - 1e-12).all() and pi[5] > 0  # the uniform share: even a sure label
    assert pi[0] < pi[1] < pi[2] < pi[3] < pi[4]  # the less sure, the likelier drawn
    few = inclusion_probabilities(np.r_[np.full(3, 0.5), np.full(97, 0.99999)], 5)  # capped at 1, rest rescaled
    assert (few[:3] == 1).all() and few.sum() == pytest.approx(5)
    assert (inclusion_probabilities(conf[:4], 4) == 1).all() and not inclusion_probabilities(conf, 0).any()


def test_systematic_sample_draws_each_item_with_its_inclusion_probability():
    pi = inclusion_probabilities(np.random.default_rng(0).uniform(0.5, 1.0, 40), 6)
    rng = np.random.default_rng(1)
    counts = np.zeros(40)
    for _ in range(4000):
        s = systematic_sample(pi, rng)
        assert len(s) == 6 == len(set(s.tolist()))  # a fixed size, no repeats
        counts[s] += 1
    assert np.abs(counts / 4000 - pi).max() < 0.03


def _simulated_pool(rng, N=2000):
    """A pool whose confidences are miscalibrated (right less often than they say) and whose
    correctness is drawn once: (confidence, right)."""
    conf = np.clip(rng.beta(8, 1, N), 0.3, 0.9999)
    right = rng.random(N) < conf - 0.04 * (conf < 0.9)
    return conf, right


def test_difference_estimator_is_unbiased_under_the_uncertainty_design():
    """1,000 audits of 40 items drawn with probabilities that follow uncertainty from one fixed
    pool: the estimates' mean is the pool's true accuracy within its standard error, while the
    unweighted share of the same items is far below it (the items are the hard ones)."""
    rng = np.random.default_rng(3)
    conf, right = _simulated_pool(rng)
    truth = right.mean()
    pi = inclusion_probabilities(conf, 40)
    est, naive = [], []
    for _ in range(1000):
        s = systematic_sample(pi, rng)
        d = difference_estimate(conf, conf[s], right[s], pi[s], np.full(len(s), len(conf)), np.ones(len(s)))
        est.append(d.accuracy)
        naive.append(right[s].mean())
    est = np.array(est)
    assert abs(est.mean() - truth) <= est.std(ddof=1) / np.sqrt(len(est))  # unbiased: within its standard error
    assert truth - np.mean(naive) > 0.02  # ignoring the design is biased: the drawn items are the hard ones


def test_difference_interval_covers_the_pool_s_accuracy():
    """300 pools, each drawn afresh, each audited once by the uncertainty design over two rounds."""
    rng = np.random.default_rng(4)
    hits, widths = [], []
    for _ in range(300):
        conf, right = _simulated_pool(rng, 1000)
        pi = inclusion_probabilities(conf, 30)
        s1, s2 = systematic_sample(pi, rng), systematic_sample(pi, rng)  # two rounds' audits of the same pool
        s = np.r_[s1, s2]
        d = difference_estimate(conf, conf[s], right[s], pi[s], np.full(len(s), 1000), np.r_[np.ones(30), np.full(30, 2)])
        hits.append(d.low <= right.mean() <= d.high)
        widths.append(d.high - d.low)
    assert np.mean(hits) >= 0.95 and np.median(widths) < 0.2


def test_difference_estimator_weights_items_of_old_batches_as_uniform():
    """Batches from before inclusion probabilities were recorded (NaN): each item weighs 1, so the
    residual is the plain mean of (right - confidence)."""
    conf, right = np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, True, False, True])
    d = difference_estimate(np.full(50, 0.9), conf, right, np.full(4, np.nan), np.full(4, np.nan), np.ones(4))
    assert d.residual == pytest.approx(np.mean(right - conf)) and d.accuracy == pytest.approx(0.9 + d.residual)
