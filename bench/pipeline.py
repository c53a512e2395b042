"""Input pipelines over a 10-epoch trial: medimg's decode-once cache vs Keras' directory loader vs the seed's loop.

Compared, on the same files, image size, batch size and augmentation (horizontal flip + rotation 0.05, reflected
borders, per image, mapped after batching with AUTOTUNE in every pipeline):
- medimg: `cache.load_arrays` (decode once into a memory map; the first, cold build is counted) + `make_dataset`
  with medimg's augmentation (`medimg.datasets.augment`: one stateless affine resampling per batch); the warm-cache time
  (a later run on the same files) is shown too;
- Keras: `keras.utils.image_dataset_from_directory` (decodes every file again every epoch) with the standard Keras
  layers a user would add (`RandomFlip("horizontal")`, `RandomRotation(0.05, fill_mode="reflect")`);
- seed: the tutorial's `cv2.imread` loop into one NumPy array rescaled in Python, batched by `from_tensor_slices`,
  with the same Keras layers;
- Keras' loader with medimg's augmentation: separates what the loader and what the augmentation contribute.
Part 1 iterates every batch of every epoch (target: medimg cold ≥ 3× faster than Keras), then again without
augmentation (the loaders alone). Part 2 fits the default model (`build_model(ModelParams())`) for the same epochs
on each input and splits the time into decode (set-up), first epoch and later epochs. Loaders run in rotating
order, and the files are read once before timing so every loader finds them in the OS page cache.

    python bench/pipeline.py [--quick] [--n 5000] [--epochs 10] [--repeats 2] [--train-repeats 1] [--part all|1|2]
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import common
import numpy as np
import synth

AUGMENT = {"flip_horizontal": True, "rotation": 0.05}
TARGET = 3.0
COLD, WARM, KERAS, SEED = (
    "medimg, cold cache",
    "medimg, warm cache",
    "Keras image_dataset_from_directory",
    "seed cv2.imread loop + NumPy",
)
KERAS_OWN_AUGMENT = "Keras image_dataset_from_directory + medimg augmentation"


def medimg_loader(paths: list[str], labels: list[int], args, cache_dir: Path, augment: bool):
    """Set-up (decode into the cache, or open it) and medimg's training dataset, with its own augmentation."""
    from medimg.config import AugmentConfig
    from medimg.datasets import cache, pipeline
    from medimg.imaging.contract import InputContract

    arrays = cache.load_arrays(paths, labels, InputContract(args.image_size, args.color), directory=cache_dir)
    own = AugmentConfig(**AUGMENT) if augment else None
    return pipeline.make_dataset(arrays, args.batch_size, 2, training=True, augment=own, seed=0)


def keras_loader(root: Path, args, augment: Callable | None):
    """`image_dataset_from_directory` (decode + resize per epoch), the augmentation mapped after batching."""
    import keras
    import tensorflow as tf

    dataset = keras.utils.image_dataset_from_directory(
        root,
        label_mode="binary",
        color_mode="grayscale" if args.color == "gray" else "rgb",
        image_size=(args.image_size, args.image_size),
        batch_size=args.batch_size,
        shuffle=True,
        seed=0,
        verbose=False,
    )
    if augment:
        dataset = augment(dataset)
    return dataset.prefetch(tf.data.AUTOTUNE)


def seed_loader(paths: list[str], labels: list[int], args, augment: Callable | None):
    """The seed's arrays (float 0..1, rescaled in Python), batched from memory, scaled back to the model's 0..255."""
    import tensorflow as tf

    images = common.seed_load(paths, args.image_size, args.color)
    targets = np.asarray(labels, dtype=np.float32).reshape(-1, 1)
    dataset = tf.data.Dataset.from_tensor_slices((images, targets)).shuffle(len(images), seed=0).batch(args.batch_size)
    dataset = dataset.map(lambda x, y: (x * 255.0, y), num_parallel_calls=tf.data.AUTOTUNE)
    if augment:
        dataset = augment(dataset)
    return dataset.prefetch(tf.data.AUTOTUNE)


def keras_augment(dataset):
    """The standard Keras layers for the same flip + rotation (they work on 0..1)."""
    import keras
    import tensorflow as tf

    layers = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=0),
            keras.layers.RandomRotation(AUGMENT["rotation"], fill_mode="reflect", seed=1),
        ]
    )
    return dataset.map(lambda x, y: (layers(x / 255.0, training=True) * 255.0, y), num_parallel_calls=tf.data.AUTOTUNE)


def medimg_augment(dataset):
    """medimg's augmentation over any (batch, labels) dataset, seeded per batch as `pipeline.make_dataset` does."""
    import tensorflow as tf

    from medimg.config import AugmentConfig
    from medimg.datasets import augment

    augmenter = augment.build_augmenter(AugmentConfig(**AUGMENT))

    def augment_batch(batch, seed):
        images, labels = batch
        warped = tf.numpy_function(augmenter.warp, [images, seed], tf.float32)
        warped.set_shape(images.shape)
        return augmenter.adjust(warped, seed), labels

    seeds = tf.data.Dataset.random(seed=0, rerandomize_each_iteration=True)
    return tf.data.Dataset.zip(dataset, seeds).map(augment_batch, num_parallel_calls=tf.data.AUTOTUNE)


def loaders(root: Path, args, augment: bool) -> dict[str, Callable[[], object]]:
    """Name → a function doing the loader's set-up and returning its dataset (a new, empty cache for 'cold')."""
    paths, labels, _ = common.class_folder_files(root)
    state = {"cache": Path(tempfile.mkdtemp(prefix="cache-", dir=common.bench_home()))}
    atexit.register(lambda: shutil.rmtree(state["cache"], ignore_errors=True))

    def cold():
        shutil.rmtree(state["cache"], ignore_errors=True)
        state["cache"] = Path(tempfile.mkdtemp(prefix="cache-", dir=common.bench_home()))
        return medimg_loader(paths, labels, args, state["cache"], augment)

    others = keras_augment if augment else None
    makers = {
        COLD: cold,
        WARM: lambda: medimg_loader(paths, labels, args, state["cache"], augment),
        KERAS: lambda: keras_loader(root, args, others),
        SEED: lambda: seed_loader(paths, labels, args, others),
    }
    if augment:
        makers[KERAS_OWN_AUGMENT] = lambda: keras_loader(root, args, medimg_augment)
    return makers


def iterate(dataset, epochs: int) -> list[float]:
    """Seconds per epoch of pulling every batch (the pixels are touched, as a model would)."""
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for images, _ in dataset:
            images.numpy()
        times.append(time.perf_counter() - start)
    return times


def fit(dataset, args) -> list[float]:
    """Seconds per epoch of fitting the default model on this dataset."""
    import keras

    from medimg.config import ModelParams
    from medimg.model import models

    channels = 1 if args.color == "gray" else 3
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = models.build_model(ModelParams(batch_size=args.batch_size), (args.image_size,) * 2 + (channels,), 2)
    timer = common.epoch_timer()
    model.fit(dataset, epochs=args.epochs, verbose=0, shuffle=False, callbacks=[timer])
    return timer.times


def measure(makers: dict, work: Callable, repeats: int) -> dict[str, list[tuple[float, list]]]:
    """(set-up seconds, per-epoch seconds) per loader and repeat. The order rotates each repeat; the warm-cache
    loader always follows the cold build it reads."""
    names = list(makers)
    after_cold = [n for n in (WARM,) if n in makers]
    rotating = [n for n in names if n not in after_cold]
    results: dict[str, list[tuple[float, list]]] = {name: [] for name in names}
    for repeat in range(repeats):
        order = rotating[repeat % len(rotating) :] + rotating[: repeat % len(rotating)]
        position = order.index(COLD) + 1
        order[position:position] = after_cold
        for name in order:
            setup, dataset = common.timed(makers[name])
            results[name].append((setup, work(dataset)))
    return results


def summarize(title: str, results: dict[str, list[tuple[float, list]]]) -> dict[str, float]:
    """Print the table (medians over repeats) and return each loader's median total seconds."""
    totals = {name: common.median([s + sum(e) for s, e in runs]) for name, runs in results.items()}
    rows = []
    for name, runs in results.items():
        setup = common.median([s for s, _ in runs])
        first = common.median([e[0] for _, e in runs])
        later = common.median([float(np.mean(e[1:])) if len(e) > 1 else float("nan") for _, e in runs])
        rows.append([name, setup, first, later, totals[name], common.ratio(totals[KERAS], totals[name])])
    headers = ["input", "set-up (decode) s", "epoch 1 s", "later epochs, mean s", "total s", "Keras total / this"]
    common.print_table(title, headers, rows)
    return totals


def prepare_files(args) -> Path:
    root = synth.synthesize(args.n, args.size, args.data) if args.n else common.train_folder(args.data)
    for path in common.class_folder_files(root)[0]:
        Path(path).read_bytes()  # into the OS page cache, for every loader alike
    return root


def pipeline_alone(root: Path, args) -> None:
    epochs = lambda dataset: iterate(dataset, args.epochs)
    title = f"Part 1 — pipeline alone, {args.epochs} epochs, flip + rotation, median of {args.repeats}"
    totals = summarize(title, measure(loaders(root, args, True), epochs, args.repeats))
    print("\nPart 1 target (Keras / medimg cold): " + common.verdict(totals[KERAS] / totals[COLD], TARGET))
    title = f"Part 1b — pipeline alone, {args.epochs} epochs, no augmentation (the loaders only)"
    totals = summarize(title, measure(loaders(root, args, False), epochs, args.repeats))
    print("\nPart 1b ratio (Keras / medimg cold): " + common.ratio(totals[KERAS], totals[COLD]))


def training(root: Path, args) -> None:
    makers = loaders(root, args, True)
    makers.pop(KERAS_OWN_AUGMENT)
    if args.quick:
        makers.pop(WARM)  # same epochs as cold; its set-up is in part 1
    title = f"Part 2 — fitting the default model, {args.epochs} epochs, flip + rotation, median of {args.train_repeats}"
    totals = summarize(title, measure(makers, lambda dataset: fit(dataset, args), args.train_repeats))
    print("\nPart 2 ratio (Keras / medimg cold): " + common.ratio(totals[KERAS], totals[COLD]))


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="synthetic images (0: the real train folder)")
    parser.add_argument("--size", type=int, default=128, help="side of the synthetic JPEGs")
    parser.add_argument("--image-size", type=int, default=64, help="model input side (medimg's default)")
    parser.add_argument("--color", choices=["gray", "rgb"], default="gray")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="repeats of part 1 (rotating order)")
    parser.add_argument("--train-repeats", type=int, default=1, help="repeats of part 2 (rotating order)")
    parser.add_argument("--part", choices=["all", "1", "2"], default="all", help="1: pipeline alone, 2: training")
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeats, args.train_repeats = min(args.n, 600), 1, 1
    threads = common.configure_threads(args.intra, args.inter)
    root = prepare_files(args)
    count = len(common.class_folder_files(root)[0])
    print(f"# pipeline: {count} JPEGs → {args.image_size}×{args.image_size} {args.color}, batch {args.batch_size}")
    print(f"# threads: {threads}")
    if args.part in ("all", "1"):
        pipeline_alone(root, args)
    if args.part in ("all", "2"):
        training(root, args)


if __name__ == "__main__":
    main()
