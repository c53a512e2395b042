"""Evaluate page: headline metrics, confusion matrix and ROC charts, per-class table, misclassified test images."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from medimg import evaluation, runs

from .conftest import APP, DEMO, TIMEOUT, FinishedRuns, by_label, charts, no_exception, open_page, values


def test_empty_runs_folder_asks_for_a_trained_model(runs_dir: Path) -> None:
    at = open_page("evaluate")
    no_exception(at)
    assert values(at.info) == ["No evaluated run yet: train a model on the Train page (or finish a search) first."]
    assert not at.metric and not at.get("plotly_chart")


def test_a_finished_run_shows_its_metrics_and_charts(finished_runs: FinishedRuns) -> None:
    at = open_page("evaluate")
    picker = at.selectbox(key="evaluate_run")
    # Both runs have a test evaluation; each is labelled "<id> · <status> · test AUC <auc>".
    assert sorted(option.split(" · ")[:2] for option in picker.options) == sorted(
        [[finished_runs.train_id, "completed"], [finished_runs.tune_id, "completed"]]
    )
    assert all(" · test AUC " in option for option in picker.options)
    picker.set_value(finished_runs.train_id).run()
    no_exception(at)
    assert at.query_params["run"] == finished_runs.train_id

    run = runs.Run(finished_runs.root / finished_runs.train_id)
    metrics = run.read_json("metrics.json")
    shown = {metric.label: metric.value for metric in at.metric}
    assert shown == {
        "Accuracy": f"{metrics['accuracy']:.3f}",
        "Balanced accuracy": f"{metrics['balanced_accuracy']:.3f}",
        "ROC AUC": f"{metrics['auc']:.3f}",
        "Test images": "30",
    }
    figures = charts(at)
    confusion = figures["confusion"]["data"][0]
    assert confusion["type"] == "heatmap"
    assert confusion["x"] == ["NORMAL", "PNEUMONIA"] and confusion["y"] == ["NORMAL", "PNEUMONIA"]
    assert confusion["text"][0][0].startswith(f"{metrics['confusion_matrix'][0][0]}<br>")
    roc_names = [trace["name"] for trace in figures["roc"]["data"]]
    assert roc_names[-1] == "chance" and len(roc_names) >= 2
    assert all("AUC" in name for name in roc_names[:-1])

    per_class = at.dataframe[0].value
    assert sorted(per_class.index) == ["NORMAL", "PNEUMONIA"]
    assert {"sensitivity", "specificity", "precision", "f1"} <= set(per_class.columns)


def test_misclassified_test_images_are_shown_with_their_labels(finished_runs: FinishedRuns) -> None:
    at = open_page("evaluate")
    at.selectbox(key="evaluate_run").set_value(finished_runs.train_id).run()
    run = runs.Run(finished_runs.root / finished_runs.train_id)
    wrong = [row for row in evaluation.read_predictions(run) if row["true"] != row["predicted"]]
    assert "Misclassified test images" in values(at.subheader)
    if not wrong:
        assert values(at.success) == ["Every test image is classified correctly."]
        return
    how_many = by_label(at.slider, "How many")
    assert how_many.value == min(12, len(wrong)) and how_many.max == min(48, len(wrong))
    captions = [caption for image in at.image for caption in image.captions]
    assert len(captions) == min(12, len(wrong))
    first = wrong[0]
    assert captions[0].startswith(f"true {first['true']} → {first['predicted']} (")

    how_many.set_value(1).run()
    no_exception(at)
    assert len([caption for image in at.image for caption in image.captions]) == 1


def test_the_run_in_the_url_is_the_one_shown(finished_runs: FinishedRuns) -> None:
    """A refresh or a second tab with ?run=ID reattaches to that run."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params["run"] = finished_runs.tune_id
    at.run()
    at.switch_page("pages/evaluate.py").run()
    no_exception(at)
    assert at.selectbox(key="evaluate_run").value == finished_runs.tune_id
    tune_metrics = runs.Run(finished_runs.root / finished_runs.tune_id).read_json("metrics.json")
    assert {m.label: m.value for m in at.metric}["Accuracy"] == f"{tune_metrics['accuracy']:.3f}"


def test_damaged_metrics_file_is_reported_with_the_command_that_recomputes_it(finished_runs: FinishedRuns) -> None:
    (finished_runs.root / finished_runs.train_id / "metrics.json").write_text('{"accuracy": ')
    at = open_page("evaluate")
    at.selectbox(key="evaluate_run").set_value(finished_runs.train_id).run()
    no_exception(at)
    assert values(at.error) == [
        f"{finished_runs.train_id}: metrics.json is missing or damaged; "
        f"run `python -m medimg evaluate {finished_runs.train_id}`."
    ]
    assert not at.metric and not at.get("plotly_chart")


@pytest.fixture(scope="module")
def one_wrong_run(tmp_path_factory: pytest.TempPathFactory, isolated_cache: Path) -> runs.Run:
    """A real run whose test split is one NORMAL and one PNEUMONIA X-ray.

    After one epoch on 16 px images the model predicts one class for every image (see its predictions.csv), so
    exactly one of the two test images is misclassified.
    """
    from medimg import jobs
    from medimg.config import DatasetConfig, ModelParams, RunSpec, TrainConfig

    data = tmp_path_factory.mktemp("two-test-images")
    for split in ("train", "val"):
        shutil.copytree(DEMO / split, data / split)
    for label in ("NORMAL", "PNEUMONIA"):
        (data / "test" / label).mkdir(parents=True)
        first = sorted((DEMO / "test" / label).glob("*.jpeg"))[0]
        shutil.copy(first, data / "test" / label / first.name)
    spec = RunSpec(
        kind="train",
        dataset=DatasetConfig(path=str(data), image_size=16),
        train=TrainConfig(epochs=1),
        params=ModelParams(filters=(8,), dense_units=8),
    )
    run = runs.create_run(spec, tmp_path_factory.mktemp("one-wrong-runs"))
    jobs.execute(run)
    return run


def test_the_two_image_run_has_exactly_one_misclassified_image(one_wrong_run: runs.Run) -> None:
    """Guards the precondition of the next test, so that test can only fail because of the page."""
    predictions = evaluation.read_predictions(one_wrong_run)
    assert len(predictions) == 2
    assert len([row for row in predictions if row["true"] != row["predicted"]]) == 1


def test_a_single_misclassified_image_is_shown(one_wrong_run: runs.Run, runs_dir: Path) -> None:
    shutil.copytree(one_wrong_run.path, runs_dir / one_wrong_run.id)
    at = open_page("evaluate")
    no_exception(at)
    assert {m.label: m.value for m in at.metric}["Test images"] == "2"
    [wrong] = [row for row in evaluation.read_predictions(one_wrong_run) if row["true"] != row["predicted"]]
    captions = [caption for image in at.image for caption in image.captions]
    assert len(captions) == 1 and captions[0].startswith(f"true {wrong['true']} → {wrong['predicted']} (")
