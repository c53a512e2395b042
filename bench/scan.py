"""`medimg.datasets.scanning.scan` vs a sequential `cv2.imread` loop over the same files, and a second scan of the
same folder.

Compared on N synthetic JPEGs (default 20,000 at 128 px), files already in the OS page cache:
- baseline: `for path in paths: cv2.imread(path)` (the file list is given, not timed);
- medimg: `scanning.scan(folder)` with an empty cache folder: listing, reading and inspecting in threads (JPEG
  frame header + 1/8-scale grayscale decode + hash, `images.inspect`), the full decode of files whose candidate
  keys meet, and the report (target ≥ 1.8× faster than the baseline on 2 cores), also with other worker counts;
- a second `scan` of the unchanged folder (target < 1 s: medimg's scan cache, keyed by path, size and mtime, should
  answer without decoding), and a third after 1 % of the files got a new mtime (only those are decoded again);
- the floor a scan cache keyed by (path, size, mtime) would have: `list_files` plus one `os.stat` per file, and
  the same with an `os.scandir` walk that resolves no paths.
Each row also shows the CPU seconds other processes took while it ran, per repeat (the machine is shared: a scan
needs both cores, the sequential loop only one). Before timing, the scan's report is checked (untimed) against a
reference that decodes every file in full and groups identical pixels, as the scan did before `images.inspect`.
Runs alternate (baseline, scan, second scan, ...) and medians are shown. A last table times `cv2.imdecode` of the
same bytes in several modes (full colour as `images.decode` decodes, grayscale, JPEG DCT-reduced) and
`images.inspect` itself.

    python bench/scan.py [--quick] [--n 20000] [--repeats 2] [--workers 1,3,4]
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
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
    from medimg.datasets import scanning

    return scanning.scan(folder, workers=workers).image_count


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


def check_scan(folder: Path) -> None:
    """The scan must find what a full decode of every file finds (sizes, modes, identical-pixel groups); untimed."""
    from collections import Counter, defaultdict

    from medimg.datasets import dataset, scanning
    from medimg.imaging import images

    report = scanning.scan(folder)
    groups, sizes, modes = defaultdict(list), Counter(), Counter()
    for file in dataset.list_files(folder).files:
        pixels, info = images.decode(images.read_bytes(file.path))
        groups[images.pixel_digest(pixels)].append(file.path)
        sizes[f"{info.width}x{info.height}"] += 1
        modes[f"{info.format} {scanning._mode_name(info.channels)} {info.bit_depth}-bit"] += 1
    duplicates = sorted(sorted(group) for group in groups.values() if len(group) > 1)
    assert report.sizes == dict(sizes) and report.modes == dict(modes), "the scan's sizes or modes are wrong"
    assert sorted(map(sorted, report.duplicates)) == duplicates, "the scan's duplicate groups are wrong"
    copies = sum(map(len, duplicates))
    print(f"checked against a full decode of every file: the same sizes, modes and {len(duplicates)} groups of")
    print(f"identical pixels ({copies} files; each needed a full decode in the scan to be confirmed)")


def stat_floor(folder: Path) -> int:
    """What any (path, size, mtime)-keyed cache must still do on every scan: list the files and stat each."""
    from medimg.datasets import dataset

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
    from medimg.datasets import dataset

    return dataset.list_files(folder).files


def measure(folder: Path, paths: list[str], repeats: int, workers: list[int]) -> tuple[dict, dict]:
    """Seconds per variant and repeat, variants interleaved, and the CPU seconds other processes (and the
    hypervisor) took meanwhile: a parallel scan needs both cores, a sequential loop only one."""
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
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    others: dict[str, list[float]] = {name: [] for name in variants}
    counts = {}
    for _ in range(repeats):
        for name, work in variants.items():
            busy, own = busy_cpu_seconds(), time.process_time()
            seconds, counts[name] = common.timed(work)
            times[name].append(seconds)
            others[name].append(max(0.0, busy_cpu_seconds() - busy - (time.process_time() - own)))
    assert len(set(counts.values())) == 1, f"variants saw different file counts: {counts}"
    return times, others


def busy_cpu_seconds() -> float:
    """CPU seconds all processes have used (Linux /proc/stat, all cores): less this process's, what others took."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


DECODE_MODES = {
    "IMREAD_UNCHANGED (what images.decode decodes)": "IMREAD_UNCHANGED",
    "IMREAD_COLOR (cv2.imread's default)": "IMREAD_COLOR",
    "IMREAD_GRAYSCALE": "IMREAD_GRAYSCALE",
    "IMREAD_REDUCED_COLOR_2 (JPEG at 1/2 scale)": "IMREAD_REDUCED_COLOR_2",
    "IMREAD_REDUCED_GRAYSCALE_2": "IMREAD_REDUCED_GRAYSCALE_2",
    "IMREAD_REDUCED_GRAYSCALE_8 (what images.inspect decodes)": "IMREAD_REDUCED_GRAYSCALE_8",
}


def decode_modes(paths: list[str], repeats: int = 3) -> None:
    """Microseconds per image to decode the same in-memory bytes in each mode (best of `repeats`)."""
    import cv2

    from medimg.imaging import images

    data = [np.fromfile(path, dtype=np.uint8) for path in paths[:2000]]
    rows, base = [], None
    for label, flag in DECODE_MODES.items():
        mode = getattr(cv2, flag)
        best = min(common.timed(lambda m=mode: [cv2.imdecode(d, m) for d in data])[0] for _ in range(repeats))
        base = base or best
        rows.append([label, 1e6 * best / len(data), common.ratio(base, best)])
    raw = [d.tobytes() for d in data]
    best = min(common.timed(lambda: [images.inspect(b) for b in raw])[0] for _ in range(repeats))
    label = "medimg images.inspect (header, 1/8 gray, hash)"
    rows.append([label, 1e6 * best / len(data), common.ratio(base, best)])
    common.print_table(f"decode only, {len(data)} files in memory", ["mode", "µs per image", "speed-up"], rows)


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="synthetic images")
    parser.add_argument("--size", type=int, default=128, help="side of the synthetic JPEGs")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", default="1,3,4", help="extra worker counts to try (comma-separated, '' for none)")
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeats, args.workers = min(args.n, 2000), 1, "3"
    folder = synth.synthesize(args.n, args.size, args.data)
    paths = common.class_folder_files(folder)[0]
    for path in paths:
        Path(path).read_bytes()  # page cache warm for every variant alike
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    fresh_cache()
    check_scan(folder)
    times, others = measure(folder, paths, args.repeats, workers)
    baseline = common.median(times["sequential cv2.imread loop"])
    rows = [
        [
            name,
            common.median(t),
            f"{len(paths) / common.median(t):.0f}",
            common.ratio(baseline, common.median(t)),
            " / ".join(f"{o:.2f}" for o in others[name]),
        ]
        for name, t in times.items()
    ]
    title = f"scan of {len(paths)} JPEGs ({args.size} px), {os.cpu_count()} cores, median of {args.repeats}"
    headers = ["variant", "seconds", "files/s", "imread loop / this", "CPU s taken by others, each repeat"]
    common.print_table(title, headers, rows)
    speedup = baseline / common.median(times["medimg scan, empty cache (default workers)"])
    rescan = common.median(times["medimg scan again, unchanged folder"])
    print(f"\nspeed target (imread loop / scan): {common.verdict(speedup, SPEED_TARGET)}")
    print(f"rescan target (seconds): {common.verdict(rescan, RESCAN_TARGET_SECONDS, higher_is_better=False)}")
    decode_modes(paths)


if __name__ == "__main__":
    main()
