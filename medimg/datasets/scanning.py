"""Scanning a dataset: every file read and checked once, in threads, into a `ScanReport` (classes, splits, sizes,
formats, unreadable files with their reasons, identical-pixel duplicates and cross-split leakage), cached by path,
size and modification time so a second scan of an unchanged folder decodes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from medimg.datasets import datachecks
from medimg.datasets.dataset import SPLIT_NAMES, ImageFile, Listing, ProgressCallback, list_files, manifest_hint
from medimg.errors import ImageReadError, file_reason
from medimg.imaging import images


@dataclasses.dataclass
class ScanReport:
    """What is in a dataset: the JSON shape `medimg scan --json` prints."""

    root: str
    layout: str
    classes: dict[str, int]
    splits: dict[str, dict[str, int]]
    sizes: dict[str, int]
    modes: dict[str, int]
    unreadable: list[dict[str, str]]
    duplicates: list[list[str]]
    leakage: list[list[str]]
    files: list[ImageFile] = dataclasses.field(repr=False, default_factory=list)
    notes: list[dict[str, str]] = dataclasses.field(default_factory=list)  # readable, but with a caveat
    # What training will do about the classes and splits (`datachecks`): a left-out class, a one-class split.
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        return sorted(self.classes)

    @property
    def image_count(self) -> int:
        return sum(self.classes.values())

    def to_dict(self, include_files: bool = False) -> dict:
        data = dataclasses.asdict(self)
        data["images"] = self.image_count
        if not include_files:
            data.pop("files")
        return data


Inspection = tuple[images.ImageInfo | None, str]  # (info, pixel key) of a readable file, (None, reason) if not
# Files per thread-pool task. With one task per file the pool's own work (futures, locks, waking threads) ate the
# gain of a second thread on 2 cores (566 full decodes: 0.081 s in one thread, 0.078 s in two, 0.051 s in two with
# 16 files per task); from 48 to 1,024 files per task the scan took about the same time. At least 8 tasks per
# thread keep every thread busy until the end.
MAX_CHUNK = 256
MIN_CHUNK = 8


def inspect_file(path: str) -> tuple[Inspection, list[int] | None]:
    """Read and inspect one file (`images.inspect`), and its (size, mtime) as read, for the scan cache."""
    try:
        data, status = images.read_file(path)
    except ImageReadError as error:
        return (None, str(error)), _ScanCache.stamp(path)
    stamp = [status.st_size, status.st_mtime_ns]
    try:
        return images.inspect(data), stamp
    except Exception as error:  # one file's decoder failure is that file's reason; the scan goes on
        return (None, file_reason(error)), stamp


def exact_key(path: str) -> str:
    """'exact:' + the digest of a file's fully decoded pixels (as `decode` gives them, EXIF orientation applied)."""
    try:
        pixels, _ = images.decode(images.read_bytes(path))
    except Exception:  # inspected once, so any failure now means it changed
        return f"unconfirmed:{path}"  # changed since it was inspected: not called a duplicate of anything
    return "exact:" + images.pixel_digest(pixels)


def scan(
    path: str | Path,
    group_regex: str = "",
    on_progress: ProgressCallback | None = None,
    workers: int | None = None,
    merge_label_case: bool = False,
) -> ScanReport:
    """Inspect every new or changed file once (in threads: OpenCV and hashlib release the GIL) and report what
    the dataset holds. Results are cached by path, size and modification time, so scanning an unchanged folder
    again decodes nothing. Duplicates are files with identical decoded pixels: JPEGs are first compared by a
    cheap candidate key (see `images.inspect`) and only those whose candidates meet are decoded in full."""
    listing = list_files(path, group_regex, merge_label_case)
    paths = [f.path for f in listing.files]
    cache = _ScanCache(listing.root)
    results: list[Inspection | None] = [cache.get(p) for p in paths]
    todo = [i for i, result in enumerate(results) if result is None]
    workers = workers or min(8, os.cpu_count() or 2)  # one thread per core: more only contend for the GIL
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = 0
        for chunk, inspected in _map_in_chunks(pool, workers, lambda i: inspect_file(paths[i]), todo):
            for index, (result, stamp) in zip(chunk, inspected, strict=True):
                results[index] = result
                cache.put(paths[index], result, stamp)
            done += len(chunk)
            if on_progress:
                on_progress(done, len(todo), "scanning images")
        _confirm_candidates(paths, results, cache, pool, workers)  # type: ignore[arg-type]
    cache.save()
    return _report(listing, results)  # type: ignore[arg-type]


def candidates_to_confirm(results: list[Inspection]) -> list[int]:
    """Files whose candidate key may hide identical pixels: it equals another file's candidate, or another
    format's file has the same width, height and channels (a JPEG saved again as PNG keeps its pixels)."""
    by_candidate: dict[str, list[int]] = defaultdict(list)
    exact_shapes = set()
    for index, (info, key) in enumerate(results):
        if info is not None and key.startswith("candidate:"):
            by_candidate[key].append(index)
        elif info is not None:
            exact_shapes.add((info.width, info.height, info.channels))
    return sorted(
        index
        for indices in by_candidate.values()
        for index in indices
        if len(indices) > 1 or (exact_shapes and _shape(results[index][0]) in exact_shapes)
    )


def _shape(info: images.ImageInfo | None) -> tuple[int, int, int]:
    return (info.width, info.height, info.channels) if info else (0, 0, 0)


def _confirm_candidates(
    paths: list[str], results: list[Inspection], cache: _ScanCache, pool: ThreadPoolExecutor, workers: int
) -> None:
    """Replace the candidate keys that need it by exact ones (from the cache, else by a full decode)."""
    todo = []
    for index in candidates_to_confirm(results):
        known = cache.exact(paths[index])
        if known:
            results[index] = (results[index][0], known)
        else:
            todo.append(index)
    for chunk, keys in _map_in_chunks(pool, workers, lambda i: exact_key(paths[i]), todo):
        for index, key in zip(chunk, keys, strict=True):
            results[index] = (results[index][0], key)
            cache.put_exact(paths[index], key)


def _map_in_chunks(pool: ThreadPoolExecutor, workers: int, function: Callable, items: list) -> Iterator:
    """(chunk, [function(item) for item in chunk]) for consecutive chunks of `items`, computed in the pool."""
    size = max(MIN_CHUNK, min(MAX_CHUNK, len(items) // (8 * workers)))
    chunks = [items[start : start + size] for start in range(0, len(items), size)]
    return zip(chunks, pool.map(lambda chunk: [function(item) for item in chunk], chunks), strict=True)


class _ScanCache:
    """Per-dataset cache of `inspect_file` results keyed by (path, size, mtime), in the array cache's folder.

    An entry is [size, mtime_ns, info fields or None, key or reason, exact key or ""].
    """

    VERSION = 3  # 2: JPEG keys are candidates (images.inspect), with the exact key once one was needed; 3: every
    # ImageInfo field (sample_format: a float file is listed as float)

    def __init__(self, root: str) -> None:
        from medimg.datasets.cache import cache_dir

        key = hashlib.sha256(f"{self.VERSION}|{os.path.realpath(root)}".encode()).hexdigest()[:24]
        self.path = cache_dir() / "scans" / f"{key}.json"
        try:
            self.entries: dict[str, list] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.fresh: dict[str, list] = {}

    @staticmethod
    def stamp(path: str) -> list[int] | None:
        try:
            status = os.stat(path)
        except OSError:
            return None
        return [status.st_size, status.st_mtime_ns]

    def get(self, path: str) -> Inspection | None:
        entry = self.entries.get(path)
        if not entry or entry[:2] != self.stamp(path):
            return None
        self.fresh[path] = entry
        return (images.ImageInfo(*entry[2]) if entry[2] else None), entry[3]

    def put(self, path: str, result: Inspection, stamp: list[int] | None) -> None:
        info, detail = result
        if stamp is not None:
            fields = dataclasses.astuple(info) if info else None
            self.fresh[path] = [*stamp, fields, detail, ""]

    def exact(self, path: str) -> str:
        entry = self.fresh.get(path)
        return entry[4] if entry else ""

    def put_exact(self, path: str, key: str) -> None:
        if path in self.fresh and not key.startswith("unconfirmed:"):
            self.fresh[path][4] = key

    def save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(self.fresh, separators=(",", ":"), check_circular=False))
            os.replace(temporary, self.path)
        except OSError:
            pass  # a read-only cache folder only costs the next scan its speed


def _report(listing: Listing, results: list[tuple[images.ImageInfo | None, str]]) -> ScanReport:
    classes: Counter[str] = Counter()
    splits: dict[str, Counter[str]] = defaultdict(Counter)
    sizes: Counter[tuple[int, int]] = Counter()
    modes: Counter[tuple[str, int, str]] = Counter()
    by_hash: dict[str, list[ImageFile]] = defaultdict(list)
    good: list[ImageFile] = []
    # A problem filed against the manifest itself (labels differing only in case) is about the dataset, not a file.
    unreadable = [{"path": p.path, "reason": p.reason} for p in listing.problems if p.path != listing.root]
    manifest_warnings = [p.reason for p in listing.problems if p.path == listing.root]
    notes: list[dict[str, str]] = []
    for file, (info, detail) in zip(listing.files, results, strict=True):
        if info is None:
            unreadable.append({"path": file.path, "reason": detail})
            continue
        good.append(file)
        classes[file.label] += 1
        if file.split:
            splits[file.split][file.label] += 1
        sizes[info.width, info.height] += 1  # counted as tuples, named once per distinct value below
        modes[info.format, info.channels, info.depth_name] += 1
        by_hash[detail].append(file)
        if info.note:
            notes.append({"path": file.path, "note": info.note})
    duplicates = [[f.path for f in group] for group in by_hash.values() if len(group) > 1]
    relabelled = [group for group in by_hash.values() if len({f.label for f in group}) > 1]
    listed = Counter(f.label for f in listing.files)
    warnings = manifest_warnings + datachecks.class_warnings(listed, classes, listing.empty_classes)
    if len(classes) == 1:  # make_splits refuses it; the scan says so first
        only = next(iter(classes))
        warnings.append(
            f"only one class ('{only}') has readable images: a classifier needs at least two, so training stops."
            + manifest_hint(listing.root)
        )
    warnings += datachecks.split_warnings(splits)
    if relabelled:  # the same pixels under two labels: one of them is wrong, whatever the model learns
        example = " == ".join(f"{f.path} ({f.label})" for f in relabelled[0][:2])
        warnings.append(
            f"{len(relabelled)} group{'s' if len(relabelled) != 1 else ''} of identical images carry different "
            f"labels, e.g. {example}: a labelling problem to settle before training."
        )
    leakage = [
        [f"{f.split}:{f.path}" for f in group] for group in by_hash.values() if len({f.split for f in group}) > 1
    ]
    return ScanReport(
        root=listing.root,
        layout=listing.layout,
        classes=dict(sorted(classes.items())),
        splits={s: dict(sorted(c.items())) for s, c in sorted(splits.items(), key=lambda kv: SPLIT_NAMES.index(kv[0]))},
        sizes={f"{width}x{height}": count for (width, height), count in sizes.most_common()},
        modes={
            f"{kind} {_mode_name(channels)} {depth}": count for (kind, channels, depth), count in modes.most_common()
        },
        unreadable=unreadable,
        duplicates=duplicates,
        leakage=leakage,
        files=good,
        notes=notes,
        warnings=warnings,
    )


def _mode_name(channels: int) -> str:
    return {1: "gray", 2: "gray+alpha", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels}-channel")
