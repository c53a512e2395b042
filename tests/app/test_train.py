"""Train page: manual or best-of-a-search parameters, launching a real training process, the run limit, Stop."""

from __future__ import annotations

from pathlib import Path

import pytest

from medimg import jobs, workflows
from medimg.config import (
    CHOICES,
    DatasetConfig,
    ModelParams,
    RunSpec,
    SearchSpace,
    TrainConfig,
    TuneConfig,
    describe_augment,
    describe_params,
)
from medimg.store import runs

from .conftest import (
    TINY_DATASET,
    FinishedRuns,
    by_label,
    charts,
    damaged_run,
    no_exception,
    open_page,
    run_picker,
    values,
    wait_for,
)

TINY_PARAMS = ModelParams(filters=(8,), dense_units=8)
# Every categorical hyperparameter has its widget (from `config.CHOICES`), beside filters, rate and the schedule.
MANUAL_KEYS = ["tr_filters", "tr_lr", *(f"tr_{choice.name}" for choice in CHOICES)]
MANUAL_KEYS += ["tr_epochs", "tr_patience", "tr_weights"]
LIMIT = "the limit is 1. Wait for it to finish or stop it; the limit is set by MEDIMG_MAX_CONCURRENT_RUNS."


def shown_metrics(at) -> dict[str, str]:
    return {metric.label: metric.value for metric in at.metric}


def test_without_a_search_the_manual_parameters_are_offered(runs_dir: Path) -> None:
    at = open_page("train")
    no_exception(at)
    source = at.radio(key="train_source")
    assert source.options == ["Best of a search", "Manual"] and source.value == "Manual"
    for key in MANUAL_KEYS:
        assert at.get_by_key(key).disabled is False, key
    assert at.text_input(key="tr_filters").value == "32, 64"  # ModelParams() defaults
    assert not by_label(at.button, "Start training").disabled
    assert values(at.info) == ["No training run yet: press Start training."]
    # What Start trains on is said before it (seen: nothing named the dataset chosen on the Dataset page).
    data, augment, params = (at.session_state[k] for k in ("dataset", "augment", "params"))
    expected = (
        f"Dataset: {data.path} · {data.image_size} px {data.color} · augmentation: "
        f"{describe_augment(augment.scaled(params.augment_strength))}"
    )
    assert expected in values(at.caption)


def test_best_of_a_search_without_a_finished_search_says_where_to_get_one(runs_dir: Path) -> None:
    at = open_page("train")
    at.radio(key="train_source").set_value("Best of a search").run()
    no_exception(at)
    assert values(at.info) == ["No finished search yet. Run one on the Tune page, or choose Manual."]
    assert "Start training" not in [button.label for button in at.button]


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ("32, sixty-four", "filters must be whole numbers separated by commas, e.g. 32, 64 ("),
        ("", "0 conv blocks; use 1 to 6."),
        ("8, 8, 8, 8, 8, 8, 8", "7 conv blocks; use 1 to 6."),
    ],
    ids=["not-a-number", "empty", "too-many-blocks"],
)
def test_bad_filters_are_explained_and_nothing_can_be_started(runs_dir: Path, filters: str, message: str) -> None:
    at = open_page("train")
    at.text_input(key="tr_filters").input(filters).run()
    no_exception(at)
    assert len(at.error) == 1 and at.error[0].value.startswith(message)
    assert "Start training" not in [button.label for button in at.button]


def test_manual_choices_become_the_parameters_of_the_next_run(runs_dir: Path) -> None:
    at = open_page("train")
    at.text_input(key="tr_filters").input("16, 32, 64")
    at.selectbox(key="tr_activation").set_value("gelu")
    at.number_input(key="tr_dropout").set_value(0.1)
    at.number_input(key="tr_epochs").set_value(3).run()
    no_exception(at)
    assert at.session_state["params"] == ModelParams(filters=(16, 32, 64), activation="gelu", dropout=0.1)
    assert at.session_state["final"].epochs == 3  # the Train page's own, not the Tune page's per-trial fit


def test_a_finished_search_supplies_the_parameters_and_the_dataset(finished_runs: FinishedRuns) -> None:
    at = open_page("train")
    no_exception(at)
    search = runs.Run(finished_runs.root / finished_runs.tune_id)
    assert at.radio(key="train_source").value == "Best of a search"
    assert by_label(at.selectbox, "Search run").value == search.id
    shown_params = at.table[0].value["Value"].to_dict()
    assert shown_params == dict(describe_params(ModelParams.from_dict(search.record["best_params"]), search.spec.train))
    assert f"Dataset and augmentation of {search.id}: {DatasetConfig(**TINY_DATASET).path}, 16 px gray." in values(
        at.caption
    )
    assert "tr_filters" not in [widget.key for widget in at.text_input]
    # The schedule is the search's final fit, as `train --from-run` makes it, not the page's manual one.
    final = workflows.train_spec_from_search(search).train
    assert final.epochs >= 50 and final.monitor == search.spec.tune.objective
    assert at.number_input(key=f"tr_{search.id}_epochs").value == final.epochs
    assert at.number_input(key=f"tr_{search.id}_patience").value == final.early_stopping_patience
    assert any(f"Final-fit schedule: up to {final.epochs} epochs" in text for text in values(at.caption))


def test_a_finished_training_run_shows_curves_and_test_metrics(finished_runs: FinishedRuns) -> None:
    at = open_page("train")
    no_exception(at)
    run = runs.Run(finished_runs.root / finished_runs.train_id)
    assert run_picker(at, "train_run").value == run.id
    metrics = run.record["metrics"]
    shown = shown_metrics(at)
    assert shown["Status"] == "completed" and shown["Epoch"] == "1 of 1"
    assert shown["Test accuracy at 0.5"] == f"{metrics['accuracy']:.3f}"  # two classes: the threshold is said
    point = metrics["operating_point"]
    assert any(
        text.startswith(f"At the operating point chosen on validation (Youden's J, threshold {point['threshold']:.3f})")
        and text.endswith("Predict and Evaluate call at this threshold.")
        for text in values(at.caption)
    )
    assert shown["Test AUC"] == f"{metrics['auc']:.3f}"
    assert {f"train_{run.id}_{metric}" for metric in ("loss", "accuracy", "auc")} <= set(charts(at))
    # The link opens Evaluate on this run (?run=), not on the newest run.
    assert [(link.label, link.proto.query_string) for link in at.get("page_link")] == [
        ("Evaluate this model", f"run={run.id}")
    ]


def test_a_finished_run_that_never_calls_a_class_says_so_with_its_macro_auc(
    never_calling_run: runs.Run, runs_dir: Path
) -> None:
    """The Tune and Train summaries (`common.show_test_metrics`) warned of nothing; RetinaMNIST's runs never called
    grade 4, and only the Evaluate page said so."""
    import shutil

    from medimg.results import evaluation

    shutil.copytree(never_calling_run.path, runs_dir / never_calling_run.id)
    at = open_page("train", run=never_calling_run.id)
    no_exception(at)
    assert evaluation.never_predicted_warning(["VIRUS"], 3) in values(at.warning)
    auc = [metric for metric in at.metric if metric.label == "Test macro AUC"]
    assert len(auc) == 1 and auc[0].value == f"{never_calling_run.record['metrics']['auc']:.3f}"
    assert auc[0].help.startswith("Macro average: the unweighted mean of the one-vs-rest ROC AUCs")


def test_a_finished_run_on_graded_classes_says_how_far_its_calls_miss(graded_run: runs.Run, runs_dir: Path) -> None:
    import shutil

    from medimg.metrics import ordinal

    shutil.copytree(graded_run.path, runs_dir / graded_run.id)
    at = open_page("train", run=graded_run.id)
    no_exception(at)
    assert ordinal.describe(graded_run.record["metrics"]["ordinal"]) in values(at.caption)


def test_start_training_launches_a_run_that_is_limited_watched_and_stopped(runs_dir: Path) -> None:
    state = {"dataset": DatasetConfig(**TINY_DATASET), "params": TINY_PARAMS}
    at = open_page("train", **state)
    at.number_input(key="tr_epochs").set_value(500)
    at.number_input(key="tr_patience").set_value(0).run()
    by_label(at.button, "Start training").click().run()
    no_exception(at)
    run_id = at.query_params["run"]
    run = runs.Run(runs_dir / run_id)
    spec = run.spec
    assert spec.kind == "train" and spec.params == TINY_PARAMS and spec.dataset == DatasetConfig(**TINY_DATASET)
    assert spec.train.epochs == 500 and spec.train.early_stopping_patience == 0
    assert runs.pid_alive(run.pid), "training runs in its own process"
    assert run_picker(at, "train_run").value == run_id
    assert shown_metrics(at)["Status"] in ("starting", "running")
    assert by_label(at.button, "Start training").disabled and at.get_by_key("tr_epochs").disabled

    # Meanwhile a search started from another tab is refused.
    tune_tab = open_page(
        "tune",
        dataset=DatasetConfig(**TINY_DATASET),
        search=SearchSpace(conv_blocks=(1,), filters_min=8, filters_max=16, filters_step=8, dense_units=(0,)),
        tune=TuneConfig(max_trials=1),
        train=TrainConfig(epochs=1),
        tn_mode="Advanced",
    )
    by_label(tune_tab.button, "Start search").click().run()
    no_exception(tune_tab)
    assert values(tune_tab.error) == [f"1 run(s) already in progress ({run_id}) and {LIMIT}"]
    assert [r.id for r in runs.list_runs(runs_dir)] == [run_id]

    wait_for(lambda: run.events("epoch"), 90, "the first epoch to finish")
    watcher = open_page("train", run=run_id)  # a refresh: the URL reattaches to the running training
    no_exception(watcher)
    assert shown_metrics(watcher)["Status"] == "running"
    assert by_label(watcher.button, "Start training").disabled
    assert f"train_{run_id}_loss" in charts(watcher)
    seen = len(charts(watcher)[f"train_{run_id}_loss"]["data"][0]["x"])
    wait_for(lambda: len(run.epoch_history()["epoch"]) > seen + 1, 60, "more epochs")
    watcher.run()  # the fragment's timer does not fire in AppTest: redraw by hand
    no_exception(watcher)
    assert len(charts(watcher)[f"train_{run_id}_loss"]["data"][0]["x"]) > seen
    watcher.button(key=f"stop_{run_id}").click().run()
    no_exception(watcher)
    assert run.stop_requested()
    assert values(watcher.toast) == ["Stop requested: training ends at the next batch and saves the model it has."]

    wait_for(lambda: run.status not in runs.ACTIVE_STATUSES, 90, "the training to stop")
    ended = open_page("train", run=run_id)
    no_exception(ended)
    shown = shown_metrics(ended)
    assert shown["Status"] == "stopped"
    epochs = len(run.epoch_history()["epoch"])
    assert 1 <= epochs < 500
    [message] = values(ended.info)
    assert message.startswith(
        f"stopped on request after {epochs} of {run.spec.train.epochs} epochs; model saved; Resume continues it (CLI: "
    )
    assert shown["Test accuracy at 0.5"] == f"{run.record['metrics']['accuracy']:.3f}"
    assert (run.path / "model.keras").is_file()
    assert not by_label(ended.button, "Start training").disabled


def test_a_damaged_run_in_the_folder_does_not_break_the_page(finished_runs: FinishedRuns) -> None:
    damaged_run(finished_runs.root, "tune-20200101-000000-dead")
    at = open_page("train")
    no_exception(at)
    assert by_label(at.selectbox, "Search run").value == finished_runs.tune_id
    assert run_picker(at, "train_run").value == finished_runs.train_id


def test_a_new_tab_shows_start_disabled_while_training_is_in_progress(runs_dir: Path) -> None:
    queued = runs.create_run(RunSpec(kind="train", dataset=DatasetConfig(**TINY_DATASET), params=TINY_PARAMS), runs_dir)
    at = open_page("train", dataset=DatasetConfig(**TINY_DATASET), params=TINY_PARAMS)
    no_exception(at)
    assert run_picker(at, "train_run").value == queued.id
    assert shown_metrics(at)["Status"] == "starting"  # run.json's "queued": its process is starting
    assert by_label(at.button, "Start training").disabled


@pytest.mark.parametrize("from_search", [False, True], ids=["manual", "from-search"])
def test_a_training_in_progress_is_shown_with_its_own_settings(finished_runs: FinishedRuns, from_search: bool) -> None:
    """Seen: a Manual training shown, after a page switch, under "Best of a search" with a search's dataset and
    table above it (the radio had fallen back to its default)."""
    search = runs.Run(finished_runs.root / finished_runs.tune_id)
    if from_search:
        spec = workflows.train_spec_from_search(search)
    else:
        spec = RunSpec(kind="train", dataset=DatasetConfig(**TINY_DATASET), params=TINY_PARAMS)
    queued = runs.create_run(spec, finished_runs.root, extra={"from_search": search.id if from_search else None})
    at = open_page("train", run=queued.id)
    no_exception(at)
    assert run_picker(at, "train_run").value == queued.id
    assert at.radio(key="train_source").value == ("Best of a search" if from_search else "Manual")
    assert at.radio(key="train_source").disabled
    captions = values(at.caption)
    if from_search:
        assert by_label(at.selectbox, "Search run").value == search.id
        assert any(text.startswith(f"Dataset and augmentation of {search.id}") for text in captions)
    else:
        assert at.text_input(key="tr_filters").value == "8"  # the run's own filters, not the session's
        assert not any(text.startswith("Dataset and augmentation of") for text in captions)


def test_stop_pressed_while_queued_is_honoured(runs_dir: Path) -> None:
    spec = RunSpec(
        kind="train",
        dataset=DatasetConfig(**TINY_DATASET),
        train=TrainConfig(epochs=3, early_stopping_patience=0),
        params=TINY_PARAMS,
    )
    run = runs.create_run(spec, runs_dir)  # what jobs.launch writes before its process starts
    at = open_page("train", run=run.id)
    assert shown_metrics(at)["Status"] == "starting"
    at.button(key=f"stop_{run.id}").click().run()
    no_exception(at)
    assert run.stop_requested()
    jobs.start_process(run)  # the process picks the run up a moment after the press
    wait_for(lambda: run.status not in runs.ACTIVE_STATUSES, 90, "the run to end")
    assert run.status == "stopped"


def test_a_backbone_without_its_weights_is_warned_before_start_and_chosen_into_the_params(
    runs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))  # no ImageNet weights anywhere
    monkeypatch.delenv("MEDIMG_WEIGHTS_DIR", raising=False)
    at = open_page("train")
    assert at.selectbox(key="tr_start_weights").disabled  # the CNN has no starting weights to choose
    at.selectbox(key="tr_backbone").set_value("efficientnet_b0").run()
    no_exception(at)
    # Seen: "ImageNet (found offline)" above the warning that the weights are not found.
    assert at.selectbox(key="tr_start_weights").options == ["ImageNet (not found offline)", "none (random)"]
    warning = " ".join(values(at.warning))
    assert "no file efficientnetb0_notop.h5 (MD5 50bc09e76180e00e4465e1a485ddc09d)" in warning
    assert "python -m medimg weights import FILE" in warning
    at.selectbox(key="tr_start_weights").set_value("none").run()
    no_exception(at)
    assert not [w for w in values(at.warning) if "efficientnetb0_notop.h5" in w]
    params = at.session_state["params"]
    assert (params.backbone, params.weights, params.fine_tune_blocks) == ("efficientnet_b0", "none", 0)


def test_a_value_the_widgets_do_not_offer_is_kept_not_replaced(runs_dir: Path) -> None:
    plain = ModelParams.plain_cnn(28)  # dropout 0.3: not among the offered 0, 0.1, 0.25, 0.5
    at = open_page("train", params=plain)
    no_exception(at)
    assert at.number_input(key="tr_dropout").value == 0.3
    at.number_input(key="tr_epochs").set_value(2).run()
    assert at.session_state["params"] == plain


def test_numbers_are_typed_in_and_a_refused_one_is_explained(runs_dir: Path) -> None:
    at = open_page("train")
    at.number_input(key="tr_dropout").set_value(0.4).run()  # not among the values a search offers
    at.number_input(key="tr_dense_units").set_value(100).run()
    no_exception(at)
    assert at.session_state["params"].dropout == 0.4 and at.session_state["params"].dense_units == 100
    assert at.number_input(key="tr_dropout").help == "A search offers 0.0, 0.1, 0.25, 0.5."
    at.number_input(key="tr_kernel_size").set_value(4).run()  # ModelParams refuses it, with its own words
    no_exception(at)
    assert [e.value for e in at.error] == ["kernel_size 4 must be 1, 3, 5 or 7."]
    assert "Start training" not in [button.label for button in at.button]


def test_weight_averaging_is_picked_from_its_momenta_and_reaches_the_model(runs_dir: Path) -> None:
    at = open_page("train")
    averaging = at.selectbox(key="tr_ema_momentum")
    assert averaging.options == ["none", "0.99", "0.999"] and averaging.value == 0.0
    assert "moving average of the weights" in averaging.help
    averaging.set_value(0.99).run()
    no_exception(at)
    assert at.session_state["params"].ema_momentum == 0.99


def test_training_targets_are_picked_by_name_and_reach_the_model(runs_dir: Path) -> None:
    at = open_page("train")
    targets = at.selectbox(key="tr_soft_labels")
    assert targets.options == ["none", "smoothing", "ordinal"] and targets.value == "none"
    assert "ordered grades" in targets.help
    targets.set_value("ordinal").run()
    no_exception(at)
    assert at.session_state["params"].soft_labels == "ordinal"


def test_a_failed_run_shown_on_opening_is_named_with_its_error(runs_dir: Path) -> None:
    # A page opens on the newest run of its kind, perhaps an old one on another dataset: its error says whose it is.
    failed = runs.create_run(RunSpec(kind="train", dataset=DatasetConfig(**TINY_DATASET), params=TINY_PARAMS), runs_dir)
    failed.set_status("failed", error="/data/scans.zip is a file; give a folder of class folders or a CSV manifest.")
    at = open_page("train")
    no_exception(at)
    assert values(at.error) == [
        f"Run {failed.id} failed: /data/scans.zip is a file; give a folder of class folders or a CSV manifest."
    ]
    # A stopped or failed run offers Resume on the page (seen: only `python -m medimg resume` could), which starts
    # its process again; a completed run does not offer it.
    at.button(key=f"resume_{failed.id}").click().run()
    no_exception(at)
    assert failed.status in runs.ACTIVE_STATUSES
    jobs.stop(failed)  # stopped before it starts again: the test trains nothing
    wait_for(lambda: failed.status not in runs.ACTIVE_STATUSES, 60, "the resumed run to end")
    assert failed.record["status"] == "stopped"
    failed.set_status("completed")
    at = open_page("train")
    assert not [button for button in at.button if button.key == f"resume_{failed.id}"]


def test_manual_training_starts_graded_classes_on_ordinal_targets(runs_dir: Path, tmp_path: Path) -> None:
    from tests.test_auto import graded_folders

    at = open_page("train")  # the demo first, as the app opens
    assert at.selectbox(key="tr_soft_labels").value == "none"
    grades = graded_folders(tmp_path / "grades", ["0_none", "1_mild", "2_severe"])
    at.session_state["dataset"] = DatasetConfig(path=str(grades), image_size=16)
    at.run()
    no_exception(at)
    assert at.selectbox(key="tr_soft_labels").value == "ordinal"
    at.selectbox(key="tr_soft_labels").set_value("none").run()
    assert any("numbered grades (0_none … 2_severe)" in c for c in values(at.caption))
    assert at.session_state["params"].soft_labels == "none"
