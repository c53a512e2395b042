"""Test-split metrics: checked against hand counts and scikit-learn; ROC curves; evaluate_run's files: val and test
predictions, the clinical summary, calibration fitted on val, the leakage check."""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import shutil
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as sk

from medimg.config import DatasetConfig, ModelParams, RunSpec
from medimg.errors import DatasetError
from medimg.metrics import calibration, clinical
from medimg.model import models, training
from medimg.results import evaluation
from medimg.store import runs
from tests.conftest import DEMO


def pairwise_auc(positive_scores: list[float], negative_scores: list[float]) -> float:
    """ROC AUC as the share of (positive, negative) pairs ranked correctly, ties counting half (Mann–Whitney)."""
    pairs = list(product(positive_scores, negative_scores))
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


def one_hot_probs(predicted: list[int], num_classes: int, confidence: float = 0.7) -> np.ndarray:
    rest = (1 - confidence) / (num_classes - 1)
    probs = np.full((len(predicted), num_classes), rest)
    probs[np.arange(len(predicted)), predicted] = confidence
    return probs


def test_binary_metrics_by_hand_and_by_scikit_learn() -> None:
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p_positive = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.45, 0.7, 0.8, 0.9, 0.95])
    probs = np.column_stack([1 - p_positive, p_positive])
    result = evaluation.classification_metrics(y_true, probs, ["normal", "disease"])
    # Predicted (p > 0.5): 0 0 0 1 | 0 0 1 1 1 1  →  [[TN 3, FP 1], [FN 2, TP 4]]
    assert result["confusion_matrix"] == [[3, 1], [2, 4]]
    assert result["accuracy"] == pytest.approx(7 / 10)
    assert result["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    disease, normal = result["per_class"]["disease"], result["per_class"]["normal"]
    assert disease["sensitivity"] == pytest.approx(4 / 6)  # TP / (TP + FN)
    assert disease["specificity"] == pytest.approx(3 / 4)  # TN / (TN + FP)
    assert disease["precision"] == pytest.approx(4 / 5)
    assert disease["f1"] == pytest.approx(2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6))
    assert (disease["support"], normal["support"]) == (6, 4)
    assert normal["sensitivity"] == pytest.approx(3 / 4) and normal["specificity"] == pytest.approx(4 / 6)
    expected_auc = pairwise_auc(list(p_positive[y_true == 1]), list(p_positive[y_true == 0]))
    assert expected_auc == pytest.approx(22 / 24)  # 2 of the 24 pairs are out of order (0.6 above 0.4 and 0.45)
    assert result["auc"] == pytest.approx(expected_auc)
    # The same numbers from scikit-learn directly.
    predicted = (p_positive > 0.5).astype(int)
    assert result["accuracy"] == pytest.approx(sk.accuracy_score(y_true, predicted))
    assert result["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y_true, predicted))
    assert disease["f1"] == pytest.approx(sk.f1_score(y_true, predicted))
    assert result["auc"] == pytest.approx(sk.roc_auc_score(y_true, p_positive))
    assert result["count"] == 10 and result["class_names"] == ["normal", "disease"]


def test_three_class_specificity_from_a_hand_made_confusion_matrix() -> None:
    matrix = np.array([[5, 1, 0], [2, 6, 1], [0, 1, 4]])
    y_true, y_pred = [], []
    for (i, j), count in np.ndenumerate(matrix):
        y_true += [i] * count
        y_pred += [j] * count
    result = evaluation.classification_metrics(np.array(y_true), one_hot_probs(y_pred, 3), ["a", "b", "c"])
    assert result["confusion_matrix"] == matrix.tolist()
    # Class b: TN = the cells outside row b and column b = 5 + 0 + 0 + 4 = 9; FP = column b minus TP = 2.
    assert result["per_class"]["b"]["specificity"] == pytest.approx(9 / 11)
    # Class a: TN = 6 + 1 + 1 + 4 = 12; FP = 2.  Class c: TN = 5 + 1 + 2 + 6 = 14; FP = 1.
    assert result["per_class"]["a"]["specificity"] == pytest.approx(12 / 14)
    assert result["per_class"]["c"]["specificity"] == pytest.approx(14 / 15)
    assert result["per_class"]["b"]["sensitivity"] == pytest.approx(6 / 9)
    assert result["accuracy"] == pytest.approx(15 / 20)


def test_multi_class_macro_auc_is_the_mean_of_one_vs_rest_aucs() -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [
            [0.6, 0.3, 0.1],
            [0.4, 0.4, 0.2],
            [0.3, 0.5, 0.2],
            [0.5, 0.2, 0.3],
            [0.1, 0.2, 0.7],
            [0.2, 0.5, 0.3],
        ]
    )
    by_class = [pairwise_auc(list(probs[y_true == k, k]), list(probs[y_true != k, k])) for k in range(3)]
    result = clinical.roc_auc(y_true, probs)
    assert result == pytest.approx(np.mean(by_class))
    assert result == pytest.approx(sk.roc_auc_score(y_true, probs, multi_class="ovr", average="macro"))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_auc_is_none_when_a_class_is_absent() -> None:
    assert clinical.roc_auc(np.array([1, 1, 1]), one_hot_probs([1, 0, 1], 2)) is None
    assert clinical.roc_auc(np.array([0, 1, 0, 1]), one_hot_probs([0, 1, 1, 1], 3)) is None  # no class 2
    result = evaluation.classification_metrics(np.array([0, 0]), one_hot_probs([0, 1], 2), ["x", "y"])
    assert result["auc"] is None
    assert result["per_class"]["y"]["support"] == 0 and result["per_class"]["y"]["sensitivity"] == 0.0


def test_roc_curves() -> None:
    y_true = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    curves = evaluation.roc_curves(y_true, np.column_stack([1 - p, p]), ["neg", "pos"])
    assert list(curves) == ["pos"]  # two classes: the positive class's curve only
    pos = curves["pos"]
    assert pos["fpr"][0] == 0.0 and pos["fpr"][-1] == 1.0 and pos["tpr"][-1] == 1.0
    assert pos["auc"] == pytest.approx(pairwise_auc([0.4, 0.9], [0.1, 0.6]))  # 3 of 4 pairs right
    three = evaluation.roc_curves(np.array([0, 1, 1, 0]), one_hot_probs([0, 1, 0, 0], 3), ["a", "b", "c"])
    assert list(three) == ["a", "b"]  # class c has no positives: no curve


def test_predict_arrays_batches_give_the_same_answer() -> None:
    import keras

    from medimg.model import models

    keras.utils.set_random_seed(0)
    model = models.build_model(ModelParams(filters=(2,), dense_units=0, batch_norm=False), (8, 8, 1), 3)
    batch = np.random.default_rng(0).integers(0, 256, (7, 8, 8, 1), dtype=np.uint8)
    whole = models.predict_arrays(model, batch)
    chunked = models.predict_arrays(model, batch, batch_size=3)
    assert whole.shape == (7, 3)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-7)
    assert models.predict_arrays(model, batch[:0]).shape == (0, 0)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory):
    """An untrained model evaluated on the demo's real test split (metrics need a model, not a good one)."""
    import keras

    from medimg.model import models, training

    spec = RunSpec(kind="train", dataset=DatasetConfig(path=str(DEMO), image_size=16))
    run = runs.create_run(spec, tmp_path_factory.mktemp("runs"))
    data = training.prepare_data(spec.dataset)
    keras.utils.set_random_seed(1)
    model = models.build_model(ModelParams(filters=(4,), dense_units=0), data.input_shape, data.num_classes)
    result = evaluation.evaluate_run(run, data, model)
    return run, data, model, result


def test_evaluate_run_writes_metrics_predictions_and_headline(evaluated) -> None:
    run, data, model, result = evaluated
    assert run.read_json("metrics.json") == json.loads(json.dumps(result))
    assert result["count"] == 30 and sum(map(sum, result["confusion_matrix"])) == 30
    headline = run.record["metrics"]
    assert {k: headline[k] for k in ("accuracy", "balanced_accuracy", "auc")} == {
        k: result[k] for k in ("accuracy", "balanced_accuracy", "auc")
    }
    # The operating point chosen on validation (Youden's J), measured on test, beside the arg-max figures.
    point = result["validation_operating_point"]
    assert point["chosen_on"] == "val" and point["threshold"] == result["clinical"]["presets"]["youden"]
    assert headline["operating_point"] == {
        **{
            k: point[k]
            for k in ("threshold", "chosen_on", "sensitivity", "specificity", "accuracy", "balanced_accuracy")
        },
        "positive_class": "PNEUMONIA",
    }
    assert (result["one_class"] is None) == (len({row.argmax() for row in data_probs(run)}) > 1)
    rows = evaluation.read_predictions(run)
    assert len(rows) == 30
    assert list(rows[0]) == ["path", "true", "predicted", "p_NORMAL", "p_PNEUMONIA", "split"]
    assert {row["split"] for row in rows} == {"test"}
    probs = models.predict_arrays(model, data.arrays["test"].images)
    for row, path, label, p in zip(rows, data.arrays["test"].paths, data.arrays["test"].labels, probs, strict=True):
        assert row["path"] == path and row["true"] == data.class_names[label]
        assert float(row["p_PNEUMONIA"]) == pytest.approx(p[1], abs=1e-6)
        assert row["predicted"] == data.class_names[int(p.argmax())]
    # Accuracy recomputed from the CSV agrees with the metric.
    assert np.mean([r["true"] == r["predicted"] for r in rows]) == pytest.approx(result["accuracy"])
    assert not list(run.path.glob(".*.tmp"))


def test_evaluate_run_with_an_empty_test_split_is_refused(evaluated) -> None:
    run, data, model, _ = evaluated
    empty = dataclasses.replace(
        data,
        arrays={
            **data.arrays,
            "test": data.arrays["test"].__class__(
                data.arrays["test"].images[:0], data.arrays["test"].labels[:0], [], []
            ),
        },
    )
    with pytest.raises(DatasetError, match="the test split is empty"):
        evaluation.evaluate_run(run, empty, model)


def test_read_predictions_of_a_run_without_any(tmp_path: Path) -> None:
    run = runs.create_run(RunSpec(), tmp_path)
    assert evaluation.read_predictions(run) == []
    with open(run.path / "predictions.csv", "w", newline="") as stream:
        csv.writer(stream).writerows([["path", "true"], ["a.png", "x"]])
    assert evaluation.read_predictions(run) == [{"path": "a.png", "true": "x"}]


def test_val_predictions_are_saved_and_load_back(evaluated) -> None:
    run, data, model, _ = evaluated
    val_rows = evaluation.read_predictions(run, "val")
    assert len(val_rows) == len(data.arrays["val"]) == 30 and {row["split"] for row in val_rows} == {"val"}
    scored = evaluation.load_scored(run)
    assert sorted(scored) == ["test", "val"]
    for split in ("val", "test"):
        arrays = data.arrays[split]
        assert scored[split].paths == list(arrays.paths)
        np.testing.assert_array_equal(scored[split].labels, arrays.labels)
        np.testing.assert_allclose(scored[split].probs, models.predict_arrays(model, arrays.images), atol=1e-6)


def test_the_saved_models_validation_figures_are_recorded_from_its_val_predictions(evaluated) -> None:
    from sklearn import metrics

    run, data, model, result = evaluated
    val = data.arrays["val"]
    probs = models.predict_arrays(model, val.images)
    figures = run.record["metrics"]["validation"]
    assert figures == result["validation"]
    assert figures["auc"] == pytest.approx(metrics.roc_auc_score(val.labels, probs[:, 1]), abs=1e-6)
    assert figures["accuracy"] == pytest.approx(metrics.accuracy_score(val.labels, probs.argmax(axis=1)))
    assert figures["loss"] == pytest.approx(metrics.log_loss(val.labels, probs, labels=[0, 1]), abs=1e-5)
    # The run lists show this figure, not a trial's or an epoch's score taken during training.
    assert run.validation_score() == {"val_metric": "val_auc", "val_score": figures["auc"]}


def test_metrics_json_holds_the_clinical_summary_at_one_half(evaluated) -> None:
    run, data, model, result = evaluated
    scored = evaluation.load_scored(run)
    test, val = scored["test"], scored["val"]
    summary = result["clinical"]
    assert summary["positive_class"] == "PNEUMONIA"
    point = clinical.operating_point(test, 0.5, "PNEUMONIA")
    assert summary["operating_point"] == point.to_dict()
    intervals = summary["intervals"]
    assert intervals["resamples"] == 2000 and intervals["metrics"]["auc"]["estimate"] == pytest.approx(result["auc"])
    assert intervals["metrics"]["sensitivity"]["estimate"] == pytest.approx(point.sensitivity)
    assert summary["presets_split"] == "val"  # thresholds are chosen on validation, never on test
    youden = clinical.youden_threshold(val.labels == 1, val.probs[:, 1])
    assert summary["presets"]["youden"] == pytest.approx(youden)
    val_probs = models.predict_arrays(model, data.arrays["val"].images)  # unrounded, as evaluate_run had them
    assert result["calibration"]["temperature"] == pytest.approx(calibration.fit_temperature(val.labels, val_probs))
    assert result["calibration"]["ece_before"] == pytest.approx(calibration.expected_calibration_error(test))
    assert result["evaluation_version"] == evaluation.EVALUATION_VERSION
    leakage = result["leakage"]
    assert leakage["images"] == 140 and leakage["groups_known"] is False
    assert leakage["passed"] is True and leakage["cross_split_duplicates"] == []


def test_without_val_no_operating_point_is_chosen_on_test_and_the_reason_is_given(evaluated) -> None:
    run, _, _, _ = evaluated
    test = evaluation.load_scored(run)["test"]
    summary = evaluation.clinical_summary(test, None, threshold=0.3, positive="NORMAL", n_resamples=200)
    assert summary["presets_split"] is None and summary["presets"] == {}
    assert summary["presets_reason"].startswith("there are no validation predictions")
    assert summary["calibration"]["after"] is None
    assert summary["calibration"]["skipped"] == "no validation predictions to fit a temperature on"
    assert summary["threshold"] == 0.3 and summary["positive_class"] == "NORMAL"
    assert summary["confusion_matrix"] == clinical.confusion_matrix(test, 0.3, "NORMAL")
    assert list(summary["curves"]["roc"]) == ["NORMAL"]
    assert summary["preset_points"] == {}


def test_a_one_class_validation_split_skips_presets_and_calibration_with_the_reason(evaluated) -> None:
    run, _, _, _ = evaluated
    scored = evaluation.load_scored(run)
    test, val = scored["test"], scored["val"]
    normal = val.labels == 0
    one_class = clinical.Scored(
        val.labels[normal], val.probs[normal], val.class_names, list(np.array(val.paths)[normal])
    )
    summary = evaluation.clinical_summary(test, one_class, positive="PNEUMONIA", n_resamples=200)
    expected = f"it holds only 'NORMAL' images ({int(normal.sum())})"
    assert summary["presets"] == {} and summary["presets_split"] is None
    assert summary["presets_reason"] == f"the validation split has one class: {expected}; an operating point needs both"
    assert summary["calibration"]["temperature"] is None and summary["calibration"]["after"] is None
    assert summary["calibration"]["skipped"] == (
        f"temperature scaling skipped: the validation split has one class ({expected})"
    )
    assert evaluation.default_threshold(test, one_class, "PNEUMONIA") == 0.5


def test_leakage_check_finds_copies_across_splits_and_their_labels(tmp_path: Path) -> None:
    data_dir = tmp_path / "leaky"
    shutil.copytree(DEMO, data_dir)
    train_normal = sorted((data_dir / "train" / "NORMAL").glob("*.jpeg"))
    shutil.copy(train_normal[0], data_dir / "test" / "NORMAL" / "copy-same-label.jpeg")
    shutil.copy(train_normal[1], data_dir / "val" / "PNEUMONIA" / "copy-other-label.jpeg")
    data = training.prepare_data(DatasetConfig(path=str(data_dir), image_size=16))
    leakage = evaluation.leakage_check(data)
    assert leakage["passed"] is False and leakage["images"] == 142
    groups = sorted(sorted(group) for group in leakage["cross_split_duplicates"])
    assert groups == sorted(
        [
            sorted([f"train:{train_normal[0]}", f"test:{data_dir / 'test' / 'NORMAL' / 'copy-same-label.jpeg'}"]),
            sorted([f"train:{train_normal[1]}", f"val:{data_dir / 'val' / 'PNEUMONIA' / 'copy-other-label.jpeg'}"]),
        ]
    )
    assert leakage["conflicting_label_groups"] == 1 and leakage["within_split_duplicate_groups"] == 0
    assert "16x16x1" in leakage["method"]


def test_leakage_check_reports_a_patient_in_two_splits(tmp_path: Path) -> None:
    files = (
        sorted((DEMO / "train" / "NORMAL").glob("*.jpeg"))[:6]
        + sorted((DEMO / "train" / "PNEUMONIA").glob("*.jpeg"))[:6]
    )
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "label", "group", "split"])
        for i, path in enumerate(files):
            shutil.copy(path, tmp_path / path.name)
            split = ("train", "train", "val", "test")[i % 4]
            # Patient "shared" has one image in train and one in test: the split column put them there.
            group = "shared" if i in (0, 3) else f"p{i}"
            writer.writerow([path.name, path.parent.name, group, split])
    data = training.prepare_data(DatasetConfig(path=str(manifest), image_size=16))
    leakage = evaluation.leakage_check(data)
    assert leakage["groups_known"] is True and leakage["group_overlap"] == ["shared"]
    assert leakage["passed"] is False and leakage["cross_split_duplicates"] == []


def test_the_demo_is_checked_patient_disjoint_with_its_own_patient_ids() -> None:
    from medimg.datasets.sources import default_group_regex

    data = training.prepare_data(DatasetConfig(path=str(DEMO), image_size=16, group_regex=default_group_regex(DEMO)))
    leakage = evaluation.leakage_check(data)
    # Every demo file name starts with its patient ID, and the README says no patient spans two splits.
    assert all(f.group for _, files in data.splits.items() for f in files)
    assert leakage["groups_known"] is True and leakage["group_overlap"] == []
    # A folder of the same chest X-rays elsewhere is recognised by its file names (Kermany et al.'s convention).
    assert default_group_regex(DEMO / "train") == default_group_regex(DEMO)


def data_probs(run) -> list:
    from medimg.results.evaluation import load_scored

    return list(load_scored(run)["test"].probs)


def test_the_default_threshold_is_youden_on_validation_never_test() -> None:
    from tests.metrics.test_clinical import binary, noisy_binary

    test, val = noisy_binary(300, 4), noisy_binary(300, 5)
    youden = clinical.youden_threshold(val.labels == 1, val.probs[:, 1])
    assert evaluation.default_threshold(test, val, "disease") == round(youden, 3)
    assert evaluation.default_threshold(test, None, "disease") == 0.5  # test's own Youden would flatter it
    one_class_val = binary(np.zeros(20, int), np.linspace(0.1, 0.9, 20))
    assert evaluation.default_threshold(test, one_class_val, "disease") == 0.5


def test_threshold_origin_names_the_preset_the_half_or_a_hand_set_value() -> None:
    presets = {"default": 0.5, "youden": 0.4127, "sensitivity": 0.2, "specificity": None}
    assert evaluation.threshold_origin(0.413, presets, "val") == ("Youden's J on the validation split", True)
    assert evaluation.threshold_origin(0.2, presets, "val") == ("the sensitivity target on the validation split", True)
    assert evaluation.threshold_origin(0.5, presets, "val") == ("0.5, the arg-max: not chosen on any split", False)
    assert evaluation.threshold_origin(0.3, presets, "val") == ("set by hand", False)
    assert evaluation.threshold_origin(0.2, presets, "test")[0] == "the sensitivity target on the test split"


def test_threshold_origin_names_the_preset_pressed_when_two_give_one_threshold() -> None:
    # Seen on the demo: "Spec ≥ target" gave 0.554, as Youden's J did, and the caption named Youden's J.
    presets = {"default": 0.5, "youden": 0.554, "sensitivity": 0.313, "specificity": 0.554}
    origin = evaluation.threshold_origin
    assert origin(0.554, presets, "val", "specificity") == (
        "the specificity target on the validation split (coincides with Youden's J)",
        True,
    )
    assert origin(0.554, presets, "val", "youden") == (
        "Youden's J on the validation split (coincides with the specificity target)",
        True,
    )
    # Not known who chose it (the command line's --threshold): both rules, neither first by accident.
    assert origin(0.554, presets, "val") == (
        "Youden's J and the specificity target on the validation split (the same threshold)",
        True,
    )
    # A preset pressed, then the slider moved to another preset's value: the value decides.
    assert origin(0.313, presets, "val", "specificity") == ("the sensitivity target on the validation split", True)
    assert origin(0.4, presets, "val", "specificity") == ("set by hand", False)
    half = {"default": 0.5, "youden": 0.5, "sensitivity": 0.2, "specificity": 0.9}
    assert origin(0.5, half, "val", "default") == (
        "0.5, the arg-max (coincides with Youden's J on the validation split)",
        True,
    )


def test_only_the_preset_picked_answers_for_its_target_when_two_give_one_threshold() -> None:
    presets = {"default": 0.5, "youden": 0.554, "sensitivity": 0.2, "specificity": 0.554}
    # Youden's J picked (the page's default): the specificity target, which nobody chose, is not checked.
    assert evaluation.answering_presets(0.554, presets, "youden") == ["youden"]
    assert evaluation.answering_presets(0.554, presets, "specificity") == ["specificity"]
    # Moved there by hand, or a preset picked and then moved off: every preset giving the threshold.
    assert evaluation.answering_presets(0.554, presets, None) == ["youden", "specificity"]
    assert evaluation.answering_presets(0.554, presets, "sensitivity") == ["youden", "specificity"]
    assert evaluation.answering_presets(0.3, presets, "youden") == []


def test_a_target_missed_on_test_is_a_note_and_the_threshold_stays_the_validation_one() -> None:
    from tests.metrics.test_clinical import noisy_binary

    point = {"threshold": 0.313, "sensitivity": 0.9333, "specificity": 0.71}
    assert evaluation.missed_target(point, "sensitivity", 0.95) == (
        "Sensitivity on test 0.933 is below the 0.95 target chosen on validation (the threshold was chosen on "
        "validation; test is where it is checked)."
    )
    assert evaluation.missed_target(point, "specificity", 0.7) is None  # met
    assert evaluation.missed_target(point, "youden", 0.95) is None  # Youden's J promises no figure
    assert evaluation.missed_target({**point, "specificity": None}, "specificity", 0.9) is None  # undefined

    # Real thresholds: chosen on validation, checked on test.
    val, test = noisy_binary(300, 4), noisy_binary(300, 5)
    presets, split = evaluation.preset_thresholds(test, val, "disease", 0.95, 0.95)
    assert split == "val"
    chosen = presets["sensitivity"]
    assert chosen == clinical.threshold_for_sensitivity(val.labels == 1, val.probs[:, 1], 0.95)
    assert chosen != clinical.threshold_for_sensitivity(test.labels == 1, test.probs[:, 1], 0.95)
    on_test = clinical.operating_point(test, chosen, "disease")
    assert on_test.sensitivity < 0.95  # these seeds: reached on validation, missed on test
    assert evaluation.missed_target(on_test.to_dict(), "sensitivity", 0.95) == (
        f"Sensitivity on test {on_test.sensitivity:.3f} is below the 0.95 target chosen on validation (the "
        "threshold was chosen on validation; test is where it is checked)."
    )
    specificity = clinical.operating_point(test, presets["specificity"], "disease")
    assert specificity.specificity < 0.95  # 0.943 on these seeds
    assert evaluation.missed_target(specificity.to_dict(), "specificity", 0.95).startswith(
        f"Specificity on test {specificity.specificity:.3f} is below the 0.95 target chosen on validation"
    )
    # Seeds 1 and 2: both targets reached on validation hold on test, and nothing is said.
    val, test = noisy_binary(300, 1), noisy_binary(300, 2)
    presets, _ = evaluation.preset_thresholds(test, val, "disease", 0.95, 0.95)
    for rule in evaluation.TARGET_PRESETS:
        point = clinical.operating_point(test, presets[rule], "disease").to_dict()
        assert point[rule] >= 0.95 and evaluation.missed_target(point, rule, 0.95) is None


def test_never_predicted_lists_classes_the_arg_max_never_calls() -> None:
    probs = one_hot_probs([0, 0, 2, 2], 3)
    scored = clinical.Scored(np.array([0, 1, 2, 1]), probs, ["a", "b", "c"])
    assert evaluation.never_predicted(scored) == ["b"]
    every = clinical.Scored(np.array([0, 1, 2]), one_hot_probs([0, 1, 2], 3), list("abc"))
    assert evaluation.never_predicted(every) == []


def test_a_class_never_called_is_stored_once_where_the_metrics_are_computed(never_calling_run: runs.Run) -> None:
    """metrics.json and run.json's headline metrics hold the one list every reader words the same way."""
    test = evaluation.load_scored(never_calling_run)["test"]
    assert set(test.probs.argmax(axis=1).tolist()) == {0, 1}  # BACTERIA and NORMAL called, VIRUS never
    assert never_calling_run.read_json("metrics.json")["never_predicted"] == ["VIRUS"]
    assert never_calling_run.record["metrics"]["never_predicted"] == ["VIRUS"]
    assert evaluation.never_predicted_warning(["VIRUS"], 3) == (
        "The model never calls VIRUS on the test split: its sensitivity is 0 by construction and its precision "
        "undefined (shown as 0)."
    )
    assert evaluation.never_predicted_warning(["a", "c"], 4).startswith("The model never calls a, c on the test")
    # Nothing missing; or every image called one class, which `one_class` already says.
    assert evaluation.never_predicted_warning([], 3) is None
    assert evaluation.never_predicted_warning(["NORMAL"], 2) is None
    # The report shows the 0 its warning speaks of: each class's row, as the page and `medimg evaluate` list them.
    from medimg.results import report

    document = report.build_report(never_calling_run, n_resamples=100)
    per_class = never_calling_run.read_json("metrics.json")["per_class"]
    virus = per_class["VIRUS"]
    row = [f"{virus[k]:.3f}" for k in ("sensitivity", "specificity", "precision", "f1")]
    assert row[0] == "0.000" and row[2] == "0.000"
    assert "<td>VIRUS</td>" + "".join(f"<td>{value}</td>" for value in row) + f"<td>{virus['support']}</td>" in (
        document.replace("\n", "")
    )


def test_graded_classes_get_ordinal_figures_in_metrics_the_cli_and_the_report(graded_run) -> None:
    from medimg.cli import format_test_metrics
    from medimg.metrics import ordinal
    from medimg.results import report

    metrics = graded_run.read_json("metrics.json")
    scored = evaluation.load_scored(graded_run)
    assert scored["test"].class_names == ["0_normal", "1_bacteria", "2_virus"]
    for split in ("test", "val"):  # the saved figures are those of the saved predictions
        expected = ordinal.ordinal_summary(scored[split].labels, scored[split].probs)
        assert metrics["ordinal"][split] == pytest.approx(expected)
    assert graded_run.record["metrics"]["ordinal"] == metrics["ordinal"]  # the Tune/Train summaries read run.json
    line = ordinal.describe(metrics["ordinal"])
    assert line.startswith("Graded classes, test (30 images): quadratic weighted kappa ")
    assert line in format_test_metrics(metrics)
    assert html.escape(line) in report.build_report(graded_run, n_resamples=100)


def test_classes_that_are_not_grades_get_no_ordinal_figures(never_calling_run) -> None:
    assert "ordinal" not in never_calling_run.read_json("metrics.json")


def test_two_class_subgroups_say_which_threshold_they_are_at(tmp_path: Path) -> None:
    """Seen in review: "threshold 0.5 (the operating point chosen on validation)" where validation chose none."""
    import dataclasses

    from medimg import cli
    from medimg.metrics import subgroups
    from tests.metrics.test_clinical import noisy_binary

    test, val = noisy_binary(200, 4), noisy_binary(200, 5)
    names = [f"img{i}.png" for i in range(len(test))]
    test = dataclasses.replace(test, paths=[str(tmp_path / name) for name in names])
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "label", "site"])
        for i, name in enumerate(names):
            writer.writerow([name, test.class_names[test.labels[i]], ("north", "south")[i % 2]])
    chosen = evaluation.subgroup_summary(str(manifest), test, val, n_resamples=200)
    threshold = evaluation.default_threshold(test, val)
    assert (chosen["threshold"], chosen["chosen_on"]) == (threshold, "val") and threshold != 0.5
    expected = subgroups.subgroup_metrics(
        test, {str(tmp_path / n): ("north", "south")[i % 2] for i, n in enumerate(names)}, threshold, n_resamples=200
    )
    assert chosen["columns"]["site"] == expected
    lines = cli.format_subgroups(chosen)
    assert lines[0] == (
        f"by site, test split at threshold {threshold:.3f} (the operating point chosen on validation), 95 % "
        "bootstrap intervals:"
    )
    # Without validation predictions the threshold is 0.5, and said not to be chosen.
    fallback = evaluation.subgroup_summary(str(manifest), test, None, n_resamples=200)
    assert (fallback["threshold"], fallback["chosen_on"]) == (0.5, None)
    assert "threshold 0.500 (validation could not choose an operating point)" in cli.format_subgroups(fallback)[0]
    assert evaluation.subgroup_summary(str(tmp_path), test, val) is None  # a folder, not a manifest
