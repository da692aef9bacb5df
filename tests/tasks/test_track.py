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


def test_a_new_tracking_store_starts_as_a_copy_of_an_empty_one(tmp_path, monkeypatch):
    """The first workspace's store makes the cached template (MLflow's own tables, no rows); a
    later workspace's store is a copy of it, and each records only its own runs."""
    import sqlite3

    from coldstart.tasks.dbtemplate import template

    monkeypatch.setenv("COLDSTART_CACHE", str(tmp_path / "cache"))
    runs = {}
    for name in ("ws1", "ws2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "params.yaml").write_text(CHINESE, encoding="utf-8")
        ws = Workspace.open(tmp_path / name)
        runs[name], _ = log_round(ws, ws.params(), 1, {"images": 3.0}, [], None)
        if name == "ws1":
            made = template("mlflow").stat().st_mtime_ns
    assert template("mlflow").stat().st_mtime_ns == made  # made once, by the first store
    with sqlite3.connect(template("mlflow")) as t:
        assert t.execute("SELECT count(*) FROM experiments").fetchone() == (0,)  # no workspace's rows
        revision = t.execute("SELECT version_num FROM alembic_version").fetchone()
    for name, run_id in runs.items():
        with sqlite3.connect(tmp_path / name / "mlflow.db") as db:
            assert db.execute("SELECT version_num FROM alembic_version").fetchone() == revision
        client = MlflowClient(f"sqlite:///{tmp_path / name / 'mlflow.db'}")
        exp = client.get_experiment_by_name(Workspace.open(tmp_path / name).params().tracking.experiment)
        assert exp.artifact_location == (tmp_path / name / "mlartifacts").as_uri()
        assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [run_id]


def test_without_a_usable_template_mlflow_makes_its_own_tables(tmp_path, monkeypatch):
    from coldstart.tasks.dbtemplate import template

    monkeypatch.setenv("COLDSTART_CACHE", str(tmp_path / "cache"))
    template("mlflow").parent.mkdir(parents=True)
    template("mlflow").write_bytes(b"not a database")  # damaged: never copied
    (tmp_path / "params.yaml").write_text(CHINESE, encoding="utf-8")
    ws = Workspace.open(tmp_path)
    run_id, _ = log_round(ws, ws.params(), 1, {"images": 3.0}, [], None)
    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id).data.metrics == {"images": 3.0}
    assert template("mlflow").read_bytes() == b"not a database"
