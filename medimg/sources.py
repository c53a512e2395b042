"""Where datasets may come from in the app: the bundled demo, folders under the allowed data roots, uploaded zips.

Server-side paths are resolved with `realpath` and must stay inside a configured root, so `../`, absolute paths
elsewhere and symlinks pointing out are refused. Zip uploads are checked entry by entry before anything is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path

from medimg.errors import DatasetError

DEMO_DATASET = Path(__file__).parent / "demo" / "chest_xray_mini"
UPLOAD_PREFIX = "medimg-upload-"
UPLOADS_FOLDER = "uploads"  # under the runs folder: uploaded datasets last as long as the runs trained on them


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
    """Folders under the roots (to `depth` levels) that hold sub-folders: candidates to pick from."""
    found: list[Path] = []
    for root in roots:
        for current, dirs, _ in os.walk(root, followlinks=False):
            level = len(Path(current).relative_to(root).parts)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            if dirs and level <= depth:
                found.append(Path(current))
            if level >= depth:
                dirs[:] = []
    return found


@dataclasses.dataclass(frozen=True)
class ZipLimits:
    max_entries: int = 20000
    max_total_bytes: int = 2 * 1024**3
    max_ratio: float = 200.0


def extract_zip(data: bytes | Path, limits: ZipLimits = ZipLimits(), parent: Path | None = None) -> Path:
    """Check every entry of a zip (count, total size, compression ratio, no absolute/`..` paths or symlinks),
    then extract into a fresh temporary folder. Raises DatasetError naming the first problem."""
    source = Path(data) if isinstance(data, Path) else _spill(data)
    try:
        with zipfile.ZipFile(source) as archive:
            members = _checked_members(archive, limits)
            target = Path(tempfile.mkdtemp(prefix=UPLOAD_PREFIX, dir=parent))
            for info in members:
                destination = target / info.filename
                if info.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as stream, open(destination, "wb") as out:
                    shutil.copyfileobj(stream, out, 1 << 20)
    except zipfile.BadZipFile as error:
        raise DatasetError(f"the upload is not a valid zip file: {error}") from error
    finally:
        if not isinstance(data, Path):
            source.unlink(missing_ok=True)
    return _single_top_folder(target)


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


def _checked_members(archive: zipfile.ZipFile, limits: ZipLimits) -> list[zipfile.ZipInfo]:
    members = archive.infolist()
    if len(members) > limits.max_entries:
        raise DatasetError(f"the zip has {len(members)} entries; the limit is {limits.max_entries}.")
    total = sum(info.file_size for info in members)
    if total > limits.max_total_bytes:
        limit_mb = limits.max_total_bytes // 2**20
        raise DatasetError(f"the zip expands to {total / 2**20:.0f} MB; the limit is {limit_mb} MB.")
    for info in members:
        name = info.filename
        parts = Path(name).parts
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
            raise DatasetError(f"the zip entry '{name}' points outside the archive folder; refused.")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DatasetError(f"the zip entry '{name}' is a symbolic link; refused.")
        if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
            raise DatasetError(
                f"the zip entry '{name}' is compressed {info.file_size / info.compress_size:.0f}:1 "
                f"(limit {limits.max_ratio:.0f}:1), which looks like a zip bomb; refused."
            )
    return members


def _single_top_folder(target: Path) -> Path:
    # A zip of "mydata/" extracts to target/mydata: use that folder as the dataset root.
    children = [p for p in target.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return target
