"""What the Evaluate page and the report both show of an evaluation, worded once: rows of display strings and the
sentences beside them. The page puts the rows in a table widget, the report in an HTML table; neither formats a
figure of its own, so a reviewer reading both sees the same numbers to the same digits."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from medimg.metrics.bootstrap import Intervals, interval_text
from medimg.metrics.calibration import CalibrationSummary
from medimg.metrics.clinical import Scored, metric_label, positive_index
from medimg.results.evaluation import ClinicalSummary

if TYPE_CHECKING:
    from medimg.model.tuning import TrialRow

MISSING = "–"
# The figures of a binary task's headline, in the order a reviewer reads them; a multi-class task's headline.
BINARY_HEADLINE = ("sensitivity", "specificity", "ppv", "npv", "auc")
MULTICLASS_HEADLINE = ("accuracy", "balanced_accuracy", "auc")
SHORT_LABELS = {"ppv": "PPV", "npv": "NPV", "auc": "ROC AUC", "balanced_accuracy": "Balanced accuracy"}
SUBGROUP_METRICS = ("auc", "sensitivity", "specificity", "accuracy")
# More than two classes: the headline AUC is scikit-learn's roc_auc_score(multi_class="ovr", average="macro")
# (`clinical.roc_auc`), an unweighted mean over classes, not the AUC of any one class.
MACRO_AUC_LABEL = "Macro ROC AUC"
MACRO_AUC_NOTE = "macro average: the unweighted mean of the one-vs-rest ROC AUCs of the classes"


def number(value: float | None) -> str:
    """A fraction or score as both show it: three decimals, '–' for an undefined one (None or NaN)."""
    return MISSING if value is None or value != value else f"{value:.3f}"


def confidence_label(intervals: Intervals) -> str:
    """'95% CI' for intervals at 95 % confidence."""
    return f"{intervals['confidence']:.0%} CI"


def headline(summary: ClinicalSummary) -> list[tuple[str, str, str | None]]:
    """(label, estimate, interval) per headline figure: sensitivity, specificity, PPV, NPV and AUC for two classes,
    accuracy, balanced accuracy and macro AUC otherwise (labelled `MACRO_AUC_LABEL`, its interval followed by
    `MACRO_AUC_NOTE`); the interval None where there is none."""
    intervals = summary["intervals"]
    binary = bool(summary["positive_class"])
    tiles = []
    for name in BINARY_HEADLINE if binary else MULTICLASS_HEADLINE:
        value = intervals["metrics"][name]
        interval = None if value["low"] is None else f"{confidence_label(intervals)} {interval_text(value, False)}"
        label = SHORT_LABELS.get(name, name.capitalize())
        if name == "auc" and not binary:
            label, interval = MACRO_AUC_LABEL, "; ".join(text for text in (interval, MACRO_AUC_NOTE) if text)
        tiles.append((label, number(value["estimate"]), interval))
    return tiles


def metric_rows(intervals: Intervals) -> list[dict[str, str]]:
    """One row per metric: its name for people, the estimate, the interval, and a note where the interval is not
    the percentile bootstrap's (Wilson where the bootstrap collapsed, that it collapsed, or that the arg-max never
    calls the class). More than two classes (`intervals["threshold"]` None): AUC is `MACRO_AUC_LABEL`, noted."""
    multiclass = intervals["threshold"] is None
    rows = []
    for name, value in intervals["metrics"].items():
        macro = multiclass and name == "auc"
        rows.append(
            {
                "metric": MACRO_AUC_LABEL if macro else metric_label(name),
                "estimate": number(value["estimate"]),
                confidence_label(intervals): interval_text(value, False),
                "note": value.get("interval") or (MACRO_AUC_NOTE if macro else ""),
            }
        )
    return rows


def intervals_note(intervals: Intervals) -> str:
    """How the intervals were made, in one sentence."""
    return (
        f"{intervals['confidence']:.0%} intervals: {intervals['method']}, {intervals['resamples']} resamples "
        f"(seed {intervals['seed']}); class counts are kept in each resample, so PPV and NPV hold at the test "
        "split's prevalence."
    )


def decision_note(summary: ClinicalSummary) -> str | None:
    """The two-class decision rule and its confusion counts in one sentence; None for more classes."""
    point, positive = summary["operating_point"], summary["positive_class"]
    if point is None or positive is None:
        return None
    return (
        f"Positive class: {positive}. Decision: positive when p({positive}) ≥ {point['threshold']:.3f}. "
        f"Test images: {summary['count']} ({point['tp'] + point['fn']} positive). TP {point['tp']}, "
        f"FN {point['fn']}, FP {point['fp']}, TN {point['tn']}."
    )


def call_probability(scored: Scored, index: int, threshold: float = 0.5, positive: str | int | None = None) -> str:
    """The probability one image's call rests on, for a caption.

    Two classes: p(positive) against the threshold, the number and the rule that made the call, e.g.
    "p(PNEUMONIA) = 0.720 < threshold 0.740" for an image called the other class (its p(NORMAL) = 0.28 would read
    as a weak NORMAL call made for no visible reason). More classes: the called class's probability, the arg-max,
    e.g. "p(VIRUS) = 0.55, the arg-max".

    Args:
        scored: the split's predictions; `index` the image's row in it.
        threshold, positive: the two-class decision rule (ignored for more classes).
    """
    names = scored.class_names
    if not scored.binary:
        called = int(scored.probs[index].argmax())
        return f"p({names[called]}) = {scored.probs[index, called]:.2f}, the arg-max"
    column = positive_index(names, positive)
    value = float(scored.probs[index, column])
    shown, limit = _apart(value, threshold)
    return f"p({names[column]}) = {shown} {'≥' if value >= threshold else '<'} threshold {limit}"


def _apart(value: float, threshold: float) -> tuple[str, str]:
    # Three decimals, as the slider shows the threshold; more where rounding would print "0.740 < threshold 0.740".
    for digits in range(3, 7):
        shown, limit = f"{value:.{digits}f}", f"{threshold:.{digits}f}"
        if (shown == limit) == (value == threshold):
            break
    return shown, limit


def cell_note(
    class_names: list[str], called: int, count: int, threshold: float = 0.5, positive: str | int | None = None
) -> str:
    """How many test images one confusion-matrix cell holds and the order `clinical.cell_indices` shows them in."""
    if len(class_names) != 2:
        return (
            f"{count} test image(s) in this cell, the most confident call first: by p({class_names[called]}), the "
            "called class's probability (the arg-max)."
        )
    column = positive_index(class_names, positive)
    order = "highest" if called == column else "lowest"
    return (
        f"{count} test image(s) in this cell at threshold {threshold:.3f}, by p({class_names[column]}), {order} "
        f"first: the most confident {class_names[called]} call first."
    )


def calibration_note(calibration: CalibrationSummary) -> tuple[str, str | None]:
    """(what temperature scaling did, in one sentence; the warning when its fit should not be trusted, else None)."""
    before, after, temperature = calibration["before"], calibration["after"], calibration["temperature"]
    if temperature and after:
        text = (
            f"Temperature scaling fitted on validation: T = {temperature:.3f} "
            f"({'softens over-confident' if temperature > 1 else 'sharpens under-confident'} probabilities; ranks, "
            f"hence AUC, unchanged); test ECE {before['ece']:.3f} → {after['ece']:.3f}, test negative "
            f"log-likelihood {calibration['test_nll_before']:.3f} → {calibration['test_nll_after']:.3f}."
        )
    else:
        skipped = calibration.get("skipped") or "no validation predictions to fit a temperature on"
        text = f"Test ECE {before['ece']:.3f}; {skipped}."
    return text, calibration.get("warning")


def calibration_rows(calibration: CalibrationSummary) -> list[dict[str, str]]:
    """Calibration errors (and the test negative log-likelihood) before and after temperature scaling."""
    before, after = calibration["before"], calibration["after"]
    rows = [
        ("expected calibration error (test)", before["ece"], after["ece"] if after else None),
        ("maximum calibration error (test)", before["mce"], after["mce"] if after else None),
    ]
    if after:
        rows.append(("negative log-likelihood (test)", calibration["test_nll_before"], calibration["test_nll_after"]))
        rows.append(("expected calibration error (val)", calibration["val_ece_before"], calibration["val_ece_after"]))
    return [{"": name, "before": number(old), "after temperature scaling": number(new)} for name, old, new in rows]


def subgroup_rows(rows: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    """`subgroups.subgroup_metrics` rows for people: the subgroup under `column`, its image and positive counts,
    and each metric with its interval."""
    shown = []
    for row in rows:
        entry: dict[str, Any] = {column: row["value"], "images": row["count"]}
        if "positives" in row:
            entry["positives"] = row["positives"]
        for key in SUBGROUP_METRICS:
            if key in row:
                entry[metric_label(key)] = interval_text(row[key])
        shown.append(entry)
    return shown


def leakage_verdict(leakage: dict[str, Any]) -> tuple[bool, str]:
    """(passed, the verdict in one sentence) of `evaluation.leakage_check`."""
    duplicates = leakage["cross_split_duplicates"]
    if leakage["passed"]:
        return True, f"Leakage check passed: no identical images across splits ({leakage['images']} checked)."
    conflicts = leakage.get("conflicting_label_groups", 0)
    return False, (
        f"Leakage check failed: {len(duplicates)} identical image group(s) across splits"
        f"{f' ({conflicts} with different labels)' if conflicts else ''}, "
        f"{len(leakage['group_overlap'])} patient(s) in more than one split. The test metrics may be optimistic."
    )


# Trial states as optuna-dashboard names them.
STATUS_WORDS = {
    "RUNNING": "running",
    "COMPLETED": "completed",
    "STOPPED": "stopped",
    "FAILED": "failed",
    "INVALID": "failed",
    "COLLAPSED": "collapsed (one class)",
    "CUT_BY_BUDGET": "completed (cut by the time budget)",
}


def trial_rows(table: list[TrialRow]) -> list[dict[str, str | int]]:
    """The trial table in words (`tuning.trial_table`): states named, scores to four decimals (a stopped trial's
    marked partial: its best epoch before the stop), a "folds" column when
    trials were cross-validated, one column per hyperparameter ("_" as spaces), no None or True. Text throughout:
    Arrow (which carries a table to the browser) refuses a column mixing numbers and dashes."""
    cross_validated = any(row["fold_scores"] for row in table)
    rows = []
    for row in table:
        score = MISSING if row["score"] is None or row["score"] != row["score"] else f"{row['score']:.4f}"
        if row["status"] == "STOPPED" and score != MISSING:  # its best epoch before the stop
            score += " (partial)"
        shown: dict[str, str | int] = {
            "trial": row["trial"],
            "status": STATUS_WORDS.get(row["status"], str(row["status"]).lower()),
            "score": score,
        }
        if cross_validated:
            shown["folds"] = fold_spread(row["fold_scores"])
        shown.update({name.replace("_", " "): plain_value(v) for name, v in row["hyperparameters"].items()})
        rows.append(shown)
    return rows


def fold_spread(scores: list[float]) -> str:
    """A trial's cross-validation folds in one cell: how many, their standard deviation and range."""
    if not scores:
        return MISSING
    spread = f" ± {statistics.stdev(scores):.4f}" if len(scores) > 1 else ""
    return f"{len(scores)} folds{spread} ({min(scores):.4f}–{max(scores):.4f})"


def plain_value(value: object) -> str:
    """A hyperparameter's value as people read it: 'yes'/'no', 0.0001 as 1e-04, '–' for none."""
    if value is None or value != value:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:g}" if isinstance(value, float) else str(value)
