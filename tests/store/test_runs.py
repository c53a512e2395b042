"""The run directory: creation, atomic writes, events, history, listing, lookup, model hash, deletion."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from medimg.config import RunSpec, TrainConfig
from medimg.errors import RunError
from medimg.model.models import load_run_model
from medimg.store import runs

SPEC = RunSpec(kind="train", train=TrainConfig(epochs=3))


def dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_run(root: Path, run_id: str, **record) -> runs.Run:
    path = root / run_id
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"id": run_id, "spec": SPEC.to_dict(), "status": "completed", **record}))
    return runs.Run(path)


def test_create_run_writes_the_record_and_a_first_event(tmp_path: Path) -> None:
    run = runs.create_run(SPEC, tmp_path / "runs")
    assert run.path.parent == tmp_path / "runs"
    assert run.id.startswith("train-") and run.id == run.path.name
    record = run.record
    assert record["id"] == run.id and record["status"] == "queued" and record["pid"] is None
    assert abs(record["created"] - time.time()) < 60
    assert run.spec == SPEC
    assert [e["status"] for e in run.events("status")] == ["queued"]


def test_runs_root_comes_from_argument_environment_or_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIMG_RUNS_DIR", str(tmp_path / "env"))
    assert runs.runs_root() == tmp_path / "env"
    assert runs.runs_root(tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv("MEDIMG_RUNS_DIR")
    assert runs.runs_root() == Path("runs")


def test_failed_write_leaves_the_old_record_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = runs.create_run(SPEC, tmp_path)
    before = (run.path / "run.json").read_bytes()

    def dies_half_way(obj, stream, **kwargs):
        stream.write('{"id": "half of a rec')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        run.update(status="running")
    monkeypatch.undo()
    assert (run.path / "run.json").read_bytes() == before
    assert run.record["status"] == "queued"
    assert sorted(p.name for p in run.path.iterdir()) == ["events.jsonl", "run.json"]


def test_write_json_round_trips_other_files(tmp_path: Path) -> None:
    run = runs.create_run(SPEC, tmp_path)
    run.write_json("metrics.json", {"auc": 0.9, "path": Path("/x")})
    assert run.read_json("metrics.json") == {"auc": 0.9, "path": "/x"}
    assert run.read_json("missing.json") is None
    (run.path / "broken.json").write_text("{")
    assert run.read_json("broken.json") is None


def test_run_ids_are_unique_under_concurrent_creation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Make the random part collide on purpose: every token is handed out twice, so half the creators
    # find their folder taken and must try again rather than share it.
    counter = itertools.count()
    lock = threading.Lock()

    def colliding_token(nbytes: int) -> str:
        with lock:
            return f"{next(counter) // 2:04x}"

    monkeypatch.setattr(runs.secrets, "token_hex", colliding_token)
    created: list[runs.Run] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(12)

    def create() -> None:
        barrier.wait()
        try:
            created.append(runs.create_run(SPEC, tmp_path))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=create) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({run.id for run in created}) == 12
    assert len(list(tmp_path.iterdir())) == 12
    for run in created:  # nobody overwrote anybody's record
        assert run.record["id"] == run.id
        assert len(run.events()) == 1


def test_list_runs_newest_first_across_kinds(tmp_path: Path) -> None:
    write_run(tmp_path, "tune-20240105-090000-aaaa")
    write_run(tmp_path, "train-20240107-120000-bbbb")
    write_run(tmp_path, "train-20240101-000000-cccc")
    write_run(tmp_path, "tune-20240107-115959-dddd")
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "stray.txt").write_text("x")
    assert [run.id for run in runs.list_runs(tmp_path)] == [
        "train-20240107-120000-bbbb",
        "tune-20240107-115959-dddd",
        "tune-20240105-090000-aaaa",
        "train-20240101-000000-cccc",
    ]
    assert runs.list_runs(tmp_path / "nothing-here") == []


def test_find_run_by_path_or_id_and_its_errors(tmp_path: Path) -> None:
    run = runs.create_run(SPEC, tmp_path)
    assert runs.find_run(run.path).path == run.path
    assert runs.find_run(run.id, tmp_path).path == run.path
    with pytest.raises(RunError, match=r"no run 'train-nope' \(looked for .*\); `python -m medimg runs` lists them"):
        runs.find_run("train-nope", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="no run"):
        runs.find_run(tmp_path / "empty", tmp_path)


def test_record_errors_for_non_runs(tmp_path: Path) -> None:
    with pytest.raises(RunError, match=r"is not a medimg run \(no run\.json\)"):
        _ = runs.Run(tmp_path).record
    (tmp_path / "run.json").write_text('{"id": ')
    with pytest.raises(RunError, match=r"run\.json is damaged"):
        _ = runs.Run(tmp_path).record


def test_status_changes_times_and_events(tmp_path: Path) -> None:
    run = runs.create_run(SPEC, tmp_path)
    run.set_status("running", pid=os.getpid())
    assert run.status == "running" and "started" in run.record
    run.set_status("failed", error="out of memory")
    record = run.record
    assert record["status"] == "failed" and record["error"] == "out of memory" and "finished" in record
    statuses = run.events("status")
    assert [e["status"] for e in statuses] == ["queued", "running", "failed"]
    assert statuses[-1]["error"] == "out of memory"


def test_active_status_with_a_dead_process_reads_as_failed(tmp_path: Path) -> None:
    run = runs.create_run(SPEC, tmp_path)
    run.update(status="running", pid=dead_pid())
    assert run.record["status"] == "running"
    assert run.status == "failed"
    runs.delete_run(run)  # not active any more: may be deleted
    assert not run.path.exists()


def test_a_killed_run_is_recorded_failed_at_its_last_sign_of_life_and_a_resume_counts_that_stretch(
    tmp_path: Path,
) -> None:
    """Seen: a killed run shown "failed" with its Elapsed and ETA still growing, no reason on the page, and a
    resume that lost the stretch before the kill."""
    run = runs.create_run(SPEC, tmp_path)
    run.set_status("running", pid=dead_pid())
    run.update(started=time.time() - 100)
    run.append_event("epoch", epoch=0, logs={"loss": 1.0})
    last_event = (run.path / "events.jsonl").stat().st_mtime
    os.utime(run.path / "events.jsonl", (last_event - 40, last_event - 40))  # the process died 40 s ago
    assert run.status == "failed"
    record = run.record
    assert record["status"] == "failed" and record["error"] == runs.DIED_WITHOUT_A_WORD
    assert record["finished"] == pytest.approx(last_event - 40, abs=0.01)
    elapsed = runs.running_seconds(record)
    assert elapsed == pytest.approx(60, abs=1.0)
    time.sleep(0.05)
    assert runs.running_seconds(run.record) == elapsed  # the clock has stopped
    assert runs.progress(run)["error"] == runs.DIED_WITHOUT_A_WORD
    run.set_status("running", pid=os.getpid(), error=None)  # resumed
    assert run.record["earlier_seconds"] == pytest.approx(60, abs=1.0)


def test_a_run_completed_after_a_resume_shows_no_stop_advice(tmp_path: Path) -> None:
    """Seen: "completed 40 of 40" under "stopped on request after 26 epochs; … continue with: … resume"."""
    run = runs.create_run(SPEC, tmp_path)
    run.set_status("running", pid=os.getpid())
    run.set_status("stopped", message="stopped on request after 26 epochs; continue with: python -m medimg resume X")
    assert runs.progress(run)["message"].startswith("stopped on request after 26 epochs")
    run.set_status("running", pid=os.getpid(), error=None)
    run.set_status("completed")
    assert run.record["message"] is None and runs.progress(run)["message"] == ""


def test_delete_refuses_an_active_run(tmp_path: Path) -> None:
    run = runs.create_run(SPEC, tmp_path)
    run.update(status="running", pid=os.getpid())
    with pytest.raises(RunError, match=f"run {run.id} is still running; stop it before deleting it"):
        runs.delete_run(run)
    assert run.path.exists()
    queued = runs.create_run(SPEC, tmp_path)  # queued and no process yet: also active
    with pytest.raises(RunError, match="is still starting"):
        runs.delete_run(queued)
    run.set_status("completed")
    runs.delete_run(run)
    assert not run.path.exists()


def test_events_skip_a_line_being_written(tmp_path: Path) -> None:
    run = runs.create_run(SPEC, tmp_path)
    run.append_event("epoch", epoch=0, logs={"loss": 1.0})
    with open(run.path / "events.jsonl", "a") as stream:
        stream.write('{"t": 1, "type": "epo')  # another process is half way through a line
    assert [e["type"] for e in run.events()] == ["status", "epoch"]
    assert run.events("epoch")[0]["logs"] == {"loss": 1.0}


def test_epoch_history_continues_across_a_resume_and_separates_trials(tmp_path: Path) -> None:
    run = runs.create_run(SPEC, tmp_path)
    run.append_event("epoch", epoch=0, logs={"loss": 0.9, "val_auc": 0.6})
    run.append_event("epoch", epoch=1, logs={"loss": 0.8, "val_auc": 0.7})
    run.append_event("epoch", epoch=0, trial="03", logs={"loss": 5.0})
    # Interrupted during epoch 3, resumed from the backup after epoch 2: epoch index 1 is run again.
    run.append_event("epoch", epoch=1, logs={"loss": 0.75, "val_auc": 0.72})
    run.append_event("epoch", epoch=2, logs={"loss": 0.7, "val_auc": 0.8})
    assert run.epoch_history() == {"epoch": [1, 2, 3], "loss": [0.9, 0.75, 0.7], "val_auc": [0.6, 0.72, 0.8]}
    assert run.epoch_history(trial="03") == {"epoch": [1], "loss": [5.0]}
    assert runs.Run(tmp_path / "x").epoch_history() == {"epoch": []}


def test_stop_request(tmp_path: Path) -> None:
    run = runs.create_run(SPEC, tmp_path)
    assert not run.stop_requested()
    run.request_stop()
    assert run.stop_requested()
    assert run.events()[-1]["type"] == "stop_requested"


def test_summary(tmp_path: Path) -> None:
    run = write_run(
        tmp_path,
        "train-20240101-000000-abcd",
        created=100.0,
        started=110.0,
        finished=170.5,
        metrics={"auc": 0.91, "accuracy": 0.85},
    )
    summary = run.summary()
    assert summary["id"] == "train-20240101-000000-abcd" and summary["kind"] == "train"
    assert summary["duration_s"] == 60.5
    assert (summary["test_auc"], summary["test_accuracy"]) == (0.91, 0.85)
    assert summary["status"] == "completed"
    row = run.table_row()
    assert row["run"] == "train-20240101-000000-abcd" and row["kind"] == "training"
    assert row["started"] == time.strftime("%Y-%m-%d %H:%M", time.localtime(100.0))
    assert row["duration"] == "1:00" and (row["test AUC"], row["test accuracy (arg-max)"]) == ("0.910", "0.850")
    assert row["validation"] == "–"  # no history.json: nothing known on validation, shown as a dash, not None


def test_a_search_lists_its_saved_models_validation_score_not_its_best_trials(tmp_path: Path) -> None:
    tune = RunSpec(kind="tune").to_dict()
    searched = write_run(tmp_path, "tune-20240101-000000-aaaa", best_score=0.990, objective="val_auc")
    (searched.path / "run.json").write_text(json.dumps({**searched.record, "spec": tune}))
    # Before evaluation only the best trial's score (taken during training) is known.
    assert searched.table_row()["validation"] == "AUC 0.990"
    searched.update(metrics={"auc": 0.91, "validation": {"auc": 0.972, "accuracy": 0.9, "loss": 0.3}})
    assert searched.validation_score() == {"val_metric": "val_auc", "val_score": 0.972}
    assert searched.table_row()["validation"] == "AUC 0.972"
    # A cross-validated search's trial score is on folds of the training split: named so until evaluated.
    folds = write_run(tmp_path, "tune-20240101-000001-bbbb", best_score=0.746, objective="val_auc")
    (folds.path / "run.json").write_text(
        json.dumps({**folds.record, "spec": {**tune, "tune": {**tune["tune"], "cv_folds": 2}}})
    )
    assert folds.table_row()["validation"] == "cross-validated AUC 0.746"
    folds.update(metrics={"validation": {"auc": 0.801, "accuracy": 0.5, "loss": 1.2}})
    assert folds.table_row()["validation"] == "AUC 0.801"
    # A training's monitor picks the matching figure: its loss on validation for val_loss.
    trained = write_run(tmp_path, "train-20240101-000002-cccc", monitor="val_loss")
    trained.update(metrics={"validation": {"auc": 0.8, "accuracy": 0.7, "loss": 0.45}})
    assert trained.table_row()["validation"] == "loss 0.450"


@pytest.fixture(scope="module")
def tiny_model():
    import keras

    from medimg.config import ModelParams
    from medimg.model import models

    keras.utils.set_random_seed(0)
    return models.build_model(ModelParams(filters=(2,), dense_units=0), (8, 8, 1), 2)


def test_model_round_trip_with_hash(tmp_path: Path, tiny_model) -> None:
    import numpy as np

    run = runs.create_run(SPEC, tmp_path)
    with pytest.raises(RunError, match=f"run {run.id} has no model yet"):
        load_run_model(run)
    run.save_model(tiny_model)
    assert run.record["model_sha256"] == runs.file_sha256(run.model_path)
    assert not list(run.path.glob(".model*"))  # the temporary file was renamed into place
    loaded = load_run_model(run)
    batch = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(batch)), np.asarray(tiny_model(batch)), rtol=1e-6)


def test_tampered_model_is_refused(tmp_path: Path, tiny_model) -> None:
    run = runs.create_run(SPEC, tmp_path)
    run.save_model(tiny_model)
    with open(run.model_path, "ab") as stream:
        stream.write(b"\x00")
    with pytest.raises(RunError, match=r"model\.keras does not match the hash recorded when it was saved"):
        load_run_model(run)


def test_model_without_recorded_hash_is_refused(tmp_path: Path, tiny_model) -> None:
    run = runs.create_run(SPEC, tmp_path)
    tiny_model.save(run.model_path)  # put there by hand, not by medimg
    with pytest.raises(RunError, match="does not match the hash"):
        load_run_model(run)


def test_progress_of_a_running_training(tmp_path: Path) -> None:
    run = runs.create_run(RunSpec(kind="train", train=TrainConfig(epochs=4)), tmp_path)
    run.set_status("running", pid=os.getpid())
    run.update(started=time.time() - 10)  # ten seconds in
    run.append_event("epoch", epoch=0, epochs=4, logs={"loss": 0.9})
    time.sleep(0.01)  # events are stamped to the millisecond; the batch tick comes later
    run.append_event("batch", epoch=1, batch=3, steps=5, epochs=4)
    state = runs.progress(run)
    assert state["status"] == "running" and state["kind"] == "train"
    assert state["fraction"] == pytest.approx(1 / 4)  # one of four epochs finished
    assert (state["epoch"], state["batch"], state["steps"], state["epochs"]) == (1, 3, 5, 4)
    assert 9 < state["elapsed_s"] < 60
    assert state["eta_s"] == pytest.approx(state["elapsed_s"] * 3, rel=0.01)  # 3 epochs left at the same pace
    run.append_event("epoch", epoch=1, epochs=4, logs={"loss": 0.8})
    run.set_status("stopped", message="stopped on request after 2 epochs; model saved")
    state = runs.progress(run)
    assert state["fraction"] == pytest.approx(2 / 4) and state["eta_s"] is None
    assert state["message"] == "stopped on request after 2 epochs; model saved"


def test_progress_of_a_search_counts_finished_trials(tmp_path: Path) -> None:
    from medimg.config import TuneConfig

    run = runs.create_run(RunSpec(kind="tune", tune=TuneConfig(max_trials=4)), tmp_path)
    run.set_status("running", pid=os.getpid())
    for trial in ("0", "1"):
        run.append_event("trial_begin", trial=trial)
        run.append_event("epoch", trial=trial, epoch=0, logs={"val_auc": 0.5})
        run.append_event("trial_end", trial=trial)
    run.append_event("trial_begin", trial="2")
    state = runs.progress(run)
    assert (state["trials_done"], state["max_trials"]) == (2, 4)
    assert state["fraction"] == pytest.approx(0.5)
    # The running trial counts by its finished epochs: 2 trials and half of the third of 4.
    run.append_event("epoch", trial="2", epoch=0, epochs=2, logs={"val_auc": 0.5})
    assert runs.progress(run)["fraction"] == pytest.approx(2.5 / 4)
    assert runs.progress(run)["eta_s"] is not None
    # A trial cut short by a stop ends, but is not done: the count must agree with the run's "after 2 completed
    # trials" message.
    # KerasTuner ends it COMPLETED; medimg's trial_stopped event says what it was (as a collapsed trial's does).
    run.append_event("trial_stopped", trial="2", epoch=0, epochs=2)
    run.append_event("trial_end", trial="2", status="COMPLETED")
    run.append_event("trial_collapsed", trial="1", called="NORMAL")
    state = runs.progress(run)
    assert (state["trials_done"], state["trials_collapsed"], state["trials_other"]) == (2, 1, {"stopped": 1})
    assert state["fraction"] == pytest.approx(3 / 4)


def test_a_cross_validated_trials_curve_is_the_mean_over_its_folds(tmp_path: Path) -> None:
    run = runs.create_run(RunSpec(kind="tune"), tmp_path)
    for fold, losses in enumerate(([0.9, 0.7], [0.5, 0.3], [0.4])):
        for epoch, loss in enumerate(losses):
            run.append_event("epoch", trial="0", epoch=epoch, fold=fold, logs={"loss": loss})
    run.append_event("epoch", trial="1", epoch=0, logs={"loss": 0.2})  # no folds: as it is
    histories = run.trial_histories()
    assert histories["0"]["epoch"] == [1, 2]
    assert histories["0"]["loss"] == pytest.approx([(0.9 + 0.5 + 0.4) / 3, (0.7 + 0.3) / 2])  # folds that got there
    assert histories["1"]["loss"] == [0.2]


def test_a_resumed_runs_clock_counts_every_stretch_and_not_the_pause(tmp_path: Path) -> None:
    """Seen: "Elapsed -2:40" for a resumed search: `finished` kept from the stop, `started` reset at the resume."""
    run = write_run(tmp_path, "tune-20240101-000000-dddd", started=1000.0, finished=1065.0, status="stopped")
    run.set_status("running")
    record = run.record
    assert record["earlier_seconds"] == 65.0 and record["finished"] is None
    assert 65.0 <= runs.progress(run)["elapsed_s"] < 65.0 + 60
    run.update(started=record["started"] - 30)  # 30 s into the second stretch
    run.set_status("stopped")
    assert run.summary()["duration_s"] == pytest.approx(95.0, abs=1.0)
    run.set_status("running")  # a second resume adds the second stretch
    assert run.record["earlier_seconds"] == pytest.approx(95.0, abs=1.0)


def test_a_search_retraining_its_best_trials_says_so_while_it_runs(tmp_path: Path) -> None:
    run = runs.create_run(RunSpec(kind="tune"), tmp_path)
    run.set_status("running", pid=os.getpid())
    run.append_event("trial_end", trial="02", score=0.8, status="COMPLETED")
    assert runs.progress(run)["stage"] == ""
    run.append_event("refit", trial="02", number=1, of=5, epochs=23, seconds=14.2)
    assert runs.progress(run)["stage"] == (
        "Retraining trial 3's configuration on train + val (1 of 5, 23 epochs, about 14 s) to join the final model"
    )
    run.set_status("completed")
    assert runs.progress(run)["stage"] == ""


def test_the_early_stopping_message_gives_the_saved_models_own_score_when_it_differs() -> None:
    """Seen in review: the Train page said "(val_auc 0.8399)" for a run the run lists show at 0.823: Keras'
    figure is taken during training, the lists score the saved model again."""
    stop = {"epochs_run": 20, "epochs": 40, "monitor": "val_auc", "patience": 5, "best_epoch": 15, "best_value": 0.8399}
    record = {"status": "completed", "early_stopping": stop, "metrics": {"validation": {"auc": 0.8225}}}
    message = runs._early_stop_message(record)
    assert "weights of epoch 15 (val_auc 0.8399)." in message
    assert message.endswith(
        "Scored again on the saved model, as the run lists show it: val_auc 0.8225 (the figure "
        "above was taken during training)."
    )
    record["metrics"]["validation"]["auc"] = 0.8401  # the same figure, to four places: said once
    assert "Scored again" not in runs._early_stop_message(record)
