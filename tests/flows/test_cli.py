"""The command line as a user meets it: clear errors, exit codes, no tracebacks for mistakes."""

from __future__ import annotations

import argparse
import json
import threading

import pytest

from coldstart.flows.cli import main as cli
from coldstart.tasks.errors import WorkspaceError
from coldstart.tasks.workspace import Workspace
from tests.conftest import answered_digits


def test_init_creates_a_versioned_workspace(tmp_path, capsys):
    assert cli(["init", str(tmp_path / "proj")]) == 0
    ws = Workspace.open(tmp_path / "proj")
    assert (ws.root / ".git").is_dir() and (ws.root / ".dvc" / "config").is_file()
    assert (ws.root / "data" / "image-parts.json").read_text() == "[]\n" and ws.params().round.budget == 50
    assert "coldstart round --workspace" in capsys.readouterr().out
    assert cli(["init", str(tmp_path / "proj")]) == 2  # never overwrite a workspace
    assert "already holds a workspace" in capsys.readouterr().err


def test_mistakes_exit_2_with_a_message(tmp_path, capsys):
    assert cli(["status", "--workspace", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a coldstart workspace" in err and "coldstart init" in err and "Traceback" not in err
    (tmp_path / "params.yaml").write_text("ontology:\n  classes: {a: [x], b: [y]}\nround:\n  strategy: best\n")
    assert cli(["stage", "select", "--workspace", str(tmp_path)]) == 2
    assert "round.strategy: unknown strategy 'best'" in capsys.readouterr().err


def test_status_json_of_a_fresh_workspace(make_workspace, tmp_path):
    ws = make_workspace()
    out = tmp_path / "s.json"
    assert cli(["status", "-w", str(ws.root), "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    assert {k: s[k] for k in ("images", "quarantined", "human_labels", "label_events", "rounds", "last_round")} == \
        {"images": 0, "quarantined": 0, "human_labels": 0, "label_events": 0, "rounds": 0, "last_round": None}


def test_two_rounds_at_once_are_refused(make_workspace):
    ws = make_workspace()
    entered, release = threading.Event(), threading.Event()

    def hold():
        with ws.lock():
            entered.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    entered.wait(10)
    try:
        with pytest.raises(WorkspaceError, match="busy"):
            with ws.lock():
                pass
    finally:
        release.set()
        t.join()
    with ws.lock():  # released again
        pass


@pytest.mark.slow
def test_round_without_images_says_so(prefect_harness, make_workspace, capsys):
    ws = make_workspace()
    (ws.images / "notes.jpg").write_text("not an image")
    assert cli(["round", "--workspace", str(ws.root)]) == 2
    err = capsys.readouterr().err
    assert "no usable images" in err and "1 file(s) were quarantined" in err and ws.round_tags() == []


@pytest.mark.slow
def test_round_without_weights_says_how_to_fix(prefect_harness, make_workspace, capsys):
    from tests.conftest import write_image

    ws = make_workspace()
    write_image(ws.images / "a.png")
    text = ws.params_file.read_text().replace("name: coldstart-tiny", "name: ViT-B-32").replace(
        "pretrained: null", "pretrained: laion2b_s34b_b79k")
    ws.params_file.write_text(text)
    assert cli(["round", "--workspace", str(ws.root)]) == 2
    err = capsys.readouterr().err
    assert "could not load pretrained weights ViT-B-32/laion2b_s34b_b79k" in err and "model.pretrained" in err
    assert ws.round_tags() == []


@pytest.mark.slow
def test_bench_prelabel_writes_its_figures(prefect_harness, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli(["bench", "prelabel", "--n", "6", "--model", "coldstart-tiny", "--batch-size", "4",
                "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    for key in ("embed_img_s", "forward_img_s", "naive_img_s", "round_seconds"):
        assert figures[key] > 0, key
    assert figures["embed_vs_forward"] == pytest.approx(figures["embed_img_s"] / figures["forward_img_s"], abs=2e-3)
    # The overhead is the round's wall time beyond the model's own compute: derived, not assumed
    # (the figures are rounded to 2-3 decimals, hence the tolerance).
    assert figures["round_overhead_s"] == pytest.approx(figures["round_seconds"] - 6 / figures["forward_img_s"],
                                                        abs=0.02)
    assert figures["n_images"] == 6 and "embed stage / bare forward pass" in capsys.readouterr().out


def test_prompts_saves_the_round_weights_from_a_local_checkpoint_and_ablates(make_workspace, tmp_path, capsys):
    import numpy as np
    import open_clip
    import torch

    from coldstart.models.clip import ClipConfig, load_clip, register_project_configs
    from coldstart.models.zeroshot import text_weights
    from coldstart.tasks.demodata import write_digits

    register_project_configs()
    ws = make_workspace()
    truth = write_digits(ws.images, n=24, size=32)
    torch.manual_seed(7)
    model, _, _ = open_clip.create_model_and_transforms("coldstart-tiny", pretrained=None)
    (ws.root / "weights").mkdir()
    torch.save(model.state_dict(), ws.root / "weights" / "tiny.pt")
    ws.params_file.write_text(ws.params_file.read_text().replace("pretrained: null", "pretrained: weights/tiny.pt"))

    out = tmp_path / "w.npy"
    assert cli(["prompts", "-w", str(ws.root), "--save", str(out)]) == 0
    saved = np.load(out)
    expected = text_weights(load_clip(ClipConfig("coldstart-tiny", str(ws.root / "weights/tiny.pt"), "auto", "fp32")),
                            ws.params().ontology.prompts())
    assert saved.shape == (10, 32) and saved.dtype == np.float32
    np.testing.assert_allclose(saved, expected, atol=1e-6)
    random_w = text_weights(load_clip(ClipConfig("coldstart-tiny", None, "cpu", "fp32")), ws.params().ontology.prompts())
    assert not np.allclose(saved, random_w, atol=1e-3)  # the checkpoint, not random weights

    for stage in ("scan", "embed"):
        assert cli(["stage", stage, "-w", str(ws.root)]) == 0
    rows = "\n".join(f"{p},{label}" for p, label in list(truth.items())[:12])
    (ws.inbox / "answers.csv").write_text("image,label\n" + rows + "\n")
    assert cli(["stage", "intake", "-w", str(ws.root)]) == 0
    capsys.readouterr()
    report = tmp_path / "ablation.json"
    assert cli(["prompts", "-w", str(ws.root), "--ablate", "--json", str(report)]) == 0
    rows = json.loads(report.read_text())
    assert rows[0]["variant"].startswith("ensemble") and rows[1]["variant"].startswith("single prompt")
    assert sum(r["variant"].startswith("template alone") for r in rows) == 2
    assert sum(r["variant"].startswith("description alone") for r in rows) == 30
    assert all(r["n"] == 12 and round(r["accuracy"] * 12, 6).is_integer() for r in rows)
    # The ensemble row is the round's own zero-shot head, scored on the same 12 human labels.
    from coldstart.tasks.heads import zero_shot_head
    from coldstart.tasks.labellog import human_labels, read_events
    from coldstart.tasks.pool import read_pool
    from coldstart.tasks.store import EmbeddingStore

    params, clip = ws.params(), load_clip(ClipConfig("coldstart-tiny", str(ws.root / "weights/tiny.pt"), "auto", "fp32"))
    humans = human_labels(read_events(ws))
    pool = read_pool(ws, EmbeddingStore(ws.embeddings, clip.model_id, params.views.key("global")), humans)
    y = np.array([params.ontology.class_names.index(humans[i]) for i in pool.labeled_ids])
    head, _ = zero_shot_head(ws, params, clip)
    assert rows[0]["accuracy"] == pytest.approx(float((head.predict_proba(pool.labeled_X).argmax(1) == y).mean()))
    assert "zero-shot accuracy on 12 human-labeled images" in capsys.readouterr().out


def test_stages_with_clahe_and_tiles_on_the_tiny_model(make_workspace):
    from coldstart.tasks.demodata import write_digits
    from coldstart.tasks.relabel import read_resolved

    ws = make_workspace()
    write_digits(ws.images, n=6, size=96)
    text = ws.params_file.read_text().replace(
        "views:\n  clahe: false\n  tiles: []",
        "views:\n  clahe: true\n  tiles: [{size: 0.5, stride: 0.5}]\n  aggregate: topk\n  topk: 2")
    ws.params_file.write_text(text)
    assert ws.params().views.clahe and len(ws.params().views.tiles) == 1
    for stage in ("scan", "embed", "train", "relabel", "select"):
        assert cli(["stage", stage, "-w", str(ws.root)]) == 0
    model_dir = ws.embeddings / "coldstart-tiny_random-seed0"
    assert {p.name for p in model_dir.iterdir()} == {"global-clahe2x8", "tiles-0.5x0.5-clahe2x8"}
    rows = read_resolved(ws)
    assert len(rows) == 6 and all(r["location"] == "" or len(r["location"].split()) == 4 for r in rows)
    boxes = {r["location"] for r in rows} - {""}
    assert boxes <= {"0 0 48 48", "48 0 96 48", "0 48 48 96", "48 48 96 96"}


def test_stopping_criteria_say_why():
    from coldstart.flows.record import RoundRecord
    from coldstart.flows.status import stopping
    from coldstart.tasks.audit import AuditEstimate
    from coldstart.tasks.config import StopConfig
    from coldstart.tasks.intake import IntakeResult
    from coldstart.tasks.relabel import RelabelResult

    def record(humans, churn, correct, n):
        return RoundRecord(3, intake=IntakeResult(human_labels=humans),
                           relabel=RelabelResult(100, humans, 100 - humans, "probe", 0.9, 0, 0.7, churn),
                           audit=AuditEstimate(2, n, correct))

    stop = StopConfig(max_labels=100, churn_below=0.01, audit_lower_bound=0.9)
    done, why, why_not = stopping(stop, record(40, 0.2, 9, 10))  # one-sided Clopper-Pearson bound of 9/10: 0.606
    assert not done and why == [] and len(why_not) == 3
    assert "its one-sided 95% lower bound is 60.58% (90.0% correct (95% CI 55.5-99.7%, n=10" in why_not[2]
    done, why, why_not = stopping(stop, record(120, 0.005, 50, 50))  # 50/50: 0.05^(1/50) = 0.942
    assert done and len(why) == 3 and why_not == []
    assert why == ["the human-label budget is spent (120 >= stop.max_labels=100)",
                   "labels have settled: 0.50% changed in the last round (< stop.churn_below=1.00%) and 0.0% of "
                   "auto labels are below the threshold (<= stop.max_below_threshold=5%)",
                   "audited auto-label accuracy is at least 94.18% with 95% confidence "
                   "(>= stop.audit_lower_bound=90%; 100.0% correct (95% CI 92.9-100.0%, n=50, round 2's audit as "
                   "labeled))"]
    # No churn, but many uncertain auto labels and no audit: not done, and status says why.
    uncertain = record(45, 0.0, 0, 0)
    uncertain.relabel.below_threshold = 50
    done, why, why_not = stopping(StopConfig(), uncertain)
    assert not done and why_not == [
        "labels have not settled: 90.9% of auto labels (50) are below the threshold (stop.max_below_threshold=5%)",
        "audited accuracy is not shown to be >= 95%: no answered audit items yet"]
    assert stopping(StopConfig(churn_below=None, audit_lower_bound=None), record(0, 0.0, 0, 0)) == (False, [], [])


def test_bench_al_writes_labels_to_95_and_audit_coverage(tmp_path, monkeypatch):
    from coldstart.bench import al

    monkeypatch.setattr(al, "AUDIT_SEEDS", 1)  # the audit simulation: 1 seed, rounds 2-4
    monkeypatch.setattr(al, "AUDIT_ROUNDS", 4)
    out = tmp_path / "al.json"
    assert cli(["bench", "al", "--seeds", "1", "--seed-start", "3", "--audit-seed-start", "7", "--audit-policy",
                "spot-check", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert set(figures["labels_to_95"]) >= {"random", "entropy", "margin", "coldstart"}
    assert figures["labels_to_95_seeds"] == [3, 3] and figures["labels_to_95_mean"] == figures["labels_to_95"]
    # Every design and estimator on the same seed; the shipped one is what the top-level keys say.
    designs = figures["audit_designs"]
    assert set(designs) == {"uncertainty+difference", "uncertainty+bands", "uniform+difference", "uniform+bands"}
    assert all(d["seeds"] == [7, 7] and d["pairs"] == 3 for d in designs.values())
    assert designs["uncertainty+difference"]["coverage"] == figures["audit_coverage"]
    assert designs["uncertainty+difference"]["median_width"] == figures["audit_median_width"]
    assert (figures["audit_design"], figures["audit_estimator"]) == ("uncertainty", "difference")
    # One seed: labels start at 10 and grow by batches of 10 until the target is reached.
    assert all(v is None or (v - 10) % 10 == 0 for v in figures["labels_to_95"].values())
    # Coverage is a count of (seed, round) pairs whose interval held the truth: rounds 2-4 here.
    assert figures["audit_rounds"] == figures["audit_pairs"] == 3 and figures["audit_pairs_from_round_4"] == 1
    assert round(figures["audit_coverage"] * figures["audit_rounds"], 1).is_integer()
    # n grows round by round: 5 audit items per batch of 50 (spot-check), all earlier rounds'.
    assert [v["median_n"] for v in figures["audit_by_round"].values()] == [5, 10, 15]
    assert 0 < figures["audit_median_width"] < 1 and figures["audit_items_per_round"] == 5
    assert (figures["audit_policy"], figures["audit_seed_start"], figures["audit_seeds"]) == ("spot-check", 7, 1)
    assert 0 <= figures["audit_coverage_unweighted"] <= 1 and figures["audit_median_bands"] >= 1


def test_finetune_command_writes_a_checkpoint_the_round_can_load(make_workspace, capsys):
    from coldstart.models.clip import ClipConfig, load_clip
    from coldstart.tasks.demodata import write_digits

    ws = make_workspace()
    truth = write_digits(ws.images, n=8, size=32)
    assert cli(["finetune", "-w", str(ws.root)]) == 2  # no labels yet
    for stage in ("scan",):
        assert cli(["stage", stage, "-w", str(ws.root)]) == 0
    (ws.inbox / "a.csv").write_text("image,label\n" + "\n".join(f"{p},{t}" for p, t in truth.items()) + "\n")
    assert cli(["stage", "intake", "-w", str(ws.root)]) == 0
    capsys.readouterr()
    assert cli(["finetune", "-w", str(ws.root), "--blocks", "1", "--epochs", "1", "--batch-size", "4"]) == 0
    out = ws.root / "data/finetuned/coldstart-tiny-ft1.safetensors"
    assert out.is_file() and "model.pretrained: data/finetuned/coldstart-tiny-ft1.safetensors" in capsys.readouterr().out
    assert load_clip(ClipConfig("coldstart-tiny", str(out), "cpu", "fp32")).model_id.startswith("coldstart-tiny@file-")


@pytest.mark.parametrize("command", [[], ["init"], ["round"], ["status"], ["stage"], ["prompts"], ["finetune"],
                                     ["demo"], ["serve"], ["bench"], ["bench", "prelabel"], ["bench", "all"],
                                     ["bench", "al"], ["bench", "relabel"], ["bench", "scale"], ["bench", "select"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli(command + ["--help"])
    assert e.value.code == 0 and "usage: coldstart" in capsys.readouterr().out


def test_removing_a_class_that_people_used_keeps_its_answers_and_says_so(make_workspace, capsys):
    ws = make_workspace()
    answered_digits(ws)
    ws.params_file.write_text(ws.params_file.read_text().replace(
        '    zero: ["the digit zero", "a handwritten 0", "the number 0"]\n', ""))
    capsys.readouterr()
    # The answer stays in the log and counts as "none of these" (the image fits no written class
    # now); training goes on and says so, with how to get the answers back.
    assert cli(["stage", "train", "-w", str(ws.root)]) == 0
    out = "".join(capsys.readouterr())
    assert "no longer has count as 'none of these': 'zero' (1 images)" in out and "events.jsonl" in out
    from coldstart.tasks.labellog import read_events

    assert any(e.label == "zero" for e in read_events(ws))


def test_each_stage_writes_exactly_its_declared_outputs(make_workspace):
    """`coldstart stage X` (what `dvc repro` runs) changes only what dvc.yaml declares for X."""
    import hashlib

    import yaml

    from coldstart.tasks.demodata import write_digits

    ws = make_workspace()
    truth = write_digits(ws.images, n=6, size=32)  # few: the regions stage runs SAM on each (2 s apiece)
    stages = yaml.safe_load((ws.root / "dvc.yaml").read_text())["stages"]

    def snapshot():
        return {p.relative_to(ws.root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in (ws.root / "data").rglob("*") if p.is_file()}

    def declared(name):
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in stages[name].get("outs", [])]
        outs += [next(iter(m)) for m in stages[name].get("metrics", [])]
        if name == "intake":
            outs.append("data/inbox")  # answer files leave the inbox (its dependency) once handled
        return outs

    ran = []
    for name in ("scan", "embed", "intake", "train", "relabel", "regions", "discover", "select", "report"):
        if name == "intake":
            answers = "\n".join(f"{p},{t}" for p, t in list(truth.items())[:4])
            (ws.inbox / "a.csv").write_text("image,label\n" + answers + "\n")
        if name == "regions":  # random vit_t, filters opened up so that regions exist
            ws.params_file.write_text(ws.params_file.read_text() + "regions:\n  enabled: true\n  points_per_side: 2\n"
                                      "  pred_iou_thresh: 0.0\n  stability_score_thresh: 0.0\n  box_nms_thresh: 1.0\n"
                                      "  min_area: 0\n  max_area_fraction: 1.0\n")
        before = snapshot()
        assert cli(["stage", name, "-w", str(ws.root)]) == 0
        after = snapshot()
        changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
        assert changed, f"stage {name} wrote nothing"
        stray = {p for p in changed if not any(p == o or p.startswith(o.rstrip("/") + "/") for o in declared(name))}
        assert stray == set(), f"stage {name} wrote outside its declared outputs"
        ran.append(name)
    assert ran == list(stages)


def test_bench_relabel_times_the_production_stage(tmp_path, capsys):
    out = tmp_path / "relabel.json"
    assert cli(["bench", "relabel", "--n", "5000", "--dim", "64", "--classes", "5", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["path"] == "production" and figures["n"] == 5000 and figures["human_labels"] == 1000
    # Scaled to a million images (seconds are rounded to 1 ms before scaling: +-0.1 s at x200).
    assert figures["relabel_1m_s"] == pytest.approx(figures["seconds"] * 200, abs=0.11)
    assert 0 < figures["peak_rss_mb"] and figures["resolved_table_mb"] > 0
    assert "relabel stage, 1M x 512-d, 10 classes (s)" in capsys.readouterr().out


def test_a_workspace_from_an_older_version_is_refused_with_the_fix(make_workspace, capsys):
    ws = make_workspace()
    dvc_yaml = ws.root / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("data/labels/resolved:", "data/labels/resolved.csv:"))  # as 0.1 wrote it
    assert cli(["stage", "scan", "-w", str(ws.root)]) == 2
    err = capsys.readouterr().err
    assert "declares other outputs for the stage(s) relabel than this version" in err
    assert "cp " in err and "template/dvc.yaml" in err and "Traceback" not in err


def test_json_dash_writes_to_stdout_and_every_subcommand_has_a_description(make_workspace, capsys):
    from coldstart.flows.cli import build_parser

    ws = make_workspace()
    assert cli(["status", "-w", str(ws.root), "--json", "-"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["workspace"] == str(ws.root) and "workspace" in out.err
    parser = build_parser()
    subs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sp in subs.choices.items():
        assert sp.description, name
        assert "%(default)" in sp.formatter_class(name)._get_help_string(argparse.Action(["-x"], "x", help="h")), name


def test_intake_check_lists_every_problem_and_merges_nothing(make_workspace, capsys, tmp_path):
    ws = make_workspace()
    bad = tmp_path / "answers.csv"
    bad.write_text("image,label\nnope.png,zero\nalso-missing.png,ten\n", encoding="utf-8")
    assert cli(["intake", "-w", str(ws.root), "--check", str(bad)]) == 1
    out = capsys.readouterr().out  # the default, keep_good_rows: only the bad rows are set aside
    assert "2 row(s) would be set aside, 0 answer(s) merged" in out and "nope.png" in out and "also-missing.png" in out
    ws.params_file.write_text(ws.params_file.read_text() + "intake:\n  on_error: reject_file\n")
    assert ws.params().intake.on_error == "reject_file"
    assert cli(["intake", "-w", str(ws.root), "--check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "would be rejected (2 problem(s))" in out and "nope.png" in out and "also-missing.png" in out
    assert not ws.events.exists() or ws.events.read_text() == ""
    assert not list(ws.inbox.glob("*.csv")) and bad.is_file()


def test_rounds_run_by_hand_report_to_the_workspace_s_prefect(make_workspace, monkeypatch):
    """No Prefect server configured: the workspace's own Prefect home (the database `serve`
    starts its server on); with `serve`'s server up, that server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings


    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # as outside any test harness
        _check_prefect_settings(make_workspace())


def _check_prefect_settings(ws):
    import http.server

    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    from coldstart.flows.prefectserver import prefect_settings_for

    assert prefect_settings_for(ws) == {PREFECT_HOME: str(ws.root / ".prefect")}

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/api"
    (ws.root / ".prefect" / "server-url").write_text(url + "\n")
    try:
        assert prefect_settings_for(ws) == {PREFECT_API_URL: url}
    finally:
        server.shutdown()
    assert prefect_settings_for(ws) == {PREFECT_HOME: str(ws.root / ".prefect")}  # the server is gone


@pytest.mark.slow
def test_bench_train_times_the_production_stage(tmp_path, capsys):
    out = tmp_path / "train.json"
    assert cli(["bench", "train", "--sizes", "300", "--labels", "40", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert (figures["images"], figures["labels"]) == (300, 40) and figures["train_s"] > 0
    assert figures["runs"][0]["model"] in ("zero-shot", "probe", "zs-probe")
    assert "train stage, 300 images, 40 labels" in capsys.readouterr().out


def test_the_demo_s_offline_banner_keeps_whole_sentences():
    from coldstart.flows.demo import banner

    cause = ("could not load pretrained weights ViT-B-32/laion2b_s34b_b79k: the Hugging Face hub is unreachable "
             "(offline, or HF_HUB_OFFLINE=1) and the weights are not in the local cache " + "x" * 250)
    text = banner("laion2b_s34b_b79k", cause + ". Tried hf-hub:laion/... Fix: set model.pretrained")
    body = [line for line in text.splitlines() if line.startswith("!!   ")]
    assert " ".join(line[5:] for line in body).replace(" x", "x").endswith("x" * 250 + ".")
    assert all(len(line) <= 88 for line in body) and "Tried" not in text


def test_library_noise_goes_to_the_workspace_log_not_the_terminal(make_workspace, capsys):
    """Without -v the terminal shows coldstart's own messages (INFO up) and other libraries'
    errors; MLflow's registry and database lines, alembic's, other libraries' warnings and
    Python warnings (timm's FutureWarnings) go to .coldstart/logs/coldstart.log only."""
    import logging
    import warnings

    from coldstart.flows.cli import build_parser
    from coldstart.flows.clilog import LOG_FILE, configure_logging

    ws = make_workspace()
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        logging.captureWarnings(False)  # as in a fresh process (an earlier main() captured them already)
        configure_logging(build_parser().parse_args(["status", "-w", str(ws.root)]))
        logging.getLogger("coldstart.tasks.select").info("only 3 unlabeled images left")
        logging.getLogger("coldstart.models.zeroshot").info("classes 'a' and 'b' are nearly identical")
        logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
        logging.getLogger("mlflow").info("Created version '2' of model 'x-head'")
        logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
        logging.getLogger("urllib3.connectionpool").warning("some library warning")
        logging.getLogger("prefect.engine").error("a library error")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("Importing from timm.models.layers is deprecated", FutureWarning)
        err = capsys.readouterr().err
        assert "only 3 unlabeled images left" in err and "a library error" in err
        for noise in ("nearly identical", "MLflow database", "Created version", "SQLiteImpl", "library warning", "timm"):
            assert noise not in err
        log = (ws.root / LOG_FILE).read_text(encoding="utf-8")
        for line in ("only 3 unlabeled", "Creating initial MLflow database tables", "Created version '2'",
                     "Context impl SQLiteImpl", "some library warning", "a library error",
                     "timm.models.layers is deprecated"):
            assert line in log
        # -v: everything on the terminal; the same handlers are replaced, not added twice.
        configure_logging(build_parser().parse_args(["-v", "status", "-w", str(ws.root)]))
        logging.getLogger("mlflow").info("Registered model 'x-head' already exists")
        assert capsys.readouterr().err.count("Registered model") == 1
    finally:
        logging.captureWarnings(False)
        for h in [h for h in root.handlers if getattr(h, "coldstart", False)]:
            root.removeHandler(h)
            h.close()
        root.handlers[:], root.level = before


def test_ontology_warnings_are_shown_once_per_workspace_until_the_ontology_changes(make_workspace):
    from coldstart.flows.cmd_round import _fresh_warnings

    ws = make_workspace()
    w = ["classes 'one' and 'seven' are nearly identical", "class 'eight': prompt is not in Latin script"]
    assert _fresh_warnings(ws, ws.params(), w) == (w, 0)
    assert _fresh_warnings(ws, ws.params(), w) == ([], 2)  # the next round: not again
    assert _fresh_warnings(ws, ws.params(), w + ["a new one"]) == (["a new one"], 2)
    ws.params_file.write_text(ws.params_file.read_text().replace('"the digit one"', '"the digit 1"'))
    assert _fresh_warnings(ws, ws.params(), w) == (w, 0)  # a changed ontology: all of them again
    ws.params_file.write_text(ws.params_file.read_text().replace("budget: 6", "budget: 7"))
    assert _fresh_warnings(ws, ws.params(), w) == ([], 2)  # other params: no


def test_printed_commands_name_this_environment_s_executables(tmp_path):
    """What coldstart prints to paste (`mlflow ui`, `dvc pull`, `coldstart round`) runs outside the
    activated virtualenv: each executable by its full path, else `python -m`."""
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    from coldstart.flows.demo import demo_hints
    from coldstart.tasks.commands import command

    for name in ("coldstart", "mlflow", "dvc", "prefect"):
        argv = shlex.split(command(name))
        assert Path(argv[0]).is_absolute() and Path(argv[0]).is_file()
    out = subprocess.run(shlex.split(command("coldstart")) + ["--help"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 0 and "usage: coldstart" in out.stdout
    root = tmp_path / "demo ws"  # a space: quoted
    hints = demo_hints(root, 3)
    assert f"{command('mlflow')} ui --backend-store-uri 'sqlite:///{root}/mlflow.db'" in hints
    assert f"&& {command('dvc')} pull data/labels/resolved" in hints and "round-003" in hints
    assert f"{command('dvc')} get '{root}' data/labels/resolved --rev round-003" in hints
    assert shlex.quote(sys.executable) + " -c " in hints
    for line in hints.splitlines():
        assert " mlflow ui" not in line and not line.lstrip().startswith(("dvc ", "mlflow ", "coldstart "))


def test_the_terminal_leaves_dvc_storage_tracebacks_to_the_log_file():
    """A read-only remote makes DVC's transfer threads log an ERROR with its traceback; the version
    stage says the same in one line with the fix, so the terminal shows only that line."""
    import logging

    from coldstart.flows.clilog import TerminalFilter

    def record(name: str, level: int) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 0, "failed to transfer", None, None)

    terminal = TerminalFilter()
    assert not terminal.filter(record("dvc_data.hashfile.transfer", logging.ERROR))
    assert not terminal.filter(record("dvc_objects.fs.generic", logging.ERROR))
    assert terminal.filter(record("mlflow.store", logging.ERROR))  # other libraries' errors still show
    assert terminal.filter(record("coldstart.tasks.version", logging.INFO))
