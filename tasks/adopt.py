"""Changing the ontology without losing an answer: adopt a proposed class, rename or remove one.

params.yaml is edited in place (its comments and layout kept: ruamel.yaml's round trip), and only
when the result validates. The label log is append-only: nothing here deletes an answer.

- Adopting proposal N as class NAME adds NAME with its descriptions (or, NAME being a class
  already, adds the proposal's images to it). The "none of these" answers among the proposal's
  members are asked again (data/labels/reask.csv, suggested NAME): until then they train nothing.
  Answers ``new:NAME`` count as NAME from now on, wherever they are.
- Renaming OLD to NEW renames the key and appends, for each current answer OLD, the same answer
  as NEW (source ``rename:OLD->NEW``): the log keeps both.
- Removing a class leaves its answers in the log; they count as "none of these" and are listed
  (``Answers.orphaned``: the train stage warns, the report and `coldstart discover` show them).
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coldstart.models.errors import ConfigError
from coldstart.tasks.config import UNKNOWN_LABEL, load_params, parse_params
from coldstart.tasks.discover import Proposal, read_proposals
from coldstart.tasks.labellog import LabelEvent, append_events, current_answers, event_key, read_events
from coldstart.tasks.ontology import proposed_name
from coldstart.tasks.workspace import Workspace, atomic_write_text, read_csv, write_csv

REASK_FIELDS = ["image_id", "region_id", "answer", "answer_event", "suggested_label", "proposal", "proposed_in_round",
                "adopted_at"]  # region_id: empty for an image's answer


def _yaml() -> Any:
    from ruamel.yaml import YAML  # DVC's own YAML library: round trips keep comments

    y = YAML()
    y.preserve_quotes = True
    y.width = 4096
    return y


def edit_params(path: Path, change) -> None:
    """Apply ``change(raw mapping)`` to params.yaml, keeping its comments; write it only if the
    result validates (the error names the key otherwise)."""
    y = _yaml()
    raw = y.load(path.read_text(encoding="utf-8"))
    change(raw)
    buf = io.StringIO()
    y.dump(raw, buf)
    parse_params(_plain(raw), str(path))  # the edited file must load: refuse before writing
    atomic_write_text(path, buf.getvalue())


def _plain(value: Any) -> Any:
    """ruamel's commented containers as plain dicts and lists (for validation)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _classes(raw: Any) -> Any:
    try:
        return raw["ontology"]["classes"]
    except (KeyError, TypeError):
        raise ConfigError("params.yaml has no ontology.classes mapping to edit") from None


@dataclass
class Adopted:
    name: str
    new_class: bool  # False: the proposal's images joined an existing class
    reasked: int  # "none of these" answers among its members, asked again next round
    proposed_answers: int  # new:NAME answers that now count as NAME
    members: int


def adopt(ws: Workspace, number: int, name: str, descriptions: list[str]) -> Adopted:
    """Adopt proposal ``number`` of data/labels/proposals.json as class ``name`` (see the module
    docstring). Call with the workspace lock held."""
    proposed_in, found = read_proposals(ws)
    if not found:
        when = f"round {proposed_in} proposed no class" if proposed_in else "no class proposed yet"
        raise ConfigError(f"{when}: a round proposes classes once some images look unlike every class (answered "
                          f"'unknown', or labeled so); see `coldstart discover`")
    if not 1 <= number <= len(found):
        raise ConfigError(f"there is no proposal {number}; round {proposed_in} proposed {len(found)} "
                          f"(1-{len(found)}): see `coldstart discover`")
    name = name.strip()
    if not name or name.casefold() == UNKNOWN_LABEL or proposed_name(name) is not None:
        raise ConfigError(f"--name {name!r}: give the new class's name (not 'unknown' nor 'new:...')")
    onto = load_params(ws.params_file).ontology
    exists = name in onto.classes
    if not exists and not descriptions:
        raise ConfigError(f"--description: say in words what a {name!r} image shows (CLIP reads it), e.g. "
                          f"--description \"a photo of a {name}\"")

    edit_params(ws.params_file, lambda raw: _with_descriptions(_classes(raw), name, descriptions))
    answers = current_answers(read_events(ws))
    chosen = found[number - 1]
    reasked = _ask_again(ws, chosen, answers, name, proposed_in)
    named = sum(1 for (_, region), e in answers.items() if not region and proposed_name(e.label) == name)
    return Adopted(name, not exists, reasked, named, len(chosen.members))


def _with_descriptions(classes: Any, name: str, descriptions: list[str]) -> None:
    """Add class ``name`` to params.yaml's ``classes`` mapping, or add the descriptions it lacks."""
    if name not in classes:
        classes[name] = list(descriptions)
        return
    spec = classes[name]
    have = spec if isinstance(spec, list) else spec.get("descriptions", []) if isinstance(spec, dict) else [spec]
    extra = [d for d in descriptions if d not in have]
    if extra and isinstance(spec, list):
        spec.extend(extra)
    elif extra and isinstance(spec, dict):
        spec["descriptions"] = list(have) + extra
    elif extra:
        classes[name] = [spec, *extra]


def _ask_again(ws: Workspace, chosen: Proposal, answers: dict[tuple[str, str], LabelEvent], name: str,
               proposed_in: int) -> int:
    """Write to reask.csv the "none of these" answers (and other classes' ``new:`` ones) among
    the proposal's members, images or regions, with ``name`` suggested; returns how many."""
    members, by_region = set(chosen.members), chosen.kind == "regions"
    rows = {(r["image_id"], r.get("region_id", "")): r for r in read_csv(ws.reask)}
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    reasked = 0
    for (image_id, region), e in answers.items():
        if (region if by_region else image_id) not in members or bool(region) != by_region:
            continue
        if e.label == UNKNOWN_LABEL or (proposed_name(e.label) not in (None, name)):
            rows[(image_id, region)] = dict(image_id=image_id, region_id=region, answer=e.label,
                                            answer_event=event_key(e), suggested_label=name, proposal=chosen.id,
                                            proposed_in_round=proposed_in, adopted_at=now)
            reasked += 1
    write_csv(ws.reask, REASK_FIELDS, rows.values())
    return reasked


def rename_class(ws: Workspace, old: str, new: str, round_no: int) -> int:
    """Rename class ``old`` to ``new`` in params.yaml and restate each current answer ``old`` as
    ``new`` in the log (the old events stay). Returns how many answers were restated. Call with
    the workspace lock held."""
    new = new.strip()
    onto = load_params(ws.params_file).ontology
    if old not in onto.classes:
        raise ConfigError(f"--rename {old!r}: params.yaml has no such class (classes: {', '.join(onto.classes)})")
    if new in onto.classes:
        raise ConfigError(f"--name {new!r}: already a class; to merge two classes, remove one with --remove")

    def change(raw: Any) -> None:
        classes = _classes(raw)
        keys = list(classes)
        classes.insert(keys.index(old), new, classes.pop(old))  # same place in the file

    edit_params(ws.params_file, change)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    source = f"rename:{old}->{new}"
    events = [LabelEvent(image_id=e.image_id, label=new, annotator=e.annotator, source_file=source,
                         source_sha256=e.source_sha256, source_row=k, imported_at=now, round=round_no,
                         region_id=e.region_id, region=e.region)
              for k, e in enumerate(e for e in current_answers(read_events(ws)).values() if e.label == old)]
    if events:
        append_events(ws, events)
    return len(events)


def remove_class(ws: Workspace, name: str) -> int:
    """Remove class ``name`` from params.yaml; its answers stay in the log and count as "none of
    these" from now on. Returns how many current answers it had. Call with the workspace lock held."""
    onto = load_params(ws.params_file).ontology
    if name not in onto.classes:
        raise ConfigError(f"--remove {name!r}: params.yaml has no such class (classes: {', '.join(onto.classes)})")
    edit_params(ws.params_file, lambda raw: _classes(raw).pop(name))
    return sum(1 for e in current_answers(read_events(ws)).values() if e.label == name)
