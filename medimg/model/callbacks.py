"""The Keras callbacks a run's fit needs, one class each, settings in `__init__` (the Keras callback API:
https://keras.io/api/callbacks/). Importing this module imports Keras; the modules that use it import it inside
the functions that fit, so `import medimg` stays free of TensorFlow."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from medimg.store.runs import Run, trial_number, write_json_atomic

Echo = Callable[[str], None]


class ProgressEvents(keras.callbacks.Callback):
    """Events per epoch and (throttled to one per 0.5 s) per batch into the run; a stop request or a deadline ends
    the fit at the next batch; a NaN metric ends it at the epoch's end.

    Args:
        run: the run whose events.jsonl receives the events, or None (console only).
        trial: the KerasTuner trial id the events belong to, or None for a train run.
        echo: where the one-line epoch summaries go (the CLI's standard error), or None.
        deadline: a `time.time()` after which the fit stops at the next batch, a function returning one (read at
            each throttled batch: a search moves it earlier as its best trials' retraining needs more time), or
            None.
        undefined: metrics that mean nothing on this data (`PreparedData.undefined_metrics`: the validation AUC of
            a one-class validation split, which Keras reports as 0.0); left out of the events and charts, and the
            console says "undefined (one class)" instead of a number.
    """

    def __init__(
        self,
        run: Run | None,
        trial: str | None = None,
        echo: Echo | None = None,
        deadline: float | Callable[[], float] | None = None,
        undefined: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.run, self.trial, self.echo, self.deadline, self.undefined = run, trial, echo, deadline, undefined
        self.last_tick = 0.0
        self.steps: int | None = None
        self.epoch = 0
        self.epochs: int | None = None
        self.stopped_by_request = False
        self.stage: int | None = None  # 1 or 2 when `fit_model` fine-tunes a backbone in two stages
        self.planned_epochs: int | None = None
        self.fold: int | None = None  # the cross-validation fold a trial's fit is on (`search.MedimgHyperModel`)

    def begin_stage(self, stage: int, epochs: int) -> None:
        """Called by `fit_model` before each fine-tuning stage: events carry the stage, and "epoch k of N" counts
        the whole run's N, not the stage's own end."""
        self.stage, self.planned_epochs = stage, epochs

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.steps = self.params.get("steps")
        self.epochs = self.planned_epochs or self.params.get("epochs")

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch
        self.epoch_start = time.time()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        now = time.time()
        if now - self.last_tick < 0.5:
            return
        self.last_tick = now
        run, trial = self.run, self.trial
        if run is not None:
            if run.stop_requested() and not self.stopped_by_request:
                self.stopped_by_request = True
                self.model.stop_training = True
                if trial is not None:  # a trial cut short by Stop is not a finished trial
                    run.append_event("trial_stopped", trial=trial, epoch=self.epoch, epochs=self.epochs)
            run.append_event(
                "batch", trial=trial, epoch=self.epoch, batch=batch + 1, steps=self.steps, epochs=self.epochs
            )
        deadline = self.deadline() if callable(self.deadline) else self.deadline
        if deadline and now > deadline:
            if run is not None and trial is not None and not self.model.stop_training:
                # KerasTuner ends such a trial COMPLETED; it ran fewer epochs than planned, with its best epoch kept.
                run.append_event("trial_cut_by_budget", trial=trial, epoch=self.epoch, epochs=self.epochs)
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = {k: float(v) for k, v in (logs or {}).items() if _is_number(v) and k not in self.undefined}
        seconds = round(time.time() - self.epoch_start, 3)
        if self.run is not None:
            staged = {"stage": self.stage} if self.stage else {}
            if self.fold is not None:
                staged["fold"] = self.fold
            self.run.append_event(
                "epoch", trial=self.trial, epoch=epoch, epochs=self.epochs, logs=values, seconds=seconds, **staged
            )
        if self.echo:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "learning_rate")
            shown += "".join(f"  {k} undefined (one class)" for k in self.undefined if k in (logs or {}))
            prefix = f"trial {trial_number(self.trial)} " if self.trial else ""
            prefix += f"fold {self.fold + 1} " if self.fold is not None else ""
            self.echo(f"{prefix}epoch {epoch + 1}/{self.epochs} ({seconds:.1f}s)  {shown}")
        if any(math.isnan(v) for v in values.values()):
            self.model.stop_training = True


def _is_number(value: Any) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, but each checkpoint is written to a temporary file and renamed: a process killed
    mid-write leaves the previous epoch's checkpoint intact instead of a corrupt file that cannot be resumed.

    Args:
        folder: the backup folder (a run's `backup/`). Kept after a stop so `resume` continues from the last epoch;
            removed once the run completes (`workflows.evaluate_fitted`).
        save_freq, delete_checkpoint: as Keras' own (`delete_checkpoint` off: the run removes the folder itself).
    """

    def __init__(self, folder: Path | str, save_freq: str | int = "epoch", delete_checkpoint: bool = False) -> None:
        super().__init__(str(folder), save_freq=save_freq, delete_checkpoint=delete_checkpoint)

    def _save_model(self) -> None:
        os.makedirs(self.backup_dir, exist_ok=True)
        temporary = os.path.join(self.backup_dir, ".partial.weights.h5")
        self.model.save_weights(filepath=temporary, overwrite=True)
        os.replace(temporary, self._weights_path)
        write_json_atomic(
            Path(self._training_metadata_path), {"epoch": self._current_epoch, "batch": self._last_batch_seen}
        )


class BestWeights(keras.callbacks.Callback):
    """Holds (in memory) the weights of the best epoch by `monitor` ("min" or "max" `mode`), ignoring epochs whose
    monitored value or loss is not finite. `weights` stays None until a finite epoch ends."""

    def __init__(self, monitor: str, mode: str) -> None:
        super().__init__()
        self.monitor, self.mode = monitor, mode
        self.weights: list | None = None
        self.value = math.inf if mode == "min" else -math.inf
        self.epoch = -1

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = float((logs or {}).get(self.monitor, math.nan))
        if not math.isfinite(value) or not math.isfinite(float((logs or {}).get("loss", math.nan))):
            return
        if (value < self.value) if self.mode == "min" else (value > self.value):
            self.value, self.epoch, self.weights = value, epoch, self.model.get_weights()


class PreciseBatchNorm(keras.callbacks.Callback):
    """Recomputes every BatchNormalization layer's statistics from `images` (N×H×W×C, 0–255) before every
    validation pass inside `fit` (`on_test_begin`), so the validation score, early stopping and the checkpoints
    KerasTuner keeps all see precise statistics (`batchnorm.recompute_statistics`; Wu & Johnson 2021)."""

    def __init__(self, images: np.ndarray, seed: int = 0) -> None:
        super().__init__()
        self.images, self.seed = images, seed

    def on_test_begin(self, logs: dict | None = None) -> None:
        from medimg.model.batchnorm import recompute_statistics

        recompute_statistics(self.model, self.images, self.seed)


class KeepAverageOnStop(keras.callbacks.Callback):
    """Ends a fit that stops early (a stop request, the deadline, early stopping) on the averaged weights.

    Keras' `SwapEMAWeights(swap_on_epoch=True)` (`swap`) leaves the average in the model at each epoch's end and
    the raw weights in the optimizer's average slots; `fit` then copies those slots into the model
    (`optimizer.finalize_variable_values`) before `on_train_end`. The callback re-synchronises the slots only after
    the planned last epoch, so an earlier stop would return the raw weights. Placed last, after every callback that
    may set `stop_training`, this does the same synchronisation (the callback's own `_finalize_ema_values`) whenever
    the fit is about to end."""

    def __init__(self, swap: keras.callbacks.SwapEMAWeights) -> None:
        super().__init__()
        self.swap = swap

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.model.stop_training:
            self.swap._finalize_ema_values()
