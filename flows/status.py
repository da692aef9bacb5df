"""`coldstart status`: what a person wants to know about a workspace, from its own files.

Fast (about a second on the demo's 1,797 images): it imports neither torch, Prefect, MLflow,
DVC nor the round's record (of the stage modules, only the audit's light estimate class). What needs the whole label log or the round's
record is derived once per change of data/labels/events.jsonl or data/metrics/round.json, and
kept in .coldstart/status.json; `coldstart round` and the demo derive it before they exit.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace
from typing import Any, Protocol

from coldstart.tasks.audit import GATE_NOTE, AuditEstimate
from coldstart.tasks.commands import command, write_json
from coldstart.tasks.config import StopConfig
from coldstart.tasks.labellog import human_labels, read_events
from coldstart.tasks.manifest import read_manifest_table
from coldstart.tasks.workspace import Workspace, atomic_write_text, read_csv
from coldstart.version import __version__

CACHE = "status.json"  # in .coldstart/: derived parts of the status, keyed by their file's size, mtime and inode
CACHE_VERSION = 1


# What `stopping` reads of a round: a RoundRecord has it, and so has the light record that
# `status` builds from round.json without importing the stage modules (``_light_record``).
class _IntakeFacts(Protocol):
    @property
    def human_labels(self) -> int: ...


class _RelabelFacts(Protocol):
    @property
    def images(self) -> int: ...
    @property
    def auto(self) -> int: ...
    @property
    def churn(self) -> float | None: ...
    @property
    def below_threshold(self) -> int: ...


class _AuditFacts(Protocol):
    @property
    def n(self) -> int: ...
    @property
    def lower_bound(self) -> float | None: ...
    def describe(self) -> str: ...


class RoundFacts(Protocol):
    @property
    def intake(self) -> _IntakeFacts | None: ...
    @property
    def relabel(self) -> _RelabelFacts | None: ...
    @property
    def audit(self) -> _AuditFacts | None: ...


def stopping(stop: StopConfig, last: RoundFacts, review_policy: str = "custom") -> tuple[bool, list[str], list[str]]:
    """Is the dataset done? (done, the criteria that hold, why each other one does not), from
    the last round's record and params.stop. Any one criterion is enough. Each rests on evidence
    a round that asked nothing cannot fake: the human-label count, an audit bound, or low churn
    together with few uncertain auto labels. When every image has a human label (no auto label
    left), it is done whatever the other criteria say: there is nothing left to check.

    The audit criterion is a decision ("is the accuracy at least stop.audit_lower_bound?"), so
    it uses the one-sided 95% Clopper-Pearson lower bound of the audit estimate (tasks/audit.py):
    P(accuracy >= bound) >= 95% whatever the accuracy and n, where Wilson's interval, used
    before, held only ~83% of the time at small n and accuracies near 1. With
    ``round.review_policy: critical`` every auto label goes to review, so neither the audit nor
    settled labels make it done: only no auto label left (or the label budget)."""
    met: list[str] = []
    unmet: list[str] = []
    humans = last.intake.human_labels if last.intake else 0
    if stop.max_labels is not None:
        (met if humans >= stop.max_labels else unmet).append(
            f"the human-label budget is {'spent' if humans >= stop.max_labels else 'not spent'} "
            f"({humans} {'>=' if humans >= stop.max_labels else '<'} stop.max_labels={stop.max_labels})")
    rl = last.relabel
    if rl is not None and rl.auto == 0 and rl.images:
        met.append("every image has a human label (review_policy critical: every auto label goes to review)"
                   if review_policy == "critical" else "every image has a human label: no auto label is left to check")
        return True, met, []
    if review_policy == "critical":
        left = rl.auto if rl else None
        if left == 0:  # no image at all
            unmet.append("review_policy critical: no image is labeled yet")
        else:
            unmet.append(f"review_policy critical: every auto label goes to review, and "
                         f"{'some' if left is None else left} are not reviewed yet")
        return bool(met), met, unmet
    if stop.churn_below is not None:
        _settled(stop, rl, met, unmet)
    if stop.audit_lower_bound is not None:
        _audited(stop, last.audit, met, unmet)
    return bool(met), met, unmet


def _settled(stop: StopConfig, rl: _RelabelFacts | None, met: list[str], unmet: list[str]) -> None:
    """stop.churn_below: few labels changed in the last round, and few auto labels are uncertain."""
    assert stop.churn_below is not None
    churn = rl.churn if rl else None
    share = rl.below_threshold / rl.auto if rl and rl.auto > 0 else 0.0
    if churn is None:
        unmet.append("labels have settled: not known yet (no earlier round to compare with)")
    elif churn < stop.churn_below and share <= stop.max_below_threshold:
        met.append(f"labels have settled: {churn:.2%} changed in the last round (< stop.churn_below="
                   f"{stop.churn_below:.2%}) and {share:.1%} of auto labels are below the threshold "
                   f"(<= stop.max_below_threshold={stop.max_below_threshold:.0%})")
    else:
        assert rl is not None, "churn is known only from a relabel result"
        why = [f"{churn:.2%} changed in the last round (stop.churn_below={stop.churn_below:.2%})"] \
            if churn >= stop.churn_below else []
        if share > stop.max_below_threshold:
            why.append(f"{share:.1%} of auto labels ({rl.below_threshold}) are below the threshold "
                       f"(stop.max_below_threshold={stop.max_below_threshold:.0%})")
        unmet.append("labels have not settled: " + " and ".join(why))


def _audited(stop: StopConfig, audit: _AuditFacts | None, met: list[str], unmet: list[str]) -> None:
    """stop.audit_lower_bound: the audit's one-sided 95% lower bound reaches it."""
    assert stop.audit_lower_bound is not None
    au = audit if audit and audit.n else None
    bound = au.lower_bound if au else None
    if au is not None and bound is not None and bound >= stop.audit_lower_bound:
        met.append(f"audited auto-label accuracy is at least {bound:.2%} with 95% confidence "
                   f"(>= stop.audit_lower_bound={stop.audit_lower_bound:.0%}; {au.describe()})")
    else:
        unmet.append(f"audited accuracy is not shown to be >= {stop.audit_lower_bound:.0%}: " + (
            f"its one-sided 95% lower bound is {bound:.2%} ({au.describe()}; answer more audit items)"
            if au else "no answered audit items yet"))


def _stat(path) -> list[int] | None:
    try:
        st = path.stat()
        return [st.st_size, st.st_mtime_ns, st.st_ino]
    except OSError:
        return None


def _cached(ws: Workspace, part: str, path, compute) -> Any:
    """``compute()``, derived from the file ``path``: read back from .coldstart/status.json while
    that file's size and mtime are those it was derived from, else computed and kept."""
    key = [__version__, CACHE_VERSION, _stat(path)]
    cache = ws.state_dir / CACHE
    try:
        kept = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        kept = {}
    if not isinstance(kept, dict):
        kept = {}
    entry = kept.get(part)
    if isinstance(entry, dict) and entry.get("key") == key:
        return entry["value"]
    value = compute()
    if _stat(path) == key[2]:  # unchanged while it was read
        try:
            cache.parent.mkdir(exist_ok=True)
            atomic_write_text(cache, json.dumps({**kept, part: {"key": key, "value": value}}, ensure_ascii=False) + "\n")
        except OSError:
            pass  # a read-only workspace: status is just slower
    return value


def _label_counts(ws: Workspace) -> dict[str, int]:
    """Images with a human label, and label events, from the label log (tasks.intake: Prefect)."""
    def compute():

        events = read_events(ws)
        return {"human_labels": len(human_labels(events)), "label_events": len(events)}

    return _cached(ws, "labels", ws.events, compute)


def _record_facts(ws: Workspace) -> dict[str, Any] | None:
    """What `status` needs of the newest round's record (data/metrics/round.json): a few intake,
    relabel and train figures as recorded, and the audit's estimate, interval, one-sided bound and
    wording (tasks.audit: Prefect, SciPy); None before the first round."""
    path = ws.metrics_dir / "round.json"

    def compute():
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        audit = None
        if data.get("audit"):

            au = AuditEstimate.from_dict(data["audit"])
            audit = {"round": au.round, "n": au.n, "accuracy": au.accuracy, "method": au.method,
                     "interval": list(au.interval) if au.n else None, "lower_bound": au.lower_bound,
                     "summary": au.describe() if au.n else None}
        def some(part: str, *names: str) -> dict | None:
            d = data.get(part)
            return {k: d.get(k) for k in names} if d else None

        return {"round": int(data["round"]), "intake": some("intake", "human_labels"),
                "relabel": some("relabel", "images", "auto", "churn", "below_threshold"),
                "train": some("train", "model", "probe_cv_accuracy"), "audit": audit}

    return _cached(ws, "record", path, compute)


def _light_record(facts: dict[str, Any]) -> SimpleNamespace:
    """The record's facts with the attributes ``stopping`` reads (as a ``RoundRecord``'s)."""
    def plain(d):
        return SimpleNamespace(**d) if d else None

    au = facts["audit"]
    audit = SimpleNamespace(**au, describe=lambda: au["summary"] or "no answered audit items yet") if au else None
    return SimpleNamespace(round=facts["round"], intake=plain(facts["intake"]), relabel=plain(facts["relabel"]),
                           train=plain(facts["train"]), audit=audit)


def _image_counts(ws: Workspace) -> tuple[int, int]:
    """(distinct images, files) of the current manifest."""
    ids = read_manifest_table(ws, ["image_id"]).column("image_id")
    return len(set(ids.to_pylist())), len(ids)


def workspace_status(ws: Workspace) -> dict:
    tags = ws.round_tags()
    pending = sorted(p.name for p in ws.inbox.glob("*") if p.is_file() and not p.name.startswith(".")) if ws.inbox.is_dir() else []
    rejected = sorted(p.name for p in ws.rejected.glob("*") if p.is_file() and not p.name.endswith(".errors.txt")) \
        if ws.rejected.is_dir() else []
    params = ws.params()
    facts = _record_facts(ws)
    last = _light_record(facts) if facts else None
    done, why, why_not = stopping(params.stop, last, params.round.review_policy) if last else (False, [], [])
    audit = last.audit if last else None
    answered = audit if audit is not None and audit.n else None  # an audit with answered items
    labels = _label_counts(ws)
    images, files = _image_counts(ws)
    report = ws.root / "data" / "reports" / f"round-{tags[-1]:03d}.html" if tags else None
    return {
        "workspace": str(ws.root),
        "done": done,
        "done_reasons": why,
        "not_done_reasons": why_not,
        # The estimate of `audit_round`'s auto labels, its 95% Clopper-Pearson interval, the
        # one-sided 95% lower bound the stopping rule uses, and how many audit items it rests on.
        "last_audit": {"audit_round": audit.round if audit else None, "audit_n": audit.n if audit else 0,
                       "audit_accuracy": audit.accuracy if audit else None,
                       "audit_interval": answered.interval if answered is not None else None,
                       "audit_lower_bound": answered.lower_bound if answered is not None else None,
                       "audit_method": answered.method if answered is not None else None,
                       "audit_summary": answered.summary if answered is not None else None},
        "review_policy": params.round.review_policy,
        "report": ws.rel(report) if report is not None and report.is_file() else None,
        "last_churn": last.relabel.churn if last and last.relabel else None,
        "images": images,
        "files": files,
        "quarantined": len(read_csv(ws.quarantine)),
        "human_labels": labels["human_labels"],
        "label_events": labels["label_events"],
        "rounds": len(tags),
        "last_round": tags[-1] if tags else None,
        "auto_labeled": last.relabel.auto if last and last.relabel else 0,
        "model": last.train.model if last and last.train else None,
        "probe_cv_accuracy": last.train.probe_cv_accuracy if last and last.train else None,
        "inbox_pending": pending,
        "inbox_rejected": rejected,
        "last_check": _last_check(ws, tags[-1] if tags else None),
        "proposals": _proposals(ws),
    }


def _proposals(ws: Workspace) -> dict | None:
    """The classes the latest discover stage proposed: {"round", "count"} (read as plain JSON:
    status stays light), or None before any."""
    try:
        body = json.loads(ws.proposals.read_text(encoding="utf-8"))
        return {"round": int(body["round"]), "count": len(body["proposals"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _last_check(ws: Workspace, last_round: int | None) -> dict | None:
    """The newest round attempt that found nothing new since the last round, if any."""
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
    audit = s.get("last_audit") or {}
    if s["rounds"] and not s["auto_labeled"] and s["images"]:
        lines.append("audit         no auto labels to audit: every image has a human label")
    elif audit.get("audit_summary"):
        lines.append(f"audit         round {audit['audit_round']}'s auto labels: {audit['audit_summary']}; at least "
                     f"{audit['audit_lower_bound']:.1%} with 95% confidence ({GATE_NOTE})")
    elif s["rounds"]:
        lines.append("audit         no answered audit items yet")
    if s.get("report"):
        lines.append(f"report        {s['report']}")
    if (proposed := s.get("proposals")) and proposed["count"]:
        lines.append(f"proposals     round {proposed['round']} proposed {proposed['count']} class(es) from images unlike "
                     f"every class: {command('coldstart')} discover -w {_quote(s['workspace'])}")
    if s["done"]:
        lines.append("DONE          " + "; ".join(s["done_reasons"]))
    elif s["rounds"]:

        run = f"{command('coldstart')} round -w {_quote(s['workspace'])}"
        lines.append("not done yet  (any one criterion in params.yaml `stop:` is enough) - " + (
            f"answers wait in data/inbox/: run a round: {run}" if s["inbox_pending"] else
            f"answer the review batch (data/review/), drop the answers into data/inbox/ and run a round: {run}"))
        for reason in s.get("not_done_reasons") or []:
            lines.append("  not met     " + reason)
    if s.get("last_check"):
        lines.append(f"last check    {s['last_check']['checked_at']}: nothing new since round {s['last_round']} "
                     f"(no images, answers or params changes), so no round was made")
    if s["inbox_pending"]:
        lines.append(f"inbox         {len(s['inbox_pending'])} file(s) waiting for the next round: {', '.join(s['inbox_pending'])}")
    if s["inbox_rejected"]:
        lines.append(f"rejected      {', '.join(s['inbox_rejected'])} "
                     "(in data/inbox/rejected/: NAME.errors.txt says why a file was rejected; NAME.rows.csv "
                     "holds rows set aside, with a reason column: fix them and drop that file into data/inbox/)")
    return "\n".join(lines)


def _quote(path: str) -> str:
    import shlex

    return shlex.quote(path)


def cmd_status(a) -> int:
    """`coldstart status`: the summary on the terminal, and as JSON where --json says."""
    s = workspace_status(Workspace.open(a.workspace))
    print(format_status(s), file=sys.stderr if a.json == "-" else sys.stdout)  # stdout: the JSON
    write_json(a.json, s)
    return 0

