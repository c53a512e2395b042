"""AugmentConfig → Keras layers; the preview uses the very layers training uses, also inside tf.data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medimg import augment, images
from medimg.config import AugmentConfig
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
    assert augment.build_augmenter(AugmentConfig(), 32) is None
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


def test_layers_follow_the_config() -> None:
    config = AugmentConfig(
        flip_horizontal=True, flip_vertical=True, crop=0.25, **{k: v for k, v in STRENGTHS.items() if k != "crop"}
    )
    model = augment.build_augmenter(config, 32, seed=1)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == [
        "RandomFlip",
        "RandomFlip",
        "RandomRotation",
        "RandomZoom",
        "RandomTranslation",
        "RandomCropResize",
        "RandomBrightness",
        "RandomContrast",
        "GaussianNoise",
    ]
    assert [model.layers[0].mode, model.layers[1].mode] == ["horizontal", "vertical"]
    batch = np.tile(np.arange(32 * 32, dtype="float32").reshape(1, 32, 32, 1), (8, 1, 1, 1))
    cropped = model.layers[5](batch, training=True).numpy()
    assert cropped.shape == batch.shape  # cropped to 24 × 24 (32 × (1 - 0.25)) and resized back
    assert cropped.min() >= 0 and cropped.max() < 32 * 32
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


def test_noise_is_clipped_not_wrapped_around() -> None:
    white = np.full((16, 16, 1), 255, np.uint8)
    out = augment.preview(white, AugmentConfig(noise=0.2), n=4, seed=0)
    # Noise of 0.2 × 255 pushes about half the pixels above 255; clipped they stay 255, wrapped they would be small.
    assert min(int(o.min()) for o in out) > 100
    assert sum(int((o == 255).sum()) for o in out) > 4 * 16 * 16 * 0.3


def test_preview_is_reproducible_for_a_seed(xray: np.ndarray) -> None:
    config = AugmentConfig(rotation=0.1, noise=0.02)
    first = augment.preview(xray, config, n=3, seed=7)
    second = augment.preview(xray, config, n=3, seed=7)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_same_layers_run_inside_a_tf_data_map(xray: np.ndarray) -> None:
    import tensorflow as tf

    augmenter = augment.build_augmenter(AugmentConfig(flip_horizontal=True, noise=0.0), 32, seed=2)
    batch = np.repeat(xray[np.newaxis], 16, axis=0).astype(np.float32)
    dataset = (
        tf.data.Dataset.from_tensor_slices(batch)
        .batch(8)
        .map(lambda x: augment.apply(augmenter, x), num_parallel_calls=tf.data.AUTOTUNE)
    )
    out = [np.round(x).astype(np.uint8) for chunk in dataset for x in chunk.numpy()]
    assert len(out) == 16
    assert {classify_flip(o, xray) for o in out} == {"none", "horizontal"}


def test_crop_varies_between_images_of_one_batch(xray: np.ndarray) -> None:
    out = augment.preview(xray, AugmentConfig(crop=0.25), n=6, seed=0)
    assert len({o.tobytes() for o in out}) > 1


def test_augmenter_works_for_rgb_batches() -> None:
    path = Path(sorted((DEMO / "test" / "NORMAL").glob("*.jpeg"))[0])
    image = images.load_image(path, 16, "rgb")
    out = augment.preview(image, AugmentConfig(rotation=0.1, brightness=0.2), n=2, seed=0)
    assert all(o.shape == (16, 16, 3) for o in out)
