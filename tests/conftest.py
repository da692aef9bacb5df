"""Shared fixtures: offline, isolated Prefect/MLflow/DVC state, a tiny real open_clip model."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Before anything imports prefect/huggingface: no hub, no analytics, private Prefect state (the
# tests' Prefect server has a database of its own, tests/flows/conftest.py; this keeps Prefect's
# profiles and result storage out of the user's ~/.prefect).
_STATE = tempfile.mkdtemp(prefix="coldstart-tests-")
atexit.register(shutil.rmtree, _STATE, ignore_errors=True)  # each test process's own: gone when it ends
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ["PREFECT_HOME"] = os.path.join(_STATE, "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
# The migrated Prefect database that new workspaces' servers start from (flows/prefectserver.py):
# made by this run's first server, not taken from (or left in) the user's cache.
os.environ["COLDSTART_CACHE"] = os.path.join(_STATE, "cache")
os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///" + os.path.join(_STATE, "stray-mlflow.db")
# Under pytest-xdist, split the cores between the workers: torch's OpenMP pool defaults to one
# thread per core in every worker (and every CLI subprocess, which inherits this), and on 2 cores
# two workers of 2 spinning threads each ran SAM and CLIP about half as fast as 1 thread each.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT", "").isdigit():
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, _threads)

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from coldstart.models.clip import ClipConfig, load_clip  # noqa: E402

# fp32 pinned: `auto` is int8 on CPUs with VNNI, so ids and embeddings would differ by host.
TINY = ClipConfig(name="coldstart-tiny", pretrained=None, device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def tiny_clip():
    """A randomly initialised tiny open_clip model, built through the production loader."""
    return load_clip(TINY)


def tiny_params(budget: int = 6) -> str:
    """The demo's digits ontology on the tiny model, random weights, no decoding workers."""
    from coldstart.tasks.demodata import demo_params

    text = demo_params(None, budget, model="coldstart-tiny").replace("batch_size: 32", "batch_size: 16")
    return text.replace("num_workers: auto", "num_workers: 0").replace("precision: auto", "precision: fp32")


@pytest.fixture
def make_workspace(tmp_path):
    """Create a real workspace (git + DVC + local remote) with the tiny model and digits ontology."""
    from coldstart.tasks.version import init_workspace

    def make(name: str = "ws", budget: int = 6):
        return init_workspace(tmp_path / name, params_text=tiny_params(budget))

    return make


def answered_digits(ws, n: int = 6) -> dict[str, str]:
    """``n`` digits written into ``ws``, scanned, and every one answered with its class through
    the inbox and the intake stage (the CLI's `coldstart stage`); returns path -> class."""
    from coldstart.flows.cli import main as cli
    from coldstart.tasks.demodata import write_digits

    truth = write_digits(ws.images, n=n, size=32)
    assert cli(["stage", "scan", "-w", str(ws.root)]) == 0
    (ws.inbox / "a.csv").write_text("image,label\n" + "\n".join(f"{p},{t}" for p, t in truth.items()) + "\n")
    assert cli(["stage", "intake", "-w", str(ws.root)]) == 0
    return truth


def write_image(path: Path, seed: int = 0, size=(48, 64), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(path, format=fmt)
    return path


# Test files that take longest (seconds on 2 cores, BENCHMARKS.md "Test suite"), run first: with
# `--dist loadfile` each file is one unit of work, and pytest-xdist otherwise queues files with
# many tests first, leaving these one- and two-test files for the end, where one worker ran them
# alone. Longest first, the short files fill in around them. Files not listed keep their order.
HEAVY_FIRST = [
    "tests/flows/test_fault_matrix.py",
    "tests/flows/test_fault_matrix_late.py",
    "tests/flows/test_serve.py",
    "tests/models/test_masks.py",
    "tests/flows/test_cli.py",
    "tests/flows/test_regions_round.py",
    "tests/flows/test_regions_answers.py",
    "tests/flows/test_fault_remote.py",
    "tests/flows/test_round.py",
    "tests/flows/test_faults.py",
    "tests/flows/test_report_browser.py",
    "tests/flows/test_prefect_logs.py",
    "tests/flows/test_corpus_round.py",
    "tests/flows/test_bench_regions.py",
    "tests/flows/test_dask.py",
    "tests/flows/test_wait.py",
    "tests/flows/test_fault_tracking.py",
    "tests/flows/test_dvc_metrics.py",
]


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order set below
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {path: k for k, path in enumerate(HEAVY_FIRST)}
    root = Path(str(config.rootpath))

    def key(item):
        try:
            path = Path(str(item.path)).relative_to(root).as_posix()
        except ValueError:
            path = str(item.path)
        return rank.get(path, len(rank))

    items.sort(key=key)  # stable: tests within a file, and the files not listed, keep their order
