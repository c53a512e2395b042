"""Exports: every format of one run, its file size, parity figure and single-image latency in its own runtime,
against medimg's `Predictor` timed in the same invocation (the baseline; ratio = Predictor ms / format ms).

A run is trained first on the bundled demo X-rays (one epoch, default `ModelParams` at 64 px gray, or the tiny
test network with `--tiny`) in a temporary runs folder; each format is exported with `medimg.export.export_run`
(parity-checked there on 32 test images) and timed over 300 calls after 20 warm-up calls, medians:
- forward: one preprocessed 1×H×W×C float32 image through the format's runtime;
- file → probabilities: the same plus `images.load_image` of the JPEG.

    python bench/exports.py [--size 64] [--tiny]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import common  # noqa: F401  (puts the project on sys.path, as the other bench scripts do)
import numpy as np

from medimg import export, jobs
from medimg.config import DatasetConfig, ModelParams, RunSpec, TrainConfig
from medimg.results.predict import Predictor
from medimg.store import runs

DEMO = Path(__file__).resolve().parents[1] / "medimg" / "demo" / "chest_xray_mini"
FORMATS = [("keras", None), ("saved_model", None), ("onnx", None), ("litert", None), ("litert", "float16"),
           ("litert", "int8")]  # fmt: skip


def timed(function: Callable[[], object], calls: int = 300) -> float:
    """Median milliseconds per call after 20 warm-up calls."""
    for _ in range(20):
        function()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny network instead of the defaults")
    args = parser.parse_args()
    params = ModelParams(filters=(4, 8), dense_units=8, batch_size=16) if args.tiny else ModelParams()
    spec = RunSpec(
        kind="train",
        dataset=DatasetConfig(path=str(DEMO), image_size=args.size, color="gray"),
        params=params,
        train=TrainConfig(epochs=1, early_stopping_patience=0, reduce_lr_patience=0),
    )
    root = tempfile.mkdtemp(prefix="medimg-bench-exports-")
    run = runs.create_run(spec, root)
    jobs.execute(run)
    image_path = sorted((DEMO / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    predictor = Predictor(run)
    pixels = predictor.prepare(image_path)[None].astype(np.float32)
    base_forward = timed(lambda: predictor.predict_images(pixels))
    base_file = timed(lambda: predictor.predict([("x", image_path)]))
    print(f"{args.size} px gray, {'tiny' if args.tiny else 'default'} network, model.keras "
          f"{run.model_path.stat().st_size / 1024:.1f} KB")  # fmt: skip
    print("| format | file size | parity max abs diff | forward ms | ratio | file → probabilities ms | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| medimg Predictor (baseline) | – | – | {base_forward:.3f} | 1.00 | {base_file:.3f} | 1.00 |")
    for fmt, quantize in FORMATS:
        result = export.export_run(run, fmt, Path(root) / "exports", quantize)
        forward = export.runtime_predictor(fmt, result.path)

        def file_to_probabilities(forward=forward) -> object:
            return forward(predictor.prepare(image_path)[None].astype(np.float32))  # the run's own contract

        forward_ms = timed(lambda forward=forward: forward(pixels))
        file_ms = timed(file_to_probabilities)
        name = fmt + (f" {quantize}" if quantize else "")
        print(
            f"| {name} | {result.size_bytes / 1024:.1f} KB | {result.max_abs_diff:.1e} | {forward_ms:.3f} | "
            f"{base_forward / forward_ms:.2f} | {file_ms:.3f} | {base_file / file_ms:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
