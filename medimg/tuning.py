"""`SearchSpace` → a KerasTuner HyperModel; tuner factory; trial records; a resumable, stoppable search."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medimg.config import AugmentConfig, ModelParams, SearchSpace, TrainConfig
from medimg.errors import SearchSpaceMismatchError
from medimg.runs import Run

if TYPE_CHECKING:
    import keras_tuner as kt

    from medimg.training import PreparedData

TUNER_FOLDER = "tuner"
SPACE_FILE = "medimg_search_space.json"


def params_from_hp(hp: kt.HyperParameters, space: SearchSpace) -> ModelParams:
    """Draw (or read back) one point of the space. Single-valued choices are fixed, not searched."""

    def choice(name: str, values: tuple) -> Any:
        return hp.Fixed(name, values[0]) if len(values) == 1 else hp.Choice(name, list(values))

    blocks = choice("conv_blocks", space.conv_blocks)
    filters = tuple(
        hp.Int(f"filters_{i}", space.filters_min, space.filters_max, step=space.filters_step)
        if space.filters_min < space.filters_max
        else hp.Fixed(f"filters_{i}", space.filters_min)
        for i in range(blocks)
    )
    learning_rate = (
        hp.Float("learning_rate", space.learning_rate_min, space.learning_rate_max, sampling="log")
        if space.learning_rate_min < space.learning_rate_max
        else hp.Fixed("learning_rate", space.learning_rate_min)
    )
    return ModelParams(
        filters=filters,
        learning_rate=learning_rate,
        kernel_size=choice("kernel_size", space.kernel_sizes),
        activation=choice("activation", space.activations),
        dropout=choice("dropout", space.dropouts),
        dense_units=choice("dense_units", space.dense_units),
        batch_norm=bool(choice("batch_norm", space.batch_norm)),
        l1=choice("l1", space.l1),
        l2=choice("l2", space.l2),
        head=choice("head", space.heads),
        optimizer=choice("optimizer", space.optimizers),
        batch_size=choice("batch_size", space.batch_sizes),
        augment_strength=choice("augment_strength", space.augment_strengths),
    )


def params_from_values(values: dict[str, Any], space: SearchSpace) -> ModelParams:
    """ModelParams from a trial's saved hyperparameter values."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    params_from_hp(hp, space)  # declares the names
    hp.values.update({k: v for k, v in values.items() if not k.startswith("tuner/")})
    return params_from_hp(hp, space)


def build_hypermodel(
    space: SearchSpace,
    data: PreparedData,
    augment: AugmentConfig,
    train: TrainConfig,
    extra_callbacks: Callable[[str], list],
) -> kt.HyperModel:
    import keras_tuner as kt

    from medimg import models, pipeline, training

    class MedimgHyperModel(kt.HyperModel):
        def build(self, hp: kt.HyperParameters) -> Any:
            return models.build_model(params_from_hp(hp, space), data.input_shape, data.num_classes)

        def fit(self, hp: kt.HyperParameters, model: Any, *args: Any, **kwargs: Any) -> Any:
            params = params_from_hp(hp, space)
            trial_train = pipeline.make_dataset(
                data.arrays["train"],
                params.batch_size,
                data.num_classes,
                training=True,
                augment=augment.scaled(params.augment_strength),
                seed=train.seed,
            )
            trial_val = pipeline.make_dataset(data.arrays["val"], params.batch_size, data.num_classes)
            callbacks = list(kwargs.pop("callbacks", [])) + extra_callbacks(self.trial_id)
            weights = training.class_weights(data.arrays["train"].labels, data.num_classes, train.class_weights)
            return model.fit(
                trial_train,
                validation_data=trial_val,
                epochs=kwargs.pop("epochs", train.epochs),
                callbacks=callbacks,
                class_weight=weights,
                verbose=0,
                shuffle=False,
            )

    return MedimgHyperModel(name="medimg_cnn")


class SearchEnded(Exception):
    """Raised before a new trial when the stop request or the time budget says the search is over."""


def build_tuner(
    kind: str,
    hypermodel: kt.HyperModel,
    objective: str,
    max_trials: int,
    executions: int,
    directory: Path,
    epochs: int,
    seed: int,
    should_end: Callable[[], str | None],
    on_trial: Callable[[str, kt.engine.trial.Trial], None],
    distribution: Any = None,
) -> kt.Tuner:
    """A RandomSearch / BayesianOptimization / Hyperband that resumes (overwrite=False) and ends on request."""
    import keras_tuner as kt

    bases = {"random": kt.RandomSearch, "bayesian": kt.BayesianOptimization, "hyperband": kt.Hyperband}
    base = bases[kind]

    class MedimgTuner(base):  # type: ignore[valid-type, misc]
        def pre_create_trial(self) -> None:
            reason = should_end()
            if reason:
                raise SearchEnded(reason)

        def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> Any:
            self.hypermodel.trial_id = trial.trial_id
            return super().run_trial(trial, *args, **kwargs)

        def on_trial_begin(self, trial: Any) -> None:
            super().on_trial_begin(trial)
            on_trial("trial_begin", trial)

        def on_trial_end(self, trial: Any) -> None:
            super().on_trial_end(trial)
            on_trial("trial_end", trial)

    direction = "min" if objective.endswith("loss") else "max"
    arguments: dict[str, Any] = {
        "hypermodel": hypermodel,
        "objective": kt.Objective(objective, direction),
        "directory": str(directory),
        "project_name": TUNER_FOLDER,
        "overwrite": False,
        "seed": seed,
        "executions_per_trial": executions,
        "distribution_strategy": distribution,
    }
    if kind == "hyperband":
        arguments.update(max_epochs=max(2, epochs), factor=3)
    else:
        arguments.update(max_trials=max_trials)
    return MedimgTuner(**arguments)


def check_search_space(tuner_dir: Path, space: SearchSpace, record: bool = True) -> None:
    """Refuse to resume a tuner folder made with a different search space; record the space otherwise."""
    path = tuner_dir / SPACE_FILE
    if path.exists():
        saved, wanted = json.loads(path.read_text()), json.loads(space.to_json())
        if saved != wanted:
            changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
            raise SearchSpaceMismatchError(
                f"the search in {tuner_dir} was started with a different search space (changed: {', '.join(changed)}). "
                "Start a new run for the new ranges, or resume with the original ranges."
            )
    if record:
        tuner_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(space.to_json())


def read_trials(tuner_dir: Path) -> list[dict[str, Any]]:
    """Every trial KerasTuner recorded in a project folder (works for local and distributed searches)."""
    trials = []
    for path in sorted(Path(tuner_dir).glob("trial_*/trial.json")):
        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        values = state.get("hyperparameters", {}).get("values", {})
        trials.append(
            {
                "trial_id": state.get("trial_id"),
                "status": state.get("status"),
                "score": state.get("score"),
                "hyperparameters": values,
                "best_step": state.get("best_step"),
            }
        )
    return trials


def execute_tune(run: Run, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Carry out a tune run from its record; best parameters and the best trial's model go into the run."""
    import keras

    from medimg import evaluation, training

    spec = run.spec
    worker = is_distributed_worker()
    data = training.prepare_data(spec.dataset, training._echo_progress(echo))
    if not worker:  # the chief (or a lone process) owns run.json; workers only add events and trials
        run.update(
            data=data.summary(),
            class_names=data.class_names,
            input=training.input_contract(spec.dataset),
        )
    tuner_dir = run.path / TUNER_FOLDER
    check_search_space(tuner_dir, spec.search, record=not worker)
    deadline = time.time() + spec.tune.max_minutes * 60 if spec.tune.max_minutes else None
    objective = spec.tune.objective

    def trial_callbacks(trial_id: str) -> list:
        progress = training.make_progress_callback(run, trial=trial_id, echo=echo, deadline=deadline)
        return [
            progress,
            *training.fit_callbacks(
                spec.train.replace(reduce_lr_patience=0), objective, training.monitor_mode(objective)
            ),
            keras.callbacks.TensorBoard(
                str(run.path / "logs" / f"trial_{trial_id}"), profile_batch=0, write_graph=False
            ),
        ]

    def should_end() -> str | None:
        if run.stop_requested():
            return "stopped on request"
        if deadline and time.time() > deadline:
            return f"time budget of {spec.tune.max_minutes:g} minutes used"
        return None

    def on_trial(kind: str, trial: kt.engine.trial.Trial) -> None:
        values = {k: v for k, v in trial.hyperparameters.values.items()}
        run.append_event(
            kind,
            trial=trial.trial_id,
            hyperparameters=values,
            score=trial.score,
            status=str(trial.status),
            max_trials=spec.tune.max_trials,
            tuner_id=os.environ.get("KERASTUNER_TUNER_ID", "local"),
        )
        if echo and kind == "trial_end":
            score = "reported to the chief" if trial.score is None else f"{objective} = {trial.score:.4f}"
            echo(f"trial {trial.trial_id} {trial.status}: {score}")

    hypermodel = build_hypermodel(spec.search, data, spec.augment, spec.train, trial_callbacks)
    strategy = _strategy(spec.distribution)
    tuner = build_tuner(
        spec.tune.tuner,
        hypermodel,
        objective,
        spec.tune.max_trials,
        spec.tune.executions_per_trial,
        run.path,
        spec.train.epochs,
        spec.train.seed,
        should_end,
        on_trial,
        strategy,
    )
    keras.utils.set_random_seed(spec.train.seed)
    ended = ""
    try:
        tuner.search(epochs=spec.train.epochs, verbose=0)
    except SearchEnded as reason:
        ended = str(reason)
    if worker:
        return {}
    return _finish_search(run, tuner, data, ended, evaluation)


def is_distributed_worker() -> bool:
    """True in a KerasTuner distributed worker process (KERASTUNER_TUNER_ID set, and not 'chief')."""
    role = os.environ.get("KERASTUNER_TUNER_ID")
    return bool(role) and role != "chief"


def set_distributed_role(role: str, address: str, worker_id: str | None = None) -> None:
    """Set KerasTuner's environment for this process: `role` is 'chief' or 'worker', `address` HOST:PORT."""
    from medimg.errors import ConfigError

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"'{address}' is not HOST:PORT (e.g. 127.0.0.1:8000).")
    os.environ["KERASTUNER_ORACLE_IP"] = host
    os.environ["KERASTUNER_ORACLE_PORT"] = port
    os.environ["KERASTUNER_TUNER_ID"] = "chief" if role == "chief" else (worker_id or f"tuner{os.getpid()}")


def _strategy(distribution: str) -> Any:
    if distribution != "mirrored":
        return None
    import tensorflow as tf

    return tf.distribute.MirroredStrategy()


def _finish_search(run: Run, tuner: Any, data: Any, ended: str, evaluation: Any) -> dict[str, Any]:
    spec = run.spec
    trials = read_trials(run.path / TUNER_FOLDER)
    run.write_json("trials.json", trials)
    completed = [t for t in trials if t["status"] == "COMPLETED" and t["score"] is not None]
    if not completed:
        from medimg.errors import MedimgError

        raise MedimgError(f"no trial completed ({ended or 'every trial failed'}); see log.txt in {run.path}.")
    best_hp = tuner.get_best_hyperparameters(1)[0]
    best = params_from_values(best_hp.values, spec.search)
    best_trial = tuner.oracle.get_best_trials(1)[0]
    run.update(
        best_params=best.to_dict(),
        best_score=best_trial.score,
        best_trial=best_trial.trial_id,
        trials_completed=len(completed),
        ended=ended or "all trials done",
    )
    model = tuner.get_best_models(1)[0]
    run.save_model(model)
    metrics = evaluation.evaluate_run(run, data, model)
    if ended.startswith("stopped"):
        run.set_status("stopped", message=f"{ended} after {len(completed)} completed trials")
    return metrics


def trial_table(run: Run) -> list[dict[str, Any]]:
    """One row per trial (finished ones from KerasTuner's folder, the running one from the event log)."""
    rows = {t["trial_id"]: t for t in read_trials(run.path / TUNER_FOLDER)}
    for event in run.events("trial_begin"):
        rows.setdefault(
            event["trial"],
            {
                "trial_id": event["trial"],
                "status": "RUNNING",
                "score": None,
                "hyperparameters": event.get("hyperparameters", {}),
            },
        )
    table = []
    for trial_id in sorted(rows):
        trial = rows[trial_id]
        values = {k: v for k, v in trial["hyperparameters"].items() if not k.startswith("tuner/")}
        table.append({"trial": trial_id, "status": trial["status"], "score": trial["score"], **values})
    return table
