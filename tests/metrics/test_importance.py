"""Hyperparameter importance from completed trials: the parameter that drives the objective ranks first."""

from __future__ import annotations

import numpy as np
import pytest

from medimg.metrics.importance import MIN_TRIALS, hyperparameter_importance, missing_reason


def trials(count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for number in range(1, count + 1):
        rate = float(10 ** rng.uniform(-4, -2))
        activation = str(rng.choice(["relu", "gelu"]))
        dropout = float(rng.uniform(0, 0.5))
        # The objective follows the learning rate; activation and dropout are noise.
        score = 0.9 - 0.1 * abs(np.log10(rate) + 3) + rng.normal(0, 0.005)
        rows.append(
            {
                "trial": number,
                "status": "COMPLETED",
                "score": score,
                "hyperparameters": {"learning_rate": rate, "activation": activation, "dropout": dropout, "filters": 32},
            }
        )
    return rows


def test_the_parameter_that_drives_the_objective_ranks_first() -> None:
    ranked = hyperparameter_importance(trials(30))
    assert ranked[0][0] == "learning_rate"
    assert {name for name, _ in ranked} == {"learning_rate", "activation", "dropout"}  # "filters" never varied
    assert sum(share for _, share in ranked) == pytest.approx(1.0)
    assert ranked[0][1] > 0.5


def test_too_few_or_uninformative_trials_give_nothing() -> None:
    assert hyperparameter_importance(trials(MIN_TRIALS - 1)) == []
    flat = [{**row, "score": 0.8} for row in trials(20)]
    assert hyperparameter_importance(flat) == []
    unfinished = [{**row, "score": None} for row in trials(20)]
    assert hyperparameter_importance(unfinished) == []


def test_a_hyperparameter_older_trials_lack_does_not_vary_by_its_absence() -> None:
    # A search resumed across a release that declared a new fixed hyperparameter: half its trials lack it.
    rows = trials(30)
    for row in rows[15:]:
        row["hyperparameters"]["soft_labels"] = "none"
    assert "soft_labels" not in {name for name, _ in hyperparameter_importance(rows)}
    rows[-1]["hyperparameters"]["soft_labels"] = "ordinal"  # two values among the trials that have it: it varies
    assert "soft_labels" in {name for name, _ in hyperparameter_importance(rows)}


def test_the_page_is_told_why_there_is_no_importance() -> None:
    assert missing_reason(trials(3), "val_auc") == (
        f"Hyperparameter importance appears from {MIN_TRIALS} completed trials (3 so far)."
    )
    assert missing_reason(trials(30), "val_auc") == ""
    # Eleven trials that all reached 1.0 (a field run on an easy set): "from 8 (11 so far)" was shown before.
    perfect = [{**row, "score": 1.0} for row in trials(11)]
    assert missing_reason(perfect, "val_auc") == (
        "No hyperparameter importance: all 11 completed trials scored val_auc = 1.0000, so nothing tells their "
        "settings apart."
    )
    # One trial of eight differs in one setting and the scores vary: the forest finds no split, and the reason must
    # not claim that nothing varied.
    one_off = [{**row, "hyperparameters": {"filters": 64 if i == 0 else 32}} for i, row in enumerate(trials(8))]
    assert missing_reason(one_off, "val_auc") == (
        "No hyperparameter importance: the 8 completed trials differ too little for the forest to tell their "
        "settings apart."
    )
    same = [{**row, "hyperparameters": {"filters": 32}} for row in trials(11)]
    assert missing_reason(same, "val_auc") == (
        "No hyperparameter importance: the 11 completed trials share every searched setting."
    )
