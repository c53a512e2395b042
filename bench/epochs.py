"""Seconds per training epoch of a search: Keras making a new tf.data iterator every epoch vs one repeated iterator.

Given a finite `tf.data.Dataset`, `fit` makes a new iterator every epoch. Inside a search on 2 cores the first batch
of some epochs then waited 14–16 s on a 28 px set of 42,000 training images whose epochs took 22 s (`auto --minutes
5` on `synth.py --n 60000 --size 28`). medimg now hands `fit` the training dataset repeated without end and the
steps of one epoch (`pipeline.repeated`), so Keras keeps one iterator for the whole fit.

Each variant runs the real command, `python -m medimg tune DATA --max-trials 1 --epochs E --augment
flip_horizontal=1,rotation=0.05` (the quick preset's first trial with the automatic mode's augmentation, early
stopping as shipped), in its own process; the baseline's process first replaces `pipeline.repeated` by
one that returns the dataset unrepeated (Keras' own per-epoch iterators), nothing else changes. Runs alternate
A B A B. From each run's event log: seconds from the trial's first batch to its last epoch's end, divided by the
epochs it ran; and the epochs whose first batch came more than 2 s after the previous epoch ended.

    python bench/epochs.py [--quick] [--epochs 8] [--rounds 2] [--synthetic 20000]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import common
import synth

DATASETS = (  # (folder under ../shared/datasets, pixels, channel mode): each shared set as the automatic mode plans it
    ("retinamnist", 28, "rgb"),
    ("chest_xray_pneumonia_mini", 64, "gray"),
)
UNREPEATED = (
    "import sys, runpy; from medimg.datasets import pipeline; "
    "pipeline.repeated = lambda dataset, examples, batch_size: (dataset, None); "
    "sys.argv = ['medimg', *sys.argv[1:]]; runpy.run_module('medimg', run_name='__main__')"
)
STALL_SECONDS = 2.0
AUGMENT = "flip_horizontal=1,rotation=0.05"  # the automatic mode's (auto.plan): flips, rotations up to ±18°


def run_tune(data: Path, size: int, color: str, epochs: int, repeated: bool, runs: Path) -> dict:
    """One `tune` run in its own process; its epoch timings from the run's event log."""
    command = [sys.executable] + (["-m", "medimg"] if repeated else ["-c", UNREPEATED])
    command += ["tune", str(data), "--max-trials", "1", "--epochs", str(epochs), "--image-size", str(size)]
    command += ["--color", color, "--runs", str(runs), "--augment", AUGMENT]
    done = subprocess.run(command, capture_output=True, text=True, cwd=common.REPO, check=True)
    run = Path(done.stdout.strip().splitlines()[-1])
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]
    first_batch: dict[int, float] = {}
    ends: dict[int, float] = {}
    for event in events:
        if event.get("type") == "batch":
            first_batch.setdefault(event["epoch"], event["t"])
        elif event.get("type") == "epoch":
            ends[event["epoch"]] = event["t"]
    ran = sorted(ends)
    stalls = sum(first_batch.get(e + 1, ends[e]) - ends[e] > STALL_SECONDS for e in ran[:-1])
    shutil.rmtree(run, ignore_errors=True)
    return {"epochs": len(ran), "seconds": ends[ran[-1]] - first_batch[ran[0]], "stalls": stalls}


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--synthetic", type=int, default=20000, help="images of the synthetic 28 px set (0: none)")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.rounds, args.synthetic = 3, 1, 3000

    shared = common.REPO.parent / "shared" / "datasets"
    sets = [(name, shared / name, size, color) for name, size, color in DATASETS if (shared / name).is_dir()]
    if args.synthetic:
        sets.append((f"synthetic, {args.synthetic:,} images", synth.synthesize(args.synthetic, 28), 28, "gray"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="medimg-epochs-") as tmp:
        for name, folder, size, color in sets:
            totals = {False: [0.0, 0, 0], True: [0.0, 0, 0]}  # seconds, epochs, stalls
            for _ in range(args.rounds):
                for repeated in (False, True):
                    result = run_tune(folder, size, color, args.epochs, repeated, Path(tmp))
                    total = totals[repeated]
                    total[0] += result["seconds"]
                    total[1] += result["epochs"]
                    total[2] += result["stalls"]
            per_epoch = {key: seconds / max(1, epochs) for key, (seconds, epochs, _) in totals.items()}
            rows.append(
                [
                    f"{name} ({size} px {color})",
                    per_epoch[False],
                    per_epoch[True],
                    f"{totals[False][2]} of {totals[False][1]} / {totals[True][2]} of {totals[True][1]}",
                    common.ratio(per_epoch[False], per_epoch[True]),
                ]
            )
    common.print_table(
        f"`tune --max-trials 1 --epochs {args.epochs}`, {args.rounds} round(s) per variant",
        [
            "dataset",
            "s per epoch, new iterator per epoch",
            "s per epoch, one repeated iterator (shipped)",
            f"epochs starting > {STALL_SECONDS:g} s late (new / repeated)",
            "new / repeated",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
