"""`medimg.dataset.scan` vs a sequential `cv2.imread` loop over the same files, and a second scan of the same folder.

Compared on N synthetic JPEGs (default 20,000 at 128 px), files already in the OS page cache:
- baseline: `for path in paths: cv2.imread(path)` (the file list is given, not timed);
- medimg: `dataset.scan(folder)` with an empty cache folder: listing, decoding in threads, pixel hashing and the
  report (target ≥ 1.8× faster than the baseline on 2 cores), also with other worker counts;
- a second `scan` of the unchanged folder (target < 1 s: medimg's scan cache, keyed by path, size and mtime, should
  answer without decoding), and a third after 1 % of the files got a new mtime (only those are decoded again);
- the floor a scan cache keyed by (path, size, mtime) would have: `list_files` plus one `os.stat` per file, and
  the same with an `os.scandir` walk that resolves no paths;
- a prototype (bench-only code, evidence for a change to `medimg.dataset.scan`): the same listing, decode and
  report, but one thread-pool task per 64 files instead of one per file, and SHA-1 (hardware-accelerated) instead
  of BLAKE2b over the pixels, hashed in place without a `tobytes()` copy; its report must match medimg's.
Runs alternate (baseline, scan, second scan, ...) and medians are shown. A last table times `cv2.imdecode` of the
same bytes in several modes (full colour as medimg decodes, grayscale, JPEG DCT-reduced), for the report's advice.

    python bench/scan.py [--quick] [--n 20000] [--repeats 2] [--workers 1,2,4]
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common
import numpy as np
import synth

SPEED_TARGET = 1.8
RESCAN_TARGET_SECONDS = 1.0


def imread_loop(paths: list[str]) -> int:
    import cv2

    return sum(cv2.imread(path) is not None for path in paths)


def medimg_scan(folder: Path, workers: int | None = None) -> int:
    from medimg import dataset

    return dataset.scan(folder, workers=workers).image_count


def fresh_cache() -> None:
    """Point medimg's caches (arrays and scan results) at a new, empty folder: the next scan decodes everything."""
    folder = tempfile.mkdtemp(prefix="scan-cache-", dir=common.bench_home())
    atexit.register(shutil.rmtree, folder, True)
    os.environ["MEDIMG_CACHE_DIR"] = folder


def touch_some(paths: list[str], every: int = 100) -> None:
    """A new mtime (contents unchanged) for every `every`-th file, as an edit or a copy would give."""
    now = time.time_ns()
    for offset, path in enumerate(paths[::every]):
        os.utime(path, ns=(now + offset, now + offset))


def prototype_scan(folder: Path, workers: int | None = None, chunk: int = 64):
    """medimg's scan with chunked tasks and a faster in-place pixel hash (uses medimg's private `_report`)."""
    from medimg import dataset, images
    from medimg.errors import ImageReadError

    def inspect(path: str):
        try:
            pixels, info = images.decode(images.read_bytes(path))
        except ImageReadError as error:
            return None, str(error)
        digest = hashlib.sha1(np.ascontiguousarray(pixels), usedforsecurity=False)
        digest.update(str(pixels.shape).encode())
        return info, digest.hexdigest()

    listing = dataset.list_files(folder)
    paths = [f.path for f in listing.files]
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) + 1)) as pool:
        results = [result for part in pool.map(lambda c: [inspect(p) for p in c], chunks) for result in part]
    return dataset._report(listing, results)


def check_prototype(folder: Path) -> None:
    """The prototype must find what medimg finds (classes, sizes, duplicate groups); checked once, untimed."""
    from medimg import dataset

    mine, reference = prototype_scan(folder), dataset.scan(folder)
    found = lambda r: (r.classes, r.sizes, sorted(map(sorted, r.duplicates)), r.unreadable)
    assert found(mine) == found(reference), "the prototype scan disagrees with medimg's scan"


def stat_floor(folder: Path) -> int:
    """What any (path, size, mtime)-keyed cache must still do on every scan: list the files and stat each."""
    from medimg import dataset

    listing = dataset.list_files(folder)
    return sum(os.stat(f.path).st_size > 0 for f in listing.files)


def scandir_floor(folder: Path) -> int:
    """The same check through `os.scandir` (one stat per file, no `realpath`): a cache's floor with a lean listing."""
    count = 0
    for class_dir in os.scandir(folder):
        if class_dir.is_dir() and not class_dir.name.startswith("."):
            entries = (e for e in os.scandir(class_dir.path) if not e.name.startswith("."))
            count += sum(e.stat().st_size > 0 for e in entries)
    return count


def list_listing(folder: Path) -> list:
    from medimg import dataset

    return dataset.list_files(folder).files


def measure(folder: Path, paths: list[str], repeats: int, workers: list[int]) -> dict[str, list[float]]:
    """Seconds per variant and repeat, variants interleaved."""
    variants = {
        "sequential cv2.imread loop": lambda: imread_loop(paths),
        "medimg scan, empty cache (default workers)": lambda: (fresh_cache(), medimg_scan(folder))[1],
        "medimg scan again, unchanged folder": lambda: medimg_scan(folder),
        "medimg scan again, 1 % of files touched": lambda: (touch_some(paths), medimg_scan(folder))[1],
        **{
            f"medimg scan, empty cache, workers={w}": (lambda w=w: (fresh_cache(), medimg_scan(folder, w))[1])
            for w in workers
        },
        "listing + os.stat per file (cache floor)": lambda: stat_floor(folder),
        "listing only: medimg list_files": lambda: len(list_listing(folder)),
        "os.scandir walk + stat per file": lambda: scandir_floor(folder),
        "prototype: 64 files per task + SHA-1": lambda: prototype_scan(folder).image_count,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    counts = {}
    for _ in range(repeats):
        for name, work in variants.items():
            seconds, counts[name] = common.timed(work)
            times[name].append(seconds)
    assert len(set(counts.values())) == 1, f"variants saw different file counts: {counts}"
    return times


DECODE_MODES = {
    "IMREAD_UNCHANGED (what medimg decodes)": "IMREAD_UNCHANGED",
    "IMREAD_COLOR (cv2.imread's default)": "IMREAD_COLOR",
    "IMREAD_GRAYSCALE": "IMREAD_GRAYSCALE",
    "IMREAD_REDUCED_COLOR_2 (JPEG at 1/2 scale)": "IMREAD_REDUCED_COLOR_2",
    "IMREAD_REDUCED_GRAYSCALE_2": "IMREAD_REDUCED_GRAYSCALE_2",
}


def decode_modes(paths: list[str], repeats: int = 3) -> None:
    """Microseconds per image to decode the same in-memory bytes in each mode (best of `repeats`)."""
    import cv2

    data = [np.fromfile(path, dtype=np.uint8) for path in paths[:2000]]
    rows, base = [], None
    for label, flag in DECODE_MODES.items():
        mode = getattr(cv2, flag)
        best = min(common.timed(lambda m=mode: [cv2.imdecode(d, m) for d in data])[0] for _ in range(repeats))
        base = base or best
        rows.append([label, 1e6 * best / len(data), common.ratio(base, best)])
    common.print_table(f"decode only, {len(data)} files in memory", ["mode", "µs per image", "speed-up"], rows)


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="synthetic images")
    parser.add_argument("--size", type=int, default=128, help="side of the synthetic JPEGs")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", default="1,2,4", help="extra worker counts to try (comma-separated, '' for none)")
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeats, args.workers = min(args.n, 2000), 1, "2"
    folder = synth.synthesize(args.n, args.size, args.data)
    paths = common.class_folder_files(folder)[0]
    for path in paths:
        Path(path).read_bytes()  # page cache warm for every variant alike
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    fresh_cache()
    check_prototype(folder)
    times = measure(folder, paths, args.repeats, workers)
    baseline = common.median(times["sequential cv2.imread loop"])
    rows = [
        [name, common.median(t), f"{len(paths) / common.median(t):.0f}", common.ratio(baseline, common.median(t))]
        for name, t in times.items()
    ]
    title = f"scan of {len(paths)} JPEGs ({args.size} px), {os.cpu_count()} cores, median of {args.repeats}"
    common.print_table(title, ["variant", "seconds", "files/s", "imread loop / this"], rows)
    speedup = baseline / common.median(times["medimg scan, empty cache (default workers)"])
    rescan = common.median(times["medimg scan again, unchanged folder"])
    print(f"\nspeed target (imread loop / scan): {common.verdict(speedup, SPEED_TARGET)}")
    print(f"rescan target (seconds): {common.verdict(rescan, RESCAN_TARGET_SECONDS, higher_is_better=False)}")
    decode_modes(paths)


if __name__ == "__main__":
    main()
