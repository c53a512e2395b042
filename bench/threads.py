"""Which TensorFlow thread settings and dtype policies are best here: training throughput and single-image latency.

Each setting (tf.config.threading intra/inter-op pool sizes, OMP_NUM_THREADS, Keras' dtype policy: float32 or
mixed precision with bfloat16 or float16) runs in a fresh subprocess, because thread pools are fixed once
TensorFlow starts. The work is the default model (`ModelParams()`, 64×64 gray) fitted through medimg's pipeline
(`make_dataset`, flip + rotation) on in-memory arrays, then 100 single-image calls. Settings are run round-robin
(ABCD ABCD ...) so a noisy neighbour hurts all of them alike; medians are shown, relative to TensorFlow's defaults
measured in the same invocation.

    python bench/threads.py [--quick] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import common
import numpy as np

# (label, intra, inter, OMP_NUM_THREADS or None, Keras dtype policy)
SETTINGS = [
    ("TF default", 0, 0, None, "float32"),
    ("intra 1 / inter 1", 1, 1, None, "float32"),
    ("intra 2 / inter 1", 2, 1, None, "float32"),
    ("intra 2 / inter 2", 2, 2, None, "float32"),
    ("intra 4 / inter 2", 4, 2, None, "float32"),
    ("TF default, OMP 1", 0, 0, "1", "float32"),
    ("TF default, OMP 2", 0, 0, "2", "float32"),
    ("intra 2 / inter 2, OMP 2", 2, 2, "2", "float32"),
    # Mixed precision: bfloat16 has hardware support on CPUs with AVX512_BF16 / AMX; float16 is meant for GPUs.
    ("TF default, mixed_bfloat16", 0, 0, None, "mixed_bfloat16"),
    ("TF default, mixed_float16", 0, 0, None, "mixed_float16"),
]
QUICK_SETTINGS = [0, 1, 3, 6, 8]


def child(index: int, steps: int) -> dict:
    """In a fresh process: images/s of training and p50 latency of one-image model calls."""
    _, intra, inter, _, policy = SETTINGS[index]
    common.configure_threads(intra, inter)
    import keras

    keras.mixed_precision.set_dtype_policy(policy)

    from medimg.config import AugmentConfig, ModelParams
    from medimg.datasets import pipeline
    from medimg.datasets.cache import CachedArrays
    from medimg.model import models

    rng = np.random.default_rng(0)
    count = 32 * steps
    arrays = CachedArrays(rng.integers(0, 256, (count, 64, 64, 1), dtype=np.uint8), rng.integers(0, 2, count), [], [])
    augment = AugmentConfig(flip_horizontal=True, rotation=0.05)
    train = pipeline.make_dataset(arrays, 32, 2, training=True, augment=augment)
    keras.utils.set_random_seed(0)
    model = models.build_model(ModelParams(), (64, 64, 1), 2)
    model.fit(train.take(5), epochs=1, verbose=0)  # warm-up: tracing, thread pools
    start = time.perf_counter()
    model.fit(train, epochs=2, verbose=0, shuffle=False)
    images_per_second = 2 * count / (time.perf_counter() - start)
    one = np.asarray(arrays.images[:1], dtype=np.float32)
    latencies = []
    for _ in range(110):
        begin = time.perf_counter()
        model(one, training=False)
        latencies.append(time.perf_counter() - begin)
    return {"images_per_second": images_per_second, "latency_ms": 1000 * common.median(latencies[10:])}


def run_setting(index: int, steps: int) -> dict:
    omp = SETTINGS[index][3]
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if omp:
        env["OMP_NUM_THREADS"] = omp
    command = [sys.executable, __file__, "--child", str(index), "--steps", str(steps)]
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="round-robin repetitions of every setting")
    parser.add_argument("--steps", type=int, default=60, help="training batches of 32 per epoch")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.steps)))
        return
    chosen = QUICK_SETTINGS if args.quick else list(range(len(SETTINGS)))
    rounds, steps = (1, 25) if args.quick else (args.rounds, args.steps)
    results: dict[int, list[dict]] = {i: [] for i in chosen}
    for _ in range(rounds):
        for index in chosen:
            results[index].append(run_setting(index, steps))
    report(results, rounds, steps)


def report(results: dict[int, list[dict]], rounds: int, steps: int) -> None:
    base_speed = common.median([r["images_per_second"] for r in results[0]])
    base_latency = common.median([r["latency_ms"] for r in results[0]])
    rows = []
    for index, runs in results.items():
        speed = common.median([r["images_per_second"] for r in runs])
        latency = common.median([r["latency_ms"] for r in runs])
        rows.append(
            [SETTINGS[index][0], f"{speed:.0f}", common.ratio(speed, base_speed), f"{latency:.2f}",
             common.ratio(base_latency, latency)]
        )  # fmt: skip
    common.print_table(
        f"Thread settings, {os.cpu_count()} cores: default model 64×64×1, {steps} batches of 32 × 2 epochs, "
        f"median of {rounds} round(s)",
        ["setting", "train img/s", "speed vs default", "1-image call p50 ms", "latency gain vs default"],
        rows,
    )


if __name__ == "__main__":
    main()
