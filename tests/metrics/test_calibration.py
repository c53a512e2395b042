"""Reliability diagram data, expected calibration error and temperature scaling: by hand and by scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import calibration as sk_calibration

from medimg.errors import ConfigError
from medimg.metrics import calibration
from medimg.metrics.clinical import Scored
from medimg.results import charts
from tests.metrics.test_clinical import binary, noisy_binary


def test_reliability_bins_agree_with_scikit_learn_and_ece_by_hand() -> None:
    scored = noisy_binary(500, 8)
    result = calibration.reliability(scored, bins=10)
    observed, predicted = sk_calibration.calibration_curve(
        scored.labels, scored.probs[:, 1], n_bins=10, strategy="uniform"
    )
    np.testing.assert_allclose(result["frequency"], observed)
    np.testing.assert_allclose(result["confidence"], predicted)
    assert sum(result["count"]) == 500
    # By hand. Bins are closed on the right: 0.1 (y 0) in [0, .1], 0.2 (y 1) in (.1, .2], 0.92 and 0.95 (y 1)
    # in (.9, 1].
    tiny = binary(np.array([0, 1, 1, 1]), np.array([0.1, 0.2, 0.92, 0.95]))
    small = calibration.reliability(tiny, bins=10)
    assert small["count"] == [1, 1, 2] and small["low"] == pytest.approx([0.0, 0.1, 0.9])
    # |0 - 0.1|, |1 - 0.2| and |1 - 0.935|, weighted by 1/4, 1/4 and 2/4.
    assert small["ece"] == pytest.approx(0.25 * 0.1 + 0.25 * 0.8 + 0.5 * 0.065)
    assert small["mce"] == pytest.approx(0.8)


def test_multi_class_reliability_is_top_label_confidence() -> None:
    labels = np.array([0, 1, 2, 2])
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    result = calibration.reliability(Scored(labels, probs, ["a", "b", "c"]), bins=5)
    # Confidences 0.7 ✓, 0.5 ✗, 0.8 ✓, 0.4 ✓ → bins (.6, .8]: 0.7 and 0.8, both right; (.4, .6]: 0.5, wrong;
    # (.2, .4]: 0.4, right.
    assert result["kind"] == "top-label confidence vs accuracy"
    assert result["confidence"] == pytest.approx([0.4, 0.5, 0.75]) and result["frequency"] == [1.0, 0.0, 1.0]
    assert result["ece"] == pytest.approx((0.6 + 0.5 + 2 * 0.25) / 4)


def overconfident(count: int, temperature: float, seed: int) -> Scored:
    """Labels drawn from true probabilities; the model reports them sharpened by `temperature`."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(0, 1.5, count)
    labels = (rng.random(count) < 1 / (1 + np.exp(-true_logit))).astype(int)
    return binary(labels, 1 / (1 + np.exp(-temperature * true_logit)))


def test_temperature_scaling_recovers_the_overconfidence_and_lowers_ece() -> None:
    val, test = overconfident(3000, 3.0, seed=0), overconfident(3000, 3.0, seed=1)
    temperature = calibration.fit_temperature(val.labels, val.probs)
    assert temperature == pytest.approx(3.0, rel=0.15)
    grid = np.linspace(0.5, 6, 1101)
    nll = [calibration.negative_log_likelihood(val.labels, val.probs, t) for t in grid]
    assert temperature == pytest.approx(grid[int(np.argmin(nll))], abs=0.01)
    summary = calibration.calibration_summary(test, val)
    assert summary["temperature"] == pytest.approx(temperature)
    assert summary["after"]["ece"] < summary["before"]["ece"] / 2
    assert summary["test_nll_after"] < summary["test_nll_before"]
    scaled = calibration.apply_temperature(test.probs, temperature)
    assert (np.argsort(scaled[:, 1]) == np.argsort(test.probs[:, 1])).all()  # ranks, hence AUC, unchanged
    np.testing.assert_allclose(calibration.apply_temperature(test.probs, 1.0), test.probs, atol=1e-6)
    # For a sigmoid model it is the binary logit divided by T (away from the 1e-7 clip that guards log(0)).
    inside = (test.probs[:, 1] > 1e-6) & (test.probs[:, 1] < 1 - 1e-6)
    logit = np.log(test.probs[inside, 1] / test.probs[inside, 0])
    np.testing.assert_allclose(scaled[inside, 1], 1 / (1 + np.exp(-logit / temperature)))
    assert calibration.calibration_summary(test, None)["after"] is None
    with pytest.raises(ConfigError, match="temperature must be positive"):
        calibration.apply_temperature(test.probs, 0.0)


def test_reliability_figure_before_and_after() -> None:
    val, test = overconfident(500, 3.0, seed=2), overconfident(500, 3.0, seed=3)
    summary = calibration.calibration_summary(test, val)
    fig = charts.reliability_figure(summary["before"], summary["after"])
    names = [trace.name for trace in fig.data]
    assert names[0] == "perfectly calibrated"
    assert names[1] == f"before (ECE {summary['before']['ece']:.3f})"
    assert names[2] == f"after temperature scaling (ECE {summary['after']['ece']:.3f})"
    assert (
        list(fig.data[1].x) == summary["before"]["confidence"]
        and list(fig.data[1].customdata) == summary["before"]["count"]
    )
    assert len(charts.reliability_figure(summary["before"]).data) == 2


def backwards(count: int, seed: int) -> Scored:
    """Scores that rank the classes backwards: the likelihood wants T → ∞, so a fit stops at the upper bound."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    return binary(labels, np.where(labels == 1, 0.2, 0.8) + rng.uniform(-0.05, 0.05, count))


def test_a_temperature_at_its_bound_is_a_warning_not_a_success() -> None:
    # Fitted at 20, every scaled probability sits near 0.5: on a balanced test split with the same backward scores
    # the ECE falls, but it then only restates the class balance.
    summary = calibration.calibration_summary(backwards(200, 1), backwards(200, 0))
    assert summary["temperature"] == pytest.approx(calibration.TEMPERATURE_RANGE[1], rel=1e-3)
    assert summary["after"]["ece"] < summary["before"]["ece"]
    assert summary["warning"].startswith("Temperature scaling did not calibrate this model: the fitted temperature")
    assert "at the bound of its range 0.05–20" in summary["warning"]
    assert "after scaling 90% of the test probabilities lie between" in summary["warning"]
    assert "near-constant probabilities match the class balance" in summary["warning"]


def test_a_temperature_at_its_lower_bound_is_said_to_push_probabilities_to_0_or_1() -> None:
    """The review's case: at T = 0.05 the warning said the probabilities "match the class balance"; they were all
    pushed to 1.0 on a test split the model called entirely right."""
    labels = np.array([0, 1] * 50)
    right = binary(labels, np.where(labels == 1, 0.7, 0.3))  # every image right, every probability modest
    warning = calibration.temperature_warning(
        0.05, Scored(right.labels, calibration.apply_temperature(right.probs, 0.05), right.class_names), None
    )
    assert warning is not None and "at the bound of its range 0.05–20" in warning
    assert "probabilities pushed to 0 or 1 match a near-perfect accuracy" in warning
    assert "class balance" not in warning


def test_a_temperature_at_its_bound_that_also_worsens_test_says_both() -> None:
    summary = calibration.calibration_summary(noisy_binary(200, 3), backwards(200, 0))
    scaled = calibration.apply_temperature(noisy_binary(200, 3).probs, summary["temperature"])[:, 1]
    assert np.subtract(*np.percentile(scaled, [95, 5])) < calibration.UNINFORMATIVE_SPREAD
    before, after = summary["before"], summary["after"]
    assert after["ece"] > before["ece"]
    assert summary["warning"].startswith(
        f"Temperature scaling fitted on validation (T = {summary['temperature']:.3f}) did not help on test: the "
        f"expected calibration error (ECE) rose from {before['ece']:.3f} to {after['ece']:.3f}"
    )
    assert (
        "The fit failed: the fitted temperature T = 20 is at the bound of its range 0.05–20; after scaling"
        in (summary["warning"])
    )


def test_a_temperature_that_worsens_test_calibration_is_a_warning() -> None:
    # Validation over-confident (sharpened by 3), test calibrated: T ≈ 3 fitted on validation softens test
    # probabilities that needed nothing, and both calibration errors on test rise.
    val, test = overconfident(3000, 3.0, seed=0), overconfident(3000, 1.0, seed=1)
    summary = calibration.calibration_summary(test, val)
    assert summary["temperature"] == pytest.approx(calibration.fit_temperature(val.labels, val.probs))  # on val
    before, after = summary["before"], summary["after"]
    assert after["ece"] > before["ece"] + 0.05 and after["mce"] > before["mce"]
    assert summary["warning"] == (
        f"Temperature scaling fitted on validation (T = {summary['temperature']:.3f}) did not help on test: the "
        f"expected calibration error (ECE) rose from {before['ece']:.3f} to {after['ece']:.3f}, and the maximum "
        f"calibration error rose from {before['mce']:.3f} to {after['mce']:.3f}. The unscaled probabilities "
        "(before) are the better-calibrated ones here."
    )


def test_no_gain_at_the_digits_shown_is_said_and_a_real_gain_is_not_warned() -> None:
    def errors(ece: float, mce: float) -> calibration.Reliability:
        return calibration.Reliability(
            kind="", bins=10, low=[], high=[], confidence=[], frequency=[], count=[], ece=ece, mce=mce
        )

    # 0.0600 → 0.0603 prints as 0.060 → 0.060: no gain, and nothing rose that shows.
    assert calibration.no_gain_warning(0.9, errors(0.0600, 0.2), errors(0.0603, 0.1)) == (
        "Temperature scaling fitted on validation (T = 0.900) did not help on test: the expected calibration error "
        "(ECE) stayed at 0.060. The unscaled probabilities (before) are as well calibrated, so use them."
    )
    assert calibration.no_gain_warning(0.9, errors(0.0600, 0.2), errors(0.0590, 0.3)) is None  # ECE fell
    assert calibration.no_gain_warning(0.9, errors(0.0600, 0.2), None) is None  # nothing fitted


def test_a_useful_temperature_has_no_warning() -> None:
    val, test = noisy_binary(400, 1), noisy_binary(400, 2)
    summary = calibration.calibration_summary(test, val)
    low, high = calibration.TEMPERATURE_RANGE
    assert low * 1.01 < summary["temperature"] < high * 0.99
    assert summary["warning"] is None


def test_a_lower_ece_with_a_worse_test_likelihood_is_said_to_be_no_clear_gain() -> None:
    """The review's case: ECE 0.072 → 0.062 was shown as a gain while the test log-likelihood rose 0.338 → 0.349."""
    assert calibration.likelihood_warning(1.3, 0.338, 0.349) == (
        "Temperature scaling fitted on validation (T = 1.300) did not clearly help on test: the expected calibration "
        "error fell, but the negative log-likelihood rose from 0.338 to 0.349. The unscaled probabilities (before) "
        "are as good to use."
    )
    assert calibration.likelihood_warning(1.3, 0.338, 0.338 + calibration.NLL_TOLERANCE) is None  # not a loss
    assert calibration.likelihood_warning(1.3, 0.338, 0.300) is None  # a gain
    # A useful temperature lowers the test likelihood too, and gets no warning (`calibration_summary`).
    summary = calibration.calibration_summary(noisy_binary(400, 2), noisy_binary(400, 1))
    assert summary["test_nll_after"] <= summary["test_nll_before"] and summary["warning"] is None
