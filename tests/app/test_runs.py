"""Runs page: the list of runs, comparing them, deleting one (and refusing to delete an active one)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from medimg.config import DatasetConfig, RunSpec
from medimg.store import runs

from .conftest import TINY_DATASET, FinishedRuns, by_label, charts, damaged_run, no_exception, open_page, values


def test_empty_runs_folder_says_how_to_start(runs_dir: Path) -> None:
    at = open_page("runs")
    no_exception(at)
    assert values(at.info) == [
        f"No runs yet under {runs_dir}. Start a search on the Tune page or training on the Train page."
    ]
    assert not at.dataframe and not at.multiselect and not at.button


def test_lists_every_run_with_its_kind_status_and_metrics(finished_runs: FinishedRuns) -> None:
    at = open_page("runs")
    no_exception(at)
    table = at.dataframe[0].value.set_index("run")
    assert sorted(table.index) == sorted([finished_runs.train_id, finished_runs.tune_id])
    assert table.loc[finished_runs.train_id, "kind"] == "training"
    assert table.loc[finished_runs.tune_id, "kind"] == "search"
    assert set(table["status"]) == {"completed"}
    record = runs.Run(finished_runs.root / finished_runs.train_id).record
    trained = record["metrics"]
    assert table.loc[finished_runs.train_id, "test AUC"] == f"{trained['auc']:.3f}"
    # Plain column names, a local date (not a Unix time), a duration in minutes:seconds, no None anywhere.
    assert list(table.columns) == [
        "kind",
        "status",
        "started",
        "duration",
        "dataset",
        "validation",
        "test AUC",
        "test accuracy (arg-max)",
        "note",
    ]
    assert table.loc[finished_runs.train_id, "started"] == time.strftime(
        "%Y-%m-%d %H:%M", time.localtime(record["created"])
    )
    assert re.fullmatch(r"\d+:\d\d", table.loc[finished_runs.train_id, "duration"])
    tune_record = runs.Run(finished_runs.root / finished_runs.tune_id).record
    # The saved model's own validation AUC (a mean of trials can score below its best trial), not a trial score.
    assert table.loc[finished_runs.tune_id, "validation"] == f"AUC {tune_record['metrics']['validation']['auc']:.3f}"
    assert not table.isin([None, "None", "nan"]).any().any()
    assert f"tensorboard --logdir {finished_runs.root}/<run>/logs" in values(at.caption)[0]


def test_compare_draws_the_chosen_metric_per_run(finished_runs: FinishedRuns) -> None:
    at = open_page("runs")
    compare = by_label(at.multiselect, "Runs to compare")
    assert set(compare.value) == {finished_runs.train_id, finished_runs.tune_id}  # runs with curves are preselected
    figure = charts(at)["compare"]
    # A search has no fit of its own: its best trial's curve stands for it, and says so (not an empty chart).
    tune = runs.Run(finished_runs.root / finished_runs.tune_id)
    best = tune.record["best_trial"]
    traces = {trace["name"]: trace for trace in figure["data"]}
    assert set(traces) == {finished_runs.train_id, f"{tune.id} (best trial {runs.trial_number(best)})"}
    assert traces[f"{tune.id} (best trial {runs.trial_number(best)})"]["y"] == pytest.approx(
        tune.trial_histories()[best]["val_auc"]
    )
    assert figure["layout"]["yaxis"]["title"]["text"] == "auc"

    by_label(at.radio, "Metric").set_value("loss").run()
    no_exception(at)
    figure = charts(at)["compare"]
    assert figure["layout"]["yaxis"]["title"]["text"] == "loss"
    history = runs.Run(finished_runs.root / finished_runs.train_id).epoch_history()
    traces = {trace["name"]: trace for trace in figure["data"]}
    assert traces[finished_runs.train_id]["y"] == pytest.approx(history["val_loss"])


def test_compare_says_so_when_no_chosen_run_has_an_epoch(runs_dir: Path) -> None:
    queued = runs.create_run(RunSpec(kind="train", dataset=DatasetConfig(**TINY_DATASET)), runs_dir)
    at = open_page("runs")
    no_exception(at)
    assert by_label(at.multiselect, "Runs to compare").value == [queued.id]
    assert "compare" not in charts(at)
    assert values(at.info) == ["None of these runs has finished an epoch yet, so there is no curve to compare."]


def test_compare_draws_a_search_in_its_first_trial_from_that_trial_so_far(runs_dir: Path) -> None:
    search = runs.create_run(RunSpec(kind="tune", dataset=DatasetConfig(**TINY_DATASET)), runs_dir)
    search.update(status="running")
    for epoch, auc in enumerate([0.61, 0.7, 0.74]):  # trial 1 is at its third epoch; no trial has finished
        search.append_event("epoch", trial="0", epoch=epoch, logs={"val_auc": auc, "val_loss": 1 - auc})
    at = open_page("runs")
    no_exception(at)
    traces = {trace["name"]: trace for trace in charts(at)["compare"]["data"]}
    name = f"{search.id} (trial {runs.trial_number('0')} so far)"
    assert list(traces) == [name] and traces[name]["y"] == pytest.approx([0.61, 0.7, 0.74])
    # Trial 1 ends; trial 2 runs longer but scores lower so far: the search is drawn by its best finished trial.
    search.append_event("trial_end", trial="0", score=0.74, status="COMPLETED")
    for epoch, auc in enumerate([0.5, 0.55, 0.6, 0.62]):
        search.append_event("epoch", trial="1", epoch=epoch, logs={"val_auc": auc, "val_loss": 1 - auc})
    at = open_page("runs")
    traces = {trace["name"]: trace for trace in charts(at)["compare"]["data"]}
    assert list(traces) == [f"{search.id} (best trial {runs.trial_number('0')} so far)"]
    # Stopped before it recorded a best trial: the same trial, no longer "so far".
    search.update(status="stopped")
    traces = {trace["name"]: trace for trace in charts(open_page("runs"))["compare"]["data"]}
    assert list(traces) == [f"{search.id} (best finished trial {runs.trial_number('0')})"]


def test_delete_needs_a_choice_and_a_confirmation_then_removes_the_folder(finished_runs: FinishedRuns) -> None:
    at = open_page("runs")
    delete = by_label(at.button, "Delete")
    assert delete.disabled
    by_label(at.selectbox, "Run to delete").set_value(finished_runs.tune_id).run()
    assert by_label(at.button, "Delete").disabled, "deleting must need the confirmation too"
    by_label(at.checkbox, "Yes, delete this run folder and everything in it").check().run()
    by_label(at.button, "Delete").click().run()
    no_exception(at)
    assert not (finished_runs.root / finished_runs.tune_id).exists()
    assert (finished_runs.root / finished_runs.train_id).is_dir()
    assert list(at.dataframe[0].value["run"]) == [finished_runs.train_id]


def test_an_active_run_is_not_deleted(runs_dir: Path) -> None:
    queued = runs.create_run(RunSpec(kind="train", dataset=DatasetConfig(**TINY_DATASET)), runs_dir)
    at = open_page("runs")
    assert list(at.dataframe[0].value["status"]) == ["starting"]  # run.json's "queued"
    by_label(at.selectbox, "Run to delete").set_value(queued.id)
    by_label(at.checkbox, "Yes, delete this run folder and everything in it").check().run()
    by_label(at.button, "Delete").click().run()
    no_exception(at)
    assert values(at.error) == [f"run {queued.id} is still starting; stop it before deleting it."]
    assert (runs_dir / queued.id / "run.json").is_file()


def test_a_damaged_run_is_listed_as_damaged_and_does_not_break_the_page(finished_runs: FinishedRuns) -> None:
    # A run whose run.json was cut short (disk full, killed editor): newest, so it is compared by default.
    damaged = damaged_run(finished_runs.root, "train-29991231-235959-dead")
    at = open_page("runs")
    no_exception(at)
    table = at.dataframe[0].value.set_index("run")
    assert table.loc[damaged.name, "status"] == "damaged"
    assert finished_runs.train_id in [trace["name"] for trace in charts(at)["compare"]["data"]]


def test_a_damaged_run_can_be_deleted(finished_runs: FinishedRuns) -> None:
    # Oldest, so it is not among the runs compared by default.
    damaged = damaged_run(finished_runs.root, "train-20200101-000000-dead")
    at = open_page("runs")
    no_exception(at)
    assert at.dataframe[0].value.set_index("run").loc[damaged.name, "status"] == "damaged"
    by_label(at.selectbox, "Run to delete").set_value(damaged.name)
    by_label(at.checkbox, "Yes, delete this run folder and everything in it").check().run()
    by_label(at.button, "Delete").click().run()
    no_exception(at)
    assert not at.error, values(at.error)
    assert not damaged.exists()
