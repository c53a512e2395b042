"""`SearchSpace` → a KerasTuner HyperModel; tuner factory; trial records; a resumable, stoppable search."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from medimg.config import HYPERBAND_FACTOR, SearchSpace, TuneConfig
from medimg.errors import ConfigError, SearchSpaceMismatchError
from medimg.imaging.contract import InputContract
from medimg.model.hyperparameters import first_trials, params_from_values
from medimg.store.runs import Run, trial_number

if TYPE_CHECKING:
    import keras_tuner as kt

    from medimg.datasets.prepared import PreparedData
    from medimg.model.features import FeatureStore
    from medimg.model.training import Fitted

TUNER_FOLDER = "tuner"
SPACE_FILE = "medimg_search_space.json"
# How trials are scored and saved: {"cv_folds": k (0 without cross-validation), "checkpoints": CHECKPOINTS}.
SCORING_FILE = "medimg_scoring.json"
CHECKPOINTS = "head"  # a frozen-backbone trial on cached features checkpoints its head alone


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


def check_scoring(tuner_dir: Path, cv_folds: int, space: SearchSpace, record: bool = True) -> None:
    """Refuse to resume a search whose trials were scored otherwise (with or without cross-validation, or with
    another number of folds): one oracle would rank scores that are not comparable. Refuse too a search over frozen
    backbones started before their cached trials checkpointed heads only (`features.head_model`, 30 Nov 2026):
    its checkpoints would not load into what a trial builds now. Record the scoring otherwise."""
    path = tuner_dir / SCORING_FILE
    started = path.exists() or any(tuner_dir.glob("trial_*"))
    saved = json.loads(path.read_text()) if path.exists() else {}
    if started and saved.get("cv_folds", 0) != cv_folds:

        def said(folds: int) -> str:
            return f"{folds}-fold cross-validation" if folds else "no cross-validation"

        raise SearchSpaceMismatchError(
            f"the search in {tuner_dir} scored its trials with {said(saved.get('cv_folds', 0))}; it cannot go on "
            f"with {said(cv_folds)}. Resume it as it was started, or start a new run."
        )
    pretrained = space.weights != "none" and any(b != "cnn" for b in space.backbones)
    if started and pretrained and saved.get("checkpoints") != CHECKPOINTS:
        raise SearchSpaceMismatchError(
            f"the search in {tuner_dir} was started by an older medimg, whose frozen-backbone trials saved whole "
            "models; this one saves their heads, so it cannot go on with that search. Start a new run."
        )
    if record:
        tuner_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"cv_folds": cv_folds, "checkpoints": CHECKPOINTS}))


class TrialRecord(TypedDict):
    """One trial as KerasTuner recorded it (its trial.json): `trial_id` KerasTuner's ("0", "1", …), `status` its
    ("COMPLETED", "RUNNING", "INVALID", …), `score` the objective's best value (None before it has one),
    `hyperparameters` every value drawn, KerasTuner's own "tuner/…" entries included, `best_step` the best epoch."""

    trial_id: str
    status: str | None
    score: float | None
    hyperparameters: dict[str, Any]
    best_step: int | None


class TrialRow(TypedDict):
    """One row of the trial table people see: `trial` numbered from 1, `status` KerasTuner's or ours ("STOPPED": cut
    short by Stop; "COLLAPSED": called every validation image one class, never the best; "CUT_BY_BUDGET": completed
    with fewer epochs than planned, the time budget ran out, its best epoch kept), `score` the objective
    (None while running), `hyperparameters` the values drawn, without KerasTuner's "tuner/…" bookkeeping."""

    trial: int
    status: str
    score: float | None
    hyperparameters: dict[str, Any]
    fold_scores: list[float]  # the objective on each held-out fold, in fold order; [] without cross-validation


def read_trials(tuner_dir: Path) -> list[TrialRecord]:
    """Every trial KerasTuner recorded in a project folder (works for local and distributed searches)."""
    trials = []
    for path in sorted(Path(tuner_dir).glob("trial_*/trial.json")):
        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        values = state.get("hyperparameters", {}).get("values", {})
        trials.append(
            TrialRecord(
                trial_id=state.get("trial_id"),
                status=state.get("status"),
                score=state.get("score"),
                hyperparameters=values,
                best_step=state.get("best_step"),
            )
        )
    return trials


def search_run(run: Run, echo: Callable[[str], None] | None = None) -> Fitted | None:
    """A tune run from its record: search, then the best trial's (or the ensemble's) model saved into the run with
    the best parameters. Evaluation is the caller's (`workflows.execute_tune`). None on a distributed worker, whose
    trials the chief collects."""
    import keras

    from medimg.datasets import prepared
    from medimg.model import backbones, search, training
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
    check_scoring(tuner_dir, spec.tune.cv_folds, spec.search, record=not worker)
    # A resumed search has the budget its earlier stretches left (`runs.Run.set_status`), not a fresh one.
    spent = float(run.record.get("earlier_seconds") or 0.0)
    deadline = started + spec.tune.max_minutes * 60 - spent if spec.tune.max_minutes else None
    if deadline and not worker:
        run.update(search_deadline=round(deadline, 3))  # no trial starts after it; a running one stops at a batch
    objective = data.usable_objective(spec.tune.objective)
    if not worker:  # what the trials were ranked by, when the data made it differ from the spec's (`datachecks`)
        run.update(objective=objective)

    # Seconds kept before the deadline to retrain the best trials on train + val (`TuneConfig.refit_members`),
    # re-estimated from their own epochs whenever a trial ends; the search and a running trial end that much sooner.
    refit_reserve = [0.0]
    refitting = bool(spec.tune.refit_members and deadline and not worker)

    def search_deadline() -> float:
        return deadline - refit_reserve[0]  # type: ignore[operator]

    def trial_callbacks(trial_id: str) -> list:
        progress = ProgressEvents(
            run,
            trial=trial_id,
            echo=echo,
            deadline=search_deadline if refitting else deadline,
            undefined=data.undefined_metrics,
        )
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
        if deadline and time.time() > search_deadline():
            kept = ""
            if refitting:
                kept = f" ({refit_reserve[0]:.0f} s of it kept to retrain the best trials on train + val)"
            return (
                f"time budget of {spec.tune.max_minutes:g} minute{'' if spec.tune.max_minutes == 1 else 's'} used"
                + kept
            )
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
        if refitting and kind == "trial_end":
            refit_reserve[0] = refit_seconds(run, objective, data, spec.tune.refit_members)
            run.append_event("refit_reserve", seconds=round(refit_reserve[0], 3))  # the search ends this much sooner
        if echo and kind == "trial_end":
            score = "reported to the chief" if trial.score is None else f"{objective} = {trial.score:.4f}"
            cut = budget_cut_trials(run).get(trial.trial_id)
            if cut and str(trial.status) == "COMPLETED":
                score += f" (cut by the time budget in epoch {cut['epoch'] + 1} of {cut['epochs']}; best epoch kept)"
            echo(f"trial {trial_number(trial.trial_id)} {trial.status}: {score}")

    def on_collapsed(trial_id: str, class_name: str) -> None:
        run.append_event("trial_collapsed", trial=trial_id, called=class_name)
        if echo:
            echo(
                f"trial {trial_number(trial_id)} COLLAPSED: it calls every validation image {class_name}; it cannot "
                "be the best"
            )

    def on_fold(trial_id: str, fold: int, score: float) -> None:
        run.append_event("trial_fold", trial=trial_id, fold=fold, score=score)
        if echo:
            echo(f"trial {trial_number(trial_id)} fold {fold + 1}/{spec.tune.cv_folds}: {objective} = {score:.4f}")

    store = feature_cache(run, data, echo, worker)
    folds = cross_validation(run, data, worker)
    hypermodel = search.MedimgHyperModel(
        spec.search, data, spec.augment, spec.train, trial_callbacks, on_collapsed, objective, store, folds, on_fold
    )
    # Hyperband draws its brackets' trials itself.
    first = (
        first_trials(spec.tune.first_trial, spec.dataset.image_size, spec.search)
        if spec.tune.tuner != "hyperband"
        else []
    )
    strategy = _strategy(spec.distribution)
    tuner = search.build_tuner(
        spec.tune.tuner,
        hypermodel,
        objective,
        spec.tune.max_trials,
        len(folds) if folds else spec.tune.executions_per_trial,  # KerasTuner averages a trial's executions
        run.path,
        TUNER_FOLDER,
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
    except search.SearchEnded as reason:
        ended = str(reason)
        if 0 < hypermodel.execution < len(folds or ()):  # a cross-validated trial cut between its folds
            run.append_event("trial_stopped", trial=hypermodel.trial_id, folds_done=hypermodel.execution)
    if worker:
        return None
    return _finish_search(run, tuner, data, ended, deadline, echo)


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


def cross_validation(run: Run, data: PreparedData, worker: bool) -> list | None:
    """The folds of the training split each trial is fitted on in turn (`TuneConfig.cv_folds`), recorded in
    run.json (`cross_validation`); None when cross-validation is off."""
    from medimg.datasets.dataset import cross_validation_folds

    spec = run.spec
    if spec.tune.cv_folds < 2:
        return None
    groups = data.groups("train")
    folds = cross_validation_folds(data.arrays["train"].labels, groups, spec.tune.cv_folds, spec.train.seed)
    if not worker:
        run.update(
            cross_validation={
                "folds": len(folds),
                "patient_aware": groups is not None,
                "held_out_sizes": [len(held_out) for _, held_out in folds],
                "scored_on": "the held-out fold of the training split, averaged over folds",
                "models": "each trial's saved model is its best fold's (KerasTuner keeps one checkpoint per trial): "
                "trained on k - 1 folds of the training split",
                "validation_split": "kept out of the search: the ensemble, the operating point and calibration",
            }
        )
    return folds


def is_distributed_worker() -> bool:
    """True in a KerasTuner distributed worker process (KERASTUNER_TUNER_ID set, and not 'chief')."""
    role = os.environ.get("KERASTUNER_TUNER_ID")
    return bool(role) and role != "chief"


def set_distributed_role(role: str, address: str, worker_id: str | None = None) -> None:
    """Set KerasTuner's environment for this process: `role` is 'chief' or 'worker', `address` HOST:PORT."""

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


def _finish_search(
    run: Run,
    tuner: Any,
    data: PreparedData,
    ended: str,
    deadline: float | None = None,
    echo: Callable[[str], None] | None = None,
) -> Fitted:
    from medimg.errors import TrainingError

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
        raise TrainingError(f"no trial completed ({ended or 'every trial failed'}); see log.txt in {run.path}.")
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
    model = final_model(run, tuner, ranked, data, deadline, echo)
    run.save_model(model)
    from medimg.model.training import Fitted

    # Counted as the Tune page counts them (`runs.progress`): a collapsed trial completed; a cut one did not (even
    # when, Stop landing in the first trial, a cut trial is all there is to keep).
    finished = {t["trial_id"] for t in trials if t["status"] == "COMPLETED" and t["score"] is not None} | collapsed
    stopped = (
        f"{ended} after {len(finished)} completed trial{'' if len(finished) == 1 else 's'}"
        + (f" ({len(collapsed)} collapsed to one class)" if collapsed else "")
        if ended.startswith("stopped")
        else ""
    )
    return Fitted(model, data, stopped=stopped)


# Trial-table statuses of trials that compete for the best and are charted: finished, or cut by the time budget.
COMPETING = ("COMPLETED", "CUT_BY_BUDGET")


def budget_cut_trials(run: Run) -> dict[str, dict]:
    """The trials the time budget ended before their last epoch, by id: their `trial_cut_by_budget` event (epoch
    counted from 0, planned epochs). KerasTuner records them COMPLETED, with their best epoch so far."""
    return {event["trial"]: event for event in run.events("trial_cut_by_budget")}


def stopped_trials(run: Run) -> set[str]:
    """IDs of the trials that Stop cut short (KerasTuner records them as completed)."""
    return {event["trial"] for event in run.events("trial_stopped")}


def collapsed_trials(run: Run) -> set[str]:
    """IDs of the trials whose best model called every validation image one class."""
    return {event["trial"] for event in run.events("trial_collapsed")}


def final_model(
    run: Run,
    tuner: Any,
    ranked: list,
    data: Any,
    deadline: float | None = None,
    echo: Callable[[str], None] | None = None,
) -> Any:
    """The best trial's model, or the mean of the best k trials' models (`ranked`: every usable trial, best first;
    the candidates are the first `TuneConfig.ensemble_size`).

    `TuneConfig.ensemble_rule` "top": every candidate; "validation": k grows only while the validation objective
    improves. Validation, never test, chooses; the members and every k's validation score go into run.json under
    `ensemble`. Only configurable CNNs are averaged (`models.build_ensemble`): when the best trial has a pretrained
    backbone it is the model alone, else the candidates are the best CNN trials, backbone trials passed over.
    With `TuneConfig.refit_members` the best of the chosen members are also retrained on train + val
    (`refit_members`) while `deadline` (a `time.time()`, None: no limit) allows, and added after them.
    """
    import warnings

    import numpy as np

    from medimg.model import models, training
    from medimg.model.models import predict_arrays

    spec = run.spec
    backbone = [params_from_values(t.hyperparameters.values, spec.search).backbone != "cnn" for t in ranked]
    chosen_rows, note = ensemble_candidates(backbone, spec.tune.ensemble_size)
    ranked = [ranked[i] for i in chosen_rows]
    objective = data.usable_objective(spec.tune.objective)
    with warnings.catch_warnings():
        # A trial's checkpoint holds its optimizer's state; a model kept for prediction does not need it.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        members = [tuner.load_model(trial) for trial in ranked]
    # Trials drawn with and without class weights estimate different things until the weights are undone; only
    # then is their mean a probability (measured in bench/README.md, "Class weights undone"). Trial scores, early
    # stopping and the collapse check saw the outputs as trained: the same AUC for two classes (a bias shift keeps
    # the order); for five classes the shift moved the ensembles' test macro AUC by -0.002 to +0.004. Cross-validated
    # members are shifted by the weights of the whole training split, which stratified folds share to within a count.
    undone = {
        trial.trial_id
        for trial, member in zip(ranked, members, strict=True)
        if training.restore_class_prior(
            member, params_from_values(trial.hyperparameters.values, spec.search), spec.train, data
        )
    }
    if len(members) == 1 and (note or not spec.tune.refit_members):
        run.update(class_weights_undone_in=[ranked[0].trial_id] if ranked[0].trial_id in undone else [])
        if note:
            run.update(ensemble={"members": [ranked[0].trial_id], "candidates": [ranked[0].trial_id], "note": note})
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
    refitted, refit = [], None
    if spec.tune.refit_members and not note:
        best = min(spec.tune.refit_members, chosen)
        refitted, refit = refit_members(run, ranked[:best], params[:best], data, deadline, echo)
        refit["validation_members"] = chosen  # the first `chosen` members of the saved mean never saw validation
    run.update(
        class_weights_undone_in=[trial.trial_id for trial in ranked[:chosen] if trial.trial_id in undone],
        ensemble={
            "members": [trial.trial_id for trial in ranked[:chosen]],
            "candidates": [trial.trial_id for trial in ranked],
            "validation_scores": {str(k + 1): score for k, score in enumerate(scores)},
            "objective": objective,
            "rule": spec.tune.ensemble_rule,
            "chosen_on": "val",
            "gradcam": "of the best trial's network (the first member)"
            if chosen + len(refitted) > 1
            else "of the model",
            **({"note": note} if note else {}),
            **({"refit": refit} if refit else {}),
        },
    )
    if chosen + len(refitted) == 1:
        return members[0]
    # The searched members come first, so `validation_model` can take them alone: the retrained ones saw validation.
    kept = [*members[:chosen], *(model for model, _ in refitted)]
    return models.build_ensemble(kept, [*params, *(p for _, p in refitted)], data.input_shape, data.num_classes)


# One fit's fixed cost (building and tracing the model), which the per-image figures miss. Measured on the chest
# X-ray mini set at 64 px gray, idle 2-core machine: first epoch 3.1 s against a 0.90 s median (`python -m medimg
# auto DATA --minutes 1.5`, the run's epoch events). The automatic mode's trial estimates use it too.
FIT_SETUP_SECONDS = 2.5


def trial_epochs(run: Run, objective: str) -> dict[str, tuple[int, float]]:
    """Per trial id: (the epoch count its best `objective` was reached at, counted from 1; its median seconds per
    epoch, validation included), from the trials' epoch events. Cross-validated folds are left out."""
    import numpy as np

    epochs: dict[str, dict[int, dict]] = {}
    for event in run.events("epoch"):
        if event.get("trial") is not None and event.get("fold") is None:
            epochs.setdefault(event["trial"], {})[int(event["epoch"])] = event  # a resumed trial's rerun wins
    found = {}
    for trial, by_epoch in epochs.items():
        ordered = [by_epoch[k] for k in sorted(by_epoch)]
        values = [e["logs"].get(objective) for e in ordered]
        if all(v is None for v in values):
            continue
        sign = -1.0 if objective.endswith("loss") else 1.0
        best = max(range(len(values)), key=lambda i: (values[i] is not None, sign * (values[i] or 0.0), -i))
        found[trial] = (best + 1, float(np.median([e.get("seconds") or 0.0 for e in ordered])))
    return found


def refit_seconds(run: Run, objective: str, data: Any, count: int) -> float:
    """Estimated seconds to retrain the `count` best completed trials so far on train + val (`refit_members`):
    each trial's best epoch count × its own seconds per epoch, scaled by the larger training set, plus a fit's
    fixed cost. 0 before any trial has completed."""
    scores = {
        e["trial"]: e["score"]
        for e in run.events("trial_end")
        if e.get("score") is not None and str(e.get("status")) == "COMPLETED"
    }
    for trial in collapsed_trials(run):
        scores.pop(trial, None)
    best = sorted(scores, key=lambda t: scores[t], reverse=not objective.endswith("loss"))[:count]
    estimates = trial_epochs(run, objective)
    scale = _refit_scale(data)
    return sum(estimates[t][0] * estimates[t][1] * scale + FIT_SETUP_SECONDS for t in best if t in estimates)


def _refit_scale(data: Any) -> float:
    train, val = len(data.arrays["train"]), len(data.arrays["val"])
    return (train + val) / max(1, train)


def refit_members(
    run: Run,
    trials: list,
    params: list,
    data: Any,
    deadline: float | None,
    echo: Callable[[str], None] | None = None,
) -> tuple[list, dict]:
    """Each of `trials` (KerasTuner trials, best first; `params` their `ModelParams`) retrained on train + val for
    the epochs its trial peaked at, while its estimated time still fits before `deadline` and Stop is not pressed;
    class weights undone as for the searched members. Returns ([(model, params)], the record run.json keeps under
    `ensemble.refit`).

    Why: the final model's members were fitted on the training split only; the same configurations fitted on
    training and validation together learn from 11 % more images (RetinaMNIST) and, averaged with the searched
    ones, scored higher on test in every saved run measured when their time was not counted; paid for out of the
    search's budget they did not win end to end, so the automatic mode leaves them off (bench/README.md,
    "Retrained members"). Validation cannot judge them (they have seen it), so the validation figures, temperature
    and operating point of the saved model come from its searched members (`models.validation_model`)."""
    import dataclasses

    import numpy as np

    from medimg.datasets.cache import CachedArrays
    from medimg.model import training

    spec = run.spec
    objective = data.usable_objective(spec.tune.objective)
    estimates = trial_epochs(run, objective)
    train, val = data.arrays["train"], data.arrays["val"]
    record: dict[str, Any] = {"members": [], "epochs": {}, "images": len(train) + len(val), "skipped": None}
    if not len(val):
        record["skipped"] = "no validation split to add"
        return [], record
    joined = None  # train + val, read into memory once a member is to be retrained
    config = spec.train.replace(early_stopping_patience=0, reduce_lr_patience=0)
    scale, done = _refit_scale(data), []
    for trial, member_params in zip(trials, params, strict=True):
        if trial.trial_id not in estimates:
            record["skipped"] = f"trial {trial_number(trial.trial_id)} has no epochs recorded"
            break
        epochs, seconds = estimates[trial.trial_id]
        cost = epochs * seconds * scale + FIT_SETUP_SECONDS
        if run.stop_requested():
            record["skipped"] = "stopped on request"
            break
        if deadline and time.time() + cost > deadline:
            record["skipped"] = (
                f"retraining trial {trial_number(trial.trial_id)} (about {cost:.0f} s) would not have ended within the "
                "time budget; it and the trials ranked after it were not retrained"
            )
            break
        run.append_event(
            "refit", trial=trial.trial_id, number=len(done) + 1, of=len(trials), epochs=epochs, seconds=round(cost, 1)
        )
        if echo:
            echo(
                f"retraining trial {trial_number(trial.trial_id)}'s configuration on train + val "
                f"({record['images']:,} images, {epochs} epochs, about {cost:.0f} s)"
            )
        if joined is None:
            both = CachedArrays(
                np.concatenate([train.images, val.images]),
                np.concatenate([train.labels, val.labels]),
                [*train.paths, *val.paths],
                [],
            )
            joined = dataclasses.replace(data, arrays={**data.arrays, "train": both})
        guard = _RefitGuard(run, deadline)
        model, _ = training.fit_model(member_params, joined, spec.augment, config, [guard.callback()], epochs=epochs)
        if guard.cut:
            record["skipped"] = f"trial {trial_number(trial.trial_id)}'s retraining was cut ({guard.cut}); dropped"
            break
        training.restore_class_prior(model, member_params, spec.train, joined)
        done.append((model, member_params))
        record["members"].append(trial.trial_id)
        record["epochs"][trial.trial_id] = epochs
    return done, record


class _RefitGuard:
    """Ends a retraining fit at a stop request or the deadline, and says which (`cut`)."""

    def __init__(self, run: Run, deadline: float | None) -> None:
        self.run, self.deadline, self.cut, self.checked = run, deadline, "", 0.0

    def callback(self) -> Any:
        import keras

        guard = self

        class Guard(keras.callbacks.Callback):
            def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
                now = time.time()
                if now - guard.checked < 0.5:  # the stop request is a file: read it twice a second, as the progress
                    return
                guard.checked = now
                if guard.run.stop_requested():
                    guard.cut = "stopped on request"
                elif guard.deadline and now > guard.deadline:
                    guard.cut = "the time budget ran out"
                if guard.cut:
                    self.model.stop_training = True

        return Guard()


def describe_ensemble(record: dict) -> str | None:
    """What a search's saved model is, in a sentence, from its run.json (`ensemble`, `trials_completed`), or None
    when it is one trial's model. Says when the mean holds every trial there was, and when on validation it scored
    below the best trial alone: the mean of the top five is the default because it won on test across the
    benchmarks (bench/README.md, "Is the ensemble the lever?"), not because it won on this validation split."""
    ensemble = record.get("ensemble") or {}
    members = ensemble.get("members") or []
    refit = ensemble.get("refit") or {}
    if len(members) == 1 and refit.get("members"):
        return (
            f"The saved model is the mean of trial {trial_number(members[0])}'s model and of its configuration "
            f"retrained on train + val ({refit.get('images', 0):,} images); validation figures, the temperature and "
            "the operating point come from the searched model, which never saw validation. Grad-CAM shows the "
            "searched model."
        )
    if len(members) < 2:
        return None
    numbers = [str(trial_number(m)) for m in members]
    listed = f"{', '.join(numbers[:-1])} and {numbers[-1]}"
    completed = record.get("trials_completed")
    which = (
        "every trial that completed"
        if completed is not None and len(members) >= completed
        else f"the best {len(members)} on validation"
    )
    text = f"The saved model is the mean of trials {listed} ({which})"
    first, kept = ensemble_scores(record)
    objective = ensemble.get("objective") or "the objective"
    if first is not None and kept is not None and not better(objective, kept, first) and kept != first:
        text += (
            f". On validation the mean scores {objective} {kept:.4f}, the best trial's model alone {first:.4f} (both "
            "re-scored from the saved models; the trial table's figures were taken during training). The mean is "
            "kept because averaging the top five scored better on test than the best trial alone across the "
            "benchmarks (bench/README.md)"
        )
    else:
        text += ": averaging the top five scored better on test than the best trial alone in the benchmarks"
    if refit.get("members"):
        retrained = ", ".join(str(trial_number(m)) for m in refit["members"])
        text += (
            f". Trial{'s' if len(refit['members']) > 1 else ''} {retrained} also joined it retrained on train + val "
            f"({refit.get('images', 0):,} images); validation figures, the temperature and the operating point come "
            "from the searched members, which never saw validation"
        )
    elif refit.get("skipped"):
        text += f". No member was retrained on train + val: {refit['skipped']}"
    return text + ". Grad-CAM shows the best trial's network."


def ensemble_scores(record: dict) -> tuple[float | None, float | None]:
    """(the best trial's model alone, the saved mean) on validation, both scored from the saved models when the
    search kept a mean (run.json `ensemble.validation_scores`); None where not recorded."""
    ensemble = record.get("ensemble") or {}
    scores = ensemble.get("validation_scores") or {}
    return scores.get("1"), scores.get(str(len(ensemble.get("members") or [])))


def ensemble_candidates(backbone: list[bool], size: int) -> tuple[list[int], str | None]:
    """Which of the ranked trials (best first; `backbone[i]`: trial i has a pretrained backbone) are the final
    model's candidates, at most `size`, and a note when backbone trials changed that (`models.build_ensemble`
    averages configurable CNNs only): a backbone best trial stands alone; otherwise the backbone trials are passed
    over and the next CNN trials take their places."""
    rows = list(range(len(backbone)))
    if size <= 1 or not any(backbone[:size]):
        return rows[:size], None
    if backbone[0]:
        return [0], "the best trial alone: its pretrained backbone cannot be averaged with other trials"
    cnn = [i for i in rows if not backbone[i]]
    return cnn[:size], "the best CNN trials only: trials with a pretrained backbone cannot be averaged"


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


def used_values(values: dict[str, Any]) -> dict[str, Any]:
    """A trial's drawn hyperparameters as it used them. KerasTuner's random search draws every name declared so far
    in every trial, so a CNN trial carries the backbone-only values (left out here) and a backbone trial the CNN's
    augmentation strength where its own `backbone_augment_strength` applies (shown as its augment_strength). Block
    widths `filters_i` of blocks the trial did not have (i ≥ its conv_blocks, drawn because an earlier trial had more
    blocks) are left out too."""
    blocks = values.get("conv_blocks")
    if isinstance(blocks, int):
        values = {k: v for k, v in values.items() if not _block_beyond(k, blocks)}
    if values.get("backbone", "cnn") == "cnn":
        return {k: v for k, v in values.items() if k not in ("fine_tune_blocks", "backbone_augment_strength")}
    shown = dict(values)
    if "backbone_augment_strength" in shown:
        shown["augment_strength"] = shown.pop("backbone_augment_strength")
    return shown


def _block_beyond(name: str, blocks: int) -> bool:
    prefix, _, index = name.rpartition("_")
    return prefix == "filters" and index.isdigit() and int(index) >= blocks


def trial_table(run: Run) -> list[TrialRow]:
    """One row per trial (finished ones from KerasTuner's folder, the running one from the event log), numbered
    from 1 (`runs.trial_number`)."""
    rows = {t["trial_id"]: t for t in read_trials(run.path / TUNER_FOLDER)}
    for event in run.events("trial_begin"):
        rows.setdefault(
            event["trial"],
            TrialRecord(
                trial_id=event["trial"],
                status="RUNNING",
                score=None,
                hyperparameters=event.get("hyperparameters", {}),
                best_step=None,
            ),
        )
    collapsed, stopped, cut = collapsed_trials(run), stopped_trials(run), budget_cut_trials(run)
    folds: dict[str, dict[int, float]] = {}
    for event in run.events("trial_fold"):
        folds.setdefault(event["trial"], {})[int(event["fold"])] = float(event["score"])
    table = []
    for trial_id in sorted(rows):
        trial = rows[trial_id]
        status = trial["status"] or "UNKNOWN"
        if trial_id in stopped and status in ("COMPLETED", "RUNNING"):
            status = "STOPPED"
        elif trial_id in collapsed:
            status = "COLLAPSED"
        elif trial_id in cut and status == "COMPLETED":
            status = "CUT_BY_BUDGET"
        values = used_values({k: v for k, v in trial["hyperparameters"].items() if not k.startswith("tuner/")})
        fold_scores = [score for _, score in sorted(folds.get(trial_id, {}).items())]
        table.append(
            TrialRow(
                trial=trial_number(trial_id),
                status=status,
                score=trial["score"],
                hyperparameters=values,
                fold_scores=fold_scores,
            )
        )
    return table
