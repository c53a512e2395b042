"""Feature cache: seconds per trial of a frozen-backbone search over the head, on cached features vs on pixels.

Both searches are tune runs carried out by `jobs.execute` with the same data, space, seed, trials and epochs:
- features: medimg as it is (the trials qualify: pretrained weights, fine_tune_blocks 0, no augmentation), so each
  trial fits the head on the cached N×D features;
- pixels: the same search with `FeatureStore.for_trial` answering None, which is what a trial that cannot use the
  cache does (the full image model fitted on the images, backbone frozen).
The weights are a MobileNetV3Small (or `--backbone`) notop file this script saves itself under Keras' file name in
a folder it points `MEDIMG_WEIGHTS_DIR` at: random initial weights with BatchNorm statistics set from the training
images (ImageNet weights cannot be downloaded here; the timing is the same, the quality means nothing). The
features are computed once before the searches (cache miss, timed), then every trial reads them. Per-trial seconds
come from the runs' trial_begin / trial_end events. Searches run ABAB (`--repeats`).

    python bench/features.py [--quick] [--trials 4] [--epochs 5] [--image-size 96] [--repeats 1]
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import common
import numpy as np


def save_weights(name: str, path: Path, images: np.ndarray) -> None:
    """Random notop weights in Keras' file format with BatchNorm statistics from `images` (N×H×W×3, 0-255)."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    from medimg.model import backbones, batchnorm

    keras.utils.set_random_seed(1)
    application = getattr(keras.applications, backbones.get_backbone(name).constructor)(
        include_top=False, weights=None, input_shape=images.shape[1:]
    )
    batchnorm.recompute_statistics(application, np.asarray(images, np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as stream:
        legacy_h5_format.save_weights_to_hdf5_group(stream, application)


def spec(args):
    from medimg.config import DatasetConfig, RunSpec, SearchSpace, TrainConfig, TuneConfig

    return RunSpec(
        kind="tune",
        dataset=DatasetConfig(path=str(args.data), image_size=args.image_size, color="gray", seed=1),
        search=SearchSpace(
            backbones=(args.backbone,),
            weights="imagenet",
            fine_tune_blocks=(0,),
            learning_rate_min=1e-4,
            learning_rate_max=1e-2,
            dropouts=(0.0, 0.2, 0.4),
            dense_units=(0, 64, 128),
            l2=(0.0, 1e-4, 1e-3),
            batch_sizes=(32,),
        ),
        tune=TuneConfig(tuner="random", max_trials=args.trials, ensemble_size=1),
        train=TrainConfig(epochs=args.epochs, early_stopping_patience=0, reduce_lr_patience=0, seed=1),
    )


def search(args, work: Path, on_pixels: bool) -> tuple[list[float], float, dict]:
    """(seconds of each trial, whole run seconds, run.json's feature_cache) of one search."""
    import keras

    from medimg import jobs
    from medimg.model import features
    from medimg.store import runs

    keras.backend.clear_session()
    original = features.FeatureStore.for_trial
    if on_pixels:
        features.FeatureStore.for_trial = lambda self, params: None
    try:
        run = runs.create_run(spec(args), work / "runs")
        start = time.perf_counter()
        jobs.execute(run)
        total = time.perf_counter() - start
    finally:
        features.FeatureStore.for_trial = original
    begins = {e["trial"]: e["t"] for e in run.events("trial_begin")}
    seconds = [e["t"] - begins[e["trial"]] for e in run.events("trial_end") if e["trial"] in begins]
    return seconds, total, run.record.get("feature_cache")


def compute_once(args) -> tuple[float, tuple[int, int]]:
    """Seconds to compute train + val features on a cache miss, and the train features' shape."""
    from medimg.config import ModelParams
    from medimg.datasets import prepared
    from medimg.model import features

    data = prepared.prepare_data(spec(args).dataset)
    params = ModelParams(backbone=args.backbone, weights="imagenet")
    start = time.perf_counter()
    found = [features.backbone_features(data.arrays[s], params, data) for s in ("train", "val")]
    return time.perf_counter() - start, found[0].shape


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenet_v3_small")
    parser.add_argument("--trials", type=int, default=4, help="trials per search")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per trial")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=1, help="ABAB repetitions of the two searches")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.epochs, args.image_size = min(args.trials, 2), min(args.epochs, 2), min(args.image_size, 64)
    threads = common.configure_threads(args.intra, args.inter)
    print(f"# features: {args.data}, {args.backbone} at {args.image_size} px, {threads}")
    work = Path(tempfile.mkdtemp(prefix="features-", dir=common.bench_home()))
    os.environ["MEDIMG_CACHE_DIR"] = str(work / "cache")  # a fresh cache: the first computation is a real miss
    os.environ["MEDIMG_WEIGHTS_DIR"] = str(work / "weights")
    try:
        from medimg.datasets import prepared
        from medimg.model import backbones

        rgb = spec(args).dataset.replace(color="rgb")
        images = prepared.prepare_data(rgb).arrays["train"].images
        save_weights(args.backbone, work / "weights" / backbones.get_backbone(args.backbone).file_name, images)
        once, shape = compute_once(args)
        per_trial: dict[str, list[float]] = {"features": [], "pixels": []}
        totals: dict[str, list[float]] = {"features": [], "pixels": []}
        record = None
        for _ in range(args.repeats):
            for name in ("features", "pixels"):
                seconds, total, cache_record = search(args, work, on_pixels=name == "pixels")
                per_trial[name] += seconds
                totals[name].append(total)
                record = cache_record if name == "features" else record
        report(args, per_trial, totals, once, shape, record)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(args, per_trial: dict, totals: dict, once: float, shape: tuple, record) -> None:
    rows = [
        [name, len(per_trial[name]), common.median(per_trial[name]), min(per_trial[name]), common.median(totals[name])]
        for name in ("features", "pixels")
    ]
    title = f"{args.trials} trials × {args.epochs} epochs, {args.backbone} at {args.image_size} px, train {shape}"
    common.print_table(title, ["path", "trials", "median s/trial", "min s/trial", "median run s"], rows)
    speedup = common.median(per_trial["pixels"]) / common.median(per_trial["features"])
    print(f"\nfeatures computed once (train + val, cache miss): {once:.1f} s")
    print(f"per-trial speed-up, pixels / features: {speedup:.1f}×")
    # Issue #14 asks for "seconds per trial" over the head; what is left per cached trial is a fixed cost (tracing
    # the head's train and test steps, Keras' per-epoch machinery, KerasTuner's bookkeeping).
    print(f"median seconds per cached trial: {common.median(per_trial['features']):.1f}")
    print(f"run.json feature_cache: {record}")


if __name__ == "__main__":
    main()
