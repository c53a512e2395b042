"""Calibration: reliability diagram data, expected calibration error, temperature scaling fitted on validation.

A binary task is checked on its positive class's probability against the observed positive rate; a multi-class task
on the top-label confidence against the accuracy (Guo et al., 2017). Bins are equal-width on [0, 1] with
scikit-learn's `calibration_curve` edges, so the two agree bin for bin.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

import numpy as np

from medimg.datasets import datachecks
from medimg.errors import ConfigError
from medimg.metrics.clinical import Scored, positive_index

EPSILON = 1e-7
TEMPERATURE_RANGE = (0.05, 20.0)
# Scaled probabilities whose positive-class (or top-label) values lie, for the central 90 % of images, within this
# span tell a reader nothing per image: a temperature near the upper bound squeezes them all towards 1 / K.
UNINFORMATIVE_SPREAD = 0.1
CENTRAL = (5.0, 95.0)  # percentiles: a few images scored exactly 0 or 1 keep extreme logits at any temperature
# Half the last digit the page and the report show: a change smaller than this reads "0.060 → 0.060", no gain.
ERROR_TOLERANCE = 5e-4
# Nats per image: a rise in the test negative log-likelihood smaller than this is not called a loss (the fitted
# temperature moves it by thousandths when it barely differs from 1).
NLL_TOLERANCE = 5e-3


def _confidence_and_outcome(scored: Scored, positive: str | int | None) -> tuple[np.ndarray, np.ndarray, str]:
    if scored.binary:
        index = positive_index(scored.class_names, positive)
        kind = f"p({scored.class_names[index]}) vs observed rate"
        return scored.probs[:, index], (scored.labels == index).astype(float), kind
    predicted = scored.probs.argmax(axis=1)
    return scored.probs.max(axis=1), (predicted == scored.labels).astype(float), "top-label confidence vs accuracy"


def bin_indices(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each value: edges linspace(0, 1, bins + 1), each bin closed on the right (scikit-learn's rule)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.searchsorted(edges[1:-1], confidence)


class Reliability(TypedDict):
    """A reliability diagram's non-empty bins (edges `low`/`high`, mean `confidence`, observed `frequency`, case
    `count`) and its expected and maximum calibration errors, as fractions. `kind`: what the confidence is of."""

    kind: str
    bins: int
    low: list[float]
    high: list[float]
    confidence: list[float]
    frequency: list[float]
    count: list[int]
    ece: float
    mce: float


class CalibrationSummary(TypedDict):
    """Reliability on test before and after temperature scaling fitted on validation (`after` None and `skipped`
    saying why when no temperature could be fitted); ECE as fractions, NLL in nats per image."""

    before: Reliability
    temperature: float | None
    after: Reliability | None
    skipped: NotRequired[str]
    val_ece_before: NotRequired[float]
    val_ece_after: NotRequired[float]
    test_nll_before: NotRequired[float]
    test_nll_after: NotRequired[float]
    warning: NotRequired[str | None]


def reliability(scored: Scored, positive: str | int | None = None, bins: int = 10) -> Reliability:
    """Per non-empty bin: mean confidence, observed frequency, count; and the ECE and maximum gap over bins."""
    if bins < 2:
        raise ConfigError(f"a reliability diagram needs at least 2 bins; got {bins}.")
    confidence, outcome, kind = _confidence_and_outcome(scored, positive)
    index = bin_indices(confidence, bins)
    count = np.bincount(index, minlength=bins)
    filled = count > 0
    mean_confidence = np.bincount(index, weights=confidence, minlength=bins)[filled] / count[filled]
    frequency = np.bincount(index, weights=outcome, minlength=bins)[filled] / count[filled]
    gaps = np.abs(frequency - mean_confidence)
    edges = np.linspace(0.0, 1.0, bins + 1)
    return {
        "kind": kind,
        "bins": bins,
        "low": edges[:-1][filled].tolist(),
        "high": edges[1:][filled].tolist(),
        "confidence": mean_confidence.tolist(),
        "frequency": frequency.tolist(),
        "count": count[filled].tolist(),
        "ece": float(np.sum(count[filled] * gaps) / max(1, len(confidence))),
        "mce": float(gaps.max()) if len(gaps) else 0.0,
    }


def expected_calibration_error(scored: Scored, positive: str | int | None = None, bins: int = 10) -> float:
    """Σ over bins of (share of cases) × |observed frequency − mean confidence|."""
    return reliability(scored, positive, bins)["ece"]


def _logits(probs: np.ndarray) -> np.ndarray:
    # Log-probabilities are logits up to a per-row constant, which the softmax ignores; for a sigmoid model's
    # two columns (1 - p, p) this is the binary logit split in two.
    return np.log(np.clip(probs, EPSILON, 1.0))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T): T > 1 softens over-confident probabilities, T < 1 sharpens; ranks never change."""
    if not temperature > 0:
        raise ConfigError(f"temperature must be positive; got {temperature}.")
    scaled = _logits(probs) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def negative_log_likelihood(labels: np.ndarray, probs: np.ndarray, temperature: float = 1.0) -> float:
    scaled = apply_temperature(probs, temperature)
    return float(-np.mean(np.log(np.clip(scaled[np.arange(len(labels)), labels], EPSILON, 1.0))))


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of `labels` (fit on validation, never on test)."""
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels, dtype=int)
    if len(labels) == 0:
        raise ConfigError("temperature scaling needs validation predictions; the validation split is empty.")
    low, high = np.log(TEMPERATURE_RANGE)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(labels, probs, float(np.exp(log_t))),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(result.x))


def calibration_summary(
    test: Scored, val: Scored | None, positive: str | int | None = None, bins: int = 10
) -> CalibrationSummary:
    """Reliability on test before and after a temperature fitted on validation (after is None without val).

    `warning` (see `CalibrationSummary`): `no_gain_warning` when the scaling does not lower the test ECE, else
    `temperature_warning` when its fit should not be trusted, else None."""
    summary = CalibrationSummary(before=reliability(test, positive, bins), temperature=None, after=None)
    if val is None or len(val) == 0:
        summary["skipped"] = "no validation predictions to fit a temperature on"
        return summary
    reason = datachecks.one_class_reason({c: int(np.sum(val.labels == i)) for i, c in enumerate(val.class_names)})
    if reason:
        # One class only: the likelihood keeps improving as T pushes every image towards that class, so the
        # "fitted" temperature would say nothing about the model's calibration.
        summary["skipped"] = f"temperature scaling skipped: the validation split has one class ({reason})"
        return summary
    temperature = fit_temperature(val.labels, val.probs)
    scaled_test = Scored(test.labels, apply_temperature(test.probs, temperature), test.class_names, test.paths)
    scaled_val = Scored(val.labels, apply_temperature(val.probs, temperature), val.class_names, val.paths)
    summary.update(
        temperature=temperature,
        after=reliability(scaled_test, positive, bins),
        val_ece_before=expected_calibration_error(val, positive, bins),
        val_ece_after=expected_calibration_error(scaled_val, positive, bins),
        test_nll_before=negative_log_likelihood(test.labels, test.probs),
        test_nll_after=negative_log_likelihood(test.labels, test.probs, temperature),
    )
    no_gain = no_gain_warning(temperature, summary["before"], summary["after"]) or likelihood_warning(
        temperature, summary["test_nll_before"], summary["test_nll_after"]
    )
    if no_gain:
        # Worse (or no better) on test is the verdict; a failed fit is then the reason, not a caution about a lower
        # ECE, which `temperature_warning`'s wording assumes.
        failures = fit_failures(temperature, scaled_test, positive)
        summary["warning"] = no_gain + (f" The fit failed: {'; '.join(failures)}." if failures else "")
    else:
        summary["warning"] = temperature_warning(temperature, scaled_test, positive)
    return summary


def no_gain_warning(temperature: float, before: Reliability, after: Reliability | None) -> str | None:
    """A warning when temperature scaling (fitted on validation) does not lower the test ECE, else None.

    Args:
        temperature: the temperature fitted on validation.
        before, after: `reliability` of the test probabilities without and with it.

    Returns:
        None when the test ECE fell by more than `ERROR_TOLERANCE`; otherwise a sentence with both ECEs, whether
        the maximum calibration error (MCE) rose as well, and that the unscaled probabilities are the ones to use.
        The temperature stays fitted on validation: refitting it on test would only hide the failure.
    """
    if after is None or after["ece"] < before["ece"] - ERROR_TOLERANCE:
        return None
    rose = after["ece"] > before["ece"] + ERROR_TOLERANCE
    change = (
        f"the expected calibration error (ECE) rose from {before['ece']:.3f} to {after['ece']:.3f}"
        if rose
        else f"the expected calibration error (ECE) stayed at {before['ece']:.3f}"
    )
    if after["mce"] > before["mce"] + ERROR_TOLERANCE:
        change += f", and the maximum calibration error rose from {before['mce']:.3f} to {after['mce']:.3f}"
    verdict = (
        "the unscaled probabilities (before) are the better-calibrated ones here"
        if rose
        else "the unscaled probabilities (before) are as well calibrated, so use them"
    )
    return (
        f"Temperature scaling fitted on validation (T = {temperature:.3f}) did not help on test: {change}. "
        f"{verdict[0].upper()}{verdict[1:]}."
    )


def likelihood_warning(temperature: float, nll_before: float, nll_after: float) -> str | None:
    """A warning when temperature scaling lowered the test ECE but raised the test negative log-likelihood (the
    measure the temperature was fitted to lower, Guo et al. 2017) by more than `NLL_TOLERANCE`, else None.
    Seen: ECE 0.072 → 0.062 shown as a gain while the log-likelihood on test got worse, 0.338 → 0.349; a
    10-bin ECE on a small test split can move either way by chance, so the two disagreeing is no gain."""
    if nll_after <= nll_before + NLL_TOLERANCE:
        return None
    return (
        f"Temperature scaling fitted on validation (T = {temperature:.3f}) did not clearly help on test: the "
        f"expected calibration error fell, but the negative log-likelihood rose from {nll_before:.3f} to "
        f"{nll_after:.3f}. The unscaled probabilities (before) are as good to use."
    )


def fit_failures(temperature: float, scaled_test: Scored, positive: str | int | None = None) -> list[str]:
    """Why a fitted temperature should not be trusted, one clause per reason ([] when none; see
    `temperature_warning`)."""
    low, high = TEMPERATURE_RANGE
    reasons = []
    if temperature >= high * 0.99 or temperature <= low * 1.01:
        reasons.append(f"the fitted temperature T = {temperature:.3g} is at the bound of its range {low:g}–{high:g}")
    confidence, _, _ = _confidence_and_outcome(scaled_test, positive)
    if len(confidence):
        low_p, high_p = np.percentile(confidence, CENTRAL)
        if high_p - low_p < UNINFORMATIVE_SPREAD:
            reasons.append(f"after scaling 90% of the test probabilities lie between {low_p:.3f} and {high_p:.3f}")
    return reasons


def temperature_warning(temperature: float, scaled_test: Scored, positive: str | int | None = None) -> str | None:
    """Why a fitted temperature should not be read as a calibration success, or None.

    Two failures look like a lower ECE but are not: the fit stopped at a bound of `TEMPERATURE_RANGE` (the
    likelihood wanted a larger or smaller T than allowed), or the central 90 % of the scaled test probabilities sit
    within `UNINFORMATIVE_SPREAD` of each other (T so large every image gets about 1 / K, so ECE is small by
    construction: it then measures the class balance, not the model)."""
    reasons = fit_failures(temperature, scaled_test, positive)
    if not reasons:
        return None
    # A small T pushes every probability to 0 or 1 (seen at T = 0.05 on a set the model calls all right), a large
    # one towards 1 / K: the lower ECE then measures the accuracy or the class balance, not the model.
    meaning = (
        "probabilities pushed to 0 or 1 match a near-perfect accuracy"
        if temperature < 1
        else "near-constant probabilities match the class balance"
    )
    return (
        "Temperature scaling did not calibrate this model: "
        + "; ".join(reasons)
        + f". The lower ECE after scaling says only that {meaning}; the model's own probabilities (before) are the "
        "ones to judge."
    )
