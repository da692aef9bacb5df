"""`coldstart status`: what a person wants to know about a workspace, from its own files."""

from __future__ import annotations

import json

from coldstart.tasks.intake import human_labels, read_events
from coldstart.tasks.workspace import Workspace, read_csv


def stopping(stop, last: dict) -> tuple[bool, list[str]]:
    """Is the dataset done? (done, reasons) from the last round's record and params.stop."""
    reasons = []
    if stop.max_labels is not None and last.get("human_labels", 0) >= stop.max_labels:
        reasons.append(f"the human-label budget is spent ({last['human_labels']} >= stop.max_labels={stop.max_labels})")
    if stop.churn_below is not None and last.get("churn") is not None and last["churn"] < stop.churn_below:
        reasons.append(f"labels have settled: {last['churn']:.2%} changed in the last round "
                       f"(< stop.churn_below={stop.churn_below:.2%})")
    interval = last.get("audit_interval")
    if stop.audit_lower_bound is not None and interval and interval[0] >= stop.audit_lower_bound:
        reasons.append(f"audited auto-label accuracy is at least {interval[0]:.1%} with 95% confidence "
                       f"(>= stop.audit_lower_bound={stop.audit_lower_bound:.0%}, {last['audit_n']} audited)")
    return bool(reasons), reasons


def workspace_status(ws: Workspace) -> dict:
    manifest = read_csv(ws.manifest)
    events = read_events(ws)
    tags = ws.round_tags()
    resolved = read_csv(ws.resolved)
    train = json.loads((ws.metrics_dir / "train.json").read_text()) if (ws.metrics_dir / "train.json").is_file() else {}
    pending = sorted(p.name for p in ws.inbox.glob("*") if p.is_file() and not p.name.startswith(".")) if ws.inbox.is_dir() else []
    rejected = sorted(p.name for p in ws.rejected.glob("*") if p.is_file() and not p.name.endswith(".errors.txt")) \
        if ws.rejected.is_dir() else []
    last = json.loads((ws.metrics_dir / "round.json").read_text()) if (ws.metrics_dir / "round.json").is_file() else {}
    done, why = stopping(ws.params().stop, last) if last else (False, [])
    return {
        "workspace": str(ws.root),
        "done": done,
        "done_reasons": why,
        "last_audit": {k: last.get(k) for k in ("audit_round", "audit_n", "audit_accuracy", "audit_interval")},
        "last_churn": last.get("churn"),
        "images": len({r["image_id"] for r in manifest}),
        "files": len(manifest),
        "quarantined": len(read_csv(ws.quarantine)),
        "human_labels": len(human_labels(events)),
        "label_events": len(events),
        "rounds": len(tags),
        "last_round": tags[-1] if tags else None,
        "auto_labeled": sum(r["source"] != "human" for r in resolved),
        "model": train.get("model"),
        "probe_cv_accuracy": train.get("probe_cv_accuracy"),
        "inbox_pending": pending,
        "inbox_rejected": rejected,
    }


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
    if s["inbox_pending"]:
        lines.append(f"inbox         {len(s['inbox_pending'])} file(s) waiting for the next round: {', '.join(s['inbox_pending'])}")
    if s["inbox_rejected"]:
        lines.append(f"rejected      {', '.join(s['inbox_rejected'])} (see data/inbox/rejected/*.errors.txt)")
    return "\n".join(lines)
