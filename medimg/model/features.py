"""A feature cache for frozen-backbone trials: each image's pooled backbone features computed once per (file set,
size, colour, backbone, weights hash) into a memory-mapped float32 array, so a search over the head (dense units,
dropout, learning rate, weight decay) trains a small head model on N×D features instead of the backbone on pixels.

A trial qualifies (`unused_reason` is None) when its backbone has pretrained weights, stays frozen for the whole
fit (`fine_tune_blocks == 0`) and its augmentation is at most flips: the features of each flipped view of the
training images are computed once too (`views`), and each epoch draws one view per image, as Keras' RandomFlip
draws each flip with probability ½. Any other augmentation needs pixels. The key extends the image
cache's (`cache.cache_key`: paths, sizes, modification times), so a changed file makes new features exactly as it
makes a new image entry. A cached trial builds and trains only the head (`head_model`: the full model's head layers,
same names) and KerasTuner checkpoints that small model; the image model is built once a trial's model is wanted
(`full_model`: backbone from its weights file, the head's weights copied in by name).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medimg.config import AugmentConfig, ModelParams, SearchSpace
from medimg.datasets import cache
from medimg.imaging.contract import InputContract
from medimg.model import backbones

if TYPE_CHECKING:
    import keras

    from medimg.datasets.cache import CachedArrays
    from medimg.datasets.prepared import PreparedData

FEATURE_CACHE_VERSION = 1
BATCH = 64  # images per forward pass of the backbone while computing features
ProgressCallback = Callable[[int, int, str], None]


# ------------------------------------------------------------------------------------------------------ qualifying
def unused_reason(params: ModelParams, augment: AugmentConfig) -> str | None:
    """Why a trial with `params` cannot train on cached features, or None when it can. `augment`: the run's
    augmentation before the trial's `augment_strength` scales it."""
    if params.backbone == "cnn":
        return "the configurable CNN has no frozen backbone"
    if params.weights == "none":
        return "weights 'none': the whole backbone trains"
    if params.fine_tune_blocks > 0:
        return "fine_tune_blocks > 0: the top blocks train"
    if not augment.scaled(params.augment_strength).replace(flip_horizontal=False, flip_vertical=False).is_identity:
        return "augmentation other than flips needs pixels"
    return None


View = tuple[bool, bool]  # (horizontal flip, vertical flip) of an image
ORIGINAL: View = (False, False)


def views(augment: AugmentConfig) -> tuple[View, ...]:
    """The flipped views of a training image that `augment`'s flips produce, each equally likely (Keras' RandomFlip
    flips each axis with probability ½): the original first."""
    horizontal = (False, True) if augment.flip_horizontal else (False,)
    vertical = (False, True) if augment.flip_vertical else (False,)
    return tuple((h, v) for h in horizontal for v in vertical)


def search_reasons(space: SearchSpace, augment: AugmentConfig) -> dict[str, str | None]:
    """Per backbone of `space` (the CNN left out): None when some of its trials can use cached features, else the
    reason none can (the first of `unused_reason`'s, over every fine_tune_blocks and augment_strength value)."""
    reasons: dict[str, str | None] = {}
    for name in space.backbones:
        if name == "cnn":
            continue
        found: list[str | None] = [
            unused_reason(
                ModelParams(backbone=name, weights=space.weights, fine_tune_blocks=b, augment_strength=s), augment
            )
            for b in (space.fine_tune_blocks if space.weights != "none" else (0,))
            for s in (space.backbone_augment_strengths or space.augment_strengths)
        ]
        reasons[name] = None if None in found else sorted(str(r) for r in found)[0]
    return reasons


# ----------------------------------------------------------------------------------------------------- the cache
def feature_key(
    arrays: CachedArrays, params: ModelParams, sha256: str, contract: InputContract, view: View = ORIGINAL
) -> str:
    """The cache key of `arrays`' features: the image cache's key for its files (which covers each file's path,
    size and modification time), the image shape, the backbone, the weights' SHA-256, the view (flips) and
    FEATURE_CACHE_VERSION.
    Arrays whose rows no longer match their paths (a subset taken in memory) are keyed by their pixels instead.
    `contract`: how the arrays were decoded (`PreparedData.contract`)."""
    if len(arrays.paths) == len(arrays.images):
        files = cache.cache_key(arrays.paths, contract)
    else:
        files = hashlib.sha256(np.ascontiguousarray(arrays.images).tobytes()).hexdigest()
    stamp = f"features|v{FEATURE_CACHE_VERSION}|{files}|{arrays.images.shape}|{params.backbone}|{sha256}"
    if view != ORIGINAL:  # the original view keeps the key it had before views existed
        stamp += f"|flip{int(view[0])}{int(view[1])}"
    return "features_" + hashlib.sha256(stamp.encode()).hexdigest()[:32]


def backbone_features(
    arrays: CachedArrays,
    params: ModelParams,
    data: PreparedData,
    *,
    directory: Path | None = None,
    model: keras.Model | None = None,
    on_progress: ProgressCallback | None = None,
    view: View = ORIGINAL,
) -> np.ndarray:
    """The frozen backbone's pooled features of every image in `arrays` (N×H×W×C, 0-255): N×D float32, D the
    backbone's channel count (the tensor the head starts from, `models.HEAD_START`), memory-mapped from the cache
    (`cache.cache_dir()` unless `directory`) or computed now in inference mode and cached.

    `data`: the run's prepared data (input shape, class count; its contract's DICOM window is part of the image
    key); `model`: a built full model of `params` to take the backbone from (else one is built); `view`: the images
    flipped (horizontally, vertically) before the backbone sees them (`views`). Raises ConfigError
    when `params` cannot use features (`unused_reason` for the identity augmentation) or its weights are missing.
    """
    from medimg.errors import ConfigError

    reason = unused_reason(params, AugmentConfig())
    if reason:
        raise ConfigError(f"backbone features cannot be cached for this model: {reason}.")
    _, sha256 = backbones.resolve_weights(params.backbone, params.weights)
    directory = Path(directory or cache.cache_dir())
    key = feature_key(arrays, params, str(sha256), data.contract, view)
    meta_path, array_path = directory / f"{key}.json", directory / f"{key}.npy"
    if meta_path.exists() and array_path.exists():
        try:
            return _read_entry(meta_path, array_path, len(arrays.images))
        except (OSError, ValueError, KeyError):
            pass  # a damaged entry is computed again below
    directory.mkdir(parents=True, exist_ok=True)
    extractor = feature_extractor(model if model is not None else _build(params, data))
    features = _compute_features(extractor, arrays.images, on_progress, view)
    _write_entry(meta_path, array_path, features, {"backbone": params.backbone, "weights_sha256": sha256})
    return _read_entry(meta_path, array_path, len(arrays.images))


def _build(params: ModelParams, data: PreparedData) -> keras.Model:
    from medimg.model import models

    return models.build_model(params, data.input_shape, data.num_classes)


def feature_extractor(model: keras.Model) -> keras.Model:
    """The part of a `models.build_backbone_model` model from its image input to the pooled features (N×D)."""
    import keras

    from medimg.model import models

    return keras.Model(model.input, model.get_layer(models.HEAD_START).output, name="feature_extractor")


def _compute_features(
    extractor: keras.Model, images: np.ndarray, on_progress: ProgressCallback | None, view: View = ORIGINAL
) -> np.ndarray:
    """N×D float32 features of `images` (N×H×W×C) seen in `view`, BATCH images per forward pass in inference mode
    (BatchNorm statistics and dropout as at prediction)."""
    chunks = []
    for start in range(0, len(images), BATCH):
        batch = np.asarray(images[start : start + BATCH], dtype=np.float32)
        if view[0]:
            batch = batch[:, :, ::-1]
        if view[1]:
            batch = batch[:, ::-1]
        chunks.append(np.asarray(extractor(batch, training=False), dtype=np.float32))
        if on_progress:
            on_progress(min(start + BATCH, len(images)), len(images), "computing backbone features")
    width = extractor.output.shape[-1]
    return np.concatenate(chunks) if chunks else np.zeros((0, width), np.float32)


def _write_entry(meta_path: Path, array_path: Path, features: np.ndarray, about: dict[str, Any]) -> None:
    """Write the array, then its metadata, each to a temporary file renamed into place (the json marks a complete
    entry), so a process killed mid-write leaves no entry that looks whole."""
    handle, temporary = tempfile.mkstemp(dir=array_path.parent, suffix=".npy.tmp")
    with os.fdopen(handle, "wb") as stream:  # a file object: np.save would append ".npy" to a name
        np.save(stream, features)
    os.replace(temporary, array_path)
    meta = {"count": len(features), "width": int(features.shape[1]), **about}
    # A name of its own, like the array's: distributed workers on one machine may write the same entry at once.
    handle, temporary_meta = tempfile.mkstemp(dir=meta_path.parent, suffix=".json.tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(json.dumps(meta))
    os.replace(temporary_meta, meta_path)


def _read_entry(meta_path: Path, array_path: Path, count: int) -> np.ndarray:
    meta = json.loads(meta_path.read_text())
    features = np.load(array_path, mmap_mode="r")
    if meta["count"] != count or features.shape != (count, meta["width"]) or features.dtype != np.float32:
        raise ValueError(f"feature cache entry {array_path} holds {features.shape}, expected {count} rows")
    return features


# -------------------------------------------------------------------------------------------------- the head model
HEAD_MODEL_SUFFIX = "_head"
# A head's training step on N×D features is microseconds of arithmetic; Keras' per-call overhead (a Python round
# trip and the callbacks' batch hooks) was most of a cached trial's fit (`bench/features.py`).
HEAD_STEPS_PER_EXECUTION = 32


def head_model(params: ModelParams, width: int, num_classes: int) -> keras.Model:
    """A compiled model from N×`width` pooled backbone features to the probabilities: `models.backbone_head`'s
    layers (the full model's head, same names), compiled like the full model (`models.compile_model`). A search's
    cached trial builds, trains and checkpoints only this; `full_model` puts its weights into the image model."""
    import keras

    from medimg.model import models

    inputs = keras.Input(shape=(width,), name="features")
    head = keras.Model(
        inputs, models.backbone_head(params, inputs, num_classes), name=f"medimg_{params.backbone}{HEAD_MODEL_SUFFIX}"
    )
    models.compile_model(head, params, num_classes, steps_per_execution=HEAD_STEPS_PER_EXECUTION)
    return head


def is_head_model(model: keras.Model) -> bool:
    """True for a `head_model` (features in), False for an image model."""
    return model.name.endswith(HEAD_MODEL_SUFFIX) and len(model.input.shape) == 2


def full_model(
    head: keras.Model, params: ModelParams, input_shape: tuple[int, int, int], num_classes: int
) -> keras.Model:
    """The image model of `params` (`models.build_model`, backbone weights from their file) with `head`'s trained
    weights copied into its head layers by name. Raises ConfigError when the backbone's weights are missing."""
    from medimg.model import models

    model = models.build_model(params, input_shape, num_classes)
    for layer in head.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    return model


def training_dataset(train_views: tuple[np.ndarray, ...], labels: np.ndarray, batch_size: int, seed: int) -> Any:
    """A `tf.data.Dataset` of (batch × D features, labels) batches that, each time it is iterated (each epoch),
    gives every training image once in shuffled order, in one of its views (`train_views`: N×D arrays, one per
    flipped view) drawn uniformly at random. `labels`: N labels, as the head's loss takes them."""
    import tensorflow as tf

    stacked = np.stack([np.asarray(view, dtype=np.float32) for view in train_views], axis=1)  # N × views × D
    count = stacked.shape[1]
    dataset = tf.data.Dataset.from_tensor_slices((stacked, labels)).shuffle(
        len(stacked), seed=seed, reshuffle_each_iteration=True
    )
    if count == 1:
        dataset = dataset.map(lambda x, y: (x[0], y))
    else:
        dataset = dataset.map(lambda x, y: (x[tf.random.uniform((), 0, count, tf.int32, seed=seed)], y))
    return dataset.batch(batch_size)


# ---------------------------------------------------------------------------------------------------- for a search
class FeatureStore:
    """The features of a run's train and validation images, per backbone, for the trials that can use them.

    Args:
        data: the run's prepared data.
        augment: the run's augmentation (each trial scales it by its `augment_strength`).
    """

    def __init__(self, data: PreparedData, augment: AugmentConfig) -> None:
        self.data, self.augment = data, augment
        self.loaded: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    def for_trial(self, params: ModelParams) -> dict[str, Any] | None:
        """{"train": N×D, "val": M×D, "train_views": (N×D, …)} float32 features for a qualifying trial (computed on
        the first call per backbone and weights, then read from the cache), or None when the trial must train on
        pixels. "train_views" holds the training images' features in each of `views(augment)`, the original first;
        a trial whose augmentation has no flips gets the original alone."""
        if unused_reason(params, self.augment):
            return None
        key = (params.backbone, params.weights)
        if key not in self.loaded:
            self.loaded[key] = self._compute(params)
        found = self.loaded[key]
        if not self.augment.scaled(params.augment_strength).is_identity:
            return found
        return {**found, "train_views": found["train_views"][:1]}

    def _compute(self, params: ModelParams, on_progress: ProgressCallback | None = None) -> dict[str, Any]:
        data = self.data
        train_views = tuple(
            backbone_features(data.arrays["train"], params, data, on_progress=on_progress, view=view)
            for view in views(self.augment)
        )
        val = backbone_features(data.arrays["val"], params, data, on_progress=on_progress)
        return {"train": train_views[0], "val": val, "train_views": train_views}

    def prepare(self, space: SearchSpace, on_progress: ProgressCallback | None = None) -> list[dict[str, Any]]:
        """Compute (or read) the features every qualifying backbone of `space` needs, before the first trial, and
        say for each backbone whether its trials use them: [{"backbone", "used", "reason" | "train", "val",
        "width", "flipped_views", "message"}] ("flipped_views": the training images' flipped views cached besides
        the original)."""
        records = []
        for name, reason in search_reasons(space, self.augment).items():
            if reason:
                message = f"backbone feature cache not used for {name}: {reason}"
                records.append({"backbone": name, "used": False, "reason": reason, "message": message})
                continue
            params = ModelParams(backbone=name, weights=space.weights)
            found = self._compute(params, on_progress)
            self.loaded[(name, space.weights)] = found
            rows, width = len(found["train"]), found["train"].shape[1]
            flipped = len(found["train_views"]) - 1
            message = (
                f"backbone features cached for {name}: trials over the head train on {rows:,} × {width} features"
                + (
                    f" (and {flipped} flipped view{'s' if flipped > 1 else ''} of each training image)"
                    if flipped
                    else ""
                )
                + " (trials that fine-tune or augment beyond flips train on pixels)"
            )
            records.append(
                {
                    "backbone": name,
                    "used": True,
                    "train": rows,
                    "val": len(found["val"]),
                    "width": int(width),
                    "flipped_views": flipped,
                    "message": message,
                }
            )
        return records
