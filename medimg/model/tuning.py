"""`SearchSpace` → a KerasTuner HyperModel; tuner factory; trial records; a resumable, stoppable search."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medimg.config import CHOICES, AugmentConfig, ModelParams, SearchSpace, TrainConfig, TuneConfig
from medimg.errors import ConfigError, SearchSpaceMismatchError
from medimg.imaging.contract import InputContract
from medimg.store.runs import Run, trial_number

if TYPE_CHECKING:
    import keras_tuner as kt

    from medimg.datasets.prepared import PreparedData
    from medimg.model.features import FeatureStore
    from medimg.model.training import Fitted

TUNER_FOLDER = "tuner"
SPACE_FILE = "medimg_search_space.json"


def params_from_hp(hp: kt.HyperParameters, space: SearchSpace) -> ModelParams:
    """Draw (or read back) one point of the space. Single-valued choices are fixed, not searched."""

    def choice(name: str, values: tuple) -> Any:
        return hp.Fixed(name, values[0]) if len(values) == 1 else hp.Choice(name, list(values))

    blocks = choice("conv_blocks", space.conv_blocks)

    def width(name: str) -> int:
        if space.filters_min < space.filters_max:
            return hp.Int(name, space.filters_min, space.filters_max, step=space.filters_step)
        return hp.Fixed(name, space.filters_min)

    if space.filters_growth == "double":
        base = width("filters")
        filters = tuple(min(base * 2**i, 4 * base) for i in range(blocks))
    else:
        filters = tuple(width(f"filters_{i}") for i in range(blocks))
    learning_rate = (
        hp.Float("learning_rate", space.learning_rate_min, space.learning_rate_max, sampling="log")
        if space.learning_rate_min < space.learning_rate_max
        else hp.Fixed("learning_rate", space.learning_rate_min)
    )
    return ModelParams(
        filters=filters,
        learning_rate=learning_rate,
        **{c.name: choice(c.name, getattr(space, c.space_field)) for c in CHOICES},
        # Declared only when searched, so searches that leave it to the training settings keep their trial tables.
        class_weights=choice("class_weights", space.class_weights) if space.class_weights != ("",) else "",
        **_backbone_values(hp, space, choice),
    )


def _backbone_values(hp: kt.HyperParameters, space: SearchSpace, choice: Callable) -> dict[str, Any]:
    """The backbone hyperparameters of one trial; none declared for a CNN-only space (the default), so existing
    searches keep their trial tables and resume unchanged."""
    if space.backbones == ("cnn",):
        return {}
    backbone = choice("backbone", space.backbones)
    if backbone == "cnn":
        return {"backbone": "cnn"}
    blocks = choice("fine_tune_blocks", space.fine_tune_blocks) if space.weights != "none" else 0
    return {"backbone": backbone, "weights": space.weights, "fine_tune_blocks": blocks}


def params_from_values(values: dict[str, Any], space: SearchSpace) -> ModelParams:
    """ModelParams from a trial's saved hyperparameter values."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    params_from_hp(hp, space)  # declares the names
    hp.values.update({k: v for k, v in values.items() if not k.startswith("tuner/")})
    return params_from_hp(hp, space)


def first_trial_values(params: ModelParams, space: SearchSpace) -> dict[str, Any]:
    """The hyperparameter values (KerasTuner names) that make one trial exactly `params`.

    Raises ConfigError when `params` is not a point of `space` (a value outside a range or a choice list), since a
    tuner cannot record, nor a Bayesian oracle vectorise, a value its space does not hold.
    """
    values: dict[str, Any] = {"conv_blocks": len(params.filters)}
    if space.filters_growth == "double":
        values["filters"] = params.filters[0]
    else:
        values.update({f"filters_{i}": f for i, f in enumerate(params.filters)})
    for name in ("learning_rate", *(c.name for c in CHOICES), "class_weights"):
        values[name] = getattr(params, name)
    if space.backbones != ("cnn",):
        values["backbone"] = params.backbone
    widths = set(params.filters) if space.filters_growth == "free" else {params.filters[0]}
    inside = (
        len(params.filters) in space.conv_blocks
        and all(
            space.filters_min <= f <= space.filters_max and (f - space.filters_min) % space.filters_step == 0
            for f in widths
        )
        and space.learning_rate_min <= params.learning_rate <= space.learning_rate_max
    )
    drawn = params_from_values(values, space) if inside else None
    if drawn != params:
        raise ConfigError(
            f"the first trial's configuration is not a point of the search space (space: {space.to_dict()}; "
            f"configuration: {params.to_dict()})."
        )
    return values


def build_hypermodel(
    space: SearchSpace,
    data: PreparedData,
    augment: AugmentConfig,
    train: TrainConfig,
    extra_callbacks: Callable[[str], list],
    on_collapsed: Callable[[str, str], None] | None = None,
    objective: str = "val_auc",
    feature_store: FeatureStore | None = None,
) -> kt.HyperModel:
    """A HyperModel drawing `ModelParams` from `space`; a trial whose best model calls every validation image one
    class is reported to `on_collapsed(trial_id, class_name)` and scored as the worst possible, so it never wins.

    With a `feature_store`, a trial whose backbone stays frozen and sees no augmentation (`features.unused_reason`)
    trains only the head, on cached backbone features; the model KerasTuner checkpoints is still the full image
    model (`features.head_model` shares its head layers)."""
    import keras_tuner as kt

    from medimg.datasets import pipeline
    from medimg.model import models, training
    from medimg.model.callbacks import OnFullModel, PreciseBatchNorm

    class MedimgHyperModel(kt.HyperModel):
        def build(self, hp: kt.HyperParameters) -> Any:
            return models.build_model(params_from_hp(hp, space), data.input_shape, data.num_classes)

        def fit(self, hp: kt.HyperParameters, model: Any, *args: Any, **kwargs: Any) -> Any:
            params = params_from_hp(hp, space)
            cached = feature_store.for_trial(params, model) if feature_store else None
            if cached is not None:
                return self.fit_head(params, model, cached, kwargs)
            trial_train = pipeline.make_dataset(
                data.arrays["train"],
                params.batch_size,
                data.num_classes,
                training=True,
                augment=augment.scaled(params.augment_strength),
                seed=train.seed,
            )
            trial_val = pipeline.make_dataset(data.arrays["val"], params.batch_size, data.num_classes)
            # Precise BatchNorm statistics first, so the objective and KerasTuner's checkpoint see them.
            precise = PreciseBatchNorm(data.arrays["train"].images, train.seed)
            callbacks = [precise, *kwargs.pop("callbacks", []), *extra_callbacks(self.trial_id)]
            weights = training.class_weights(
                data.arrays["train"].labels, data.num_classes, params.class_weights or train.class_weights
            )
            epochs = kwargs.pop("epochs", train.epochs)
            # Two stages as `training.fit_model` (head, then the top blocks); not for a trial Hyperband continues.
            two_stage = training.fine_tunes(params) and epochs >= 2 and not kwargs.get("initial_epoch")
            training.begin_stage(callbacks, 1 if two_stage else None, epochs)
            fit = {"validation_data": trial_val, "callbacks": callbacks, "class_weight": weights, "verbose": 0}
            history = model.fit(trial_train, epochs=epochs // 2 if two_stage else epochs, shuffle=False, **fit)
            if two_stage and training.stage_one_finished(model, callbacks, history):
                first = history.epoch[-1] + 1 if history.epoch else epochs // 2
                training.unfreeze_top_blocks(model, params, data.num_classes)
                training.begin_stage(callbacks, 2, epochs)
                second = model.fit(trial_train, epochs=epochs, initial_epoch=first, shuffle=False, **fit)
                history = training.joined_history(history, second)
            return self.scored(history, model, data.arrays["val"].images)

        def fit_head(self, params: ModelParams, model: Any, cached: dict, kwargs: dict) -> Any:
            """Train `model`'s head on cached N×D features; KerasTuner's callbacks (its best-epoch checkpoint)
            see the full model, whose head is the one trained; the trial's own callbacks see the head model."""
            from medimg.model import features

            with model.distribute_strategy.scope():
                head = features.head_model(model, params, data.num_classes)
            tuner_callbacks = [OnFullModel(c, model) for c in kwargs.pop("callbacks", [])]
            history = head.fit(
                cached["train"],
                label_array(data.arrays["train"].labels, data.num_classes),
                batch_size=params.batch_size,
                validation_data=(cached["val"], label_array(data.arrays["val"].labels, data.num_classes)),
                epochs=kwargs.pop("epochs", train.epochs),
                callbacks=[*tuner_callbacks, *extra_callbacks(self.trial_id)],
                class_weight=training.class_weights(
                    data.arrays["train"].labels, data.num_classes, params.class_weights or train.class_weights
                ),
                verbose=0,
                shuffle=True,
            )
            return self.scored(history, head, cached["val"])

        def scored(self, history: Any, model: Any, val_inputs: Any) -> Any:
            """The fit's history, or the worst score when the model calls every validation input one class."""
            called = one_class_called(model, val_inputs, data.arrays["val"].labels)
            if called is None:
                return history
            if on_collapsed:
                on_collapsed(self.trial_id, data.class_names[called])
            return {objective: WORST_SCORE["min" if objective.endswith("loss") else "max"]}

    return MedimgHyperModel(name="medimg_cnn")


def label_array(labels: Any, num_classes: int) -> Any:
    """Labels as `pipeline.make_dataset` gives them: N×1 float32 for two classes (a sigmoid unit), else N int32."""
    import numpy as np

    if num_classes == 2:
        return np.asarray(labels, dtype=np.float32).reshape(-1, 1)
    return np.asarray(labels, dtype=np.int32)


# The score a collapsed trial gets, so no tuner ranks it above a trial that learnt something.
WORST_SCORE = {"max": 0.0, "min": 1e9}


def one_class_called(model: Any, images: Any, labels: Any) -> int | None:
    """The class index when the model's arg-max calls every one of `images` (N×H×W×C) the same class although
    `labels` (N) hold at least two classes, else None."""
    import numpy as np

    from medimg.model.models import predict_arrays

    if len(np.unique(labels)) < 2:
        return None
    called = np.unique(predict_arrays(model, images).argmax(axis=1))
    return int(called[0]) if len(called) == 1 else None


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
    first_values: dict[str, Any] | None = None,
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
            # Hyperband's oracle takes no trial count; the user's is honoured as a cap (said before the search:
            # `tuner_notice`).
            if kind == "hyperband" and len(self.oracle.trials) >= max_trials:
                raise SearchEnded(f"the cap of {max_trials} trial{'s' if max_trials != 1 else ''} reached")

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
        arguments.update(max_epochs=epochs, factor=HYPERBAND_FACTOR)
    else:
        arguments.update(max_trials=max_trials)
    tuner = MedimgTuner(**arguments)
    if first_values:
        start_with(tuner.oracle, first_values)
    return tuner


HYPERBAND_FACTOR = 3  # KerasTuner's default and the paper's (Li et al. 2018, "Hyperband", JMLR 18(185))


def hyperband_schedule(max_epochs: int, factor: int = HYPERBAND_FACTOR) -> list[tuple[int, int, int, int]]:
    """The trials one Hyperband iteration runs: (bracket, round, trials, epochs each reaches), in the order
    KerasTuner's HyperbandOracle starts them (its `_get_num_brackets`, `_get_size` and `_get_epochs`, keras-tuner
    1.4; tests/test_tuning.py checks this copy against the oracle). A round after the first continues the best
    trials of the round before it, each as a new trial, from the epoch it had reached."""
    brackets, epochs = 0, float(max_epochs)
    while epochs >= 1:
        epochs, brackets = epochs / factor, brackets + 1
    end_size = math.ceil(1 + math.log(max_epochs, factor))
    schedule = []
    for bracket in range(brackets - 1, -1, -1):
        for round_ in range(bracket + 1):
            size = math.ceil(end_size / (bracket + 1) * factor ** (bracket - round_))
            schedule.append((bracket, round_, size, math.ceil(max_epochs / factor ** (bracket - round_))))
    return schedule


def tuner_notice(tune: TuneConfig, epochs: int) -> str | None:
    """What the tuner will do that the settings do not say, in words, or None. Said before a search starts (CLI
    and Tune page): Hyperband chooses its own trial count and epochs per trial from `epochs` (its max_epochs)."""
    if tune.tuner != "hyperband":
        return None
    schedule = hyperband_schedule(epochs)
    trials = sum(size for _, _, size, _ in schedule)
    rounds = "; ".join(
        f"{size} trial{'s' if size != 1 else ''} to {reach} epoch{'s' if reach != 1 else ''}"
        for _, _, size, reach in schedule
    )
    cap = tune.max_trials
    capped = f" The trial cap ends it after {cap} trial{'s' if cap != 1 else ''}." if cap < trials else ""
    return (
        f"Hyperband sets the trials and their epochs itself: with up to {epochs} epoch{'s' if epochs != 1 else ''} "
        f"per trial (factor {HYPERBAND_FACTOR}) one pass is {trials} trial{'s' if trials != 1 else ''} ({rounds}); "
        f"later rounds continue the best trials of the round before.{capped}"
    )


def start_with(oracle: Any, values: dict[str, Any]) -> None:
    """Make the oracle's first trial use `values` (later trials are drawn as usual); a resumed search that already
    has trials is unchanged. KerasTuner calls `populate_space` once per new trial, on the chief in a distributed
    search, so wrapping it there covers every mode."""
    from keras_tuner.src.engine import trial as trial_module

    populate = oracle.populate_space

    def populate_first(trial_id: str) -> dict[str, Any]:
        if not oracle.trials:
            return {"status": trial_module.TrialStatus.RUNNING, "values": dict(values)}
        return populate(trial_id)

    oracle.populate_space = populate_first


def check_search_space(tuner_dir: Path, space: SearchSpace, record: bool = True) -> None:
    """Refuse to resume a tuner folder made with a different search space; record the space otherwise."""
    path = tuner_dir / SPACE_FILE
    if path.exists():
        # Through SearchSpace, so a space saved before a setting existed compares equal when that setting is default.
        saved = json.loads(SearchSpace.from_json(path.read_text()).to_json())
        wanted = json.loads(space.to_json())
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


def search_run(run: Run, echo: Callable[[str], None] | None = None) -> Fitted | None:
    """A tune run from its record: search, then the best trial's (or the ensemble's) model saved into the run with
    the best parameters. Evaluation is the caller's (`workflows.execute_tune`). None on a distributed worker, whose
    trials the chief collects."""
    import keras

    from medimg.datasets import prepared
    from medimg.model import backbones, training
    from medimg.model.callbacks import ProgressEvents

    spec = run.spec
    worker = is_distributed_worker()
    # The budget counts from here: decoding the images is part of the time the user gave.
    started = time.time()
    # Every backbone's weights are found (or the search stops with the one message) before any trial starts.
    weights = [backbones.weights_record(name, spec.search.weights) for name in spec.search.backbones]
    if any(weights) and not worker:
        run.update(weights=[w for w in weights if w])
    data = prepared.prepare_data(spec.dataset, training._echo_progress(echo))
    if not worker:  # the chief (or a lone process) owns run.json; workers only add events and trials
        run.update(
            data=data.summary(),
            class_names=data.class_names,
            input=InputContract.from_config(spec.dataset).to_json(),
            warnings=data.warnings,
        )
        training.say_warnings(data.warnings, echo)
        notice = tuner_notice(spec.tune, spec.train.epochs)
        if notice:
            run.update(tuner_notice=notice)
            if echo:
                echo(notice)
    tuner_dir = run.path / TUNER_FOLDER
    check_search_space(tuner_dir, spec.search, record=not worker)
    deadline = started + spec.tune.max_minutes * 60 if spec.tune.max_minutes else None
    if deadline and not worker:
        run.update(search_deadline=round(deadline, 3))  # no trial starts after it; a running one stops at a batch
    objective = data.usable_objective(spec.tune.objective)
    if not worker:  # what the trials were ranked by, when the data made it differ from the spec's (`datachecks`)
        run.update(objective=objective)

    def trial_callbacks(trial_id: str) -> list:
        progress = ProgressEvents(run, trial=trial_id, echo=echo, deadline=deadline, undefined=data.undefined_metrics)
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
            echo(f"trial {trial_number(trial.trial_id)} {trial.status}: {score}")

    def on_collapsed(trial_id: str, class_name: str) -> None:
        run.append_event("trial_collapsed", trial=trial_id, called=class_name)
        if echo:
            echo(
                f"trial {trial_number(trial_id)} COLLAPSED: it calls every validation image {class_name}; it cannot "
                "be the best"
            )

    store = feature_cache(run, data, echo, worker)
    hypermodel = build_hypermodel(
        spec.search, data, spec.augment, spec.train, trial_callbacks, on_collapsed, objective, store
    )
    first = (
        first_trial_values(ModelParams.plain_cnn(spec.dataset.image_size), spec.search)
        if spec.tune.first_trial == "plain_cnn" and spec.tune.tuner != "hyperband"
        else None
    )
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
        first,
    )
    keras.utils.set_random_seed(spec.train.seed)
    ended = ""
    try:
        tuner.search(epochs=spec.train.epochs, verbose=0)
    except SearchEnded as reason:
        ended = str(reason)
    if worker:
        return None
    return _finish_search(run, tuner, data, ended)


def feature_cache(
    run: Run, data: PreparedData, echo: Callable[[str], None] | None, worker: bool
) -> FeatureStore | None:
    """The backbone features the search's frozen-backbone trials train on, computed (or read) before the first
    trial; whether each backbone's trials use them, and why not, goes into run.json (`feature_cache`) and onto the
    console. None for a CNN-only search."""
    from medimg.model import features, training

    spec = run.spec
    if spec.search.backbones == ("cnn",):
        return None
    store = features.FeatureStore(data, spec.augment)
    records = store.prepare(spec.search, training._echo_progress(echo))
    if not worker:
        run.update(feature_cache=records)
    for record in records:
        if echo:
            echo(record["message"])
    return store


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


def _finish_search(run: Run, tuner: Any, data: PreparedData, ended: str) -> Fitted:
    from medimg.errors import MedimgError

    spec = run.spec
    collapsed = collapsed_trials(run)
    stopped = stopped_trials(run)
    trials = read_trials(run.path / TUNER_FOLDER)
    for trial in trials:  # Stop first: a trial cut short may look collapsed only because it was cut
        if trial["trial_id"] in stopped and trial["status"] == "COMPLETED":
            trial["status"] = "STOPPED"
        elif trial["trial_id"] in collapsed:
            trial["status"] = "COLLAPSED"
    collapsed -= stopped
    run.write_json("trials.json", trials)
    completed = {t["trial_id"] for t in trials if t["status"] == "COMPLETED" and t["score"] is not None}
    warning = None
    if not completed and collapsed:
        # Nothing learnt to separate the classes. The best of the collapsed trials is still saved (a run never
        # loses its work), under a warning the CLI, the pages and the report show.
        warning = (
            f"every trial ({len(collapsed)}) called every validation image one class; the model kept is the "
            "least bad of them. Try more epochs per trial, another learning-rate range, or check the labels."
        )
        completed = set(collapsed)
    if not completed and stopped:  # Stop during the first trial: its epochs so far are all there is
        completed = {t["trial_id"] for t in trials if t["status"] == "STOPPED" and t["score"] is not None}
    if not completed:
        raise MedimgError(f"no trial completed ({ended or 'every trial failed'}); see log.txt in {run.path}.")
    ranked = [t for t in tuner.oracle.get_best_trials(len(tuner.oracle.trials)) if t.trial_id in completed]
    if warning or not ranked:  # collapsed (or stopped) trials may all carry the worst score: trial order
        ranked = [tuner.oracle.trials[t["trial_id"]] for t in trials if t["trial_id"] in completed]
    best_trial = ranked[0]
    best = params_from_values(best_trial.hyperparameters.values, spec.search)
    run.update(
        best_params=best.to_dict(),
        best_score=best_trial.score,
        best_trial=best_trial.trial_id,
        trials_completed=len(completed),
        trials_collapsed=sorted(collapsed),
        trials_stopped=sorted(stopped),
        search_warning=warning,
        ended=ended or "all trials done",
    )
    if warning:
        run.append_event("warning", message=warning)
    model = final_model(run, tuner, ranked[: spec.tune.ensemble_size], data)
    run.save_model(model)
    from medimg.model.training import Fitted

    stopped = f"{ended} after {len(completed)} completed trials" if ended.startswith("stopped") else ""
    return Fitted(model, data, stopped=stopped)


def stopped_trials(run: Run) -> set[str]:
    """IDs of the trials that Stop cut short (KerasTuner records them as completed)."""
    return {event["trial"] for event in run.events("trial_stopped")}


def collapsed_trials(run: Run) -> set[str]:
    """IDs of the trials whose best model called every validation image one class."""
    return {event["trial"] for event in run.events("trial_collapsed")}


def final_model(run: Run, tuner: Any, ranked: list, data: Any) -> Any:
    """The best trial's model, or the mean of the best k trials' models (`ranked`: best first).

    `TuneConfig.ensemble_rule` "top": every trial in `ranked`; "validation": k grows only while the validation
    objective improves. Validation, never test, chooses; the members and every k's validation score go into
    run.json under `ensemble`.
    """
    import warnings

    import numpy as np

    from medimg.model import models
    from medimg.model.models import predict_arrays

    spec = run.spec
    objective = data.usable_objective(spec.tune.objective)
    with warnings.catch_warnings():
        # A trial's checkpoint holds its optimizer's state; a model kept for prediction does not need it.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        members = [tuner.load_model(trial) for trial in ranked]
    if len(members) == 1:
        return members[0]
    val = data.arrays["val"]
    probs = [predict_arrays(member, val.images) for member in members]
    scores, chosen = [], 1
    for k in range(1, len(members) + 1):
        scores.append(validation_score(objective, val.labels, np.mean(probs[:k], axis=0)))
        if k > 1 and better(objective, scores[-1], scores[chosen - 1]):
            chosen = k
    if spec.tune.ensemble_rule == "top":
        chosen = len(members)
    params = [params_from_values(trial.hyperparameters.values, spec.search) for trial in ranked[:chosen]]
    run.update(
        ensemble={
            "members": [trial.trial_id for trial in ranked[:chosen]],
            "candidates": [trial.trial_id for trial in ranked],
            "validation_scores": {str(k + 1): score for k, score in enumerate(scores)},
            "objective": objective,
            "rule": spec.tune.ensemble_rule,
            "chosen_on": "val",
            "gradcam": "of the best trial's network (the first member)" if chosen > 1 else "of the model",
        }
    )
    if chosen == 1:
        return members[0]
    return models.build_ensemble(members[:chosen], params, data.input_shape, data.num_classes)


def validation_score(objective: str, labels: Any, probs: Any) -> float:
    """The search objective computed on validation predictions (N × K probabilities) with scikit-learn."""
    import numpy as np
    from sklearn import metrics

    from medimg.metrics.clinical import roc_auc

    labels = np.asarray(labels, dtype=int)
    if objective == "val_loss":
        return float(metrics.log_loss(labels, np.clip(probs, 1e-7, 1.0), labels=list(range(probs.shape[1]))))
    if objective == "val_auc":
        auc = roc_auc(labels, probs)
        if auc is not None:
            return auc
    return float(metrics.accuracy_score(labels, probs.argmax(axis=1)))


def better(objective: str, value: float, than: float) -> bool:
    return value < than if objective.endswith("loss") else value > than


def trial_table(run: Run) -> list[dict[str, Any]]:
    """One row per trial (finished ones from KerasTuner's folder, the running one from the event log), numbered
    from 1 (`runs.trial_number`)."""
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
    collapsed, stopped = collapsed_trials(run), stopped_trials(run)
    table = []
    for trial_id in sorted(rows):
        trial = rows[trial_id]
        if trial_id in stopped and trial["status"] in ("COMPLETED", "RUNNING"):
            trial = {**trial, "status": "STOPPED"}
        elif trial_id in collapsed:
            trial = {**trial, "status": "COLLAPSED"}
        values = {k: v for k, v in trial["hyperparameters"].items() if not k.startswith("tuner/")}
        table.append({"trial": trial_number(trial_id), "status": trial["status"], "score": trial["score"], **values})
    return table
