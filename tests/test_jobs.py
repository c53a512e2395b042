"""Runs as processes: status bookkeeping in execute, a real background launch, the concurrency limit, stop."""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from medimg import jobs, workflows
from medimg.config import DatasetConfig, ModelParams, RunSpec, TrainConfig
from medimg.errors import DatasetError, RunError
from medimg.store import runs
from tests.conftest import DEMO, PROJECT


def demo_spec(epochs: int) -> RunSpec:
    return RunSpec(
        kind="train",
        dataset=DatasetConfig(path=str(DEMO), image_size=16, color="gray"),
        params=ModelParams(filters=(4, 8), dense_units=8, batch_size=16),
        train=TrainConfig(epochs=epochs, early_stopping_patience=0, reduce_lr_patience=0),
    )


def wait_until(condition, timeout: float = 240.0, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def one_class_dataset(root: Path) -> Path:
    for i in range(4):
        (root / "only").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "only" / f"{i}.png"), np.full((8, 8), i * 40, np.uint8))
    return root


def test_concurrency_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDIMG_MAX_CONCURRENT_RUNS", raising=False)
    assert jobs.max_concurrent_runs() == 1
    for value, expected in (("3", 3), ("0", 1), ("-2", 1), ("many", 1)):
        monkeypatch.setenv("MEDIMG_MAX_CONCURRENT_RUNS", value)
        assert jobs.max_concurrent_runs() == expected


def test_execute_records_a_medimg_error_as_failed(tmp_path: Path) -> None:
    spec = RunSpec(kind="train", dataset=DatasetConfig(path=str(one_class_dataset(tmp_path / "data")), image_size=8))
    run = runs.create_run(spec, tmp_path / "runs")
    run.update(started=1.0)  # an earlier attempt ran ...
    run.request_stop()  # ... and left its stop request behind
    with pytest.raises(DatasetError, match="only one class"):
        jobs.execute(run)
    record = run.record
    assert record["status"] == "failed" and "only one class (only)" in record["error"]
    assert record["pid"] is not None and "finished" in record
    assert not run.stop_requested()  # a (re)started run begins without the old stop request
    assert [e["status"] for e in run.events("status")] == ["queued", "running", "failed"]


def test_a_stop_requested_while_queued_ends_the_run_before_it_trains(tmp_path: Path) -> None:
    spec = RunSpec(kind="train", dataset=DatasetConfig(path=str(one_class_dataset(tmp_path / "data")), image_size=8))
    run = runs.create_run(spec, tmp_path / "runs")
    run.request_stop()  # pressed Stop before the process got going
    assert jobs.execute(run) == {}
    assert run.status == "stopped" and run.record["message"] == "stopped before it started"
    assert not run.model_path.exists() and "started" not in run.record
    assert not (run.path / "traceback.txt").exists()  # a message for people, not a bug


def test_execute_records_an_internal_error_with_its_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(run, echo=None):
        return {}["missing"]

    monkeypatch.setattr(workflows, "execute_train", broken)
    run = runs.create_run(demo_spec(1), tmp_path)
    with pytest.raises(KeyError):
        jobs.execute(run)
    record = run.record
    assert record["status"] == "failed"
    assert record["error"] == "internal error (KeyError: 'missing'); details in traceback.txt"
    assert "KeyError" in (run.path / "traceback.txt").read_text()


def test_stop_refuses_a_run_that_is_not_running(tmp_path: Path) -> None:
    run = runs.create_run(demo_spec(1), tmp_path)
    run.set_status("completed")
    with pytest.raises(RunError, match=f"run {run.id} is not running \\(status: completed\\)"):
        jobs.stop(run)
    assert not run.stop_requested()


@pytest.mark.slow
def test_launch_limit_stop_and_a_completed_launch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(PROJECT)  # the child runs `python -m medimg` from the working directory
    monkeypatch.delenv("MEDIMG_MAX_CONCURRENT_RUNS", raising=False)
    root = tmp_path / "runs"

    long_run = jobs.launch(demo_spec(500), root)
    pid = long_run.launched_pid()
    assert pid and runs.pid_alive(pid)
    assert long_run.status in runs.ACTIVE_STATUSES

    with pytest.raises(RunError, match=rf"1 run\(s\) already in progress \({long_run.id}\) and the limit is 1") as no:
        jobs.launch(demo_spec(1), root)
    assert "MEDIMG_MAX_CONCURRENT_RUNS" in str(no.value)
    assert len(runs.list_runs(root)) == 1  # the refused launch left no run folder behind

    wait_until(lambda: len(long_run.events("epoch")) >= 1, what="the first epoch of the launched run")
    assert long_run.record["status"] == "running" and long_run.record["pid"] == pid  # the child took over
    jobs.stop(long_run)
    wait_until(lambda: long_run.status not in runs.ACTIVE_STATUSES, what="the stopped run to finish")
    record = long_run.record
    assert record["status"] == "stopped", (long_run.path / "log.txt").read_text()[-2000:]
    epochs = len(long_run.read_json("history.json")["epoch"])
    assert 1 <= epochs < 500
    assert long_run.model_path.is_file() and "metrics" in record
    wait_until(lambda: not runs.pid_alive(pid), timeout=60, what="the process to exit")

    short_run = jobs.launch(demo_spec(1), root)  # the slot is free again
    wait_until(lambda: short_run.status not in runs.ACTIVE_STATUSES, what="the short run to finish")
    assert short_run.record["status"] == "completed", (short_run.path / "log.txt").read_text()[-2000:]
    assert short_run.read_json("history.json")["epoch"] == [1]
    assert (short_run.path / "log.txt").is_file()
    assert [run.id for run in runs.list_runs(root)] == [short_run.id, long_run.id]

    # Resumed (the pages' Resume button): it goes on from its last epoch, and its clock counts both stretches, not
    # the pause between them (seen: "Elapsed -2:40" on a resumed search).
    first_stretch = record["finished"] - record["started"]
    with pytest.raises(RunError, match=f"run {short_run.id} is completed; only a stopped or failed run"):
        jobs.resume(short_run)
    time.sleep(2)  # a pause the clock must not count
    jobs.resume(long_run)
    wait_until(lambda: (long_run.record.get("earlier_seconds") or 0) > 0, what="the resumed run to start")
    resumed = long_run.record
    assert resumed["earlier_seconds"] == pytest.approx(first_stretch, abs=0.01) and resumed["finished"] is None
    assert runs.progress(long_run)["elapsed_s"] >= first_stretch
    wait_until(lambda: len(long_run.events("epoch")) > epochs, what="an epoch after the resume")
    jobs.stop(long_run)
    wait_until(lambda: long_run.status not in runs.ACTIVE_STATUSES, what="the resumed run to stop")
    again = long_run.record
    assert len(long_run.read_json("history.json")["epoch"]) > epochs  # continued, not restarted
    total = first_stretch + again["finished"] - again["started"]
    assert long_run.summary()["duration_s"] == pytest.approx(total, abs=0.2)


def test_after_starting_a_process_the_launcher_never_writes_run_json(tmp_path: Path, monkeypatch) -> None:
    """A child that says "running" before `start_process` returns keeps its word: the launcher marked the run
    queued before the start and only keeps the process id beside run.json."""
    import subprocess

    run = runs.create_run(demo_spec(1), tmp_path)
    run.set_status("stopped", message="stopped on request")  # a run being resumed

    class FastChild:
        pid = os.getpid()  # alive, as a real child is

        def __init__(self, *args, **kwargs) -> None:
            assert run.record["status"] == "queued"  # marked before the process exists
            run.set_status("running", pid=self.pid)

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", FastChild)
    jobs.start_process(run)
    assert run.record["status"] == "running" and run.status == "running"
    assert run.launched_pid() == FastChild.pid and run.pid == FastChild.pid


def test_a_queued_run_whose_process_died_before_its_first_word_is_failed(tmp_path: Path) -> None:
    import subprocess

    run = runs.create_run(demo_spec(1), tmp_path)
    gone = subprocess.Popen(["true"])
    gone.wait()
    runs.write_json_atomic(run.path / runs.LAUNCHED_PID, gone.pid)
    assert run.record["status"] == "queued" and run.status == "failed"
    (run.path / runs.LAUNCHED_PID).unlink()
    assert run.status == "queued"  # no process yet, within the grace period


def test_launch_refuses_a_one_class_folder_before_making_a_run(tmp_path: Path) -> None:
    """What the Tune and Train pages' Start call: a folder of one class is a message, and no failed run is left
    for the page to open on."""
    data = one_class_dataset(tmp_path / "data")
    spec = demo_spec(1).replace(dataset=DatasetConfig(path=str(data), image_size=16, color="gray"))
    with pytest.raises(DatasetError, match="has only the class 'only'; a classifier needs at least two classes"):
        jobs.launch(spec, tmp_path / "runs")
    assert runs.list_runs(tmp_path / "runs") == []
