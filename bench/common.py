"""Shared helpers for the benchmarks: paths, thread settings, timing, tables and the seed tutorial's loader.

Importing this module puts the repository root on `sys.path` (so `import medimg` works from `python bench/x.py`)
and quiets TensorFlow's start-up chatter. Call `configure_threads` before the first TensorFlow operation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "chest_xray_pneumonia_mini"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Measured with bench/threads.py on 2 cores: TensorFlow's own defaults (0 = one thread per core) are as good as
# any explicit setting; see bench/README.md. 0 means "leave TensorFlow's default".
DEFAULT_INTRA_OP = 0
DEFAULT_INTER_OP = 0


def bench_home() -> Path:
    """Where synthetic sets, caches and temporary runs go: $MEDIMG_BENCH_DIR, else ~/.cache/medimg-bench."""
    path = Path(os.environ.get("MEDIMG_BENCH_DIR") or Path.home() / ".cache" / "medimg-bench")
    path.mkdir(parents=True, exist_ok=True)
    return path


def isolate_caches() -> Path:
    """medimg's caches (decoded arrays, scan results) go under the bench folder, never into the user's own.

    A folder already under the bench folder (set by a parent benchmark for its child process) is kept.
    """
    current = os.environ.get("MEDIMG_CACHE_DIR", "")
    if not current.startswith(str(bench_home())):
        os.environ["MEDIMG_CACHE_DIR"] = str(bench_home() / "medimg-cache")
    return Path(os.environ["MEDIMG_CACHE_DIR"])


def base_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the options every benchmark takes (--data, --quick, --intra, --inter); isolates the caches."""
    isolate_caches()
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="real dataset (split or class folders)")
    parser.add_argument("--quick", action="store_true", help="small sizes: finishes in about two minutes")
    parser.add_argument("--intra", type=int, default=DEFAULT_INTRA_OP, help="TF intra-op threads (0: TF default)")
    parser.add_argument("--inter", type=int, default=DEFAULT_INTER_OP, help="TF inter-op threads (0: TF default)")
    return parser


def configure_threads(intra: int = DEFAULT_INTRA_OP, inter: int = DEFAULT_INTER_OP) -> str:
    """Apply TensorFlow thread-pool sizes (before any op runs); returns a description for the table header."""
    import tensorflow as tf

    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    return f"intra-op {intra or 'TF default'}, inter-op {inter or 'TF default'}, OMP_NUM_THREADS {omp}"


def timed(function: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """(seconds, result) of one call `function(*args)`, by the monotonic performance counter."""
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}×" if denominator > 0 else "n/a"


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    met = value >= target if higher_is_better else value <= target
    return f"{'MET' if met else 'NOT MET'} ({value:.2f} vs target {'≥' if higher_is_better else '≤'} {target:g})"


def print_table(title: str, headers: list[str], rows: list[list[Any]]) -> None:
    """A Markdown table (pastes into the README as is), columns padded to line up in a terminal."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    load = os.getloadavg()[0]
    print(f"\n### {title} (1-min load average {load:.1f} on {os.cpu_count()} cores)\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    sys.stdout.flush()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def train_folder(data: Path) -> Path:
    """The folder of class folders to read: `data/train` for a split layout, else `data` itself."""
    return data / "train" if (data / "train").is_dir() else data


def class_folder_files(root: Path) -> tuple[list[str], list[int], list[str]]:
    """(paths, labels, class names) of a folder of class folders, classes sorted as Keras' loader sorts them."""
    class_names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels = [], []
    for index, name in enumerate(class_names):
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        paths += [str(f) for f in files]
        labels += [index] * len(files)
    return paths, labels, class_names


def seed_read(path: str, size: int, color: str) -> np.ndarray:
    """One image the seed tutorial's way: `cv2.imread` (BGR), its channel fixes, then resized to the model input."""
    import cv2

    image = cv2.imread(path)
    if image.ndim == 2 or image.shape[-1] == 1:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] > 3:
        image = image[:, :, :3]
    code = cv2.COLOR_BGR2GRAY if color == "gray" else cv2.COLOR_BGR2RGB
    image = cv2.resize(cv2.cvtColor(image, code), (size, size), interpolation=cv2.INTER_AREA)
    return image.reshape(size, size, -1)


def seed_load(paths: list[str], size: int, color: str) -> np.ndarray:
    """The seed tutorial's loader: a sequential `cv2.imread` loop into one array, rescaled to 0..1 in Python."""
    images = [seed_read(path, size, color) for path in paths]
    return np.array(images).astype("float32") / 255.0


def epoch_timer():
    """A Keras callback keeping each epoch's wall time in `.times` and its logs in `.logs` (imports Keras)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []
            self.logs: list[dict] = []
            self.ends: list[float] = []

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None) -> None:
            self.ends.append(time.perf_counter())
            self.times.append(self.ends[-1] - self.start)
            self.logs.append(dict(logs or {}))

    return EpochTimer()


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS = VmHWM) of this process in MB, from /proc/self/status."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)
