"""The image profile (`novelty`) on real images: fitted on the demo's training X-rays, its threshold set on the
validation split, it cautions other kinds of image (MR, a test pattern, a VOI LUT gradient, breast ultrasound) and
none of the demo's held-out test X-rays."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from medimg.config import DatasetConfig
from medimg.datasets import novelty
from medimg.datasets.prepared import PreparedData, prepare_data
from medimg.errors import ConfigError
from medimg.imaging.contract import InputContract
from tests.conftest import BREASTMNIST, DEMO, PROJECT

CASES = PROJECT / "tests" / "data" / "cases"
OTHER_KINDS = [
    CASES / "dicom-odd-headers" / "mr" / "float_pixels.dcm",  # MR, float pixel data
    CASES / "dicom-odd-headers" / "mr" / "deflated.dcm",  # a test pattern
    CASES / "dicom-voi-lut-sequence" / "normal" / "cr_voi_lut.dcm",  # a 128×128 gradient through a VOI LUT
    CASES / "exif-orientation" / "films" / "film.png",
    *sorted((BREASTMNIST / "test" / "malignant").glob("*.png"))[:10],  # breast ultrasound
]


@pytest.fixture(scope="module")
def demo() -> PreparedData:
    return prepare_data(DatasetConfig(path=str(DEMO), image_size=16, color="gray"))


@pytest.fixture(scope="module")
def profile(demo: PreparedData) -> novelty.ImageProfile:
    return novelty.fit_profile(demo.arrays["train"].images, demo.arrays["val"].images)


def test_the_threshold_comes_from_the_validation_split_not_test(
    demo: PreparedData, profile: novelty.ImageProfile
) -> None:
    validation = profile.distances(demo.arrays["val"].images)
    test = profile.distances(demo.arrays["test"].images)
    assert profile.validation_max == pytest.approx(float(validation.max()))
    assert profile.threshold == pytest.approx(novelty.MARGIN * float(validation.max()))
    assert profile.validation_max != pytest.approx(float(test.max()))
    assert profile.counts == {"train": 80, "val": 30}


def test_held_out_xrays_get_no_note(demo: PreparedData, profile: novelty.ImageProfile) -> None:
    assert len(demo.arrays["test"]) == 30
    assert [profile.note(image) for image in demo.arrays["test"].images] == [""] * 30


@pytest.mark.parametrize("path", OTHER_KINDS, ids=lambda path: path.name)
def test_other_kinds_of_image_are_cautioned(profile: novelty.ImageProfile, path) -> None:
    image = InputContract(16, "gray").load(path)
    note = profile.note(image)
    distance = float(profile.distances(image)[0])
    assert distance > profile.threshold
    assert note == (
        f"unlike the training images (distance {distance:.1f} vs at most {profile.validation_max:.1f} for the "
        "validation images): the call may mean nothing"
    )


@pytest.mark.parametrize("level", [0, 128, 255], ids=["black", "mid-gray", "white"])
def test_blank_images_are_cautioned(profile: novelty.ImageProfile, level: int) -> None:
    # The field report: with a chest X-ray run's profile, blank PNGs were within the reconstruction threshold
    # (black 11.8, white 11.7, mid-gray 5.5 against 19.4) and were "called PNEUMONIA" with no note.
    blank = np.full((16, 16, 1), level, np.uint8)
    assert profile.note(blank).endswith("the call may mean nothing")
    if level == 128:  # the reconstruction error misses it: flatness gives it away
        assert float(profile.distances(blank)[0]) <= profile.threshold
        assert profile.note(blank).startswith(
            "nearly uniform (contrast 0.0 gray levels; the training and validation images have at least "
        )
    # Where the reconstruction error passes an image, its brightness is checked against the range the training and
    # validation images span.
    lenient = dataclasses.replace(profile, threshold=float("inf"), contrast=(0.0, float("inf")))
    low, high = profile.brightness
    inside = low <= level <= high
    assert lenient.note(blank) == (
        ""
        if inside
        else f"unlike the training images (mean brightness {level} of 255, outside the {low:.0f}–{high:.0f} they "
        "span with a margin): the call may mean nothing"
    )
    assert inside == (level == 128)


def test_a_profile_written_before_brightness_and_contrast_were_kept_still_loads_and_skips_them(
    profile: novelty.ImageProfile,
) -> None:
    newer = ("brightness", "min_contrast", "contrast", "colour_files")
    older = {k: v for k, v in profile.to_dict().items() if k not in newer}
    loaded = novelty.ImageProfile.from_dict(older)
    assert loaded.brightness is None and loaded.min_contrast is None and loaded.contrast is None
    assert loaded.note(np.full((16, 16, 1), 128, np.uint8)) == ""  # only the distance is checked, as before
    # A profile of the next version kept the thumbnails' lowest contrast only: it is still checked, as it was.
    thumbnail_era = novelty.ImageProfile.from_dict({**older, "brightness": [0, 255], "min_contrast": 4.0})
    assert thumbnail_era.note(np.full((16, 16, 1), 128, np.uint8)).startswith(
        "nearly uniform (contrast 0.0 gray levels; the training and validation images have at least 5.0)"
    )


def test_a_fine_high_contrast_pattern_is_cautioned_with_its_own_contrast() -> None:
    """The field report: a 28×28 black-and-white checkerboard (standard deviation 127.5) given to a BreastMNIST run
    was called "nearly uniform (contrast 2.5 gray levels …): blank or flat": the 16 px thumbnail averages it to
    gray. Contrast is measured on the model input, at its own resolution."""
    breast = prepare_data(DatasetConfig(path=str(BREASTMNIST), image_size=28, color="gray"))
    profile = novelty.fit_profile(breast.arrays["train"].images, breast.arrays["val"].images)
    checkerboard = ((np.indices((28, 28)).sum(axis=0) % 2) * 255).astype(np.uint8)[..., None]
    assert float(novelty.thumbnails(checkerboard, profile.thumbnail_size).std()) < 5  # what the old check saw
    assert float(profile.distances(checkerboard)[0]) <= profile.threshold  # the distance misses it too
    highest = profile.contrast[1] / novelty.MARGIN
    assert highest < 127.5
    assert profile.note(checkerboard) == (
        f"unlike the training images (contrast 127.5 gray levels; the training and validation images have at most "
        f"{highest:.1f}): the call may mean nothing"
    )
    # The real test ultrasounds stay within the range.
    assert [profile.note(image) for image in breast.arrays["test"].images] == [""] * len(breast.arrays["test"])


def test_a_profile_round_trips_through_json_and_rgb_inputs_are_seen_in_gray(
    demo: PreparedData, profile: novelty.ImageProfile
) -> None:
    import json

    again = novelty.ImageProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    images = demo.arrays["test"].images
    np.testing.assert_allclose(again.distances(images), profile.distances(images), rtol=1e-4)
    rgb = np.repeat(images, 3, axis=-1)  # the same gray pictures as a colour model's input
    np.testing.assert_allclose(profile.distances(rgb), profile.distances(images), atol=0.6)


def test_bad_inputs_are_refused_with_what_to_do(demo: PreparedData) -> None:
    with pytest.raises(ConfigError, match="needs 2 or more training images and a validation image; got 1 and 30"):
        novelty.fit_profile(demo.arrays["train"].images[:1], demo.arrays["val"].images)
    with pytest.raises(ConfigError, match=r"image profile is malformed .* retrain the run"):
        novelty.ImageProfile.from_dict({"thumbnail_size": 16, "mean": [0.0] * 3})
