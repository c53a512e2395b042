"""Runs as processes: carry one out (with status bookkeeping), launch one in the background, stop one."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from medimg.config import RunSpec
from medimg.errors import MedimgError, RunError, RunsBusyError
from medimg.store import runs

log = logging.getLogger(__name__)
DEFAULT_MAX_CONCURRENT = 1


def max_concurrent_runs() -> int:
    """The limit on runs in progress at once: $MEDIMG_MAX_CONCURRENT_RUNS, default 1 (2 cores do one run well)."""
    try:
        return max(1, int(os.environ.get("MEDIMG_MAX_CONCURRENT_RUNS", DEFAULT_MAX_CONCURRENT)))
    except ValueError:
        return DEFAULT_MAX_CONCURRENT


def execute(run: runs.Run, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Carry out a run in this process; the run record ends completed, stopped or failed, never 'running'."""
    from medimg import tracking, workflows

    if run.stop_requested() and not run.record.get("started"):
        run.set_status("stopped", message="stopped before it started")  # Stop pressed while it was queued
        return {}
    (run.path / "STOP").unlink(missing_ok=True)  # a resumed run starts without the old stop request
    run.set_status("running", pid=os.getpid(), error=None)
    try:
        kind = run.spec.kind
        result = workflows.execute_tune(run, echo) if kind == "tune" else workflows.execute_train(run, echo)
    except KeyboardInterrupt:
        run.set_status("stopped", message=f"interrupted; resume with: python -m medimg resume {run.path}")
        raise
    except MedimgError as error:
        run.set_status("failed", error=str(error))
        raise
    except Exception as error:
        (run.path / "traceback.txt").write_text(traceback.format_exc())
        run.set_status("failed", error=f"internal error ({type(error).__name__}: {error}); details in traceback.txt")
        raise
    if run.record.get("status") == "running":
        run.set_status("completed")
    tracking.after_run(run, echo)  # MLflow, only when MLFLOW_TRACKING_URI is set; mlflow is imported only then
    return result


def active_runs(root: str | Path | None = None) -> list[runs.Run]:
    return [run for run in runs.list_runs(root) if run.status in runs.ACTIVE_STATUSES]


@contextlib.contextmanager
def _launch_lock(root: Path) -> Iterator[None]:
    # One launcher at a time per runs root, so two tabs cannot both pass the concurrency check.
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".launch.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def launch(
    spec: RunSpec, root: str | Path | None = None, limit: int | None = None, extra: dict[str, Any] | None = None
) -> runs.Run:
    """Start a run as its own process (`python -m medimg resume RUN`), after checking the concurrency limit.

    `extra`: more fields for the run's first run.json (see `runs.create_run`). Raises RunsBusyError when
    `limit` runs are already in progress, DatasetError when the dataset path is missing or holds one class
    (`dataset.check_classes`)."""
    from medimg.datasets.dataset import check_classes
    from medimg.model import backbones

    check_classes(spec.dataset.path)  # a message on the page, not a failed run folder
    backbones.check_spec_weights(spec)  # a missing weights file is a message, not a failed run folder
    root = runs.runs_root(root)
    with _launch_lock(root):
        _check_limit(root, limit)
        run = runs.create_run(spec, root, extra=extra)
        return start_process(run)


def resume(run: runs.Run, limit: int | None = None) -> runs.Run:
    """Start a stopped or failed run again in its own process, as `python -m medimg resume RUN` does: a search
    keeps its completed trials and has the time its budget left (`runs.Run.set_status`), a training continues
    from its last epoch's backup. Raises RunError for a run that is in progress or completed, RunsBusyError at
    the concurrency limit."""
    if run.status in runs.ACTIVE_STATUSES or run.status == "completed":
        raise RunError(f"run {run.id} is {run.status}; only a stopped or failed run can be resumed.")
    with _launch_lock(run.path.parent):
        _check_limit(run.path.parent, limit)
        return start_process(run)


def _check_limit(root: Path, limit: int | None) -> None:
    limit = limit or max_concurrent_runs()
    busy = active_runs(root)
    if len(busy) >= limit:
        raise RunsBusyError(
            f"{len(busy)} run(s) already in progress ({', '.join(r.id for r in busy)}) and the limit is {limit}. "
            "Wait for it to finish or stop it; the limit is set by MEDIMG_MAX_CONCURRENT_RUNS.",
            [r.id for r in busy],
        )


def start_process(run: runs.Run) -> runs.Run:
    """Start (or resume) an existing run's process, detached from the caller's session.

    The run is marked queued before its process exists; from then on the process is the only writer of run.json
    (a launcher writing after the start could overwrite the process's "running"). The launcher keeps the process
    id beside it (`runs.LAUNCHED_PID`) so a process that dies before its first word is seen as failed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASTUNER_")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    (run.path / runs.LAUNCHED_PID).unlink(missing_ok=True)
    run.update(status="queued", pid=None, queued_at=time.time())
    with open(run.path / "log.txt", "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "medimg", "resume", str(run.path.resolve())],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=Path.cwd(),
        )
    runs.write_json_atomic(run.path / runs.LAUNCHED_PID, process.pid)
    # Reap the child when it ends, so a finished run is not left as a zombie of a long-lived server.
    threading.Thread(target=process.wait, daemon=True).start()
    return run


def stop(run: runs.Run) -> None:
    """Ask a run to stop at its next batch; it keeps what it has."""
    if run.status not in runs.ACTIVE_STATUSES:
        raise RunError(f"run {run.id} is not running (status: {run.status}).")
    run.request_stop()
