"""`coldstart bench discover`: the command users run, on one seed, its keys and its figures."""

from __future__ import annotations

import json

from coldstart.flows.cli import main as cli


def test_bench_discover_finds_both_hidden_digits_and_writes_its_keys(tmp_path, capsys):
    out = tmp_path / "discover.json"
    assert cli(["bench", "discover", "--seeds", "1", "--json", str(out)]) == 0
    f = json.loads(out.read_text())
    for key in ("hidden_classes", "proposals", "hidden_recall", "precision", "labels_spent", "known_accuracy"):
        assert key in f
    [run] = f["per_seed"]
    assert f["hidden_classes"] == 2 and run["hidden"] == [6, 7]  # seed 0 hides 6 and 7
    assert f["hidden_recall"] == 1.0 and f["proposals"] <= 4 and f["labels_spent"] == 150
    assert run["unknown_answers"] > 0 and sorted(run["adopted"]) == [6, 7]
    assert abs(f["known_accuracy_gap"]) < 5 and f["adopted_accuracy"] > 0.9
    # The outcome keeps the unnamed digits out of the written classes far more than a threshold.
    assert f["hidden_kept_out"] > 0.9 and f["reject_hidden_kept_out"] < f["hidden_kept_out"] - 0.5
    assert "discover: hidden digits with a pure proposal" in capsys.readouterr().out
