"""The label-event log's reading of people's answers (tasks/labellog.py)."""

from __future__ import annotations

from coldstart.tasks.labellog import LabelEvent, annotation_source, describe_answers, human_labels, round_answers


def _event(image, label, source, round_no, kind="", row=1):
    return LabelEvent(image_id=image, label=label, annotator="a@x", source_file=source, source_sha256=source * 2,
                      source_row=row, imported_at="2026-12-07T00:00:00+00:00", round=round_no, kind=kind)


def test_a_round_counts_each_answer_that_counts_once_by_source():
    ls7, ls8 = annotation_source(7), annotation_source(8)
    events = [
        _event("a", "cat", "data/inbox/r1.csv", 1),  # an earlier round's answer
        _event("b", "cat", "data/inbox/r2.csv", 2),
        _event("c", "", ls7, 2, kind="retract"), _event("c", "dog", ls7, 2),  # answered in Label Studio
        _event("c", "", ls7, 2, kind="retract"), _event("c", "cat", ls7, 2),  # ... then corrected: once
        _event("d", "dog", ls8, 2), _event("d", "", ls8, 2, kind="retract"),  # answered, then deleted: none
        _event("a", "dog", "data/inbox/r2.csv", 2, row=2),  # an image answered again this round
    ]
    assert round_answers(events, 2) == {"files": 2, "label-studio": 1}
    assert round_answers(events, 1) == {}  # round 1's answer to "a" no longer counts: round 2's does
    assert human_labels(events) == {"a": "dog", "b": "cat", "c": "cat"}
    assert describe_answers(round_answers(events, 2)) == "3 answer(s) this round (2 from files, 1 from Label Studio)"
    assert describe_answers({}) == "0 answer(s) this round"
