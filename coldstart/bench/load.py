"""How busy the rest of the machine was while a benchmark ran: ratios measured side by side hold
on a busy machine, absolute seconds do not, so a benchmark says when other processes took cores."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import TracebackType

BUSY_CORES = 0.25  # other processes' average load above which a run is flagged


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (all processes, all cpus), from /proc/stat
    (0 where there is none: the check then sees a quiet machine)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process and its finished (waited-for) children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class MachineLoad:
    """``with MachineLoad() as load: ...`` then ``load.other_cores``: the cores other processes
    kept busy on average during the block; ``load.figures()`` and ``load.line()`` report it."""

    other_cores: float = 0.0

    def __enter__(self) -> MachineLoad:
        self._start = (time.perf_counter(), busy_cpu_s(), own_cpu_s())
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        t0, busy0, own0 = self._start
        seconds = time.perf_counter() - t0
        others = (busy_cpu_s() - busy0) - (own_cpu_s() - own0)
        self.other_cores = round(max(0.0, others / seconds), 2) if seconds > 0 else 0.0

    @property
    def busy(self) -> bool:
        return self.other_cores > BUSY_CORES

    def figures(self) -> dict[str, float | bool]:
        return {"other_cores_busy": self.other_cores, "machine_busy": self.busy}

    def line(self) -> str:
        """The report line: a warning when the machine was busy, else a note that it was quiet."""
        if self.busy:
            return (f"  WARNING: the machine was busy: other processes kept {self.other_cores:.2f} cores busy on "
                    f"average during this run; its seconds are not comparable (rerun on a quiet machine)")
        return f"  machine quiet: other processes kept {self.other_cores:.2f} cores busy on average"
