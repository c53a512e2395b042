"""A larger synthetic dataset made by resampling the real chest X-rays (small random crops and flips).

`synthesize(n, size)` writes `n` JPEGs of `size`×`size` pixels into one folder per class (classes balanced, drawn
from every split of the source) and returns the folder. It is made once and cached on disk under
`bench_home()`; a folder is only used when its `.complete` marker exists, so an interrupted run is redone.
Image `i` depends only on (seed, i), so the first 5,000 images of a 20,000 set equal the 5,000 set.

    python bench/synth.py --n 20000 --size 128        # prints the folder
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common
import cv2
import numpy as np


def source_images(source: Path) -> dict[str, list[np.ndarray]]:
    """Every real image of the source, decoded (BGR), grouped by class folder name (all splits together)."""
    by_class: dict[str, list[np.ndarray]] = {}
    for path in sorted(source.rglob("*")):
        if path.suffix.lower() in common.IMAGE_SUFFIXES and not path.name.startswith("."):
            image = cv2.imread(str(path))
            if image is not None:
                by_class.setdefault(path.parent.name, []).append(image)
    if len(by_class) < 2:
        raise SystemExit(f"{source} has fewer than two class folders with images; give --data a real dataset.")
    return by_class


def resample(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop of 85–100 % of the side, flipped half the time, resized to `size`."""
    height, width = image.shape[:2]
    side = int(rng.integers(int(0.85 * min(height, width)), min(height, width) + 1))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    crop = image[top : top + side, left : left + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    interpolation = cv2.INTER_AREA if side >= size else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=interpolation)


def synthetic_folder(n: int, size: int, source: Path, seed: int) -> Path:
    return common.bench_home() / f"synth-{source.name}-n{n}-px{size}-seed{seed}"


def synthesize(n: int, size: int = 128, source: Path = common.DEFAULT_DATA, seed: int = 0) -> Path:
    """The folder of `n` synthetic images (class folders), made now if it is not on disk yet."""
    folder = synthetic_folder(n, size, source, seed)
    if (folder / ".complete").exists():
        return folder
    by_class = source_images(source)
    classes = sorted(by_class)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for name in classes:
        (partial / name).mkdir(parents=True)

    def write(index: int) -> None:
        rng = np.random.default_rng([seed, index])
        name = classes[index % len(classes)]
        image = by_class[name][int(rng.integers(len(by_class[name])))]
        cv2.imwrite(str(partial / name / f"synth_{index:06d}.jpg"), resample(image, size, rng))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(write, range(n), chunksize=64))
    (partial / ".complete").write_text(json.dumps({"n": n, "size": size, "seed": seed, "source": str(source)}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return folder


def main() -> None:
    parser = common.base_parser("Make (or find) a synthetic dataset resampled from the real X-rays.")
    parser.add_argument("--n", type=int, default=20000, help="number of images")
    parser.add_argument("--size", type=int, default=128, help="side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    seconds, folder = common.timed(lambda: synthesize(args.n, args.size, args.data, args.seed))
    print(f"{folder}  ({args.n} images, {args.size} px, {seconds:.1f} s)")


if __name__ == "__main__":
    main()
