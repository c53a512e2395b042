"""Datasets as people lay them out (issue #13): the field cases in tests/data/cases, listed as a user expects.

Each case's expected value comes from tests/data/cases/README.md. The case folders are read-only: uploads are
extracted under tmp_path.
"""

from __future__ import annotations

import io
import os
import unicodedata
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from medimg.datasets import dataset, scanning, sources

CASES = Path(__file__).parent / "data" / "cases"
MANIFESTS = CASES / "csv-manifest-windows"
ZIPS = CASES / "zip-uploads"
CLASS_FOLDERS = CASES / "class-folder-names"
MANIFEST_FILES = [f"images/normal/n{i:02d}.png" for i in range(8)] + [f"images/effusion/e{i:02d}.png" for i in range(8)]


def relative_paths(listing: dataset.Listing, folder: Path) -> list[str]:
    return [Path(f.path).relative_to(folder).as_posix() for f in listing.files]


# ---------------------------------------------------------------- CSV manifests


@pytest.mark.parametrize("name", ["manifest_backslash.csv", "manifest_semicolon.csv", "manifest_absolute.csv"])
def test_windows_and_spreadsheet_manifests_list_every_file(name: str) -> None:
    # Backslashes + CRLF + byte-order mark; ';' delimiter; /mnt/pacs-export/... paths from another machine whose
    # tail images/<class>/<file> exists under the CSV's folder.
    listing = dataset.list_files(MANIFESTS / name)
    assert listing.layout == "manifest"
    assert Counter(f.label for f in listing.files) == {"normal": 8, "effusion": 8}
    assert relative_paths(listing, MANIFESTS) == MANIFEST_FILES
    assert all(os.path.isfile(f.path) for f in listing.files)
    assert listing.empty_classes == ()
    if name == "manifest_absolute.csv":  # found, and said so: the user should know the paths were matched by tail
        assert [p.reason for p in listing.problems] == [
            "16 absolute paths from another machine found under the CSV's folder by their tail (e.g. "
            "/mnt/pacs-export/csv-manifest-windows/images/normal/n00.png -> images/normal/n00.png); make the paths "
            "relative to the CSV's folder to be sure"
        ]
    else:
        assert listing.problems == []


def test_labels_differing_only_in_case_are_kept_apart_and_reported() -> None:
    manifest = MANIFESTS / "manifest_labelcase.csv"
    listing = dataset.list_files(manifest)
    # "normal " (trailing space) is stripped into "normal"; case variants stay separate classes.
    assert Counter(f.label for f in listing.files) == {
        "Normal": 2,
        "normal": 4,
        "NORMAL": 2,
        "Effusion": 4,
        "effusion": 4,
    }
    how = "merge them with --merge-label-case (CLI) or 'Merge labels that differ only in case' (Dataset page)"
    assert [(p.path, p.reason) for p in listing.problems] == [
        (str(manifest), f"labels 'NORMAL', 'Normal' and 'normal' differ only in case: kept apart; {how}"),
        (str(manifest), f"labels 'Effusion' and 'effusion' differ only in case: kept apart; {how}"),
    ]
    report = scanning.scan(manifest)  # the scan shows them as warnings about the dataset, not unreadable files
    assert report.warnings == [p.reason for p in listing.problems] and report.unreadable == []
    merged = scanning.scan(manifest, merge_label_case=True)
    assert merged.classes == {"Effusion": 8, "normal": 8}


def test_labels_differing_only_in_case_are_merged_when_asked() -> None:
    manifest = MANIFESTS / "manifest_labelcase.csv"
    listing = dataset.list_files(manifest, merge_label_case=True)
    # The most frequent spelling wins ("normal": 4 of 8); on a tie (Effusion 4, effusion 4) the first seen.
    assert Counter(f.label for f in listing.files) == {"normal": 8, "Effusion": 8}
    assert relative_paths(listing, MANIFESTS) == MANIFEST_FILES
    assert [p.reason for p in listing.problems] == [
        "labels 'NORMAL', 'Normal' and 'normal' differ only in case: merged as 'normal'",
        "labels 'Effusion' and 'effusion' differ only in case: merged as 'Effusion'",
    ]


# ---------------------------------------------------------------- zip uploads

EXPECTED_ZIP_CLASSES = {
    "powershell_backslash.zip": {"NORMAL": 6, "PNEUMONIA": 6},
    "macos_finder.zip": {"NORMAL": 6, "PNEUMONIA": 6},
    # Folder name stored as b"NEUMON\xd6A_" without the UTF-8 flag: 0xD6 is "Í" in code page 850 (Windows' OEM code
    # page for Western Europe), "╓" in cp437, "Ö" in cp1252, "Ц" in cp866.
    "legacy_codepage.zip": {"NEUMONÍA_": 6, "NORMAL": 6},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_ZIP_CLASSES))
def test_uploaded_zips_give_a_usable_dataset(tmp_path: Path, name: str) -> None:
    kept = sources.keep_upload((ZIPS / name).read_bytes(), name, tmp_path)
    listing = dataset.list_files(kept)
    assert listing.layout == "class_folders"
    assert Counter(f.label for f in listing.files) == EXPECTED_ZIP_CLASSES[name]
    assert listing.problems == [] and listing.empty_classes == ()
    listed = {Path(f.path).relative_to(kept).as_posix() for f in listing.files}
    on_disk = {p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file()}
    assert on_disk == listed  # no __MACOSX/, ._*, .DS_Store, and no file named "NORMAL\\n0.png"
    assert sorted(p.name for p in kept.iterdir()) == sorted(EXPECTED_ZIP_CLASSES[name])
    assert all(Path(f.path).stat().st_size > 1000 for f in listing.files)


def test_a_zip_path_extracts_like_its_bytes(tmp_path: Path) -> None:
    folder = sources.extract_zip(ZIPS / "powershell_backslash.zip", parent=tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["NORMAL", "PNEUMONIA"]
    assert sorted(p.name for p in (folder / "NORMAL").iterdir()) == [f"n{i}.png" for i in range(6)]


# ---------------------------------------------------------------- class folder names

NEUMONIA = unicodedata.normalize("NFC", "Neumonía viral")


def test_unicode_class_names_come_through_and_the_empty_class_is_named() -> None:
    listing = dataset.list_files(CLASS_FOLDERS)
    counts = Counter(f.label for f in listing.files)
    assert counts == {NEUMONIA: 12, "Normal (sano)": 12, "结节 nodule": 12, "Artefact": 1}
    assert listing.empty_classes == ("COVID-19",)  # holds only .gitkeep
    assert listing.problems == []
    assert all(unicodedata.is_normalized("NFC", label) for label in counts)
    # The folder on disk is decomposed (NFD, as macOS writes it); the paths keep it, so they still open.
    assert "Neumoni\u0301a viral" in os.listdir(CLASS_FOLDERS)
    assert all(os.path.isfile(f.path) for f in listing.files)


def test_the_same_class_from_a_zip_and_from_a_folder_compares_equal(tmp_path: Path) -> None:
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:  # composed (NFC) names, as Windows tools write them
        for file in sorted(CLASS_FOLDERS.rglob("*.png")):
            name = unicodedata.normalize("NFC", file.relative_to(CLASS_FOLDERS).as_posix())
            archive.writestr(f"cases/{name}", file.read_bytes())
    from_zip = dataset.list_files(sources.keep_upload(stream.getvalue(), "cases.zip", tmp_path))
    from_folder = dataset.list_files(CLASS_FOLDERS)
    assert Counter(f.label for f in from_zip.files) == Counter(f.label for f in from_folder.files)
