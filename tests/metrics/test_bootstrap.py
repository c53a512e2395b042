"""Vectorised stratified bootstrap: resamples checked one by one against scikit-learn, intervals, seed, timing."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn import metrics as sk

from medimg.errors import ConfigError
from medimg.metrics import bootstrap, clinical
from medimg.metrics.clinical import Scored
from tests.metrics.test_clinical import noisy_binary


def test_stratified_weights_keep_each_class_count_and_are_seeded() -> None:
    labels = np.array([0] * 7 + [1] * 3 + [2] * 5)
    weights = bootstrap.stratified_weights(labels, 500, seed=3)
    assert weights.shape == (500, 15)
    for value, count in ((0, 7), (1, 3), (2, 5)):
        assert (weights[:, labels == value].sum(axis=1) == count).all()
    np.testing.assert_array_equal(weights, bootstrap.stratified_weights(labels, 500, seed=3))
    assert not np.array_equal(weights, bootstrap.stratified_weights(labels, 500, seed=4))
    # Each case is drawn with probability 1/class size: on average once per resample.
    assert weights.mean(axis=0) == pytest.approx(np.ones(15), abs=0.15)


def test_weighted_auc_equals_scikit_learn_on_the_explicit_resamples() -> None:
    scored = noisy_binary(200, 1, ties=True)  # rounded scores: many ties, counted half
    positive = scored.labels == 1
    weights = bootstrap.stratified_weights(scored.labels, 20, seed=0)
    aucs = bootstrap.weighted_auc(weights, positive, scored.probs[:, 1])
    for row, auc in zip(weights, aucs, strict=True):
        cases = np.repeat(np.arange(len(scored)), row)
        assert auc == pytest.approx(sk.roc_auc_score(positive[cases], scored.probs[cases, 1]), abs=1e-12)


def test_every_binary_replicate_equals_scikit_learn_on_its_resample() -> None:
    scored = noisy_binary(150, 2)
    weights = bootstrap.stratified_weights(scored.labels, 5, seed=9)
    values = bootstrap.replicates(scored, weights, threshold=0.45)
    for b, row in enumerate(weights):
        cases = np.repeat(np.arange(len(scored)), row)
        truth, called = scored.labels[cases], (scored.probs[cases, 1] >= 0.45).astype(int)
        tn, fp, fn, _ = sk.confusion_matrix(truth, called).ravel()
        assert values["sensitivity"][b] == pytest.approx(sk.recall_score(truth, called))
        assert values["specificity"][b] == pytest.approx(tn / (tn + fp))
        assert values["ppv"][b] == pytest.approx(sk.precision_score(truth, called))
        assert values["npv"][b] == pytest.approx(tn / (tn + fn))
        assert values["f1"][b] == pytest.approx(sk.f1_score(truth, called))
        assert values["accuracy"][b] == pytest.approx(sk.accuracy_score(truth, called))
        assert values["auc"][b] == pytest.approx(sk.roc_auc_score(truth, scored.probs[cases, 1]))


def test_bootstrap_intervals_estimates_coverage_and_seed() -> None:
    scored = noisy_binary(400, 3)
    result = bootstrap.bootstrap_intervals(scored, 0.5, n_resamples=1000, seed=5)
    assert (result["resamples"], result["seed"], result["confidence"]) == (1000, 5, 0.95)
    point = clinical.operating_point(scored, 0.5)
    metrics = result["metrics"]
    assert metrics["auc"]["estimate"] == pytest.approx(sk.roc_auc_score(scored.labels, scored.probs[:, 1]))
    assert metrics["sensitivity"]["estimate"] == pytest.approx(point.sensitivity)
    assert metrics["npv"]["estimate"] == pytest.approx(point.npv)
    for value in metrics.values():
        assert value["low"] <= value["estimate"] <= value["high"]
    # The sensitivity interval is about a binomial proportion's: ±1.96·sqrt(p(1-p)/n_positives).
    positives = int(scored.labels.sum())
    half_width = 1.96 * np.sqrt(point.sensitivity * (1 - point.sensitivity) / positives)
    width = metrics["sensitivity"]["high"] - metrics["sensitivity"]["low"]
    assert width == pytest.approx(2 * half_width, rel=0.25)
    assert bootstrap.bootstrap_intervals(scored, 0.5, n_resamples=1000, seed=5) == result
    assert bootstrap.bootstrap_intervals(scored, 0.5, n_resamples=1000, seed=6) != result
    # Ten times the cases: intervals about sqrt(10) ≈ 3.2 times narrower.
    larger = bootstrap.bootstrap_intervals(noisy_binary(4000, 3), 0.5, n_resamples=1000)["metrics"]["auc"]
    assert (larger["high"] - larger["low"]) < (metrics["auc"]["high"] - metrics["auc"]["low"]) / 2
    with pytest.raises(ConfigError, match="at least 100 resamples"):
        bootstrap.bootstrap_intervals(scored, n_resamples=10)


def test_multi_class_estimates_equal_scikit_learn() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 300)
    probs = rng.dirichlet([1, 1, 1], 300)
    probs[np.arange(300), labels] += 0.4
    probs /= probs.sum(axis=1, keepdims=True)
    scored = Scored(labels, probs, ["a", "b", "c"])
    metrics = bootstrap.bootstrap_intervals(scored, n_resamples=200)["metrics"]
    predicted = probs.argmax(axis=1)
    assert metrics["auc"]["estimate"] == pytest.approx(sk.roc_auc_score(labels, probs, multi_class="ovr"))
    assert metrics["accuracy"]["estimate"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert metrics["balanced_accuracy"]["estimate"] == pytest.approx(sk.balanced_accuracy_score(labels, predicted))
    recalls = sk.recall_score(labels, predicted, average=None)
    matrix = sk.confusion_matrix(labels, predicted)
    for k, name in enumerate("abc"):
        assert metrics[f"sensitivity:{name}"]["estimate"] == pytest.approx(recalls[k])
        negatives = matrix.sum() - matrix[k].sum()
        assert metrics[f"specificity:{name}"]["estimate"] == pytest.approx(
            (negatives - (matrix[:, k].sum() - matrix[k, k])) / negatives
        )
        assert metrics[f"sensitivity:{name}"]["low"] < recalls[k] < metrics[f"sensitivity:{name}"]["high"]


def naive_bootstrap(scored: Scored, weights: np.ndarray, threshold: float) -> list[tuple[float, ...]]:
    """The loop a vectorised bootstrap replaces: resample explicitly, score with scikit-learn."""
    rows = []
    for row in weights:
        cases = np.repeat(np.arange(len(scored)), row)
        truth, scores = scored.labels[cases], scored.probs[cases, 1]
        called = (scores >= threshold).astype(int)
        rows.append(
            (
                sk.roc_auc_score(truth, scores),
                sk.recall_score(truth, called),
                sk.recall_score(1 - truth, 1 - called),
                sk.accuracy_score(truth, called),
            )
        )
    return rows


def test_bootstrap_of_1000_images_is_vectorised(capsys: pytest.CaptureFixture) -> None:
    """1,000 test images, 1,000 and 2,000 resamples. Timed against the scikit-learn loop it replaces, as a ratio."""
    scored = noisy_binary(1000, 11)
    bootstrap.bootstrap_intervals(scored, n_resamples=100)  # warm-up (imports, allocator)
    started = time.perf_counter()
    bootstrap.bootstrap_intervals(scored, 0.5, n_resamples=1000, seed=0)
    vectorised_1000 = time.perf_counter() - started
    started = time.perf_counter()
    bootstrap.bootstrap_intervals(scored, 0.5, n_resamples=2000, seed=0)
    vectorised_2000 = time.perf_counter() - started
    weights = bootstrap.stratified_weights(scored.labels, 40, seed=1)
    started = time.perf_counter()
    loop = naive_bootstrap(scored, weights, 0.5)
    loop_per_resample = (time.perf_counter() - started) / len(weights)
    # Same numbers as the loop, resample by resample.
    fast = bootstrap.replicates(scored, weights, 0.5)
    expected = np.array(loop)
    np.testing.assert_allclose(fast["auc"], expected[:, 0], atol=1e-12)
    np.testing.assert_allclose(fast["sensitivity"], expected[:, 1], atol=1e-12)
    np.testing.assert_allclose(fast["specificity"], expected[:, 2], atol=1e-12)
    np.testing.assert_allclose(fast["accuracy"], expected[:, 3], atol=1e-12)
    speedup = loop_per_resample / (vectorised_1000 / 1000)
    with capsys.disabled():
        print(
            f"\n[bootstrap timing] 1,000 images: 1,000 resamples {vectorised_1000:.3f} s, 2,000 resamples "
            f"{vectorised_2000:.3f} s; scikit-learn loop {loop_per_resample * 1000:.2f} ms per resample "
            f"(≈{loop_per_resample * 1000:.1f} s for 1,000); speed-up ×{speedup:.0f}"
        )
    assert speedup > 10, "the bootstrap is not vectorised"
    assert vectorised_1000 < 10.0  # a loose ceiling for slow CI machines; the brief's target is under a second


def test_a_collapsed_proportion_interval_becomes_wilson_and_other_collapses_are_said() -> None:
    """4 of 4 positives and 15 of 15 negatives called right: every stratified resample gives 1.000, which the page
    showed as a 95% CI of 1.000-1.000."""
    from scipy.stats import binomtest

    labels = np.array([0] * 15 + [1] * 4)
    p = np.r_[np.linspace(0.0, 0.4, 15), [0.9, 0.8, 0.95, 0.7]]
    scored = Scored(labels, np.stack([1 - p, p], axis=1), ["NORMAL", "PNEUMONIA"], [str(i) for i in range(19)])
    found = bootstrap.bootstrap_intervals(scored, 0.5, "PNEUMONIA", n_resamples=200)["metrics"]
    wilson = binomtest(4, 4).proportion_ci(confidence_level=0.95, method="wilson")
    assert found["sensitivity"]["low"] == pytest.approx(wilson.low) and found["sensitivity"]["high"] == 1.0
    assert found["sensitivity"]["interval"] == "Wilson (4/4)" and found["specificity"]["interval"] == "Wilson (15/15)"
    assert found["auc"]["low"] == found["auc"]["high"] == 1.0
    assert found["auc"]["interval"].startswith("collapsed: every resample gave the same value")
    wide = bootstrap.bootstrap_intervals(noisy_binary(200, 0), 0.5, n_resamples=200)["metrics"]
    assert not any("interval" in value for value in wide.values())  # a real spread keeps the percentile interval


def test_an_interval_reads_the_same_on_the_page_and_in_the_report() -> None:
    from medimg.metrics.bootstrap import interval_text

    value = {"estimate": 0.83333, "low": 0.71428, "high": 0.95238}
    assert interval_text(value) == "0.833 (0.714–0.952)" and interval_text(value, False) == "0.714–0.952"
    assert interval_text({"estimate": 0.5, "low": None, "high": None}) == "0.500"
    assert interval_text({"estimate": None, "low": None, "high": None}) == "–"


def test_a_class_never_called_has_its_degenerate_intervals_said(never_calling_run) -> None:
    """RetinaMNIST's grade 4 read "Sensitivity 0.000, 0.000–0.000" and "Specificity 1.000, 1.000–1.000" with an
    empty note, as if those were precise figures."""
    from medimg.results import evaluation

    test = evaluation.load_scored(never_calling_run)["test"]
    found = bootstrap.bootstrap_intervals(test, n_resamples=200)["metrics"]
    sensitivity, specificity = found["sensitivity:VIRUS"], found["specificity:VIRUS"]
    assert sensitivity["estimate"] == sensitivity["low"] == sensitivity["high"] == 0.0
    assert specificity["estimate"] == specificity["low"] == specificity["high"] == 1.0
    assert sensitivity["interval"] == "never predicted: 0 by construction; the interval is degenerate, not precise"
    assert specificity["interval"] == "never predicted: 1 by construction; the interval is degenerate, not precise"
    called = [found[f"{metric}:{name}"] for metric in ("sensitivity", "specificity") for name in ("BACTERIA", "NORMAL")]
    assert not any(value.get("interval", "").startswith("never predicted") for value in called)
