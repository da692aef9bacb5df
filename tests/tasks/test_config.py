from pathlib import Path

import pytest
import yaml

from models.errors import ConfigError
from tasks.config import flatten, load_params, parse_params

ROOT = Path(__file__).resolve().parents[2]


def test_template_params_are_valid_and_repo_root_matches_template():
    p = load_params(ROOT / "params.yaml")
    assert p.model.name == "ViT-B-32" and p.round.budget == 50 and p.tracking.uri is None
    for name in ("params.yaml", "dvc.yaml"):
        assert (ROOT / name).read_text() == (ROOT / "flows" / "template" / name).read_text(), name


def _raw():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("path, value, message", [
    (("round", "budget"), 0, "round.budget"),
    (("round", "strategy"), "smart", "valid: margin, least_confidence, entropy, random"),
    (("round", "budgte"), 3, "round.budgte: unknown key"),
    (("ontology", "templates"), ["no slot"], "exactly one '{}'"),
    (("ontology", "classes"), {"only": ["one"]}, "at least two classes"),
    (("model", "batch_size"), -1, "model.batch_size"),
])
def test_bad_values_name_the_key(path, value, message):
    raw = _raw()
    raw[path[0]][path[1]] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("{", r"\{").replace("}", r"\}")):
        parse_params(raw)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="coldstart init"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("ontology: [unclosed")
    with pytest.raises(ConfigError, match="YAML"):
        load_params(tmp_path / "params.yaml")


def test_chinese_classes_round_trip_through_flatten():
    raw = _raw()
    raw["ontology"] = {"templates": ["工业产品照片，显示{}"], "classes": {"划痕": ["金属表面的划痕"], "ok": "无缺陷的零件"}}
    p = parse_params(raw)
    assert p.ontology.class_names == ["划痕", "ok"] and p.ontology.classes["ok"] == ["无缺陷的零件"]
    assert "划痕" in flatten(p)["ontology.classes.划痕"] or "金属表面的划痕" in flatten(p)["ontology.classes.划痕"]
