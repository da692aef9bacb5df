"""The label-event log, data/labels/events.jsonl: the one thing coldstart cannot recompute.

Append-only JSON lines, one human answer (or retraction, or skip) each, with its provenance;
the latest answer for an image, or a region, wins. Every stage that needs people's answers
reads them here; only intake (and the API's webhook, through intake) appends.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from coldstart.tasks.errors import LabelLogError
from coldstart.tasks.workspace import Workspace, atomic_write_bytes

log = logging.getLogger(__name__)

LABEL_STUDIO_SOURCE = "label-studio:"  # the source_file prefix of answers that came from Label Studio


@dataclass
class LabelEvent:
    """One human answer, one line of data/labels/events.jsonl (append-only; the latest answer for
    an image, or a region, wins). ``region_id`` empty: the answer labels the whole image. Set: it
    labels that region of the image (the regions table's id); ``region`` then carries the
    outline as COCO RLE ``{"size": [H, W], "counts": str}`` when the person drew it (a Label
    Studio polygon no proposed region matches), else None (the table has the mask)."""

    image_id: str
    label: str
    annotator: str
    source_file: str
    source_sha256: str
    source_row: int
    imported_at: str
    round: int
    region_id: str = ""
    region: dict | None = None
    # "" an answer; "retract": the answers from ``source_file`` (one Label Studio annotation,
    # deleted) no longer count, for every image and region they named; "skip": the annotation
    # was cancelled (skipped): recorded, not a label, and it retracts that annotation's answers.
    kind: str = ""


def read_events(ws: Workspace) -> list[LabelEvent]:
    """Every event in the log, oldest first. A torn last line (a crash or a full disk mid-append
    elsewhere) is left out with a warning; the next intake sets it aside (see repair_log)."""
    if not ws.events.is_file():
        return []
    complete, torn = _split_torn(ws.events.read_bytes())
    if torn:
        log.warning("%s ends with a torn line (%d bytes) that is not an event; it is left out, and the next intake "
                    "saves it aside", ws.rel(ws.events), len(torn))
    events = []
    for n, line in enumerate(complete.split(b"\n"), start=1):
        if line.strip():
            try:
                events.append(LabelEvent(**json.loads(line)))
            except (ValueError, TypeError) as e:
                raise LabelLogError(f"{ws.rel(ws.events)} line {n} is not a label event ({str(e)[:200]}); restore "
                                    f"the file from git/DVC or delete that line") from None
    return events


def _split_torn(data: bytes) -> tuple[bytes, bytes]:
    """The log's bytes -> (complete lines, each ending in a newline; a torn last line or b"")."""
    if not data or data.endswith(b"\n"):
        return data, b""
    cut = data.rfind(b"\n") + 1
    try:  # the last event written whole, only its newline missing: keep it
        LabelEvent(**json.loads(data[cut:]))
        return data + b"\n", b""
    except (ValueError, TypeError):
        return data[:cut], data[cut:]


def repair_log(ws: Workspace) -> Path | None:
    """Cut a torn last line off the event log, saving its bytes to
    ``.coldstart/torn/events.jsonl.torn-<UTC time>`` (returned). Call with the workspace lock held."""
    if not ws.events.is_file():
        return None
    complete, torn = _split_torn(ws.events.read_bytes())
    if not torn:
        return None
    aside = ws.state_dir / "torn" / f"events.jsonl.torn-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S%fZ}"
    atomic_write_bytes(aside, torn)
    atomic_write_bytes(ws.events, complete)
    log.warning("%s ended with a torn line (a crash or a full disk mid-write); the complete events are kept and the "
                "%d torn bytes were saved to %s", ws.rel(ws.events), len(torn), ws.rel(aside))
    return aside


def current_answers(events: list[LabelEvent]) -> dict[tuple[str, str], LabelEvent]:
    """(image id, region id or "") -> the answer that counts: the latest one whose source was
    not retracted since. A retraction (a Label Studio annotation deleted, or cancelled) removes
    that source's answers, so an earlier answer from another source counts again."""
    stacks: dict[tuple[str, str], list[LabelEvent]] = {}
    keys_of: dict[str, set[tuple[str, str]]] = {}
    for e in events:
        if e.kind in ("retract", "skip"):
            for key in keys_of.pop(e.source_file, ()):
                stacks[key] = [x for x in stacks.get(key, []) if x.source_file != e.source_file]
            continue
        key = (e.image_id, e.region_id)
        stacks.setdefault(key, []).append(e)
        keys_of.setdefault(e.source_file, set()).add(key)
    return {key: stack[-1] for key, stack in stacks.items() if stack}


def event_key(e: LabelEvent) -> str:
    """Which answer an event is (its source, row and time): a re-ask (data/labels/reask.csv)
    waits while the image's current answer is still this one."""
    return f"{e.source_file}#{e.source_row}@{e.imported_at}"


def human_labels(events: list[LabelEvent]) -> dict[str, str]:
    """image id -> current human label of the whole image (the latest answer wins: a later file
    corrects an earlier; a retracted one no longer counts). Region answers are not image labels
    (see region_answers)."""
    return {image_id: e.label for (image_id, region), e in current_answers(events).items() if not region}


def region_answers(events: list[LabelEvent]) -> dict[str, LabelEvent]:
    """region id -> the current human answer for that region (with its image id, and the drawn
    outline for a region a person added)."""
    return {region: e for (_, region), e in current_answers(events).items() if region}


def append_events(ws: Workspace, events: list[LabelEvent]) -> None:
    # Whole-file atomic replace: the log is small text, and old-or-new beats a torn last line.
    old, _ = _split_torn(ws.events.read_bytes() if ws.events.is_file() else b"")  # repair_log ran first
    new = "".join(json.dumps(event_fields(e), ensure_ascii=False) + "\n" for e in events).encode("utf-8")
    atomic_write_bytes(ws.events, old + new)


def event_fields(e: LabelEvent) -> dict:
    """An event as its log line's fields: an image's answer has no region keys (its line reads
    as it did before regions existed)."""
    return {k: v for k, v in e.__dict__.items() if v or k not in ("region_id", "region", "kind")}


def describe_answers(counts: dict[str, int]) -> str:
    """``round_answers`` as a person reads it: "7 answer(s) this round (5 from files, 2 from Label Studio)"."""
    where = ", ".join(f"{n} from {'Label Studio' if k == 'label-studio' else k}" for k, n in sorted(counts.items()))
    return f"{sum(counts.values())} answer(s) this round" + (f" ({where})" if where else "")


def round_answers(events: list[LabelEvent], round_no: int) -> dict[str, int]:
    """This round's answers by where they came from (``files`` dropped into data/inbox/,
    ``label-studio`` annotations from the webhook or ``round --wait``'s export polling): each
    image (or region) whose answer that counts now came in round ``round_no``, whoever took it in
    (this intake, the API between rounds, or an attempt at this round killed before its tag).
    An answer corrected twice counts once; one deleted again does not count."""
    counts: dict[str, int] = {}
    for e in current_answers(events).values():
        if e.round == round_no:
            where = "label-studio" if e.source_file.startswith(LABEL_STUDIO_SOURCE) else "files"
            counts[where] = counts.get(where, 0) + 1
    return counts


def annotation_source(annotation_id: object) -> str:
    """The ``source_file`` of every event one Label Studio annotation gives: a later update or a
    deletion of that annotation retracts them all (``current_answers``)."""
    return f"{LABEL_STUDIO_SOURCE}annotation/{annotation_id}"
