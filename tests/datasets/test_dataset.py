"""Dataset layouts (class folders, split folders, manifests, links) and the train/val/test splits."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from medimg.datasets import dataset
from medimg.errors import DatasetError

GROUP_REGEX = r"^(person\d+|IM-\d+)"


def write_png(path: Path, seed: int, size: int = 8) -> Path:
    """A small PNG with content unique to `seed` (so no two test images are duplicates)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return path


def make_class_folders(root: Path, counts: dict[str, int], start: int = 0) -> Path:
    seed = start
    for label, count in counts.items():
        for i in range(count):
            write_png(root / label / f"{label}_{i:03d}.png", seed)
            seed += 1
    return root


def names(files: list[dataset.ImageFile]) -> set[str]:
    return {Path(f.path).name for f in files}


# ---------------------------------------------------------------- layouts


def test_class_folders_layout_ignores_hidden_and_system_files(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", {"benign": 3, "malignant": 2})
    (root / "benign" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "benign" / "._benign_000.png").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    (root / "benign" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    write_png(root / ".trash" / "old.png", 99)  # hidden folder at the class level
    write_png(root / "benign" / ".cache" / "x.png", 98)  # hidden folder inside a class
    (root / "README.md").write_text("about this dataset")  # documentation next to the classes is fine
    listing = dataset.list_files(root)
    assert listing.layout == "class_folders"
    assert Counter(f.label for f in listing.files) == {"benign": 3, "malignant": 2}
    assert all(f.split == "" for f in listing.files)
    assert not any(Path(f.path).name.startswith(".") or f.path.endswith("Thumbs.db") for f in listing.files)
    assert listing.problems == []


def test_loose_image_next_to_class_folders_is_reported(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", {"a": 2, "b": 2})
    loose = write_png(root / "stray.png", 50)
    listing = dataset.list_files(root)
    assert [(p.path, p.reason) for p in listing.problems] == [(str(loose), "file outside any class folder: ignored")]


def test_split_folders_layout_with_aliases(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_class_folders(root / "Training", {"a": 3, "b": 3}, start=0)
    make_class_folders(root / "validation", {"a": 1, "b": 1}, start=100)
    make_class_folders(root / "test", {"a": 2, "b": 2}, start=200)
    listing = dataset.list_files(root)
    assert listing.layout == "split_folders"
    counts = Counter((f.split, f.label) for f in listing.files)
    assert counts == {
        ("train", "a"): 3,
        ("train", "b"): 3,
        ("val", "a"): 1,
        ("val", "b"): 1,
        ("test", "a"): 2,
        ("test", "b"): 2,
    }


def test_a_class_named_like_a_split_does_not_make_split_folders(tmp_path: Path) -> None:
    # Only "train" alone (without val/test) is just a class folder called train.
    root = make_class_folders(tmp_path / "data", {"train": 2, "other": 2})
    assert dataset.list_files(root).layout == "class_folders"


def test_nested_files_are_listed_by_name_before_their_sub_folders(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", {"a": 0, "b": 1})
    for seed, relative in enumerate(["a/z.png", "a/sub/b.png", "a/m.png", "a/sub/deeper/c.png", "a/sub2/a.png"]):
        write_png(root / relative, 100 + seed)
    listing = dataset.list_files(root)
    assert [os.path.relpath(f.path, root) for f in listing.files] == [
        "a/m.png",
        "a/z.png",
        "a/sub/b.png",
        "a/sub/deeper/c.png",
        "a/sub2/a.png",
        "b/b_000.png",
    ]


def test_manifest_layout_with_groups(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", {"a": 2, "b": 2})
    manifest = root / "labels.csv"
    manifest.write_text(
        "path,label,group\n"
        "a/a_000.png,a,patient1\n"
        "a/a_001.png,a,patient1\n"
        "b/b_000.png,b,patient2\n"
        "b/b_001.png,b,patient3\n"
        "../outside.png,b,patient4\n"
    )
    listing = dataset.list_files(manifest)
    assert listing.layout == "manifest"
    assert [(Path(f.path).name, f.label, f.group, f.split) for f in listing.files] == [
        ("a_000.png", "a", "patient1", ""),
        ("a_001.png", "a", "patient1", ""),
        ("b_000.png", "b", "patient2", ""),
        ("b_001.png", "b", "patient3", ""),
    ]
    assert [(p.path, p.reason) for p in listing.problems] == [
        ("../outside.png", "manifest path outside the manifest's folder: refused")
    ]


def test_manifest_split_column_and_its_rules(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", {"a": 2, "b": 2})
    manifest = root / "m.csv"
    manifest.write_text("path,label,split\na/a_000.png,a,training\na/a_001.png,a,valid\nb/b_000.png,b,train\n")
    assert [f.split for f in dataset.list_files(manifest).files] == ["train", "val", "train"]
    manifest.write_text("path,label,split\na/a_000.png,a,train\nb/b_000.png,b,\n")
    with pytest.raises(DatasetError, match="the split column must be filled for every row or for none"):
        dataset.list_files(manifest)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("file,class\na/a_000.png,a\n", "needs a header with at least 'path' and 'label' columns"),
        ("", "needs a header with at least 'path' and 'label' columns"),
        ("path,label\na/a_000.png,a\nb/b_000.png,\n", "has rows without a label"),
    ],
)
def test_bad_manifests(tmp_path: Path, content: str, message: str) -> None:
    root = make_class_folders(tmp_path / "data", {"a": 1, "b": 1})
    manifest = root / "m.csv"
    manifest.write_text(content)
    with pytest.raises(DatasetError, match=message):
        dataset.list_files(manifest)


@pytest.mark.parametrize(
    ("content", "delimiter"),
    [
        ("path\tlabel\na/a_000.png\ta\n", "tab"),
        ("path;label\na/a_000.png;a\n", "semicolon"),
        ('path,label\n"a/a_000.png","a"\n', "quoted comma"),
    ],
)
def test_manifest_delimiter_is_sniffed(tmp_path: Path, content: str, delimiter: str) -> None:
    root = make_class_folders(tmp_path / "data", {"a": 1, "b": 1})
    manifest = root / "m.csv"
    manifest.write_text(content)
    listing = dataset.list_files(manifest)
    assert [(Path(f.path).relative_to(root).as_posix(), f.label) for f in listing.files] == [("a/a_000.png", "a")]


def test_commas_in_paths_and_labels_do_not_make_a_comma_delimiter(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", {"x,y": 2})
    manifest = root / "m.csv"
    manifest.write_text("path;label\nx,y/x,y_000.png;a,b\nx,y/x,y_001.png;a,b\n")
    listing = dataset.list_files(manifest)
    assert [(Path(f.path).name, f.label) for f in listing.files] == [("x,y_000.png", "a,b"), ("x,y_001.png", "a,b")]


def test_absolute_manifest_paths(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", {"a": 2})
    write_png(tmp_path / "elsewhere.png", 9)
    manifest = root / "m.csv"
    manifest.write_text(
        "path,label\n"
        "C:\\Users\\rad\\export\\a\\a_000.png,a\n"  # Windows, found by its tail a/a_000.png
        f"{root / 'a' / 'a_001.png'},a\n"  # exists here, inside the manifest's folder
        "C:\\Users\\rad\\export\\zz\\gone.png,a\n"  # no tail exists here
        f"{tmp_path / 'elsewhere.png'},a\n"  # exists, but outside the manifest's folder
    )
    listing = dataset.list_files(manifest)
    assert [Path(f.path).relative_to(root).as_posix() for f in listing.files] == ["a/a_000.png", "a/a_001.png"]
    assert [(p.path, p.reason) for p in listing.problems] == [
        ("C:\\Users\\rad\\export\\zz\\gone.png", dataset.FOREIGN_ABSOLUTE),
        (str(tmp_path / "elsewhere.png"), "manifest path outside the manifest's folder: refused"),
        (
            str(manifest),
            "1 absolute path from another machine found under the CSV's folder by its tail (e.g. "
            "C:\\Users\\rad\\export\\a\\a_000.png -> a/a_000.png); make the paths relative to the CSV's "
            "folder to be sure",
        ),
    ]
    assert "make paths relative to the CSV's folder" in dataset.FOREIGN_ABSOLUTE


def test_backslashes_cannot_climb_out_of_the_manifest_folder(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", {"a": 1})
    write_png(tmp_path / "outside.png", 5)
    manifest = root / "m.csv"
    manifest.write_text("path,label\na\\a_000.png,a\n..\\outside.png,a\n,a\n/x/a\x00.png,a\n")
    listing = dataset.list_files(manifest)
    assert [Path(f.path).name for f in listing.files] == ["a_000.png"]
    assert [(p.path, p.reason) for p in listing.problems] == [
        ("..\\outside.png", "manifest path outside the manifest's folder: refused"),
        ("(empty path)", "row without a path: skipped"),
        ("/x/a\x00.png", "path holds a NUL character (a damaged export?): skipped"),
    ]


def test_manifest_labels_are_stripped_and_nfc(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", {"a": 2})
    manifest = root / "m.csv"
    manifest.write_text("path,label\na/a_000.png, Neumonía \na/a_001.png,Neumoni\u0301a\n", encoding="utf-8")
    listing = dataset.list_files(manifest)
    assert [f.label for f in listing.files] == ["Neumon\u00eda", "Neumon\u00eda"]
    assert listing.problems == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("path,label\na/a_000.png,Neumonía\n".encode("cp1252"), r"is not UTF-8 text .*save it as 'CSV UTF-8'"),
        (b"path,label\na/a_000.png," + b"x" * 200_000 + b"\n", "cannot read manifest .*field larger than field limit"),
    ],
)
def test_unreadable_manifests_raise_dataset_errors(tmp_path: Path, content: bytes, message: str) -> None:
    root = make_class_folders(tmp_path / "data", {"a": 1})
    manifest = root / "m.csv"
    manifest.write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        dataset.list_files(manifest)


def test_empty_class_folders_are_named(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", {"a": 2, "b": 2})
    (root / "c").mkdir()
    (root / "c" / ".gitkeep").write_bytes(b"")
    (root / "__MACOSX" / "a").mkdir(parents=True)  # Finder's clutter from an unzipped archive: not a class
    (root / "__MACOSX" / "a" / "._a_000.png").write_bytes(b"\x00\x05\x16\x07")
    listing = dataset.list_files(root)
    assert listing.empty_classes == ("c",)
    assert Counter(f.label for f in listing.files) == {"a": 2, "b": 2}


def test_empty_classes_in_split_folders_are_those_empty_everywhere(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_class_folders(root / "train", {"a": 2, "b": 2})
    make_class_folders(root / "val", {"a": 1}, start=10)
    for empty in ("val/b", "train/c", "val/c"):
        (root / empty).mkdir()
    listing = dataset.list_files(root)
    assert listing.layout == "split_folders"
    assert listing.empty_classes == ("c",)  # b is empty in val only: its per-split counts come from files


def test_path_that_is_not_a_folder_or_csv(tmp_path: Path) -> None:
    image = write_png(tmp_path / "one.png", 1)
    with pytest.raises(DatasetError, match="is a file; give a folder of class folders or a CSV manifest") as no:
        dataset.list_files(image)
    assert "Unzip" not in str(no.value)
    archive = tmp_path / "scans.zip"
    archive.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip archive
    with pytest.raises(DatasetError, match=r"Unzip it first \(the app's Dataset page also takes a .zip upload\)"):
        dataset.list_files(archive)


def test_empty_folder_explains_the_expected_layouts(tmp_path: Path) -> None:
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no image files found .* one sub-folder per class"):
        dataset.list_files(tmp_path / "empty")


def test_symlinks_inside_accepted_outside_refused_folders_not_followed(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", {"a": 2, "b": 2})
    secret = write_png(tmp_path / "elsewhere" / "secret.png", 77)
    os.symlink(secret, root / "a" / "leak.png")
    os.symlink(root / "b" / "b_000.png", root / "a" / "alias.png")
    os.symlink(tmp_path / "elsewhere", root / "b" / "linked_folder")
    os.symlink(tmp_path / "nowhere.png", root / "b" / "dangling.png")
    listing = dataset.list_files(root)
    assert names(listing.files) == {"a_000.png", "a_001.png", "alias.png", "b_000.png", "b_001.png"}
    reasons = {Path(p.path).name: p.reason for p in listing.problems}
    assert reasons["leak.png"] == "symbolic link pointing outside the dataset folder: refused"
    assert reasons["linked_folder"] == "symbolic link to a folder: not followed"
    assert "dangling.png" in reasons
    assert "secret.png" not in names(listing.files)


# ---------------------------------------------------------------- scan


def unsplit(files: list[dataset.ImageFile]) -> list[dataset.ImageFile]:
    return [dataclasses.replace(f, split="") for f in files]


def test_given_split_folders_are_used_as_they_are(breastmnist_dir: Path) -> None:
    splits = dataset.make_splits(dataset.list_files(breastmnist_dir).files)
    assert splits.source == "dataset"
    assert splits.class_names == ["malignant", "normal_benign"]
    assert splits.counts() == {
        "train": {"malignant": 147, "normal_benign": 399},
        "val": {"malignant": 21, "normal_benign": 57},
        "test": {"malignant": 42, "normal_benign": 114},
    }
    # Labels index the sorted class names, as Keras' folder loader does (and as MedMNIST numbers them).
    assert Counter(splits.labels("test")) == {0: 42, 1: 114}


def test_stratified_split_proportions_and_seed(breastmnist_dir: Path) -> None:
    files = unsplit(dataset.list_files(breastmnist_dir).files)  # 780 files: 210 malignant, 570 normal_benign
    splits = dataset.make_splits(files, val_fraction=0.15, test_fraction=0.15, seed=3)
    assert splits.source == "seeded stratified split"
    sizes = {name: len(part) for name, part in splits.items()}
    assert sum(sizes.values()) == 780
    assert abs(sizes["test"] - 0.15 * 780) <= 1 and abs(sizes["val"] - 0.15 * 780) <= 1
    for name, part in splits.items():
        malignant = sum(f.label == "malignant" for f in part)
        assert abs(malignant - len(part) * 210 / 780) <= 1, name  # the class ratio is kept in every split
    every = [f.path for _, part in splits.items() for f in part]
    assert len(set(every)) == 780  # a partition: no file twice, none lost
    again = dataset.make_splits(files, val_fraction=0.15, test_fraction=0.15, seed=3)
    assert [f.path for f in again.test] == [f.path for f in splits.test]
    assert [f.path for f in again.val] == [f.path for f in splits.val]
    other = dataset.make_splits(files, val_fraction=0.15, test_fraction=0.15, seed=4)
    assert {f.path for f in other.test} != {f.path for f in splits.test}


def demo_by_patient(demo_dir: Path, target: Path) -> Path:
    """The demo as one folder per class, with a second and third view for some patients (as real data has)."""
    for path in sorted(demo_dir.glob("*/*/*.jpeg")):
        label_dir = target / path.parent.name
        label_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, label_dir / path.name)
    for index, path in enumerate(sorted(target.glob("*/*.jpeg"))[::3]):
        for view in range(1 + index % 2):
            shutil.copy(path, path.with_name(f"{path.stem}-view{view + 2}.jpeg"))
    return target


def test_group_aware_split_never_shares_a_patient(demo_dir: Path, tmp_path: Path) -> None:
    root = demo_by_patient(demo_dir, tmp_path / "by_class")
    listing = dataset.list_files(root, group_regex=GROUP_REGEX)
    groups = Counter(f.group for f in listing.files)
    assert len(listing.files) > 160 and max(groups.values()) == 3  # some patients have several images
    pattern = re.compile(GROUP_REGEX)
    assert all(f.group == pattern.search(Path(f.path).name).group(1) for f in listing.files)
    for seed in (0, 1, 2):
        splits = dataset.make_splits(listing.files, 0.2, 0.2, seed=seed)
        assert splits.source == "seeded stratified split by group"
        assert splits.group_overlap() == set()
        per_split = [{f.group for f in part} for _, part in splits.items()]
        assert sum(map(len, per_split)) == len(groups)  # each patient in exactly one split
        assert all(len(part) > 0 for _, part in splits.items())
        assert set(splits.counts()["test"].values()) != {0}
    # The control: ignoring the patient IDs, the same files do put a patient in two splits.
    no_groups = [dataclasses.replace(f, group="") for f in listing.files]
    plain = dataset.make_splits(no_groups, 0.2, 0.2, seed=0)
    by_path = {f.path: f.group for f in listing.files}
    regrouped = [{by_path[f.path] for f in part} for _, part in plain.items()]
    assert (regrouped[0] & regrouped[1]) | (regrouped[0] & regrouped[2]) | (regrouped[1] & regrouped[2])


def test_missing_test_folder_is_carved_from_train(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_class_folders(root / "train", {"a": 10, "b": 10}, start=0)
    make_class_folders(root / "val", {"a": 2, "b": 2}, start=100)
    splits = dataset.make_splits(dataset.list_files(root).files, test_fraction=0.2)
    assert splits.source == "dataset + test carved from train"
    assert splits.counts()["test"] == {"a": 2, "b": 2}
    assert splits.counts()["train"] == {"a": 8, "b": 8}
    assert splits.counts()["val"] == {"a": 2, "b": 2}


def test_single_class_is_a_dataset_error(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", {"NORMAL": 5})
    files = dataset.list_files(root).files
    with pytest.raises(DatasetError, match=r"only one class \(NORMAL\) has readable images; .* at least two class"):
        dataset.make_splits(files)


def test_class_without_training_images_is_a_dataset_error(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_class_folders(root / "train", {"a": 4}, start=0)
    make_class_folders(root / "test", {"a": 2, "b": 2}, start=100)
    with pytest.raises(DatasetError, match="class b has no training images"):
        dataset.make_splits(dataset.list_files(root).files)


def test_empty_validation_split_is_a_dataset_error(tmp_path: Path) -> None:
    files = dataset.list_files(make_class_folders(tmp_path / "data", {"a": 5, "b": 5})).files
    with pytest.raises(DatasetError, match="the validation split is empty"):
        dataset.make_splits(files, val_fraction=0.0)


def test_cross_validation_folds_validate_each_case_once_stratified_and_by_patient() -> None:
    import numpy as np

    from medimg.datasets.dataset import cross_validation_folds

    labels = np.array([0] * 30 + [1] * 10)
    folds = cross_validation_folds(labels, None, 5, seed=0)
    held_out = np.concatenate([val for _, val in folds])
    assert sorted(held_out.tolist()) == list(range(40))  # each case validated on exactly once
    assert all(np.sum(labels[val] == 1) == 2 for _, val in folds)  # stratified: 2 of the 10 positives per fold
    assert all(set(train).isdisjoint(val) for train, val in folds)
    groups = [f"patient{i // 2}" for i in range(40)]  # two images per patient: 15 and 5 patients per class
    for train, val in cross_validation_folds(labels, groups, 5, seed=0):
        assert {groups[i] for i in train}.isdisjoint({groups[i] for i in val})  # a patient never on both sides
    with pytest.raises(DatasetError, match="needs at least 5 patients \\(groups\\) of every class; class 0 has 3"):
        cross_validation_folds(labels, [f"p{i % 3}" for i in range(40)], 5, seed=0)
    # 3 positives cannot be spread over 5 held-out folds: two folds would score an AUC without a positive.
    with pytest.raises(DatasetError, match="needs at least 5 training images of every class; class 1 has 3"):
        cross_validation_folds(np.array([0] * 20 + [1] * 3), None, 5, seed=0)
