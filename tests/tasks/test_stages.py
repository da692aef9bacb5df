"""The stage registry (tasks/stages.py) is the one list of stages: dvc.yaml, the round record and
`coldstart stage` agree with it."""

from __future__ import annotations

from pathlib import Path

import yaml

from coldstart.flows.cli import main as cli
from coldstart.flows.record import STAGES as RECORD_STAGES
from coldstart.tasks.stages import DVC_STAGES, STAGES

ROOT = Path(__file__).resolve().parents[2]


def test_dvc_yaml_declares_the_registry_s_dvc_stages_in_its_order():
    for dvc_yaml in (ROOT / "dvc.yaml", ROOT / "flows" / "template" / "dvc.yaml"):
        declared = list(yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"])
        assert declared == DVC_STAGES, dvc_yaml
        assert all(f"coldstart stage {name} " in yaml.safe_load(dvc_yaml.read_text())["stages"][name]["cmd"]
                   for name in declared)


def test_the_round_record_holds_one_result_per_registered_stage_in_round_order():
    assert list(RECORD_STAGES) == list(STAGES)
    assert [RECORD_STAGES[name] for name in STAGES] == [s.result for s in STAGES.values()]
    assert all(STAGES[name].run is not None for name in DVC_STAGES)  # each runs alone, as dvc repro runs it


def test_an_unknown_stage_is_refused_with_the_list(make_workspace, capsys):
    ws = make_workspace()
    assert cli(["stage", "track", "-w", str(ws.root)]) == 2
    err = capsys.readouterr().err
    assert "unknown stage 'track'" in err and ", ".join(DVC_STAGES) in err and "Traceback" not in err
