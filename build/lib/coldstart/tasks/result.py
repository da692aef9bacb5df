"""What every stage returns: a typed record of what it did, which knows its own metrics.

A stage result is a dataclass. Its fields (minus those marked ``field(metadata=IN_MEMORY)``,
such as arrays handed to the next stage) are what goes into the round record (round.json,
``coldstart round --json``); ``metrics()`` is what goes to MLflow, under names kept stable
across versions so old runs stay comparable.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

IN_MEMORY = {"record": False}  # field metadata: passed between stages, not recorded

R = TypeVar("R", bound="StageResult")


class StageResult:
    def metrics(self) -> dict[str, float | None]:
        """MLflow metrics of this stage (None: not measured this round; not logged)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        """The recorded fields, JSON-able."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                if f.metadata.get("record", True)}

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        """Rebuild from ``to_dict()`` output (unknown keys, e.g. from newer versions, ignored)."""
        names = {f.name for f in dataclasses.fields(cls) if f.metadata.get("record", True)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})
