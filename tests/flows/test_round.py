"""Three real rounds end to end (Prefect flow, MLflow on SQLite, DVC with a git repo and a local
remote), run once per module; each test below checks one concern of that workspace."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

import coldstart
from coldstart.flows.cli import main as cli
from coldstart.flows.record import RoundRecord
from coldstart.flows.round import labeling_round
from coldstart.tasks.audit import clopper_pearson_lower
from coldstart.tasks.demodata import answer_batch, write_digits
from coldstart.tasks.labellog import read_events
from coldstart.tasks.relabel import read_resolved
from coldstart.tasks.version import init_workspace
from coldstart.tasks.workspace import read_csv
from tests.conftest import tiny_params, write_image

pytestmark = pytest.mark.slow


def _add_bad_inputs(ws, truth):
    trunc = write_image(ws.images / "bad" / "truncated.jpg", seed=1, size=(64, 64), fmt="JPEG")
    trunc.write_bytes(trunc.read_bytes()[: trunc.stat().st_size // 2])
    (ws.images / "bad" / "empty.jpg").write_bytes(b"")
    (ws.images / "bad" / "notes.jpg").write_text("<html>a saved web page, not a JPEG</html>")
    # A duplicate under another (non-ASCII) name shares the original's identity and label.
    (ws.images / "副本").mkdir()
    shutil.copyfile(ws.images / "scans-00/digit-0003.png", ws.images / "副本/样本 3.png")
    truth["副本/样本 3.png"] = truth["scans-00/digit-0003.png"]
    (ws.inbox / "wrong-class.csv").write_text("image,label\nscans-00/digit-0000.png,ten\n", encoding="utf-8")


@pytest.fixture(scope="module")
def rounds(prefect_harness, tmp_path_factory):
    """60 digits plus bad files; rounds 1-3, each batch answered by a simulated annotator, and
    round 1's answers dropped again under another name before round 3."""
    tmp = tmp_path_factory.mktemp("rounds")
    ws = init_workspace(tmp / "ws", params_text=tiny_params(8))
    truth = write_digits(ws.images, n=60, size=32)
    _add_bad_inputs(ws, truth)
    records, answered, resolved_at = [], [], {}
    for r in (1, 2, 3):
        if r == 3:  # the tiny random model gives a probe no edge over zero-shot: ask for one
            ws.params_file.write_text(ws.params_file.read_text().replace("train:\n", "train:\n  model: probe\n"))
        rec = labeling_round(workspace=str(ws.root))
        records.append(rec)
        resolved_at[r] = coldstart.read_labels(ws.resolved)
        if r < 3:
            answers = answer_batch(ws.root / rec.select.files[0], truth, ws.inbox)
            answered.append(read_csv(answers))
            if r == 2:  # the same file dropped again, under another name: must add nothing
                shutil.copyfile(ws.imported / "answers-round-001.csv", ws.inbox / "again.csv")
    return SimpleNamespace(ws=ws, truth=truth, records=records, answered=answered, resolved_at=resolved_at, tmp=tmp)


def _mlflow_runs(ws):
    client = MlflowClient(f"sqlite:///{ws.root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("coldstart-demo")
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_bad_images_are_quarantined_with_reasons_and_the_round_goes_on(rounds):
    r1 = rounds.records[0]
    assert (r1.scan.images, r1.scan.quarantined, r1.scan.duplicates, r1.scan.files) == (60, 3, 1, 64)
    reasons = {r["path"]: r["reason"] for r in read_csv(rounds.ws.quarantine)}
    assert set(reasons) == {"bad/empty.jpg", "bad/notes.jpg", "bad/truncated.jpg"}
    assert "empty file" in reasons["bad/empty.jpg"] and "not an image" in reasons["bad/notes.jpg"]
    assert "truncated" in reasons["bad/truncated.jpg"]


def test_a_bad_answer_row_is_handed_back_with_its_reason(rounds):
    """The default intake.on_error (keep_good_rows): the bad row goes to rejected/NAME.rows.csv
    with a reason column, ready to fix and drop back; the round goes on and says so."""
    ws, r1 = rounds.ws, rounds.records[0]
    assert r1.intake.files_accepted == ["data/inbox/wrong-class.csv"] and r1.intake.events_added == 0
    assert r1.intake.rows_rejected == 1 and "1 row(s) not merged" in r1.intake.problems[0]
    handed_back = read_csv(ws.rejected / "wrong-class.rows.csv")
    assert [(r["image"], r["label"]) for r in handed_back] == [("scans-00/digit-0000.png", "ten")]
    assert handed_back[0]["reason"].startswith("unknown class 'ten'")


def test_every_answered_row_is_one_event_and_a_redrop_adds_nothing(rounds):
    ws, r3 = rounds.ws, rounds.records[2]
    events = read_events(ws)
    expected = {(row["image_id"], row["label"]) for batch in rounds.answered for row in batch}
    assert len(events) == len(expected) == 16
    assert {(e.image_id, e.label) for e in events} == expected
    assert {e.round for e in events} == {2, 3}
    assert all(e.annotator == "sim-annotator" and len(e.source_sha256) == 64 and e.source_row >= 2 for e in events)
    assert r3.intake.files_accepted == ["data/inbox/answers-round-002.csv"]  # again.csv: same bytes
    assert r3.intake.files_already_imported == ["data/inbox/again.csv"] and (ws.imported / "again.csv").is_file()
    assert (r3.intake.events_added, r3.intake.human_labels, r3.intake.label_events) == (8, 16, 16)


def test_resolved_table_has_one_row_per_image_and_human_labels_win(rounds):
    rows = read_resolved(rounds.ws)
    assert len(rows) == len({r["image_id"] for r in rows}) == 60
    humans = [r for r in rows if r["source"] == "human"]
    assert len(humans) == 16 and all(rounds.truth[r["path"]] == r["label"] and r["confidence"] == 1.0 for r in humans)
    r3 = rounds.records[2]
    assert {r["source"] for r in rows} - {"human"} == {r3.train.model}
    # Each row's round is when its label was set: human labels in the round their answers came in.
    events = {e.image_id: e.round for e in read_events(rounds.ws)}
    assert {r["round"] for r in rows} <= {1, 2, 3} and max(r["round"] for r in rows) == 3
    assert all(r["round"] >= events[r["image_id"]] for r in humans)
    assert r3.relabel.auto == 44 and r3.relabel.human == 16
    assert sum(r["source"] != "human" and r["confidence"] < r3.relabel.threshold for r in rows) == \
        r3.relabel.below_threshold


def test_review_batches_never_ask_again_and_hold_one_audit_item(rounds):
    ws = rounds.ws
    humans = {r["image_id"] for r in read_resolved(ws) if r["source"] == "human"}
    batch3 = read_csv(ws.review / "round-003.batch.csv")
    asked = [b for b in batch3 if b["purpose"] != "recheck"]
    # Re-checks count inside the budget of 8: the batch never holds more.
    assert len(batch3) == 8 and len(asked) == 8 - rounds.records[2].select.recheck
    assert not {b["image_id"] for b in asked} & humans
    # 16 human labels of 10 classes: still the cold start (round.cold_start_per_class 3 x 10 classes).
    assert rounds.records[2].select.strategy == "typiclust"
    assert sum(b["purpose"] == "audit" for b in asked) == 1 and {b["purpose"] for b in asked} == {"typiclust", "audit"}
    rechecks = [b for b in batch3 if b["purpose"] == "recheck"]
    assert len(rechecks) == rounds.records[2].select.recheck <= 1
    assert all(b["note"].startswith("please check") for b in rechecks)
    assert {b["purpose"] for b in read_csv(ws.review / "round-001.batch.csv")} == {"typiclust", "audit"}
    tasks = json.loads((ws.review / "round-003.tasks.json").read_text())
    assert len(tasks) == len(batch3) and tasks[0]["predictions"][0]["result"][0]["type"] == "choices"


def test_each_image_is_embedded_once_ever(rounds):
    assert [r.embed.embedded for r in rounds.records] == [60, 0, 0]


def test_the_audit_estimates_round_1_from_its_answered_audit_item(rounds):
    item = next(b for b in read_csv(rounds.ws.review / "round-001.batch.csv") if b["purpose"] == "audit")
    correct = int(rounds.truth[item["image"]] == item["predicted_label"])
    audit = rounds.records[1].audit
    # Round 2's estimate: round 1's audit item, scored out of fold by round 2's labeler; what
    # round 1 itself predicted for it is kept beside it (as_labeled).
    assert (audit.round, audit.n, audit.method, audit.drawn_in) == (2, 1, "out-of-fold", [1])
    assert audit.as_labeled == {"1": [correct, 1]}
    # The batch file records how the item was drawn: its probability and the pool it came from.
    assert 0 < float(item["inclusion"]) <= 1 and int(item["audit_pool"]) == rounds.records[0].select.pool
    assert all(b["inclusion"] == b["audit_pool"] == "" for b in read_csv(rounds.ws.review / "round-001.batch.csv")
               if b["purpose"] != "audit")
    # The difference estimator over round 2's auto labels, with the bands beside it (one item:
    # one band); gates keep the exact unweighted bound.
    assert audit.estimator == "difference" and "difference estimator" in audit.describe()
    assert audit.auto_labels == rounds.records[1].relabel.auto > 0 and len(audit.bands) == 1
    assert audit.bands[0][2] == audit.auto_labels and audit.bands[0][4] == 1
    lo, hi = audit.interval
    assert lo <= audit.accuracy <= hi and audit.unweighted_accuracy == audit.correct
    assert audit.lower_bound == clopper_pearson_lower(audit.correct, 1)
    client, runs = _mlflow_runs(rounds.ws)
    # Logged on both runs: the estimate on round 2's, round 1's own as-labeled accuracy on round 1's.
    assert runs[1].data.metrics["audit_low"] == pytest.approx(audit.interval[0])
    assert runs[0].data.metrics["audit_as_labeled_accuracy"] == correct
    assert runs[0].data.metrics["audit_as_labeled_n"] == 1


def test_one_mlflow_run_per_round_with_the_record_s_metrics(rounds):
    client, runs = _mlflow_runs(rounds.ws)
    assert [r.info.run_id for r in runs] == [rec.run_id for rec in rounds.records]
    for rec, run in zip(rounds.records, runs):
        logged = run.data.metrics
        for key, value in rec.metrics().items():
            if value is not None and not key.startswith("seconds_"):
                assert logged[key] == pytest.approx(value), key
        assert run.data.tags["coldstart.git_tag"] == rec.tag == rec.version.tag
        assert run.data.tags["mlflow.source.git.commit"] == rec.version.commit
        assert run.data.params["model.name"] == "coldstart-tiny"
        assert run.data.params["model.id"] == rec.embed.model_id == "coldstart-tiny@random-seed0"  # fp32: no suffix
    # Today's metric names, kept so that older runs stay comparable.
    for key in ("images", "embedded_new", "human_labels", "label_churn", "auto_accept_threshold", "label_flags",
                "zs_probe_cv_accuracy", "zero_shot_accuracy_on_human", "ece_after", "batch_audit", "seconds_embed",
                "seconds_total"):
        assert key in set(runs[1].data.metrics) | set(runs[2].data.metrics), key
    assert {a.path for a in client.list_artifacts(runs[1].info.run_id)} >= {"review", "plots"}


def test_a_fitted_probe_is_logged_registered_and_the_best_is_champion(rounds):
    import mlflow.sklearn

    client, runs = _mlflow_runs(rounds.ws)
    with_probe = [(rec, run) for rec, run in zip(rounds.records, runs) if rec.train.model != "zero-shot"]
    assert rounds.records[0].train.model == "zero-shot" and rounds.records[2].train.model == "probe"
    mlflow.set_tracking_uri(f"sqlite:///{rounds.ws.root / 'mlflow.db'}")
    try:
        rec, run = with_probe[-1]
        probe = mlflow.sklearn.load_model(f"runs:/{run.info.run_id}/probe")
        # Columns: ontology.labels, the 10 classes then "unknown" (nobody answered it: probability 0).
        p = probe.predict_proba(np.zeros((1, probe.n_features_in_)))
        assert p.shape == (1, 11) and p[0, -1] == 0
        import coldstart

        champion = coldstart.load_champion(str(rounds.ws.root))
        version = client.get_model_version_by_alias("coldstart-demo-head", "champion")
        assert champion.predict_proba(np.ones((2, 32), np.float32) / np.sqrt(32)).shape == (2, 11)
        best = max(with_probe, key=lambda p: (p[0].train.cv_accuracy, p[0].round))  # ties: the newer
        assert version.run_id == best[1].info.run_id
    finally:
        mlflow.set_tracking_uri(None)


def test_round_json_is_the_record_and_status_reads_it(rounds, tmp_path):
    ws, r3 = rounds.ws, rounds.records[2]
    saved = RoundRecord.load(ws.metrics_dir / "round.json")
    assert saved.round == 3 and saved.relabel == r3.relabel and saved.intake == r3.intake
    assert saved.train.to_dict() == json.loads(json.dumps(r3.train.to_dict()))
    import coldstart

    assert coldstart.read_round(str(ws.root)).select == r3.select
    out = tmp_path / "status.json"
    assert cli(["status", "--workspace", str(ws.root), "--json", str(out)]) == 0
    status = json.loads(out.read_text())
    assert {k: status[k] for k in ("images", "quarantined", "human_labels", "label_events", "rounds", "last_round",
                                   "auto_labeled", "model", "last_churn")} == \
        {"images": 60, "quarantined": 3, "human_labels": 16, "label_events": 16, "rounds": 3, "last_round": 3,
         "auto_labeled": 44, "model": r3.train.model, "last_churn": r3.relabel.churn}


def test_dvc_sees_every_stage_up_to_date_and_an_older_tag_pulls_back(rounds):
    from dvc.repo import Repo

    ws = rounds.ws
    with contextlib.chdir(ws.root), Repo(str(ws.root)) as repo:
        assert repo.status() == {}
        assert {s.name for s in repo.index.stages if s.cmd} == {"scan", "embed", "intake", "train", "relabel",
                                                                  "discover", "regions", "select", "report"}
    tags = subprocess.run(["git", "tag"], cwd=ws.root, capture_output=True, text=True).stdout.split()
    assert tags == ["round-001", "round-002", "round-003"] == [r.tag for r in rounds.records]
    clone = rounds.tmp / "clone"
    subprocess.run(["git", "clone", "-q", str(ws.root), str(clone)], check=True)
    subprocess.run(["git", "checkout", "-q", "round-002"], cwd=clone, check=True)
    with contextlib.chdir(clone), Repo(str(clone)) as repo:
        repo.pull(targets=["data/labels/resolved"])
        repo.pull(targets=["data/images"], recursive=True)  # every part's .dvc file under it
    got = coldstart.read_labels(clone / "data/labels/resolved")
    assert got.equals(rounds.resolved_at[2]) and not got.equals(rounds.resolved_at[3])
    # The images too, though rounds 2 and 3 found them unchanged and did not re-add them.
    assert [r.version.parts_added for r in rounds.records] == [["bad", "scans-00", "副本"], [], []]
    pulled = sorted(p.relative_to(clone / "data/images").as_posix() for p in (clone / "data/images").rglob("*")
                    if p.is_file())
    assert pulled == sorted(p.relative_to(ws.images).as_posix() for p in ws.images.rglob("*") if p.is_file())


def test_dvc_repro_runs_exactly_the_stale_stages(rounds, monkeypatch):
    """On a copy of the workspace: change one param; `dvc repro` reruns only the stages that
    depend on it (each `coldstart stage X` writing exactly X's declared outputs), then DVC
    sees everything up to date."""
    from dvc.repo import Repo

    copy = rounds.tmp / "repro"
    shutil.copytree(rounds.ws.root, copy, symlinks=True)
    monkeypatch.setenv("PATH", f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    params = (copy / "params.yaml").read_text()
    (copy / "params.yaml").write_text(params.replace("  budget: 8\n", "  budget: 5\n"))
    with contextlib.chdir(copy), Repo(str(copy)) as repo:
        assert set(repo.status()) == {"select"}
        ran = repo.reproduce()
    assert [s.name for s in ran] == ["select", "report"]  # the report shows the new batch
    assert len([b for b in read_csv(copy / "data/review/round-004.batch.csv") if b["purpose"] != "recheck"]) == 5
    with contextlib.chdir(copy), Repo(str(copy)) as repo:
        assert repo.status() == {}


def test_a_round_after_new_images_versions_only_the_changed_parts(rounds):
    """On a copy: a new folder and a new loose file; the round adds those two parts to DVC and
    nothing else, a part deleted loses its .dvc file, and DVC sees the workspace up to date."""
    import yaml
    from dvc.repo import Repo

    copy = rounds.tmp / "more-images"
    shutil.copytree(rounds.ws.root, copy, symlinks=True)
    before = (copy / "data/images/scans-00.dvc").read_text()
    write_image(copy / "data/images/new/extra.png", seed=99, size=(32, 32))
    write_image(copy / "data/images/loose.png", seed=98, size=(32, 32))
    shutil.rmtree(copy / "data/images/bad")
    rec = labeling_round(workspace=str(copy))
    assert rec.scan.new_images == 2
    assert (rec.version.parts_added, rec.version.parts_removed) == (["", "new"], ["bad"])
    assert yaml.safe_load((copy / "data/images/new.dvc").read_text())["outs"][0]["nfiles"] == 1
    assert (copy / "data/images/loose.png.dvc").is_file() and not (copy / "data/images/bad.dvc").exists()
    assert (copy / "data/images/scans-00.dvc").read_text() == before
    # The manifest: round 1's base (rounds 2 and 3 changed nothing), and round 4's 2 new rows.
    parts = sorted(p.name for p in (copy / "data/store/manifest").iterdir())
    assert parts == ["000001.base.parquet", "000004.parquet"]
    assert pq.read_table(copy / "data/store/manifest/000004.parquet")["path"].to_pylist() == ["loose.png", "new/extra.png"]
    # DVC took the scan's md5 of the new image (not reading it again): the right one.
    dir_md5 = yaml.safe_load((copy / "data/images/new.dvc").read_text())["outs"][0]["md5"]
    listing = json.loads((copy / ".dvc/cache/files/md5" / dir_md5[:2] / dir_md5[2:]).read_text())
    assert listing == [{"md5": hashlib.md5((copy / "data/images/new/extra.png").read_bytes()).hexdigest(),
                        "relpath": "extra.png"}]
    index = {e["part"]: e for e in json.loads((copy / "data/image-parts.json").read_text())}
    assert set(index) == {"loose.png", "new", "scans-00", "副本"} and index["new"]["nfiles"] == 1
    with contextlib.chdir(copy), Repo(str(copy)) as repo:
        assert repo.status() == {}


def test_a_scan_param_change_alone_is_versioned(rounds):
    """Images unchanged but `scan` params changed: no image part is re-added, the scan stage is
    committed again, so DVC sees the workspace up to date."""
    from dvc.repo import Repo

    copy = rounds.tmp / "scan-param"
    shutil.copytree(rounds.ws.root, copy, symlinks=True)
    params = (copy / "params.yaml").read_text()
    (copy / "params.yaml").write_text(params.replace("max_pixels: 100000000", "max_pixels: 90000000"))
    rec = labeling_round(workspace=str(copy))
    assert not rec.version.images_added and rec.version.parts_added == []
    with contextlib.chdir(copy), Repo(str(copy)) as repo:
        assert repo.status() == {}


def test_a_workspace_with_one_dvc_file_for_all_images_moves_to_parts(rounds):
    """A workspace made before image parts (data/images.dvc, /data/images git-ignored): the next
    round replaces images.dvc by one .dvc per part and DVC sees the workspace up to date."""
    from dvc.repo import Repo

    copy = rounds.tmp / "legacy"
    shutil.copytree(rounds.ws.root, copy, symlinks=True)
    with contextlib.chdir(copy), Repo(str(copy)) as repo:
        for dvcfile in (copy / "data/images").glob("*.dvc"):
            repo.remove(str(dvcfile), outs=False)
        (copy / "data/images/.gitignore").unlink(missing_ok=True)
        (copy / ".gitignore").write_text("/data/images\n" + (copy / ".gitignore").read_text())
        subprocess.run(["git", "rm", "-rq", "--cached", "data/images"], cwd=copy, check=True)
        repo.add(str(copy / "data/images"))
    subprocess.run(["git", "add", "-A"], cwd=copy, check=True)
    subprocess.run(["git", "commit", "-qm", "old layout"], cwd=copy, check=True)
    rec = labeling_round(workspace=str(copy), force=True)  # no new data: only --force runs it
    assert not (copy / "data/images.dvc").exists()
    assert rec.version.parts_added == ["bad", "scans-00", "副本"]
    assert sorted(p.name for p in (copy / "data/images").glob("*.dvc")) == ["bad.dvc", "scans-00.dvc", "副本.dvc"]
    assert "/data/images\n" not in (copy / ".gitignore").read_text()
    with contextlib.chdir(copy), Repo(str(copy)) as repo:
        assert repo.status() == {}


def test_a_round_with_nothing_new_does_nothing_and_status_says_so(rounds, capsys):
    """No new image, answer or params change: no tag, MLflow run, model version or batch; a
    rejected answer file alone is shown but is not news; --force runs the round anyway."""
    copy = rounds.tmp / "nothing-new"
    shutil.copytree(rounds.ws.root, copy, symlinks=True)
    tags = subprocess.run(["git", "tag"], cwd=copy, capture_output=True, text=True).stdout.split()
    (copy / "data/inbox/typo.csv").write_text("image,label\nscans-00/digit-0001.png,seven7\n", encoding="utf-8")
    batches = sorted(p.name for p in (copy / "data/review").iterdir())
    client = MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    exp = client.get_experiment_by_name("coldstart-demo")
    n_runs = len(client.search_runs([exp.experiment_id]))
    assert cli(["round", "-w", str(copy)]) == 3  # a rejected answer file: exit status 3
    out = capsys.readouterr().out
    assert out.startswith("REJECTED data/inbox/typo.csv") and "nothing new since round 3" in out
    assert subprocess.run(["git", "tag"], cwd=copy, capture_output=True, text=True).stdout.split() == tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=copy, capture_output=True, text=True).stdout
    assert head == subprocess.run(["git", "rev-parse", "round-003^{commit}"], cwd=copy, capture_output=True,
                                  text=True).stdout  # no commit either
    assert sorted(p.name for p in (copy / "data/review").iterdir()) == batches
    assert len(client.search_runs([exp.experiment_id])) == n_runs
    assert json.loads((copy / ".coldstart/last-check.json").read_text())["result"] == "nothing new"
    # Where the round runs or reports (Label Studio, the MLflow server, Dask) is not a round input.
    import yaml

    params = (copy / "params.yaml").read_text()
    edited = yaml.safe_load(params)
    edited["labelstudio"] = {"url": "http://localhost:8080", "project": "parts", "images": "api",
                             "api_url": "http://localhost:8750"}
    edited["execution"] = {**edited.get("execution", {}), "dask_workers": 3}
    (copy / "params.yaml").write_text(yaml.safe_dump(edited, allow_unicode=True))
    assert labeling_round(workspace=str(copy)).nothing_new
    (copy / "params.yaml").write_text(params)
    assert cli(["status", "-w", str(copy)]) == 0
    assert "last check" in capsys.readouterr().out
    versions = client.search_model_versions("name = 'coldstart-demo-head'")
    rec = labeling_round(workspace=str(copy), force=True)
    assert rec.tag == "round-004" and not rec.nothing_new and rec.train.model == "probe"
    # The same labels retrain the same head: its registered version is reused, not duplicated.
    assert len(client.search_model_versions("name = 'coldstart-demo-head'")) == len(versions)
    assert rec.track.registered_version == str(max(int(v.version) for v in versions))


def test_checkpoints_and_big_files_go_to_dvc_never_to_git(rounds):
    """A checkpoint and an over-cap file put in the workspace: the round's git commit holds
    neither (only their .dvc files), and both are on the DVC remote."""
    copy = rounds.tmp / "big-files"
    shutil.copytree(rounds.ws.root, copy, symlinks=True)
    (copy / "models").mkdir()
    (copy / "models/finetuned.pt").write_bytes(os.urandom(4096))
    (copy / "notes").mkdir()
    (copy / "notes/scans.tar").write_bytes(os.urandom(11 * 2**20))  # over versioning.git_max_file_mb: 10
    (copy / "notes/readme.txt").write_text("small files stay in git\n")
    rec = labeling_round(workspace=str(copy), force=True)
    in_git = subprocess.run(["git", "ls-tree", "-r", "--name-only", rec.version.commit], cwd=copy,
                            capture_output=True, text=True, check=True).stdout.split()
    assert "models/finetuned.pt" not in in_git and "notes/scans.tar" not in in_git
    assert {"models/finetuned.pt.dvc", "notes/scans.tar.dvc", "notes/readme.txt"} <= set(in_git)
    for name in ("models/finetuned.pt", "notes/scans.tar"):
        md5 = hashlib.md5((copy / name).read_bytes()).hexdigest()
        # A copied workspace pushes to a remote of its own, never into the original's.
        assert (copy / ".dvc-remote/files/md5" / md5[:2] / md5[2:]).is_file(), name
        assert not (rounds.ws.root / ".dvc-remote/files/md5" / md5[:2] / md5[2:]).exists(), name


def test_images_waiting_in_an_unanswered_batch_are_not_asked_or_audited_again(rounds):
    """Round 3's batch is unanswered: a forced round 4 draws neither its picks nor its audit
    sample from it, and never from human-labeled images."""
    copy = rounds.tmp / "pending"
    shutil.copytree(rounds.ws.root, copy, symlinks=True)
    waiting = {b["image_id"] for b in read_csv(copy / "data/review/round-003.batch.csv") if b["purpose"] != "recheck"}
    rec = labeling_round(workspace=str(copy), force=True)
    batch4 = [b for b in read_csv(copy / "data/review/round-004.batch.csv") if b["purpose"] != "recheck"]
    humans = {e.image_id for e in read_events(rounds.ws)}
    assert batch4 and rec.select.audit == 1
    assert not {b["image_id"] for b in batch4} & (waiting | humans)


def test_exports_list_every_file_and_load_in_torchvision(rounds, tmp_path):
    """csv: one row per file path (the duplicate too, sharing its label); imagefolder loads in
    torchvision; coco and Label Studio tasks are written; an older round exports as it was."""
    from torchvision.datasets import ImageFolder

    ws = rounds.ws
    assert cli(["export", "-w", str(ws.root), "--format", "csv", "--out", str(tmp_path / "labels.csv")]) == 0
    rows = read_csv(tmp_path / "labels.csv")
    assert len(rows) == 61  # 60 distinct images + the duplicate under another name
    by_path = {r["path"]: r for r in rows}
    assert by_path["副本/样本 3.png"]["label"] == by_path["scans-00/digit-0003.png"]["label"]
    assert cli(["export", "-w", str(ws.root), "--format", "imagefolder", "--out", str(tmp_path / "tree")]) == 0
    data = ImageFolder(str(tmp_path / "tree"))
    assert len(data) == 61 and set(data.classes) == {r["label"] for r in rows}
    image, target = data[0]
    assert image.size == (32, 32) and data.classes[target] in {r["label"] for r in rows}
    assert cli(["export", "-w", str(ws.root), "--format", "coco", "--out", str(tmp_path / "coco.json")]) == 0
    coco = json.loads((tmp_path / "coco.json").read_text())
    assert len(coco["images"]) == len(coco["annotations"]) == 61
    assert cli(["export", "-w", str(ws.root), "--format", "labelstudio", "--out", str(tmp_path / "t.json")]) == 0
    assert len(json.loads((tmp_path / "t.json").read_text())) == 61
    # Round 2's labels, as round 2 left them; round 1's parts were pruned (the message says how
    # to get them from DVC); min-confidence leaves out unsure auto labels.
    assert cli(["export", "-w", str(ws.root), "--format", "csv", "--round", "2", "--out", str(tmp_path / "r2.csv")]) == 0
    humans2 = {r["image_id"] for r in read_csv(tmp_path / "r2.csv") if r["source"] == "human"}
    assert len(humans2) == rounds.records[1].intake.human_labels < rounds.records[2].intake.human_labels
    assert cli(["export", "-w", str(ws.root), "--format", "csv", "--round", "1", "--out", str(tmp_path / "r1.csv")]) == 2
    assert cli(["export", "-w", str(ws.root), "--format", "csv", "--min-confidence", "1.0",
                "--out", str(tmp_path / "sure.csv")]) == 0
    assert {r["source"] for r in read_csv(tmp_path / "sure.csv")} == {"human"}


def test_each_round_publishes_its_summary_as_a_prefect_artifact(rounds):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["round-003"])))
    assert found and found[0].type == "markdown" and "round 3 (round-003" in found[0].data


def _cache_objects_intact(root) -> list[str]:
    """The DVC cache's objects whose bytes no longer hash to their name (corrupted)."""
    bad = []
    for obj in (root / ".dvc" / "cache" / "files" / "md5").rglob("*"):
        if obj.is_file() and not obj.name.endswith(".dir"):
            if hashlib.md5(obj.read_bytes()).hexdigest() != obj.parent.name + obj.name:
                bad.append(str(obj))
    return bad


def _edit_in_place(paths, uid: int | None) -> int:
    """Append a byte to each file in place (as an editor saving in place does), in a child process
    running as ``uid`` (privileges dropped) when given; its exit status. The folders are opened
    before the privileges drop (pytest's temp root is 0700): the file's own mode decides."""
    folders = {p.parent: os.open(p.parent, os.O_RDONLY | os.O_DIRECTORY) for p in paths}
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            if uid is not None:
                os.setgid(uid)
                os.setuid(uid)
            for p in paths:
                fd = os.open(p.name, os.O_WRONLY | os.O_APPEND, dir_fd=folders[p.parent])
                os.write(fd, b"\n")
                os.close(fd)
        except BaseException:  # noqa: BLE001
            code = 13
        os._exit(code)
    for fd in folders.values():
        os.close(fd)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_files_people_edit_are_plain_and_an_edit_in_place_never_reaches_the_dvc_cache(rounds):
    """Review CSVs and tasks, reports, answer files taken in, flags and quarantine lists: one
    link, the umask's mode, editable in place by their (non-root) owner; the cache and `dvc status
    -c` stay intact, and `dvc status` shows the edit. Images stay hard-linked into the cache."""
    from coldstart.tasks.version import EDITABLE

    ws = rounds.ws
    files = [p for rel in EDITABLE for p in ([ws.root / rel] if (ws.root / rel).is_file()
                                              else sorted((ws.root / rel).rglob("*"))) if p.is_file()]
    kinds = {p.relative_to(ws.root).parts[1] if p.parent != ws.root / "data" else p.name for p in files}
    assert {"review", "reports", "labels", "store"} <= kinds and any(p.suffix == ".json" for p in files)
    umask = os.umask(0)
    os.umask(umask)
    mode = 0o666 & ~umask
    assert [(p.name, p.stat().st_nlink, oct(p.stat().st_mode & 0o777)) for p in files if
            p.stat().st_nlink != 1 or p.stat().st_mode & 0o777 != mode] == []
    image = ws.images / "scans-00" / "digit-0000.png"
    assert image.stat().st_nlink == 2  # images keep DVC's hard link
    uid = None
    if os.geteuid() == 0:  # be the non-root owner of the workspace's files, as users are
        uid = 65534
        for p in files:  # through a hard link, this also hands the cache object over (mode 0444)
            os.chown(p, uid, uid)
    try:
        assert _edit_in_place(files, uid) == 0
    finally:
        if uid is not None:
            for p in files:
                os.chown(p, 0, 0)
    assert _cache_objects_intact(ws.root) == []
    with contextlib.chdir(ws.root):
        cloud = subprocess.run([sys.executable, "-m", "dvc", "status", "-c"], capture_output=True, text=True)
        local = subprocess.run([sys.executable, "-m", "dvc", "status"], capture_output=True, text=True)
    assert cloud.returncode == 0 and "new:" not in cloud.stdout and "missing:" not in cloud.stdout, cloud.stdout
    assert "modified:" in local.stdout and "data/review" in local.stdout, local.stdout
