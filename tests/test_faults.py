"""Faults lose nothing: a search killed mid-trial, NaN loss, simultaneous launches, hostile model files."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from medimg import jobs
from medimg.config import DatasetConfig, ModelParams, RunSpec, SearchSpace, TrainConfig, TuneConfig
from medimg.errors import MedimgError, RunError
from medimg.imaging.contract import InputContract
from medimg.model import callbacks
from medimg.model.models import load_run_model
from medimg.store import runs
from tests.conftest import DEMO

TINY_DATA = DatasetConfig(path=str(DEMO), image_size=16)
TINY_SPACE = SearchSpace(
    filters_min=8, filters_max=16, filters_step=8, conv_blocks=(1,), dense_units=(8,), batch_sizes=(8,)
)


def tune_spec(trials: int = 3, epochs: int = 15) -> RunSpec:
    return RunSpec(
        kind="tune",
        dataset=TINY_DATA,
        search=TINY_SPACE,
        tune=TuneConfig(max_trials=trials),
        train=TrainConfig(epochs=epochs, early_stopping_patience=0),
    )


@pytest.mark.slow
def test_search_killed_mid_trial_keeps_completed_trials_and_reruns_the_interrupted_one(tmp_path: Path) -> None:
    run = jobs.launch(tune_spec(), tmp_path)
    try:
        deadline = time.time() + 240
        while True:  # kill while trial 1 is training, after trial 0 completed
            events = run.events()
            if (
                any(e["type"] == "trial_end" for e in events)
                and sum(e["type"] == "epoch" and e.get("trial") == "1" for e in events) >= 2
            ):
                break
            assert time.time() < deadline, "the search never reached trial 1"
            time.sleep(0.05)
        os.kill(run.pid, signal.SIGKILL)
    finally:
        try:
            os.kill(run.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.5)
    assert run.status == "failed"
    jobs.execute(run)  # `python -m medimg resume RUN`

    assert run.status == "completed"
    ended = [e["trial"] for e in run.events("trial_end")]
    begun = [e["trial"] for e in run.events("trial_begin")]
    assert sorted(ended) == ["0", "1", "2"]  # trial 0 was kept, not run again
    assert begun.count("0") == 1 and begun.count("1") == 2 and begun.count("2") == 1  # 1 re-run exactly once
    # A 16 px trial may call every validation image one class: it is then recorded as collapsed, not completed;
    # when all three did, the least bad is kept under a warning and they count as the completed ones.
    record = run.record
    if record["search_warning"]:
        assert record["trials_collapsed"] == ["0", "1", "2"] and record["trials_completed"] == 3
    else:
        assert record["trials_completed"] + len(record["trials_collapsed"]) == 3


def test_nan_loss_fails_the_run_with_a_message_and_no_traceback(tmp_path: Path) -> None:
    # A weight decay of 1e30 makes the first loss infinite: the run must end with a message saying what to do.
    spec = RunSpec(
        kind="train",
        dataset=TINY_DATA,
        train=TrainConfig(epochs=3),
        params=ModelParams(filters=(8,), dense_units=8, l2=1e30),
    )
    run = runs.create_run(spec, tmp_path)
    with pytest.raises(MedimgError, match="the loss became NaN at epoch 1") as raised:
        jobs.execute(run)
    assert "Lower the learning rate" in str(raised.value)
    assert run.status == "failed" and "NaN" in run.record["error"]
    assert not (run.path / "traceback.txt").exists()  # an expected failure, not a bug


def test_best_weights_keeper_ignores_diverged_epochs() -> None:
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    keeper = callbacks.BestWeights("val_auc", "max")
    keeper.set_model(model)
    keeper.on_epoch_end(0, {"loss": 0.7, "val_auc": 0.6})
    first = [w.copy() for w in keeper.weights]
    model.set_weights([w + 1 for w in model.get_weights()])
    keeper.on_epoch_end(1, {"loss": 0.6, "val_auc": 0.8})
    model.set_weights([w + 1 for w in model.get_weights()])
    keeper.on_epoch_end(2, {"loss": math.nan, "val_auc": 0.9})  # diverged: its "better" score is not trusted
    keeper.on_epoch_end(3, {"loss": 0.5, "val_auc": math.nan})
    assert keeper.epoch == 1 and keeper.value == 0.8
    assert np.allclose(keeper.weights[0], first[0] + 1)


@pytest.mark.parametrize(("limit", "launched"), [(1, 1), (3, 3)])
def test_simultaneous_launches_get_separate_folders_or_a_clear_refusal(
    tmp_path: Path, limit: int, launched: int
) -> None:
    spec = RunSpec(
        kind="train", dataset=TINY_DATA, train=TrainConfig(epochs=1), params=ModelParams(filters=(8,), dense_units=8)
    )
    started: list[runs.Run] = []
    refused: list[str] = []
    barrier = threading.Barrier(3)

    def tab() -> None:
        barrier.wait()
        try:
            started.append(jobs.launch(spec, tmp_path, limit=limit))
        except RunError as error:
            refused.append(str(error))

    threads = [threading.Thread(target=tab) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(started) == launched and len(refused) == 3 - launched
        assert all("already in progress" in message and "MEDIMG_MAX_CONCURRENT_RUNS" in message for message in refused)
        assert len({run.path for run in started}) == launched  # no folder shared
        deadline = time.time() + 240
        while any(run.status in runs.ACTIVE_STATUSES for run in started):
            assert time.time() < deadline
            time.sleep(0.2)
        assert all(run.status == "completed" for run in started)
    finally:
        for run in started:
            try:
                os.kill(run.pid, signal.SIGKILL)
            except (ProcessLookupError, TypeError):
                pass


def test_a_model_with_a_lambda_layer_is_refused_without_running_its_code(tmp_path: Path) -> None:
    import keras

    marker = tmp_path / "side-effect"

    # A lambda is stored as Python bytecode in the file: arbitrary code, here one that leaves a mark when it runs.
    hostile = keras.layers.Lambda(lambda x, path: (open(path, "w").close(), x * 2)[1], arguments={"path": str(marker)})
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, hostile(inputs))
    run = runs.create_run(RunSpec(kind="train", dataset=TINY_DATA), tmp_path)
    run.save_model(model)  # recorded hash matches: only safe mode stands between the file and its code
    marker.unlink()  # building the model ran it once; loading must not
    with zipfile.ZipFile(run.model_path) as archive:
        assert b"Lambda" in archive.read("config.json")
    with pytest.raises(ValueError, match=r"(?i)lambda|unsafe|safe_mode"):
        load_run_model(run)
    assert not marker.exists()


def test_only_this_apps_runs_are_loaded(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "model.keras").write_bytes(b"PK\x03\x04 not really a model")
    with pytest.raises(RunError, match="no run"):  # a folder without run.json is never treated as a run
        load_run_model(runs.find_run(str(outside), tmp_path / "runs"))
    with pytest.raises(RunError, match="not a medimg run"):
        load_run_model(runs.Run(outside))


def _decoder_crashes_on(monkeypatch: pytest.MonkeyPatch, name: str, function: str) -> None:
    """`images.<function>` raises what a library raised in the field (pydicom's struct.error on a malformed header)
    for the one file called `name`; every other file is decoded for real."""
    import struct

    from medimg.imaging import images

    real = getattr(images, function)

    def crashing(source, *args, **kwargs):
        if str(source).endswith(name):
            raise struct.error("unpack requires a buffer of 4 bytes")
        return real(source, *args, **kwargs)

    monkeypatch.setattr(images, function, crashing)


def test_a_decoder_crash_on_one_file_is_its_reason_and_the_cache_build_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medimg.datasets import cache

    files = sorted((DEMO / "val" / "NORMAL").glob("*.jpeg"))[:3]
    _decoder_crashes_on(monkeypatch, files[1].name, "load_image")
    arrays = cache.load_arrays([str(f) for f in files], [0, 0, 0], InputContract(16, "gray"))
    assert arrays.images.shape == (2, 16, 16, 1)
    assert arrays.failures == [
        {"path": str(files[1]), "reason": "the decoder failed (struct.error: unpack requires a buffer of 4 bytes)"}
    ]


def test_a_decoder_crash_on_one_file_is_listed_by_the_scan_and_the_rest_scanned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from medimg.datasets import scanning
    from medimg.imaging import images

    data = tmp_path / "data"
    shutil.copytree(DEMO / "val", data)
    victim = sorted((data / "PNEUMONIA").glob("*.jpeg"))[0]
    real = images.inspect

    def crashing(content: bytes):
        if content == victim.read_bytes():
            raise NotImplementedError("Conversion from YBR_RCT to RGB is not supported.")
        return real(content)

    monkeypatch.setattr(images, "inspect", crashing)
    report = scanning.scan(data)
    assert report.image_count == sum(1 for _ in data.rglob("*.jpeg")) - 1
    assert report.unreadable == [
        {
            "path": str(victim),
            "reason": "the decoder failed (NotImplementedError: Conversion from YBR_RCT to RGB is not supported.)",
        }
    ]
