"""`coldstart status`: the stopping rule's audit gate (one-sided Clopper-Pearson bound), the
critical review policy, and what the status prints about the audit and the round report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def test_a_workspace_where_every_image_has_a_human_label_is_done(make_workspace):
    """No auto label left: done whatever the audit and churn say, and no accuracy claimed for
    the auto labels there are none of."""
    ws = make_workspace()
    rec = record(20, 20, auto=0, below=0, churn=0.3)  # 60 images, all labeled by people
    done, why, why_not = stopping(StopConfig(), rec)
    assert done and why == ["every image has a human label: no auto label is left to check"] and why_not == []
    rec.save(ws.metrics_dir / "round.json")
    subprocess.run(["git", "tag", "round-004"], cwd=ws.root, check=True, capture_output=True)
    s = workspace_status(ws)
    assert s["done"] and s["auto_labeled"] == 0
    s["images"] = 60  # as the manifest of those 60 images would say
    text = format_status(s)
    assert "DONE          every image has a human label" in text
    assert "not done yet" not in text and "answer the review batch" not in text
    assert "correct" not in text and "audit         no auto labels to audit: every image has a human label" in text


def test_not_done_says_what_to_run_as_a_command_that_runs(make_workspace):
    ws = make_workspace()
    record(70, 75).save(ws.metrics_dir / "round.json")
    subprocess.run(["git", "tag", "round-004"], cwd=ws.root, check=True, capture_output=True)
    text = format_status(workspace_status(ws))
    line = next(x for x in text.splitlines() if x.startswith("not done yet"))
    exe = line.split("run a round: ", 1)[1].split()[0]
    assert exe.startswith("/") and Path(exe).is_file() and line.endswith(f"round -w {ws.root}")
    (ws.inbox / "answers.csv").write_text("image,label\n")
    assert "answers wait in data/inbox/: run a round: " in format_status(workspace_status(ws))


def test_status_keeps_what_it_derived_until_its_files_change(make_workspace):
    """.coldstart/status.json: the label counts and the record's audit figures, each keyed by
    its file; an event appended or a new record is seen at once."""
    ws = make_workspace()
    record(70, 75).save(ws.metrics_dir / "round.json")
    s = workspace_status(ws)
    assert (s["human_labels"], s["label_events"]) == (0, 0) and s["last_audit"]["audit_n"] == 75
    assert workspace_status(ws) == s  # read back
    event = {"image_id": "a" * 64, "label": "zero", "annotator": "x", "source_file": "f.csv", "source_sha256": "0" * 64,
             "source_row": 2, "imported_at": "2026-01-01T00:00:00Z", "round": 1}
    ws.events.parent.mkdir(parents=True, exist_ok=True)
    ws.events.write_text(json.dumps(event) + "\n")
    record(10, 12).save(ws.metrics_dir / "round.json")
    s = workspace_status(ws)
    assert (s["human_labels"], s["label_events"]) == (1, 1) and s["last_audit"]["audit_n"] == 12
    (ws.state_dir / "status.json").write_text("{not json")  # a damaged cache is recomputed
    assert workspace_status(ws) == s


def test_status_imports_neither_torch_nor_mlflow(make_workspace):
    """`coldstart status` reads files; it never loads torch, MLflow, DVC or scikit-learn (seconds
    of imports). Once derived (here by the first call), not Prefect or SciPy either."""
    ws = make_workspace()
    record(70, 75).save(ws.metrics_dir / "round.json")
    probe = ("import sys\nfrom coldstart.flows.cli import main\nassert main(['status', '-w', sys.argv[1]]) == 0\n"
             "print('LOADED', sorted(m for m in ('torch', 'mlflow', 'dvc', 'sklearn', 'prefect', 'scipy') "
             "if m in sys.modules))\n")
    loaded = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", probe, str(ws.root)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        loaded.append(out.stdout.split("LOADED ", 1)[1].strip())
    assert "torch" not in loaded[0] and "mlflow" not in loaded[0] and "dvc" not in loaded[0] and "sklearn" not in loaded[0]
    assert loaded[1] == "[]"


def test_the_gate_note_is_the_audit_s():
    from coldstart.flows import status
    from coldstart.tasks import audit

    assert status.GATE_NOTE == audit.GATE_NOTE
