"""Grad-CAM: the heatmap points at the evidence the model learned; the overlay is a displayable RGB image."""

from __future__ import annotations

import numpy as np
import pytest

from medimg.config import ModelParams
from medimg.errors import MedimgError
from medimg.model import explain, models

SIZE, SQUARE = 32, 6


def synthetic(count: int, positive: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """Noisy dark 32×32 images; the positive ones hold a bright 6×6 square somewhere in the top-left quadrant."""
    images = rng.integers(0, 90, (count, SIZE, SIZE, 1)).astype(np.uint8)
    corners: list[tuple[int, int] | None] = []
    for i in range(count):
        if positive[i]:
            row, col = (int(v) for v in rng.integers(1, SIZE // 2 - SQUARE + 1, 2))
            images[i, row : row + SQUARE, col : col + SQUARE] = 230
            corners.append((row, col))
        else:
            corners.append(None)
    return images, corners


@pytest.fixture(scope="module")
def square_detector():
    """A tiny CNN trained until it tells "bright square in the top-left quadrant" (1) from "none" (0)."""
    import keras

    rng = np.random.default_rng(0)
    labels = np.arange(240) % 2
    images, _ = synthetic(240, labels, rng)
    keras.utils.set_random_seed(0)
    params = ModelParams(
        filters=(8, 16), batch_norm=False, dropout=0.0, dense_units=0, l2=0.0, head="global_average", learning_rate=0.01
    )
    model = models.build_model(params, (SIZE, SIZE, 1), 2)
    model.fit(images.astype("float32"), labels.reshape(-1, 1).astype("float32"), epochs=8, batch_size=32, verbose=0)
    test_images, corners = synthetic(12, np.ones(12, int), rng)
    negatives, _ = synthetic(12, np.zeros(12, int), rng)
    accuracy = np.mean(
        np.concatenate(
            [
                models.probabilities(model, test_images.astype("float32"))[:, 1] > 0.5,
                models.probabilities(model, negatives.astype("float32"))[:, 1] < 0.5,
            ]
        )
    )
    assert accuracy >= 0.9, "the detector did not learn the task; the Grad-CAM checks below would mean nothing"
    return model, test_images, corners


def test_target_layer_is_the_last_feature_map(square_detector) -> None:
    model, _, _ = square_detector
    assert explain.last_conv_layer_name(model) == "act1"  # conv1 → act1, before pooling and the head


def test_heatmap_peak_falls_on_the_square(square_detector) -> None:
    model, test_images, corners = square_detector
    for image, (row, col) in zip(test_images, corners, strict=True):
        heatmap, probs = explain.gradcam_heatmap(model, image)
        assert heatmap.shape == (SIZE, SIZE) and heatmap.dtype == np.float32
        # Normalised to a peak of 1 on the feature map; upsampling samples between cells, so a little below.
        assert heatmap.min() >= 0.0 and 0.8 < heatmap.max() <= 1.0
        assert probs.shape == (2,) and probs.argmax() == 1
        peak_row, peak_col = np.unravel_index(int(heatmap.argmax()), heatmap.shape)
        assert peak_row < SIZE // 2 and peak_col < SIZE // 2, "peak outside the top-left quadrant"
        # Within the square, allowing the 2-pixel blur of upsampling a 16×16 map to 32×32.
        assert row - 2 <= peak_row <= row + SQUARE + 1 and col - 2 <= peak_col <= col + SQUARE + 1


def test_evidence_against_the_class_is_not_highlighted_on_the_square(square_detector) -> None:
    model, test_images, corners = square_detector
    image, (row, col) = test_images[0], corners[0]
    for_disease, _ = explain.gradcam_heatmap(model, image, class_index=1)
    for_normal, _ = explain.gradcam_heatmap(model, image, class_index=0)
    inside = (slice(row, row + SQUARE), slice(col, col + SQUARE))
    assert for_disease[inside].mean() > 0.5
    assert for_normal[inside].mean() < for_disease[inside].mean()


def test_a_map_with_no_evidence_is_captioned_empty_not_shown_as_uniform(square_detector) -> None:
    """Seen: a flat blue overlay on a DICOM with nothing saying that Grad-CAM found no evidence."""
    model, test_images, _ = square_detector
    for_disease, _ = explain.gradcam_heatmap(model, test_images[0], class_index=1)
    for_normal, _ = explain.gradcam_heatmap(model, test_images[0], class_index=0)  # the square argues against it
    blank, _ = explain.gradcam_heatmap(model, np.zeros_like(test_images[0]), class_index=1)
    assert explain.heatmap_caption(for_disease, "square") == "Grad-CAM for square"
    for empty in (for_normal, blank):
        assert not empty.any()
        assert explain.heatmap_caption(empty, "none").startswith("Grad-CAM for none: empty (no region raised its ")


def test_explicit_layer_name_is_used(square_detector) -> None:
    model, test_images, _ = square_detector
    heatmap, _ = explain.gradcam_heatmap(model, test_images[0], layer_name="act0")  # 32×32 map, before pooling
    assert heatmap.shape == (SIZE, SIZE)
    with pytest.raises(ValueError):
        explain.gradcam_heatmap(model, test_images[0], layer_name="no_such_layer")


def test_model_without_convolution_is_a_clear_error() -> None:
    import keras

    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(inputs))
    with pytest.raises(MedimgError, match="has no convolutional layer, so Grad-CAM cannot be computed"):
        explain.last_conv_layer_name(keras.Model(inputs, outputs))


def test_overlay_shape_dtype_and_colours() -> None:
    gray = np.full((4, 6, 1), 100, np.uint8)
    heatmap = np.zeros((4, 6), np.float32)
    heatmap[:, 3:] = 1.0
    blended = explain.overlay(gray, heatmap, alpha=0.4)
    assert blended.shape == (4, 6, 3) and blended.dtype == np.uint8
    only_image = explain.overlay(gray, heatmap, alpha=0.0)
    np.testing.assert_array_equal(only_image, np.repeat(gray, 3, axis=2))
    only_heat = explain.overlay(gray, heatmap, alpha=1.0).astype(int)
    # The jet colour map runs from dark blue (0) to dark red (1), in RGB order.
    cold, hot = only_heat[0, 0], only_heat[0, 5]
    assert cold[2] > 100 and cold[0] == 0
    assert hot[0] > 100 and hot[2] == 0
    rgb = np.zeros((5, 5, 3), np.uint8)
    assert explain.overlay(rgb, np.zeros((5, 5), np.float32)).shape == (5, 5, 3)
    assert explain.overlay(gray[..., 0], heatmap).shape == (4, 6, 3)  # plain H×W gray too


def test_a_batch_gives_each_image_its_own_map(square_detector) -> None:
    model, test_images, _ = square_detector
    batch = test_images[:5]
    heatmaps, probs = explain.gradcam_heatmaps(model, batch)
    assert heatmaps.shape == (5, SIZE, SIZE) and heatmaps.dtype == np.float32 and probs.shape == (5, 2)
    for image, heatmap, row in zip(batch, heatmaps, probs, strict=True):
        alone, alone_probs = explain.gradcam_heatmap(model, image)
        np.testing.assert_allclose(heatmap, alone, atol=1e-5)
        np.testing.assert_allclose(row, alone_probs, atol=1e-6)
    # A class per image: class 0 for the first two, class 1 for the rest.
    chosen, _ = explain.gradcam_heatmaps(model, batch, [0, 0, 1, 1, 1])
    np.testing.assert_allclose(chosen[0], explain.gradcam_heatmap(model, batch[0], class_index=0)[0], atol=1e-5)
    np.testing.assert_allclose(chosen[4], heatmaps[4], atol=1e-5)


def test_display_helpers_scale_to_rgb() -> None:
    tiny = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    shown = explain.for_display(tiny, 16)
    assert shown.shape == (16, 16, 3) and (shown[:4, :4] == 0).all() and (shown[12:, 12:] == 15).all()  # blocks
    pair = explain.side_by_side(tiny, np.ones((4, 4), np.float32), size=16, gap=2)
    assert pair.shape == (16, 34, 3) and (pair[:, 16:18] == 255).all()


def test_the_caption_says_which_network_a_mean_of_trials_is_explained_by() -> None:
    """Seen in review: Predict said only "Grad-CAM for 3_severe_npdr" for a mean of five trials, whose map comes from
    the first member's feature maps (`last_conv_layer_name`), with no word on the colours."""
    single = explain.gradcam_caption({"kind": "train"})
    assert "red strongest, blue none" in single and "mean of" not in single
    mean = explain.gradcam_caption({"ensemble": {"members": ["003", "001", "002", "007", "000"]}})
    assert mean.startswith(single)
    assert "the mean of 5 trials' networks; the map is read from the best one's feature maps (trial 4)" in mean
