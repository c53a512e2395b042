"""Nothing lost: a training run stopped on request, or killed with SIGKILL mid-epoch, continues where it was."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from medimg import jobs
from medimg.config import DatasetConfig, ModelParams, RunSpec, TrainConfig
from medimg.store import runs
from tests.conftest import DEMO

pytestmark = pytest.mark.slow


def spec(epochs: int) -> RunSpec:
    return RunSpec(
        kind="train",
        dataset=DatasetConfig(path=str(DEMO), image_size=16),
        train=TrainConfig(epochs=epochs, early_stopping_patience=0, reduce_lr_patience=0),
        params=ModelParams(filters=(8,), dense_units=8, batch_size=8),
    )


def epoch_events(run: runs.Run) -> list[int]:
    return [event["epoch"] + 1 for event in run.events("epoch") if event.get("trial") is None]


def wait_for_epochs(run: runs.Run, count: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while len(epoch_events(run)) < count:
        assert time.time() < deadline, f"run never reached {count} epochs: {run.events()[-3:]}"
        time.sleep(0.05)


def test_stopped_run_resumes_from_its_last_epoch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = runs.create_run(spec(epochs=40), tmp_path)
    watcher = threading.Thread(target=lambda: (wait_for_epochs(run, 2), run.request_stop()), daemon=True)
    watcher.start()
    jobs.execute(run)
    assert run.status == "stopped"
    first = epoch_events(run)
    assert 2 <= len(first) < 40 and (run.path / "backup").is_dir()

    from medimg import cli

    assert cli.main(["resume", str(run.path)]) == 0
    assert run.status == "completed"
    # It ends as `train` does: the saved model on validation, then on test, and the run folder last.
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1] == str(run.path)
    assert "validation, the saved model (the split it was chosen on): AUC " in err and "\ntest (threshold 0.5" in err
    second = epoch_events(run)[len(first) :]
    assert second[0] >= first[-1], "the resumed fit started again from epoch 1"
    history = json.loads((run.path / "history.json").read_text())
    assert history["epoch"] == list(range(1, 41))  # one continuous history, no gap, no repeat
    assert not (run.path / "backup").exists()  # a completed run keeps no resume state


def test_sigkill_mid_epoch_loses_at_most_one_epoch(tmp_path: Path) -> None:
    run = jobs.launch(spec(epochs=30), tmp_path)
    try:
        wait_for_epochs(run, 3)
        os.kill(run.pid, signal.SIGKILL)
        deadline = time.time() + 30
        while run.status != "failed":  # the watcher sees a dead process, not a run "running" forever
            assert time.time() < deadline
            time.sleep(0.1)
    finally:
        try:
            os.kill(run.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    completed_before_kill = max(epoch_events(run))
    count_before = len(epoch_events(run))

    jobs.execute(run)
    assert run.status == "completed"
    resumed = epoch_events(run)[count_before:]
    lost = completed_before_kill - (resumed[0] - 1)
    assert 0 <= lost <= 1, f"resumed at epoch {resumed[0]} after {completed_before_kill} completed epochs"
    history = json.loads((run.path / "history.json").read_text())
    assert history["epoch"] == list(range(1, 31))
    assert (run.path / "model.keras").is_file() and run.record["metrics"]["auc"] is not None
