"""Decode once, reuse from disk: hits, invalidation by size/mtime, failures kept, damaged entries rebuilt."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medimg.datasets import cache
from medimg.imaging import images
from medimg.imaging.contract import InputContract


@pytest.fixture()
def decode_counter(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call of images.load_image (the decoder the cache uses), recorded; decoding itself stays real."""
    calls: list[str] = []
    real = images.load_image

    def counting(source, size, color, **kwargs):
        calls.append(str(source))
        return real(source, size, color, **kwargs)

    monkeypatch.setattr(images, "load_image", counting)
    return calls


@pytest.fixture()
def demo_files(demo_dir: Path) -> tuple[list[str], list[int]]:
    normal = sorted((demo_dir / "val" / "NORMAL").glob("*.jpeg"))[:4]
    pneumonia = sorted((demo_dir / "val" / "PNEUMONIA").glob("*.jpeg"))[:4]
    return [str(p) for p in normal + pneumonia], [0] * 4 + [1] * 4


def test_cache_dir_follows_the_environment(isolated_cache: Path) -> None:
    assert cache.cache_dir() == isolated_cache


def test_first_load_decodes_second_load_is_a_hit(
    tmp_path: Path, demo_files: tuple[list[str], list[int]], decode_counter: list[str]
) -> None:
    paths, labels = demo_files
    first = cache.load_arrays(paths, labels, InputContract(16, "gray"), directory=tmp_path)
    assert sorted(decode_counter) == sorted(paths)
    assert first.images.shape == (8, 16, 16, 1) and first.images.dtype == np.uint8
    assert isinstance(first.images, np.memmap)
    np.testing.assert_array_equal(first.labels, labels)
    for index, path in enumerate(paths):  # stored in the order of the paths, as prediction will load them
        np.testing.assert_array_equal(first.images[index], images.load_image(path, 16, "gray"))
    decode_counter.clear()
    second = cache.load_arrays(paths, labels, InputContract(16, "gray"), directory=tmp_path)
    assert decode_counter == []  # nothing decoded again
    np.testing.assert_array_equal(np.asarray(second.images), np.asarray(first.images))
    assert second.paths == paths and second.failures == []
    assert len(list(tmp_path.glob("*.npy"))) == 1
    assert list(tmp_path.glob("*.tmp")) == []


def test_size_and_color_are_part_of_the_key(
    tmp_path: Path, demo_files: tuple[list[str], list[int]], decode_counter: list[str]
) -> None:
    paths, labels = demo_files
    gray = cache.load_arrays(paths, labels, InputContract(16, "gray"), directory=tmp_path)
    rgb = cache.load_arrays(paths, labels, InputContract(16, "rgb"), directory=tmp_path)
    bigger = cache.load_arrays(paths, labels, InputContract(24, "gray"), directory=tmp_path)
    assert (gray.images.shape[-1], rgb.images.shape[-1], bigger.images.shape[1]) == (1, 3, 24)
    assert len(decode_counter) == 3 * len(paths)
    assert len(list(tmp_path.glob("*.npy"))) == 3


def test_changed_mtime_makes_a_new_entry(
    tmp_path: Path, demo_files: tuple[list[str], list[int]], decode_counter: list[str]
) -> None:
    source, labels = demo_files
    paths = []
    for path in source:  # copies: the demo's own files must keep their times
        copy = tmp_path / "data" / Path(path).name
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes(Path(path).read_bytes())
        paths.append(str(copy))
    store = tmp_path / "cache"
    cache.load_arrays(paths, labels, InputContract(16, "gray"), directory=store)
    stat = os.stat(paths[0])
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    decode_counter.clear()
    cache.load_arrays(paths, labels, InputContract(16, "gray"), directory=store)
    assert len(decode_counter) == len(paths)
    assert len(list(store.glob("*.npy"))) == 2


def test_changed_content_and_size_is_seen(tmp_path: Path) -> None:
    import cv2

    path = tmp_path / "one.png"
    cv2.imwrite(str(path), np.zeros((8, 8), np.uint8))
    other = tmp_path / "two.png"
    cv2.imwrite(str(other), np.full((8, 8), 50, np.uint8))
    store = tmp_path / "cache"
    before = cache.load_arrays([str(path), str(other)], [0, 1], InputContract(8, "gray"), directory=store)
    assert int(before.images[0].max()) == 0
    mtime = os.stat(path).st_mtime_ns
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8))
    os.utime(path, ns=(mtime, mtime))  # same mtime: only the size tells the file changed
    assert os.stat(path).st_mtime_ns == mtime
    after = cache.load_arrays([str(path), str(other)], [0, 1], InputContract(8, "gray"), directory=store)
    assert int(after.images[0].max()) > 0


def test_unreadable_files_are_recorded_and_labels_stay_aligned(
    tmp_path: Path, demo_files: tuple[list[str], list[int]], decode_counter: list[str]
) -> None:
    paths, _ = demo_files
    bad = tmp_path / "bad.jpeg"
    bad.write_text("not a picture")
    empty = tmp_path / "empty.png"
    empty.touch()
    mixed_paths = [str(bad), *paths[:2], str(empty), *paths[6:]]
    mixed_labels = [1, 0, 0, 0, 1, 1]
    progress: list[tuple[int, int, str]] = []
    result = cache.load_arrays(
        mixed_paths,
        mixed_labels,
        InputContract(16, "gray"),
        directory=tmp_path / "c",
        on_progress=lambda *a: progress.append(a),
    )
    assert len(result) == 4 and result.images.shape[0] == 4
    assert result.paths == [*paths[:2], *paths[6:]]
    np.testing.assert_array_equal(result.labels, [0, 0, 1, 1])
    assert [f["path"] for f in result.failures] == [str(bad), str(empty)]
    assert result.failures[0]["reason"].startswith("not an image")
    assert result.failures[1]["reason"] == "empty file (0 bytes)"
    assert progress[-1] == (6, 6, "decoding images into the cache")
    decode_counter.clear()
    again = cache.load_arrays(mixed_paths, mixed_labels, InputContract(16, "gray"), directory=tmp_path / "c")
    assert decode_counter == [] and again.failures == result.failures  # failures are cached too


def test_all_unreadable_gives_an_empty_array(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("x")
    result = cache.load_arrays([str(bad)], [0], InputContract(16, "gray"), directory=tmp_path / "c")
    assert len(result) == 0 and result.images.shape == (0, 16, 16, 1)
    assert len(result.failures) == 1


def test_damaged_entry_is_rebuilt(
    tmp_path: Path, demo_files: tuple[list[str], list[int]], decode_counter: list[str]
) -> None:
    paths, labels = demo_files
    first = np.asarray(cache.load_arrays(paths, labels, InputContract(16, "gray"), directory=tmp_path).images).copy()
    (meta,) = tmp_path.glob("*.json")
    meta.write_text("{ half written")
    decode_counter.clear()
    rebuilt = cache.load_arrays(paths, labels, InputContract(16, "gray"), directory=tmp_path)
    assert len(decode_counter) == len(paths)
    np.testing.assert_array_equal(np.asarray(rebuilt.images), first)


def test_key_is_stable_and_covers_the_file_list(demo_files: tuple[list[str], list[int]]) -> None:
    paths, _ = demo_files
    assert cache.cache_key(paths, InputContract(16, "gray")) == cache.cache_key(list(paths), InputContract(16, "gray"))
    assert cache.cache_key(paths, InputContract(16, "gray")) != cache.cache_key(paths[::-1], InputContract(16, "gray"))
    assert cache.cache_key(paths, InputContract(16, "gray")) != cache.cache_key(paths[:-1], InputContract(16, "gray"))
