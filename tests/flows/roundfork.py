"""`coldstart round` as processes forked from one that has imported what a round imports.

The fault matrix runs about 25 rounds as processes of their own, each killed with SIGKILL at a
seam or run to completion. A fresh interpreter spends 5-6 s of CPU importing torch, open_clip,
Prefect, MLflow, DVC and scikit-learn before a tiny round's work; here one process per test pays
that once and forks a child per round. Each child is still a process of its own (its own pid, its
own Prefect server, which dies with it through PR_SET_PDEATHSIG, its own exit status or SIGKILL),
and runs what the ``coldstart`` executable runs: ``coldstart.flows.cli.main(["round", "-w", WS])``,
from the same modules. What is not the same is only when they were imported.

``RoundForks(env).round(ws, kill_at)`` -> ``subprocess.CompletedProcess`` (returncode -9 when a
kill point fired), as ``subprocess.run`` gave before."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# Runs in the child just before the round: one seam replaced by a SIGKILL of the whole process, a
# stage task of the round flow (killed just before the stage) or a call inside a stage.
ARM = '''
def arm(target):
    import os, signal
    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    if target == "in-track":  # the MLflow run has started: it is left RUNNING
        import coldstart.tasks.track as t
        t.close_interrupted_runs = die
    elif target == "in-scan":  # the scan wrote this round's manifest part, not yet the quarantine list
        import coldstart.tasks.scan as s
        s.write_csv = die
    elif target == "in-embed":  # a shard of the new images' embeddings is written
        import coldstart.tasks.store as st
        append = st.EmbeddingStore.append
        def append_then_die(self, *a, **k):
            append(self, *a, **k)
            die()
        st.EmbeddingStore.append = append_then_die
    elif target == "in-version":  # the round's git commit is made, its tag is not
        import coldstart.tasks.version as v
        git = v.git
        v.git = lambda root, *args, **k: die() if args[:1] == ("tag",) and "-a" in args else git(root, *args, **k)
    elif target in ("link_run_task", "publish"):  # after the tag
        import coldstart.flows.round as r
        setattr(r, target, die)
    else:  # just before the stage of that name (a task of the round's flow run)
        import coldstart.flows.round as r
        run_stage = r.run_stage
        r.run_stage = lambda stage, *a: die() if stage.name == target else run_stage(stage, *a)
'''

# The parent: import, then one fork per request line ({"ws", "kill_at", "api", "stdout", "stderr"}),
# answering {"pid"} at once and {"returncode"} when the child has ended.
PARENT = ARM + '''
import importlib, json, os, sys, threading
for name in sys.argv[1:]:
    importlib.import_module(name)
# A fork copies only the calling thread: with another thread alive, a lock it held would stay
# held in every child.
assert threading.active_count() == 1, threading.enumerate()
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        break
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
else:
    sys.exit(0)
for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["stdout"], os.O_WRONLY | os.O_CREAT),
                        (2, req["stderr"], os.O_WRONLY | os.O_CREAT)):
    f = os.open(path, flags, 0o600)
    os.dup2(f, fd)
    os.close(f)
sys.argv = ["coldstart", "round", "-w", req["ws"]]
if req["kill_at"]:
    arm(req["kill_at"])
from coldstart.flows.cli import main
if req["api"]:  # this round reports to a running server: as if PREFECT_API_URL had been set at its start
    from prefect.settings import PREFECT_API_URL, temporary_settings
    os.environ["PREFECT_API_URL"] = req["api"]
    with temporary_settings({PREFECT_API_URL: req["api"]}):
        sys.exit(main(["round", "-w", req["ws"]]))
sys.exit(main(["round", "-w", req["ws"]]))
'''

# What a tiny round imports, its own modules and the libraries they load on first use.
PRELOAD = [
    "coldstart.flows.cli", "coldstart.flows.cmd_round", "coldstart.flows.round", "coldstart.flows.status",
    "coldstart.flows.wait", "coldstart.flows.demo", "coldstart.tasks.stages", "coldstart.tasks.report",
    "coldstart.tasks.regions", "coldstart.models.clip", "coldstart.models.probe", "coldstart.models.masks",
    "open_clip", "mlflow", "mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store", "dvc.repo", "dvc.api",
    "sklearn.linear_model", "sklearn.model_selection", "sklearn.cluster", "scipy.optimize", "prefect.engine",
]


class RoundForks:
    """One parent process (its environment ``env``) and a forked child per ``round`` call."""

    def __init__(self, env: dict):
        self.env = env
        self.log = tempfile.TemporaryFile()  # the parent's own stderr (the children's go to files)
        self.proc = subprocess.Popen([sys.executable, "-c", PARENT, *PRELOAD], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1)
        self._answer(timeout=180)  # ready

    def _answer(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.log.seek(0)
            raise AssertionError(f"the round launcher did not answer in {timeout:.0f} s (exit status "
                                 f"{self.proc.poll()}):\n{self.log.read()[-3000:].decode(errors='replace')}")
        return json.loads(line)

    def round(self, ws, kill_at: str | None = None, api: str | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
        """One round in a new child: killed at ``kill_at`` (see ARM) or run to its end; reporting to
        the Prefect server at ``api``, else as ``env`` says (without PREFECT_API_URL: its own)."""
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            self.proc.stdin.write(json.dumps({"ws": str(ws.root), "kill_at": kill_at, "api": api, "stdout": str(out),
                                              "stderr": str(err)}) + "\n")
            self.proc.stdin.flush()
            pid = self._answer(timeout=30)["pid"]
            try:
                code = self._answer(timeout)["returncode"]
            except AssertionError:
                os.kill(pid, signal.SIGKILL)
                raise
            return subprocess.CompletedProcess(["coldstart", "round", "-w", str(ws.root)], code,
                                               out.read_text(errors="replace"), err.read_text(errors="replace"))

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.log.close()

    def __enter__(self) -> RoundForks:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
