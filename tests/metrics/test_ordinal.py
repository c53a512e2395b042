"""Ordinal figures for graded classes: quadratic weighted kappa, mean absolute error in grades, within one grade."""

from __future__ import annotations

import numpy as np
import pytest

from medimg.metrics import ordinal


def one_hot(calls: list[int], k: int) -> np.ndarray:
    return np.eye(k)[calls]


def test_kappa_by_hand_and_the_other_figures() -> None:
    # Cohen (1968), weights (i - j)^2 / (K - 1)^2: observed disagreement 1/4, expected 5/4 with these margins.
    summary = ordinal.ordinal_summary(np.array([0, 1, 2]), one_hot([0, 2, 2], 3))
    assert summary["quadratic_weighted_kappa"] == pytest.approx(0.8)
    assert summary["mean_absolute_error"] == pytest.approx(1 / 3)
    assert summary["within_one_grade"] == 1.0 and summary["count"] == 3


def test_a_distant_miss_costs_more_than_a_near_one() -> None:
    truth = np.array([0, 0, 1, 2, 3, 4, 4, 2])
    near = ordinal.ordinal_summary(truth, one_hot([1, 0, 1, 2, 3, 4, 4, 2], 5))  # grade 0 called 1
    far = ordinal.ordinal_summary(truth, one_hot([4, 0, 1, 2, 3, 4, 4, 2], 5))  # grade 0 called 4
    assert near["quadratic_weighted_kappa"] > far["quadratic_weighted_kappa"]
    assert near["mean_absolute_error"] < far["mean_absolute_error"]
    assert (near["within_one_grade"], far["within_one_grade"]) == (1.0, 7 / 8)


def test_every_image_one_grade_has_no_kappa_and_bad_shapes_are_refused() -> None:
    assert ordinal.ordinal_summary(np.array([2, 2]), one_hot([2, 2], 3))["quadratic_weighted_kappa"] is None
    with pytest.raises(ValueError, match="N×K probabilities"):
        ordinal.ordinal_summary(np.array([0, 1]), np.ones((3, 3)))


@pytest.mark.parametrize(
    ("names", "graded"),
    [
        (["0_no_dr", "1_mild", "2_moderate", "3_severe", "4_proliferative_dr"], True),
        (["1", "2", "3"], True),
        (["0_a", "2_b", "3_c"], False),  # a gap: not consecutive
        (["NORMAL", "PNEUMONIA"], False),
        (["0_no", "1_yes"], False),  # two classes: no order to use
        (["adipose", "background", "debris"], False),
    ],
)
def test_numbered_grades(names: list[str], graded: bool) -> None:
    assert ordinal.numbered_grades(names) is graded
