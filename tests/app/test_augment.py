"""Augment page: augmentation switches and strengths, a preview made by the training layers, reset, bad dataset."""

from __future__ import annotations

from pathlib import Path

from medimg.config import AugmentConfig, DatasetConfig
from medimg.datasets import dataset

from .conftest import TINY_DATASET, by_label, no_exception, open_page, values

STRENGTHS = [
    "Rotation (± degrees)",
    "Zoom (± % of the size)",
    "Shift (± % of the size)",
    "Random crop (% of the size)",
    "Brightness (± % of the range)",
    "Contrast (± %)",
    "Gaussian noise (SD, % of the range)",
]
NOTHING_ON = "No augmentation is on: training sees the images as they are."


def preview(at) -> tuple[list[str], list[str]]:
    """(captions, image URLs) of the preview strip; a URL names the image's content, so equal URLs mean equal pixels."""
    [strip] = at.image
    return strip.captions, strip.value


def test_no_augmentation_shows_identical_copies_and_says_so() -> None:
    at = open_page("augment", dataset=DatasetConfig(**TINY_DATASET))
    no_exception(at)
    assert values(at.info) == [NOTHING_ON]
    for label in ("Horizontal flip", "Vertical flip"):
        assert by_label(at.checkbox, label).value is False
    for label in STRENGTHS:
        assert by_label(at.slider, label).value == 0.0
    assert by_label(at.select_slider, "Preview copies").value == 12
    assert at.selectbox(key="aug_image").value.startswith(str(Path(TINY_DATASET["path"])))
    # Augmentation applies to the training split only: the images offered are its images (seen: a test image first).
    config = DatasetConfig(**TINY_DATASET)
    listing = dataset.list_files(config.path, config.group_regex)
    train = dataset.make_splits(listing.files, config.val_fraction, config.test_fraction, config.seed).train
    shown = at.selectbox(key="aug_image").options  # as the page words them: split/class/file
    assert shown == ["/".join(f.path.rsplit("/", 3)[-3:]) for f in train]
    assert all(name.startswith("train/") for name in shown)
    captions, _ = preview(at)
    assert captions == ["original"]  # no copies: without augmentation each would be the original


def test_turning_an_augmentation_on_changes_the_preview_and_the_kept_choice() -> None:
    at = open_page("augment", dataset=DatasetConfig(**TINY_DATASET))
    by_label(at.slider, "Rotation (± degrees)").set_value(90.0)  # a quarter turn: Keras' factor 0.25
    by_label(at.select_slider, "Preview copies").set_value(4).run()
    no_exception(at)
    assert NOTHING_ON not in values(at.info)
    captions, urls = preview(at)
    assert captions == ["original", "#1", "#2", "#3", "#4"]
    assert urls[0] not in urls[1:] and len(set(urls[1:])) == 4, "each copy is rotated differently"
    assert at.session_state["augment"] == AugmentConfig(rotation=0.25)

    before = urls
    by_label(at.button, "New random draw").click().run()
    no_exception(at)
    _, after = preview(at)
    assert after[0] == before[0] and set(after[1:]).isdisjoint(before[1:])


def test_flips_are_kept_and_shown_on_the_tune_page() -> None:
    at = open_page("augment", dataset=DatasetConfig(**TINY_DATASET))
    by_label(at.checkbox, "Horizontal flip").check().run()
    no_exception(at)
    assert at.session_state["augment"] == AugmentConfig(flip_horizontal=True)
    at.session_state["tn_mode"] = "Advanced"  # the automatic mode chooses its own augmentation
    at.switch_page("pages/tune.py").run()
    assert any("augmentation: horizontal flip ·" in caption for caption in values(at.caption))


def test_reset_turns_every_augmentation_off() -> None:
    at = open_page("augment", dataset=DatasetConfig(**TINY_DATASET))
    by_label(at.checkbox, "Vertical flip").check()
    by_label(at.slider, "Contrast (± %)").set_value(30.0).run()
    assert at.session_state["augment"] == AugmentConfig(flip_vertical=True, contrast=0.3)
    by_label(at.button, "Reset to none").click().run()
    no_exception(at)
    assert at.session_state["augment"] == AugmentConfig()
    assert by_label(at.checkbox, "Vertical flip").value is False
    assert by_label(at.slider, "Contrast (± %)").value == 0.0
    assert values(at.info) == [NOTHING_ON]


def test_a_dataset_that_is_gone_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "moved-away"
    at = open_page("augment", dataset=DatasetConfig(path=str(missing), image_size=16))
    no_exception(at)
    assert len(at.error) == 1 and str(missing) in at.error[0].value
    assert not at.image and not at.selectbox


def test_choices_survive_a_reload_and_reach_a_second_tab() -> None:
    """A reload (or a second tab) is a new session: it shows what was chosen, in the units it was chosen in."""
    at = open_page("augment", dataset=DatasetConfig(**TINY_DATASET))
    by_label(at.checkbox, "Horizontal flip").check()
    by_label(at.slider, "Rotation (± degrees)").set_value(18.0)
    by_label(at.slider, "Shift (± % of the size)").set_value(10.0).run()
    no_exception(at)
    chosen = AugmentConfig(flip_horizontal=True, rotation=0.05, translation=0.1)
    assert at.session_state["augment"] == chosen

    again = open_page("augment")  # no state carried over: only what medimg kept beside the runs
    no_exception(again)
    assert again.session_state["augment"] == chosen
    assert by_label(again.checkbox, "Horizontal flip").value is True
    assert by_label(again.slider, "Rotation (± degrees)").value == 18.0
    assert by_label(again.slider, "Shift (± % of the size)").value == 10.0
    again.session_state["tn_mode"] = "Advanced"
    again.switch_page("pages/tune.py").run()
    assert any("augmentation: horizontal flip, rotation ±18°, shift ±10% ·" in text for text in values(again.caption))
