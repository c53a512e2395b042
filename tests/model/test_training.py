"""Training: data preparation, class weights, callbacks (stop request, deadline, NaN), execute_train and resume."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from medimg import jobs
from medimg.config import AugmentConfig, DatasetConfig, ModelParams, RunSpec, TrainConfig
from medimg.errors import DatasetError
from medimg.model import callbacks, training
from medimg.store import runs
from tests.conftest import BREASTMNIST, DEMO

PARAMS = ModelParams(filters=(4, 8), dense_units=8, batch_size=16)
DATASET = DatasetConfig(path=str(DEMO), image_size=16, color="gray")


def train_spec(**train) -> RunSpec:
    config = TrainConfig(early_stopping_patience=0, reduce_lr_patience=0, **train)
    return RunSpec(kind="train", dataset=DATASET, params=PARAMS, train=config)


@pytest.fixture(scope="module")
def demo_data() -> training.PreparedData:
    return training.prepare_data(DATASET)


class BatchCounter:
    """A Keras callback counting the training batches actually run."""

    def __new__(cls):
        import keras

        class Counter(keras.callbacks.Callback):
            batches = 0

            def on_train_batch_end(self, batch, logs=None):
                self.batches += 1

        return Counter()


# ---------------------------------------------------------------- class weights (no TensorFlow)


def test_balanced_class_weights_by_hand() -> None:
    labels = np.array([0] * 30 + [1] * 10)
    # n / (k × count): 40 / (2 × 30) = 2/3 and 40 / (2 × 10) = 2.
    weights = training.class_weights(labels, 2, "balanced")
    assert weights == pytest.approx({0: 2 / 3, 1: 2.0})
    assert training.class_weights(labels, 2, "auto") == pytest.approx({0: 2 / 3, 1: 2.0})  # 3× imbalance
    assert training.class_weights(labels, 2, "none") is None


def test_auto_weights_only_beyond_one_and_a_half() -> None:
    nearly_even = np.array([0] * 12 + [1] * 10)  # 1.2×
    assert training.class_weights(nearly_even, 2, "auto") is None
    assert training.class_weights(nearly_even, 2, "balanced") == pytest.approx({0: 22 / 24, 1: 22 / 20})
    three = np.array([0] * 10 + [1] * 20 + [2] * 30)
    assert training.class_weights(three, 3, "auto") == pytest.approx({0: 2.0, 1: 1.0, 2: 2 / 3})


def test_no_weights_when_a_class_is_absent() -> None:
    assert training.class_weights(np.array([0, 0, 2, 2]), 3, "balanced") is None


def test_monitor_mode_and_fit_callbacks() -> None:
    assert training.monitor_mode("val_loss") == "min" and training.monitor_mode("val_auc") == "max"
    names = [type(c).__name__ for c in training.fit_callbacks(TrainConfig(), "val_auc", "max")]
    assert names == ["TerminateOnNaN", "EarlyStopping", "ReduceLROnPlateau"]
    off = TrainConfig(early_stopping_patience=0, reduce_lr_patience=0)
    assert [type(c).__name__ for c in training.fit_callbacks(off, "val_auc", "max")] == ["TerminateOnNaN"]
    early = training.fit_callbacks(TrainConfig(early_stopping_patience=4), "val_loss", "min")[1]
    assert (early.monitor, early.patience, early.restore_best_weights) == ("val_loss", 4, True)


# ---------------------------------------------------------------- data preparation


def test_prepare_data_on_the_demo(demo_data: training.PreparedData) -> None:
    assert demo_data.class_names == ["NORMAL", "PNEUMONIA"]
    assert demo_data.input_shape == (16, 16, 1) and demo_data.num_classes == 2
    summary = demo_data.summary()
    assert summary["split_counts"] == {
        "train": {"NORMAL": 40, "PNEUMONIA": 40},
        "val": {"NORMAL": 15, "PNEUMONIA": 15},
        "test": {"NORMAL": 15, "PNEUMONIA": 15},
    }
    assert summary["split_source"] == "dataset" and summary["unreadable"] == []
    json.dumps(summary)  # goes into run.json as is


def test_prepare_data_reports_unreadable_files(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir(parents=True)
        for path in sorted((DEMO / "train" / label).glob("*.jpeg"))[:10]:
            shutil.copy(path, root / label / path.name)
    (root / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    data = training.prepare_data(DatasetConfig(path=str(root), image_size=16, val_fraction=0.2, test_fraction=0.2))
    reasons = {Path(item["path"]).name: item["reason"] for item in data.unreadable}
    assert list(reasons) == ["broken.jpeg"] and "JPEG" in reasons["broken.jpeg"]
    assert sum(len(a) for a in data.arrays.values()) == 20


def test_an_empty_test_split_is_refused_before_training(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for label in ("NORMAL", "PNEUMONIA"):
        shutil.copytree(DEMO / "train" / label, root / label)
    with pytest.raises(DatasetError, match="the test split is empty"):
        training.prepare_data(DatasetConfig(path=str(root), image_size=16, val_fraction=0.2, test_fraction=0.0))


def test_a_class_with_only_unreadable_training_images_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "train" / "a").mkdir(parents=True)
    (root / "train" / "b").mkdir(parents=True)
    (root / "val" / "a").mkdir(parents=True)
    (root / "val" / "b").mkdir(parents=True)
    for i, path in enumerate(sorted((DEMO / "train" / "NORMAL").glob("*.jpeg"))[:6]):
        shutil.copy(path, root / ("train" if i < 4 else "val") / "a" / path.name)
    shutil.copy(path, root / "val" / "b" / "x.jpeg")
    (root / "train" / "b" / "fake.jpeg").write_text("not an image")
    with pytest.raises(DatasetError, match="class b has no training images"):  # the split, before any decoding
        training.prepare_data(DatasetConfig(path=str(root), image_size=16))


# ---------------------------------------------------------------- callbacks


def test_stop_request_ends_fit_at_the_next_batch(tmp_path: Path, demo_data: training.PreparedData) -> None:
    run = runs.create_run(train_spec(epochs=3), tmp_path)
    run.request_stop()
    progress = callbacks.ProgressEvents(run)
    counter = BatchCounter()
    _, history = training.fit_model(PARAMS, demo_data, AugmentConfig(), TrainConfig(epochs=3), [progress, counter])
    assert counter.batches == 1  # 80 images / 16 = 5 batches per epoch; only the first ran
    assert len(history.history["loss"]) == 1  # the epoch in progress is closed, no further epoch
    assert progress.stopped_by_request
    assert run.events("batch")[0]["batch"] == 1 and run.events("batch")[0]["steps"] == 5
    assert [e["epoch"] for e in run.events("epoch")] == [0]


def test_deadline_ends_fit_without_a_run(demo_data: training.PreparedData) -> None:
    progress = callbacks.ProgressEvents(None, deadline=time.time() - 1)
    counter = BatchCounter()
    _, history = training.fit_model(PARAMS, demo_data, AugmentConfig(), TrainConfig(epochs=4), [progress, counter])
    assert counter.batches == 1 and len(history.history["loss"]) == 1
    assert not progress.stopped_by_request  # it was the time budget, not the user


def test_a_trial_the_deadline_ends_is_recorded_as_cut_by_the_budget(
    tmp_path: Path, demo_data: training.PreparedData
) -> None:
    run = runs.create_run(train_spec(epochs=4), tmp_path)
    progress = callbacks.ProgressEvents(run, trial="003", deadline=time.time() - 1)
    counter = BatchCounter()
    training.fit_model(PARAMS, demo_data, AugmentConfig(), TrainConfig(epochs=4), [progress, counter])
    # KerasTuner would call this trial COMPLETED; the event says it ran short of its plan, once.
    assert [(e["trial"], e["epoch"], e["epochs"]) for e in run.events("trial_cut_by_budget")] == [("003", 0, 4)]
    assert counter.batches == 1
    from medimg.model import tuning

    assert tuning.budget_cut_trials(run)["003"]["epoch"] == 0


def test_nan_in_epoch_logs_stops_training() -> None:
    import keras

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    progress = callbacks.ProgressEvents(None, echo=lambda line: None)
    model.stop_training = False  # as fit() sets it
    progress.set_model(model)
    progress.set_params({"epochs": 5, "steps": 2})
    progress.on_train_begin()
    progress.on_epoch_begin(0)
    progress.on_epoch_end(0, {"loss": 0.5})
    assert not model.stop_training
    progress.on_epoch_begin(1)
    progress.on_epoch_end(1, {"loss": math.nan})
    assert model.stop_training


def test_fit_is_reproducible_from_the_seed(demo_data: training.PreparedData) -> None:
    config = TrainConfig(epochs=1, seed=11)
    augment = AugmentConfig(flip_horizontal=True, rotation=0.05)
    first, _ = training.fit_model(PARAMS, demo_data, augment, config, [])
    second, _ = training.fit_model(PARAMS, demo_data, augment, config, [])
    # The seed fixes initialisation, shuffling and augmentation. TensorFlow's multi-threaded CPU kernels may still
    # sum in a different order under load (bit-exactness needs op determinism, which costs speed), so allow
    # round-off that one epoch can amplify, far below what another seed changes.
    same = max(float(np.abs(a - b).max()) for a, b in zip(first.get_weights(), second.get_weights(), strict=True))
    other, _ = training.fit_model(PARAMS, demo_data, augment, config.replace(seed=12), [])
    changed = max(float(np.abs(a - b).max()) for a, b in zip(first.get_weights(), other.get_weights(), strict=True))
    assert same < 0.01 and changed > 0.05, (same, changed)


def test_weight_averaging_validates_keeps_and_returns_the_moving_average(demo_data: training.PreparedData) -> None:
    import keras

    momentum = 0.9
    params = PARAMS.replace(ema_momentum=momentum)
    config = TrainConfig(epochs=4, early_stopping_patience=10, reduce_lr_patience=0, monitor="val_loss", seed=3)

    class Recorder(keras.callbacks.Callback):
        """The raw weights after every step, and at every epoch's end the weights in the model and the val loss."""

        def __init__(self):
            super().__init__()
            self.steps: list = []
            self.kept: list = []

        def on_train_batch_end(self, batch, logs=None):
            self.steps.append([np.array(v) for v in self.model.trainable_weights])

        def on_epoch_end(self, epoch, logs=None):
            self.kept.append(([np.array(v) for v in self.model.trainable_weights], logs["val_loss"]))

    recorder = Recorder()
    model, history = training.fit_model(
        params, demo_data, AugmentConfig(), config, [*training.fit_callbacks(config, "val_loss", "min"), recorder]
    )
    assert model.optimizer.use_ema
    # The moving average by its definition (Keras: the first step copies the weights, then m·avg + (1 − m)·w).
    average = recorder.steps[0]
    per_epoch = len(recorder.steps) // 4
    for k, step in enumerate(recorder.steps[1:], 2):
        average = [momentum * a + (1 - momentum) * w for a, w in zip(average, step, strict=True)]
        if k % per_epoch == 0:
            kept, _ = recorder.kept[k // per_epoch - 1]
            assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(average, kept, strict=True))
    raw, kept = recorder.steps[-1], recorder.kept[-1][0]
    assert max(float(np.abs(a - b).max()) for a, b in zip(raw, kept, strict=True)) > 1e-3  # not the raw weights
    # What was validated is what is returned: the best epoch's averaged weights score its logged val loss.
    best = int(np.argmin(history.history["val_loss"]))
    returned = [np.array(v) for v in model.trainable_weights]
    assert all(np.array_equal(a, b) for a, b in zip(returned, recorder.kept[best][0], strict=True))
    from medimg.datasets import pipeline

    val = pipeline.make_dataset(demo_data.arrays["val"], PARAMS.batch_size, demo_data.num_classes)
    assert model.evaluate(val, verbose=0, return_dict=True)["loss"] == pytest.approx(
        history.history["val_loss"][best], rel=1e-4
    )


def test_a_fit_stopped_early_without_early_stopping_ends_on_the_averaged_weights(
    demo_data: training.PreparedData,
) -> None:
    import keras

    params = PARAMS.replace(ema_momentum=0.9)
    config = TrainConfig(epochs=6, early_stopping_patience=0, reduce_lr_patience=0, seed=3)

    class StopAfterTwo(keras.callbacks.Callback):  # as a stop request or the deadline would, at epoch 2's end
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = epoch == 1
            self.kept = [np.array(v) for v in self.model.trainable_weights]

    stop = StopAfterTwo()
    model, history = training.fit_model(params, demo_data, AugmentConfig(), config, [stop])
    assert len(history.epoch) == 2
    returned = [np.array(v) for v in model.trainable_weights]
    # The weights epoch 2 validated (the average), not the last step's raw ones Keras' finalisation would copy in.
    assert all(np.array_equal(a, b) for a, b in zip(returned, stop.kept, strict=True))


def test_a_train_run_backs_up_after_the_learning_rate_is_set_and_before_early_stopping(tmp_path: Path) -> None:
    import keras

    run = runs.create_run(train_spec(epochs=2), tmp_path)
    schedule = training.fit_callbacks(TrainConfig(reduce_lr_patience=3), "val_auc", "max")
    progress, best = callbacks.BestWeights("val_auc", "max"), callbacks.BestWeights("val_auc", "max")
    ordered = training.train_run_callbacks(run, progress, best, schedule)
    kinds = [type(c).__name__ for c in ordered]
    # A learning-rate reduction at an epoch's end is in that epoch's backup, so a resumed run keeps it.
    assert kinds.index("ReduceLROnPlateau") < kinds.index("AtomicBackupAndRestore") < kinds.index("EarlyStopping")
    assert ordered[0] is progress and ordered.index(best) > kinds.index("AtomicBackupAndRestore")
    averaged = training.ordered_callbacks(PARAMS.replace(ema_momentum=0.99), None, ordered)
    swap = next(i for i, c in enumerate(averaged) if isinstance(c, keras.callbacks.SwapEMAWeights))
    assert swap == kinds.index("AtomicBackupAndRestore") + 1
    assert isinstance(averaged[-1], callbacks.KeepAverageOnStop)


def test_weight_averaging_goes_after_the_backup_and_before_batchnorm_statistics() -> None:
    import keras

    progress, backup, best = keras.callbacks.Callback(), keras.callbacks.BackupAndRestore("/tmp/x"), object()
    precise = callbacks.PreciseBatchNorm(np.zeros((1, 4, 4, 1)))
    ordered = training.ordered_callbacks(PARAMS.replace(ema_momentum=0.99), precise, [progress, backup, best])
    assert ordered[:2] == [progress, backup] and ordered[3:5] == [precise, best]
    assert isinstance(ordered[5], callbacks.KeepAverageOnStop) and ordered[5].swap is ordered[2]
    assert isinstance(ordered[2], keras.callbacks.SwapEMAWeights) and ordered[2].swap_on_epoch
    assert training.ordered_callbacks(PARAMS, precise, [progress, best]) == [precise, progress, best]


# ---------------------------------------------------------------- execute_train through jobs.execute


def test_execute_train_records_everything(tmp_path: Path) -> None:
    run = runs.create_run(train_spec(epochs=2), tmp_path)
    lines: list[str] = []
    metrics = jobs.execute(run, echo=lines.append)
    record = run.record
    assert record["status"] == "completed" and "finished" in record
    assert record["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert record["class_weights_undone"] == {}  # "auto" weights none on the even demo: nothing to undo
    assert record["input"] == {"image_size": 16, "color": "gray", "channels": 1, "dicom_window": None}
    history = run.read_json("history.json")
    assert history["epoch"] == [1, 2] and len(history["val_auc"]) == 2
    assert [e["epoch"] for e in run.events("epoch")] == [0, 1]
    assert run.model_path.is_file() and record["model_sha256"] == runs.file_sha256(run.model_path)
    assert metrics["count"] == 30
    assert set(record["metrics"]) == {
        "accuracy",
        "balanced_accuracy",
        "auc",
        "operating_point",
        "never_predicted",
        "validation",
    }
    assert any(line.startswith("epoch 2/2") for line in lines)
    assert (run.path / "logs").is_dir()  # TensorBoard
    assert not (run.path / "backup").exists()  # the resume backup is removed once training finished


def test_a_fit_ended_by_early_stopping_says_where_and_which_epoch_it_kept(tmp_path: Path) -> None:
    # A learning rate of 1e-12 leaves the network as initialised: validation AUC cannot improve after epoch 1, so
    # early stopping (patience 1) ends the fit at epoch 2 of 8 and keeps epoch 1.
    params = dataclasses.replace(PARAMS, learning_rate=1e-12)
    config = TrainConfig(epochs=8, early_stopping_patience=1, reduce_lr_patience=0, monitor="val_auc")
    run = runs.create_run(RunSpec(kind="train", dataset=DATASET, params=params, train=config), tmp_path)
    jobs.execute(run)
    stop = run.record["early_stopping"]
    history = run.read_json("history.json")
    assert stop["epochs_run"] == len(history["epoch"]) < 8 and stop["epochs"] == 8
    assert stop["best_epoch"] == int(np.argmax(history["val_auc"])) + 1
    assert stop["best_value"] == pytest.approx(max(history["val_auc"]))
    state = runs.progress(run)
    assert state["status"] == "completed" and state["fraction"] == 1.0
    assert state["message"].startswith(f"Early stopping ended the fit after epoch {stop['epochs_run']} of 8: val_auc")
    assert f"weights of epoch {stop['best_epoch']} " in state["message"]


def test_a_model_trained_with_class_weights_is_kept_with_the_training_class_frequencies(tmp_path: Path) -> None:
    """Balanced weights make a network call malignant about as often as benign; the run keeps it with the weights
    undone (`training.restore_class_prior`), so its mean probability of malignant on the training images moves to
    the training split's share (147 of 546 real BreastMNIST images)."""
    from medimg.model import models

    dataset = DatasetConfig(path=str(BREASTMNIST), image_size=28, color="gray")
    config = TrainConfig(epochs=3, early_stopping_patience=0, reduce_lr_patience=0, class_weights="balanced", seed=0)
    run = runs.create_run(RunSpec(kind="train", dataset=dataset, params=PARAMS, train=config), tmp_path)
    jobs.execute(run)
    data = training.prepare_data(dataset)
    labels = data.arrays["train"].labels
    malignant = data.class_names.index("malignant")
    share = np.mean(labels == malignant)
    assert share == pytest.approx(147 / 546)
    weights = training.class_weights(labels, 2, "balanced")
    assert run.record["class_weights_undone"] == {str(k): pytest.approx(w, abs=1e-6) for k, w in weights.items()}
    kept = models.load_run_model(run)
    images = np.asarray(data.arrays["train"].images, np.float32)
    kept_mean = models.probabilities(kept, images)[:, malignant].mean()
    models.undo_class_weights(kept, {k: 1 / w for k, w in weights.items()})  # the network as it was trained
    trained_mean = models.probabilities(kept, images)[:, malignant].mean()
    assert trained_mean > share + 0.1, "balanced weights should push the trained network towards malignant"
    assert abs(kept_mean - share) < abs(trained_mean - share)


def test_stop_file_during_execute_records_fewer_epochs(tmp_path: Path) -> None:
    run = runs.create_run(train_spec(epochs=200), tmp_path)

    def echo(line: str) -> None:
        if line.startswith("epoch 1/200"):
            run.request_stop()  # as `medimg stop` or the app's button would, from outside

    jobs.execute(run, echo=echo)
    record = run.record
    epochs = len(run.read_json("history.json")["epoch"])
    assert record["status"] == "stopped"
    assert 1 <= epochs < 200
    assert record["message"].startswith(
        f"stopped on request after {epochs} of 200 epochs; model saved; Resume continues it (CLI: "
    )
    assert run.model_path.is_file() and "metrics" in record


def test_interrupted_training_resumes_and_history_continues(tmp_path: Path) -> None:
    run = runs.create_run(train_spec(epochs=4), tmp_path)

    def interrupt(line: str) -> None:
        if line.startswith("epoch 2/4"):
            raise KeyboardInterrupt  # Ctrl+C during epoch 2's bookkeeping: its backup is not written

    with pytest.raises(KeyboardInterrupt):
        jobs.execute(run, echo=interrupt)
    assert run.record["status"] == "stopped"
    assert run.record["message"].startswith("interrupted; resume with: python -m medimg resume")
    assert (run.path / "backup").is_dir()
    before = len(run.events("epoch"))
    assert [e["epoch"] for e in run.events("epoch")] == [0, 1]

    jobs.execute(run)  # `medimg resume`
    resumed = [e["epoch"] for e in run.events("epoch")[before:]]
    assert resumed == [1, 2, 3]  # continued from the backup after epoch 1, not from scratch
    history = run.read_json("history.json")
    assert history["epoch"] == [1, 2, 3, 4]
    assert [e["status"] for e in run.events("status")] == ["queued", "running", "stopped", "running", "completed"]
    assert run.record["status"] == "completed"


def test_the_field_case_class_folders_leave_out_the_empty_and_unusable_classes_as_the_scan_says(
    tmp_path: Path,
) -> None:
    from medimg.datasets import scanning

    case = Path(__file__).parents[1] / "data" / "cases" / "class-folder-names"
    data = training.prepare_data(DatasetConfig(path=str(case), image_size=16))
    report = scanning.scan(case)
    assert data.class_names == ["Neumonía viral", "Normal (sano)", "结节 nodule"]
    assert sorted(report.classes) == data.class_names
    assert (
        data.warnings[:2]
        == report.warnings
        == [
            "class folder 'Artefact' holds only unreadable files (1): left out of training (the model will not know "
            "this class).",
            "class folder 'COVID-19' holds no image file: left out of training (the model will not know this class).",
        ]
    )
    # 12 images per class leave 1-2 per class for test, which training (once the split exists) says as well.
    assert data.warnings[2:] and data.warnings[2].startswith("The test split has only ")
    labels = np.concatenate([a.labels for a in data.arrays.values()])
    assert sorted(np.bincount(labels).tolist()) == [12, 12, 12]  # relabelled 0..2, every image kept


def test_a_one_class_validation_split_is_warned_and_searched_on_validation_loss() -> None:
    case = Path(__file__).parents[1] / "data" / "cases" / "val-split-one-class"
    data = training.prepare_data(DatasetConfig(path=str(case), image_size=16))
    assert data.val_one_class and data.undefined_metrics == ("val_auc",)
    assert data.usable_objective("val_auc") == data.usable_objective("val_accuracy") == "val_loss"
    assert data.warnings[0].startswith("The validation split has one class: it holds only 'NORMAL' images (4).")
    demo = training.prepare_data(DatasetConfig(path=str(DEMO), image_size=16))
    assert demo.warnings == [] and demo.usable_objective("val_auc") == "val_auc"
