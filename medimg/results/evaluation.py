"""Evaluate a run: predictions on val and test, metrics from scikit-learn, the clinical summary, the leakage check."""

from __future__ import annotations

import csv
import hashlib
from typing import Any, TypedDict

import numpy as np

from medimg.datasets import datachecks
from medimg.errors import RunError
from medimg.metrics import bootstrap, calibration, clinical, ordinal
from medimg.metrics.bootstrap import Intervals
from medimg.metrics.calibration import CalibrationSummary
from medimg.metrics.clinical import OperatingPointRecord, Scored, roc_auc
from medimg.model.models import load_run_model, predict_arrays, validation_model
from medimg.store.runs import Run

SPLITS = ("val", "test")
DEFAULT_TARGET = 0.95  # the sensitivity / specificity target of the presets unless the user sets another
# 2: predictions.csv holds val and test (a `split` column), metrics.json the clinical summary and leakage check.
# 3: metrics.json and run.json's headline metrics list the classes the arg-max never calls on test.
# 4: metrics.json holds test metrics by subgroup of each manifest attribute column.
EVALUATION_VERSION = 4
VALIDATION_SCORED_VERSION = 2  # the first version with validation predictions (temperature, operating point)


class ClinicalSummary(TypedDict):
    """Everything the Evaluate page and the report show of one split at one operating point (`clinical_summary`).

    Two classes: `threshold` on p(`positive_class`), its `operating_point`, the `presets` thresholds chosen on
    `presets_split` (validation, never test; {} and `presets_reason` saying why when none could be chosen) and the
    test figures at each (`preset_points`). More classes: those are None / empty, decisions are the arg-max.
    `confusion_matrix`: rows the true class, columns the called one. `curves`: `clinical.curves`. `target`: the
    sensitivity / specificity target (fraction) of the target presets."""

    class_names: list[str]
    target: float
    count: int
    positive_class: str | None
    threshold: float | None
    operating_point: OperatingPointRecord | None
    presets: dict[str, float]
    presets_split: str | None
    presets_reason: str | None
    preset_points: dict[str, OperatingPointRecord]
    confusion_matrix: list[list[int]]
    intervals: Intervals
    curves: dict[str, dict[str, dict[str, Any]]]
    calibration: CalibrationSummary


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, ROC AUC (binary, or macro one-vs-rest), per-class sensitivity/specificity/
    precision/F1 and the confusion matrix (rows: true class, columns: predicted)."""
    from sklearn import metrics

    y_true = np.asarray(y_true, dtype=int)
    labels = list(range(len(class_names)))
    y_pred = probs.argmax(axis=1)
    matrix = metrics.confusion_matrix(y_true, y_pred, labels=labels)
    precision, _, f1, support = metrics.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    rates = clinical.one_vs_rest_rates(matrix)
    per_class = {}
    for i, name in enumerate(class_names):
        # A rate of no cases is stored as 0 here, as scikit-learn's zero_division=0 does for precision and F1.
        sensitivity, specificity = (float(np.nan_to_num(rates[rate][i])) for rate in ("sensitivity", "specificity"))
        per_class[name] = {
            "sensitivity": sensitivity,
            "specificity": specificity,
            "precision": float(precision[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
    return {
        "accuracy": float(metrics.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(metrics.balanced_accuracy_score(y_true, y_pred)),
        "auc": roc_auc(y_true, probs),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "class_names": list(class_names),
        "count": len(y_true),
    }


def validation_figures(val: Scored) -> dict[str, float | None]:
    """The saved model's own figures on the validation split: {"auc", "accuracy", "loss"} (macro one-vs-rest AUC,
    accuracy at the arg-max, mean negative log-likelihood of the true class in nats). A search's trial scores were
    taken during training, one network each (or on folds of the training split, for a cross-validated search);
    the model a run keeps (a mean of trials, class weights undone) can score otherwise, and the run lists show this
    figure."""
    labels = np.asarray(val.labels, int)
    return {
        "auc": roc_auc(labels, val.probs),
        "accuracy": float(np.mean(val.probs.argmax(axis=1) == labels)) if len(labels) else None,
        "loss": calibration.negative_log_likelihood(labels, val.probs) if len(labels) else None,
    }


def roc_curves(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict[str, dict[str, list]]:
    """ROC curve per class (one-vs-rest; for two classes just the positive, second class)."""
    from sklearn import metrics

    indices = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    curves = {}
    for i in indices:
        positives = (np.asarray(y_true) == i).astype(int)
        if positives.min() == positives.max():
            continue
        fpr, tpr, _ = metrics.roc_curve(positives, probs[:, i])
        curves[class_names[i]] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": float(metrics.auc(fpr, tpr))}
    return curves


def evaluate_run(run: Run, data: Any = None, model: Any = None) -> dict[str, Any]:
    """Evaluate a run's model on its validation and test splits.

    Writes predictions.csv (both splits, a `split` column) and metrics.json (test metrics at the arg-max, the
    clinical summary at threshold 0.5 with bootstrap intervals, calibration with a temperature fitted on validation,
    the leakage check), and the headline metrics in run.json. When members of a search's mean were retrained on
    train + val, the validation predictions (and so the temperature, the operating point and the validation
    figures) are those of the members that were not (`models.validation_model`).
    """
    from medimg.datasets.prepared import prepare_data

    spec = run.spec
    data = data or prepare_data(spec.dataset)
    model = model or load_run_model(run)
    test = data.arrays["test"]
    if len(test) == 0:
        from medimg.errors import DatasetError

        raise DatasetError("the test split is empty; use a test_fraction above 0 or add a test/ folder.")
    # Members retrained on train + val have seen validation: their searched twins speak for them there.
    judged = {"val": validation_model(model, run.record), "test": model}
    scored = {}
    for split in SPLITS:
        arrays = data.arrays[split]
        if len(arrays):
            probs = predict_arrays(judged[split], arrays.images)
            scored[split] = Scored(np.asarray(arrays.labels, int), probs, list(data.class_names), list(arrays.paths))
    result = classification_metrics(scored["test"].labels, scored["test"].probs, data.class_names)
    result["roc"] = roc_curves(scored["test"].labels, scored["test"].probs, data.class_names)
    summary = clinical_summary(scored["test"], scored.get("val"))
    kept = ("positive_class", "operating_point", "intervals", "presets", "presets_split", "presets_reason")
    result["clinical"] = {k: summary[k] for k in kept}
    result["calibration"] = {k: v for k, v in summary["calibration"].items() if k not in ("before", "after")}
    result["calibration"]["ece_before"] = summary["calibration"]["before"]["ece"]
    after = summary["calibration"]["after"]
    result["calibration"]["ece_after"] = after["ece"] if after else None  # `skipped` says why when None
    result["leakage"] = leakage_check(data)
    if summary["presets"].get("youden") is not None:
        result["validation_operating_point"] = {
            "rule": "Youden's J (sensitivity + specificity - 1, maximised)",
            "chosen_on": summary["presets_split"],
            **summary["preset_points"]["youden"],
        }
    if "val" in scored:
        result["validation"] = validation_figures(scored["val"])
        if judged["val"] is not model:
            result["validation"]["judged"] = "searched members"  # the retrained members saw validation
    by_subgroup = subgroup_summary(spec.dataset.path, scored["test"], scored.get("val"))
    if by_subgroup:
        result["subgroups"] = by_subgroup
    result["one_class"] = one_class_warning(scored["test"])
    result["never_predicted"] = never_predicted(scored["test"])
    if ordinal.numbered_grades(list(data.class_names)):  # grades: how far the calls miss, not only whether
        result["ordinal"] = {split: ordinal.ordinal_summary(s.labels, s.probs) for split, s in scored.items()}
    result["evaluation_version"] = EVALUATION_VERSION
    run.write_json("metrics.json", result)
    _write_predictions(run, scored)
    # The finished-run summaries of Tune and Train read run.json alone: they get the same list metrics.json holds.
    headline = {k: result[k] for k in ("accuracy", "balanced_accuracy", "auc", "never_predicted")}
    if "validation" in result:
        headline["validation"] = result["validation"]
    if "ordinal" in result:
        headline["ordinal"] = result["ordinal"]
    point = result.get("validation_operating_point")
    if point:
        headline["operating_point"] = {
            k: point[k]
            for k in ("threshold", "chosen_on", "sensitivity", "specificity", "accuracy", "balanced_accuracy")
        }
        headline["operating_point"]["positive_class"] = summary["positive_class"]
    run.update(metrics=headline, one_class=result["one_class"])
    return result


def subgroup_summary(path: str, test: Scored, val: Scored | None, n_resamples: int = 1000) -> dict[str, Any] | None:
    """Test metrics by subgroup of each categorical column of a CSV manifest at `path`
    (`subgroups.manifest_columns`), as the report and the Evaluate page show them: {"threshold": the two-class
    threshold used (`default_threshold`; None for more classes, called by the arg-max), "chosen_on": "val" when
    validation chose it (Youden's J), else None (0.5), "columns": {column: `subgroups.subgroup_metrics` rows},
    "not_analysed": columns with one value per class}. None when `path` is no manifest or has no such column."""
    from medimg.metrics import subgroups

    attributes, proxies = subgroups.manifest_columns(path)
    if not attributes and not proxies:
        return None
    threshold, chosen_on = None, None
    if test.binary:
        threshold, chosen = chosen_threshold(test, val)
        chosen_on = "val" if chosen else None
    columns = {
        column: subgroups.subgroup_metrics(
            test, values, 0.5 if threshold is None else threshold, n_resamples=n_resamples
        )
        for column, values in attributes.items()
    }
    return {"threshold": threshold, "chosen_on": chosen_on, "columns": columns, "not_analysed": proxies}


def one_class_at_threshold(summary: ClinicalSummary) -> str | None:
    """For a two-class `clinical_summary`: a warning when its threshold calls every test image one class."""
    point = summary.get("operating_point")
    if not point:
        return None
    called_positive, total = point["tp"] + point["fp"], point["tp"] + point["fp"] + point["tn"] + point["fn"]
    if total and called_positive in (0, total):
        called = summary["positive_class"] if called_positive else "not " + summary["positive_class"]
        return (
            f"At threshold {point['threshold']:.3f} every one of the {total} test images is called {called}: "
            "sensitivity or specificity is 0 by construction. Move the threshold or pick a preset chosen on "
            "validation."
        )
    return None


def one_class_warning(scored: Scored) -> str | None:
    """A plain warning when the model's arg-max calls every image of the split one class, else None."""
    called = np.unique(scored.probs.argmax(axis=1))
    if len(scored) < 2 or len(called) > 1:
        return None
    name = scored.class_names[int(called[0])]
    return (
        f"the model calls every one of the {len(scored)} test images '{name}' at the arg-max (threshold 0.5 for "
        "two classes): it has not learnt to separate the classes at this threshold"
    )


def never_predicted(scored: Scored) -> list[str]:
    """Classes the arg-max never calls on this split (their sensitivity is 0 by construction), in class order."""
    called = set(np.unique(scored.probs.argmax(axis=1)).tolist()) if len(scored) else set()
    return [name for i, name in enumerate(scored.class_names) if i not in called]


def never_predicted_warning(never: list[str], class_count: int) -> str | None:
    """The warning for classes the arg-max never calls on test (`never_predicted`, as metrics.json stores it under
    `never_predicted`), worded once for the Evaluate page, the Tune and Train summaries, the report and the CLI.

    None when no class is missing, and when all but one are: every image is then called one class, which
    `one_class_warning` already says louder."""
    if not never or len(never) >= class_count - 1:
        return None
    return (
        f"The model never calls {', '.join(never)} on the test split: "
        f"{'their' if len(never) > 1 else 'its'} sensitivity is 0 by construction and "
        f"{'their' if len(never) > 1 else 'its'} precision undefined (shown as 0)."
    )


def clinical_summary(
    test: Scored,
    val: Scored | None = None,
    threshold: float = 0.5,
    positive: str | int | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    target: float = DEFAULT_TARGET,
) -> ClinicalSummary:
    """Everything the Evaluate page and the report show at one operating point, from predictions alone: see
    `ClinicalSummary`. Bootstrap intervals from `n_resamples` stratified resamples drawn with `seed`; the
    sensitivity and specificity presets at `target` (a fraction, chosen on validation)."""
    binary = test.binary
    index = clinical.positive_index(test.class_names, positive) if binary else None
    presets, presets_split = preset_thresholds(test, val, index, target, target) if binary else ({}, None)
    return ClinicalSummary(
        class_names=list(test.class_names),
        target=float(target),
        count=len(test),
        positive_class=test.class_names[index] if binary else None,
        threshold=float(threshold) if binary else None,
        operating_point=clinical.operating_point(test, threshold, index).to_dict() if binary else None,
        presets=presets,
        presets_split=presets_split,
        presets_reason=presets_unavailable(val, test.class_names) if binary else None,
        preset_points={name: clinical.operating_point(test, value, index).to_dict() for name, value in presets.items()},
        confusion_matrix=clinical.confusion_matrix(test, threshold, index),
        intervals=bootstrap.bootstrap_intervals(test, threshold, index, n_resamples, seed),
        curves=clinical.curves(test, index),
        calibration=calibration.calibration_summary(test, val, index),
    )


def preset_thresholds(
    test: Scored,
    val: Scored | None,
    positive: str | int | None = None,
    target_sensitivity: float = 0.95,
    target_specificity: float = 0.95,
) -> tuple[dict[str, float], str | None]:
    """Preset thresholds and the split they were chosen on: validation, never test (choosing on test flatters
    the test figures). ({}, None) without validation predictions holding both classes: `presets_unavailable`
    says why."""
    index = clinical.positive_index(test.class_names, positive)
    if presets_unavailable(val, test.class_names) is None:
        return clinical.threshold_presets(val, index, target_sensitivity, target_specificity), "val"  # type: ignore[arg-type]
    return {}, None


def presets_unavailable(val: Scored | None, class_names: list[str]) -> str | None:
    """Why no operating point can be chosen on validation (and none is chosen on test instead), or None."""
    if val is None or len(val) == 0:
        return "there are no validation predictions (re-evaluate the run to score its validation split)"
    counts = {name: int(np.sum(val.labels == i)) for i, name in enumerate(class_names)}
    reason = datachecks.one_class_reason(counts)
    return f"the validation split has one class: {reason}; an operating point needs both" if reason else None


PRESET_NAMES = {
    "youden": "Youden's J",
    "sensitivity": "the sensitivity target",
    "specificity": "the specificity target",
}
TARGET_PRESETS = ("sensitivity", "specificity")  # the presets that promise a figure, checked on test
THRESHOLD_TOLERANCE = 5e-4  # the slider's 0.001 step, halved: a preset moved onto the slider still counts as it
HALF_RULE = "0.5, the arg-max"
HALF = f"{HALF_RULE}: not chosen on any split"


def matching_presets(threshold: float, presets: dict[str, float | None]) -> list[str]:
    """The presets chosen on data (`PRESET_NAMES` order) that give `threshold`, within `THRESHOLD_TOLERANCE`.

    Two rules often give one threshold on a small validation split (seen: Youden's J and specificity ≥ 0.95 both
    0.554), so the value alone cannot say which rule was picked."""
    found = []
    for name in PRESET_NAMES:
        value = presets.get(name)
        if value is not None and abs(float(value) - threshold) <= THRESHOLD_TOLERANCE:
            found.append(name)
    return found


def answering_presets(threshold: float, presets: dict[str, float | None], chosen: str | None) -> list[str]:
    """The presets whose targets a threshold answers for (`missed_target` checks them): the preset picked, while
    the threshold stands on it; else every preset giving this threshold (`matching_presets`). Seen: with Youden's J,
    the default, coinciding with the specificity preset, the page warned that specificity missed "the 0.95
    target", a target nobody had chosen."""
    rules = matching_presets(threshold, presets)
    return [chosen] if chosen in rules else rules


def exact_threshold(threshold: float, presets: dict[str, float | None], chosen: str | None) -> float:
    """The threshold to write into a report, bundle or export: the picked preset's own value, unrounded, while the
    slider stands on it (within `THRESHOLD_TOLERANCE`), else `threshold` as set. The slider holds three decimals;
    a bundle at 0.450 for Youden's 0.4497 and a CLI export at 0.4497 would be two rules for one model."""
    value = presets.get(chosen) if chosen else None
    if value is not None and abs(float(value) - threshold) <= THRESHOLD_TOLERANCE:
        return float(value)
    return threshold


def threshold_origin(
    threshold: float, presets: dict[str, float | None], split: str | None, chosen: str | None = None
) -> tuple[str, bool]:
    """Where a two-class threshold came from, in words, and whether it was chosen on data.

    Args:
        threshold: the threshold on p(positive class).
        presets, split: as `preset_thresholds` returns them.
        chosen: the preset the user picked ('default', 'youden', 'sensitivity', 'specificity'), when known. It
            names the rule; other presets that give the same threshold are said to coincide with it. Without it
            (or when the threshold has moved off it) every preset giving this threshold is named.

    Returns:
        ("the specificity target on the validation split (coincides with Youden's J)", True) for a preset;
        ("0.5, the arg-max: not chosen on any split", False) and ("set by hand", False) otherwise.
    """
    rules = matching_presets(threshold, presets)
    where = f"on the {'validation' if split == 'val' else split} split"
    half_picked = chosen == "default" and abs(threshold - 0.5) <= THRESHOLD_TOLERANCE
    if half_picked or (not rules and abs(threshold - 0.5) <= THRESHOLD_TOLERANCE):
        if rules:
            return f"{HALF_RULE} (coincides with {_joined(rules)} {where})", True
        return HALF, False
    if not rules:
        return "set by hand", False
    if chosen in rules:
        others = [name for name in rules if name != chosen]
        coincide = f" (coincides with {_joined(others)})" if others else ""
        return f"{PRESET_NAMES[chosen]} {where}{coincide}", True
    same = " (the same threshold)" if len(rules) > 1 else ""
    return f"{_joined(rules)} {where}{same}", True


def _joined(names: list[str]) -> str:
    return " and ".join(PRESET_NAMES[name] for name in names)


def missed_target(point: OperatingPointRecord, preset: str, target: float) -> str | None:
    """A plain note when a target preset's figure on test falls short of its target, else None.

    Args:
        point: the test operating point at the threshold the preset chose on validation.
        preset: 'sensitivity' or 'specificity' (any other rule promises no figure: None).
        target: the target as a fraction, e.g. 0.95.

    The threshold stays the one chosen on validation: a target met on validation and missed on test is a finding
    about the model, and choosing the threshold again on test would hide it."""
    value = point.get(preset) if preset in TARGET_PRESETS else None
    if value is None or value >= target - 1e-12:
        return None
    return (
        f"{preset.capitalize()} on test {value:.3f} is below the {target:g} target chosen on validation (the "
        "threshold was chosen on validation; test is where it is checked)."
    )


def default_threshold(test: Scored, val: Scored | None, positive: str | int | None = None) -> float:
    """The threshold pages start from: Youden's J chosen on validation (the run's operating point), else 0.5.

    Never chosen on test: without validation predictions holding both classes the answer is 0.5."""
    return chosen_threshold(test, val, positive)[0]


def chosen_threshold(test: Scored, val: Scored | None, positive: str | int | None = None) -> tuple[float, bool]:
    """(`default_threshold`, whether validation chose it): False where it is the 0.5 fallback."""
    presets, split = preset_thresholds(test, val, positive)
    value = presets.get("youden")
    chosen = split == "val" and value is not None
    return (round(float(value), 3) if chosen else 0.5), chosen


def leakage_check(data: Any) -> dict[str, Any]:
    """Identical model inputs in two splits (exact duplicates at the run's image size) and patients in two splits.

    Also counts duplicate groups whose copies carry different labels, a labelling problem either way.
    """
    by_hash: dict[str, list[tuple[str, str, int]]] = {}
    for split, arrays in data.arrays.items():
        for path, image, label in zip(arrays.paths, arrays.images, arrays.labels, strict=True):
            digest = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).hexdigest()
            by_hash.setdefault(digest, []).append((split, path, int(label)))
    groups = [group for group in by_hash.values() if len(group) > 1]
    cross = [[f"{split}:{path}" for split, path, _ in g] for g in groups if len({s for s, _, _ in g}) > 1]
    groups_known = any(f.group for _, files in data.splits.items() for f in files)
    overlap = sorted(data.splits.group_overlap())
    image_shape = "x".join(str(v) for v in data.input_shape)
    return {
        "method": f"exact pixel match of the decoded model inputs ({image_shape}) across train, val and test",
        "images": int(sum(len(a) for a in data.arrays.values())),
        "cross_split_duplicates": cross,
        "within_split_duplicate_groups": sum(1 for g in groups if len({s for s, _, _ in g}) == 1),
        "conflicting_label_groups": sum(1 for g in groups if len({label for _, _, label in g}) > 1),
        "groups_known": groups_known,
        "group_overlap": overlap,
        "passed": not cross and not overlap,
    }


def _write_predictions(run: Run, scored: dict[str, Scored]) -> None:
    class_names = next(iter(scored.values())).class_names
    temporary = run.path / ".predictions.csv.tmp"
    with open(temporary, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "true", "predicted", *[f"p_{c}" for c in class_names], "split"])
        for split in ("test", "val"):
            if split not in scored:
                continue
            part = scored[split]
            for path, label, row in zip(part.paths, part.labels, part.probs, strict=True):
                cells = [f"{p:.6f}" for p in row]
                writer.writerow([path, class_names[label], class_names[int(row.argmax())], *cells, split])
    temporary.replace(run.path / "predictions.csv")


def read_predictions(run: Run, split: str = "test") -> list[dict[str, str]]:
    """Rows of predictions.csv for one split (a run evaluated before val was saved has test rows only)."""
    try:
        with open(run.path / "predictions.csv", newline="", encoding="utf-8") as stream:
            return [row for row in csv.DictReader(stream) if (row.get("split") or "test") == split]
    except FileNotFoundError:
        return []


def load_scored(run: Run) -> dict[str, Scored]:
    """A run's saved predictions as `Scored` per split ('test', and 'val' when it was saved)."""
    class_names = list((run.read_json("metrics.json") or {}).get("class_names") or run.record.get("class_names") or [])
    if not class_names:
        raise RunError(f"run {run.id} has no class names; it has not been evaluated yet.")
    found = {}
    for split in SPLITS:
        rows = read_predictions(run, split)
        if not rows:
            continue
        try:
            labels = np.array([class_names.index(row["true"]) for row in rows])
            probs = np.array([[float(row[f"p_{c}"]) for c in class_names] for row in rows])
        except (KeyError, ValueError) as error:
            raise RunError(
                f"run {run.id}: predictions.csv does not match its classes ({error}); "
                f"re-evaluate with `python -m medimg evaluate {run.id}`."
            ) from error
        found[split] = Scored(labels, probs, class_names, [row["path"] for row in rows])
    if "test" not in found:
        raise RunError(f"run {run.id} has no test predictions; evaluate it with `python -m medimg evaluate {run.id}`.")
    return found
