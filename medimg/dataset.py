"""Dataset layouts, the scan report and the train/val/test split.

Three layouts are understood: one folder per class; `train/`, `val/`, `test/` folders each holding class
folders; a CSV manifest with `path,label[,group][,split]` columns.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from medimg import images
from medimg.errors import DatasetError, ImageReadError

SPLIT_NAMES = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
ProgressCallback = Callable[[int, int, str], None]


@dataclasses.dataclass(frozen=True)
class ImageFile:
    """One labelled file of the dataset. `split` is '' when the dataset has no split folders."""

    path: str
    label: str
    split: str = ""
    group: str = ""


@dataclasses.dataclass(frozen=True)
class FileProblem:
    path: str
    reason: str


@dataclasses.dataclass
class Listing:
    """What a layout yields before any pixel is read."""

    root: str
    layout: str
    files: list[ImageFile]
    problems: list[FileProblem]


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


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _walk_images(folder: Path | str, root: str, problems: list[FileProblem]) -> list[str]:
    """Image candidates under `folder` (recursively, files before sub-folders, each sorted by name), refusing
    symlinks that leave the data root. Only links are resolved: a plain file under a plain folder is inside."""
    try:
        with os.scandir(folder) as scanned:
            entries = sorted((e for e in scanned if not images.is_ignored(e.name)), key=lambda e: e.name)
    except OSError:
        return []  # an unreadable folder is skipped, as os.walk does
    found: list[str] = []
    files: list[os.DirEntry] = []
    folders: list[str] = []
    for entry in entries:
        if not _is_folder(entry):
            files.append(entry)
        elif entry.is_symlink():
            problems.append(FileProblem(entry.path, "symbolic link to a folder: not followed"))
        else:
            folders.append(entry.path)
    for entry in files:
        if entry.is_symlink():
            real = os.path.realpath(entry.path)
            if not _within(real, root):
                problems.append(FileProblem(entry.path, "symbolic link pointing outside the dataset folder: refused"))
                continue
            if not os.path.exists(real):
                problems.append(FileProblem(entry.path, "broken or looping symbolic link"))
                continue
        found.append(entry.path)
    for sub_folder in folders:
        found.extend(_walk_images(sub_folder, root, problems))
    return found


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links, as os.walk sorts its entries
    except OSError:
        return False


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and not images.is_ignored(p.name))


def _split_dirs(root: Path) -> dict[str, Path]:
    found = {}
    for child in _class_dirs(root):
        split = SPLIT_ALIASES.get(child.name.lower())
        if split and split not in found:
            found[split] = child
    return found if "train" in found and len(found) >= 2 else {}


def list_files(path: str | Path, group_regex: str = "") -> Listing:
    """List the labelled files of a dataset folder or CSV manifest, without decoding anything."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset path {path} does not exist; give a folder of class folders or a CSV manifest.")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DatasetError(f"{path} is a file; give a folder of class folders or a CSV manifest (.csv).")
        listing = _list_manifest(path)
    else:
        listing = _list_folders(path)
    if group_regex:
        pattern = re.compile(group_regex)
        listing.files = [dataclasses.replace(f, group=f.group or _match_group(pattern, f.path)) for f in listing.files]
    if not listing.files:
        raise DatasetError(
            f"no image files found in {path}. Expected one sub-folder per class (e.g. NORMAL/, PNEUMONIA/), "
            "or train/, val/, test/ folders holding class folders, or a CSV manifest."
        )
    return listing


def _match_group(pattern: re.Pattern, path: str) -> str:
    match = pattern.search(os.path.basename(path))
    return match.group(1) if match else ""


def _list_folders(root_path: Path) -> Listing:
    root = os.path.realpath(root_path)
    problems: list[FileProblem] = []
    files: list[ImageFile] = []
    splits = _split_dirs(root_path)
    layout = "split_folders" if splits else "class_folders"
    for split, split_dir in splits.items() if splits else [("", root_path)]:
        for class_dir in _class_dirs(split_dir):
            for file in _walk_images(class_dir, root, problems):
                files.append(ImageFile(file, class_dir.name, split))
        for loose in sorted(p for p in split_dir.iterdir() if p.is_file() and not images.is_ignored(p.name)):
            if not (loose.suffix.lower() in (".csv", ".md", ".txt", ".json") and split_dir == root_path):
                problems.append(FileProblem(str(loose), "file outside any class folder: ignored"))
    return Listing(str(root_path), layout, files, problems)


def _list_manifest(manifest: Path) -> Listing:
    base = manifest.parent
    root = os.path.realpath(base)
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"cannot read manifest {manifest}: {error}") from error
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DatasetError(f"manifest {manifest} needs a header with at least 'path' and 'label' columns.")
    files, problems = [], []
    for row in rows:
        relative = (row.get("path") or "").strip()
        full = os.path.realpath(base / relative)
        if not relative or not _within(full, root):
            problems.append(
                FileProblem(relative or "(empty path)", "manifest path outside the manifest's folder: refused")
            )
            continue
        split = SPLIT_ALIASES.get((row.get("split") or "").strip().lower(), "")
        files.append(
            ImageFile(str(base / relative), (row.get("label") or "").strip(), split, (row.get("group") or "").strip())
        )
    if any(not f.label for f in files):
        raise DatasetError(f"manifest {manifest} has rows without a label; every row needs one.")
    layout = "manifest"
    if files and any(f.split for f in files) and not all(f.split for f in files):
        raise DatasetError(f"manifest {manifest}: the split column must be filled for every row or for none.")
    return Listing(str(manifest), layout, files, problems)


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
    except ImageReadError as error:
        return (None, str(error)), stamp


def exact_key(path: str) -> str:
    """'exact:' + the digest of a file's fully decoded pixels (as `decode` gives them, EXIF orientation applied)."""
    try:
        pixels, _ = images.decode(images.read_bytes(path))
    except ImageReadError:
        return f"unconfirmed:{path}"  # changed since it was inspected: not called a duplicate of anything
    return "exact:" + images.pixel_digest(pixels)


def scan(
    path: str | Path, group_regex: str = "", on_progress: ProgressCallback | None = None, workers: int | None = None
) -> ScanReport:
    """Inspect every new or changed file once (in threads: OpenCV and hashlib release the GIL) and report what
    the dataset holds. Results are cached by path, size and modification time, so scanning an unchanged folder
    again decodes nothing. Duplicates are files with identical decoded pixels: JPEGs are first compared by a
    cheap candidate key (see `images.inspect`) and only those whose candidates meet are decoded in full."""
    listing = list_files(path, group_regex)
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

    VERSION = 2  # 2: JPEG keys are candidates (images.inspect), with the exact key once one was needed

    def __init__(self, root: str) -> None:
        from medimg.cache import cache_dir

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
            fields = [info.format, info.width, info.height, info.channels, info.bit_depth, info.note] if info else None
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
    modes: Counter[tuple[str, int, int]] = Counter()
    by_hash: dict[str, list[ImageFile]] = defaultdict(list)
    good: list[ImageFile] = []
    unreadable = [{"path": p.path, "reason": p.reason} for p in listing.problems]
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
        modes[info.format, info.channels, info.bit_depth] += 1
        by_hash[detail].append(file)
        if info.note:
            notes.append({"path": file.path, "note": info.note})
    duplicates = [[f.path for f in group] for group in by_hash.values() if len(group) > 1]
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
            f"{kind} {_mode_name(channels)} {bits}-bit": count for (kind, channels, bits), count in modes.most_common()
        },
        unreadable=unreadable,
        duplicates=duplicates,
        leakage=leakage,
        files=good,
        notes=notes,
    )


def _mode_name(channels: int) -> str:
    return {1: "gray", 2: "gray+alpha", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels}-channel")


@dataclasses.dataclass
class Splits:
    """Train/val/test file lists. Labels index into `class_names` (sorted, as Keras' loader does)."""

    class_names: list[str]
    train: list[ImageFile]
    val: list[ImageFile]
    test: list[ImageFile]
    source: str

    def items(self) -> list[tuple[str, list[ImageFile]]]:
        return [("train", self.train), ("val", self.val), ("test", self.test)]

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: {c: sum(f.label == c for f in files) for c in self.class_names} for name, files in self.items()}

    def labels(self, split: str) -> list[int]:
        index = {name: i for i, name in enumerate(self.class_names)}
        return [index[f.label] for f in dict(self.items())[split]]

    def group_overlap(self) -> set[str]:
        """Groups (patients) present in more than one split: must be empty when groups are known."""
        seen = [{f.group for f in files if f.group} for _, files in self.items()]
        return (seen[0] & seen[1]) | (seen[0] & seen[2]) | (seen[1] & seen[2])


def make_splits(
    files: list[ImageFile], val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 42
) -> Splits:
    """Seeded, stratified, group-aware split; a dataset's own split folders are used as they are."""
    class_names = sorted({f.label for f in files})
    if not class_names:
        raise DatasetError("no readable images in this dataset; the scan report lists each file and why.")
    if len(class_names) < 2:
        raise DatasetError(
            f"only one class ({class_names[0]}) has readable images; a classifier needs at least two class folders."
        )
    given = {f.split for f in files}
    if given and "" not in given:
        train = [f for f in files if f.split == "train"]
        val = [f for f in files if f.split == "val"]
        test = [f for f in files if f.split == "test"]
        source = "dataset"
        if not test:
            train, test = _carve(train, test_fraction, seed)
            source = "dataset + test carved from train"
        if not val:
            train, val = _carve(train, val_fraction, seed)
            source = "dataset + val carved from train"
    else:
        rest, test = _carve(files, test_fraction, seed)
        train, val = _carve(rest, val_fraction / max(1e-9, 1 - test_fraction), seed + 1)
        source = "seeded stratified split" + (" by group" if any(f.group for f in files) else "")
    splits = Splits(class_names, train, val, test, source)
    missing = [c for c in class_names if not any(f.label == c for f in train)]
    if missing:
        raise DatasetError(f"class {', '.join(missing)} has no training images; add images or remove the class folder.")
    if not val:
        raise DatasetError("the validation split is empty; use a val_fraction above 0 or add a val/ folder.")
    return splits


def _carve(files: list[ImageFile], fraction: float, seed: int) -> tuple[list[ImageFile], list[ImageFile]]:
    """Take about `fraction` of files out, stratified by label and never splitting a group."""
    if fraction <= 0 or len(files) < 2:
        return list(files), []
    labels = [f.label for f in files]
    if any(f.group for f in files):
        from sklearn.model_selection import StratifiedGroupKFold

        groups = [f.group or f.path for f in files]
        n_splits = max(2, min(round(1 / fraction), len(set(groups))))
        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        keep, take = next(folds.split(files, labels, groups))
    else:
        from sklearn.model_selection import train_test_split

        counts = Counter(labels)
        stratify = labels if min(counts.values()) >= 2 else None
        count = max(len(counts) if stratify else 1, round(fraction * len(files)))
        if count >= len(files):
            return list(files), []
        keep, take = train_test_split(range(len(files)), test_size=count, random_state=seed, stratify=stratify)
    return [files[i] for i in sorted(keep)], [files[i] for i in sorted(take)]
