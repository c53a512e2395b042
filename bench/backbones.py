"""Backbones: seconds per training epoch and peak memory of each pretrained backbone at 64, 96 and 128 px, next to
the default CNN at the same size, on the same real images (issue #14). A benchmark, not a test.

Each measurement runs in its own process (so its peak resident memory is its own): the model is built, fitted one
warm-up epoch (graph tracing, first allocations), then `--epochs` timed epochs; the median epoch is reported, and
the ratio to the plain CNN (`ModelParams.plain_cnn`, the automatic mode's first trial) measured in the same
invocation at the same size. Two ways of training a backbone:
- frozen: stage 1 of fine-tuning (pretrained weights, backbone frozen with BatchNorm in inference mode, the head
  trained). The weights are a notop file this script saves under Keras' file name (random weights with BatchNorm
  statistics from the images: ImageNet weights cannot be downloaded here; the time is the same, the quality means
  nothing, and none is reported);
- whole: `weights="none"`, every layer trained (the cost of fine-tuning all blocks).
Images: the chest X-ray mini set's training split (240 JPEGs, gray, which the backbones turn into three channels
inside the model), batch 32, no augmentation.

Quality, only where real ImageNet weights are present (the offline lookup: `$MEDIMG_WEIGHTS_DIR`, then the Keras
cache; `python -m medimg weights list`): for each backbone found, `python -m medimg train DATA --backbone NAME
--weights imagenet --fine-tune-blocks 2` against the default CNN (`train DATA`), both at `--quality-size` px with
the same seed and epochs, test AUC and accuracy from `evaluate RUN --json`. Without weights it says so and reports
no quality (none is measured on these machines).

    python bench/backbones.py [--quick] [--sizes 64,96,128] [--epochs 2] [--data DIR] [--quality-size 128]
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

BACKBONES = ("mobilenet_v3_small", "efficientnet_b0", "densenet121", "resnet50_v2")


def measure(data: Path, size: int, network: str, mode: str, epochs: int, weights_dir: str) -> dict:
    """One model's per-epoch seconds, parameter counts and peak memory (this process's)."""
    import keras

    from medimg.config import DatasetConfig, ModelParams
    from medimg.datasets import pipeline
    from medimg.datasets.prepared import prepare_data
    from medimg.model import models

    common.configure_threads()
    prepared = prepare_data(DatasetConfig(path=str(data), image_size=size, color="gray", seed=0))
    train = prepared.arrays["train"]
    if mode == "prepare":  # the weights file, in a process of its own so no measurement carries its memory
        import numpy as np
        from features import save_weights  # bench/features.py's: random notop weights, BatchNorm from the images

        from medimg.model import backbones

        rgb = np.repeat(np.asarray(train.images), 3, axis=-1)  # the gray images as the backbone sees them
        save_weights(network, Path(weights_dir) / backbones.get_backbone(network).file_name, rgb)
        return {}
    if network == "cnn":
        params = ModelParams.plain_cnn(size)
    else:
        os.environ["MEDIMG_WEIGHTS_DIR"] = weights_dir
        params = ModelParams(backbone=network, weights="imagenet" if mode == "frozen" else "none", dense_units=0)
    keras.utils.set_random_seed(0)
    model = models.build_model(params, prepared.input_shape, prepared.num_classes)
    dataset = pipeline.make_dataset(train, 32, prepared.num_classes, training=True, seed=0)
    model.fit(dataset, epochs=1, verbose=0, shuffle=False)  # warm-up: tracing and first allocations
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.fit(dataset, epochs=1, verbose=0, shuffle=False)
        seconds.append(time.perf_counter() - start)
    trainable = sum(int(keras.ops.size(w)) for w in model.trainable_weights)
    return {
        "epoch_s": statistics.median(seconds),
        "images": len(train),
        "params": model.count_params(),
        "trainable": trainable,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child(args: list[str]) -> dict:
    command = [sys.executable, __file__, "--child", *args]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ})
    if result.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def quality(data: Path, size: int, epochs: int) -> None:
    """Test AUC and accuracy of each backbone whose ImageNet weights the offline lookup finds, fine-tuned by
    `train`, against the default CNN trained the same way; nothing but a sentence when no weights are found."""
    from medimg.model import backbones

    found = [row for row in backbones.weights_status() if row["found"]]
    if not found:
        print(
            "\nquality: no ImageNet weights found (`python -m medimg weights list`); backbone quality is not measured",
            flush=True,
        )
        return
    runs = Path(tempfile.mkdtemp(prefix="backbone-quality-", dir=common.bench_home()))
    common_args = ["--image-size", str(size), "--epochs", str(epochs), "--seed", "0", "--runs", str(runs)]
    print(f"\nquality at {size} px, {epochs} epochs, seed 0 ({data}):\n")
    print("| network | weights file | test AUC | test accuracy | minutes |\n|---|---|---:|---:|---:|", flush=True)
    for name, extra, weights in [
        ("plain CNN (default)", [], ""),
        *[
            (
                row["backbone"],
                ["--backbone", row["backbone"], "--weights", "imagenet", "--fine-tune-blocks", "2"],
                row["found"],
            )
            for row in found
        ],
    ]:
        started = time.time()
        trained = subprocess.run(
            [sys.executable, "-m", "medimg", "train", str(data), *common_args, *extra],
            capture_output=True,
            text=True,
            cwd=common.REPO,
        )
        if trained.returncode:
            print(f"| {name} | {weights} | failed: {trained.stderr.strip().splitlines()[-1:]} | | |", flush=True)
            continue
        run = trained.stdout.strip().splitlines()[-1]
        shown = subprocess.run(
            [sys.executable, "-m", "medimg", "evaluate", run, "--json"],
            capture_output=True,
            text=True,
            cwd=common.REPO,
            check=True,
        )
        metrics = json.loads(shown.stdout)
        print(
            f"| {name} | {Path(weights).name if weights else ''} | {metrics['auc']:.3f} | {metrics['accuracy']:.3f} | "
            f"{(time.time() - started) / 60:.1f} |",
            flush=True,
        )


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,96,128", help="comma-separated input sizes in pixels")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up epoch")
    parser.add_argument("--child", nargs=5, metavar=("DATA", "SIZE", "NETWORK", "MODE", "WEIGHTS_DIR"))
    parser.add_argument("--quality-size", type=int, default=128, help="image size of the quality comparison")
    parser.add_argument("--quality-epochs", type=int, default=20, help="epochs of each quality comparison fit")
    parser.add_argument("--only-quality", action="store_true", help="skip the timing, run the quality comparison")
    args = parser.parse_args()
    if args.child:
        data, size, network, mode, weights_dir = args.child
        print(json.dumps(measure(Path(data), int(size), network, mode, args.epochs, weights_dir)), flush=True)
        return
    if args.only_quality:
        quality(args.data, args.quality_size, args.quality_epochs)
        return
    sizes = [64] if args.quick else [int(s) for s in args.sizes.split(",")]
    networks = BACKBONES[:2] if args.quick else BACKBONES
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores); data {args.data}", flush=True)
    print(
        "| size | network | training | s / epoch | × CNN | images / s | parameters | trained | peak MB |\n"
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as weights_dir:
        for network in networks:
            child([str(args.data), str(sizes[0]), network, "prepare", weights_dir])
        for size in sizes:
            cnn = None
            for network in ("cnn", *networks):
                for mode in ("whole",) if network == "cnn" else ("frozen", "whole"):
                    row = child([str(args.data), str(size), network, mode, weights_dir])
                    cnn = cnn or row["epoch_s"]
                    label = "plain CNN (default)" if network == "cnn" else network
                    how = "all layers" if network == "cnn" else ("stage 1: frozen" if mode == "frozen" else "all")
                    print(
                        f"| {size} | {label} | {how} | {row['epoch_s']:.2f} | {row['epoch_s'] / cnn:.1f} | "
                        f"{row['images'] / row['epoch_s']:.0f} | {row['params']:,} | {row['trainable']:,} | "
                        f"{row['peak_mb']:.0f} |",
                        flush=True,
                    )
    quality(args.data, args.quality_size, args.quality_epochs)


if __name__ == "__main__":
    main()
