"""The one rule the scan and training share about classes and splits, on counts (medimg/datasets/datachecks.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medimg.datasets import datachecks, scanning

CASES = Path(__file__).parents[1] / "data" / "cases"


def test_classes_left_out_are_the_empty_and_the_unreadable_ones() -> None:
    listed, readable = {"a": 3, "b": 2, "c": 1}, {"a": 3, "b": 0}
    assert datachecks.unusable_classes(listed, readable, empty=["d"]) == ["b", "c", "d"]
    assert datachecks.class_warnings(listed, readable, ["d"])[0] == (
        "class folder 'b' holds only unreadable files (2): left out of training (the model will not know this class)."
    )


@pytest.mark.parametrize(
    ("counts", "reason"),
    [({"N": 4, "P": 0}, "it holds only 'N' images (4)"), ({"N": 4, "P": 1}, None), ({}, None)],
)
def test_one_class_reason(counts: dict, reason: str | None) -> None:
    assert datachecks.one_class_reason(counts) == reason


def test_split_warnings_name_an_untrained_class_and_a_tiny_test_split() -> None:
    warnings = datachecks.split_warnings({"train": {"a": 5}, "val": {"a": 2, "b": 1}, "test": {"a": 2, "b": 3}})
    assert warnings[0].startswith("class 'b' has readable images but none in train/")
    floor = 2 / (2 + 1.959964**2)  # Wilson's lower bound for 2 of 2
    assert warnings[1].startswith(
        f"The test split has only 2 'a' images (5 in all): even if every one is called right, the 95% interval of "
        f"its sensitivity reaches down to {floor:.2f}."
    )
    assert (
        datachecks.split_warnings({"train": {"a": 9, "b": 9}, "val": {"a": 3, "b": 3}, "test": {"a": 10, "b": 12}})
        == []
    )


def test_split_warnings_name_classes_a_validation_or_test_split_lacks() -> None:
    warnings = datachecks.split_warnings(
        {"train": {"a": 9, "b": 9, "c": 9}, "val": {"a": 3, "b": 3}, "test": {"a": 10, "b": 12, "c": 0}}
    )
    assert warnings == [
        "The validation split has no 'c' images: the search's scores, early stopping and the saved model's validation "
        "figures never see that class (macro AUC averages the classes present). Add images of that class to val/ or, "
        "when medimg carves the split, to the dataset: a class of one or two images cannot reach every split.",
        "The test split has no 'c' images: no test figure speaks for that class.",
    ]
    assert datachecks.split_warnings({"train": {"a": 9, "b": 9, "c": 9}, "val": {}}) == []  # carved later, stratified


def test_the_scan_warns_about_identical_images_with_different_labels() -> None:
    report = scanning.scan(CASES / "dicom-ybr-jpeg")  # the same coloured bands under colour_a/ and colour_b/
    assert [w for w in report.warnings if "identical images carry different labels" in w] == [
        "1 group of identical images carry different labels, e.g. "
        f"{CASES / 'dicom-ybr-jpeg' / 'colour_a' / 'SC_rgb_jpeg_dcmtk.dcm'} (colour_a) == "
        f"{CASES / 'dicom-ybr-jpeg' / 'colour_b' / 'SC_ybr_full_422_uncompressed.dcm'} (colour_b): a labelling "
        "problem to settle before training."
    ]
