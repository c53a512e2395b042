"""Where the app may read datasets from: data roots (realpath-checked) and uploaded zips (checked before extraction)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import zipfile
from pathlib import Path

import pytest

from medimg.datasets import sources
from medimg.errors import DatasetError
from tests.conftest import BREASTMNIST, DEMO


def make_zip(entries: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return stream.getvalue()


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    (tmp_path / "data" / "study" / "NORMAL").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    return tmp_path / "data"


def test_roots_come_from_the_environment_and_extra_entries(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIMG_DATA_ROOTS", f"{root}{os.pathsep}{root / 'missing'}")
    assert sources.data_roots() == [root.resolve()]  # a root that does not exist is dropped
    assert sources.data_roots([str(DEMO)]) == [root.resolve(), DEMO.resolve()]


def test_paths_inside_a_root_resolve_and_everything_else_is_refused(root: Path) -> None:
    roots = [root.resolve()]
    assert sources.resolve_in_roots("study", roots) == (root / "study").resolve()
    assert sources.resolve_in_roots(str(root / "study" / "NORMAL"), roots) == (root / "study" / "NORMAL").resolve()
    for hostile in ("../secret", "study/../../secret", "/etc", str(root.parent / "secret")):
        with pytest.raises(DatasetError, match="outside the allowed data roots"):
            sources.resolve_in_roots(hostile, roots)
    os.symlink(root.parent / "secret", root / "escape")
    with pytest.raises(DatasetError, match="outside the allowed data roots"):
        sources.resolve_in_roots("escape", roots)
    with pytest.raises(DatasetError, match="no data roots are configured"):
        sources.resolve_in_roots("study", [])
    with pytest.raises(DatasetError, match="does not exist"):
        sources.resolve_in_roots("nothing-here", roots)


def test_a_split_dataset_is_offered_whole_not_split_by_split(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        shutil.copytree(DEMO / "train" / "NORMAL", tmp_path / "retina" / split / "0_no_dr")
    shutil.copytree(DEMO / "train", tmp_path / "flat")
    found = sources.list_dataset_folders([tmp_path.resolve()])
    names = [str(p.relative_to(tmp_path.resolve())) for p in found]
    assert "retina" in names and "flat" in names
    assert not [name for name in names if name.startswith("retina/")], names  # retina/test was offered before


def test_dataset_folders_are_listed_only_under_the_roots(root: Path) -> None:
    found = sources.list_dataset_folders([root.resolve()])
    assert (root / "study").resolve() in found
    assert all(root.resolve() in [p, *p.parents] for p in found)


def test_a_clean_zip_extracts_into_a_fresh_folder(tmp_path: Path) -> None:
    image = next((DEMO / "train" / "NORMAL").glob("*.jpeg")).read_bytes()
    data = make_zip({"mydata/NORMAL/a.jpeg": image, "mydata/PNEUMONIA/b.jpeg": image})
    first = sources.extract_zip(data, parent=tmp_path)
    second = sources.extract_zip(data, parent=tmp_path)
    assert first.name == "mydata" and first != second  # a single top folder is the dataset root; never shared
    assert (first / "NORMAL" / "a.jpeg").read_bytes() == image


@pytest.mark.parametrize(
    ("entries", "symlink", "message"),
    [
        ({"../evil.png": b"x"}, None, "points outside the archive folder"),
        ({"/abs/evil.png": b"x"}, None, "points outside the archive folder"),
        ({"a/../../evil.png": b"x"}, None, "points outside the archive folder"),
        ({"ok.png": b"x"}, "link.png", "symbolic link"),
        ({"bomb.png": b"\x00" * 5_000_000}, None, "zip bomb"),
    ],
)
def test_hostile_zips_are_refused_before_anything_is_written(
    tmp_path: Path, entries: dict[str, bytes], symlink: str | None, message: str
) -> None:
    with pytest.raises(DatasetError, match=message):
        sources.extract_zip(make_zip(entries, symlink=symlink), parent=tmp_path)
    assert not list(tmp_path.glob(f"{sources.UPLOAD_PREFIX}*"))


def test_zip_limits_on_entries_and_total_size(tmp_path: Path) -> None:
    many = make_zip({f"f{i}.png": b"x" for i in range(30)})
    with pytest.raises(DatasetError, match="30 entries; the limit is 20"):
        sources.extract_zip(many, sources.ZipLimits(max_entries=20), parent=tmp_path)
    big = make_zip({"a.png": os.urandom(4096)})
    with pytest.raises(DatasetError, match="the limit is 0 MB"):
        sources.extract_zip(big, sources.ZipLimits(max_total_bytes=1000), parent=tmp_path)
    with pytest.raises(DatasetError, match="not a valid zip"):
        sources.extract_zip(b"PK\x03\x04 broken", parent=tmp_path)


def test_an_upload_is_kept_beside_the_runs_under_its_own_name(tmp_path: Path) -> None:
    data = make_zip({"mydata/a/x.png": b"1", "mydata/b/y.png": b"2"})
    kept = sources.keep_upload(data, "Chest X-rays (2024).zip", tmp_path)
    digest = hashlib.sha256(data).hexdigest()[:8]
    assert kept == tmp_path / "uploads" / f"Chest_X-rays_2024-{digest}" / "mydata"
    assert sorted(p.name for p in kept.iterdir()) == ["a", "b"]
    assert (kept / "a" / "x.png").read_bytes() == b"1"
    assert sources.is_kept_upload(kept, tmp_path) and not sources.is_kept_upload(tmp_path / "elsewhere", tmp_path)
    # The same bytes again reuse the folder; no staging folder is left behind.
    assert sources.keep_upload(data, "Chest X-rays (2024).zip", tmp_path) == kept
    assert [p.name for p in (tmp_path / "uploads").iterdir()] == [f"Chest_X-rays_2024-{digest}"]
    flat = sources.keep_upload(make_zip({"a/x.png": b"1", "b/y.png": b"2"}), "flat.zip", tmp_path)
    assert flat.parent == tmp_path / "uploads" and flat.name.startswith("flat-")


def test_a_refused_upload_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="points outside the archive folder"):
        sources.keep_upload(make_zip({"../evil.png": b"x"}), "evil.zip", tmp_path)
    assert not [p for p in (tmp_path / "uploads").iterdir() if p.name.startswith("evil")]


def legacy_zip(names: dict[str, bytes]) -> bytes:
    """A zip whose entry names are the given raw bytes, without the UTF-8 flag (as DOS-era tools write them)."""
    placeholders = {f"{i:0{len(raw)}d}"[-len(raw) :]: raw for i, raw in enumerate(names)}
    data = make_zip({placeholder: names[raw] for placeholder, raw in placeholders.items()})
    for placeholder, raw in placeholders.items():  # names appear in the local and the central header
        data = data.replace(placeholder.encode(), raw)
    return data


def test_backslash_entry_names_are_folders(tmp_path: Path) -> None:
    folder = sources.extract_zip(
        make_zip({"data\\NORMAL\\a.png": b"1", "data\\PNEUMONIA\\b.png": b"2"}), parent=tmp_path
    )
    assert folder.name == "data"
    assert (folder / "NORMAL" / "a.png").read_bytes() == b"1" and (folder / "PNEUMONIA" / "b.png").read_bytes() == b"2"


@pytest.mark.parametrize("name", ["a\\..\\..\\evil.png", "\\evil.png", "C:\\evil.png", "..\\evil.png"])
def test_backslash_names_cannot_leave_the_archive_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetError, match="points outside the archive folder"):
        sources.extract_zip(make_zip({name: b"x"}), parent=tmp_path)
    assert not list(tmp_path.glob(f"{sources.UPLOAD_PREFIX}*"))


def test_macos_clutter_is_not_extracted(tmp_path: Path) -> None:
    data = make_zip(
        {
            "data/a/x.png": b"1",
            "__MACOSX/data/a/._x.png": b"\x00\x05\x16\x07",
            "data/a/.DS_Store": b"Bud1",
            "data/b/._y.png": b"\x00\x05\x16\x07",
            "data/b/y.png": b"2",
        }
    )
    folder = sources.extract_zip(data, parent=tmp_path)
    assert sorted(p.relative_to(folder.parent).as_posix() for p in folder.parent.rglob("*")) == [
        "data",
        "data/a",
        "data/a/x.png",
        "data/b",
        "data/b/y.png",
    ]


def test_legacy_names_are_decoded_as_utf8_then_code_page_850(tmp_path: Path) -> None:
    utf8 = sources.extract_zip(legacy_zip({"Neumonía/a.png".encode(): b"1", b"Normal/b.png": b"2"}), parent=tmp_path)
    assert sorted(p.name for p in utf8.iterdir()) == ["Neumonía", "Normal"]
    dos = sources.extract_zip(legacy_zip({"Neumonía/a.png".encode("cp850"): b"1"}), parent=tmp_path)
    assert dos.name == "Neumonía" and (dos / "a.png").read_bytes() == b"1"


@pytest.mark.parametrize("raw", ["пневмония/a.png".encode("cp866"), "結節/a.png".encode("shift_jis")])
def test_names_in_an_unknown_code_page_are_refused(tmp_path: Path, raw: bytes) -> None:
    with pytest.raises(DatasetError, match=r"unknown legacy encoding .*neither UTF-8 nor DOS Latin \(code page 850\)"):
        sources.extract_zip(legacy_zip({raw: b"1"}), parent=tmp_path)
    assert not list(tmp_path.glob(f"{sources.UPLOAD_PREFIX}*"))


def test_encrypted_and_corrupt_entries_are_refused_and_leave_nothing(tmp_path: Path) -> None:
    encrypted = bytearray(make_zip({"a/x.png": b"1"}))
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers
        encrypted[encrypted.index(signature) + flag_offset] |= sources.ENCRYPTED_FLAG
    with pytest.raises(DatasetError, match=r"'a/x\.png' is encrypted; upload a zip made without a password"):
        sources.extract_zip(bytes(encrypted), parent=tmp_path)
    deflate64 = bytearray(make_zip({"a/x.png": b"1"}))
    for signature, method_offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        deflate64[deflate64.index(signature) + method_offset] = 9  # Deflate64, which zipfile cannot read
    with pytest.raises(DatasetError, match=r"compression Python cannot read .*re-create it with Deflate"):
        sources.extract_zip(bytes(deflate64), parent=tmp_path)
    payload = os.urandom(2048)
    data = make_zip({"a/x.png": payload, "b/y.png": payload})
    corrupt = data.replace(data[40:80], bytes(40), 1)  # inside the first entry's compressed data
    with pytest.raises(DatasetError, match="not a valid zip file"):
        sources.extract_zip(corrupt, parent=tmp_path)
    assert not list(tmp_path.glob(f"{sources.UPLOAD_PREFIX}*"))


def test_the_bundled_demo_holds_its_images_and_their_provenance_only() -> None:
    """Nothing else belongs in the demo folder: a run written there once was committed and shipped with the data."""
    from medimg.datasets.sources import DEMO_DATASET

    demo = Path(DEMO_DATASET)
    kinds = sorted({path.suffix for path in demo.rglob("*") if path.is_file()})
    assert kinds == [".csv", ".jpeg", ".md"]
    assert not [folder for folder in demo.rglob("*") if folder.is_dir() and folder.name.startswith(("train-", "tune-"))]


def test_a_known_file_naming_convention_brings_its_patient_ids(tmp_path: Path) -> None:
    from medimg.datasets.dataset import list_files

    # Real demo X-rays under Kermany et al.'s names, plus the second batch's NORMAL2- prefix, in a folder that is not
    # the demo: the pattern is recognised from the names, and reads each file's patient ID as the dataset's
    # manifest gives it.
    for label in ("NORMAL", "PNEUMONIA"):
        shutil.copytree(sources.DEMO_DATASET / "train" / label, tmp_path / "kermany" / label)
    sample = next((tmp_path / "kermany" / "NORMAL").glob("IM-*.jpeg"))
    shutil.copy(sample, tmp_path / "kermany" / "NORMAL" / "NORMAL2-IM-0394-0001.jpeg")
    # macOS copies carry a `._` twin of every file and a __MACOSX folder; the listing skips them, and so does this.
    clutter = tmp_path / "kermany" / "__MACOSX" / "NORMAL"
    clutter.mkdir(parents=True)
    for image in list((tmp_path / "kermany" / "NORMAL").glob("*.jpeg")):
        (image.parent / f"._{image.name}").write_bytes(b"\x00\x05\x16\x07")
        (clutter / f"._{image.name}").write_bytes(b"\x00\x05\x16\x07")
    assert sources.default_group_regex(tmp_path / "kermany") == sources.KERMANY_GROUP_REGEX
    groups = {Path(f.path).name: f.group for f in list_files(tmp_path / "kermany", sources.KERMANY_GROUP_REGEX).files}
    assert groups["NORMAL2-IM-0394-0001.jpeg"] == "NORMAL2-IM-0394"
    assert all(groups.values())
    assert next(g for name, g in groups.items() if name.startswith("person")).startswith("person")
    # Other names, or too few that match (under 90 %), bring nothing: the user gives a pattern.
    (tmp_path / "other" / "a").mkdir(parents=True)
    for i in range(10):
        shutil.copy(sample, tmp_path / "other" / "a" / (f"IM-{i:04d}-0001.jpeg" if i < 8 else f"scan_{i}.jpeg"))
    assert sources.default_group_regex(tmp_path / "other") == ""
    assert sources.default_group_regex(BREASTMNIST) == ""
    assert sources.default_group_regex(tmp_path / "missing") == ""
