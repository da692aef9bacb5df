"""Shared fixtures: offline, isolated Prefect/MLflow/DVC state, a tiny real open_clip model."""

from __future__ import annotations

import os
import tempfile

# Before anything imports prefect/huggingface: no hub, no analytics, private Prefect state
# (the test harness swaps Prefect's database but not its result storage).
_STATE = tempfile.mkdtemp(prefix="coldstart-tests-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ["PREFECT_HOME"] = os.path.join(_STATE, "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///" + os.path.join(_STATE, "stray-mlflow.db")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from coldstart.models.clip import ClipConfig, load_clip  # noqa: E402

TINY = ClipConfig(name="coldstart-tiny", pretrained=None, device="cpu")


@pytest.fixture(scope="session")
def tiny_clip():
    """A randomly initialised tiny open_clip model, built through the production loader."""
    return load_clip(TINY)


def tiny_params(budget: int = 6) -> str:
    """The demo's digits ontology on the tiny model, random weights, no decoding workers."""
    from coldstart.tasks.demodata import demo_params

    text = demo_params(None, budget, model="coldstart-tiny").replace("batch_size: 32", "batch_size: 16")
    return text.replace("num_workers: auto", "num_workers: 0")


@pytest.fixture
def make_workspace(tmp_path):
    """Create a real workspace (git + DVC + local remote) with the tiny model and digits ontology."""
    from coldstart.tasks.version import init_workspace

    def make(name: str = "ws", budget: int = 6):
        return init_workspace(tmp_path / name, params_text=tiny_params(budget))

    return make


def write_image(path: Path, seed: int = 0, size=(48, 64), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(path, format=fmt)
    return path
