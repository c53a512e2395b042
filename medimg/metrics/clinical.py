"""What a clinical reviewer asks of a classifier's scores: the positive class, the operating point, thresholds, curves.

Pure numpy / scikit-learn on labels and probabilities, no model and no run files (`evaluation.py` reads and writes
those; `bootstrap.py` adds intervals, `subgroups.py` metrics per manifest column). A binary task is scored on its
*positive* class's probability: a case is called positive when that probability is at or above the threshold. A
multi-class task is scored one-vs-rest at the arg-max prediction.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, TypedDict

import numpy as np

from medimg.errors import ConfigError

NEGATIVE_NAMES = ("normal", "benign", "negative", "healthy", "control", "absent", "no finding", "no disease")
BINARY_METRICS = ("auc", "sensitivity", "specificity", "ppv", "npv", "f1", "accuracy", "balanced_accuracy")
METRIC_LABELS = {
    "auc": "ROC AUC",
    "sensitivity": "Sensitivity (recall)",
    "specificity": "Specificity",
    "ppv": "PPV (precision)",
    "npv": "NPV",
    "f1": "F1",
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
}


def metric_label(name: str) -> str:
    """A metric's name for people: 'sensitivity:PNEUMONIA' → 'Sensitivity (recall) · PNEUMONIA'."""
    metric, _, class_name = name.partition(":")
    label = METRIC_LABELS.get(metric, metric.replace("_", " "))
    return f"{label} · {class_name}" if class_name else label


@dataclasses.dataclass(frozen=True)
class Scored:
    """One split's predictions: labels (indices into `class_names`), probabilities N×K and the image paths."""

    labels: np.ndarray
    probs: np.ndarray
    class_names: list[str]
    paths: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.probs.ndim != 2 or len(self.labels) != len(self.probs):
            raise ConfigError(f"{len(self.labels)} labels for probabilities of shape {self.probs.shape}.")

    @property
    def binary(self) -> bool:
        return len(self.class_names) == 2

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, mask: np.ndarray) -> Scored:
        paths = [p for p, keep in zip(self.paths, mask, strict=True) if keep] if self.paths else []
        return Scored(self.labels[mask], self.probs[mask], self.class_names, paths)


# ------------------------------------------------------------------------------------------------- positive class
def default_positive(class_names: list[str]) -> int:
    """The class a binary task calls positive: the one *not* named like normal/benign/negative, else the second."""
    if len(class_names) != 2:
        raise ConfigError(f"a positive class exists only for two classes; this task has {len(class_names)}.")
    negative = [i for i, name in enumerate(class_names) if _looks_negative(name)]
    return 1 - negative[0] if len(negative) == 1 else 1


def _looks_negative(name: str) -> bool:
    words = " ".join(re.split(r"[^a-z]+", name.lower())).strip()
    return any(re.search(rf"(^| ){term}($| )", words) for term in NEGATIVE_NAMES)


def positive_index(class_names: list[str], positive: str | int | None) -> int:
    """The positive class's index from its name or index; None picks `default_positive`."""
    if positive is None or positive == "":
        return default_positive(class_names)
    if isinstance(positive, int | np.integer) and 0 <= positive < len(class_names):
        return int(positive)
    if positive in class_names:
        return class_names.index(positive)
    raise ConfigError(f"positive class '{positive}' is not one of the classes {class_names}.")


def predicted_labels(scored: Scored, threshold: float = 0.5, positive: str | int | None = None) -> np.ndarray:
    """Binary: positive when p(positive) >= threshold, else the other class. Multi-class: the arg-max."""
    if not scored.binary:
        return scored.probs.argmax(axis=1)
    index = positive_index(scored.class_names, positive)
    return np.where(scored.probs[:, index] >= threshold, index, 1 - index)


def confusion_matrix(scored: Scored, threshold: float = 0.5, positive: str | int | None = None) -> list[list[int]]:
    """Counts with rows = true class, columns = predicted class, in `class_names` order."""
    size = len(scored.class_names)
    cells = scored.labels * size + predicted_labels(scored, threshold, positive)
    return np.bincount(cells, minlength=size * size).reshape(size, size).tolist()


def cell_indices(
    scored: Scored, true: int, called: int, threshold: float = 0.5, positive: str | int | None = None
) -> np.ndarray:
    """Indices of the images in one confusion-matrix cell, the most confident call first.

    Two classes: by p(positive), the number the threshold is applied to: highest first in a column called
    positive, lowest first in one called negative (not by p(called), which a sigmoid model's saved columns need
    not make exactly 1 - p(positive)). More classes: by the called class's probability, the arg-max."""
    predicted = predicted_labels(scored, threshold, positive)
    members = np.flatnonzero((scored.labels == true) & (predicted == called))
    if scored.binary:
        index = positive_index(scored.class_names, positive)
        scores = scored.probs[members, index]
        return members[np.argsort(-scores if called == index else scores, kind="stable")]
    return members[np.argsort(-scored.probs[members, called], kind="stable")]


# ------------------------------------------------------------------------------------------ rates from confusion counts
# The one implementation of every count-based figure: `OperatingPoint`, the bootstrap's resamples (arrays of counts,
# one per resample) and the per-class table of `results.evaluation` all call these two functions.
def binary_rates(tp: Any, fp: Any, tn: Any, fn: Any) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV, F1, accuracy and balanced accuracy from confusion counts.

    Counts are scalars or arrays of one shape (for example one entry per bootstrap resample, weighted counts
    allowed); every rate has that shape (a NumPy scalar for scalar counts), NaN where its denominator is zero (a
    rate of no cases is undefined, not 0).
    Definitions: Altman & Bland, "Diagnostic tests 1 and 2", BMJ 1994; F1 = 2TP / (2TP + FP + FN)."""
    tp, fp, tn, fn = (np.asarray(count, dtype=np.float64) for count in (tp, fp, tn, fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity, specificity = tp / (tp + fn), tn / (tn + fp)
        return {
            "sensitivity": sensitivity,
            "specificity": specificity,
            "ppv": tp / (tp + fp),
            "npv": tn / (tn + fn),
            "f1": 2 * tp / (2 * tp + fp + fn),
            "accuracy": (tp + tn) / (tp + tn + fp + fn),
            "balanced_accuracy": (sensitivity + specificity) / 2,
        }


def one_vs_rest_rates(counts: Any) -> dict[str, np.ndarray]:
    """Per-class sensitivity and specificity, one class against the rest, from confusion counts (… × K × K, rows the
    true class, columns the called one; leading axes for example one per bootstrap resample): each of shape … × K,
    NaN for a class with no cases (sensitivity) or no other cases (specificity)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=(-2, -1))[..., None]
    called_right = np.diagonal(counts, axis1=-2, axis2=-1)
    truly, called = counts.sum(axis=-1), counts.sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "sensitivity": called_right / truly,
            "specificity": (total - truly - called + called_right) / (total - truly),
        }


# ------------------------------------------------------------------------------------------------ operating point
@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """A binary decision rule's confusion counts and the rates derived from them (NaN where undefined)."""

    threshold: float
    positive: str
    tp: int
    fp: int
    tn: int
    fn: int

    def rates(self) -> dict[str, float]:
        """Every rate of `binary_rates` at this point, as floats (NaN where undefined)."""
        return {name: float(value) for name, value in binary_rates(self.tp, self.fp, self.tn, self.fn).items()}

    @property
    def sensitivity(self) -> float:
        return self.rates()["sensitivity"]

    @property
    def specificity(self) -> float:
        return self.rates()["specificity"]

    @property
    def ppv(self) -> float:
        return self.rates()["ppv"]

    @property
    def npv(self) -> float:
        return self.rates()["npv"]

    @property
    def f1(self) -> float:
        return self.rates()["f1"]

    @property
    def accuracy(self) -> float:
        return self.rates()["accuracy"]

    @property
    def balanced_accuracy(self) -> float:
        return self.rates()["balanced_accuracy"]

    def to_dict(self) -> OperatingPointRecord:
        rates = {name: _plain(value) for name, value in self.rates().items()}
        return OperatingPointRecord(**dataclasses.asdict(self), **rates)  # type: ignore[typeddict-item]


class OperatingPointRecord(TypedDict):
    """`OperatingPoint` as stored in metrics.json and shown: counts, the threshold on p(`positive`), rates as
    fractions (None where undefined)."""

    threshold: float
    positive: str
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: float | None
    specificity: float | None
    ppv: float | None
    npv: float | None
    f1: float | None
    accuracy: float | None
    balanced_accuracy: float | None


def _plain(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def operating_point(scored: Scored, threshold: float = 0.5, positive: str | int | None = None) -> OperatingPoint:
    """Confusion counts of the rule "positive when p(positive) >= threshold" on a binary task."""
    index = _binary_index(scored, positive)
    is_positive = scored.labels == index
    called = scored.probs[:, index] >= threshold
    return OperatingPoint(
        threshold=float(threshold),
        positive=scored.class_names[index],
        tp=int(np.sum(called & is_positive)),
        fp=int(np.sum(called & ~is_positive)),
        tn=int(np.sum(~called & ~is_positive)),
        fn=int(np.sum(~called & is_positive)),
    )


def _binary_index(scored: Scored, positive: str | int | None) -> int:
    if not scored.binary:
        raise ConfigError(
            f"a threshold applies to two-class tasks; this one has {len(scored.class_names)} classes "
            "(use the per-class one-vs-rest metrics)."
        )
    return positive_index(scored.class_names, positive)


def threshold_presets(
    scored: Scored,
    positive: str | int | None = None,
    target_sensitivity: float = 0.95,
    target_specificity: float = 0.95,
) -> dict[str, float]:
    """Named thresholds: 0.5, Youden's J, and the sensitivity / specificity targets (None when unreachable)."""
    index = _binary_index(scored, positive)
    is_positive, scores = scored.labels == index, scored.probs[:, index]
    return {
        "default": 0.5,
        "youden": youden_threshold(is_positive, scores),
        "sensitivity": threshold_for_sensitivity(is_positive, scores, target_sensitivity),
        "specificity": threshold_for_specificity(is_positive, scores, target_specificity),
    }


def _roc_points(is_positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn import metrics

    if is_positive.all() or not is_positive.any():
        raise ConfigError("choosing a threshold needs both positive and negative cases in the split.")
    return metrics.roc_curve(is_positive, scores, drop_intermediate=False)


def _gap_threshold(thresholds: np.ndarray, k: int) -> float:
    # Midway to the next lower observed score (as pROC reports it): the same decisions, robust to rounding.
    if k == 0:
        return 1.0  # "call nothing positive" (scores above 1 do not occur)
    lower = thresholds[k + 1] if k + 1 < len(thresholds) else thresholds[k]
    return float(min(1.0, (thresholds[k] + lower) / 2))


def youden_threshold(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity - 1 (the highest among ties)."""
    fpr, tpr, thresholds = _roc_points(np.asarray(is_positive, bool), np.asarray(scores))
    return _gap_threshold(thresholds, int(np.argmax(tpr - fpr)))


def threshold_for_sensitivity(is_positive: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity reaches `target`: the best specificity that keeps it."""
    _, tpr, thresholds = _roc_points(np.asarray(is_positive, bool), np.asarray(scores))
    return _gap_threshold(thresholds, int(np.flatnonzero(tpr >= target - 1e-12)[0]))


def threshold_for_specificity(is_positive: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The lowest threshold whose specificity reaches `target`: the best sensitivity that keeps it."""
    fpr, _, thresholds = _roc_points(np.asarray(is_positive, bool), np.asarray(scores))
    return _gap_threshold(thresholds, int(np.flatnonzero(1 - fpr >= target - 1e-12)[-1]))


# --------------------------------------------------------------------------------------------------------- curves
def curves(scored: Scored, positive: str | int | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """ROC and precision-recall curves: the positive class for a binary task, one-vs-rest per class otherwise."""
    from sklearn import metrics

    indices = [positive_index(scored.class_names, positive)] if scored.binary else range(len(scored.class_names))
    result: dict[str, dict[str, dict[str, Any]]] = {"roc": {}, "pr": {}}
    for k in indices:
        truth = scored.labels == k
        if truth.all() or not truth.any():
            continue  # a curve needs both kinds of case
        name = scored.class_names[k]
        fpr, tpr, _ = metrics.roc_curve(truth, scored.probs[:, k])
        result["roc"][name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": float(metrics.auc(fpr, tpr))}
        precision, recall, _ = metrics.precision_recall_curve(truth, scored.probs[:, k])
        result["pr"][name] = {
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "average_precision": float(metrics.average_precision_score(truth, scored.probs[:, k])),
            "prevalence": float(truth.mean()),
        }
    return result


def roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """Binary AUC of the second class's probability, or macro one-vs-rest AUC; None when one class is absent."""
    from sklearn import metrics

    present = np.unique(y_true)
    if len(present) < 2:
        return None
    if probs.shape[1] == 2:
        return float(metrics.roc_auc_score(y_true, probs[:, 1]))
    if len(present) < probs.shape[1]:
        return None
    return float(metrics.roc_auc_score(y_true, probs, multi_class="ovr", average="macro"))
