"""End to end: people answer "none of these", a round proposes the class nobody wrote down,
`coldstart discover --adopt` makes it a class, and the next rounds label it with no answer lost."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from coldstart.flows.cli import main as cli
from coldstart.flows.round import labeling_round
from coldstart.tasks.demodata import answer_batch, write_digits
from coldstart.tasks.discover import read_proposals
from coldstart.tasks.labellog import read_events
from coldstart.tasks.relabel import read_resolved
from coldstart.tasks.version import init_workspace
from coldstart.tasks.workspace import read_csv
from tests.conftest import answered_digits, tiny_params, write_image

NOISE = 16


def _answer(ws, rec, truth):
    return answer_batch(ws.root / rec.select.files[0], truth, ws.inbox)


@pytest.fixture(scope="module")
def story(prefect_harness, tmp_path_factory):
    """40 digits and 16 noise images no class describes; the annotator answers noise 'unknown'
    (one of them 'new:static'). Rounds 1-3, then adopt the noise proposal, then rounds 4-5."""
    tmp = tmp_path_factory.mktemp("discover")
    text = tiny_params(12).replace("train:\n", "train:\n  model: probe\n") + "discover:\n  min_size: 4\n"
    ws = init_workspace(tmp / "ws", params_text=text)
    truth = write_digits(ws.images, n=40, size=32)
    noise = [f"other/noise-{k:02d}.png" for k in range(NOISE)]
    for k, rel in enumerate(noise):
        write_image(ws.images / rel, seed=100 + k, size=(32, 32))
        truth[rel] = "new:static" if k == 0 else "unknown"
    records = []
    for _ in range(3):
        rec = labeling_round(workspace=str(ws.root))
        records.append(rec)
        _answer(ws, rec, truth)
    proposals_round, proposals = read_proposals(ws)
    before_adopt = ws.events.read_bytes()
    return SimpleNamespace(ws=ws, truth=truth, noise=set(noise), records=records, proposals=proposals,
                           proposals_round=proposals_round, before_adopt=before_adopt, tmp=tmp)


def _noise_share(story, p) -> float:
    paths = {r["image_id"]: r["path"] for r in read_resolved(story.ws)}
    return sum(paths[i] in story.noise for i in p.members) / p.size


def test_none_of_these_is_an_answer_a_label_and_a_choice(story):
    ws = story.ws
    labels = {e.label for e in read_events(ws)}
    assert "unknown" in labels and "new:static" in labels
    assert '<Choice value="unknown"' in (ws.review / "label_config.xml").read_text(encoding="utf-8")
    # The probe learned the answer as an outcome: some noise image without an answer is labeled unknown.
    rows = [r for r in read_resolved(ws) if r["path"] in story.noise]
    assert any(r["label"] == "unknown" and r["source"] == "human" for r in rows)
    assert any(r["label"] == "unknown" and r["source"] != "human" for r in rows)
    # ... and no digit class is given to an image a person answered 'none of these'.
    assert all(r["label"] == "unknown" for r in rows if r["source"] == "human")


def test_a_round_proposes_the_unnamed_kind_with_thumbnails(story, capsys):
    assert story.proposals_round == 3 and story.proposals
    best = max(story.proposals, key=lambda p: _noise_share(story, p))
    assert _noise_share(story, best) >= 0.8 and best.unknown_answers >= 2
    assert story.records[-1].discover.proposals == len(story.proposals)
    assert f"{len(story.proposals)} class(es) proposed" in story.records[-1].describe()  # the round's summary
    assert story.proposals[0].proposed_names.get("static", 0) in (0, 1)
    html = (story.ws.root / "data" / "reports" / "round-003.html").read_text(encoding="utf-8")
    section = html[html.index('id="proposals"'):html.index('id="labels"')]
    assert f"Proposal {best.id}: {best.size} images" in section and section.count("<img") >= 2
    assert "--adopt" in section
    assert cli(["discover", "-w", str(story.ws.root)]) == 0
    out = capsys.readouterr().out
    assert f"{best.id}. {best.size} images" in out and "--adopt" in out


@pytest.fixture(scope="module")
def adopted(story):
    """The noise proposal adopted as class `noise`, then rounds 4 and 5 with answers."""
    ws = story.ws
    best = max(story.proposals, key=lambda p: _noise_share(story, p))
    comment = ws.params_file.read_text(encoding="utf-8").splitlines()[0]
    before = ws.params_file.read_bytes()
    assert cli(["discover", "-w", str(ws.root), "--adopt", str(best.id), "--name", "noise"]) == 2  # no description
    assert cli(["discover", "-w", str(ws.root), "--adopt", "9", "--name", "noise", "--description", "x"]) == 2
    assert ws.params_file.read_bytes() == before and not ws.reask.exists()  # a refused change writes nothing
    assert cli(["discover", "-w", str(ws.root), "--adopt", str(best.id), "--name", "noise",
                "--description", "coloured static noise"]) == 0
    truth = {k: ("noise" if k in story.noise else v) for k, v in story.truth.items()}  # asked again: it is noise
    rec4 = labeling_round(workspace=str(ws.root))
    batch4 = read_csv(ws.root / rec4.select.files[1])
    resolved4 = {r["image_id"]: r for r in read_resolved(ws)}
    _answer(ws, rec4, truth)
    rec5 = labeling_round(workspace=str(ws.root))
    return SimpleNamespace(best=best, comment=comment, rec4=rec4, batch4=batch4, resolved4=resolved4, rec5=rec5,
                           truth=truth)


def test_adopting_adds_the_class_keeps_params_comments_and_every_answer(story, adopted):
    ws = story.ws
    text = ws.params_file.read_text(encoding="utf-8")
    assert text.splitlines()[0] == adopted.comment  # the file's comments survive the edit
    assert "noise:" in text and "coloured static noise" in text
    assert ws.params().ontology.labels[-2:] == ["noise", "unknown"]
    # The log only grew: every answer given before adopting is still there, byte for byte.
    assert ws.events.read_bytes().startswith(story.before_adopt)
    reask = read_csv(ws.reask)
    assert reask and {r["suggested_label"] for r in reask} == {"noise"}
    assert {r["answer"] for r in reask} <= {"unknown", "new:static"}
    assert set(r["image_id"] for r in reask) <= set(adopted.best.members)


def test_the_next_batch_asks_the_unknown_answers_again_and_the_round_after_labels_the_class(story, adopted):
    ws = story.ws
    reasked = {r["image_id"] for r in read_csv(ws.reask)}
    again = [b for b in adopted.batch4 if b["image_id"] in reasked]
    assert again and all(b["purpose"] == "recheck" and b["predicted_label"] == "noise" for b in again)
    assert all("asked again" in b["note"] for b in again)
    assert adopted.rec4.select.reasked == len(again)
    # Until answered again, such an image keeps its answer as its label: never a written class.
    assert all((adopted.resolved4[i]["label"], adopted.resolved4[i]["source"]) == ("unknown", "human")
               for i in reasked)
    assert f"{len(again)} 'none of these' answer(s) asked again" in adopted.rec4.describe()
    rows = {r["image_id"]: r for r in read_resolved(ws)}
    assert all(rows[i]["label"] == "noise" and rows[i]["source"] == "human" for i in (b["image_id"] for b in again))
    # Round 5 labels the new class on images nobody answered.
    auto_noise = [r for r in rows.values() if r["source"] != "human" and r["label"] == "noise"]
    assert auto_noise and all(r["path"] in story.noise for r in auto_noise)
    # The digits people labeled keep their labels.
    digits = [r for r in rows.values() if r["source"] == "human" and r["path"] not in story.noise]
    assert digits and all(r["label"] == story.truth[r["path"]] for r in digits)
    record = json.loads((ws.metrics_dir / "round.json").read_text(encoding="utf-8"))
    assert record["round"] == 5 and "discover" in record


def test_removing_a_class_keeps_its_answers_and_says_so(story, adopted, capsys):
    ws = story.ws
    n_events = len(read_events(ws))
    assert cli(["discover", "-w", str(ws.root), "--remove", "noise"]) == 0
    assert "noise" not in ws.params().ontology.classes and len(read_events(ws)) == n_events
    assert cli(["discover", "-w", str(ws.root)]) == 0
    assert "'noise' (" in capsys.readouterr().out  # listed as answers whose class is gone
    before = ws.params_file.read_bytes()
    assert cli(["discover", "-w", str(ws.root), "--adopt", "1", "--name", "noise"]) == 2  # a new class again
    err = capsys.readouterr().err
    assert ("--description" in err or "proposed no class" in err) and ws.params_file.read_bytes() == before


def test_renaming_a_class_restates_its_answers_and_keeps_the_old_ones(make_workspace, capsys):
    from coldstart.tasks.labellog import human_labels

    ws = make_workspace()
    truth = answered_digits(ws)
    before = ws.events.read_bytes()
    assert cli(["discover", "-w", str(ws.root), "--rename", "zero", "--name", "nought"]) == 0
    assert "1 answer(s) restated as 'nought'" in capsys.readouterr().out
    onto = ws.params().ontology
    assert "zero" not in onto.classes and list(onto.classes)[0] == "nought"  # same place, same descriptions
    assert onto.classes["nought"].descriptions[0] == "the digit zero"
    assert ws.events.read_bytes().startswith(before)  # the old answers stay; one more event restates it
    labels = human_labels(read_events(ws))
    assert sorted(labels.values()) == sorted("nought" if t == "zero" else t for t in truth.values())
    assert cli(["discover", "-w", str(ws.root), "--rename", "zero", "--name", "x"]) == 2  # no such class now
    assert cli(["discover", "-w", str(ws.root), "--rename", "one", "--name", "two"]) == 2  # taken
    assert "already a class" in capsys.readouterr().err
