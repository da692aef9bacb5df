"""Three real rounds end to end: Prefect flow, MLflow (SQLite), DVC (git repo + local remote)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from coldstart.flows.cli import main as cli
from coldstart.flows.demo import answer_batch, write_digits
from coldstart.flows.round import labeling_round
from coldstart.tasks.intake import read_events
from coldstart.tasks.workspace import read_csv
from tests.conftest import write_image

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


def test_three_rounds(prefect_harness, make_workspace, tmp_path):
    ws = make_workspace(budget=8)
    truth = write_digits(ws.images, n=60, size=32)
    _add_bad_inputs(ws, truth)

    summaries, answered, resolved_at = [], [], {}
    for r in (1, 2, 3):
        s = labeling_round(workspace=str(ws.root))
        summaries.append(s)
        resolved_at[r] = (ws.resolved).read_bytes()
        if r < 3:
            answers = answer_batch(ws.root / s.review_files[0], truth, ws.inbox)
            answered.append(read_csv(answers))
            if r == 2:  # the same file dropped again, under another name: must add nothing
                shutil.copyfile(ws.imported / "answers-round-001.csv", ws.inbox / "again.csv")

    s1, s2, s3 = summaries
    # Bad images: quarantined with reasons, round went on.
    assert s1.quarantined == 3 and s1.images == 60
    reasons = {r["path"]: r["reason"] for r in read_csv(ws.quarantine)}
    assert "empty file" in reasons["bad/empty.jpg"]
    assert "not an image" in reasons["bad/notes.jpg"]
    assert "truncated" in reasons["bad/truncated.jpg"]
    # Bad label file: rejected whole, kept, with its problems by row; nothing merged.
    assert s1.files_rejected == ["data/inbox/wrong-class.csv"]
    report = (ws.rejected / "wrong-class.csv.errors.txt").read_text()
    assert "row 2" in report and "unknown class 'ten'" in report
    assert (ws.rejected / "wrong-class.csv").is_file()

    # Label events: every answered row exactly once, with provenance; the re-drop added nothing.
    events = read_events(ws)
    expected = {(row["image_id"], row["label"]) for batch in answered for row in batch}
    assert len(events) == len(expected) == 16
    assert {(e.image_id, e.label) for e in events} == expected
    assert {e.round for e in events} == {2, 3}
    assert all(e.annotator == "sim-annotator" and len(e.source_sha256) == 64 and e.source_row >= 2 for e in events)
    assert s3.files_accepted == ["data/inbox/answers-round-002.csv"]  # again.csv: same bytes, no-op
    assert (ws.imported / "again.csv").is_file()  # kept, not deleted
    assert s3.events_added == 8 and s3.human_labels == 16

    # Resolved table: one row per distinct image; human labels win and are the truth.
    rows = read_csv(ws.resolved)
    assert len(rows) == len({r["image_id"] for r in rows}) == 60
    humans = [r for r in rows if r["source"] == "human"]
    assert len(humans) == 16 and all(truth[r["path"]] == r["label"] for r in humans)
    assert {r["source"] for r in rows} - {"human"} <= {"zero-shot", "probe", "zs-probe"}
    assert all(r["round"] == "3" for r in rows)
    # The review batch never asks again for a human-labeled image.
    batch3 = read_csv(ws.review / "round-003.batch.csv")
    asked = [b for b in batch3 if b["purpose"] != "recheck"]
    assert len(asked) == 8 and not {b["image_id"] for b in asked} & {r["image_id"] for r in humans}
    assert sum(b["purpose"] == "audit" for b in asked) == 1 and {b["purpose"] for b in asked} == {"hybrid", "audit"}
    rechecks = [b for b in batch3 if b["purpose"] == "recheck"]
    assert len(rechecks) <= 1 and all(b["note"].startswith("please check") for b in rechecks)
    assert {b["purpose"] for b in read_csv(ws.review / "round-001.batch.csv")} == {"typiclust", "audit"}
    assert s2.audit_n == 1 and s2.audit_round == 1  # round 1's audit item, answered before round 2
    tasks = json.loads((ws.review / "round-003.tasks.json").read_text())
    assert tasks[0]["predictions"][0]["model_version"] and tasks[0]["predictions"][0]["result"][0]["type"] == "choices"

    # Embeddings: each image encoded once, ever.
    assert [s.embedded_new for s in summaries] == [60, 0, 0]

    # MLflow: one run per round with metrics, the git commit and tag recorded.
    client = MlflowClient(f"sqlite:///{ws.root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("coldstart-demo")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.info.run_id for r in runs] == [s.run_id for s in summaries]
    for s, run in zip(summaries, runs):
        assert run.data.metrics["human_labels"] == s.human_labels
        assert run.data.tags["coldstart.git_tag"] == s.tag
        assert run.data.tags["mlflow.source.git.commit"] == s.commit
        assert run.data.params["model.name"] == "coldstart-tiny"
    assert "label_churn" in runs[2].data.metrics and "seconds_embed" in runs[0].data.metrics
    # Round 1's audit, answered before round 2, is logged on both: as "previous round" on round 2's
    # run, and as the measured accuracy of round 1's own labels on round 1's run.
    lo, hi = s2.audit_interval
    assert 0 <= lo <= s2.audit_accuracy <= hi <= 1
    assert runs[1].data.metrics["audit_low_prev_round"] == pytest.approx(lo)
    assert runs[0].data.metrics["audit_accuracy"] == s2.audit_accuracy and runs[0].data.metrics["audit_n"] == 1
    for key in ("zs_probe_cv_accuracy", "zero_shot_accuracy_on_human", "temperature", "ece_before", "ece_after"):
        assert key in runs[2].data.metrics, key
    artifacts = {a.path for a in client.list_artifacts(runs[1].info.run_id)}
    assert {"review", "plots"} <= artifacts  # the batch, and the probe's CV confusion matrix
    # The fitted probe is an MLflow model that loads back and predicts over the probe's classes.
    import mlflow.sklearn

    mlflow.set_tracking_uri(f"sqlite:///{ws.root / 'mlflow.db'}")
    probe = mlflow.sklearn.load_model(f"runs:/{runs[2].info.run_id}/probe")
    assert probe.predict_proba(np.zeros((1, probe.n_features_in_))).shape == (1, 10)
    # ... registered, and the current best carries the alias `champion`.
    champion = mlflow.sklearn.load_model("models:/coldstart-demo-head@champion")
    version = client.get_model_version_by_alias("coldstart-demo-head", "champion")
    assert champion.predict_proba(np.ones((2, 32), np.float32) / np.sqrt(32)).shape == (2, 10)
    assert version.run_id in {r.info.run_id for r in runs[1:]}

    # dvc.lock at the tag describes the workspace: DVC sees every stage as up to date.
    from dvc.repo import Repo

    with contextlib.chdir(ws.root), Repo(str(ws.root)) as repo:
        assert repo.status() == {}
        assert {s.name for s in repo.index.stages if s.cmd} == {"scan", "embed", "intake", "train", "relabel", "select"}

    # Git tags, and `dvc pull` at an older tag in a fresh clone restores that round's table.
    tags = subprocess.run(["git", "tag"], cwd=ws.root, capture_output=True, text=True).stdout.split()
    assert tags == ["round-001", "round-002", "round-003"]
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ws.root), str(clone)], check=True)
    subprocess.run(["git", "checkout", "-q", "round-002"], cwd=clone, check=True)
    with contextlib.chdir(clone), Repo(str(clone)) as repo:
        repo.pull(targets=["data/labels/resolved.csv"])
    assert (clone / "data/labels/resolved.csv").read_bytes() == resolved_at[2] != resolved_at[3]

    # Status, as a person or a script reads it.
    out = tmp_path / "status.json"
    assert cli(["status", "--workspace", str(ws.root), "--json", str(out)]) == 0
    status = json.loads(out.read_text())
    assert status["images"] == 60 and status["quarantined"] == 3 and status["human_labels"] == 16
    assert status["label_events"] == 16 and status["rounds"] == 3 and status["last_round"] == 3
    mlflow.set_tracking_uri(None)
