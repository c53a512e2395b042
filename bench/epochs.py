"""Seconds per training epoch of a search: Keras' new tf.data iterator every epoch (shipped) vs one repeated iterator.

Given a finite `tf.data.Dataset`, `fit` makes a new iterator every epoch. Inside a search on 2 cores the first batch
of some epochs then waited 14–16 s on a 28 px set of 42,000 training images whose epochs took 22 s (`auto --minutes
5` on `synth.py --n 60000 --size 28`). The candidate hands `fit` the training dataset repeated without end and the
steps of one epoch, so Keras keeps one iterator. It is not shipped (bench/README.md, "Epochs of large searches").

Speed: each variant runs the real command, `python -m medimg tune DATA --max-trials 1 --epochs E --augment
flip_horizontal=1,rotation=0.05` (the quick preset's first trial with the automatic mode's augmentation, early
stopping as shipped), in its own process; the candidate's process first wraps `keras.Model.fit` (`CANDIDATE`),
nothing else changes. Runs alternate A B A B. From each run's event log: seconds from the trial's first batch to its
last epoch's end, divided by the epochs it ran; and the epochs whose first batch came more than 2 s after the
previous epoch ended.

Quality (`--quality SEEDS`): the plain CNN (`ModelParams.plain_cnn`) through `training.fit_model` on RetinaMNIST,
30 epochs, early stopping on validation AUC (patience 5, best weights restored; the learning rate halved after 3
epochs without progress), the automatic mode's augmentation, once per seed and variant in this process; test
macro AUC and accuracy per seed.

    python bench/epochs.py [--quick] [--epochs 8] [--rounds 2] [--synthetic 20000] [--quality 0,1,2,3,4,5]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import common
import numpy as np
import synth

DATASETS = (  # (folder under ../shared/datasets, pixels, channel mode): each shared set as the automatic mode plans it
    ("retinamnist", 28, "rgb"),
    ("chest_xray_pneumonia_mini", 64, "gray"),
)
STALL_SECONDS = 2.0
AUGMENT = "flip_horizontal=1,rotation=0.05"  # the automatic mode's (auto.plan): flips, rotations up to ±18°


def use_one_iterator() -> None:
    """The candidate: every `fit` on a finite tf.data dataset gets it repeated and the steps of one pass."""
    import keras
    import tensorflow as tf

    fit = keras.Model.fit

    def fit_repeated(self, x=None, *args, **kwargs):
        if isinstance(x, tf.data.Dataset) and kwargs.get("steps_per_epoch") is None:
            steps = int(x.cardinality())
            if steps > 0:
                x, kwargs["steps_per_epoch"] = x.repeat(), steps
        return fit(self, x, *args, **kwargs)

    keras.Model.fit = fit_repeated


CANDIDATE = (
    "import sys, runpy; sys.path.insert(0, 'bench'); import epochs; epochs.use_one_iterator(); "
    "sys.argv = ['medimg', *sys.argv[1:]]; runpy.run_module('medimg', run_name='__main__')"
)


def run_tune(data: Path, size: int, color: str, epochs: int, repeated: bool, runs: Path) -> dict:
    """One `tune` run in its own process; its epoch timings from the run's event log."""
    command = [sys.executable] + (["-c", CANDIDATE] if repeated else ["-m", "medimg"])
    command += ["tune", str(data), "--max-trials", "1", "--epochs", str(epochs), "--image-size", str(size)]
    command += ["--color", color, "--runs", str(runs), "--augment", AUGMENT]
    done = subprocess.run(command, capture_output=True, text=True, cwd=common.REPO, check=True)
    from medimg.store import runs as run_store

    run = run_store.Run(done.stdout.strip().splitlines()[-1])
    first_batch: dict[int, float] = {}
    for event in run.events("batch"):
        first_batch.setdefault(event["epoch"], event["t"])
    ends = {event["epoch"]: event["t"] for event in run.events("epoch")}
    ran = sorted(ends)
    stalls = sum(first_batch.get(e + 1, ends[e]) - ends[e] > STALL_SECONDS for e in ran[:-1])
    shutil.rmtree(run.path, ignore_errors=True)
    return {"epochs": len(ran), "seconds": ends[ran[-1]] - first_batch[ran[0]], "stalls": stalls}


def speed(args) -> None:
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
            "s per epoch, new iterator per epoch (shipped)",
            "s per epoch, one repeated iterator",
            f"epochs starting > {STALL_SECONDS:g} s late (new / repeated)",
            "new / repeated",
        ],
        rows,
    )


def quality(seeds: list[int]) -> None:
    import keras
    from quality import scores as test_scores

    from medimg.config import AugmentConfig, DatasetConfig, ModelParams, TrainConfig
    from medimg.datasets.prepared import prepare_data
    from medimg.model import training
    from medimg.model.models import predict_arrays

    folder = common.REPO.parent / "shared" / "datasets" / "retinamnist"
    data = prepare_data(DatasetConfig(path=str(folder), image_size=28, color="rgb"))
    augment = AugmentConfig(flip_horizontal=True, rotation=0.05)
    shipped_fit = keras.Model.fit
    test = data.arrays["test"]
    rows, scores = [], {False: [], True: []}
    for seed in seeds:
        row = [seed]
        for repeated in (False, True):
            keras.Model.fit = shipped_fit
            if repeated:
                use_one_iterator()
            config = TrainConfig(epochs=30, early_stopping_patience=5, seed=seed)
            callbacks = training.fit_callbacks(config, "val_auc", "max")
            model, history = training.fit_model(ModelParams.plain_cnn(28), data, augment, config, callbacks)
            auc, accuracy, _ = test_scores(test.labels, predict_arrays(model, test.images))
            scores[repeated].append((auc, accuracy))
            row += [auc, accuracy, len(history.epoch)]
        rows.append(row)
    keras.Model.fit = shipped_fit
    means = {key: np.mean(values, axis=0) for key, values in scores.items()}
    rows.append(["mean", means[False][0], means[False][1], "", means[True][0], means[True][1], ""])
    common.print_table(
        "Plain CNN on RetinaMNIST through training.fit_model, per seed",
        ["seed", "AUC, new iterator (shipped)", "acc", "epochs", "AUC, one iterator", "acc", "epochs"],
        rows,
    )


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--synthetic", type=int, default=20000, help="images of the synthetic 28 px set (0: none)")
    parser.add_argument("--quality", help="comma-separated seeds: the paired plain-CNN fits instead of the timing")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.rounds, args.synthetic = 3, 1, 3000
    if args.quality:
        quality([int(seed) for seed in args.quality.split(",")])
    else:
        speed(args)


if __name__ == "__main__":
    main()
