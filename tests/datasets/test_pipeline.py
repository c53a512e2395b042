"""tf.data over cached arrays: shapes, dtypes, label form per task, shuffling, augmentation only when training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medimg.config import AugmentConfig
from medimg.datasets import cache, pipeline
from medimg.datasets.cache import CachedArrays
from medimg.imaging.contract import InputContract


def indexed_arrays(count: int, num_classes: int, size: int = 8) -> CachedArrays:
    """Image i is filled with the value i and labelled i % num_classes: any mix-up of pairs shows."""
    pixels = np.stack([np.full((size, size, 1), i, np.uint8) for i in range(count)])
    labels = np.arange(count, dtype=np.int32) % num_classes
    return CachedArrays(pixels, labels, [f"image{i}" for i in range(count)], [])


def epoch(dataset) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
    """Image ids in the order served, and the batches of images and labels."""
    order, xs, ys = [], [], []
    for x, y in dataset:
        x, y = x.numpy(), y.numpy()
        xs.append(x)
        ys.append(y)
        order += [int(image[0, 0, 0]) for image in x]
    return order, xs, ys


def test_binary_batches_are_float_images_and_column_float_labels() -> None:
    arrays = indexed_arrays(10, 2)
    order, xs, ys = epoch(pipeline.make_dataset(arrays, 4, 2))
    assert [len(x) for x in xs] == [4, 4, 2]
    assert all(x.dtype == np.float32 and x.shape[1:] == (8, 8, 1) for x in xs)
    assert all(y.dtype == np.float32 and y.shape == (len(x), 1) for x, y in zip(xs, ys, strict=True))
    assert order == list(range(10))  # evaluation order is the cache's order
    for x, y in zip(xs, ys, strict=True):
        np.testing.assert_array_equal(y[:, 0], x[:, 0, 0, 0] % 2)  # each image kept its own label
    assert xs[-1].max() == 9.0  # 0..255 values, not rescaled (the model's Rescaling layer does that)


def test_multi_class_labels_are_integer_vectors() -> None:
    arrays = indexed_arrays(9, 3)
    _, xs, ys = epoch(pipeline.make_dataset(arrays, 4, 3, training=True, seed=1))
    assert all(y.dtype == np.int32 and y.shape == (len(x),) for x, y in zip(xs, ys, strict=True))
    for x, y in zip(xs, ys, strict=True):
        np.testing.assert_array_equal(y, x[:, 0, 0, 0].astype(int) % 3)


def test_training_reshuffles_every_epoch_and_is_seeded() -> None:
    arrays = indexed_arrays(32, 2)
    dataset = pipeline.make_dataset(arrays, 8, 2, training=True, seed=5)
    first, _, _ = epoch(dataset)
    second, _, _ = epoch(dataset)
    assert sorted(first) == sorted(second) == list(range(32))  # every image once per epoch
    assert first != second
    assert first != list(range(32))
    rebuilt, _, _ = epoch(pipeline.make_dataset(arrays, 8, 2, training=True, seed=5))
    assert rebuilt == first  # same seed, same first epoch
    other, _, _ = epoch(pipeline.make_dataset(arrays, 8, 2, training=True, seed=6))
    assert other != first


def test_validation_is_never_augmented_even_if_asked() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    arrays = CachedArrays(pixels, np.array([0, 1] * 3, np.int32), [str(i) for i in range(6)], [])
    strong = AugmentConfig(flip_horizontal=True, flip_vertical=True, rotation=0.3, noise=0.2)
    served = np.concatenate([x.numpy() for x, _ in pipeline.make_dataset(arrays, 4, 2, augment=strong)])
    np.testing.assert_array_equal(served, pixels.astype(np.float32))


def test_training_applies_augmentation_inside_the_pipeline() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
    arrays = CachedArrays(np.repeat(image[np.newaxis], 16, axis=0), np.array([0, 1] * 8, np.int32), ["x"] * 16, [])
    dataset = pipeline.make_dataset(arrays, 8, 2, training=True, augment=AugmentConfig(flip_horizontal=True), seed=0)
    served = [np.round(x).astype(np.uint8) for _ in range(2) for batch, _ in dataset for x in batch.numpy()]
    flipped = [np.array_equal(x, np.fliplr(image)) for x in served]
    untouched = [np.array_equal(x, image) for x in served]
    assert all(f or u for f, u in zip(flipped, untouched, strict=True))
    assert any(flipped) and any(untouched)


def test_augmentation_draws_anew_every_epoch_and_follows_the_seed() -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (12, 12, 1), dtype=np.uint8)
    arrays = CachedArrays(np.repeat(image[np.newaxis], 8, axis=0), np.array([0, 1] * 4, np.int32), ["x"] * 8, [])
    config = AugmentConfig(rotation=0.1, zoom=0.1)

    def served(dataset) -> np.ndarray:
        return np.concatenate([x.numpy() for x, _ in dataset])

    dataset = pipeline.make_dataset(arrays, 4, 2, training=True, augment=config, seed=3)
    first, second = served(dataset), served(dataset)
    assert len({x.tobytes() for x in first}) == 8  # every copy of the one image got its own transformation
    assert not np.allclose(first, second)  # the random state advanced between epochs inside tf.data
    rebuilt = served(pipeline.make_dataset(arrays, 4, 2, training=True, augment=config, seed=3))
    np.testing.assert_allclose(rebuilt, first, atol=1e-3)


def test_augmented_values_stay_in_0_255() -> None:
    arrays = CachedArrays(np.full((8, 8, 8, 1), 250, np.uint8), np.array([0, 1] * 4, np.int32), ["x"] * 8, [])
    dataset = pipeline.make_dataset(arrays, 8, 2, training=True, augment=AugmentConfig(noise=0.3, brightness=0.3))
    batch = next(iter(dataset))[0].numpy()
    assert batch.min() >= 0.0 and batch.max() <= 255.0
    assert batch.std() > 1.0  # something was applied


def test_from_the_real_cache(demo_dir: Path, tmp_path: Path) -> None:
    paths = [str(p) for p in sorted((demo_dir / "test").glob("*/*.jpeg"))[:12]]
    labels = [0 if "/NORMAL/" in p else 1 for p in paths]
    arrays = cache.load_arrays(paths, labels, InputContract(16, "rgb"), directory=tmp_path)
    x, y = next(iter(pipeline.make_dataset(arrays, 5, 2)))
    assert tuple(x.shape) == (5, 16, 16, 3) and tuple(y.shape) == (5, 1)
    np.testing.assert_array_equal(x.numpy(), np.asarray(arrays.images[:5], dtype=np.float32))


@pytest.mark.parametrize("num_classes", [2, 4])
def test_static_shapes_are_known_to_keras(num_classes: int) -> None:
    dataset = pipeline.make_dataset(indexed_arrays(8, num_classes), 4, num_classes, training=True)
    image_spec, label_spec = dataset.element_spec
    assert image_spec.shape.as_list() == [None, 8, 8, 1]
    assert label_spec.shape.as_list() == ([None, 1] if num_classes == 2 else [None])
