import yaml
from mlflow.tracking import MlflowClient

from coldstart.tasks.config import flatten, load_params
from coldstart.tasks.track import log_round, record_version
from coldstart.tasks.workspace import Workspace

CHINESE = """
ontology:
  templates: ["工业产品照片，显示{}", "a photo of {}."]
  negative_label: 合格
  classes:
    划痕: ["金属表面的细长划痕", "a long thin scratch on metal"]
    凹坑: {descriptions: ["表面凹坑"], templates: ["特写照片：{}"]}
    无缺陷: {descriptions: ["无缺陷的零件", "a flawless part"], negative: true}
model: {name: coldstart-tiny, pretrained: null}
"""


def test_chinese_ontology_round_trips_through_mlflow_params(tmp_path):
    (tmp_path / "params.yaml").write_text(CHINESE, encoding="utf-8")
    ws = Workspace.open(tmp_path)
    params = ws.params()
    assert params.ontology.class_names == ["划痕", "凹坑", "合格"]
    run_id, version = log_round(ws, params, 1, {"images": 3.0, "audit": None}, [], [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    assert version is None  # no head given: nothing registered
    record_version(ws, params, run_id, "abc123", "round-001")
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id)
    assert run.data.params == flatten(params)
    assert run.data.params["ontology.classes.划痕.descriptions"] == '["金属表面的细长划痕", "a long thin scratch on metal"]'
    assert run.data.params["ontology.templates"] == '["工业产品照片，显示{}", "a photo of {}."]'
    assert run.data.metrics == {"images": 3.0}
    assert run.data.tags["coldstart.git_tag"] == "round-001"
    assert load_params(tmp_path / "params.yaml") == params
    assert yaml.safe_load((tmp_path / "params.yaml").read_text(encoding="utf-8"))["ontology"]["negative_label"] == "合格"


def test_any_class_name_becomes_a_name_mlflow_accepts():
    from mlflow.utils.validation import path_not_unique, validate_param_and_metric_name

    from coldstart.tasks.track import mlflow_names

    keys = ["ontology.classes.零（手写）.descriptions", "ontology.classes.<script>.negative", "ontology.classes.C++",
            "ontology.classes.a//b", "../up", "ontology.classes.C--", "划痕"]
    names = mlflow_names(dict.fromkeys(keys, 1))
    assert len(names) == len(keys)  # none lost to a collision
    for name in names:
        assert validate_param_and_metric_name(name) and not path_not_unique(name), name
    assert "划痕" in names and "ontology.classes.零_手写_.descriptions" in names
    assert mlflow_names({"a+": 1, "a<": 2}) == {"a_": 1, "a__2": 2}
