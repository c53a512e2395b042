"""Figures for classes that are ordered grades (diabetic-retinopathy grades 0-4, tumour grades): how far a call is
from the true grade, not only whether it is right. Pure numpy / scikit-learn, no model and no run files.

A grade task is judged clinically by how far calls miss: calling grade 3 for a grade 4 eye is not the miss that
calling grade 0 is. Accuracy and one-vs-rest AUC treat both alike, so for graded classes the evaluation adds:

- quadratic weighted kappa (Cohen 1968), the figure diabetic-retinopathy grading is usually reported with (the
  Kaggle / EyePACS grading challenge, Krause et al. 2018 report it); scikit-learn's `cohen_kappa_score`;
- mean absolute error in grades, and the share of calls within one grade of the truth.
"""

from __future__ import annotations

import re
import warnings
from typing import TypedDict

import numpy as np

GRADE_PATTERN = re.compile(r"\s*(\d+)")


class OrdinalSummary(TypedDict):
    """Ordinal figures of arg-max calls on one split (`ordinal_summary`)."""

    quadratic_weighted_kappa: float | None  # -1..1; None when undefined (every image one grade, called and true)
    mean_absolute_error: float  # grades
    within_one_grade: float  # fraction of images called at most one grade from their true grade
    count: int


def numbered_grades(class_names: list[str]) -> bool:
    """Whether the class names, in class index order (sorted), are numbered grades: three or more names starting
    with consecutive whole numbers from 0 or 1 (`0_no_dr`, `1_mild`, … or `1`, `2`, `3`), the way graded labels are
    exported (MedMNIST's RetinaMNIST: "ordinal regression"). Then the class index order is the grade order."""
    numbers = [GRADE_PATTERN.match(name) for name in class_names]
    if len(class_names) < 3 or not all(numbers):
        return False
    values = [int(match.group(1)) for match in numbers if match]
    return values == list(range(values[0], values[0] + len(values))) and values[0] in (0, 1)


def ordinal_summary(labels: np.ndarray, probs: np.ndarray) -> OrdinalSummary:
    """Quadratic weighted kappa, mean absolute error (grades) and the share within one grade of the arg-max calls.

    Args:
        labels: (N,) true grades as class indices (0..K-1, in grade order).
        probs: N×K class probabilities.

    Raises:
        ValueError: no image, or `probs` not N×K for K ≥ 2.
    """
    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import cohen_kappa_score

    labels = np.asarray(labels).astype(int).reshape(-1)
    probs = np.asarray(probs)
    if not len(labels) or probs.ndim != 2 or probs.shape[0] != len(labels) or probs.shape[1] < 2:
        raise ValueError(f"need N labels and N×K probabilities (K ≥ 2); got {labels.shape} and {probs.shape}.")
    called = probs.argmax(axis=1)
    distance = np.abs(called - labels)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # Every image one grade, true and called: kappa is 0/0; it is reported as None, not warned about.
        warnings.filterwarnings("ignore", category=UndefinedMetricWarning)
        kappa = float(cohen_kappa_score(labels, called, weights="quadratic", labels=list(range(probs.shape[1]))))
    return OrdinalSummary(
        quadratic_weighted_kappa=kappa if np.isfinite(kappa) else None,
        mean_absolute_error=float(distance.mean()),
        within_one_grade=float(np.mean(distance <= 1)),
        count=len(labels),
    )


def describe(by_split: dict[str, OrdinalSummary]) -> str:
    """The ordinal figures in one sentence, test first then validation when present: "Graded classes, test (400
    images): quadratic weighted kappa 0.412, mean absolute error 0.83 grades, 78.5% within one grade; validation …".
    `by_split`: split name ("test", "val") → `ordinal_summary`."""
    parts = []
    for split, name in (("test", "test"), ("val", "validation")):
        summary = by_split.get(split)
        if not summary:
            continue
        kappa = summary["quadratic_weighted_kappa"]
        parts.append(
            f"{name} ({summary['count']} images): quadratic weighted kappa "
            f"{'undefined (one grade only)' if kappa is None else f'{kappa:.3f}'}, mean absolute error "
            f"{summary['mean_absolute_error']:.2f} grades, {summary['within_one_grade']:.1%} within one grade"
        )
    return "Graded classes, " + "; ".join(parts) + " (arg-max calls)." if parts else ""
