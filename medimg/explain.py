"""Grad-CAM: where in the image the model's evidence for a class lies. Compute apart from display."""

from __future__ import annotations

from typing import Any

import numpy as np

from medimg.errors import MedimgError


def last_conv_layer_name(model: Any) -> str:
    """The last layer with a 4-D (feature-map) output before the head: Grad-CAM's target layer."""
    import keras

    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Activation | keras.layers.BatchNormalization):
            shape = getattr(layer.output, "shape", None)
            if shape is not None and len(shape) == 4:
                return layer.name
    raise MedimgError("this model has no convolutional layer, so Grad-CAM cannot be computed.")


def gradcam_heatmap(
    model: Any, image: np.ndarray, class_index: int | None = None, layer_name: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM for one H×W×C uint8 image: (heatmap H×W in 0..1, class probabilities).

    `class_index` defaults to the predicted class. For a one-unit sigmoid output, class 0's evidence is the
    gradient of (1 - p).
    """
    import cv2
    import keras
    import tensorflow as tf

    layer = model.get_layer(layer_name or last_conv_layer_name(model))
    grad_model = keras.Model(model.inputs, [layer.output, model.outputs[0]])
    batch = tf.convert_to_tensor(image[np.newaxis].astype(np.float32))
    with tf.GradientTape() as tape:
        feature_maps, output = grad_model(batch, training=False)
        probs = tf.concat([1.0 - output, output], axis=-1) if output.shape[-1] == 1 else output
        if class_index is None:
            class_index = int(tf.argmax(probs[0]))
        score = probs[:, class_index]
    gradients = tape.gradient(score, feature_maps)
    weights = tf.reduce_mean(gradients, axis=(0, 1, 2))
    cam = tf.nn.relu(tf.reduce_sum(feature_maps[0] * weights, axis=-1)).numpy()
    if cam.max() > 0:
        cam = cam / cam.max()
    heatmap = cv2.resize(cam.astype(np.float32), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(heatmap, 0.0, 1.0), probs.numpy()[0]


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The heatmap (jet colours) blended over the image: an RGB uint8 image for display."""
    import cv2

    base = (
        image if image.ndim == 3 and image.shape[2] == 3 else np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2)
    )
    colored = cv2.applyColorMap(np.uint8(np.round(heatmap * 255)), cv2.COLORMAP_JET)
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)
    return np.uint8(np.round((1 - alpha) * base.astype(np.float32) + alpha * colored.astype(np.float32)))
