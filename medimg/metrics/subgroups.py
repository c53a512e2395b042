"""Metrics per subgroup: the values of an extra manifest column (site, sex, device), each with bootstrap intervals."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from medimg.metrics.bootstrap import bootstrap_intervals
from medimg.metrics.clinical import Scored, positive_index


def manifest_attributes(path: str | Path, max_values: int = 20) -> dict[str, dict[str, str]]:
    """Extra manifest columns usable as subgroups (2..max_values distinct values): column → {image path: value}.

    Paths are resolved as the dataset loader resolves them (relative to the manifest's folder), so they match the
    paths in a run's predictions. A folder dataset has no manifest and gives {}. A column that follows the label
    (one value per class, e.g. a `label_index`) is left out: its subgroups would be the classes again
    (`manifest_columns` names such columns).
    """
    return manifest_columns(path, max_values)[0]


def manifest_columns(path: str | Path, max_values: int = 20) -> tuple[dict[str, dict[str, str]], list[str]]:
    """(`manifest_attributes`' answer, the columns it leaves out because each class has a single value in them),
    from one read of the manifest: per-subgroup metrics of such a column would be per-class figures, with no AUC
    (one class per subgroup)."""
    path = Path(path)
    if not (path.is_file() and path.suffix.lower() == ".csv"):
        return {}, []
    with path.open(newline="", encoding="utf-8-sig") as stream:
        rows = list(csv.DictReader(stream))
    if not rows:
        return {}, []
    found, proxies = {}, []
    for column in rows[0]:
        if column is None or column.strip().lower() in ("path", "label", "group", "split"):
            continue
        values = {str(path.parent / (row.get("path") or "").strip()): (row.get(column) or "").strip() for row in rows}
        distinct = {v for v in values.values() if v}
        if not 2 <= len(distinct) <= max_values:
            continue
        per_label: dict[str, set[str]] = {}
        for row in rows:
            value = (row.get(column) or "").strip()
            if value:
                per_label.setdefault((row.get("label") or "").strip(), set()).add(value)
        if all(len(seen) == 1 for seen in per_label.values()):
            proxies.append(column)
        else:
            found[column] = values
    return found, proxies


def subgroup_metrics(
    scored: Scored,
    values: dict[str, str],
    threshold: float = 0.5,
    positive: str | int | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Metrics with bootstrap intervals for each value of an attribute (images without a value: '(missing)')."""
    column = np.array([values.get(path) or "(missing)" for path in scored.paths])
    rows = []
    for value in sorted(set(column.tolist())):
        part = scored.subset(column == value)
        result = bootstrap_intervals(part, threshold, positive, n_resamples, seed)["metrics"]
        row: dict[str, Any] = {"value": value, "count": len(part)}
        if scored.binary:
            index = positive_index(scored.class_names, positive)
            row["positives"] = int(np.sum(part.labels == index))
        row.update({name: result[name] for name in result if ":" not in name})
        rows.append(row)
    return rows
