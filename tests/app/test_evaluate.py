"""Evaluate page: operating point (threshold, presets, positive class) with bootstrap intervals, ROC / PR with the
operating point, calibration, the clickable confusion matrix and its images with Grad-CAM, subgroups, the leakage
check, re-evaluation of an old run, and the export buttons."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from medimg.metrics import clinical, subgroups
from medimg.results import evaluation
from medimg.store import runs

from .conftest import APP, DEMO, TIMEOUT, FinishedRuns, by_label, charts, no_exception, open_page, run_picker, values

TILES = ["Sensitivity", "Specificity", "PPV", "NPV", "ROC AUC", "Test images"]
TILE_KEYS = ["sensitivity", "specificity", "ppv", "npv", "auc"]


def shown(at: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in at.metric}


def expected_tiles(run: runs.Run, threshold: float, positive: str) -> dict[str, str]:
    scored = evaluation.load_scored(run)
    summary = evaluation.clinical_summary(scored["test"], scored.get("val"), threshold, positive)
    metrics = summary["intervals"]["metrics"]
    tiles = {
        label: "–" if metrics[key]["estimate"] is None else f"{metrics[key]['estimate']:.3f}"
        for label, key in zip(TILES, TILE_KEYS, strict=False)
    }
    return {**tiles, "Test images": str(summary["count"])}


def threshold_slider(at: AppTest):
    (slider,) = [slider for slider in at.slider if str(slider.key).startswith("evaluate_threshold_")]
    return slider


def cell_captions(at: AppTest) -> list[str]:
    return [caption for image in at.image for caption in image.captions]


def test_empty_runs_folder_asks_for_a_trained_model(runs_dir: Path) -> None:
    at = open_page("evaluate")
    no_exception(at)
    assert values(at.info) == [
        "No evaluated run yet: find a model with the Tune page's Automatic mode, or train one on the Train page."
    ]
    assert not at.metric and not at.get("plotly_chart")


def test_a_finished_run_shows_metrics_with_intervals_curves_and_calibration(finished_runs: FinishedRuns) -> None:
    at = open_page("evaluate")
    picker = run_picker(at, "evaluate_run")
    # Both runs have a test evaluation; each is labelled "<id> · <status> · val AUC <auc>": validation, the split
    # a model is chosen on, never test.
    assert sorted(option.split(" · ")[:2] for option in picker.options) == sorted(
        [[finished_runs.train_id, "completed"], [finished_runs.tune_id, "completed"]]
    )
    # The saved model's own validation AUC (`evaluation.validation_figures`), not its best trial's score.
    tune_score = runs.Run(finished_runs.root / finished_runs.tune_id).record["metrics"]["validation"]["auc"]
    assert f"{finished_runs.tune_id} · completed · val AUC {tune_score:.3f}" in picker.options
    assert not [option for option in picker.options if "test" in option]
    picker.set_value(finished_runs.train_id).run()
    no_exception(at)
    assert at.query_params["run"] == finished_runs.train_id
    run = runs.Run(finished_runs.root / finished_runs.train_id)

    positive = by_label(at.selectbox, "Positive class")
    assert positive.options == ["NORMAL", "PNEUMONIA"] and positive.value == "PNEUMONIA"
    # The slider starts at the operating point chosen on validation (Youden's J), not at 0.5, and says so.
    scored = evaluation.load_scored(run)
    val = scored["val"]
    youden = round(clinical.youden_threshold(val.labels == 1, val.probs[:, 1]), 3)
    assert threshold_slider(at).value == pytest.approx(youden)
    start = f"Threshold {youden:.3f}: Youden's J on the validation split"  # "(coincides with …)" may follow
    assert [caption for caption in values(at.caption) if caption.startswith(start)]
    assert shown(at) == expected_tiles(run, youden, "PNEUMONIA")
    assert not by_label(at.download_button, "Export report (HTML)").disabled  # a threshold chosen on validation
    # Seen in review: the page offered the report and the model, not the predictions behind its figures.
    assert "each class's probability" in by_label(at.download_button, "Download predictions (CSV)").help
    histogram = charts(at)["score_histogram"]["data"]
    assert [trace["name"] for trace in histogram] == [
        f"true {name} ({int((scored['test'].labels == i).sum())})" for i, name in enumerate(["NORMAL", "PNEUMONIA"])
    ]
    assert sorted(histogram[1]["x"]) == pytest.approx(sorted(scored["test"].probs[scored["test"].labels == 1, 1]))
    at.button(key="preset_default").click().run()  # 0.5 is one click away
    assert threshold_slider(at).value == 0.5
    assert shown(at) == expected_tiles(run, 0.5, "PNEUMONIA")
    assert [w for w in values(at.warning) if w.startswith("Threshold 0.500: 0.5, the arg-max: not chosen on any")]

    summary = evaluation.clinical_summary(scored["test"], scored["val"], 0.5, "PNEUMONIA")
    (table,) = at.table
    frame = table.value
    assert list(frame.index) == [clinical.metric_label(k) for k in summary["intervals"]["metrics"]]
    sensitivity = summary["intervals"]["metrics"]["sensitivity"]
    row = frame.loc["Sensitivity (recall)"]
    assert row["estimate"] == f"{sensitivity['estimate']:.3f}"
    assert row["95% CI"] == f"{sensitivity['low']:.3f}–{sensitivity['high']:.3f}"
    assert "95% intervals: stratified percentile bootstrap, 2000 resamples" in " ".join(values(at.caption))

    figures = charts(at)
    assert {"confusion", "roc", "pr", "calibration"} <= set(figures)
    heatmap, cells = figures["confusion"]["data"][:2]
    matrix = clinical.confusion_matrix(scored["test"], 0.5, "PNEUMONIA")
    assert heatmap["type"] == "heatmap" and heatmap["text"][1][0].startswith(f"{matrix[1][0]}<br>")
    assert cells["type"] == "scatter" and cells["customdata"] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    point = figures["roc"]["data"][-1]
    assert point["name"] == "operating point (threshold 0.500)"
    assert point["x"][0] == pytest.approx(1 - summary["operating_point"]["specificity"])
    assert point["y"][0] == pytest.approx(summary["operating_point"]["sensitivity"])
    assert figures["pr"]["data"][-1]["name"] == "operating point (threshold 0.500)"
    calibration = summary["calibration"]
    names = [trace["name"] for trace in figures["calibration"]["data"]]
    assert names == [
        "perfectly calibrated",
        f"before (ECE {calibration['before']['ece']:.3f})",
        f"after temperature scaling (ECE {calibration['after']['ece']:.3f})",
    ]
    expected = f"Temperature scaling fitted on validation: T = {calibration['temperature']:.3f}"
    if calibration["warning"]:  # a failed fit is a warning, never the "ECE before → after" success line
        assert calibration["warning"] in values(at.warning)
        assert not [text for text in values(at.caption) if text.startswith(expected)]
    else:
        assert [text for text in values(at.caption) if text.startswith(expected)]
    assert values(at.success) == ["Leakage check passed: no identical images across splits (140 checked)."]
    # An export at a threshold nobody chose on validation waits for the user to confirm it.
    assert by_label(at.download_button, "Export report (HTML)").disabled
    assert by_label(at.download_button, "Download model + preprocessing contract (zip)").disabled
    by_label(at.checkbox, "Export with threshold 0.500, which was not chosen on validation").check().run()
    assert not by_label(at.download_button, "Export report (HTML)").disabled
    assert not by_label(at.download_button, "Download model + preprocessing contract (zip)").disabled
    evaluated = run_picker(at, "evaluate_run").value  # Predict opens on the run evaluated here, not on the newest
    assert [(link.label, link.proto.query_string) for link in at.get("page_link")] == [
        ("Next: predict new images with this model", f"run={evaluated}")
    ]


def test_threshold_slider_and_presets_move_the_operating_point(finished_runs: FinishedRuns) -> None:
    at = open_page("evaluate", run=finished_runs.train_id)
    run = runs.Run(finished_runs.root / finished_runs.train_id)
    scored = evaluation.load_scored(run)
    threshold_slider(at).set_value(0.3).run()
    no_exception(at)
    assert shown(at) == expected_tiles(run, 0.3, "PNEUMONIA")
    assert "Threshold 0.300: set by hand. Pick a preset to use an operating point chosen on validation." in values(
        at.warning
    )
    matrix = clinical.confusion_matrix(scored["test"], 0.3, "PNEUMONIA")
    texts = charts(at)["confusion"]["data"][0]["text"]
    assert [[int(cell.split("<br>")[0]) for cell in row] for row in texts] == matrix
    assert charts(at)["roc"]["data"][-1]["name"] == "operating point (threshold 0.300)"

    # Presets are chosen on validation and move the slider; the metrics follow.
    val = scored["val"]
    youden = clinical.youden_threshold(val.labels == 1, val.probs[:, 1])
    at.button(key="preset_youden").click().run()
    no_exception(at)
    assert threshold_slider(at).value == pytest.approx(round(youden, 3))
    assert shown(at) == expected_tiles(run, round(youden, 3), "PNEUMONIA")
    target = clinical.threshold_for_sensitivity(val.labels == 1, val.probs[:, 1], 0.9)
    by_label(at.number_input, "Target").set_value(0.9).run()
    at.button(key="preset_sensitivity").click().run()
    assert threshold_slider(at).value == pytest.approx(round(target, 3))
    at.button(key="preset_default").click().run()
    assert threshold_slider(at).value == 0.5


def test_the_caption_names_the_preset_pressed_when_two_give_one_threshold(finished_runs: FinishedRuns) -> None:
    """The review's case: "Spec ≥ target" gave Youden's threshold and the caption named Youden's J."""
    at = open_page("evaluate", run=finished_runs.train_id)
    run = runs.Run(finished_runs.root / finished_runs.train_id)
    val = evaluation.load_scored(run)["val"]
    youden = clinical.youden_threshold(val.labels == 1, val.probs[:, 1])
    # At a target equal to a rate Youden's J reaches on validation, that rule's threshold is Youden's: the first
    # (sensitivity) or last (specificity) ROC point reaching it is Youden's own point.
    rates = {
        "sensitivity": float(np.mean(val.probs[val.labels == 1, 1] >= youden)),
        "specificity": float(np.mean(val.probs[val.labels == 0, 1] < youden)),
    }
    rule, target = next((r, v) for r, v in rates.items() if 0.5 <= v <= 0.999)
    by_label(at.number_input, "Target").set_value(target).run()
    at.button(key=f"preset_{rule}").click().run()
    no_exception(at)
    assert threshold_slider(at).value == pytest.approx(round(youden, 3))
    assert f"Threshold {youden:.3f}: the {rule} target on the validation split (coincides with Youden's J)." in (
        values(at.caption)
    )
    at.button(key="preset_youden").click().run()
    assert f"Threshold {youden:.3f}: Youden's J on the validation split (coincides with the {rule} target)." in (
        values(at.caption)
    )
    threshold_slider(at).set_value(0.301).run()  # moved by hand: no preset is claimed
    assert "Threshold 0.301: set by hand. Pick a preset to use an operating point chosen on validation." in (
        values(at.warning)
    )


def test_a_target_missed_on_test_is_flagged_and_the_threshold_stays_the_validation_one(
    finished_runs: FinishedRuns,
) -> None:
    at = open_page("evaluate", run=finished_runs.train_id)
    run = runs.Run(finished_runs.root / finished_runs.train_id)
    scored = evaluation.load_scored(run)
    test, val = scored["test"], scored["val"]
    outcomes = {}
    for target in np.round(np.arange(0.5, 0.96, 0.05), 2):
        chosen = round(clinical.threshold_for_sensitivity(val.labels == 1, val.probs[:, 1], target), 3)
        outcomes[float(target)] = (chosen, clinical.operating_point(test, chosen, "PNEUMONIA").sensitivity)
    missed = [t for t, (_, on_test) in outcomes.items() if on_test < t]
    met = [t for t, (_, on_test) in outcomes.items() if on_test >= t]
    assert missed and met, outcomes  # a weak one-epoch model: some targets hold on test, some do not
    for target in (missed[-1], met[0]):
        by_label(at.number_input, "Target").set_value(target).run()
        at.button(key="preset_sensitivity").click().run()
        no_exception(at)
        chosen, on_test = outcomes[target]
        assert threshold_slider(at).value == pytest.approx(chosen)  # chosen on validation, never on test
        note = (
            f"Sensitivity on test {on_test:.3f} is below the {target:g} target chosen on validation (the threshold "
            "was chosen on validation; test is where it is checked)."
        )
        flagged = [w for w in values(at.warning) if w.startswith("Sensitivity on test")]
        assert flagged == ([note] if target in missed else [])


def test_the_positive_class_can_be_switched(finished_runs: FinishedRuns) -> None:
    at = open_page("evaluate", run=finished_runs.train_id)
    run = runs.Run(finished_runs.root / finished_runs.train_id)
    by_label(at.selectbox, "Positive class").set_value("NORMAL").run()
    no_exception(at)
    scored = evaluation.load_scored(run)
    start = evaluation.default_threshold(scored["test"], scored["val"], "NORMAL")
    assert by_label(at.slider, "Threshold: call NORMAL when p(NORMAL) ≥").value == pytest.approx(start)
    assert shown(at) == expected_tiles(run, start, "NORMAL")
    assert charts(at)["roc"]["data"][0]["name"].startswith("NORMAL (AUC ")


def test_a_confusion_matrix_cell_shows_its_images_with_probabilities_and_gradcam(finished_runs: FinishedRuns) -> None:
    at = open_page("evaluate", run=finished_runs.train_id)
    at.button(key="preset_default").click().run()  # threshold 0.5
    run = runs.Run(finished_runs.root / finished_runs.train_id)
    test = evaluation.load_scored(run)["test"]
    matrix = clinical.confusion_matrix(test, 0.5, "PNEUMONIA")
    cell = at.selectbox(key=f"evaluate_cell_{run.id}")
    names = test.class_names
    assert cell.options == [f"true {names[i]} → called {names[j]}" for i in (0, 1) for j in (0, 1)]
    # Each cell (true, called) in turn: most confident first, Grad-CAM for the called class.
    for true, called in ((0, 0), (0, 1), (1, 0), (1, 1)):
        at.selectbox(key=f"evaluate_cell_{run.id}").set_value(f"{true},{called}").run()
        no_exception(at)
        members = clinical.cell_indices(test, true, called, 0.5, "PNEUMONIA")
        outline = charts(at)["confusion"]["layout"]["shapes"][0]
        assert (outline["x0"], outline["y0"]) == (called - 0.5, true - 0.5)
        order = "highest" if called == 1 else "lowest"
        assert (
            f"{matrix[true][called]} test image(s) in this cell at threshold 0.500, by p(PNEUMONIA), {order} first: "
            f"the most confident {names[called]} call first." in values(at.caption)
        )
        if len(members) == 0:
            assert values(at.info)[-1] == "No test images in this cell."
            continue
        captions = cell_captions(at)
        assert len(members) == matrix[true][called] and len(captions) == min(12, len(members))
        # The gallery is three columns filled in turn; the page lists its images column by column.
        drawn = sorted(range(len(captions)), key=lambda position: (position % 3, position))
        in_order = [caption for _, caption in sorted(zip(drawn, captions, strict=True))]
        # Each caption gives p(PNEUMONIA), the number the threshold is applied to, and the rule that made the call.
        sign = "≥" if called == 1 else "<"
        assert in_order == [
            f"{Path(test.paths[i]).name}: p(PNEUMONIA) = {test.probs[i, 1]:.3f} {sign} threshold 0.500 · Grad-CAM "
            f"for {names[called]}"
            for i in members[: len(captions)]
        ]
        shown_p = [float(caption.split("p(PNEUMONIA) = ")[1].split(" ")[0]) for caption in in_order]
        assert shown_p == sorted(shown_p, reverse=called == 1)  # the order the note above states
        assert all((p >= 0.5) == (called == 1) for p in test.probs[members, 1])
    by_label(at.toggle, "Grad-CAM overlay").set_value(False).run()
    no_exception(at)
    assert all("Grad-CAM" not in caption for caption in cell_captions(at))


def test_the_run_in_the_url_is_the_one_shown(finished_runs: FinishedRuns) -> None:
    """A refresh or a second tab with ?run=ID reattaches to that run."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params["run"] = finished_runs.tune_id
    at.run()
    at.switch_page("pages/evaluate.py").run()
    no_exception(at)
    assert run_picker(at, "evaluate_run").value == finished_runs.tune_id
    run = runs.Run(finished_runs.root / finished_runs.tune_id)
    scored = evaluation.load_scored(run)
    start = evaluation.default_threshold(scored["test"], scored["val"], "PNEUMONIA")
    assert shown(at) == expected_tiles(run, start, "PNEUMONIA")


def test_damaged_metrics_file_is_reported_with_the_command_that_recomputes_it(finished_runs: FinishedRuns) -> None:
    (finished_runs.root / finished_runs.train_id / "metrics.json").write_text('{"accuracy": ')
    at = open_page("evaluate")
    run_picker(at, "evaluate_run").set_value(finished_runs.train_id).run()
    no_exception(at)
    assert values(at.error) == [
        f"{finished_runs.train_id}: metrics.json is missing or damaged; "
        f"run `python -m medimg evaluate {finished_runs.train_id}`."
    ]
    assert not at.metric and not at.get("plotly_chart")


def test_an_old_evaluation_is_offered_a_re_evaluation(finished_runs: FinishedRuns) -> None:
    run = runs.Run(finished_runs.root / finished_runs.train_id)
    predictions = run.path / "predictions.csv"
    with predictions.open(newline="") as stream:
        rows = [row for row in csv.DictReader(stream) if row["split"] == "test"]
    with predictions.open("w", newline="") as stream:  # the old format: test rows, no split column
        writer = csv.DictWriter(stream, fieldnames=[k for k in rows[0] if k != "split"])
        writer.writeheader()
        writer.writerows({k: v for k, v in row.items() if k != "split"} for row in rows)
    metrics = run.read_json("metrics.json")
    run.write_json("metrics.json", {k: v for k, v in metrics.items() if k not in ("evaluation_version", "leakage")})

    at = open_page("evaluate", run=run.id)
    no_exception(at)
    assert values(at.info)[0].startswith("This run was evaluated by an older medimg")
    assert "No operating-point presets: there are no validation predictions" in " ".join(values(at.warning))
    assert "Operating-point presets, chosen on the test split" not in " ".join(values(at.caption))  # never on test
    assert "no validation predictions to fit a temperature" in " ".join(values(at.caption))
    by_label(at.button, "Re-evaluate this run").click().run()
    no_exception(at)
    assert not [text for text in values(at.info) if text.startswith("This run was evaluated by an older")]
    assert len(evaluation.read_predictions(run, "val")) == 30
    assert "Operating-point presets, chosen on the validation split" in values(at.caption)[0]


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


def test_the_misclassified_image_is_the_cell_shown_first(one_wrong_run: runs.Run, runs_dir: Path) -> None:
    shutil.copytree(one_wrong_run.path, runs_dir / one_wrong_run.id)
    at = open_page("evaluate")
    no_exception(at)
    assert shown(at)["Test images"] == "2"
    [wrong] = [row for row in evaluation.read_predictions(one_wrong_run) if row["true"] != row["predicted"]]
    names = ["NORMAL", "PNEUMONIA"]
    cell = at.selectbox(key=f"evaluate_cell_{one_wrong_run.id}")
    assert cell.value == f"{names.index(wrong['true'])},{names.index(wrong['predicted'])}"
    assert not [s for s in at.slider if s.label == "How many"]  # one image: nothing to choose
    [caption] = cell_captions(at)
    assert caption.startswith(f"{Path(wrong['path']).name}: p(PNEUMONIA) = ")


@pytest.fixture(scope="module")
def three_class_manifest_run(tmp_path_factory: pytest.TempPathFactory, isolated_cache: Path) -> runs.Run:
    """A real run on a CSV manifest: NORMAL, BACTERIA and VIRUS X-rays from the demo, with a `site` column."""
    from medimg import jobs
    from medimg.config import DatasetConfig, ModelParams, RunSpec, TrainConfig

    folder = tmp_path_factory.mktemp("manifest")
    with (folder / "manifest.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "label", "split", "site"])
        for index, path in enumerate(sorted(DEMO.rglob("*.jpeg"))):
            label = "NORMAL" if path.parent.name == "NORMAL" else path.name.split("_")[1].upper()
            writer.writerow([str(path.relative_to(DEMO)), label, path.parts[-3], "north" if index % 3 else "south"])
            target = folder / path.relative_to(DEMO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    spec = RunSpec(
        kind="train",
        dataset=DatasetConfig(path=str(folder / "manifest.csv"), image_size=16),
        train=TrainConfig(epochs=1),
        params=ModelParams(filters=(8,), dense_units=8),
    )
    run = runs.create_run(spec, tmp_path_factory.mktemp("manifest-runs"))
    jobs.execute(run)
    assert run.record["class_names"] == ["BACTERIA", "NORMAL", "VIRUS"]
    return run


def test_multi_class_run_with_subgroups(three_class_manifest_run: runs.Run, runs_dir: Path) -> None:
    run = three_class_manifest_run
    shutil.copytree(run.path, runs_dir / run.id)
    at = open_page("evaluate")
    no_exception(at)
    # No threshold for three classes: arg-max, macro one-vs-rest AUC, per-class intervals.
    assert not [slider for slider in at.slider if str(slider.key).startswith("evaluate_threshold")]
    assert [m.label for m in at.metric] == ["Accuracy", "Balanced accuracy", "Macro ROC AUC", "Test images"]
    assert at.metric[2].help.endswith("the unweighted mean of the one-vs-rest ROC AUCs of the classes")
    index = list(at.table[0].value.index)
    assert "Sensitivity (recall) · VIRUS" in index and "Specificity · BACTERIA" in index
    assert [trace["name"].split(" (")[0] for trace in charts(at)["roc"]["data"][:3]] == ["BACTERIA", "NORMAL", "VIRUS"]
    assert sorted(at.dataframe[0].value.index) == ["BACTERIA", "NORMAL", "VIRUS"]  # per class, arg-max
    per_class = at.dataframe[0].value
    assert per_class["test images"].dtype.kind == "i"  # counts, not 174.000000
    never = evaluation.never_predicted(evaluation.load_scored(run)["test"])
    flagged = [w for w in values(at.warning) if w.startswith("The model never calls")]
    assert flagged == [w for w in [evaluation.never_predicted_warning(never, 3)] if w]

    assert "Subgroups" in values(at.subheader)
    assert by_label(at.selectbox, "Manifest column").options == ["site"]
    table = at.dataframe[1].value
    assert list(table.index) == ["north", "south"]
    test = evaluation.load_scored(run)["test"]
    south = [i for i, p in enumerate(test.paths) if p in {k for k, v in _sites(run).items() if v == "south"}]
    assert table.loc["south", "images"] == len(south)
    accuracy = sum(test.probs[i].argmax() == test.labels[i] for i in south) / len(south)
    assert table.loc["south", "Accuracy"].startswith(f"{accuracy:.3f} (")


def _sites(run: runs.Run) -> dict[str, str]:
    return subgroups.manifest_attributes(run.spec.dataset.path)["site"]


def test_a_threshold_that_calls_every_image_one_class_is_flagged(finished_runs: FinishedRuns) -> None:
    at = open_page("evaluate", run=finished_runs.train_id)
    threshold_slider(at).set_value(0.0).run()  # p ≥ 0 holds for every image
    no_exception(at)
    assert [w for w in values(at.warning) if "every one of the 30 test images is called PNEUMONIA" in w]
    threshold_slider(at).set_value(0.5).run()
    calls = evaluation.load_scored(runs.Run(finished_runs.root / finished_runs.train_id))["test"].probs[:, 1] >= 0.5
    flagged = any("every one of the 30 test images" in w for w in values(at.warning))
    assert flagged == (calls.all() or not calls.any())


@pytest.fixture(scope="module")
def one_class_val_run(tmp_path_factory: pytest.TempPathFactory, isolated_cache: Path) -> runs.Run:
    """A real run on the field case whose val/ holds NORMAL images only."""
    from medimg import jobs
    from medimg.config import DatasetConfig, ModelParams, RunSpec, TrainConfig

    case = Path(__file__).parents[1] / "data" / "cases" / "val-split-one-class"
    spec = RunSpec(
        kind="train",
        dataset=DatasetConfig(path=str(case), image_size=16),
        train=TrainConfig(epochs=1),
        params=ModelParams(filters=(4,), dense_units=8, batch_size=8),
    )
    run = runs.create_run(spec, tmp_path_factory.mktemp("one-class-val-runs"))
    jobs.execute(run)
    return run


def test_a_one_class_validation_split_is_explained_not_shown_as_figures(
    one_class_val_run: runs.Run, runs_dir: Path
) -> None:
    shutil.copytree(one_class_val_run.path, runs_dir / one_class_val_run.id)
    at = open_page("evaluate")
    no_exception(at)
    warnings = " ".join(values(at.warning))
    assert "No operating-point presets: the validation split has one class: it holds only 'NORMAL' images" in warnings
    assert "0.5, the arg-max: not chosen on any split" in warnings  # the slider starts at a threshold nobody chose
    assert "temperature scaling skipped: the validation split has one class" in " ".join(values(at.caption))
    assert all(button.disabled for button in at.button if str(button.key).startswith("preset_"))
    assert one_class_val_run.record["monitor"] == "val_loss"
    assert "val_auc" not in one_class_val_run.read_json("history.json")  # undefined, so not charted as 0.0


def test_a_class_never_called_is_warned_of_and_noted_beside_its_intervals(
    never_calling_run: runs.Run, runs_dir: Path
) -> None:
    shutil.copytree(never_calling_run.path, runs_dir / never_calling_run.id)
    at = open_page("evaluate", run=never_calling_run.id)
    no_exception(at)
    assert evaluation.never_predicted_warning(["VIRUS"], 3) in values(at.warning)
    table = at.table[0].value
    assert table.loc["Sensitivity (recall) · VIRUS", "note"].startswith("never predicted: 0 by construction")
    assert table.loc["Specificity · VIRUS", "note"].startswith("never predicted: 1 by construction")
    assert table.loc["Macro ROC AUC", "note"].startswith("macro average")
    figures = charts(at)
    roc = {t["name"].split(" (")[0]: t["line"]["color"] for t in figures["roc"]["data"] if t["name"] != "chance"}
    pr = {t["name"].split(" (")[0]: t["line"]["color"] for t in figures["pr"]["data"] if " (AP " in t["name"]}
    assert list(roc) == ["BACTERIA", "NORMAL", "VIRUS"] and roc == pr

    # Evaluated before the list was stored (version 2, validation scored): the same warning from the same
    # predictions, and no offer to re-evaluate for what version 2 already holds.
    copied = runs.Run(runs_dir / never_calling_run.id)
    metrics = copied.read_json("metrics.json")
    del metrics["never_predicted"]
    copied.write_json("metrics.json", {**metrics, "evaluation_version": 2})
    older = open_page("evaluate", run=never_calling_run.id)
    no_exception(older)
    assert evaluation.never_predicted_warning(["VIRUS"], 3) in values(older.warning)
    assert not [text for text in values(older.info) if text.startswith("This run was evaluated by an older")]


def test_graded_classes_show_how_far_the_calls_miss(graded_run: runs.Run, runs_dir: Path) -> None:
    from medimg.metrics import ordinal

    shutil.copytree(graded_run.path, runs_dir / graded_run.id)
    at = open_page("evaluate", run=graded_run.id)
    no_exception(at)
    assert ordinal.describe(graded_run.read_json("metrics.json")["ordinal"]) in values(at.markdown)


def test_a_link_to_a_deleted_run_says_so_before_showing_another(finished_runs: FinishedRuns) -> None:
    """Seen: /evaluate?run=<deleted> rewrote the URL to another run and showed its metrics without a word."""
    at = open_page("evaluate", run="train-20260101-000000-dead")
    no_exception(at)
    (warning,) = [w.value for w in at.warning if "from the link" in w.value]
    assert warning.startswith("Run train-20260101-000000-dead (from the link) no longer exists")
    assert finished_runs.train_id in warning or finished_runs.tune_id in warning
