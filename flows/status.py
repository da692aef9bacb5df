"""`coldstart status`: what a person wants to know about a workspace, from its own files."""

from __future__ import annotations

from coldstart.flows.record import RoundRecord
from coldstart.tasks.config import StopConfig
from coldstart.tasks.intake import human_labels, read_events
from coldstart.tasks.manifest import read_manifest
from coldstart.tasks.workspace import Workspace, read_csv


def stopping(stop: StopConfig, last: RoundRecord) -> tuple[bool, list[str]]:
    """Is the dataset done? (done, reasons) from the last round's record and params.stop."""
    reasons = []
    humans = last.intake.human_labels if last.intake else 0
    churn = last.relabel.churn if last.relabel else None
    if stop.max_labels is not None and humans >= stop.max_labels:
        reasons.append(f"the human-label budget is spent ({humans} >= stop.max_labels={stop.max_labels})")
    if stop.churn_below is not None and churn is not None and churn < stop.churn_below:
        reasons.append(f"labels have settled: {churn:.2%} changed in the last round "
                       f"(< stop.churn_below={stop.churn_below:.2%})")
    interval = last.audit.interval if last.audit else None
    if stop.audit_lower_bound is not None and interval and interval[0] >= stop.audit_lower_bound:
        reasons.append(f"audited auto-label accuracy is at least {interval[0]:.1%} with 95% confidence "
                       f"(>= stop.audit_lower_bound={stop.audit_lower_bound:.0%}, {last.audit.n} audited)")
    return bool(reasons), reasons


def last_round(ws: Workspace) -> RoundRecord | None:
    """The newest round's record (data/metrics/round.json), or None before the first round."""
    path = ws.metrics_dir / "round.json"
    return RoundRecord.load(path) if path.is_file() else None


def workspace_status(ws: Workspace) -> dict:
    manifest = read_manifest(ws)
    events = read_events(ws)
    tags = ws.round_tags()
    pending = sorted(p.name for p in ws.inbox.glob("*") if p.is_file() and not p.name.startswith(".")) if ws.inbox.is_dir() else []
    rejected = sorted(p.name for p in ws.rejected.glob("*") if p.is_file() and not p.name.endswith(".errors.txt")) \
        if ws.rejected.is_dir() else []
    last = last_round(ws)
    done, why = stopping(ws.params().stop, last) if last else (False, [])
    audit = last.audit if last else None
    return {
        "workspace": str(ws.root),
        "done": done,
        "done_reasons": why,
        "last_audit": {"audit_round": audit.round if audit else None, "audit_n": audit.n if audit else 0,
                       "audit_accuracy": audit.accuracy if audit else None,
                       "audit_interval": list(audit.interval) if audit and audit.n else None},
        "last_churn": last.relabel.churn if last and last.relabel else None,
        "images": len({r["image_id"] for r in manifest}),
        "files": len(manifest),
        "quarantined": len(read_csv(ws.quarantine)),
        "human_labels": len(human_labels(events)),
        "label_events": len(events),
        "rounds": len(tags),
        "last_round": tags[-1] if tags else None,
        "auto_labeled": last.relabel.auto if last and last.relabel else 0,
        "model": last.train.model if last and last.train else None,
        "probe_cv_accuracy": last.train.probe_cv_accuracy if last and last.train else None,
        "inbox_pending": pending,
        "inbox_rejected": rejected,
        "last_check": _last_check(ws, tags[-1] if tags else None),
    }


def _last_check(ws: Workspace, last_round: int | None) -> dict | None:
    """The newest round attempt that found nothing new since the last round, if any."""
    import json

    path = ws.state_dir / "last-check.json"
    try:
        check = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return check if check.get("last_round") == last_round else None


def format_status(s: dict) -> str:
    lines = [
        f"workspace     {s['workspace']}",
        f"rounds        {s['rounds']} (last: {s['last_round'] if s['last_round'] is not None else 'none yet'})",
        f"images        {s['images']} distinct ({s['files']} files), {s['quarantined']} quarantined",
        f"human labels  {s['human_labels']} images ({s['label_events']} label events)",
        f"auto labels   {s['auto_labeled']} by {s['model'] or '-'}"
        + (f" (probe CV accuracy {s['probe_cv_accuracy']:.3f})" if s["probe_cv_accuracy"] is not None else ""),
    ]
    if s["done"]:
        lines.append("DONE          " + "; ".join(s["done_reasons"]))
    elif s["rounds"]:
        lines.append("not done yet  (criteria in params.yaml `stop:`) - answer the review batch and run a round")
    if s.get("last_check"):
        lines.append(f"last check    {s['last_check']['checked_at']}: nothing new since round {s['last_round']} "
                     f"(no images, answers or params changes), so no round was made")
    if s["inbox_pending"]:
        lines.append(f"inbox         {len(s['inbox_pending'])} file(s) waiting for the next round: {', '.join(s['inbox_pending'])}")
    if s["inbox_rejected"]:
        lines.append(f"rejected      {', '.join(s['inbox_rejected'])} (see data/inbox/rejected/*.errors.txt)")
    return "\n".join(lines)
