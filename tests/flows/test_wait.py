"""`coldstart round --wait` without a Label Studio server: the batch's answers are awaited as
files, taken in as they come, and the next round trains on them."""

from __future__ import annotations

import pytest

from coldstart.flows.demo import answer_batch, write_digits
from coldstart.flows.round import labeling_round
from coldstart.flows.wait import wait_for_answers
from coldstart.tasks.intake import human_labels, read_events
from coldstart.tasks.version import init_workspace
from tests.conftest import tiny_params

pytestmark = pytest.mark.slow


def test_waiting_takes_answers_in_as_they_come_then_the_next_round_learns(prefect_harness, tmp_path):
    import csv

    ws = init_workspace(tmp_path / "ws", params_text=tiny_params(4))
    truth = write_digits(ws.images, n=12, size=40)
    r1 = labeling_round(workspace=str(ws.root))
    batch = list(csv.DictReader(open(ws.review / "round-001.csv", encoding="utf-8")))
    polls = []

    def person_answers_half_then_the_rest(_seconds):  # what happens between two polls
        polls.append(len(polls))
        rows = batch[:2] if len(polls) == 1 else batch[2:]
        part = ws.review / f"part-{len(polls)}.csv"
        with open(part, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(batch[0]))
            w.writeheader()
            w.writerows(rows)
        answer_batch(part, truth, ws.inbox)
        part.unlink()

    waited = wait_for_answers(ws, 1, poll_s=0, sleep=person_answers_half_then_the_rest)
    assert (waited.asked, waited.wanted, waited.answered, waited.timed_out) == (r1.select.batch_size,) * 3 + (False,)
    assert len(polls) == 2  # two files, each taken in on its poll
    assert len(human_labels(read_events(ws))) == r1.select.batch_size
    assert all(e.round == 2 for e in read_events(ws))  # taken in for the round that follows
    r2 = labeling_round(workspace=str(ws.root))
    assert not r2.nothing_new and r2.train.n_labels == r1.select.batch_size
    assert r2.intake.events_added == 0  # already in the log: the round did not import them twice

    # Nobody answers: the wait ends at its timeout with what came.
    waited = wait_for_answers(ws, 2, poll_s=0, timeout_min=0.0005, sleep=lambda s: None)
    assert waited.timed_out and waited.answered == 0 and waited.asked == r2.select.batch_size
