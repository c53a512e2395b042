"""AugmentConfig → the augmenter: each transformation as its Keras layer would make it, drawn per image and per
seed; the preview runs the same code as training (tests/test_pipeline.py checks it inside tf.data)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from medimg.config import AugmentConfig
from medimg.datasets import augment
from medimg.imaging import images
from tests.conftest import DEMO

STRENGTHS = {
    "rotation": 0.1,
    "zoom": 0.2,
    "translation": 0.2,
    "crop": 0.25,
    "brightness": 0.3,
    "contrast": 0.4,
    "noise": 0.05,
}


@pytest.fixture(scope="module")
def xray() -> np.ndarray:
    """A real chest X-ray, 32×32 gray: asymmetric, so flips and rotations show."""
    path = sorted((DEMO / "train" / "PNEUMONIA").glob("*.jpeg"))[0]
    return images.load_image(path, 32, "gray")


def classify_flip(candidate: np.ndarray, original: np.ndarray) -> str:
    options = {
        "none": original,
        "horizontal": np.fliplr(original),
        "vertical": np.flipud(original),
        "both": np.flipud(np.fliplr(original)),
    }
    matches = [name for name, value in options.items() if np.array_equal(candidate, value)]
    return matches[0] if matches else "other"


def test_identity_builds_nothing_and_preview_returns_copies(xray: np.ndarray) -> None:
    assert augment.build_augmenter(AugmentConfig()) is None
    copies = augment.preview(xray, AugmentConfig(), n=3)
    assert len(copies) == 3
    for copy in copies:
        np.testing.assert_array_equal(copy, xray)
        assert copy is not xray
    copies[0][:] = 0
    assert xray.max() > 0  # the original was not shared


@pytest.mark.parametrize("color", ["gray", "rgb"])
def test_preview_returns_n_images_of_the_same_shape_and_dtype(color: str) -> None:
    path = sorted((DEMO / "val" / "NORMAL").glob("*.jpeg"))[0]
    image = images.load_image(path, 24, color)
    config = AugmentConfig(flip_horizontal=True, rotation=0.05, zoom=0.1, crop=0.1, brightness=0.1, noise=0.02)
    out = augment.preview(image, config, n=5, seed=3)
    assert len(out) == 5
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in out)


def test_steps_follow_the_config() -> None:
    config = AugmentConfig(
        flip_horizontal=True, flip_vertical=True, crop=0.25, **{k: v for k, v in STRENGTHS.items() if k != "crop"}
    )
    # Flips, rotation, zoom, translation and crop are one resampling ("geometry").
    assert augment.build_augmenter(config).steps == ["geometry", "brightness", "contrast", "noise"]
    assert augment.build_augmenter(AugmentConfig(flip_vertical=True)).steps == ["geometry"]
    assert augment.build_augmenter(AugmentConfig(crop=0.1)).steps == ["geometry"]
    assert augment.build_augmenter(AugmentConfig(contrast=0.1, noise=0.1)).steps == ["contrast", "noise"]


def test_crop_takes_a_window_and_resizes_it_back() -> None:
    crop_only = augment.build_augmenter(AugmentConfig(crop=0.25))
    batch = np.tile(np.arange(32 * 32, dtype="float32").reshape(1, 32, 32, 1) / 4, (8, 1, 1, 1))
    cropped = crop_only.warp(batch, seed=1)
    assert cropped.shape == batch.shape  # cropped to 24 × 24 (32 × (1 - 0.25)) and resized back
    assert cropped.min() >= 0 and cropped.max() < 32 * 32 / 4
    # Rows of a ramp: a 24-row window resized to 32 rows spans fewer values than the whole image does.
    assert all(np.ptp(c[:, 0, 0]) < np.ptp(batch[0, :, 0, 0]) for c in cropped)


@pytest.mark.parametrize("name", sorted(STRENGTHS))
def test_each_augmentation_changes_the_image(xray: np.ndarray, name: str) -> None:
    out = augment.preview(xray, AugmentConfig(**{name: STRENGTHS[name]}), n=4, seed=0)
    assert all(o.shape == xray.shape for o in out)
    differences = [np.abs(o.astype(int) - xray.astype(int)).mean() for o in out]
    assert max(differences) > 1.0, differences


def test_horizontal_flip_is_exact(xray: np.ndarray) -> None:
    out = augment.preview(xray, AugmentConfig(flip_horizontal=True), n=16, seed=0)
    kinds = [classify_flip(o, xray) for o in out]
    assert set(kinds) == {"none", "horizontal"}, kinds  # exact copies or exact mirror images, and both occur


def test_vertical_and_both_flips_are_exact(xray: np.ndarray) -> None:
    vertical = {classify_flip(o, xray) for o in augment.preview(xray, AugmentConfig(flip_vertical=True), 16)}
    assert vertical == {"none", "vertical"}
    # Two independent choices: all four outcomes, not just "none" and "both" (one draw for both axes).
    both = augment.preview(xray, AugmentConfig(flip_horizontal=True, flip_vertical=True), n=32, seed=1)
    assert {classify_flip(o, xray) for o in both} == {"none", "horizontal", "vertical", "both"}


def fixed_affine(image: np.ndarray, **chosen: float) -> np.ndarray:
    """`image` (H×W×C float) resampled once by `augment.affine_matrices` with the given parameters."""
    parameters = {"flip_x": 0.0, "flip_y": 0.0, "angle": 0.0, "zoom": 1.0, "shift_x": 0.0, "shift_y": 0.0, **chosen}
    maps = augment.affine_matrices(image.shape[0], image.shape[1], **{k: [v] for k, v in parameters.items()})
    return augment.resample(image[np.newaxis], maps)[0]


def test_each_geometric_factor_equals_the_keras_layer_it_replaces(xray: np.ndarray) -> None:
    import keras

    image = xray.astype(np.float32) / 255.0
    # A Keras layer given a range of one value makes that exact transformation.
    expected = {
        "rotation": (keras.layers.RandomRotation((0.05, 0.05), fill_mode="reflect"), {"angle": 0.05 * 2 * math.pi}),
        "zoom out": (keras.layers.RandomZoom((0.2, 0.2), fill_mode="reflect"), {"zoom": 1.2}),
        "zoom in": (keras.layers.RandomZoom((-0.15, -0.15), fill_mode="reflect"), {"zoom": 0.85}),
        "translation": (
            keras.layers.RandomTranslation((0.1, 0.1), (-0.2, -0.2), fill_mode="reflect"),
            {"shift_y": 0.1 * 32, "shift_x": -0.2 * 32},
        ),
    }
    for name, (layer, chosen) in expected.items():
        reference = layer(image[np.newaxis], training=True).numpy()[0]
        mine = fixed_affine(image, **chosen)
        # OpenCV places samples to 1/32 of a pixel; TensorFlow exactly: the same image up to that rounding.
        assert np.abs(mine - reference).mean() < 0.003, name
        assert np.abs(mine - reference).max() < 0.05, name
        assert np.abs(reference - image).mean() > 0.02, name  # the comparison is not between two unchanged images
    np.testing.assert_array_equal(fixed_affine(image, flip_x=1.0), image[:, ::-1])
    np.testing.assert_array_equal(fixed_affine(image, flip_y=1.0), image[::-1])


def test_composed_transformation_is_the_layers_in_sequence_resampled_once(xray: np.ndarray) -> None:
    import keras

    image = xray.astype(np.float32) / 255.0
    in_sequence = keras.Sequential(
        [
            keras.layers.RandomRotation((0.03, 0.03), fill_mode="reflect"),
            keras.layers.RandomZoom((-0.1, -0.1), fill_mode="reflect"),
        ]
    )(image[np.newaxis, :, ::-1], training=True).numpy()[0]
    fused = fixed_affine(image, flip_x=1.0, angle=0.03 * 2 * math.pi, zoom=0.9)
    # Same geometry; the only difference is the second bilinear interpolation the sequence adds.
    assert np.abs(fused - in_sequence).mean() < 0.01
    assert np.abs(fixed_affine(image, angle=0.03 * 2 * math.pi, zoom=0.9) - in_sequence).mean() > 0.05


def test_crop_window_equals_tensorflow_crop_and_resize(xray: np.ndarray) -> None:
    import tensorflow as tf

    image = xray.astype(np.float32)
    cropper = augment.build_augmenter(AugmentConfig(crop=0.25))
    maps = cropper.matrices(6, 32, 32, seed=4)
    # Recover each image's window from its map (scale 0.75, offset = window start) and crop it the TensorFlow way.
    starts = np.stack([maps[:, 1, 2], maps[:, 0, 2]], axis=1) / 31
    assert np.allclose(maps[:, 0, 0], 0.75) and np.allclose(maps[:, 1, 1], 0.75)
    assert starts.min() >= 0 and starts.max() <= 0.25 and len({tuple(s) for s in starts.round(3)}) == 6
    boxes = np.concatenate([starts, starts + 0.75], axis=1)
    reference = tf.image.crop_and_resize(np.repeat(image[np.newaxis], 6, 0), boxes, tf.range(6), (32, 32)).numpy()
    mine = cropper.warp(np.repeat(image[np.newaxis], 6, 0), seed=4)
    assert np.abs(mine - reference).mean() < 0.5  # grey levels, out of 255


def test_affine_parameters_are_drawn_per_image_within_the_configured_ranges() -> None:
    # A bright mark 12 px right of the centre of a 33×33 image: its angle after rotation is the drawn angle.
    image = np.zeros((33, 33, 1), np.float32)
    image[16, 28] = 1.0
    rotate = augment.build_augmenter(AugmentConfig(rotation=0.05))
    out = rotate.warp(np.repeat(image[np.newaxis], 64, axis=0), seed=3)[..., 0]
    angles = []
    for copy in out:
        y, x = np.unravel_index(np.argmax(copy), copy.shape)
        angles.append(math.degrees(math.atan2(y - 16, x - 16)))
    # Rotation 0.05 of a turn is at most 18 degrees either way; 64 draws spread over most of that range.
    assert max(abs(a) for a in angles) <= 18 + 5
    assert max(angles) > 9 and min(angles) < -9
    assert len({round(a) for a in angles}) >= 6  # per image, not one angle per batch (positions are whole pixels)


def test_noise_is_clipped_not_wrapped_around() -> None:
    white = np.full((16, 16, 1), 255, np.uint8)
    out = augment.preview(white, AugmentConfig(noise=0.2), n=4, seed=0)
    # Noise of 0.2 × 255 pushes about half the pixels above 255; clipped they stay 255, wrapped they would be small.
    assert sum(int((o < 100).sum()) for o in out) < 4 * 16 * 16 * 0.01  # 3 standard deviations down: rare
    assert sum(int((o == 255).sum()) for o in out) > 4 * 16 * 16 * 0.3


def test_preview_is_reproducible_for_a_seed(xray: np.ndarray) -> None:
    config = AugmentConfig(flip_horizontal=True, rotation=0.1, zoom=0.1, crop=0.2, noise=0.02)
    first = augment.preview(xray, config, n=3, seed=7)
    second = augment.preview(xray, config, n=3, seed=7)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_crop_varies_between_images_of_one_batch(xray: np.ndarray) -> None:
    out = augment.preview(xray, AugmentConfig(crop=0.25), n=6, seed=0)
    assert len({o.tobytes() for o in out}) > 1


def test_augmenter_works_for_rgb_batches() -> None:
    path = Path(sorted((DEMO / "test" / "NORMAL").glob("*.jpeg"))[0])
    image = images.load_image(path, 16, "rgb")
    out = augment.preview(image, AugmentConfig(rotation=0.1, brightness=0.2), n=2, seed=0)
    assert all(o.shape == (16, 16, 3) for o in out)
    flipped = augment.preview(image, AugmentConfig(flip_horizontal=True), n=12, seed=0)
    assert {classify_flip(o, image) for o in flipped} == {"none", "horizontal"}  # every channel moved alike
