"""The scan report: counts, unreadable files with reasons, identical-pixel duplicates, leakage, the scan cache."""

from __future__ import annotations

import csv
import io
import shutil
import struct
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from medimg.datasets import scanning
from medimg.imaging import images
from tests.conftest import DEMO
from tests.datasets.test_dataset import GROUP_REGEX, make_class_folders, names


def test_scan_reports_unreadable_files_with_reasons(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", {"a": 3, "b": 3})
    (root / "a" / "notes.png").write_text("this is a text file")
    (root / "b" / "empty.png").touch()
    png = (root / "b" / "b_000.png").read_bytes()
    (root / "b" / "cut.png").write_bytes(png[: len(png) // 2])
    calls: list[tuple[int, int, str]] = []
    report = scanning.scan(root, on_progress=lambda done, total, message: calls.append((done, total, message)))
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
    report = scanning.scan(root)
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
    report = scanning.scan(root)
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
    report = scanning.scan(root)
    assert [sorted(Path(p).name for p in group) for group in report.duplicates] == [["first.jpg", "first_copy.jpg"]]
    assert [sorted(entry.split(":")[0] for entry in group) for group in report.leakage] == [["train", "val"]]


def test_scan_of_the_demo(demo_dir: Path) -> None:
    report = scanning.scan(demo_dir, group_regex=GROUP_REGEX, workers=1)
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
    report = scanning.scan(breastmnist_dir, workers=1)
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
    original = scanning.inspect_file
    monkeypatch.setattr(scanning, "inspect_file", lambda path: decoded.append(path) or original(path))

    first = scanning.scan(root)
    assert len(decoded) == 10
    decoded.clear()
    second = scanning.scan(root)
    assert decoded == []  # every result came from the cache
    assert second.to_dict() == first.to_dict()

    changed = next((root / "NORMAL").iterdir())
    changed.write_bytes(b"overwritten with text")
    third = scanning.scan(root)
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
    original = scanning.exact_key
    monkeypatch.setattr(scanning, "exact_key", lambda path: confirmed.append(path) or original(path))

    first = scanning.scan(root)
    assert sorted(Path(p).name for p in confirmed) == sorted(["copy.jpg", xrays[0].name])  # only the two
    assert len(first.duplicates) == 1 and len(first.leakage) == 0
    confirmed.clear()
    second = scanning.scan(root)
    assert confirmed == [] and second.to_dict() == first.to_dict()
