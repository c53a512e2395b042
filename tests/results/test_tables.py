"""The rows and sentences the Evaluate page and the report share: one wording, three decimals, '–' for undefined."""

from __future__ import annotations

import numpy as np

from medimg.metrics.clinical import Scored
from medimg.results import evaluation, tables


def scored(labels: list[int], p_positive: list[float]) -> Scored:
    p = np.array(p_positive)
    return Scored(np.array(labels), np.column_stack([1 - p, p]), ["NORMAL", "PNEUMONIA"])


TEST = scored([0, 0, 0, 0, 1, 1, 1, 1, 1, 1], [0.1, 0.2, 0.3, 0.6, 0.4, 0.45, 0.7, 0.8, 0.9, 0.95])
VAL = scored([0, 0, 0, 1, 1, 1], [0.2, 0.3, 0.55, 0.5, 0.7, 0.9])


def test_binary_rows_headline_and_decision_read_the_summary() -> None:
    summary = evaluation.clinical_summary(TEST, VAL, threshold=0.5, n_resamples=200)
    # TP 4 (0.7 0.8 0.9 0.95), FP 1 (0.6), TN 3, FN 2 (0.4 0.45)
    assert tables.decision_note(summary) == (
        "Positive class: PNEUMONIA. Decision: positive when p(PNEUMONIA) ≥ 0.500. Test images: 10 (6 positive). "
        "TP 4, FN 2, FP 1, TN 3."
    )
    labels = [label for label, _, _ in tables.headline(summary)]
    assert labels == ["Sensitivity", "Specificity", "PPV", "NPV", "ROC AUC"]
    sensitivity = tables.headline(summary)[0]
    assert sensitivity[1] == "0.667"  # 4 of 6
    low, high = (
        summary["intervals"]["metrics"]["sensitivity"]["low"],
        summary["intervals"]["metrics"]["sensitivity"]["high"],
    )
    assert sensitivity[2] == f"95% CI {low:.3f}–{high:.3f}"
    rows = {row["metric"]: row for row in tables.metric_rows(summary["intervals"])}
    assert rows["PPV (precision)"]["estimate"] == "0.800" and list(rows["NPV"]) == [
        "metric",
        "estimate",
        "95% CI",
        "note",
    ]


def test_undefined_figures_are_a_dash_and_multi_class_has_no_decision_rule() -> None:
    assert tables.number(None) == "–" and tables.number(float("nan")) == "–" and tables.number(0.12345) == "0.123"
    three = Scored(np.array([0, 1, 2, 2]), np.eye(3)[[0, 1, 2, 1]] * 0.8 + 0.2 / 3, ["a", "b", "c"])
    summary = evaluation.clinical_summary(three, None, n_resamples=200)
    assert tables.decision_note(summary) is None
    # More than two classes: the AUC is a macro one-vs-rest mean, and says so (two classes keep "ROC AUC").
    headline = tables.headline(summary)
    assert [label for label, _, _ in headline] == ["Accuracy", "Balanced accuracy", "Macro ROC AUC"]
    assert headline[2][2].endswith(f"; {tables.MACRO_AUC_NOTE}")
    rows = {row["metric"]: row for row in tables.metric_rows(summary["intervals"])}
    assert "ROC AUC" not in rows and rows["Macro ROC AUC"]["note"] == tables.MACRO_AUC_NOTE
    # a collapsed multi-class interval is said too, as a binary one is (1 of 1 a called a in every resample)
    assert rows["Sensitivity (recall) · a"]["note"].startswith("collapsed: every resample gave the same value")
    text, warning = tables.calibration_note(summary["calibration"])
    assert text.endswith("no validation predictions to fit a temperature on.") and warning is None
    rows = tables.calibration_rows(summary["calibration"])
    assert [row["after temperature scaling"] for row in rows] == ["–", "–"]  # nothing fitted, nothing to show


def test_leakage_verdicts() -> None:
    passed = {"passed": True, "images": 140, "cross_split_duplicates": [], "group_overlap": []}
    assert tables.leakage_verdict(passed) == (
        True,
        "Leakage check passed: no identical images across splits (140 checked).",
    )
    failed = {
        "passed": False,
        "images": 140,
        "cross_split_duplicates": [["train:a.png", "test:b.png"]],
        "conflicting_label_groups": 1,
        "group_overlap": ["p1", "p2"],
    }
    ok, text = tables.leakage_verdict(failed)
    assert not ok and text.startswith("Leakage check failed: 1 identical image group(s) across splits (1 with")
    assert "2 patient(s) in more than one split" in text


def test_trial_rows_in_words_with_the_fold_spread_when_cross_validated() -> None:
    table = [
        {
            "trial": 1,
            "status": "COMPLETED",
            "score": 0.8,
            "hyperparameters": {"batch_norm": True, "l2": 1e-4},
            "fold_scores": [0.7, 0.8, 0.9],
        },
        {
            "trial": 2,
            "status": "COLLAPSED",
            "score": 0.0,
            "hyperparameters": {"batch_norm": False, "l2": None},
            "fold_scores": [0.0, 0.0, 0.0],
        },
        {"trial": 3, "status": "RUNNING", "score": None, "hyperparameters": {"batch_norm": True}, "fold_scores": []},
    ]
    rows = tables.trial_rows(table)
    assert rows[0] == {
        "trial": 1,
        "status": "completed",
        "score": "0.8000",
        "folds": "3 folds ± 0.1000 (0.7000–0.9000)",
        "batch norm": "yes",
        "l2": "0.0001",
    }
    assert rows[1]["status"] == "collapsed (one class)" and rows[1]["l2"] == "–" and rows[1]["batch norm"] == "no"
    assert rows[2]["score"] == "–" and rows[2]["folds"] == "–"
    stopped = tables.trial_rows([{**table[0], "status": "STOPPED", "score": 0.7644}])[0]
    assert (stopped["status"], stopped["score"]) == ("stopped", "0.7644 (partial)")
    plain = tables.trial_rows([{**table[0], "fold_scores": []}])
    assert "folds" not in plain[0]  # no column for a search without cross-validation


def test_a_cell_caption_gives_the_probability_the_call_was_made_on() -> None:
    # The review's image: true PNEUMONIA called NORMAL because p(PNEUMONIA) 0.72 is below the threshold 0.740;
    # its p(NORMAL) = 0.28 read as a weak NORMAL call with no reason given.
    cell = scored([1, 1, 1, 0], [0.72, 0.7399, 0.74, 0.2])
    assert tables.call_probability(cell, 0, 0.74, "PNEUMONIA") == "p(PNEUMONIA) = 0.720 < threshold 0.740"
    assert tables.call_probability(cell, 1, 0.74) == "p(PNEUMONIA) = 0.7399 < threshold 0.7400"  # not 0.740 < 0.740
    assert tables.call_probability(cell, 2, 0.74) == "p(PNEUMONIA) = 0.740 ≥ threshold 0.740"
    assert tables.call_probability(cell, 3, 0.5, "NORMAL") == "p(NORMAL) = 0.800 ≥ threshold 0.500"
    three = Scored(np.array([2]), np.array([[0.3, 0.15, 0.55]]), ["BACTERIA", "NORMAL", "VIRUS"])
    assert tables.call_probability(three, 0) == "p(VIRUS) = 0.55, the arg-max"


def test_a_cell_note_states_the_order_the_images_are_shown_in() -> None:
    names = ["NORMAL", "PNEUMONIA"]
    assert tables.cell_note(names, 0, 3, 0.74, "PNEUMONIA") == (
        "3 test image(s) in this cell at threshold 0.740, by p(PNEUMONIA), lowest first: the most confident NORMAL "
        "call first."
    )
    assert tables.cell_note(names, 1, 2, 0.74).startswith("2 test image(s) in this cell at threshold 0.740, by p(")
    assert "by p(PNEUMONIA), highest first: the most confident PNEUMONIA call first." in tables.cell_note(names, 1, 2)
    assert tables.cell_note(["a", "b", "c"], 2, 4) == (
        "4 test image(s) in this cell, the most confident call first: by p(c), the called class's probability "
        "(the arg-max)."
    )


def test_calibration_note_passes_on_a_scaling_that_made_test_worse() -> None:
    from tests.metrics.test_calibration import overconfident

    summary = evaluation.clinical_summary(overconfident(600, 1.0, 1), overconfident(600, 3.0, 0), n_resamples=100)
    calibration = summary["calibration"]
    text, warning = tables.calibration_note(calibration)
    assert text.startswith(f"Temperature scaling fitted on validation: T = {calibration['temperature']:.3f}")
    assert warning == calibration["warning"] and "did not help on test" in warning
