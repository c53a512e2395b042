"""Scale-out on KerasTuner's own engine (1 chief + 2 workers on loopback) and MirroredStrategy on 2 CPU devices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from tests.app.conftest import open_page, run_picker
from tests.conftest import DEMO, PROJECT

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_chief_and_two_workers_run_every_trial_exactly_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    address = f"127.0.0.1:{free_port()}"
    common = [
        sys.executable,
        "-m",
        "medimg",
        "tune",
        str(DEMO),
        "--runs",
        str(tmp_path),
        "--run-name",
        "shared",
        "--image-size",
        "16",
        "--max-trials",
        "4",
        "--epochs",
        "1",
        "--seed",
        "3",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    chief = subprocess.Popen(
        [*common, "--chief", address], cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    workers = [
        subprocess.Popen(
            [*common, "--worker", address],
            cwd=PROJECT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        outputs = [process.communicate(timeout=300) for process in (*workers, chief)]
    finally:
        for process in (*workers, chief):
            process.kill()
    for process, (_, stderr) in zip((*workers, chief), outputs, strict=True):
        assert process.returncode == 0, stderr[-2000:]
    run_dir = tmp_path / "shared"
    assert all(out.strip().splitlines()[-1] == str(run_dir) for out, _ in outputs)

    ended = [
        json.loads(line)
        for line in (run_dir / "events.jsonl").read_text().splitlines()
        if json.loads(line)["type"] == "trial_end"
    ]
    runs_per_trial = Counter(event["trial"] for event in ended)
    assert sorted(runs_per_trial) == ["0", "1", "2", "3"]
    assert set(runs_per_trial.values()) == {1}, runs_per_trial  # every trial ran exactly once
    assert {event["tuner_id"] for event in ended} <= {"tuner" + str(w.pid) for w in workers}
    assert not any(event["tuner_id"] == "chief" for event in ended)  # the chief only serves the oracle

    record = json.loads((run_dir / "run.json").read_text())
    trials = json.loads((run_dir / "trials.json").read_text())
    assert record["status"] == "completed" and record["trials_completed"] == 4
    best = max(trials, key=lambda t: t["score"])
    assert record["best_trial"] == best["trial_id"] and record["best_score"] == pytest.approx(best["score"])
    assert (run_dir / "model.keras").is_file() and "auc" in record["metrics"]

    # The dashboard's Tune page shows the distributed search from its folder like any other search.
    monkeypatch.setenv("MEDIMG_RUNS_DIR", str(tmp_path))
    at = open_page("tune", run="shared")
    assert not at.exception
    assert run_picker(at, "tune_run").value == "shared"
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics["Status"] == "completed" and metrics["Trials"] == "4 of 4"
    assert sorted(at.dataframe[0].value["trial"]) == [1, 2, 3, 4]  # KerasTuner's ids 0–3, numbered from 1
    best_number = int(best["trial_id"]) + 1
    assert [s.value for s in at.success] == [f"Best trial {best_number}: val_auc = {best['score']:.4f}"]


def test_mirrored_strategy_trains_on_two_logical_cpu_devices(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import json, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from medimg import jobs
        from medimg.store import runs
        from medimg.config import DatasetConfig, ModelParams, RunSpec, TrainConfig
        spec = RunSpec(kind="train", dataset=DatasetConfig(path={str(DEMO)!r}, image_size=16),
                       train=TrainConfig(epochs=1), params=ModelParams(filters=(8,), dense_units=8),
                       distribution="mirrored")
        run = runs.create_run(spec, {str(tmp_path)!r})
        jobs.execute(run)
        print(json.dumps(run.record))
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["status"] == "completed"
    assert record["replicas"] == 2
    assert record["metrics"]["auc"] is not None
