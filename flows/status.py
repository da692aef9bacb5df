"""`coldstart status`: what a person wants to know about a workspace, from its own files."""

from __future__ import annotations

import json

from tasks.intake import human_labels, read_events
from tasks.workspace import Workspace, read_csv


def workspace_status(ws: Workspace) -> dict:
    manifest = read_csv(ws.manifest)
    events = read_events(ws)
    tags = ws.round_tags()
    resolved = read_csv(ws.resolved)
    train = json.loads((ws.metrics_dir / "train.json").read_text()) if (ws.metrics_dir / "train.json").is_file() else {}
    pending = sorted(p.name for p in ws.inbox.glob("*") if p.is_file() and not p.name.startswith(".")) if ws.inbox.is_dir() else []
    rejected = sorted(p.name for p in ws.rejected.glob("*") if p.is_file() and not p.name.endswith(".errors.txt")) \
        if ws.rejected.is_dir() else []
    return {
        "workspace": str(ws.root),
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
    if s["inbox_pending"]:
        lines.append(f"inbox         {len(s['inbox_pending'])} file(s) waiting for the next round: {', '.join(s['inbox_pending'])}")
    if s["inbox_rejected"]:
        lines.append(f"rejected      {', '.join(s['inbox_rejected'])} (see data/inbox/rejected/*.errors.txt)")
    return "\n".join(lines)
