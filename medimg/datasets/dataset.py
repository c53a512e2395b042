"""Dataset layouts (listing files without decoding them) and the train/val/test split.

Three layouts are understood: one folder per class; `train/`, `val/`, `test/` folders each holding class
folders; a CSV manifest with `path,label[,group][,split]` columns.

Class names (labels) are Unicode NFC (https://unicode.org/reports/tr15/): macOS writes folder names decomposed (NFD,
"i" + U+0301 for "í"), Windows and most zip tools composed, so the same class read from a zip and from a folder
would otherwise be two classes that print alike. File paths are kept exactly as on disk, so they still open.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import unicodedata
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medimg.errors import DatasetError
from medimg.imaging import images

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
MANIFEST_DELIMITERS = ",;\t"  # ';' is what spreadsheets write where the decimal mark is a comma
MACOS_CLUTTER = "__MACOSX"  # resource forks macOS Finder adds to zips; never a class
OUTSIDE_MANIFEST = "manifest path outside the manifest's folder: refused"
FOREIGN_ABSOLUTE = (
    "absolute path from another machine: not found here, nor by its tail under the CSV's folder; "
    "make paths relative to the CSV's folder"
)
_DRIVE = re.compile(r"^[A-Za-z]:")  # C: and the like, in paths written on Windows


@dataclasses.dataclass(frozen=True)
class ImageFile:
    """One labelled file of the dataset. `split` is '' when the dataset has no split folders."""

    path: str
    label: str
    split: str = ""
    group: str = ""


@dataclasses.dataclass(frozen=True)
class FileProblem:
    """A file (or, for a notice about the whole manifest, the manifest itself) and why it is not used as listed."""

    path: str
    reason: str


@dataclasses.dataclass
class Listing:
    """What a layout yields before any pixel is read.

    Attributes:
        root: the dataset folder, or the manifest file.
        layout: "class_folders", "split_folders" or "manifest".
        files: the labelled candidate files, in listing order.
        problems: files left out, each with its reason, and notices about the manifest as a whole (e.g. labels that
            differ only in case); the scan report shows them.
        empty_classes: class folders (NFC names, sorted) that hold no file at all in any split, hidden and system
            files such as `.gitkeep` or `.DS_Store` aside. Such a class is absent from `files`, so without this it
            would vanish silently; the scan report and training warn about it. Always empty for a manifest. A class
            with files in one split and none in another is not listed: per-split counts come from `files`.
    """

    root: str
    layout: str
    files: list[ImageFile]
    problems: list[FileProblem]
    empty_classes: tuple[str, ...] = ()


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
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir() and not p.is_symlink() and not images.is_ignored(p.name) and p.name != MACOS_CLUTTER
    )


def _class_name(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _split_dirs(root: Path) -> dict[str, Path]:
    found = {}
    for child in _class_dirs(root):
        split = SPLIT_ALIASES.get(child.name.lower())
        if split and split not in found:
            found[split] = child
    return found if "train" in found and len(found) >= 2 else {}


def check_path(path: str | Path) -> Path:
    """`path` with ~ expanded, when it exists. Raises DatasetError when it does not: said before a run is created
    for it, so a mistyped path leaves no failed run behind."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset path {path} does not exist; give a folder of class folders or a CSV manifest.")
    return path


def check_classes(path: str | Path) -> Listing:
    """The listing of `path` (`list_files`, no pixel read) when it names at least two classes. Raises DatasetError
    when the path does not exist, holds no file (`list_files`' errors) or one class only: said before a run is
    created for it, so such a folder leaves no failed run behind."""
    listing = list_files(path)
    labels = sorted({f.label for f in listing.files})
    if len(labels) < 2:
        found = f"only the class '{labels[0]}'" if labels else "no labelled file"
        raise DatasetError(
            f"{listing.root} has {found}; a classifier needs at least two classes (a folder of class folders, "
            "or a CSV manifest with two labels or more)."
        )
    return listing


def list_files(path: str | Path, group_regex: str = "", merge_label_case: bool = False) -> Listing:
    """List the labelled files of a dataset folder or CSV manifest, without decoding anything.

    Args:
        path: a folder of class folders, a folder of split folders holding class folders, or a `.csv` manifest.
        group_regex: a pattern whose first group, searched in each file name, is the file's group (patient).
        merge_label_case: for a manifest, merge labels that differ only in case ("Normal", "normal") into their most
            frequent spelling (the first seen on a tie). Off by default: such labels are kept apart and a notice
            naming them is added to `problems`.

    Returns:
        The Listing; labels are NFC and, in a manifest, stripped of surrounding whitespace.

    Raises:
        DatasetError: the path does not exist, is neither a folder nor a .csv, holds no file, or the manifest cannot
            be read (not UTF-8, no 'path'/'label' header, a row without a label, a partly filled split column).
    """
    path = check_path(path)
    if path.is_file():
        if path.suffix.lower() != ".csv":
            hint = (
                " Unzip it first (the app's Dataset page also takes a .zip upload)."
                if path.suffix.lower() == ".zip"
                else ""
            )
            raise DatasetError(f"{path} is a file; give a folder of class folders or a CSV manifest (.csv).{hint}")
        listing = _list_manifest(path, merge_label_case)
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
    empty: set[str] = set()
    splits = _split_dirs(root_path)
    layout = "split_folders" if splits else "class_folders"
    for split, split_dir in splits.items() if splits else [("", root_path)]:
        for class_dir in _class_dirs(split_dir):
            found = _walk_images(class_dir, root, problems)
            files.extend(ImageFile(file, _class_name(class_dir.name), split) for file in found)
            if not found:
                empty.add(_class_name(class_dir.name))
        for loose in sorted(p for p in split_dir.iterdir() if p.is_file() and not images.is_ignored(p.name)):
            if not (loose.suffix.lower() in (".csv", ".md", ".txt", ".json") and split_dir == root_path):
                problems.append(FileProblem(str(loose), "file outside any class folder: ignored"))
    empty_classes = tuple(sorted(empty - {f.label for f in files}))
    return Listing(str(root_path), layout, files, problems, empty_classes)


def _list_manifest(manifest: Path, merge_label_case: bool) -> Listing:
    base = manifest.parent
    root = os.path.realpath(base)
    rows = _read_manifest(manifest)
    files, problems, by_tail = [], [], []
    for row in rows:
        given = (row.get("path") or "").strip()
        found, reason = _manifest_path(given, base, root)
        if reason:
            problems.append(FileProblem(given or "(empty path)", reason))
            continue
        if found != given and (given.startswith(("/", "\\")) or _DRIVE.match(given.replace("\\", "/"))):
            by_tail.append((given, found))
        split = SPLIT_ALIASES.get((row.get("split") or "").strip().lower(), "")
        label = _class_name((row.get("label") or "").strip())
        files.append(ImageFile(found, label, split, (row.get("group") or "").strip()))
    if any(not f.label for f in files):
        raise DatasetError(f"manifest {manifest} has rows without a label; every row needs one.")
    if files and any(f.split for f in files) and not all(f.split for f in files):
        raise DatasetError(f"manifest {manifest}: the split column must be filled for every row or for none.")
    files, notices = _label_case_variants(files, merge_label_case)
    if by_tail:  # found, but not where the manifest says: the user should know which files were matched
        given, found = by_tail[0]
        notices.append(
            f"{len(by_tail)} absolute path{'s' if len(by_tail) != 1 else ''} from another machine found under the "
            f"CSV's folder by {'their' if len(by_tail) != 1 else 'its'} tail (e.g. {given} -> "
            f"{os.path.relpath(found, base)}); make the paths relative to the CSV's folder to be sure"
        )
    problems.extend(FileProblem(str(manifest), notice) for notice in notices)
    return Listing(str(manifest), "manifest", files, problems)


def _read_manifest(manifest: Path) -> list[dict[str, str]]:
    """The rows of a manifest, keyed by its header, which must name 'path' and 'label' exactly.

    UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8" writes one); CRLF or LF line ends, which the csv
    module handles itself when the file is opened with newline="" (Python docs, csv module, footnote 1). The delimiter
    is sniffed (csv.Sniffer) among ',', ';' and tab. Raises DatasetError for anything unreadable."""
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            sample = handle.read(1 << 16)
            handle.seek(0)
            rows = list(csv.DictReader(handle, delimiter=_sniff_delimiter(sample)))
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"manifest {manifest} is not UTF-8 text (byte {error.start} cannot be decoded); "
            "save it as 'CSV UTF-8' and try again."
        ) from error
    except (OSError, csv.Error) as error:
        raise DatasetError(f"cannot read manifest {manifest}: {error}") from error
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DatasetError(f"manifest {manifest} needs a header with at least 'path' and 'label' columns.")
    return rows


def _sniff_delimiter(sample: str) -> str:
    complete = sample[: sample.rfind("\n") + 1] or sample  # a cut last line would mislead the sniffer
    try:
        sniffed = csv.Sniffer().sniff(complete, delimiters=MANIFEST_DELIMITERS).delimiter
    except csv.Error:
        sniffed = ","
    # The header settles what the sniffer can get wrong, e.g. on a path holding a ';'.
    header = complete.splitlines()[0] if complete else ""
    for delimiter in (sniffed, *MANIFEST_DELIMITERS):
        if {"path", "label"} <= set(header.split(delimiter)):
            return delimiter
    return sniffed


def _manifest_path(given: str, base: Path, root: str) -> tuple[str, str]:
    """The file a manifest row names, as (path, "") or ("", reason it is left out).

    Backslashes are separators (Windows); a file name holding a backslash cannot be named in a manifest. A relative
    path must stay inside the manifest's folder. An absolute path is used if it exists inside that folder; if it does
    not exist (written on another machine), its longest tail that names a file under the folder is used
    (`C:\\x\\images\\a.png` -> `images/a.png`); an absolute path elsewhere that exists is refused as before."""
    if not given:
        return "", "row without a path: skipped"
    if "\x00" in given:  # the OS refuses such a name outright (ValueError), and no file can carry one
        return "", "path holds a NUL character (a damaged export?): skipped"
    text = given.replace("\\", "/")
    if not (text.startswith("/") or _DRIVE.match(text)):
        full = os.path.realpath(base / text)
        return (str(base / text), "") if _within(full, root) else ("", OUTSIDE_MANIFEST)
    if os.path.exists(text):
        return (text, "") if _within(os.path.realpath(text), root) else ("", OUTSIDE_MANIFEST)
    tail = _existing_tail(text, base, root)
    return (tail, "") if tail else ("", FOREIGN_ABSOLUTE)


def _existing_tail(text: str, base: Path, root: str) -> str:
    parts = [part for part in _DRIVE.sub("", text).split("/") if part not in ("", ".")]
    if ".." in parts:
        return ""
    for start in range(len(parts)):  # longest first: images/normal/a.png before normal/a.png before a.png
        candidate = base.joinpath(*parts[start:])
        if candidate.is_file() and _within(os.path.realpath(candidate), root):
            return str(candidate)
    return ""


def _label_case_variants(files: list[ImageFile], merge: bool) -> tuple[list[ImageFile], list[str]]:
    """Labels that differ only in case: a notice per set, and the files relabelled when `merge` is set."""
    spellings: dict[str, Counter[str]] = defaultdict(Counter)
    for file in files:
        spellings[file.label.casefold()][file.label] += 1
    notices, rename = [], {}
    for counts in spellings.values():
        if len(counts) < 2:
            continue
        names = sorted(counts)
        listed = ", ".join(f"'{name}'" for name in names[:-1]) + f" and '{names[-1]}'"
        if merge:
            kept = counts.most_common(1)[0][0]  # ties keep the first spelling seen
            rename.update({name: kept for name in names})
            notices.append(f"labels {listed} differ only in case: merged as '{kept}'")
        else:
            notices.append(
                f"labels {listed} differ only in case: kept apart; merge them with --merge-label-case (CLI) or "
                "'Merge labels that differ only in case' (Dataset page)"
            )
    if rename:
        files = [dataclasses.replace(f, label=rename.get(f.label, f.label)) for f in files]
    return files, notices


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


def cross_validation_folds(
    labels: np.ndarray, groups: list[str] | None, folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`folds` (train indices, validation indices) pairs over N cases with N `labels`: stratified by label, and
    never splitting a group (patient) when `groups` are given (scikit-learn's StratifiedGroupKFold, else
    StratifiedKFold; shuffled with `seed`). Every case is validated on exactly once.

    Raises DatasetError when a class has fewer cases (or patients) than folds: some held-out fold would lack it,
    and a validation AUC without one class is undefined (Keras reports it as 0)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = np.asarray(labels)
    kind = "patients (groups)" if groups else "training images"
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        units = len({groups[i] for i in members}) if groups else len(members)
        if units < folds:
            raise DatasetError(
                f"{folds}-fold cross-validation needs at least {folds} {kind} of every class; class {value} has "
                f"{units}. Use fewer folds (or none)."
            )
    with warnings.catch_warnings():
        # A class with fewer cases than folds is still spread as evenly as it can be; scikit-learn warns of it.
        warnings.filterwarnings("ignore", message="The least populated class")
        if groups:
            splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
            return list(splitter.split(labels, labels, groups))
        return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(labels, labels))


def manifest_hint(root: str | Path) -> str:
    """' A CSV manifest is in the folder: choose ... instead.' when the dataset folder given holds CSV files (the
    manifest was probably meant, and its images' folder was read as one class); '' otherwise."""
    folder = Path(root)
    manifests = sorted(str(m) for m in folder.glob("*.csv")) if folder.is_dir() else []
    return f" A CSV manifest is in this folder: choose {manifests[0]} instead." if manifests else ""


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
        # A class with one file cannot be stratified; it stays in the first part, and the others stay stratified
        # (one such class used to turn stratification off for the whole dataset).
        singles = [i for i, label in enumerate(labels) if counts[label] < 2]
        rest = [i for i, label in enumerate(labels) if counts[label] >= 2]
        rest_labels = [labels[i] for i in rest]
        count = max(len(set(rest_labels)), round(fraction * len(files)))
        if len(rest) < 2 or count >= len(rest):
            return list(files), []
        keep, take = train_test_split(rest, test_size=count, random_state=seed, stratify=rest_labels)
        keep = [*keep, *singles]
    return [files[i] for i in sorted(keep)], [files[i] for i in sorted(take)]
