"""Facts derived from the ontology (params.yaml ``ontology``) that several stages share, and how
a person's answer maps onto today's labels."""

from __future__ import annotations

from collections import Counter
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from coldstart.tasks.config import NEW_CLASS_PREFIX, UNKNOWN_ANSWERS, UNKNOWN_LABEL, OntologyConfig


def negative_labels(ontology: OntologyConfig) -> set[str]:
    """The labels a region is dropped for: ``negative_label`` when some class is negative."""
    return {ontology.negative_label} if any(spec.negative for spec in ontology.classes.values()) else set()


def unknown_answer(cell: str) -> str | None:
    """The stored form of a "none of these" answer (``UNKNOWN_LABEL``, or ``new:<name>`` with the
    proposed name trimmed), or None when ``cell`` is not one. Matched without regard to case."""
    folded = cell.strip().casefold()
    if folded in UNKNOWN_ANSWERS:
        return UNKNOWN_LABEL
    if folded.startswith(NEW_CLASS_PREFIX):
        name = cell.strip()[len(NEW_CLASS_PREFIX):].strip()
        return f"{NEW_CLASS_PREFIX}{name}" if name else None
    return None


def proposed_name(label: str) -> str | None:
    """``new:<name>`` -> ``<name>``; any other answer -> None."""
    return label[len(NEW_CLASS_PREFIX):] if label.startswith(NEW_CLASS_PREFIX) else None


@dataclass
class Answers:
    """People's current answers mapped onto today's labels (``OntologyConfig.labels``).

    ``labels``: image id -> a label of the label space. An answer ``new:<name>`` counts as the
    class ``<name>`` once the ontology has it, else as "none of these". An answer naming a class
    the ontology no longer has (removed, or renamed by hand) also counts as "none of these" (the
    image fits no written class any more); it stays in the log as given and is listed in
    ``orphaned`` (label -> images), which the train stage warns about and the report shows.
    ``pending``: images whose "none of these" answer waits to be asked again after a class was
    adopted (data/labels/reask.csv): they train nothing until answered again.
    """

    labels: dict[str, str]
    orphaned: Counter = field(default_factory=Counter)
    proposed: Counter = field(default_factory=Counter)  # new:<name> answers not yet a class: name -> images

    @property
    def unknown(self) -> list[str]:
        return [i for i, label in self.labels.items() if label == UNKNOWN_LABEL]


def map_answers(raw: dict[str, str], labels: list[str], pending: AbstractSet[str] = frozenset()) -> Answers:
    """``raw`` (image id -> the answer as logged) onto ``labels`` (see ``Answers``)."""
    known = set(labels)
    out: dict[str, str] = {}
    orphaned: Counter[str] = Counter()
    proposed: Counter[str] = Counter()
    for image_id, label in raw.items():
        name = proposed_name(label)
        if label in known and label != UNKNOWN_LABEL:
            out[image_id] = label
        elif name is not None and name in known:
            out[image_id] = name
        else:
            if name is not None:
                proposed[name] += 1
            elif label != UNKNOWN_LABEL:
                orphaned[label] += 1
            if image_id not in pending:
                out[image_id] = UNKNOWN_LABEL
    return Answers(out, orphaned, proposed)


def orphan_note(orphaned: Counter) -> str:
    """A warning naming the answers whose class the ontology no longer has, or ""."""
    if not orphaned:
        return ""
    listed = ", ".join(f"{label!r} ({n} images)" for label, n in orphaned.most_common())
    return (f"answers for classes params.yaml no longer has count as 'none of these': {listed}; they are kept in "
            f"data/labels/events.jsonl. Put the class back to use them again, or rename it with "
            f"`coldstart discover --rename OLD --name NEW`")
