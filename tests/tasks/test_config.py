from pathlib import Path

import pytest
import yaml

from coldstart.models.errors import ConfigError
from coldstart.tasks.config import flatten, load_params, parse_params

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
    assert p.ontology.class_names == ["划痕", "ok"] and p.ontology.classes["ok"].descriptions == ["无缺陷的零件"]
    assert flatten(p)["ontology.classes.划痕.descriptions"] == '["金属表面的划痕"]'  # no \u escapes
    assert p.ontology.prompts() == [["工业产品照片，显示金属表面的划痕"], ["工业产品照片，显示无缺陷的零件"]]


def test_negatives_template_sets_and_per_class_templates():
    raw = _raw()
    raw["ontology"] = {
        "templates": "simple7",
        "negative_label": "ok",
        "classes": {
            "scratch": {"descriptions": ["a long thin scratch on metal", "a deep scratch"]},
            "dent": {"descriptions": ["a dent"], "templates": ["a close-up photo of {}.", "{}"]},
            "flawless": {"descriptions": ["a flawless part"], "negative": True},
            "background": {"descriptions": ["background"], "negative": True, "templates": "plain"},
        },
    }
    onto = parse_params(raw).ontology
    assert onto.scoring_classes == ["scratch", "dent", "flawless", "background"]
    assert onto.class_names == ["scratch", "dent", "ok"] and onto.label_of_class == [0, 1, 2, 2]
    assert [len(p) for p in onto.prompts()] == [14, 2, 7, 1]
    assert onto.prompts()[0][0] == "itap of a a long thin scratch on metal."
    assert onto.prompts()[3] == ["a photo of background."]
    raw["ontology"]["templates"] = "imagenet81"
    with pytest.raises(ConfigError, match="built-in sets: imagenet80, simple7, plain"):
        parse_params(raw)
    raw["ontology"]["templates"] = "imagenet80"
    assert len(parse_params(raw).ontology.templates) == 80
