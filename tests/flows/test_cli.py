"""The command line as a user meets it: clear errors, exit codes, no tracebacks for mistakes."""

from __future__ import annotations

import json
import threading

import pytest

from flows.cli import main as cli
from models.errors import WorkspaceError
from tasks.workspace import Workspace


def test_init_creates_a_versioned_workspace(tmp_path, capsys):
    assert cli(["init", str(tmp_path / "proj")]) == 0
    ws = Workspace.open(tmp_path / "proj")
    assert (ws.root / ".git").is_dir() and (ws.root / ".dvc" / "config").is_file()
    assert (ws.root / "data" / "images.dvc").is_file() and ws.params().round.budget == 50
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
def test_round_without_weights_says_how_to_fix(prefect_harness, make_workspace, capsys):
    ws = make_workspace()
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
    for key in ("embed_img_s", "forward_img_s", "naive_img_s", "round_overhead_s"):
        assert figures[key] > 0 or key == "round_overhead_s", key
    assert figures["n_images"] == 6 and "embed / forward" in capsys.readouterr().out
