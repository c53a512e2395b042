"""`tf.data` datasets over the cached arrays: shuffle, batch, augment (training only), prefetch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from medimg.config import AugmentConfig
from medimg.datasets import augment as augment_module
from medimg.datasets.cache import CachedArrays

if TYPE_CHECKING:
    import tensorflow as tf


def make_dataset(
    arrays: CachedArrays,
    batch_size: int,
    num_classes: int,
    *,
    training: bool = False,
    augment: AugmentConfig | None = None,
    seed: int = 42,
) -> tf.data.Dataset:
    """Batches of (float32 images in 0..255, labels); labels are (B, 1) floats for two classes, ints otherwise.

    Only index batches flow through tf.data; pixels are gathered from the memory map per batch, so memory stays
    bounded by the batch, not the dataset.
    """
    import tensorflow as tf

    images, labels = arrays.images, arrays.labels
    height, width, channels = images.shape[1:]
    binary = num_classes == 2
    augmenter = augment_module.build_augmenter(augment) if (training and augment) else None

    def gather(indices: np.ndarray, batch_seed: np.int64) -> tuple[np.ndarray, np.ndarray]:
        indices = np.sort(indices)  # sequential reads from the memory map
        batch, batch_labels = images[indices], labels[indices]
        if augmenter is not None:
            batch = augmenter.warp(batch, int(batch_seed))  # on uint8 pixels, while the batch is in NumPy
        if binary:
            return batch, batch_labels.astype(np.float32).reshape(-1, 1)
        return batch, batch_labels.astype(np.int32)

    def load(indices: tf.Tensor, batch_seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        batch, batch_labels = tf.numpy_function(
            gather, [indices, batch_seed], [tf.uint8, tf.float32 if binary else tf.int32]
        )
        batch.set_shape([None, height, width, channels])
        batch_labels.set_shape([None, 1] if binary else [None])
        batch = tf.cast(batch, tf.float32)
        if augmenter is not None and augmenter.has_adjustments:
            batch = augmenter.adjust(batch, batch_seed)
        return batch, batch_labels

    dataset = tf.data.Dataset.range(len(labels))
    if training:
        dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    if augmenter is not None:
        # A seed per batch from a seeded stream that changes every epoch: the augmentation is reproducible, and
        # batches augmented in parallel never share their draws.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    else:
        seeds = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).repeat()
    dataset = tf.data.Dataset.zip(dataset.batch(batch_size), seeds)
    return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
