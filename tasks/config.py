"""params.yaml: the one config file, validated once on load.

Every section is a small pydantic model; each stage receives only its slice. Validation
errors are turned into :class:`ConfigError` messages that name the key (``round.budget``)
and what is allowed, because a person edits this file by hand.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from models.errors import ConfigError

STRATEGIES = ("margin", "least_confidence", "entropy", "random")


class _Section(BaseModel):
    # Unknown keys are typos far more often than intent: refuse them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class OntologyConfig(_Section):
    """Class name -> one or more descriptions, plus prompt templates with one ``{}`` each."""

    templates: list[str] = Field(default_factory=lambda: ["a photo of {}."], min_length=1)
    classes: dict[str, list[str]]

    @field_validator("templates")
    @classmethod
    def _one_slot(cls, templates: list[str]) -> list[str]:
        for t in templates:
            if t.count("{}") != 1:
                raise ValueError(f"template {t!r} must contain exactly one '{{}}' where the description goes")
        return [unicodedata.normalize("NFC", t) for t in templates]

    @field_validator("classes", mode="before")
    @classmethod
    def _descriptions(cls, classes: Any) -> Any:
        if not isinstance(classes, dict) or len(classes) < 2:
            raise ValueError("give at least two classes, as a mapping: class name -> list of descriptions")
        out = {}
        for name, descs in classes.items():
            if isinstance(descs, str):
                descs = [descs]
            if not descs or not all(isinstance(d, str) and d.strip() for d in descs):
                raise ValueError(f"class {name!r}: give one or more non-empty descriptions")
            # Labels are matched after NFC normalisation everywhere (RELIABILITY.md).
            out[unicodedata.normalize("NFC", str(name).strip())] = [unicodedata.normalize("NFC", d) for d in descs]
        return out

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)


class ModelConfig(_Section):
    name: str = "ViT-B-32"
    # An open_clip pretrained tag, a path to a local checkpoint (relative to the workspace),
    # 'local-dir:/path', or null for random weights (tests, smoke runs).
    pretrained: str | None = "laion2b_s34b_b79k"
    device: str = "auto"
    batch_size: int = Field(32, ge=1, le=4096)
    # DataLoader workers decoding images while the model computes; 'auto' picks by core count.
    num_workers: int | Literal["auto"] = "auto"


class ScanConfig(_Section):
    # Decompression bombs: refuse images above this many pixels before decoding them.
    max_pixels: int = Field(100_000_000, ge=1)
    extensions: list[str] | None = None  # null: every file is tried (a wrong one is quarantined)


class TrainConfig(_Section):
    seed: int = 0
    C: float = Field(1.0, gt=0)  # inverse L2 strength of the logistic-regression probe
    cv_folds: int = Field(5, ge=2)
    min_labels: int = Field(4, ge=2)  # fewer human labels than this: no probe is fitted


class RoundConfig(_Section):
    budget: int = Field(50, ge=1)
    audit_fraction: float = Field(0.1, ge=0.0, le=1.0)
    strategy: str = "margin"
    confidence_threshold: float = Field(0.7, ge=0.0, le=1.0)
    seed: int = 0

    @field_validator("strategy")
    @classmethod
    def _known(cls, s: str) -> str:
        if s not in STRATEGIES:
            raise ValueError(f"unknown strategy {s!r}; valid: {', '.join(STRATEGIES)}")
        return s


class TrackingConfig(_Section):
    uri: str | None = None  # null: sqlite:///<workspace>/mlflow.db
    experiment: str = "coldstart"


class Params(_Section):
    ontology: OntologyConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    scan: ScanConfig = Field(default_factory=ScanConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    round: RoundConfig = Field(default_factory=RoundConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


def _key(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if p not in ("function-after", "function-before"))


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already-parsed mapping; raise ConfigError naming every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level (ontology:, model:, round:, ...)")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (typo?)"
            lines.append(f"  - {_key(err['loc'])}: {msg}")
        raise ConfigError(f"{source}: invalid settings:\n" + "\n".join(lines)) from None


def load_params(path: Path) -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run `coldstart init DIR` to create a workspace with an example")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid UTF-8 YAML: {e}") from e
    return parse_params(raw, str(path))


def flatten(params: Params) -> dict[str, str]:
    """Flatten to ``section.key`` -> string, for MLflow params (lists become JSON)."""
    import json

    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list):
            flat[prefix] = json.dumps(value, ensure_ascii=False)
        else:
            flat[prefix] = "null" if value is None else str(value)

    walk("", params.model_dump())
    return flat
