"""Dataset layouts, the scan report (counts, unreadable files, duplicates, leakage) and the splits."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
import shutil
import struct
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from medimg import dataset, images
from medimg.errors import DatasetError
from tests.conftest import DEMO

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


def test_path_that_is_not_a_folder_or_csv(tmp_path: Path) -> None:
    image = write_png(tmp_path / "one.png", 1)
    with pytest.raises(DatasetError, match="is a file; give a folder of class folders or a CSV manifest"):
        dataset.list_files(image)


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


def test_scan_reports_unreadable_files_with_reasons(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", {"a": 3, "b": 3})
    (root / "a" / "notes.png").write_text("this is a text file")
    (root / "b" / "empty.png").touch()
    png = (root / "b" / "b_000.png").read_bytes()
    (root / "b" / "cut.png").write_bytes(png[: len(png) // 2])
    calls: list[tuple[int, int, str]] = []
    report = dataset.scan(root, on_progress=lambda done, total, message: calls.append((done, total, message)))
    assert report.classes == {"a": 3, "b": 3}
    assert report.image_count == 6
    reasons = {Path(item["path"]).name: item["reason"] for item in report.unreadable}
    assert reasons["notes.png"].startswith("not an image")
    assert reasons["empty.png"] == "empty file (0 bytes)"
    assert "truncated" in reasons["cut.png"]
    assert len(report.files) == 6 and "notes.png" not in names(report.files)
    assert calls[-1] == (9, 9, "scanning images")
    assert report.sizes == {"8x8": 6}
    assert report.modes == {"png gray 8-bit": 6}


def test_scan_finds_duplicates_within_a_split_without_calling_them_leakage(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", {"a": 2, "b": 2})
    shutil.copy(root / "a" / "a_000.png", root / "b" / "copy_of_a0.png")
    report = dataset.scan(root)
    assert [sorted(Path(p).name for p in group) for group in report.duplicates] == [["a_000.png", "copy_of_a0.png"]]
    assert report.leakage == []


def jpeg_with_comment(data: bytes, text: bytes) -> bytes:
    """Other bytes, the same JPEG stream (so the same pixels): a comment segment right after the start marker."""
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]


def test_scan_finds_identical_pixels_whatever_the_file_bytes(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", {"a": 2, "b": 2})
    xray = sorted((DEMO / "train" / "NORMAL").glob("*.jpeg"))[0].read_bytes()
    (root / "a" / "xray.jpeg").write_bytes(xray)
    (root / "b" / "xray_comment.jpg").write_bytes(jpeg_with_comment(xray, b"exported again"))
    decoded = cv2.imdecode(np.frombuffer(xray, np.uint8), cv2.IMREAD_UNCHANGED)
    assert cv2.imwrite(str(root / "b" / "xray_as.png"), decoded)  # the JPEG's pixels, losslessly as PNG
    small = cv2.imread(str(root / "a" / "a_000.png"), cv2.IMREAD_UNCHANGED)
    assert cv2.imwrite(str(root / "b" / "a0_level9.png"), small, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "re-saved with metadata")
    Image.fromarray(small).save(root / "b" / "a0_with_text.png", pnginfo=text)
    copies = [root / "a" / "a_000.png", root / "b" / "a0_level9.png", root / "b" / "a0_with_text.png"]
    assert len({path.read_bytes() for path in copies}) == 3
    report = dataset.scan(root)
    assert sorted(sorted(Path(p).name for p in group) for group in report.duplicates) == [
        ["a0_level9.png", "a0_with_text.png", "a_000.png"],
        ["xray.jpeg", "xray_as.png", "xray_comment.jpg"],
    ]


def ycbcr_jpeg(luma: np.ndarray, blue: np.ndarray, red: np.ndarray) -> bytes:
    stream = io.BytesIO()
    planes = [Image.fromarray(plane) for plane in (luma, blue, red)]
    Image.merge("YCbCr", planes).save(stream, "JPEG", quality=100, subsampling=0)
    return stream.getvalue()


def test_jpegs_whose_candidate_keys_meet_but_pixels_differ_are_not_duplicates(tmp_path: Path) -> None:
    # The same brightness channel, so the same 1/8-scale grayscale decode (the scan's candidate key), but one
    # pixel of another colour: identical candidates, different images. A true copy in another split is leakage.
    luma = images.load_image(sorted((DEMO / "train" / "NORMAL").glob("*.jpeg"))[0], 64, "gray")[:, :, 0]
    red = np.full_like(luma, 128)
    other_red = red.copy()
    other_red[40, 21] = 250
    first, second = ycbcr_jpeg(luma, red, red), ycbcr_jpeg(luma, red, other_red)
    assert images.inspect(first)[1] == images.inspect(second)[1]
    assert (images.decode(first)[0] != images.decode(second)[0]).any()
    root = tmp_path / "data"
    for relative, data in [
        ("train/a/first.jpg", first),
        ("test/a/second.jpg", second),
        ("val/a/first_copy.jpg", jpeg_with_comment(first, b"copy")),
    ]:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    report = dataset.scan(root)
    assert [sorted(Path(p).name for p in group) for group in report.duplicates] == [["first.jpg", "first_copy.jpg"]]
    assert [sorted(entry.split(":")[0] for entry in group) for group in report.leakage] == [["train", "val"]]


def test_scan_of_the_demo(demo_dir: Path) -> None:
    report = dataset.scan(demo_dir, group_regex=GROUP_REGEX, workers=1)
    assert report.layout == "split_folders"
    assert report.image_count == 140
    assert report.sizes == {"224x224": 140}  # README: 224×224 JPEG, grayscale stored as RGB
    assert report.modes == {"jpeg RGB 8-bit": 140}
    assert report.duplicates == [] and report.leakage == []
    assert all(f.group for f in report.files)  # every demo file name carries its patient ID
    data = report.to_dict()
    assert data["images"] == 140 and "files" not in data
    assert len(report.to_dict(include_files=True)["files"]) == 140


def test_scan_of_breastmnist_counts_and_its_real_leakage_pair(breastmnist_dir: Path) -> None:
    report = dataset.scan(breastmnist_dir, workers=1)
    # Expected counts from the dataset's README table.
    assert report.splits == {
        "train": {"malignant": 147, "normal_benign": 399},
        "val": {"malignant": 21, "normal_benign": 57},
        "test": {"malignant": 42, "normal_benign": 114},
    }
    assert report.classes == {"malignant": 210, "normal_benign": 570}
    assert report.sizes == {"28x28": 780} and report.modes == {"png gray 8-bit": 780}
    assert report.unreadable == []
    # The pair, found independently of medimg: the files whose pixel MD5 appears twice in the dataset's manifest.
    with open(breastmnist_dir / "manifest.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    repeats = Counter(row["pixel_md5"] for row in rows)
    pair = sorted(f"{row['split']}:{breastmnist_dir / row['path']}" for row in rows if repeats[row["pixel_md5"]] > 1)
    assert len(pair) == 2
    assert [sorted(group) for group in report.leakage] == [pair]
    assert any("train/malignant" in p for p in pair) and any("test/normal_benign" in p for p in pair)


# ---------------------------------------------------------------- splits


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


def test_second_scan_of_an_unchanged_folder_decodes_nothing_and_a_changed_file_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIMG_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "data"
    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir(parents=True)
        for image in sorted((DEMO / "train" / label).glob("*.jpeg"))[:5]:
            (root / label / image.name).write_bytes(image.read_bytes())
    decoded: list[str] = []
    original = dataset.inspect_file
    monkeypatch.setattr(dataset, "inspect_file", lambda path: decoded.append(path) or original(path))

    first = dataset.scan(root)
    assert len(decoded) == 10
    decoded.clear()
    second = dataset.scan(root)
    assert decoded == []  # every result came from the cache
    assert second.to_dict() == first.to_dict()

    changed = next((root / "NORMAL").iterdir())
    changed.write_bytes(b"overwritten with text")
    third = dataset.scan(root)
    assert decoded == [str(changed)]
    assert [item["path"] for item in third.unreadable] == [str(changed)]
    assert third.classes == {"NORMAL": 4, "PNEUMONIA": 5}


def test_confirmed_duplicates_are_cached_as_well(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIMG_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "data"
    xrays = sorted((DEMO / "train" / "NORMAL").glob("*.jpeg"))[:3]
    for image in xrays:
        (root / "a" / image.name).parent.mkdir(parents=True, exist_ok=True)
        (root / "a" / image.name).write_bytes(image.read_bytes())
    (root / "b").mkdir()
    (root / "b" / "copy.jpg").write_bytes(jpeg_with_comment(xrays[0].read_bytes(), b"copy"))
    confirmed: list[str] = []
    original = dataset.exact_key
    monkeypatch.setattr(dataset, "exact_key", lambda path: confirmed.append(path) or original(path))

    first = dataset.scan(root)
    assert sorted(Path(p).name for p in confirmed) == sorted(["copy.jpg", xrays[0].name])  # only the two
    assert len(first.duplicates) == 1 and len(first.leakage) == 0
    confirmed.clear()
    second = dataset.scan(root)
    assert confirmed == [] and second.to_dict() == first.to_dict()
