"""What watching a live search costs: the same automatic run (same seed and budget) with the Tune page open in
Debian's Chromium and without, alternated, on 2 cores where the search, the Streamlit server and the browser share
the machine. A benchmark, not a test.

    python bench/dashboard.py                     # BreastMNIST, 2 minutes, watched / unwatched × 2
    python bench/dashboard.py --rounds 1 --minutes 1

Prints, per run: trials and epochs the search completed, and the CPU seconds the Streamlit server and Chromium
took meanwhile (from /proc: user + system time of their processes). The epochs completed move with the machine's
state from run to run; the CPU seconds are the steadier reading. The page redraws every `pages.common.POLL_SECONDS`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, bench_home

SHARED = REPO.parent / "shared" / "datasets"


def cpu_seconds(pattern: str) -> float:
    """User + system CPU seconds of the processes whose command line matches `pattern` (pgrep -f)."""
    pids = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def one_run(root: Path, data: Path, minutes: float, port: int, watch: bool) -> str:
    from playwright.sync_api import sync_playwright

    before = set(root.glob("tune-*"))
    command = [sys.executable, "-m", "medimg", "auto", str(data), "--minutes", str(minutes), "--seed", "0"]
    search = subprocess.Popen(
        [*command, "--runs", str(root)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while not set(root.glob("tune-*")) - before:
        time.sleep(0.2)
    run = (set(root.glob("tune-*")) - before).pop()
    server_before, browser = cpu_seconds(f"server.port {port}"), 0.0
    if watch:
        with sync_playwright() as p:
            chromium = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
            chromium.new_page().goto(f"http://localhost:{port}/tune?run={run.name}")
            browser_before = cpu_seconds("chromium")
            search.wait()
            browser = cpu_seconds("chromium") - browser_before
            chromium.close()
    else:
        search.wait()
    server = cpu_seconds(f"server.port {port}") - server_before
    from medimg.store import runs as run_store

    finished = run_store.Run(run)
    record, epochs = finished.record, len(finished.events("epoch"))
    return (
        f"| {'watched' if watch else 'not watched'} | {record.get('trials_completed')} | {epochs} | {server:.1f} | "
        f"{browser:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "breastmnist")
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--port", type=int, default=8637)
    args = parser.parse_args()
    root = bench_home() / "dashboard-runs"
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MEDIMG_RUNS_DIR": str(root)}
    server = subprocess.Popen(
        ["streamlit", "run", "app.py", "--server.port", str(args.port), "--server.headless", "true"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(8)
        load = os.getloadavg()[0]
        print(f"load average at start: {load:.2f} (2 cores); {args.minutes:g} minutes on {args.data.name}")
        print("| page | trials | epochs | server CPU s | Chromium CPU s |\n|---|---:|---:|---:|---:|", flush=True)
        for _ in range(args.rounds):
            for watch in (True, False):
                print(one_run(root, args.data, args.minutes, args.port, watch), flush=True)
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
