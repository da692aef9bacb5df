"""Where shard work runs: in this process, or on a Dask cluster through prefect-dask.

The embed and relabel stages split their work into shards of the embedding store (4,096 images
each). With ``execution.task_runner: local`` they run the shards in this process; with ``dask``
each shard is one Prefect task, mapped in a sub-flow whose task runner is prefect-dask's
``DaskTaskRunner``: on the scheduler at ``execution.dask_address``, or on a ``LocalCluster``
started for the sub-flow. Workers need coldstart installed, the workspace at the same path
(a shared file system), and ``PREFECT_API_URL`` pointing at the flow's Prefect server. The
shard layout is the same either way, so the store and the labels are too.
"""

from __future__ import annotations

from coldstart.tasks.config import ExecutionConfig
from coldstart.tasks.errors import WorkspaceError


def on_dask(cfg: ExecutionConfig | None) -> bool:
    return cfg is not None and cfg.task_runner == "dask"


def dask_runner(cfg: ExecutionConfig):
    """prefect-dask's task runner for ``cfg``: the given scheduler, or a new LocalCluster."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as e:  # a trimmed install
        raise WorkspaceError("params.yaml: execution.task_runner is dask, but prefect-dask is not installed "
                             "(pip install prefect-dask==0.3.7), or set execution.task_runner: local") from e
    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    # One thread per worker process: the model and numpy use the cores through their own threads.
    kwargs = {"threads_per_worker": 1, **({"n_workers": cfg.dask_workers} if cfg.dask_workers else {})}
    return DaskTaskRunner(cluster_kwargs=kwargs)
