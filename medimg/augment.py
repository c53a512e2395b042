"""`AugmentConfig` → Keras preprocessing layers, and a preview that uses the very same layers."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

from medimg.config import AugmentConfig

if TYPE_CHECKING:
    import keras


def build_augmenter(config: AugmentConfig, image_size: int, seed: int | None = None) -> keras.Sequential | None:
    """A Sequential of random layers for batches of float images in 0..1, or None when nothing is on."""
    if config.is_identity:
        return None
    import keras

    layers: list[keras.layers.Layer] = []
    # One seed per layer: layers sharing a seed draw the same random numbers, so their choices would be tied.
    seeds = itertools.count(seed) if seed is not None else itertools.repeat(None)
    # Two flip layers, not RandomFlip("horizontal_and_vertical"), which makes one draw for both axes.
    if config.flip_horizontal:
        layers.append(keras.layers.RandomFlip("horizontal", seed=next(seeds)))
    if config.flip_vertical:
        layers.append(keras.layers.RandomFlip("vertical", seed=next(seeds)))
    if config.rotation:
        layers.append(keras.layers.RandomRotation(config.rotation, fill_mode="reflect", seed=next(seeds)))
    if config.zoom:
        layers.append(keras.layers.RandomZoom(config.zoom, fill_mode="reflect", seed=next(seeds)))
    if config.translation:
        layers.append(
            keras.layers.RandomTranslation(
                config.translation, config.translation, fill_mode="reflect", seed=next(seeds)
            )
        )
    if config.crop:
        # Not keras.layers.RandomCrop: in Keras 3 it draws one offset per batch, so a batch shares one crop.
        layers.append(random_crop_layer(config.crop, seed=next(seeds)))
    if config.brightness:
        layers.append(keras.layers.RandomBrightness(config.brightness, value_range=(0, 1), seed=next(seeds)))
    if config.contrast:
        layers.append(keras.layers.RandomContrast(config.contrast, value_range=(0, 1), seed=next(seeds)))
    if config.noise:
        layers.append(keras.layers.GaussianNoise(config.noise, seed=next(seeds)))
    return keras.Sequential(layers, name="augment")


def random_crop_layer(fraction: float, seed: int | None = None) -> keras.layers.Layer:
    """A layer cropping each image of a batch at its own random place to (1 - fraction) of its side, then resizing
    back to the input size (so a crop never changes the model's input shape)."""
    import keras
    import tensorflow as tf

    class RandomCropResize(keras.layers.Layer):
        def call(self, images, training=True):
            if not training:
                return images
            count = tf.shape(images)[0]
            starts = tf.random.uniform((count, 2), 0.0, fraction, seed=seed)
            boxes = tf.concat([starts, starts + (1.0 - fraction)], axis=1)  # y1, x1, y2, x2 per image
            return tf.image.crop_and_resize(images, boxes, tf.range(count), tf.shape(images)[1:3])

    return RandomCropResize(name="random_crop")


def apply(augmenter: keras.Sequential, batch):
    """Augment a batch in 0..255 (the layers work in 0..1) and keep values in range (noise can push them out)."""
    import tensorflow as tf

    return tf.clip_by_value(augmenter(batch / 255.0, training=True), 0.0, 1.0) * 255.0


def preview(image: np.ndarray, config: AugmentConfig, n: int = 8, seed: int = 0) -> list[np.ndarray]:
    """`n` augmented copies of one H×W×C uint8 image, made by the layers training uses."""
    augmenter = build_augmenter(config, image.shape[0], seed=seed)
    if augmenter is None:
        return [image.copy() for _ in range(n)]
    import tensorflow as tf

    batch = tf.constant(np.repeat(image[np.newaxis].astype(np.float32), n, axis=0))
    out = apply(augmenter, batch).numpy()
    return [np.round(x).astype(np.uint8) for x in out]
