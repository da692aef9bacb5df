"""`coldstart status`: the stopping rule's audit gate (one-sided Clopper-Pearson bound), the
critical review policy, and what the status prints about the audit and the round report."""

from __future__ import annotations

import subprocess

import pytest

from coldstart.flows.record import RoundRecord
from coldstart.flows.status import format_status, stopping, workspace_status
from coldstart.tasks.audit import AuditEstimate, clopper_pearson_interval
from coldstart.tasks.config import StopConfig
from coldstart.tasks.intake import IntakeResult
from coldstart.tasks.relabel import RelabelResult


def record(correct: int, n: int, auto: int = 100, below: int = 50, churn: float = 0.5) -> RoundRecord:
    audit = AuditEstimate(4, n, correct, method="out-of-fold", drawn_in=[1, 2, 3])
    return RoundRecord(4, intake=IntakeResult(human_labels=60),
                       relabel=RelabelResult(auto + 60, 60, auto, "probe", 0.9, below, 0.7, churn), audit=audit)


def test_the_audit_gate_is_the_one_sided_clopper_pearson_bound():
    """59 audited, all right: the one-sided 95% bound is 0.05^(1/59) = 0.9505 >= 0.95, done; 58 all
    right is 0.94966: not yet. (Wilson's lower end passed 0.95 at 73 and was right less often.)"""
    stop = StopConfig(churn_below=None, audit_lower_bound=0.95)
    done, why, why_not = stopping(stop, record(59, 59))
    assert done and why == ["audited auto-label accuracy is at least 95.05% with 95% confidence "
                            "(>= stop.audit_lower_bound=95%; 100.0% correct (95% CI 93.9-100.0%, n=59, "
                            "out-of-fold on the audits of rounds 1-3))"] and why_not == []
    done, why, why_not = stopping(stop, record(58, 58))
    assert not done and why_not == ["audited accuracy is not shown to be >= 95%: its one-sided 95% lower bound is "
                                    "94.97% (100.0% correct (95% CI 93.8-100.0%, n=58, out-of-fold on the audits of "
                                    "rounds 1-3); answer more audit items)"]
    assert 0.9496 < record(58, 58).audit.lower_bound < 0.95 < record(59, 59).audit.lower_bound
    # With one wrong answer it takes 93 audited: the bound weighs the count, not just the share.
    assert not stopping(stop, record(91, 92))[0] and stopping(stop, record(92, 93))[0]


def test_critical_review_is_done_only_when_no_auto_label_is_left():
    stop = StopConfig(audit_lower_bound=0.9, churn_below=0.01)
    done, why, why_not = stopping(stop, record(200, 200, auto=30, below=0, churn=0.0), "critical")
    assert not done and why == [] and why_not == [
        "review_policy critical: every auto label goes to review, and 30 are not reviewed yet"]
    done, why, _ = stopping(stop, record(200, 200, auto=0, below=0, churn=0.0), "critical")
    assert done and why == ["every image has a human label (review_policy critical: every auto label goes to review)"]
    # The same record under any other policy: the audit and settled labels count.
    assert stopping(stop, record(200, 200, auto=30, below=0, churn=0.0))[0]


def test_status_prints_the_estimate_with_its_interval_and_n_and_the_report(make_workspace):
    ws = make_workspace()
    rec = record(70, 75)
    rec.save(ws.metrics_dir / "round.json")
    subprocess.run(["git", "tag", "round-004"], cwd=ws.root, check=True, capture_output=True)
    s = workspace_status(ws)
    lo, hi = clopper_pearson_interval(70, 75)
    assert s["last_audit"]["audit_interval"] == [lo, hi] and s["last_audit"]["audit_n"] == 75
    assert s["last_audit"]["audit_lower_bound"] == pytest.approx(rec.audit.lower_bound)
    assert s["report"] is None and s["review_policy"] == "custom"
    text = format_status(s)
    assert (f"audit         round 4's auto labels: 93.3% correct (95% CI {100 * lo:.1f}-{100 * hi:.1f}%, n=75, "
            f"out-of-fold on the audits of rounds 1-3); at least {rec.audit.lower_bound:.1%} with 95% confidence (the gates' exact bound, unweighted)") \
        in text
    assert "report" not in text
    (ws.root / "data" / "reports").mkdir(parents=True, exist_ok=True)
    (ws.root / "data" / "reports" / "round-004.html").write_text("<html></html>")
    s = workspace_status(ws)
    assert s["report"] == "data/reports/round-004.html"
    assert "report        data/reports/round-004.html" in format_status(s)
