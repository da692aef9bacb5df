"""A round whose embed and relabel shards run on a Dask cluster (prefect-dask's task runner,
a real distributed.LocalCluster of 2 worker processes) gives the same store and labels as a
local run of the same workspace."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import coldstart.tasks.embed as embed_module
from coldstart.flows.round import labeling_round
from coldstart.tasks.demodata import write_digits
from coldstart.tasks.relabel import read_resolved
from coldstart.tasks.store import EmbeddingStore
from coldstart.tasks.version import init_workspace
from tests.conftest import tiny_params

pytestmark = pytest.mark.slow


def _store(ws) -> dict[str, tuple[list[str], np.ndarray]]:
    """Each shard file of the workspace's stores -> (its ids, its vectors)."""
    out = {}
    for ids_file in sorted(ws.embeddings.rglob("*.ids.npy")):
        raw, X = EmbeddingStore.read_shard(ids_file)
        out[ids_file.relative_to(ws.embeddings).as_posix()] = ([i.decode() for i in raw], X)
    return out


def test_a_round_on_a_dask_cluster_equals_a_local_round(prefect_harness, tmp_path, monkeypatch):
    from distributed import LocalCluster
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setattr(embed_module, "SHARD_ROWS", 16)  # 60 images: 4 shards, so 4 tasks per stage
    local = init_workspace(tmp_path / "local", params_text=tiny_params(6))
    write_digits(local.images, n=60, size=32)
    on_dask = init_workspace(tmp_path / "dask", params_text=tiny_params(6))
    shutil.copytree(local.images, on_dask.images, dirs_exist_ok=True)
    labeling_round(workspace=str(local.root))

    # Workers report their task runs to the flow's Prefect server, and import coldstart themselves.
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        params = on_dask.params_file.read_text()
        on_dask.params_file.write_text(params + f"\nexecution:\n  task_runner: dask\n"
                                                f"  dask_address: {cluster.scheduler_address}\n")
        rec = labeling_round(workspace=str(on_dask.root))
        submitted = set(cluster.scheduler.task_prefixes)
    assert submitted == {"embed_shard_task", "score_shard_task"}  # both stages' shards went to this cluster
    with get_client(sync_client=True) as client:  # one completed Prefect task run per shard, in each stage
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="-shard-")))
    assert sorted(r.name.rsplit("-", 1)[0] for r in runs if r.state.is_completed()) == ["embed-shard"] * 4 + \
        ["score-shard"] * 4
    assert rec.embed.embedded == 60

    a, b = _store(local), _store(on_dask)
    assert list(a) == list(b) and len(a) == 4  # the same shard files, each with the same images
    for name in a:
        assert a[name][0] == b[name][0]
        np.testing.assert_allclose(a[name][1], b[name][1], atol=1e-5)
    ra, rb = read_resolved(local), read_resolved(on_dask)
    assert [(r["image_id"], r["label"]) for r in ra] == [(r["image_id"], r["label"]) for r in rb]
    np.testing.assert_allclose([float(r["confidence"]) for r in ra], [float(r["confidence"]) for r in rb], atol=1e-5)
