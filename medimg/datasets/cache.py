"""Decode each image once per (file set, size, channel mode) into a memory-mapped array on disk.

Every epoch, trial and later run on the same files reads the cache instead of decoding JPEG/PNG/DICOM again.
The key covers each file's path, size and modification time, so a changed file makes a new cache entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from medimg.errors import file_reason
from medimg.imaging.contract import InputContract

CACHE_VERSION = 2  # 2: JPEGs decoded at a reduced DCT scale (images.load_image)
DECODE_CHUNK = 32  # files per thread-pool task
ProgressCallback = Callable[[int, int, str], None]


@dataclasses.dataclass
class CachedArrays:
    """Decoded images (N×H×W×C uint8, memory-mapped) with their labels and the files that failed."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    failures: list[dict[str, str]]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> CachedArrays:
        """The images, labels and paths at `indices` (a fold of a cross-validation), read into memory."""
        indices = np.asarray(indices, dtype=np.int64)
        return CachedArrays(
            np.asarray(self.images[indices]), self.labels[indices], [self.paths[i] for i in indices], []
        )


def cache_dir() -> Path:
    """Where arrays are cached: $MEDIMG_CACHE_DIR, else ~/.cache/medimg."""
    return Path(os.environ.get("MEDIMG_CACHE_DIR") or Path.home() / ".cache" / "medimg")


def cache_key(paths: list[str], contract: InputContract) -> str:
    """The cache entry's name: the contract (size, colour, DICOM window) and each file's path, size and mtime."""
    window = contract.dicom_window
    stamp = f"|{window[0]}|{window[1]}" if window else ""  # a DICOM window changes the decoded pixels
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{contract.image_size}|{contract.color}{stamp}".encode())
    for path in paths:
        try:
            stat = os.stat(path)
            # abspath, not realpath: resolving every path costs a syscall per folder level per file, and a file
            # reached by two paths only costs one extra cache entry.
            digest.update(f"|{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(f"|{path}|missing".encode())
    return digest.hexdigest()[:32]


def _decode_many(paths: list[str], contract: InputContract) -> list[np.ndarray | str]:
    """Decoded images, or the reason a file could not be read; one thread-pool task decodes many files, so the
    pool's per-task cost stays small next to decoding a small image (~0.1–0.3 ms)."""
    results: list[np.ndarray | str] = []
    for path in paths:
        try:
            results.append(contract.load(path))
        except Exception as error:  # one file's decoder failure is that file's reason; the others are trained on
            results.append(file_reason(error))
    return results


def load_arrays(
    paths: list[str],
    labels: list[int],
    contract: InputContract,
    on_progress: ProgressCallback | None = None,
    directory: Path | None = None,
) -> CachedArrays:
    """The decoded arrays (N×S×S×C uint8, S and C from `contract`) for these files, from the cache or decoded now
    (once, through `contract.load`) and cached."""
    directory = Path(directory or cache_dir())
    key = cache_key(paths, contract)
    meta_path, array_path = directory / f"{key}.json", directory / f"{key}.npy"
    if meta_path.exists() and array_path.exists():
        try:
            return _read_entry(meta_path, array_path, paths, labels)
        except (OSError, ValueError, KeyError):
            pass  # a damaged entry is rebuilt below
    directory.mkdir(parents=True, exist_ok=True)
    return _build_entry(meta_path, array_path, paths, labels, contract, on_progress)


def _read_entry(meta_path: Path, array_path: Path, paths: list[str], labels: list[int]) -> CachedArrays:
    meta = json.loads(meta_path.read_text())
    array = np.load(array_path, mmap_mode="r")[: meta["count"]]
    kept = meta["kept"]
    label_array = np.asarray([labels[i] for i in kept], dtype=np.int32)
    return CachedArrays(array, label_array, [paths[i] for i in kept], meta["failures"])


def _build_entry(
    meta_path: Path,
    array_path: Path,
    paths: list[str],
    labels: list[int],
    contract: InputContract,
    on_progress: ProgressCallback | None,
) -> CachedArrays:
    size, color, channels = contract.image_size, contract.color, contract.channels
    handle, temporary = tempfile.mkstemp(dir=meta_path.parent, suffix=".npy.tmp")
    os.close(handle)
    array = np.lib.format.open_memmap(
        temporary, mode="w+", dtype=np.uint8, shape=(max(1, len(paths)), size, size, channels)
    )
    kept: list[int] = []
    failures: list[dict[str, str]] = []
    workers = min(4, (os.cpu_count() or 2) + 1)
    chunks = [paths[start : start + DECODE_CHUNK] for start in range(0, len(paths), DECODE_CHUNK)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        decoded = itertools.chain.from_iterable(pool.map(lambda c: _decode_many(c, contract), chunks))
        for index, result in enumerate(decoded):
            if isinstance(result, str):
                failures.append({"path": paths[index], "reason": result})
            else:
                array[len(kept)] = result
                kept.append(index)
            if on_progress and ((index + 1) % 100 == 0 or index + 1 == len(paths)):
                on_progress(index + 1, len(paths), "decoding images into the cache")
    array.flush()
    del array
    os.replace(temporary, array_path)
    meta = {"count": len(kept), "kept": kept, "failures": failures, "size": size, "color": color}
    temporary_meta = meta_path.with_suffix(".json.tmp")
    temporary_meta.write_text(json.dumps(meta))
    os.replace(temporary_meta, meta_path)
    return _read_entry(meta_path, array_path, paths, labels)
