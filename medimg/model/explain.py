"""Grad-CAM: where in the image the model's evidence for a class lies. Compute apart from display."""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from medimg.errors import ModelError
from medimg.store.runs import trial_number


def last_conv_layer_name(model: Any) -> str:
    """The last layer with a 4-D (feature-map) output before the head: Grad-CAM's target layer."""
    import keras

    from medimg.model.models import ENSEMBLE_NAME, MEMBER_PREFIX

    layers = model.layers
    if model.name == ENSEMBLE_NAME:  # the first (best) member's feature maps; see models.build_ensemble
        layers = [layer for layer in layers if layer.name.startswith(MEMBER_PREFIX.format(0))]
    for layer in reversed(layers):
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Activation | keras.layers.BatchNormalization):
            shape = getattr(layer.output, "shape", None)
            if shape is not None and len(shape) == 4:
                return layer.name
    raise ModelError("this model has no convolutional layer, so Grad-CAM cannot be computed.")


def gradcam_caption(record: dict[str, Any]) -> str:
    """What a run's Grad-CAM overlay shows, in sentences for a caption: the method, its colours, and for a saved mean
    of several trials' networks (`record["ensemble"]`), that the map is the best member's alone
    (`last_conv_layer_name`).

    Grad-CAM: Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization",
    ICCV 2017 (arXiv:1610.02391)."""
    text = (
        "Grad-CAM: where the last convolutional layer found evidence for the called class, red strongest, blue none "
        "(jet colours, scaled per image)."
    )
    members = (record.get("ensemble") or {}).get("members") or []
    if len(members) > 1:
        text += (
            f" The saved model is the mean of {len(members)} trials' networks; the map is read from the best one's "
            f"feature maps (trial {trial_number(members[0])}): the evidence the other members add is not shown."
        )
    return text


def gradcam_heatmap(
    model: Any, image: np.ndarray, class_index: int | None = None, layer_name: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM for one H×W×C uint8 image: (heatmap H×W in 0..1, class probabilities).

    `class_index` defaults to the predicted class. For a one-unit sigmoid output, class 0's evidence is the
    gradient of (1 - p).
    """
    heatmaps, probs = gradcam_heatmaps(
        model, image[np.newaxis], None if class_index is None else [class_index], layer_name
    )
    return heatmaps[0], probs[0]


def gradcam_heatmaps(
    model: Any, images: np.ndarray, class_indices: list[int] | None = None, layer_name: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM for a batch of N×H×W×C uint8 images in one pass: (heatmaps N×H×W in 0..1, probabilities N×K).

    Each image's map is its own (inference mode, so no image influences another's gradients); `class_indices`
    gives the class to explain per image and defaults to each image's predicted class.
    """
    import cv2
    import tensorflow as tf

    compute = _gradcam_function(model, layer_name or last_conv_layer_name(model))
    batch = tf.convert_to_tensor(np.asarray(images).astype(np.float32))
    chosen = [-1] * len(batch) if class_indices is None else list(class_indices)  # -1: the predicted class
    cams, probs = compute(batch, tf.constant(chosen, tf.int64))
    cams = cams.numpy()
    height, width = batch.shape[1], batch.shape[2]
    heatmaps = np.zeros((len(cams), height, width), np.float32)
    for i, cam in enumerate(cams):
        if cam.max() > 0:
            cam = cam / cam.max()
        resized = cv2.resize(cam.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        heatmaps[i] = np.clip(resized, 0.0, 1.0)
    return heatmaps, probs.numpy()


# Built and traced once per (model, layer): rebuilding the gradient model on every call cost ~10× the Grad-CAM.
_GRADCAM_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _gradcam_function(model: Any, layer_name: str) -> Any:
    """A traced function (batch, class per image or -1) → (class-activation maps, probabilities)."""
    import keras
    import tensorflow as tf

    per_model = _GRADCAM_FUNCTIONS.setdefault(model, {})
    if layer_name in per_model:
        return per_model[layer_name]
    grad_model = keras.Model(model.inputs, [model.get_layer(layer_name).output, model.outputs[0]])

    @tf.function(reduce_retracing=True)
    def compute(batch: tf.Tensor, chosen: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            feature_maps, output = grad_model(batch, training=False)
            probs = tf.concat([1.0 - output, output], axis=-1) if output.shape[-1] == 1 else output
            chosen = tf.where(chosen < 0, tf.argmax(probs, axis=-1), chosen)
            score = tf.gather(probs, chosen, axis=1, batch_dims=1)
        gradients = tape.gradient(score, feature_maps)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        return tf.nn.relu(tf.reduce_sum(feature_maps * weights, axis=-1)), probs

    per_model[layer_name] = compute
    return compute


def heatmap_caption(heatmap: np.ndarray, class_name: str) -> str:
    """The caption under one overlay (`heatmap`: H×W in 0..1 from `gradcam_heatmaps`). An all-zero map is said to
    be empty: Grad-CAM keeps only regions whose weighted feature maps raise the class's probability (its ReLU), and
    a probability saturated at 1 has no gradient at all, so a uniform blue overlay means one of those, not that every
    region counted alike."""
    if not np.any(heatmap > 0):
        return (
            f"Grad-CAM for {class_name}: empty (no region raised its probability at this layer, or the call is so "
            "confident that the gradient vanished): it does not show where the evidence is"
        )
    return f"Grad-CAM for {class_name}"


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The heatmap (jet colours) blended over the image: an RGB uint8 image for display."""
    import cv2

    base = (
        image if image.ndim == 3 and image.shape[2] == 3 else np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2)
    )
    colored = cv2.applyColorMap(np.uint8(np.round(heatmap * 255)), cv2.COLORMAP_JET)
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)
    return np.uint8(np.round((1 - alpha) * base.astype(np.float32) + alpha * colored.astype(np.float32)))


def for_display(image: np.ndarray, size: int = 160) -> np.ndarray:
    """An H×W, H×W×1 or H×W×3 uint8 image as size×size RGB for display; small inputs keep visible pixels."""
    import cv2

    rgb = image if image.ndim == 3 and image.shape[2] == 3 else np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2)
    if max(image.shape[:2]) > size:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_NEAREST if max(image.shape[:2]) * 4 <= size else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(rgb), (size, size), interpolation=interpolation)


def side_by_side(image: np.ndarray, heatmap: np.ndarray, size: int = 160, gap: int = 4) -> np.ndarray:
    """The image and its Grad-CAM overlay next to each other (RGB, size × (2·size + gap)), for a gallery."""
    spacer = np.full((size, gap, 3), 255, np.uint8)
    return np.hstack([for_display(image, size), spacer, for_display(overlay(image, heatmap), size)])
