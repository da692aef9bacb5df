"""Where the `coldstart` command's log lines go: the terminal (coldstart's own messages) and the
workspace's log file (every library's), and the Prefect/MLflow settings that keep them quiet."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path

LOG_FILE = Path(".coldstart") / "logs" / "coldstart.log"  # in the workspace: every library's log lines


def process_seconds() -> float:
    """Seconds since this process started (its start-up and imports included)."""
    try:
        import psutil  # optional: only for the process's start time

        return max(0.0, time.time() - psutil.Process().create_time())
    except Exception:  # no psutil, or no /proc: since this module was imported
        return time.time() - _IMPORTED


_IMPORTED = time.time()


def quiet_prefect() -> None:
    # Prefect's temporary server logs analytics noise; and no scheduled work needs heartbeats.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # our own summary says what happened
    # ... but a flow run's own log lines (get_run_logger: the round summary, the "nothing new"
    # reason, stage timings) must reach its run page in the Prefect UI: those two loggers log
    # INFO to the API whatever PREFECT_LOGGING_LEVEL says. Environment variables, so that the
    # runs `coldstart serve` starts in subprocesses get them too. coldstart's own loggers go to
    # the run page as well (Prefect's "extra loggers"); outside a run they are not sent.
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "coldstart")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    # MLflow's loggers go through ours (the log file), not its own stderr handler.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    if "prefect.logging.configuration" in sys.modules:  # Prefect configured its logging already (tests, notebooks)
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).setLevel(logging.INFO)


class TerminalFilter(logging.Filter):
    """What the terminal shows (without --verbose): coldstart's own messages from INFO up, and
    other libraries' errors. Everything else (MLflow's registry and database lines, alembic's,
    Python warnings such as timm's FutureWarnings) goes to the workspace's log file only. (DVC
    prints through handlers of its own, on its loggers.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "coldstart" or record.name.startswith("coldstart."):
            # zero-shot's ontology warnings: the round summary shows them (once, see _fresh_warnings)
            return record.levelno >= (logging.WARNING if record.name == "coldstart.models.zeroshot" else logging.INFO)
        if record.name.split(".")[0] in ("dvc_data", "dvc_objects"):
            # DVC's storage layers log a failed transfer with its traceback from a worker thread
            # (a read-only remote, a full disk); the version stage reports the failure itself, in
            # one line with the fix. The log file keeps them.
            return False
        return record.levelno >= logging.ERROR


class WorkspaceLogHandler(logging.handlers.RotatingFileHandler):
    """Appends to ``<workspace>/.coldstart/logs/coldstart.log`` (2 MB, then one older file kept),
    once the folder is a workspace (it has a params.yaml): the file is opened on the first record
    after that, and opened again if the workspace is rebuilt meanwhile (`coldstart demo`)."""

    def __init__(self, root: Path):
        self.root = root
        super().__init__(root / LOG_FILE, maxBytes=2_000_000, backupCount=1, encoding="utf-8", delay=True)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if not (self.root / "params.yaml").is_file():
                return
            if self.stream is not None and not os.path.exists(self.baseFilename):
                self.close()  # the workspace was deleted and made again: a new file
            Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            return
        super().emit(record)


def configure_logging(args: argparse.Namespace) -> None:
    """The terminal gets coldstart's own messages (all of every logger with --verbose); the
    workspace's log file (LOG_FILE) gets every library's warnings and coldstart's, MLflow's
    and Prefect's INFO lines. Called once per ``main()``: it replaces what an earlier call set."""
    root = logging.getLogger()
    for h in list(root.handlers):
        # ours from an earlier call; Prefect's console handler where Prefect was imported first
        # (tests, notebooks: in the CLI, Prefect sees ours and adds none).
        if getattr(h, "coldstart", False) or type(h).__name__ == "PrefectConsoleHandler":
            root.removeHandler(h)
            if getattr(h, "coldstart", False):
                h.close()
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not args.verbose:
        terminal.addFilter(TerminalFilter())
    handlers: list[logging.Handler] = [terminal]
    folder = getattr(args, "workspace", None) or getattr(args, "directory", None)
    if folder:
        file = WorkspaceLogHandler(Path(folder).expanduser().resolve())
        file.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
        handlers.append(file)
    for h in handlers:
        h.coldstart = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(logging.INFO if args.verbose else logging.WARNING)
    for name in ("coldstart", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.INFO)
    # MLflow imported before main() (a notebook, a test) has put its own stderr handlers on
    # "mlflow" and "alembic" and stopped propagation: their lines must go through ours
    # (MLFLOW_CONFIGURE_LOGGING, set by quiet_prefect, keeps a later import from doing it).
    for name in ("mlflow", "alembic"):
        lib = logging.getLogger(name)
        for h in list(lib.handlers):
            lib.removeHandler(h)
        lib.propagate = True
    logging.captureWarnings(True)  # warnings.warn (FutureWarning, ...) -> logger py.warnings -> the file
