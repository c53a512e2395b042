"""Peak memory of training on N images: medimg's memory-mapped pipeline vs the seed's load-everything arrays.

Every configuration runs in a fresh subprocess, so peaks never mix; each child reports its peak RSS (VmHWM,
which also counts the pages of the memory-mapped cache it touched), its peak anonymous RSS (sampled every 10 ms:
memory that is not a file's pages) and the parent adds the kernel's `ru_maxrss` for that child (`os.wait4`).
Work per child: one epoch of the default model (`ModelParams()`, 64 px gray) with validation, on
- medimg, cold: `training.prepare_data` decoding into an empty cache, then `training.fit_model`;
- medimg, warm: the same with the cache already built (a later run on the same files);
- seed: a `cv2.imread` loop over all N files into one float32 array (rescaled in Python), split 70/30,
  `model.fit(x, y, validation_data=...)`.
The slope (MB per 1,000 images, least squares over the sizes) is what matters: the intercept is TensorFlow.

    python bench/memory.py [--quick] [--sizes 5000,10000,20000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import common
import numpy as np
import synth

APPROACHES = ("medimg, cold cache", "medimg, warm cache", "seed, load everything")


class AnonSampler(threading.Thread):
    """Peak RssAnon of this process, sampled every 10 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0.0

    def run(self) -> None:
        while True:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak = max(self.peak, int(line.split()[1]) / 1024)
            time.sleep(0.01)


def medimg_child(folder: Path, args) -> None:
    from medimg.config import AugmentConfig, DatasetConfig, ModelParams, TrainConfig
    from medimg.model import training

    data = training.prepare_data(DatasetConfig(path=str(folder), image_size=args.image_size, color=args.color))
    config = TrainConfig(epochs=1, early_stopping_patience=0, reduce_lr_patience=0)
    training.fit_model(ModelParams(), data, AugmentConfig(), config, callbacks=[])


def seed_child(folder: Path, args) -> None:
    import keras

    from medimg.config import ModelParams
    from medimg.model import models

    paths, labels, _ = common.class_folder_files(folder)
    images = common.seed_load(paths, args.image_size, args.color)
    targets = np.asarray(labels, dtype=np.float32).reshape(-1, 1)
    train = np.random.default_rng(0).random(len(images)) < 0.7
    keras.utils.set_random_seed(42)
    model = models.build_model(ModelParams(), images.shape[1:], 2)
    validation = (images[~train], targets[~train])
    model.fit(images[train], targets[train], batch_size=32, epochs=1, validation_data=validation, verbose=0)


def child(args) -> None:
    sampler = AnonSampler()
    sampler.start()
    common.configure_threads(args.intra, args.inter)
    folder = Path(args.child[1])
    seconds, _ = common.timed((seed_child if args.child[0] == "seed" else medimg_child), folder, args)
    current, peak = common.rss_mb()
    print(json.dumps({"vmhwm": peak, "anon_peak": sampler.peak, "rss_end": current, "seconds": seconds}))


def run_child(kind: str, folder: Path, cache: Path, args) -> dict:
    """One configuration in a fresh process; adds the kernel's ru_maxrss for exactly that child."""
    command = [sys.executable, __file__, "--child", kind, str(folder), "--image-size", str(args.image_size)]
    command += ["--color", args.color, "--intra", str(args.intra), "--inter", str(args.inter)]
    env = {**os.environ, "MEDIMG_CACHE_DIR": str(cache)}
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        lines = out.read().strip().splitlines()
    if process.returncode or not lines:
        raise RuntimeError(f"{kind} child on {folder} failed with exit code {process.returncode}")
    return {**json.loads(lines[-1]), "ru_maxrss": usage.ru_maxrss / 1024}


def measure(sizes: list[int], args, work: Path) -> dict[str, dict[int, dict]]:
    results: dict[str, dict[int, dict]] = {name: {} for name in APPROACHES}
    for n in sizes:
        folder = synth.synthesize(n, args.size, args.data)
        cache = work / f"cache-{n}"
        results[APPROACHES[0]][n] = run_child("medimg", folder, cache, args)
        results[APPROACHES[1]][n] = run_child("medimg", folder, cache, args)
        results[APPROACHES[2]][n] = run_child("seed", folder, cache, args)
        shutil.rmtree(cache, ignore_errors=True)
    return results


def slope(sizes: list[int], values: list[float]) -> float:
    """MB per 1,000 images by least squares (needs two sizes or more)."""
    return float(np.polyfit(np.asarray(sizes) / 1000, values, 1)[0]) if len(sizes) > 1 else float("nan")


def report(results: dict[str, dict[int, dict]], sizes: list[int], args) -> None:
    rows = []
    for name, by_size in results.items():
        for n in sizes:
            r = by_size[n]
            rows.append([name, n, r["vmhwm"], r["ru_maxrss"], r["anon_peak"], r["seconds"]])
    headers = ["approach", "images", "peak RSS MB (VmHWM)", "ru_maxrss MB", "peak anon MB", "seconds"]
    common.print_table(f"peak memory, one epoch, {args.image_size} px {args.color}", headers, rows)
    rows = []
    for name, by_size in results.items():
        rss = slope(sizes, [by_size[n]["vmhwm"] for n in sizes])
        anon = slope(sizes, [by_size[n]["anon_peak"] for n in sizes])
        rows.append([name, rss, anon])
    common.print_table("slope, MB per 1,000 images", ["approach", "peak RSS slope", "peak anon slope"], rows)
    megabytes = args.image_size**2 * (1 if args.color == "gray" else 3) * 1000 / 2**20
    print(f"\nfor scale: 1,000 images are {megabytes:.1f} MB as uint8, {4 * megabytes:.1f} MB as float32")


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,10000,20000", help="comma-separated image counts")
    parser.add_argument("--size", type=int, default=128, help="side of the synthetic JPEGs")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--color", choices=["gray", "rgb"], default="gray")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    sizes = [1000, 2000] if args.quick else [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="memory-", dir=common.bench_home()))
    try:
        report(measure(sizes, args, work), sizes, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
