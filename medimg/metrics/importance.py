"""Which hyperparameters mattered in a search: the mean decrease in impurity of a random forest fitted to the
completed trials' objective values (what optuna's `MeanDecreaseImpurityImportanceEvaluator` computes, a cheaper
relative of fANOVA, Hutter et al. 2014), with scikit-learn's `RandomForestRegressor`."""

from __future__ import annotations

from typing import Any

import numpy as np

MIN_TRIALS = 8  # below this a forest over a handful of points ranks noise; the page says so instead


def hyperparameter_importance(trials: list[Any], seed: int = 0) -> list[tuple[str, float]]:
    """(hyperparameter, share) pairs, shares summing to 1, largest first; [] below `MIN_TRIALS` completed trials,
    when no hyperparameter varies, or when every trial scored the same.

    `trials`: rows of `tuning.trial_table` (a "score" and a "hyperparameters" mapping); pass completed trials only.
    Numbers are used as they are (a forest's splits ignore monotone transforms such as log10), other values as
    category codes."""
    from sklearn.ensemble import RandomForestRegressor

    done = [t for t in trials if t.get("score") is not None]
    names = sorted({k for t in done for k in t["hyperparameters"]})
    # A name some trials lack (declared after they ran, or conditional on another choice) varies only if the trials
    # that have it differ: its absence is not a value of its own.
    names = [n for n in names if len({repr(t["hyperparameters"][n]) for t in done if n in t["hyperparameters"]}) > 1]
    scores = np.array([float(t["score"]) for t in done])
    if len(done) < MIN_TRIALS or not names or np.ptp(scores) == 0:
        return []
    columns = []
    for name in names:
        values = [t["hyperparameters"].get(name) for t in done]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            columns.append(np.array(values, dtype=float))
        else:
            codes = sorted({repr(v) for v in values})
            columns.append(np.array([codes.index(repr(v)) for v in values], dtype=float))
    forest = RandomForestRegressor(n_estimators=128, min_samples_leaf=2, random_state=seed)
    forest.fit(np.column_stack(columns), scores)
    shares = forest.feature_importances_
    if not shares.sum() > 0:
        return []
    return sorted(zip(names, (float(s) for s in shares / shares.sum()), strict=True), key=lambda item: -item[1])


def missing_reason(trials: list[Any], objective: str) -> str:
    """Why `hyperparameter_importance` of these completed trials is empty, as a sentence for the page ("" when it
    is not). `objective`: the objective's name, e.g. "val_auc"."""
    done = [t for t in trials if t.get("score") is not None]
    if len(done) < MIN_TRIALS:
        return f"Hyperparameter importance appears from {MIN_TRIALS} completed trials ({len(done)} so far)."
    if hyperparameter_importance(done):
        return ""
    scores = {float(t["score"]) for t in done}
    if len(scores) == 1:
        return (
            f"No hyperparameter importance: all {len(done)} completed trials scored {objective} = "
            f"{scores.pop():.4f}, so nothing tells their settings apart."
        )
    varied = {k for t in done for k in t["hyperparameters"]}
    if not any(len({repr(t["hyperparameters"].get(k)) for t in done if k in t["hyperparameters"]}) > 1 for k in varied):
        return f"No hyperparameter importance: the {len(done)} completed trials share every searched setting."
    return (
        f"No hyperparameter importance: the {len(done)} completed trials differ too little for the forest to tell "
        "their settings apart."
    )
