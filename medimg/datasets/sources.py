"""Where datasets may come from in the app: the bundled demo, folders under the allowed data roots, uploaded zips.

Server-side paths are resolved with `realpath` and must stay inside a configured root, so `../`, absolute paths
elsewhere and symlinks pointing out are refused. Zip uploads are checked entry by entry before anything is written.

Zip entry names, as people's tools write them (PKWARE APPNOTE.TXT 6.3: 4.4.17.1 says separators are '/', 4.4.4
bit 11 marks UTF-8 names, Appendix D makes code page 437 the default otherwise):
- `\\` is read as a separator: PowerShell 5's Compress-Archive writes `NORMAL\\a.png`.
- names without the UTF-8 flag, which Python's zipfile decodes as cp437, are decoded again from their bytes: UTF-8
  if every such name is valid UTF-8 (Info-ZIP and macOS write UTF-8 without the flag), else code page 850, the
  OEM code page Windows' built-in zip uses for Western European languages (`NEUMON\\xd6A` is "NEUMONÍA" in
  cp850, "NEUMON╓A" in cp437), provided every non-ASCII character then is a letter, mark or digit. Anything else
  (Cyrillic cp866, Japanese cp932, ...) is refused with a message rather than extracted under garbled names.
- macOS Finder's clutter (`__MACOSX/`, `._*`, `.DS_Store`) is not extracted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import stat
import tempfile
import unicodedata
import zipfile
import zlib
from pathlib import Path

from medimg.errors import DatasetError

DEMO_DATASET = Path(__file__).parents[1] / "demo" / "chest_xray_mini"
# The patient ID in the file names of Kermany et al.'s paediatric chest X-rays (Cell 2018; the Kaggle "Chest X-Ray
# Images (Pneumonia)" set): `personNNN_bacteria_…`, `IM-NNNN-…` and, for a second batch of normals,
# `NORMAL2-IM-NNNN-…` (the shared mini set's manifest.csv keeps that prefix as the patient ID). The demo is a subset.
KERMANY_GROUP_REGEX = r"^((?:NORMAL2-)?IM-\d+|person\d+)"
# Naming conventions whose patient ID is known, and the share of sampled image names one must match to be assumed.
KNOWN_GROUP_PATTERNS = (KERMANY_GROUP_REGEX,)
KNOWN_PATTERN_SHARE = 0.9
NAME_SAMPLE = 2000  # image names read (os.walk order) to recognise a convention; no image is decoded
# The demo's patient IDs let the leakage check confirm its splits are patient-disjoint instead of saying it cannot
# tell (one image per patient).
DEMO_GROUP_REGEX = KERMANY_GROUP_REGEX
UTF8_NAME_FLAG = 0x800  # general purpose bit 11 (APPNOTE 4.4.4)
ENCRYPTED_FLAG = 0x1  # general purpose bit 0
LEGACY_NAME_ENCODING = "cp850"
MACOS_CLUTTER = ("__MACOSX", ".DS_Store")
UPLOAD_PREFIX = "medimg-upload-"
UPLOADS_FOLDER = "uploads"  # under the runs folder: uploaded datasets last as long as the runs trained on them


def default_group_regex(path: str | Path) -> str:
    """The patient-ID pattern a dataset brings with it: the bundled demo's (`DEMO_GROUP_REGEX`), or a known naming
    convention's (`KNOWN_GROUP_PATTERNS`) when at least KNOWN_PATTERN_SHARE of the first NAME_SAMPLE image file names
    under the folder (hidden files and macOS clutter skipped, as the listing does; at most 10 × NAME_SAMPLE entries
    visited) match it; else "" (unknown; the user gives one). `path`: a dataset folder (a CSV manifest
    carries its own `group` column and gets ""). Reads names only; never raises for an unreadable folder."""
    from medimg.imaging.images import IMAGE_EXTENSIONS, is_ignored

    try:
        folder = Path(path).resolve()
        if folder == DEMO_DATASET.resolve():
            return DEMO_GROUP_REGEX
        if not folder.is_dir():
            return ""
        names: list[str] = []
        visited = 0
        for _, dirs, files in os.walk(folder):
            # The listing skips hidden files and macOS clutter (`._IM-0001-0001.jpeg`, `__MACOSX/`); so does this.
            dirs[:] = [d for d in dirs if not is_ignored(d) and d not in MACOS_CLUTTER]
            names += [n for n in files if not is_ignored(n) and Path(n).suffix.lower() in IMAGE_EXTENSIONS]
            visited += len(files) + len(dirs)
            if len(names) >= NAME_SAMPLE or visited >= 10 * NAME_SAMPLE:
                break
        names = names[:NAME_SAMPLE]
    except OSError:
        return ""
    for pattern in KNOWN_GROUP_PATTERNS:
        compiled = re.compile(pattern)
        if names and sum(bool(compiled.search(name)) for name in names) >= KNOWN_PATTERN_SHARE * len(names):
            return pattern
    return ""


def data_roots(extra: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """Allowed roots: $MEDIMG_DATA_ROOTS (os.pathsep-separated) plus `extra` (e.g. from Streamlit secrets)."""
    raw = [p for p in os.environ.get("MEDIMG_DATA_ROOTS", "").split(os.pathsep) if p.strip()] + list(extra)
    roots = []
    for item in raw:
        path = Path(os.path.realpath(os.path.expanduser(item)))
        if path.is_dir() and path not in roots:
            roots.append(path)
    return roots


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_in_roots(user_path: str, roots: list[Path]) -> Path:
    """The real path of `user_path` (relative to a root, or absolute) if it lies inside one of the roots."""
    if not roots:
        raise DatasetError("no data roots are configured; set MEDIMG_DATA_ROOTS or data_roots in secrets.toml.")
    text = user_path.strip()
    if not text:
        raise DatasetError("enter a folder path inside one of the data roots.")
    candidates = [Path(text)] if os.path.isabs(text) else [root / text for root in roots]
    for candidate in candidates:
        real = Path(os.path.realpath(candidate))
        if any(_inside(real, root) for root in roots):
            if not real.exists():
                raise DatasetError(f"{text} does not exist inside the data roots.")
            return real
    raise DatasetError(f"{text} is outside the allowed data roots ({', '.join(map(str, roots))}); refused.")


def list_dataset_folders(roots: list[Path], depth: int = 2) -> list[Path]:
    """Folders under the roots (to `depth` levels) that hold sub-folders, and the CSV manifests beside them:
    candidates to pick from (a manifest is a dataset too, and typing its path was the only way to open one). The
    split folders of a dataset laid out as train/ + val/ or test/ are not offered on their own: picking
    `retinamnist/test` for `retinamnist` was an easy slip, and a split alone is rarely what anyone means."""
    from medimg.datasets.dataset import SPLIT_ALIASES

    found: list[Path] = []
    for root in roots:
        for current, dirs, files in os.walk(root, followlinks=False):
            level = len(Path(current).relative_to(root).parts)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            if dirs and level <= depth:
                found.append(Path(current))
            if level <= depth:
                found += [Path(current) / f for f in sorted(files) if f.lower().endswith(".csv") and f[0] != "."]
            splits = {SPLIT_ALIASES.get(d.lower()) for d in dirs}
            if level >= depth or ("train" in splits and splits & {"val", "test"}):
                dirs[:] = []
    return found


@dataclasses.dataclass(frozen=True)
class ZipLimits:
    max_entries: int = 20000
    max_total_bytes: int = 2 * 1024**3
    max_ratio: float = 200.0


def extract_zip(data: bytes | Path, limits: ZipLimits = ZipLimits(), parent: Path | None = None) -> Path:
    """Check every entry of a zip, then extract it into a fresh temporary folder.

    Checks: entry count, total size, compression ratio (`limits`); no absolute, drive-letter or `..` names (after
    reading `\\` as a separator), no symbolic links, no encryption. Names are decoded as the module docstring says;
    macOS clutter is skipped.

    Args:
        data: the zip's bytes, or the path of a zip file.
        limits: the limits on entries, total size and ratio.
        parent: where to create the temporary folder (the system's temporary folder if None).

    Returns:
        The dataset folder: the zip's single top folder if it has one, else the extraction folder.

    Raises:
        DatasetError: the zip is invalid, fails a check, or its entries cannot be read or written; naming the entry.
            Nothing is left behind.
    """
    source = Path(data) if isinstance(data, Path) else _spill(data)
    target: Path | None = None
    try:
        with zipfile.ZipFile(source) as archive:
            members = _checked_members(archive, limits)
            target = Path(tempfile.mkdtemp(prefix=UPLOAD_PREFIX, dir=parent))
            for info, name in members:
                _extract_member(archive, info, name, target)
        return _single_top_folder(target)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        _remove(target)
        raise DatasetError(f"the upload is not a valid zip file: {error}") from error
    except NotImplementedError as error:  # zipfile's word for a compression method it cannot read (e.g. Deflate64)
        _remove(target)
        raise DatasetError(
            f"the zip uses a compression Python cannot read ({error}); re-create it with Deflate."
        ) from error
    except DatasetError:
        _remove(target)
        raise
    finally:
        if not isinstance(data, Path):
            source.unlink(missing_ok=True)


def _extract_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, target: Path) -> None:
    destination = target / name
    try:
        if name.endswith("/"):
            destination.mkdir(parents=True, exist_ok=True)
            return
        destination.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as stream, open(destination, "wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)
    except OSError as error:  # e.g. a name too long for this file system, or a file where a folder must go
        raise DatasetError(f"cannot extract the zip entry '{name}': {error.strerror or error}.") from error


def _remove(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def keep_upload(data: bytes, name: str, runs_folder: str | Path) -> Path:
    """Extract an uploaded zip to `runs_folder/uploads/<zip name>-<first 8 hex digits of its SHA-256>/` and return
    the dataset folder in it (its single top folder, if it has one).

    The folder keeps the zip's own name, so users recognise it, and lives beside the runs, not in a temporary folder
    that is cleaned after a day while runs still name it as their dataset. The same zip uploaded again (same bytes)
    reuses its folder. Raises DatasetError for a zip that fails the checks of `extract_zip`."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._-") or "upload"
    folder = Path(runs_folder) / UPLOADS_FOLDER
    target = folder / f"{stem[:60]}-{hashlib.sha256(data).hexdigest()[:8]}"
    if not target.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        extracted = extract_zip(data, parent=folder)
        staging = extracted if extracted.parent == folder else extracted.parent
        try:
            staging.rename(target)  # atomic: a second tab uploading the same zip finds it whole or not at all
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not target.is_dir():
                raise
    return _single_top_folder(target)


def is_kept_upload(path: str | Path, runs_folder: str | Path) -> bool:
    """Whether `path` lies inside the runs folder's kept uploads."""
    return _inside(Path(os.path.realpath(path)), Path(os.path.realpath(Path(runs_folder) / UPLOADS_FOLDER)))


def _spill(data: bytes) -> Path:
    handle, name = tempfile.mkstemp(suffix=".zip")
    with os.fdopen(handle, "wb") as stream:
        stream.write(data)
    return Path(name)


def _checked_members(archive: zipfile.ZipFile, limits: ZipLimits) -> list[tuple[zipfile.ZipInfo, str]]:
    """Every entry to extract with its decoded, '/'-separated name; raises DatasetError naming the first problem."""
    members = archive.infolist()
    if len(members) > limits.max_entries:
        raise DatasetError(f"the zip has {len(members)} entries; the limit is {limits.max_entries}.")
    total = sum(info.file_size for info in members)
    if total > limits.max_total_bytes:
        limit_mb = limits.max_total_bytes // 2**20
        raise DatasetError(f"the zip expands to {total / 2**20:.0f} MB; the limit is {limit_mb} MB.")
    names = _entry_names(members)
    for info, name in zip(members, names, strict=True):
        _check_entry(info, name, limits)
    return [(info, name) for info, name in zip(members, names, strict=True) if not _is_clutter(name)]


def _check_entry(info: zipfile.ZipInfo, name: str, limits: ZipLimits) -> None:
    # Checked on the name as it will be written, so `a\..\..\x` is caught as well as `a/../../x`.
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in name.split("/"):
        raise DatasetError(f"the zip entry '{name}' points outside the archive folder; refused.")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DatasetError(f"the zip entry '{name}' is a symbolic link; refused.")
    if info.flag_bits & ENCRYPTED_FLAG:
        raise DatasetError(f"the zip entry '{name}' is encrypted; upload a zip made without a password.")
    if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
        raise DatasetError(
            f"the zip entry '{name}' is compressed {info.file_size / info.compress_size:.0f}:1 "
            f"(limit {limits.max_ratio:.0f}:1), which looks like a zip bomb; refused."
        )


def _entry_names(members: list[zipfile.ZipInfo]) -> list[str]:
    # orig_filename is the name before zipfile's own clean-up, and cp437 maps every byte, so encoding it back
    # gives the stored bytes exactly.
    legacy = [info.orig_filename.encode("cp437") for info in members if not info.flag_bits & UTF8_NAME_FLAG]
    encoding = _legacy_encoding(legacy)
    names = []
    for info in members:
        name = info.filename if info.flag_bits & UTF8_NAME_FLAG else info.orig_filename.encode("cp437").decode(encoding)
        names.append(name.split("\x00")[0].replace("\\", "/"))
    return names


def _legacy_encoding(raw_names: list[bytes]) -> str:
    """The encoding of the names stored without the UTF-8 flag: "utf-8", LEGACY_NAME_ENCODING, or DatasetError."""
    if all(raw.isascii() for raw in raw_names):
        return "ascii"
    try:
        for raw in raw_names:
            raw.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    if all(_plausible_name(raw.decode(LEGACY_NAME_ENCODING)) for raw in raw_names):
        return LEGACY_NAME_ENCODING
    example = next(raw for raw in raw_names if not _plausible_name(raw.decode(LEGACY_NAME_ENCODING)))
    raise DatasetError(
        f"the zip's file names are in an unknown legacy encoding (e.g. {example!r}): neither UTF-8 nor DOS Latin "
        f"(code page 850), and not marked as UTF-8. Re-create the zip with UTF-8 names (7-Zip, or a current "
        "Windows or macOS), or rename its folders with plain ASCII letters."
    )


def _plausible_name(name: str) -> bool:
    # In a folder or file name, box-drawing characters and symbols mean the code page guess is wrong.
    return all(char.isascii() or unicodedata.category(char)[0] in "LMN" for char in name)


def _is_clutter(name: str) -> bool:
    parts = name.rstrip("/").split("/")
    return MACOS_CLUTTER[0] in parts or parts[-1] == MACOS_CLUTTER[1] or parts[-1].startswith("._")


def _single_top_folder(target: Path) -> Path:
    # A zip of "mydata/" extracts to target/mydata: use that folder as the dataset root.
    children = [p for p in target.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return target
