"""`AugmentConfig` → the random transformations training applies to each batch, and a preview that runs the very
same code.

Geometry (flips, rotation, zoom, translation, crop) is composed per image into one matrix and applied as ONE
bilinear OpenCV warp of the uint8 pixels with reflected borders, where the batch is gathered from the cache; as
Keras layers it was one TensorFlow resampling per transformation, and those cost several times the whole input
pipeline (`bench/pipeline.py`: TensorFlow's projective-transform kernel takes ~2 ms for 32 images of 64×64,
OpenCV ~0.3 ms). Brightness, contrast and noise are cheap element-wise TensorFlow ops on the float batch.

Every random draw is a pure function of a per-batch seed that `pipeline.make_dataset` supplies from a seeded
stream. Keras' random layers keep their state in a variable, and tf.data runs `map` calls in parallel, so two
batches in flight can read the same state and get identical transformations (measured: 28 distinct outcomes out
of 32 for `RandomRotation` under `num_parallel_calls`). The parameter conventions are Keras 3's; the tests compare
each transformation with the Keras layer it replaces.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np

from medimg.config import AugmentConfig

if TYPE_CHECKING:
    import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Augmenter:
    """The augmentation of one configuration. `warp` (NumPy/OpenCV, any dtype) then `adjust` (TensorFlow, float
    0..255), each seeded per batch; calling the augmenter does both."""

    config: AugmentConfig

    @property
    def has_geometry(self) -> bool:
        c = self.config
        return bool(c.flip_horizontal or c.flip_vertical or c.rotation or c.zoom or c.translation or c.crop)

    @property
    def has_adjustments(self) -> bool:
        c = self.config
        return bool(c.brightness or c.contrast or c.noise)

    @property
    def steps(self) -> list[str]:
        """The transformations applied, in order ("geometry" is one warp)."""
        c = self.config
        named = [("geometry", self.has_geometry), ("brightness", c.brightness), ("contrast", c.contrast)]
        return [name for name, on in [*named, ("noise", c.noise)] if on]

    def matrices(self, count: int, height: int, width: int, seed: int) -> np.ndarray:
        """(count, 3, 3) output→input pixel maps drawn as Keras 3's layers draw them: each flip with probability ½,
        angle uniform in ± rotation of a full turn, one zoom for both axes in 1 ± zoom, shifts uniform in
        ± translation of each side, then a crop of (1 - crop) of each side at a uniform place, resized back."""
        c = self.config
        draws = np.random.default_rng(abs(int(seed))).random((8, count))
        spread = lambda row, limit: (2.0 * draws[row] - 1.0) * limit
        maps = affine_matrices(
            height,
            width,
            flip_x=(draws[0] < 0.5) * float(c.flip_horizontal),
            flip_y=(draws[1] < 0.5) * float(c.flip_vertical),
            angle=spread(2, c.rotation * 2.0 * math.pi),
            zoom=1.0 + spread(3, c.zoom),
            shift_x=spread(4, c.translation) * width,
            shift_y=spread(5, c.translation) * height,
        )
        if c.crop:
            # Keras' RandomCrop crops a whole batch at one offset; here each image gets its own window. The crop
            # (output → keep · output + window start) comes last, so it multiplies the map from the right.
            keep = 1.0 - c.crop
            start = np.stack([draws[6] * c.crop * (width - 1), draws[7] * c.crop * (height - 1)], axis=1)
            maps[:, :2, 2] += np.einsum("nij,nj->ni", maps[:, :2, :2], start)
            maps[:, :2, :2] *= keep
        return maps

    def warp(self, batch: np.ndarray, seed: int) -> np.ndarray:
        """A B×H×W×C batch (uint8 or float32) with each image's geometry applied; the batch itself when none is on."""
        if not self.has_geometry:
            return batch
        return resample(batch, self.matrices(*batch.shape[:3], seed))

    def adjust(self, batch: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Brightness, contrast and noise of a float batch in 0..255 (each image its own draws); values clipped to
        0..255. `seed` is this batch's int64 seed."""
        import tensorflow as tf

        c = self.config
        count = tf.shape(batch)[0]

        def per_image(step: int, low: float, high: float) -> tf.Tensor:
            return tf.random.stateless_uniform(tf.stack([count, 1, 1, 1]), _seed_pair(seed, step), low, high)

        if c.brightness:  # as RandomBrightness(value_range=(0, 1)): add ± brightness of the range, clip
            batch = tf.clip_by_value(batch + per_image(1, -c.brightness, c.brightness) * 255.0, 0.0, 255.0)
        if c.contrast:  # as RandomContrast: scale the deviation from each image's channel means by 1 ± contrast
            mean = tf.reduce_mean(batch, axis=(1, 2), keepdims=True)
            factor = per_image(2, 1.0 - c.contrast, 1.0 + c.contrast)
            batch = tf.clip_by_value((batch - mean) * factor + mean, 0.0, 255.0)
        if c.noise:  # as GaussianNoise: standard deviation a fraction of the range
            batch = batch + tf.random.stateless_normal(tf.shape(batch), _seed_pair(seed, 3)) * (c.noise * 255.0)
        return tf.clip_by_value(batch, 0.0, 255.0)

    def __call__(self, batch: np.ndarray, seed: int) -> np.ndarray:
        """Both steps on a NumPy batch, eagerly (previews, tests): float32 in 0..255."""
        warped = self.warp(batch, seed).astype(np.float32)
        if not self.has_adjustments:
            return warped  # geometry alone needs no TensorFlow (the Augment page's preview of flips and turns)
        import tensorflow as tf

        return self.adjust(tf.constant(warped), tf.constant(seed, tf.int64)).numpy()


def _seed_pair(seed: tf.Tensor, step: int) -> tf.Tensor:
    import tensorflow as tf

    return tf.stack([tf.cast(seed, tf.int64), tf.constant(step, tf.int64)])


def build_augmenter(config: AugmentConfig) -> Augmenter | None:
    """The augmenter of `config`, or None when nothing is on."""
    return None if config.is_identity else Augmenter(config)


def affine_matrices(height, width, *, flip_x, flip_y, angle, zoom, shift_x, shift_y) -> np.ndarray:
    """Per-image 3×3 maps from output to input pixel coordinates: the product, in the order the Keras layers would
    apply them, of horizontal flip, vertical flip, rotation by `angle` radians about the centre, zoom by `zoom` about
    the centre (>1 shows more of the image, as Keras' RandomZoom) and a shift of `shift_x`, `shift_y` pixels (each
    factor as its Keras 3 layer builds it). `flip_x`/`flip_y` are 1.0 (flip) or 0.0; every argument but
    height/width is a (batch,) array or a scalar."""
    flip_x, flip_y, angle, zoom, shift_x, shift_y = np.broadcast_arrays(
        *(np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (flip_x, flip_y, angle, zoom, shift_x, shift_y))
    )
    # input = c + zoom · flips · rotation · (output - c - shift), c the centre; written out rather than multiplied
    # as four batches of 3×3 matrices, which costs more in NumPy's per-call overhead than the warp itself.
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    sign_x, sign_y = 1.0 - 2.0 * flip_x, 1.0 - 2.0 * flip_y
    cos, sin = np.cos(angle) * zoom, np.sin(angle) * zoom
    maps = np.zeros((len(angle), 3, 3))
    maps[:, 0, 0], maps[:, 0, 1] = sign_x * cos, -sign_x * sin
    maps[:, 1, 0], maps[:, 1, 1] = sign_y * sin, sign_y * cos
    origin_x, origin_y = cx + shift_x, cy + shift_y
    maps[:, 0, 2] = cx - maps[:, 0, 0] * origin_x - maps[:, 0, 1] * origin_y
    maps[:, 1, 2] = cy - maps[:, 1, 0] * origin_x - maps[:, 1, 1] * origin_y
    maps[:, 2, 2] = 1.0
    return maps


def resample(batch: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Each image of a B×H×W×C batch resampled through its 3×3 output→input map: bilinear, borders reflected
    (TensorFlow's and Keras' "reflect": d c b a | a b c d), same dtype."""
    import cv2

    height, width, channels = batch.shape[1:]
    out = np.empty_like(batch)
    # OpenCV writes into `dst` when its shape matches: a single channel needs the H×W view.
    targets = out[..., 0] if channels == 1 else out
    sources = batch[..., 0] if channels == 1 else batch
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    for source, target, matrix in zip(sources, targets, maps[:, :2].astype(np.float32), strict=True):
        cv2.warpAffine(source, matrix, (width, height), dst=target, flags=flags, borderMode=cv2.BORDER_REFLECT)
    return out


def preview(image: np.ndarray, config: AugmentConfig, n: int = 8, seed: int = 0) -> list[np.ndarray]:
    """`n` augmented copies of one H×W×C uint8 image, made by the code training uses."""
    augmenter = build_augmenter(config)
    if augmenter is None:
        return [image.copy() for _ in range(n)]
    out = augmenter(np.repeat(image[np.newaxis], n, axis=0), seed)
    return [np.round(x).astype(np.uint8) for x in out]
