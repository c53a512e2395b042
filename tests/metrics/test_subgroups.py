"""Subgroups: categorical manifest columns, and metrics with intervals for each of their values."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as sk

from medimg.metrics import clinical, subgroups
from medimg.metrics.clinical import Scored
from tests.metrics.test_clinical import noisy_binary


def test_manifest_attributes_keep_categorical_columns_only(tmp_path: Path) -> None:
    manifest = tmp_path / "data.csv"
    with manifest.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "label", "group", "split", "site", "sex", "scanner_serial", "constant"])
        for i in range(30):
            writer.writerow([f"img/{i}.png", "a", f"p{i}", "", f"site{i % 3}", "F" if i % 2 else "M", f"SN{i}", "x"])
    attributes = subgroups.manifest_attributes(manifest)
    assert sorted(attributes) == ["sex", "site"]  # 30 distinct serials and a constant are no subgroups
    assert attributes["site"][str(tmp_path / "img" / "4.png")] == "site1"
    assert subgroups.manifest_attributes(tmp_path) == {}


def test_a_column_that_follows_the_label_is_no_subgroup(tmp_path: Path) -> None:
    """Seen in review: RetinaMNIST's manifest has `label_index` beside `label`; its "subgroups" were the five
    classes, each with AUC "–". A site that holds images of both classes stays a subgroup."""
    manifest = tmp_path / "data.csv"
    with manifest.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "label", "label_index", "site"])
        for i in range(30):
            label = ["normal", "effusion", "mass"][i % 3]
            writer.writerow([f"img/{i}.png", label, str(i % 3), "north" if i < 15 else "south"])
    assert list(subgroups.manifest_attributes(manifest)) == ["site"]
    assert subgroups.manifest_columns(manifest)[1] == ["label_index"]


def test_subgroup_metrics_equal_the_metrics_of_each_part() -> None:
    scored = noisy_binary(300, 12)
    scored = Scored(scored.labels, scored.probs, scored.class_names, [f"/data/{i}.png" for i in range(300)])
    sites = {f"/data/{i}.png": ("north" if i % 3 else "south") for i in range(290)}  # 10 images without a value
    rows = subgroups.subgroup_metrics(scored, sites, threshold=0.5, n_resamples=200)
    assert [row["value"] for row in rows] == ["(missing)", "north", "south"]
    assert [row["count"] for row in rows] == [10, 193, 97]
    south = np.array([i % 3 == 0 and i < 290 for i in range(300)])
    point = clinical.operating_point(scored.subset(south), 0.5)
    assert rows[2]["sensitivity"]["estimate"] == pytest.approx(point.sensitivity)
    assert rows[2]["positives"] == point.tp + point.fn
    assert rows[2]["auc"]["estimate"] == pytest.approx(sk.roc_auc_score(scored.labels[south], scored.probs[south, 1]))
