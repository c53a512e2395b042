"""Dataset layouts (listing files without decoding them) and the train/val/test split.

Three layouts are understood: one folder per class; `train/`, `val/`, `test/` folders each holding class
folders; a CSV manifest with `path,label[,group][,split]` columns.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from medimg import images
from medimg.errors import DatasetError

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
