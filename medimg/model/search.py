"""KerasTuner's side of a search, as module-level classes with their settings in `__init__`: the HyperModel that
builds and fits one trial, and the tuners that end on a stop request or a time budget. Importing this module
imports KerasTuner; `tuning.search_run` imports it inside the function, so `import medimg` stays free of it.
(KerasTuner's API: https://keras.io/keras_tuner/api/.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras_tuner as kt
import numpy as np

from medimg.config import HYPERBAND_FACTOR, AugmentConfig, ModelParams, SearchSpace, TrainConfig
from medimg.datasets import pipeline
from medimg.model import models, training
from medimg.model.callbacks import PreciseBatchNorm
from medimg.model.hyperparameters import params_from_hp
from medimg.store.runs import trial_number

if TYPE_CHECKING:
    from medimg.datasets.prepared import PreparedData
    from medimg.model.features import FeatureStore

# The score a collapsed trial gets, so no tuner ranks it above a trial that learnt something.
WORST_SCORE = {"max": 0.0, "min": 1e9}


class MedimgHyperModel(kt.HyperModel):
    """A HyperModel drawing `ModelParams` from `space`; a trial whose best model calls every validation image one
    class is reported to `on_collapsed(trial_id, class_name)` and scored as the worst possible, so it never wins.

    With a `feature_store`, a trial whose backbone stays frozen and whose augmentation is at most flips
    (`features.unused_reason`)
    builds and trains only the head, on cached backbone features (`features.head_model`): KerasTuner checkpoints
    the head, and `EndingTuner.load_model` gives the image model with that head (`full_model`).

    Args:
        space: the ranges trials are drawn from.
        data: the run's prepared data (train and validation arrays, class names).
        augment: the run's augmentation, scaled per trial by `augment_strength`.
        train: the per-trial fit settings (epochs, seed, class weights).
        extra_callbacks: the callbacks of one trial, by trial id (progress events, early stopping, TensorBoard).
        on_collapsed: told (trial id, class name) when a trial collapses to one class, or None.
        objective: the metric trials are ranked by ("val_auc", "val_accuracy" or "val_loss").
        feature_store: the frozen backbones' cached features, or None.
        folds: cross-validation folds of the training split, (train indices, validation indices) each
            (`dataset.cross_validation_folds`): the tuner's k executions of a trial fit fold 0, 1, … in turn, each
            validated on its held-out fold; None: every execution fits train, validated on val.
        on_fold: told (trial id, fold, the fold's best objective value) after each fold, or None.
    """

    def __init__(
        self,
        space: SearchSpace,
        data: PreparedData,
        augment: AugmentConfig,
        train: TrainConfig,
        extra_callbacks: Callable[[str], list],
        on_collapsed: Callable[[str, str], None] | None = None,
        objective: str = "val_auc",
        feature_store: FeatureStore | None = None,
        folds: list[tuple[np.ndarray, np.ndarray]] | None = None,
        on_fold: Callable[[str, int, float], None] | None = None,
    ) -> None:
        super().__init__(name="medimg_cnn")
        self.space, self.data, self.augment, self.train = space, data, augment, train
        self.extra_callbacks, self.on_collapsed, self.objective = extra_callbacks, on_collapsed, objective
        self.feature_store, self.folds, self.on_fold = feature_store, folds, on_fold
        self.trial_id = ""  # set by the tuner before each trial (`EndingTuner.run_trial`)
        self.execution = 0  # the trial's fits so far: with folds, the next fold's index
        self.should_end: Callable[[], str | None] = lambda: None

    def begin_trial(self, trial_id: str, should_end: Callable[[], str | None] | None = None) -> None:
        """Called before each trial: its id, and what ends the search (checked before every fold after the first)."""
        self.trial_id, self.execution = trial_id, 0
        self.should_end = should_end or (lambda: None)

    def next_fold(self) -> int | None:
        """The fold the trial's next fit is on (counting its fits), or None without cross-validation. Raises
        SearchEnded before a later fold when the search is over (a stop request, the time budget): a trial whose
        folds did not all run has no score, and is run again from its first fold when the search resumes."""
        if not self.folds:
            return None
        fold = self.execution % len(self.folds)
        reason = self.should_end() if fold else None
        if reason:
            raise SearchEnded(f"{reason} (trial {trial_number(self.trial_id)} cut before its fold {fold + 1})")
        self.execution += 1
        return fold

    def split(self, fold: int | None) -> tuple[Any, Any]:
        """(train arrays, validation arrays) of a fit: the fold's parts of the training split (read into memory),
        or the training and validation splits without cross-validation."""
        train, val = self.data.arrays["train"], self.data.arrays["val"]
        if fold is None:
            return train, val
        fit_on, held_out = self.folds[fold]  # type: ignore[index]
        return train.subset(fit_on), train.subset(held_out)

    def _with_fold(self, callbacks: list, fold: int | None) -> list:
        for callback in callbacks:
            if hasattr(callback, "fold"):  # `ProgressEvents`: its epoch events say which fold they are of
                callback.fold = fold
        return callbacks

    def build(self, hp: kt.HyperParameters) -> Any:
        params = params_from_hp(hp, self.space)
        cached = self.feature_store.for_trial(params) if self.feature_store else None
        if cached is not None:  # building the image model (the backbone read from its file) is most of the trial
            from medimg.model import features

            return features.head_model(params, cached["train"].shape[1], self.data.num_classes)
        return models.build_model(params, self.data.input_shape, self.data.num_classes)

    def full_model(self, hp: kt.HyperParameters, model: Any) -> Any:
        """The image model of a trial's `model`: `model` itself, or for a head trained on cached features the full
        model with that head (`features.full_model`)."""
        from medimg.model import features

        if not features.is_head_model(model):
            return model
        return features.full_model(model, params_from_hp(hp, self.space), self.data.input_shape, self.data.num_classes)

    def fit(self, hp: kt.HyperParameters, model: Any, *args: Any, **kwargs: Any) -> Any:
        data, train = self.data, self.train
        params = params_from_hp(hp, self.space)
        fold = self.next_fold()
        cached = self.feature_store.for_trial(params) if self.feature_store else None
        if cached is not None:
            labels = (data.arrays["train"].labels, data.arrays["val"].labels)
            if fold is not None:
                fit_on, held_out = self.folds[fold]  # type: ignore[index]
                cached = {
                    "train_views": tuple(view[fit_on] for view in cached["train_views"]),
                    "val": cached["train"][held_out],
                }
                labels = (data.arrays["train"].labels[fit_on], data.arrays["train"].labels[held_out])
            return self.fold_scored(fold, self.fit_head(params, model, cached, kwargs, *labels, fold=fold))
        fit_on, held_out = self.split(fold)
        trial_train = pipeline.make_dataset(
            fit_on,
            params.batch_size,
            data.num_classes,
            training=True,
            augment=self.augment.scaled(params.augment_strength),
            seed=train.seed,
        )
        trial_val = pipeline.make_dataset(held_out, params.batch_size, data.num_classes)
        # Precise BatchNorm statistics first, so the objective and KerasTuner's checkpoint see them.
        precise = PreciseBatchNorm(fit_on.images, train.seed)
        given = [*kwargs.pop("callbacks", []), *self._with_fold(self.extra_callbacks(self.trial_id), fold)]
        callbacks = training.ordered_callbacks(params, precise, given)
        weights = training.class_weights(fit_on.labels, data.num_classes, params.class_weights or train.class_weights)
        epochs = kwargs.pop("epochs", train.epochs)
        # Two stages as `training.fit_model` (head, then the top blocks); not for a trial Hyperband continues.
        two_stage = training.fine_tunes(params) and epochs >= 2 and not kwargs.get("initial_epoch")
        training.begin_stage(callbacks, 1 if two_stage else None, epochs)
        fit = {"validation_data": trial_val, "class_weight": weights, "verbose": 0}
        history = model.fit(
            trial_train, epochs=epochs // 2 if two_stage else epochs, shuffle=False, callbacks=callbacks, **fit
        )
        if two_stage and training.stage_one_finished(model, callbacks, history):
            first = history.epoch[-1] + 1 if history.epoch else epochs // 2
            training.unfreeze_top_blocks(model, params, data.num_classes)
            training.begin_stage(callbacks, 2, epochs)
            # A fresh averaging callback: stage 2's optimizer is new (and so is its average).
            again = training.ordered_callbacks(params, precise, given)
            second = model.fit(trial_train, epochs=epochs, initial_epoch=first, shuffle=False, callbacks=again, **fit)
            history = training.joined_history(history, second)
        return self.fold_scored(fold, self.scored(history, model, held_out.images, held_out.labels))

    def fold_scored(self, fold: int | None, result: Any) -> Any:
        """`result` unchanged, the fold's best objective value told to `on_fold` first (cross-validation only)."""
        if fold is None or self.on_fold is None:
            return result
        values = result.history.get(self.objective) if hasattr(result, "history") else [result[self.objective]]
        finite = [float(v) for v in values or [] if v == v]
        if finite:
            best = min(finite) if self.objective.endswith("loss") else max(finite)
            self.on_fold(self.trial_id, fold, best)
        return result

    def fit_head(
        self,
        params: ModelParams,
        head: Any,
        cached: dict,
        kwargs: dict,
        train_labels: Any,
        val_labels: Any,
        fold: int | None = None,
    ) -> Any:
        """Train `head` (a `features.head_model`, built by `build`) on cached N×D features: each epoch sees every
        training image once, in one of its cached views (`FeatureStore.for_trial`'s "train_views": flips) drawn
        uniformly, as Keras' RandomFlip would have flipped the pixels."""
        import tensorflow as tf

        from medimg.model import features

        data, train = self.data, self.train
        labels = label_array(train_labels, data.num_classes)
        fit_on = features.training_dataset(cached["train_views"], labels, params.batch_size, train.seed)
        held_out = tf.data.Dataset.from_tensor_slices(
            (np.asarray(cached["val"]), label_array(val_labels, data.num_classes))
        ).batch(params.batch_size)
        given = [*kwargs.pop("callbacks", []), *self._with_fold(self.extra_callbacks(self.trial_id), fold)]
        history = head.fit(
            fit_on,
            validation_data=held_out,
            epochs=kwargs.pop("epochs", train.epochs),
            callbacks=training.ordered_callbacks(params, None, given),
            class_weight=training.class_weights(
                train_labels, data.num_classes, params.class_weights or train.class_weights
            ),
            verbose=0,
            shuffle=False,  # the dataset reshuffles itself each epoch
        )
        return self.scored(history, head, cached["val"], val_labels)

    def scored(self, history: Any, model: Any, val_inputs: Any, val_labels: Any) -> Any:
        """The fit's history, or the worst score when the model calls every validation input one class."""
        called = one_class_called(model, val_inputs, val_labels)
        if called is None:
            return history
        if self.on_collapsed:
            self.on_collapsed(self.trial_id, self.data.class_names[called])
        return {self.objective: WORST_SCORE["min" if self.objective.endswith("loss") else "max"]}


def label_array(labels: Any, num_classes: int) -> np.ndarray:
    """Labels as `pipeline.make_dataset` gives them: N×1 float32 for two classes (a sigmoid unit), else N int32."""
    if num_classes == 2:
        return np.asarray(labels, dtype=np.float32).reshape(-1, 1)
    return np.asarray(labels, dtype=np.int32)


def one_class_called(model: Any, images: Any, labels: Any) -> int | None:
    """The class index when the model's arg-max calls every one of `images` (N×H×W×C) the same class although
    `labels` (N) hold at least two classes, else None."""
    if len(np.unique(labels)) < 2:
        return None
    called = np.unique(models.predict_arrays(model, images).argmax(axis=1))
    return int(called[0]) if len(called) == 1 else None


class SearchEnded(kt.errors.FatalError):
    """Raised before a new trial (or a cross-validated trial's next fold) when the stop request or the time budget
    says the search is over. A KerasTuner FatalError, so a trial it interrupts is left unfinished (run again on
    resume) instead of being recorded as failed."""


class EndingTuner:
    """What medimg adds to a KerasTuner tuner (mixed in before it): before each new trial `should_end()` may end
    the search (a stop request, the time budget), a `trial_cap` caps Hyperband's trials, the hypermodel learns the
    trial id, and `on_trial(event, trial)` hears "trial_begin" and "trial_end".

    Args (keywords, before the tuner's own):
        should_end: returns why the search is over, or None to go on.
        on_trial: told ("trial_begin" | "trial_end", trial).
        trial_cap: the most trials to start (Hyperband's oracle takes no trial count), or None.
    """

    def __init__(
        self,
        *args: Any,
        should_end: Callable[[], str | None],
        on_trial: Callable[[str, Any], None],
        trial_cap: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.should_end, self.on_trial, self.trial_cap = should_end, on_trial, trial_cap
        super().__init__(*args, **kwargs)

    def pre_create_trial(self) -> None:
        reason = self.should_end()
        if reason:
            raise SearchEnded(reason)
        # The user's trial count is honoured as a cap (said before the search: `tuning.tuner_notice`).
        cap = self.trial_cap
        if cap is not None and len(self.oracle.trials) >= cap:
            raise SearchEnded(f"the cap of {cap} trial{'s' if cap != 1 else ''} reached")

    def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> Any:
        self.hypermodel.begin_trial(trial.trial_id, self.should_end)
        return super().run_trial(trial, *args, **kwargs)

    def load_model(self, trial: Any) -> Any:
        """The trial's best checkpoint in its image model (a head trained on cached features is put on its
        backbone: `MedimgHyperModel.full_model`)."""
        from keras_tuner.src.engine.tuner import maybe_distribute

        model = super().load_model(trial)
        with maybe_distribute(self.distribution_strategy):  # where KerasTuner builds a trial's model
            return self.hypermodel.full_model(trial.hyperparameters, model)

    def on_trial_begin(self, trial: Any) -> None:
        super().on_trial_begin(trial)
        self.on_trial("trial_begin", trial)

    def on_trial_end(self, trial: Any) -> None:
        super().on_trial_end(trial)
        self.on_trial("trial_end", trial)


class RandomTuner(EndingTuner, kt.RandomSearch):
    """KerasTuner's RandomSearch, ending on request (`EndingTuner`)."""


class BayesianTuner(EndingTuner, kt.BayesianOptimization):
    """KerasTuner's BayesianOptimization (Gaussian process), ending on request (`EndingTuner`)."""


class HyperbandTuner(EndingTuner, kt.Hyperband):
    """KerasTuner's Hyperband (Li et al. 2018), ending on request and capped in trials (`EndingTuner`)."""


TUNERS = {"random": RandomTuner, "bayesian": BayesianTuner, "hyperband": HyperbandTuner}


def build_tuner(
    kind: str,
    hypermodel: MedimgHyperModel,
    objective: str,
    max_trials: int,
    executions: int,
    directory: Path,
    project: str,
    epochs: int,
    seed: int,
    should_end: Callable[[], str | None],
    on_trial: Callable[[str, Any], None],
    distribution: Any = None,
    first_values: list[dict[str, Any]] | None = None,
) -> EndingTuner:
    """A `TUNERS[kind]` that resumes (overwrite=False) from `directory/project` and ends on request; with
    `first_values`, its first trials are those points, in order (`start_with`)."""
    direction = "min" if objective.endswith("loss") else "max"
    arguments: dict[str, Any] = {
        "hypermodel": hypermodel,
        "objective": kt.Objective(objective, direction),
        "directory": str(directory),
        "project_name": project,
        "overwrite": False,
        "seed": seed,
        "executions_per_trial": executions,
        "distribution_strategy": distribution,
        "should_end": should_end,
        "on_trial": on_trial,
    }
    if kind == "hyperband":
        arguments.update(max_epochs=epochs, factor=HYPERBAND_FACTOR, trial_cap=max_trials)
    else:
        arguments.update(max_trials=max_trials)
    tuner = TUNERS[kind](**arguments)
    if first_values:
        start_with(tuner.oracle, first_values)
    return tuner


def start_with(oracle: Any, values: list[dict[str, Any]]) -> None:
    """Make the oracle's first `len(values)` trials use `values`, in order (later trials are drawn as usual); a
    resumed search starts with the first of them it has not run yet. KerasTuner calls `populate_space` once per new
    trial, before it records the trial, on the chief in a distributed search, so wrapping it there covers every
    mode."""
    from keras_tuner.src.engine import trial as trial_module

    populate = oracle.populate_space

    def populate_first(trial_id: str) -> dict[str, Any]:
        if len(oracle.trials) < len(values):
            return {"status": trial_module.TrialStatus.RUNNING, "values": dict(values[len(oracle.trials)])}
        return populate(trial_id)

    oracle.populate_space = populate_first
