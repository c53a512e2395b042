"""Positive class, operating point, thresholds, curves and their figures: by hand, brute force and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from medimg.errors import ConfigError
from medimg.metrics import clinical
from medimg.metrics.clinical import Scored
from medimg.results import charts

# Ten cases, positive = "disease" (index 1). Scores sorted within each class for readability.
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
P_DISEASE = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.45, 0.7, 0.8, 0.9, 0.95])


def binary(labels: np.ndarray, p_positive: np.ndarray, names=("normal", "disease")) -> Scored:
    return Scored(np.asarray(labels), np.column_stack([1 - p_positive, p_positive]), list(names))


def noisy_binary(count: int, seed: int, prevalence: float = 0.3, ties: bool = False) -> Scored:
    rng = np.random.default_rng(seed)
    labels = (rng.random(count) < prevalence).astype(int)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
    return binary(labels, np.round(scores, 2) if ties else scores)


# ------------------------------------------------------------------------------------------------ positive class
@pytest.mark.parametrize(
    ("names", "positive"),
    [
        (["malignant", "normal_benign"], "malignant"),  # BreastMNIST: the finding is class 0
        (["NORMAL", "PNEUMONIA"], "PNEUMONIA"),
        (["abnormal", "normal"], "abnormal"),  # "abnormal" is not "normal"
        (["Healthy", "Tumour"], "Tumour"),
        (["cat", "dog"], "dog"),  # nothing looks negative: the second class
        (["negative", "benign"], "benign"),  # both look negative: the second class
    ],
)
def test_default_positive_class_is_the_finding(names: list[str], positive: str) -> None:
    assert names[clinical.default_positive(names)] == positive


def test_positive_index_by_name_index_or_default() -> None:
    names = ["malignant", "normal_benign"]
    assert clinical.positive_index(names, "normal_benign") == 1
    assert clinical.positive_index(names, 0) == 0 and clinical.positive_index(names, None) == 0
    with pytest.raises(ConfigError, match="positive class 'tumour' is not one of the classes"):
        clinical.positive_index(names, "tumour")
    with pytest.raises(ConfigError, match="only for two classes; this task has 3"):
        clinical.default_positive(["a", "b", "c"])


# ------------------------------------------------------------------------------------------------ operating point
def test_operating_point_at_half_by_hand_and_by_scikit_learn() -> None:
    point = clinical.operating_point(binary(LABELS, P_DISEASE), 0.5)
    # Called positive (p >= 0.5): 0.6 | 0.7 0.8 0.9 0.95  →  TP 4, FP 1, TN 3, FN 2
    assert (point.tp, point.fp, point.tn, point.fn) == (4, 1, 3, 2)
    assert point.sensitivity == pytest.approx(4 / 6) and point.specificity == pytest.approx(3 / 4)
    assert point.ppv == pytest.approx(4 / 5) and point.npv == pytest.approx(3 / 5)
    assert point.f1 == pytest.approx(2 * 4 / (2 * 4 + 1 + 2)) and point.accuracy == pytest.approx(7 / 10)
    called = (P_DISEASE >= 0.5).astype(int)
    assert point.sensitivity == pytest.approx(sk.recall_score(LABELS, called))
    assert point.ppv == pytest.approx(sk.precision_score(LABELS, called))
    assert point.f1 == pytest.approx(sk.f1_score(LABELS, called))
    assert point.balanced_accuracy == pytest.approx(sk.balanced_accuracy_score(LABELS, called))
    assert point.to_dict()["positive"] == "disease" and point.to_dict()["npv"] == pytest.approx(0.6)


def test_rates_from_counts_are_scikit_learns_and_vectorise_over_resamples() -> None:
    scored = noisy_binary(300, seed=3)
    called = (scored.probs[:, 1] >= 0.4).astype(int)
    tn, fp, fn, tp = sk.confusion_matrix(scored.labels, called).ravel()
    rates = clinical.binary_rates(tp, fp, tn, fn)
    assert rates["sensitivity"] == pytest.approx(sk.recall_score(scored.labels, called))
    assert rates["specificity"] == pytest.approx(sk.recall_score(scored.labels, called, pos_label=0))
    assert rates["ppv"] == pytest.approx(sk.precision_score(scored.labels, called))
    assert rates["npv"] == pytest.approx(sk.precision_score(scored.labels, called, pos_label=0))
    assert rates["f1"] == pytest.approx(sk.f1_score(scored.labels, called))
    assert rates["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(scored.labels, called))
    # One row per resample: each row's rates are the scalar rates of that row's counts.
    counts = np.array([[tp, fp, tn, fn], [0, 0, 5, 5], [3, 0, 0, 0]])
    batched = clinical.binary_rates(*counts.T)
    for row, (a, b, c, d) in enumerate(counts):
        for name, value in clinical.binary_rates(a, b, c, d).items():
            np.testing.assert_equal(batched[name][row], value)
    assert np.isnan(batched["ppv"][1]) and np.isnan(batched["specificity"][2])  # nothing called / no negatives

    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 2, 2, 0, 2])
    matrix = sk.confusion_matrix(labels, predicted)
    ovr = clinical.one_vs_rest_rates(matrix)
    np.testing.assert_allclose(ovr["sensitivity"], sk.recall_score(labels, predicted, average=None))
    for k in range(3):
        np.testing.assert_allclose(ovr["specificity"][k], sk.recall_score(labels != k, predicted != k))
    stacked = clinical.one_vs_rest_rates(np.stack([matrix, np.diag([2, 0, 1])]))
    np.testing.assert_allclose(stacked["sensitivity"][0], ovr["sensitivity"])
    assert np.isnan(stacked["sensitivity"][1, 1])  # class 1 has no cases in the second matrix


def test_threshold_is_inclusive_and_moves_the_counts() -> None:
    scored = binary(LABELS, P_DISEASE)
    at_point_four = clinical.operating_point(scored, 0.4)  # 0.4 itself is called positive
    assert (at_point_four.tp, at_point_four.fp, at_point_four.tn, at_point_four.fn) == (6, 1, 3, 0)
    assert clinical.confusion_matrix(scored, 0.4) == [[3, 1], [0, 6]]
    nothing = clinical.operating_point(scored, 1.0)
    assert (nothing.tp, nothing.fp) == (0, 0)
    assert np.isnan(nothing.ppv) and nothing.to_dict()["ppv"] is None  # undefined, not zero


def test_positive_class_zero_is_the_mirror_image() -> None:
    # The same cases with the classes swapped round: "malignant" first, as in BreastMNIST.
    swapped = Scored(1 - LABELS, np.column_stack([P_DISEASE, 1 - P_DISEASE]), ["malignant", "benign"])
    point = clinical.operating_point(swapped, 0.5)
    assert point.positive == "malignant" and (point.tp, point.fp, point.tn, point.fn) == (4, 1, 3, 2)
    # Rows and columns in class order: malignant first.
    assert clinical.confusion_matrix(swapped, 0.5) == [[4, 2], [1, 3]]
    assert clinical.predicted_labels(swapped, 0.5).tolist() == [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]


def test_cell_indices_most_confident_first() -> None:
    scored = binary(LABELS, P_DISEASE)
    assert clinical.cell_indices(scored, 1, 0, 0.5).tolist() == [4, 5]  # misses: p(normal) 0.6 then 0.55
    assert clinical.cell_indices(scored, 1, 1, 0.5).tolist() == [9, 8, 7, 6]
    assert clinical.cell_indices(scored, 0, 1, 0.5).tolist() == [3]


def test_two_class_cells_are_ordered_by_the_positive_probability_the_threshold_is_applied_to() -> None:
    # The review's cell: true disease called normal at threshold 0.740, p(disease) 0.19, 0.35 and 0.72. The saved
    # columns of a sigmoid model are rounded separately, so p(normal) is not exactly 1 - p(disease): row 1's
    # p(normal) 0.281 would put it before row 2 (0.280) if cells were sorted by the called class's column, and the
    # captions would read p(disease) 0.720 then 0.7199, against "lowest first".
    probs = np.array([[0.81, 0.19], [0.281, 0.72], [0.280, 0.7199], [0.65, 0.35], [0.1, 0.9]])
    scored = Scored(np.array([1, 1, 1, 1, 1]), probs, ["normal", "disease"])
    assert clinical.cell_indices(scored, 1, 0, 0.74).tolist() == [0, 3, 2, 1]  # p(disease) lowest first
    assert clinical.cell_indices(scored, 1, 1, 0.3).tolist() == [4, 1, 2, 3]  # highest first
    # Positive class normal: its column decides, highest first where normal is called.
    assert clinical.cell_indices(scored, 1, 0, 0.5, "normal").tolist() == [0, 3]
    three = Scored(np.array([0, 0]), np.array([[0.5, 0.3, 0.2], [0.7, 0.2, 0.1]]), ["a", "b", "c"])
    assert clinical.cell_indices(three, 0, 0).tolist() == [1, 0]  # more classes: the called class's probability


# ---------------------------------------------------------------------------------------------------- thresholds
def brute_force(scored: Scored) -> list[clinical.OperatingPoint]:
    scores = np.unique(scored.probs[:, 1])
    candidates = np.concatenate([[1.0], (scores[1:] + scores[:-1]) / 2, [scores[0]]])
    return [clinical.operating_point(scored, t) for t in candidates]


def test_youden_threshold_by_hand_and_by_brute_force() -> None:
    # Cut between 0.3 and 0.4: sensitivity 6/6, specificity 3/4, J = 0.75 (the best; 0.6/0.7 gives 4/6 + 4/4 - 1).
    assert clinical.youden_threshold(LABELS == 1, P_DISEASE) == pytest.approx(0.35)
    for seed in range(5):
        noisy = noisy_binary(120, seed, ties=True)
        threshold = clinical.youden_threshold(noisy.labels == 1, noisy.probs[:, 1])
        best = max(p.sensitivity + p.specificity for p in brute_force(noisy))
        chosen = clinical.operating_point(noisy, threshold)
        assert chosen.sensitivity + chosen.specificity == pytest.approx(best)
        assert not np.any(np.isclose(noisy.probs[:, 1], threshold))  # midway between observed scores


def test_target_sensitivity_and_specificity_thresholds() -> None:
    # Sensitivity >= 0.8 needs 5 of the 6 positives: cut between 0.4 and 0.45 (the highest such threshold).
    assert clinical.threshold_for_sensitivity(LABELS == 1, P_DISEASE, 0.8) == pytest.approx(0.425)
    # Specificity >= 0.75 keeps 3 of 4 negatives: cut between 0.3 and 0.4 (the lowest such threshold).
    assert clinical.threshold_for_specificity(LABELS == 1, P_DISEASE, 0.75) == pytest.approx(0.35)
    assert clinical.threshold_for_specificity(LABELS == 1, P_DISEASE, 1.0) == pytest.approx(0.65)
    noisy = noisy_binary(300, 7, ties=True)
    points = brute_force(noisy)
    chosen = clinical.operating_point(
        noisy, clinical.threshold_for_sensitivity(noisy.labels == 1, noisy.probs[:, 1], 0.95)
    )
    assert chosen.sensitivity >= 0.95
    assert chosen.specificity == pytest.approx(max(p.specificity for p in points if p.sensitivity >= 0.95))
    presets = clinical.threshold_presets(noisy, "disease", 0.9, 0.9)
    assert set(presets) == {"default", "youden", "sensitivity", "specificity"} and presets["default"] == 0.5
    assert clinical.operating_point(noisy, presets["specificity"]).specificity >= 0.9
    with pytest.raises(ConfigError, match="both positive and negative cases"):
        clinical.youden_threshold(np.ones(4, bool), np.linspace(0, 1, 4))
    with pytest.raises(ConfigError, match="a threshold applies to two-class tasks; this one has 3 classes"):
        clinical.threshold_presets(Scored(np.arange(3), np.eye(3), ["a", "b", "c"]))


# --------------------------------------------------------------------------------------------------------- curves
def test_curves_for_the_positive_class_match_scikit_learn() -> None:
    swapped = Scored(1 - LABELS, np.column_stack([P_DISEASE, 1 - P_DISEASE]), ["malignant", "benign"])
    result = clinical.curves(swapped)
    assert list(result["roc"]) == ["malignant"] and list(result["pr"]) == ["malignant"]
    fpr, tpr, _ = sk.roc_curve(LABELS, P_DISEASE)
    assert result["roc"]["malignant"]["fpr"] == fpr.tolist() and result["roc"]["malignant"]["tpr"] == tpr.tolist()
    assert result["roc"]["malignant"]["auc"] == pytest.approx(22 / 24)
    pr = result["pr"]["malignant"]
    precision, recall, _ = sk.precision_recall_curve(LABELS, P_DISEASE)
    assert pr["precision"] == precision.tolist() and pr["recall"] == recall.tolist()
    assert pr["average_precision"] == pytest.approx(sk.average_precision_score(LABELS, P_DISEASE))
    assert pr["prevalence"] == pytest.approx(0.6)


def test_one_vs_rest_curves_per_class_and_absent_classes_skipped() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [[0.6, 0.3, 0.1], [0.4, 0.4, 0.2], [0.3, 0.5, 0.2], [0.5, 0.2, 0.3], [0.1, 0.2, 0.7], [0.2, 0.5, 0.3]]
    )
    result = clinical.curves(Scored(labels, probs, ["a", "b", "c"]))
    assert list(result["roc"]) == ["a", "b", "c"]
    for k, name in enumerate("abc"):
        assert result["roc"][name]["auc"] == pytest.approx(sk.roc_auc_score(labels == k, probs[:, k]))
    partial = clinical.curves(Scored(np.array([0, 1, 0, 1]), probs[:4], ["a", "b", "c"]))
    assert list(partial["roc"]) == ["a", "b"]  # class c has no cases


# -------------------------------------------------------------------------------------------------------- figures
def test_clickable_confusion_matrix_and_the_cell_a_click_selects() -> None:
    fig = charts.confusion_matrix_figure([[3, 1], [2, 4]], ["normal", "disease"], clickable=True, selected=(1, 0))
    heatmap, cells = fig.data
    assert heatmap.type == "heatmap" and cells.type == "scatter"
    assert [list(c) for c in cells.customdata] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert list(cells.x) == ["normal", "disease", "normal", "disease"] and list(cells.y)[2] == "disease"
    (outline,) = fig.layout.shapes
    assert (outline.x0, outline.x1, outline.y0, outline.y1) == (-0.5, 0.5, 0.5, 1.5)
    names = ["normal", "disease"]
    assert charts.selected_cell([{"customdata": [1, 0], "x": "normal", "y": "disease"}], names) == (1, 0)
    assert charts.selected_cell([{"x": "disease", "y": "normal"}], names) == (0, 1)  # a click on the heatmap
    assert charts.selected_cell([], names) is None and charts.selected_cell([{"x": 3}], names) is None


def test_roc_and_precision_recall_figures_mark_the_operating_point() -> None:
    scored = binary(LABELS, P_DISEASE)
    point = clinical.operating_point(scored, 0.5).to_dict()
    result = clinical.curves(scored)
    roc = charts.roc_figure(result["roc"], point)
    marker = roc.data[-1]
    assert marker.name == "operating point (threshold 0.500)"
    assert (marker.x[0], marker.y[0]) == pytest.approx((1 - 3 / 4, 4 / 6))
    pr = charts.precision_recall_figure(result["pr"], point)
    names = [trace.name for trace in pr.data]
    average_precision = sk.average_precision_score(LABELS, P_DISEASE)
    assert names == [
        f"disease (AP {average_precision:.3f})",
        "disease prevalence 0.60",
        "operating point (threshold 0.500)",
    ]
    assert (pr.data[-1].x[0], pr.data[-1].y[0]) == pytest.approx((4 / 6, 4 / 5))
    assert [trace.name for trace in charts.roc_figure(result["roc"]).data] == ["disease (AUC 0.917)", "chance"]
