"""Fit a model with the callbacks a run needs (events, stop, resume, early stop); carry out a train run.

Data preparation lives in `medimg.datasets.prepared`; its names are used here and stay importable from this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medimg.config import AugmentConfig, ModelParams, TrainConfig
from medimg.datasets.prepared import PreparedData, prepare_data
from medimg.errors import MedimgError, TrainingError
from medimg.imaging.contract import InputContract
from medimg.store.runs import Run

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)
Echo = Callable[[str], None]


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> dict[int, float] | None:
    """Balanced weights (n / (k * count)) when asked, or in 'auto' mode when classes differ by more than 1.5×."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    if mode == "none" or counts.min() == 0:
        return None
    if mode == "auto" and counts.max() / counts.min() <= 1.5:
        return None
    weights = counts.sum() / (num_classes * counts)
    return {i: float(w) for i, w in enumerate(weights)}


def restore_class_prior(model: Any, params: ModelParams, config: TrainConfig, data: PreparedData) -> dict | None:
    """Undo the class weights `params` (or, when it leaves them to the run, `config`) trained `model` with, in place
    (`models.undo_class_weights`): the model a run keeps reports probabilities under its training split's class
    frequencies, whatever weights helped it learn. Returns the weights undone ({class index: weight}), None when
    it trained without (or with equal ones). Call it once, on the model about to be kept, after training."""
    from medimg.model import models

    weights = class_weights(data.arrays["train"].labels, data.num_classes, params.class_weights or config.class_weights)
    return weights if models.undo_class_weights(model, weights) else None


def fit_callbacks(config: TrainConfig, monitor: str, mode: str) -> list:
    """Early stopping with best weights restored, learning-rate reduction on plateau, NaN guard."""
    import keras

    callbacks: list = [keras.callbacks.TerminateOnNaN()]
    if config.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor, mode=mode, restore_best_weights=True, patience=config.early_stopping_patience
            )
        )
    if config.reduce_lr_patience:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor, mode=mode, factor=0.5, min_lr=1e-6, patience=config.reduce_lr_patience
            )
        )
    return callbacks


def weight_averaging(params: ModelParams) -> tuple[list, list]:
    """The callbacks a fit needs when `params.ema_momentum` averages the weights, as (front, last); empty otherwise.

    Front: Keras' `SwapEMAWeights`, which puts the moving average in the model for every validation and at every
    epoch's end, so the objective, early stopping, best-weight keepers and checkpoints all see the averaged weights
    (Polyak & Juditsky 1992; measured in bench/README.md, "Levers"). It must come before `PreciseBatchNorm` (the
    statistics are recomputed for the averaged weights) and after any `BackupAndRestore` (the backup keeps the raw
    weights and their average in their own places). Last: `KeepAverageOnStop`, so a fit that stops early still
    returns the average. New ones per `fit`: they hold which weights are in the model."""
    import keras

    from medimg.model.callbacks import KeepAverageOnStop

    if not params.ema_momentum:
        return [], []
    swap = keras.callbacks.SwapEMAWeights(swap_on_epoch=True)
    return [swap], [KeepAverageOnStop(swap)]


def ordered_callbacks(params: ModelParams, precise: Any, callbacks: list) -> list:
    """`callbacks` of one fit with weight averaging (`weight_averaging`) and then `precise` (a `PreciseBatchNorm`,
    or None) inserted after the last `BackupAndRestore` (at the front when there is none), so that at an epoch's
    end the backup keeps the raw weights and everything after it sees the averaged ones with their statistics."""
    import keras

    front, last = weight_averaging(params)
    cut = max((i + 1 for i, c in enumerate(callbacks) if isinstance(c, keras.callbacks.BackupAndRestore)), default=0)
    return [*callbacks[:cut], *front, *([precise] if precise is not None else []), *callbacks[cut:], *last]


def monitor_mode(monitor: str) -> str:
    return "min" if monitor.endswith("loss") else "max"


@contextlib.contextmanager
def distribution_scope(distribution: str):
    """`tf.distribute.MirroredStrategy` scope when asked for (every visible device), else nothing."""
    if distribution != "mirrored":
        yield None
        return
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy()
    with strategy.scope():
        yield strategy


def fit_model(
    params: ModelParams,
    data: PreparedData,
    augment: AugmentConfig,
    config: TrainConfig,
    callbacks: list,
    epochs: int | None = None,
    distribution: str = "none",
) -> tuple[Any, Any]:
    """Build and fit one model on prepared data; returns (model, keras History).

    A backbone with pretrained weights and `params.fine_tune_blocks` > 0 is fitted in two stages (see
    `fine_tunes`): half the epochs for the head, the rest with the top blocks unfrozen; the History covers both."""
    import keras

    from medimg.datasets import pipeline
    from medimg.model import models
    from medimg.model.callbacks import PreciseBatchNorm

    keras.utils.set_random_seed(config.seed)
    with distribution_scope(distribution):
        model = models.build_model(params, data.input_shape, data.num_classes)
    train = pipeline.make_dataset(
        data.arrays["train"],
        params.batch_size,
        data.num_classes,
        training=True,
        augment=augment.scaled(params.augment_strength),
        seed=config.seed,
    )
    val = pipeline.make_dataset(data.arrays["val"], params.batch_size, data.num_classes)
    weights = class_weights(data.arrays["train"].labels, data.num_classes, params.class_weights or config.class_weights)
    total = epochs or config.epochs
    two_stage = fine_tunes(params) and total >= 2
    begin_stage(callbacks, 1 if two_stage else None, total)
    history = model.fit(
        train,
        validation_data=val,
        epochs=total // 2 if two_stage else total,
        # Precise BatchNorm statistics before validation, early stopping and best-weight keepers see the weights.
        callbacks=ordered_callbacks(params, PreciseBatchNorm(data.arrays["train"].images, config.seed), callbacks),
        class_weight=weights,
        verbose=0,
        shuffle=False,
    )
    if two_stage and stage_one_finished(model, callbacks, history):
        first = history.epoch[-1] + 1 if history.epoch else total // 2
        unfreeze_top_blocks(model, params, data.num_classes, distribution)
        begin_stage(callbacks, 2, total)
        stage_two = model.fit(
            train,
            validation_data=val,
            epochs=total,
            initial_epoch=first,
            callbacks=ordered_callbacks(
                params, PreciseBatchNorm(data.arrays["train"].images, config.seed), stage_two_callbacks(callbacks)
            ),
            class_weight=weights,
            verbose=0,
            shuffle=False,
        )
        history = joined_history(history, stage_two)
    return model, history


# ---- Two-stage fine-tuning of a pretrained backbone (https://keras.io/guides/transfer_learning/) -----------------
# Stage 1 (above): the first half of the epochs train the head, the backbone frozen. Stage 2: the top
# `params.fine_tune_blocks` blocks unfrozen (BatchNorm still frozen, in inference mode) at
# `params.fine_tune_learning_rate`, numbered on from stage 1 (`initial_epoch`), so events and charts show one run.


def begin_stage(callbacks: list, stage: int | None, epochs: int) -> None:
    """Tell the callbacks that have `begin_stage` (the progress events) which fine-tuning stage starts and the
    whole fit's epochs; nothing for a one-stage fit (`stage` None)."""
    for callback in callbacks:
        if stage and hasattr(callback, "begin_stage"):
            callback.begin_stage(stage, epochs)


def fine_tunes(params: ModelParams) -> bool:
    """Whether `fit_model` runs stage 2: a backbone with pretrained weights and `fine_tune_blocks` > 0 (with
    `weights="none"` the whole backbone trains from the start, so there is nothing to unfreeze)."""
    return params.backbone != "cnn" and params.weights != "none" and params.fine_tune_blocks > 0


def stage_one_finished(model: Any, callbacks: list, history: Any) -> bool:
    """Stage 1 ran to its end or early stopping ended it; not a stop request, a deadline or a NaN loss."""
    import keras

    losses = history.history.get("loss", [])
    if (losses and not math.isfinite(losses[-1])) or any(getattr(c, "stopped_by_request", False) for c in callbacks):
        return False
    early = any(isinstance(c, keras.callbacks.EarlyStopping) and c.stopped_epoch > 0 for c in callbacks)
    return early or not model.stop_training


def unfreeze_top_blocks(model: Any, params: ModelParams, num_classes: int, distribution: str = "none") -> list[str]:
    """Unfreeze the top `params.fine_tune_blocks` backbone blocks (BatchNorm stays frozen) and recompile at
    `params.fine_tune_learning_rate`. Returns the unfrozen blocks' names, top first."""
    from medimg.model import backbones, models

    unfrozen = backbones.set_trainable_blocks(params.backbone, models.backbone_layers(model), params.fine_tune_blocks)
    log.info("fine-tuning %s blocks of %s: %s", len(unfrozen), params.backbone, ", ".join(unfrozen))
    scope = model.distribute_strategy.scope() if distribution == "mirrored" else contextlib.nullcontext()
    with scope:
        models.compile_model(model, params.replace(learning_rate=params.fine_tune_learning_rate), num_classes)
    # Keras keeps the epoch a BackupAndRestore restored (a resumed stage 1) on the model; stage 2 starts from its
    # own `initial_epoch` unless its own backup says otherwise.
    model._initial_epoch = None
    return unfrozen


def stage_two_callbacks(callbacks: list) -> list:
    """The same callbacks, except each BackupAndRestore gets a `stage2` folder of its own: stage 2 trains more
    variables, so its optimizer state does not fit stage 1's checkpoint (and a resume restores each stage's own)."""
    import keras

    return [
        type(c)(os.path.join(c.backup_dir, "stage2"), save_freq=c.save_freq, delete_checkpoint=c.delete_checkpoint)
        if isinstance(c, keras.callbacks.BackupAndRestore)
        else c
        for c in callbacks
    ]


def joined_history(first: Any, second: Any) -> Any:
    """Stage 2's History with stage 1's epochs and values in front, as one run's."""
    second.epoch = [*first.epoch, *second.epoch]
    for key, values in first.history.items():
        second.history[key] = [*values, *second.history.get(key, [])]
    return second


@dataclasses.dataclass
class Fitted:
    """A run's fitted model, already saved in the run, and what is left to do once it is evaluated
    (`workflows.evaluate_fitted`)."""

    model: Any  # keras.Model
    data: PreparedData
    stopped: str = ""  # the run ends "stopped" with this message
    error: MedimgError | None = None  # raised after the evaluation (a diverged loss whose best epoch was kept)
    backup: Path | None = None  # the resume backup, removed once a run that was not stopped is evaluated


def fit_train_run(run: Run, echo: Echo | None = None) -> Fitted:
    """A train run from its record: prepare, fit (resumable), save the model. Evaluation is the caller's
    (`workflows.execute_train`), so this layer never imports the one above it."""

    from medimg.model import backbones
    from medimg.model.callbacks import BestWeights, ProgressEvents

    spec = run.spec
    weights = backbones.weights_record(spec.params.backbone, spec.params.weights)  # a missing file stops here
    if weights:
        run.update(weights=[weights])
    data = prepare_data(spec.dataset, _echo_progress(echo))
    run.update(
        data=data.summary(),
        class_names=data.class_names,
        input=InputContract.from_config(spec.dataset).to_json(),
        warnings=data.warnings,
    )
    say_warnings(data.warnings, echo)
    monitor = data.usable_objective(spec.train.monitor)
    run.update(monitor=monitor)  # what early stopping followed, when the data made it differ from the spec's
    progress = ProgressEvents(run, echo=echo, undefined=data.undefined_metrics)
    best = BestWeights(monitor, monitor_mode(monitor))
    callbacks = train_run_callbacks(run, progress, best, fit_callbacks(spec.train, monitor, monitor_mode(monitor)))
    model, _ = fit_model(spec.params, data, spec.augment, spec.train, callbacks, distribution=spec.distribution)
    history = run.epoch_history()
    run.write_json("history.json", history)
    strategy = getattr(model, "distribute_strategy", None)
    run.update(replicas=int(getattr(strategy, "num_replicas_in_sync", 1)))
    losses = history.get("loss", [])
    if losses and not math.isfinite(losses[-1]):
        if best.weights is None:
            raise _nan_error(len(losses))
        # Keep what was learnt before the loss diverged: the best epoch's weights become the run's model.
        model.set_weights(best.weights)
        _keep_class_prior(run, model, data)
        run.save_model(model)
        error = _nan_error(
            len(losses),
            kept=f"the best model so far (epoch {best.epoch + 1}, {monitor} {best.value:.4f}) was saved and evaluated",
        )
        return Fitted(model, data, error=error)
    _keep_class_prior(run, model, data)
    run.save_model(model)
    if not progress.stopped_by_request:
        _record_early_stop(run, history, monitor, spec.train)
    if progress.stopped_by_request:
        stopped = (
            f"stopped on request after {len(losses)} of {spec.train.epochs} epochs; model saved; Resume continues "
            f"it (CLI: python -m medimg resume {run.path})"
        )
        return Fitted(model, data, stopped=stopped)
    return Fitted(model, data, backup=run.path / "backup")


def _record_early_stop(run: Run, history: dict[str, list[float]], monitor: str, config: TrainConfig) -> None:
    """When early stopping ended the fit before its last epoch, record where, and which epoch's weights were kept
    (Keras' EarlyStopping with restore_best_weights: the first epoch with the best `monitor`), so a watcher does not
    read "epoch 46 of 120" as a fit cut short. `history`: the run's epoch history (epochs numbered from 1)."""
    values = history.get(monitor) or []
    if not config.early_stopping_patience or not values or len(values) >= config.epochs:
        return
    finite = [v if math.isfinite(v) else math.nan for v in values]
    # Each fine-tuning stage is its own `fit`, and Keras' EarlyStopping starts afresh in each: the weights restored
    # are the last stage's best. (A resumed fit's EarlyStopping also starts afresh; not told apart here.)
    starts = run.stage_starts()
    offset = starts[-1] - 1 if starts else 0
    stage = finite[offset:]
    best = offset + int(np.nanargmin(stage) if monitor_mode(monitor) == "min" else np.nanargmax(stage))
    run.update(
        early_stopping={
            "epochs_run": len(values),
            "epochs": config.epochs,
            "best_epoch": best + 1,
            "monitor": monitor,
            "best_value": float(values[best]),
            "patience": config.early_stopping_patience,
        }
    )


def _keep_class_prior(run: Run, model: Any, data: PreparedData) -> None:
    """`restore_class_prior` on a train run's model, the weights undone recorded in run.json ({} for none)."""
    weights = restore_class_prior(model, run.spec.params, run.spec.train, data)
    run.update(class_weights_undone={str(k): round(w, 6) for k, w in (weights or {}).items()})


def train_run_callbacks(run: Run, progress: Any, best: Any, schedule: list) -> list:
    """A train run's callbacks in the order their epoch ends need: `progress` (the epoch's event), the learning-rate
    reduction of `schedule` (`fit_callbacks`), then the backup `resume` continues from (kept after a stop, removed
    once the run completes), so a backed-up epoch has its event written and its learning rate set; then `best`,
    the rest of `schedule` and TensorBoard. `ordered_callbacks` adds weight averaging right after the backup."""
    import keras

    from medimg.model.callbacks import AtomicBackupAndRestore

    rate = [c for c in schedule if isinstance(c, keras.callbacks.ReduceLROnPlateau)]
    return [
        progress,
        *rate,
        AtomicBackupAndRestore(run.path / "backup"),
        best,
        *(c for c in schedule if c not in rate),
        keras.callbacks.TensorBoard(str(run.path / "logs"), profile_batch=0, write_graph=False),
    ]


def say_warnings(warnings: list[str], echo: Echo | None) -> None:
    """The dataset's warnings (`PreparedData.warnings`) before any epoch: on the console and in the log."""
    for warning in warnings:
        if echo:
            echo(f"WARNING: {warning}")
        else:
            log.warning("%s", warning)


def _nan_error(epoch: int, kept: str = "no epoch finished before it, so no model was saved") -> TrainingError:
    return TrainingError(
        f"the loss became NaN at epoch {epoch}; {kept}. Lower the learning rate or the weight decay and try again."
    )


def _echo_progress(echo: Echo | None) -> Callable[[int, int, str], None] | None:
    if echo is None:
        return None
    return lambda done, total, message: echo(f"{message}: {done}/{total}")
