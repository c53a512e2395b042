"""Tune: search ranges, launch a KerasTuner search as its own process, watch it live, stop it, use the best."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import streamlit as st

from medimg import auto
from medimg.config import (
    CHOICES,
    PRESETS,
    SOFT_LABELS,
    ModelParams,
    RunSpec,
    SearchSpace,
    TuneConfig,
    describe_augment,
    describe_params,
)
from medimg.errors import MedimgError
from medimg.metrics import importance
from medimg.model import backbones, tuning
from medimg.results import charts, tables
from medimg.store import runs
from pages import common

OBJECTIVE_WORDS = {"val_auc": "validation AUC", "val_accuracy": "validation accuracy", "val_loss": "validation loss"}
LEARNING_RATES = [1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]


def nearest_rate(value: float) -> float:
    return min(LEARNING_RATES, key=lambda rate: abs(math.log10(rate) - math.log10(value)))


MODES = ("Automatic", "Advanced")
AUTO_TARGETS = ("chosen from the class names", *SOFT_LABELS)
st.title("Tune")
space: SearchSpace = common.get("search")
tune: TuneConfig = common.get("tune")
train = common.get("train")
attached = common.attached_run("tune")
busy = attached is not None and attached.status in runs.ACTIVE_STATUSES
if busy:  # show the settings of the search in progress (after a refresh the session has none of its own)
    space, tune, train = attached.spec.search, attached.spec.tune, attached.spec.train

mode = st.radio(
    "How to search",
    MODES,
    horizontal=True,
    disabled=busy,
    **common.kept("tn_mode", MODES[0] if attached is None or attached.record.get("auto") else MODES[1], busy),
    captions=[
        "Find a good model in a time budget: every setting chosen from the data, each with its reason.",
        "Set the search ranges, the tuner and the trial count yourself.",
    ],
)
if mode == MODES[0]:
    data = common.get("dataset")
    minutes = st.number_input(
        "Time budget (minutes)",
        1.0,
        24 * 60.0,
        step=1.0,
        format="%g",
        disabled=busy,
        # The shown automatic run's budget (a new tab showed 10 above a finished 2-minute run); 10 with none.
        **common.kept(
            "tn_auto_minutes",
            float(((attached.record.get("auto") or {}) if attached else {}).get("minutes", 10.0)),
            busy,
        ),
        help="Every stage counts: decoding the images, the search, the final model and its evaluation.",
    )
    targets = st.selectbox(
        "Training targets",
        AUTO_TARGETS,
        disabled=busy,
        help="Chosen from the class names: soft ordinal labels when three or more classes are numbered grades "
        "(0_no_dr … 4_proliferative_dr), one-hot otherwise. "
        + next(c.help for c in CHOICES if c.name == "soft_labels"),
        **common.kept("tn_auto_targets", AUTO_TARGETS[0], busy),
    )
    st.caption(
        f"Dataset: {data.path}. Image size, colour, epochs, batch size, class weights, training targets and the "
        "search ranges are "
        "chosen from the data and the budget, starting from a plain CNN that the search can only improve on. "
        "Augmentation: horizontal flips, and rotations of a searched strength (none, up to ±18° or up to ±36°; "
        "the Augment page's settings apply under Advanced)."
    )
    label = f"Find a good model in {minutes:g} minute{'s' if minutes != 1 else ''}"
    if st.button(label, type="primary", disabled=busy):
        try:
            chosen = auto.plan(
                data.path,
                minutes,
                seed=data.seed,
                base=RunSpec(dataset=data),
                soft_labels=None if targets == AUTO_TARGETS[0] else targets,
            )
        except MedimgError as error:
            common.show_error(error)
        else:
            common.launch(chosen.spec, extra={"auto": chosen.record()})
else:
    with st.expander("Search ranges", expanded=attached is None):
        c1, c2, c3 = st.columns(3)
        low_column, high_column = c1.columns(2)
        lr_low = low_column.selectbox(
            "Learning rate from",
            LEARNING_RATES,
            format_func=lambda v: f"{v:.0e}",
            disabled=busy,
            help="Searched on a log scale between the two: Adam's usual 1e-3 sits in the middle of 1e-4 … 1e-2.",
            **common.kept("tn_lr_min", nearest_rate(space.learning_rate_min), busy),
        )
        lr_high = high_column.selectbox(
            "to",
            LEARNING_RATES,
            format_func=lambda v: f"{v:.0e}",
            disabled=busy,
            **common.kept("tn_lr_max", nearest_rate(space.learning_rate_max), busy),
        )
        blocks = c2.multiselect(
            "Conv blocks", [1, 2, 3, 4, 5], disabled=busy, **common.kept("tn_blocks", list(space.conv_blocks), busy)
        )
        filters = c3.slider(
            "Filters per block",
            8,
            512,
            step=8,
            disabled=busy,
            **common.kept("tn_filters", (space.filters_min, space.filters_max), busy),
        )
        c4, c5, c6 = st.columns(3)
        filters_step = c4.select_slider(
            "Filter step",
            [8, 16, 32, 64],
            disabled=busy,
            **common.kept("tn_step", space.filters_step if space.filters_step in (8, 16, 32, 64) else 16, busy),
        )
        if not busy:
            common.start_targets("tn_soft_labels", "search", common.get("dataset"), multiple=True)
        chosen = common.choice_widgets(space, [c5, c6], busy)
        if not busy:
            common.targets_note(common.get("dataset"), chosen["soft_labels"])
        c16, c17, c18 = st.columns(3)
        networks = c16.multiselect(
            "Networks",
            ["cnn", *backbones.BACKBONE_NAMES],
            disabled=busy,
            help="The configurable CNN and/or keras.applications backbones with a new head (issue #14).",
            **common.kept("tn_backbones", list(space.backbones), busy),
        )
        start_from = c17.selectbox(
            "Backbone starting weights",
            ["imagenet", "none"],
            disabled=busy,
            **common.kept("tn_weights", space.weights, busy),
        )
        fine_tune = c18.multiselect(
            "Top blocks fine-tuned in stage 2",
            [0, 1, 2, 3, 4],
            disabled=busy,
            **common.kept("tn_ft_blocks", list(space.fine_tune_blocks), busy),
        )
        missing = [
            row["file"]
            for row in backbones.weights_status()
            if row["backbone"] in networks and not row["found"] and start_from == "imagenet"
        ]
        if missing:
            st.warning(
                f"No ImageNet weights here for {', '.join(missing)}: the search would stop before its first trial. "
                "`python -m medimg weights list` says what is missing; fetch or import them, or start from none.",
                icon=":material/warning:",
            )
        p1, p2 = st.columns([1, 2])
        preset_name = p1.selectbox("Preset", list(PRESETS), disabled=busy, key="tn_preset")
        preset = PRESETS[preset_name]
        p2.caption(f"{preset.about} (`python -m medimg tune --preset {preset.name}` starts from the same).")
        if p1.button("Start from this preset", disabled=busy):
            common.put("search", preset.search)
            common.put("tune", tune.replace(max_trials=preset.max_trials))
            common.put("train", train.replace(epochs=preset.trial_epochs))
            for key in [k for k in st.session_state if str(k).startswith("tn_") and k not in ("tn_preset", "tn_mode")]:
                del st.session_state[key]
            st.rerun()

    with st.expander("Search settings", expanded=attached is None):
        s1, s2, s3 = st.columns(3)
        tuner_kind = s1.selectbox(
            "Tuner", ["random", "bayesian", "hyperband"], disabled=busy, **common.kept("tn_tuner", tune.tuner, busy)
        )
        objective = s2.selectbox(
            "Objective",
            ["val_auc", "val_accuracy", "val_loss"],
            format_func=OBJECTIVE_WORDS.__getitem__,
            help="What trials are ranked by, on the validation split.",
            disabled=busy,
            **common.kept("tn_objective", tune.objective, busy),
        )
        max_minutes = s3.number_input(
            "Time budget (minutes, 0 = none)",
            0.0,
            24 * 60.0,
            step=5.0,
            disabled=busy,
            **common.kept("tn_minutes", float(tune.max_minutes), busy),
        )
        s4, s5, s6 = st.columns(3)
        max_trials = s4.number_input("Trials", 1, 500, disabled=busy, **common.kept("tn_trials", tune.max_trials, busy))
        epochs = s5.number_input(
            "Epochs per trial", 1, 500, disabled=busy, **common.kept("tn_epochs", train.epochs, busy)
        )
        executions = s6.number_input(
            "Repeats per trial (averaged)",
            1,
            5,
            disabled=busy,
            help="Each trial is trained this many times from different random starts and scored by the mean: less "
            "noise, proportionally more time.",
            **common.kept("tn_exec", tune.executions_per_trial, busy),
        )
        cv_folds = s6.number_input(
            "Cross-validation folds (0 = off)",
            0,
            10,
            disabled=busy,
            help="Each trial is trained on k - 1 folds of the training split and scored on the fold left out, k "
            "times, by the mean (patient-aware when the dataset names patients): a steadier score on a small "
            "dataset, k times the time (not with repeats or Hyperband). A trial's saved model is its best fold's. The "
            "validation split stays out of the search: it chooses the ensemble and the operating point.",
            **common.kept("tn_cv_folds", tune.cv_folds, busy),
        )

    try:
        space = SearchSpace(
            learning_rate_min=lr_low,
            learning_rate_max=lr_high,
            conv_blocks=tuple(sorted(blocks)),
            filters_min=filters[0],
            filters_max=filters[1],
            filters_step=filters_step,
            **chosen,
            backbones=tuple(networks),
            weights=start_from,
            fine_tune_blocks=tuple(sorted(fine_tune)),
        )
        tune = TuneConfig(
            tuner=tuner_kind,
            objective=objective,
            max_trials=int(max_trials),
            executions_per_trial=int(executions),
            max_minutes=float(max_minutes),
            cv_folds=int(cv_folds),
        )
        train = train.replace(epochs=int(epochs), monitor=objective)
        common.put("search", space)
        common.put("tune", tune)
        common.put("train", train)
    except MedimgError as error:
        common.show_error(error)
        st.stop()

    data = common.get("dataset")
    st.caption(
        f"Dataset: {data.path} · {data.image_size} px {data.color} · augmentation: "
        f"{describe_augment(common.get('augment'))} · about {space.size_estimate():,.0f} "
        "points in this space"
    )
    notice = tuning.tuner_notice(tune, train.epochs)
    if notice:  # Hyperband overrides the trial count and epochs per trial: said before Start, not discovered after
        st.info(notice, icon=":material/info:")
    if st.button("Start search", type="primary", disabled=busy):
        common.launch(
            RunSpec(kind="tune", dataset=data, augment=common.get("augment"), train=train, search=space, tune=tune)
        )

run = common.pick_run("Search run", kind="tune", key="tune_run")
if run is None:
    st.info(
        "No search yet: give a time budget and press Find a good model."
        if mode == MODES[0]
        else "No search yet: set the ranges and press Start search."
    )
    st.stop()


@st.cache_data(max_entries=8, show_spinner=False)
def trial_charts(completed: list[dict], objective_name: str) -> tuple[Any, list, Any, Any]:
    """The charts drawn from the completed trials, and their importance ranking, computed once per set of completed
    trials: a live page redraws every POLL_SECONDS, and the importance forest alone took ~0.2 s a time at 11 trials,
    a large share of one of the two cores the search itself trains on."""
    ranked = importance.hyperparameter_importance(completed)
    return (
        charts.trials_figure(completed, objective_name),
        ranked,
        charts.importance_figure(ranked, objective_name) if ranked else None,
        charts.parallel_coordinates_figure(completed, objective_name),
    )


def show_run(run: runs.Run) -> None:
    progress = common.live_run_header(
        run, "Stop requested: the search ends at the next batch and keeps its completed trials."
    )
    record = run.record
    if record.get("auto"):
        with st.expander("What the automatic mode chose, and why", expanded=progress["status"] in runs.ACTIVE_STATUSES):
            # A static table: its cells wrap, where a data grid cut the longer reasons off mid-sentence.
            st.table(
                pd.DataFrame(
                    [{"Setting": c["setting"].replace("_", " "), "Why": c["reason"]} for c in record["auto"]["choices"]]
                ).set_index("Setting")
            )
    if record.get("tuner_notice"):
        st.info(record["tuner_notice"], icon=":material/info:")
    if record.get("search_warning"):
        st.warning(record["search_warning"], icon=":material/warning:")
    objective_name = record.get("objective") or run.spec.tune.objective  # val_loss for a one-class val
    finished_run = progress["status"] not in runs.ACTIVE_STATUSES
    best = runs.trial_number(record.get("best_trial")) if record.get("best_params") else None
    if finished_run and best is not None:
        show_best(run, record, best, objective_name)
    table = tuning.trial_table(run)
    if not table:
        return
    st.subheader("Trials")
    st.dataframe(pd.DataFrame(tables.trial_rows(table)), hide_index=True)
    completed = [row for row in table if row["status"] in tuning.COMPETING and row["score"] is not None]
    if completed:
        trials_chart, ranked, importance_chart, parallel_chart = trial_charts(completed, objective_name)
        left, right = st.columns(2)
        left.plotly_chart(trials_chart, key=f"trials_{run.id}")
        histories = {runs.trial_number(k): v for k, v in run.trial_histories().items()}
        right.plotly_chart(charts.trial_curves_figure(histories, objective_name, best), key=f"trial_curves_{run.id}")
        if ranked:
            left, right = st.columns(2)
            left.plotly_chart(importance_chart, key=f"importance_{run.id}")
            right.caption(
                f"Importance from the {len(completed)} completed trials: a random forest's mean decrease in "
                "impurity (optuna's MeanDecreaseImpurity evaluator). Rough with few trials; a parameter the "
                "search barely varied cannot show its importance."
            )
        else:
            st.caption(importance.missing_reason(completed, objective_name))
        st.plotly_chart(parallel_chart, key=f"parallel_{run.id}")
    else:
        st.caption("The charts of the trials appear when the first trial ends; its epochs are drawn below.")
    current = progress.get("trial")
    if current is not None and not finished_run and run.epoch_history(trial=current).get("epoch"):
        st.markdown(f"**Trial {runs.trial_number(current)}: per-epoch curves**")
        common.epoch_curves(run, "trial", trial=current)


def show_best(run: runs.Run, record: dict, best: int, objective_name: str) -> None:
    """The result first: what was saved and its validation score, the best trial's settings, the saved model's
    test figures, the next step."""
    ensemble = record.get("ensemble") or {}
    members = ensemble.get("members") or []
    first, kept = tuning.ensemble_scores(record)
    if len(members) > 1 and kept is not None and first is not None:  # the saved model, not a trial it averages
        st.success(
            f"Saved model: the mean of {len(members)} trials, {objective_name} = {kept:.4f} on validation "
            f"(best trial {best}'s model alone: {first:.4f}, scored the same way)"
        )
    else:
        st.success(f"Best trial {best}: {objective_name} = {record.get('best_score'):.4f}")
    if ensemble.get("note"):
        st.caption(f"The saved model is {ensemble['note']}.")
    if len(members) > 1:
        st.info(tuning.describe_ensemble(record), icon=":material/join:")
        st.caption(f"Settings of trial {best}, the best trial:")
    st.table(
        pd.DataFrame(
            describe_params(ModelParams.from_dict(record["best_params"]), run.spec.train), columns=["Setting", "Value"]
        ).set_index("Setting")
    )
    common.show_test_metrics(run)  # the search's final model, already evaluated
    if st.button("Train with these", type="primary", key=f"train_with_{run.id}"):
        st.session_state["train_from_run"] = run.id
        st.switch_page("pages/train.py", query_params={"from": run.id})


common.follow_live(run, show_run)
