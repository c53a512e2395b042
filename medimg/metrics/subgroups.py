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
    paths in a run's predictions. A folder dataset has no manifest and gives {}.
    """
    path = Path(path)
    if not (path.is_file() and path.suffix.lower() == ".csv"):
        return {}
    with path.open(newline="", encoding="utf-8-sig") as stream:
        rows = list(csv.DictReader(stream))
    if not rows:
        return {}
    found = {}
    for column in rows[0]:
        if column is None or column.strip().lower() in ("path", "label", "group", "split"):
            continue
        values = {str(path.parent / (row.get("path") or "").strip()): (row.get(column) or "").strip() for row in rows}
        distinct = {v for v in values.values() if v}
        if 2 <= len(distinct) <= max_values:
            found[column] = values
    return found


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
