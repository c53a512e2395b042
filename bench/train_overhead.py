"""What a medimg train run costs over a plain hand-written Keras script doing the same work.

Same data (medimg's cached arrays, warm), same model (`build_model(ModelParams())`), same epochs (early stopping
off), same batch size, no augmentation, both evaluating on the test split and saving the model:
- in-process: `jobs.execute` on a run from `runs.create_run` (its events, backup, TensorBoard, evaluation) vs a
  plain `model.fit(x, y, validation_data=...)` on the arrays loaded from the cache's `.npy` files;
- subprocess (unless --no-cli): `python -m medimg train` vs this file's plain script as its own process (both pay
  the interpreter and TensorFlow start-up).
Runs alternate A B A B ...; the table shows every pair and the median ratio (target: plain / medimg ≥ 0.95).

    python bench/train_overhead.py [--quick] [--n 2000] [--epochs 5] [--pairs 3] [--cli-pairs 2]
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import synth

TARGET = 0.95


def make_spec(root: Path, args):
    from medimg.config import DatasetConfig, ModelParams, RunSpec, TrainConfig

    return RunSpec(
        kind="train",
        dataset=DatasetConfig(path=str(root), image_size=args.image_size, color=args.color),
        train=TrainConfig(epochs=args.epochs, early_stopping_patience=0),
        params=ModelParams(batch_size=args.batch_size),
    )


def cached_files(spec) -> dict[str, dict]:
    """The split's cache `.npy` file, row count and labels, after a (warm-up) decode through medimg."""
    import sklearn.metrics  # noqa: F401  (imported once, untimed, for both sides)

    from medimg.datasets import cache
    from medimg.imaging.contract import InputContract
    from medimg.model import training

    data = training.prepare_data(spec.dataset)
    entries = {}
    for name, files in data.splits.items():
        key = cache.cache_key([f.path for f in files], InputContract.from_config(spec.dataset))
        entries[name] = {
            "npy": str(cache.cache_dir() / f"{key}.npy"),
            "count": len(data.arrays[name]),
            "labels": data.arrays[name].labels.tolist(),
        }
    return entries


def plain_keras(entries: dict[str, dict], batch_size: int, epochs: int, out: Path) -> dict[str, float]:
    """The hand-written script: load arrays, build, fit with validation, AUC on test, save.

    Returns its total seconds and its fit share (the sum of its epochs, measured as medimg's epoch events are).
    """
    import keras
    from sklearn.metrics import roc_auc_score

    from medimg.config import ModelParams
    from medimg.model import models

    def load(name: str) -> tuple[np.ndarray, np.ndarray]:
        entry = entries[name]
        images = np.load(entry["npy"])[: entry["count"]]
        return images, np.asarray(entry["labels"], dtype=np.float32).reshape(-1, 1)

    start = time.perf_counter()
    (x_train, y_train), val, (x_test, y_test) = [load(name) for name in entries]
    keras.utils.set_random_seed(42)
    model = models.build_model(ModelParams(batch_size=batch_size), x_train.shape[1:], 2)
    timer = common.epoch_timer()
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, validation_data=val, verbose=0, callbacks=[timer])
    roc_auc_score(y_test.ravel(), model.predict(x_test, batch_size=256, verbose=0).ravel())
    model.save(out / "model.keras")
    return {"total": time.perf_counter() - start, "fit": sum(timer.times)}


def medimg_run(spec, runs_root: Path) -> dict[str, float]:
    """`create_run` + `jobs.execute`; the fit share is the sum of its epoch events' seconds."""
    from medimg import jobs
    from medimg.store import runs

    total, run = common.timed(lambda: runs.create_run(spec, runs_root))
    seconds, _ = common.timed(lambda: jobs.execute(run))
    fit = sum(e["seconds"] for e in run.events("epoch"))
    epochs = len(run.events("epoch"))
    assert epochs == spec.train.epochs, f"medimg ran {epochs} epochs, expected {spec.train.epochs}"
    return {"fit": fit, "total": total + seconds}


def in_process_pairs(spec, entries: dict, args, work: Path) -> list[tuple[float, float, dict, dict]]:
    """(plain s, medimg s, plain phases, medimg phases) per A/B pair, in one process."""
    import keras

    pairs = []
    for index in range(args.pairs):
        keras.backend.clear_session()
        gc.collect()
        plain = plain_keras(entries, args.batch_size, args.epochs, Path(tempfile.mkdtemp(dir=work)))
        keras.backend.clear_session()
        gc.collect()
        ours = medimg_run(spec, work / f"runs-{index}")
        pairs.append((plain["total"], ours["total"], plain, ours))
    return pairs


def subprocess_pairs(root: Path, entries: dict, args, work: Path) -> list[tuple[float, float]]:
    """(plain script s, `python -m medimg train` s) per pair, each a fresh Python process."""
    spec_file = work / "spec.toml"
    spec_file.write_text(f"[train]\nepochs = {args.epochs}\nearly_stopping_patience = 0\n")
    entries_file = work / "entries.json"
    entries_file.write_text(json.dumps(entries))
    cli = [sys.executable, "-m", "medimg", "train", str(root), "--spec", str(spec_file), "--epochs", str(args.epochs)]
    cli += ["--image-size", str(args.image_size), "--color", args.color]
    cli += ["--params", json.dumps({"batch_size": args.batch_size})]
    plain = [sys.executable, __file__, "--child", str(entries_file), "--batch-size", str(args.batch_size)]
    plain += ["--epochs", str(args.epochs)]
    pairs = []
    for index in range(args.cli_pairs):
        out = Path(tempfile.mkdtemp(dir=work))
        plain_s, _ = common.timed(run_quietly, [*plain, "--out", str(out)])
        medimg_s, _ = common.timed(run_quietly, [*cli, "--runs", str(work / f"cli-runs-{index}")])
        pairs.append((plain_s, medimg_s))
    return pairs


def run_quietly(command: list[str]) -> None:
    result = subprocess.run(command, cwd=common.REPO, capture_output=True, text=True, env=os.environ.copy())
    if result.returncode:
        raise RuntimeError(f"{command[:4]} failed:\n{result.stderr[-2000:]}")


def report(pairs: list, cli: list, header: str) -> None:
    rows = [
        [f"in-process {i + 1}", plain, ours, p["fit"], o["fit"], plain - p["fit"], ours - o["fit"], plain / ours]
        for i, (plain, ours, p, o) in enumerate(pairs)
    ]
    rows += [[f"subprocess {i + 1}", plain, ours, "", "", "", "", plain / ours] for i, (plain, ours) in enumerate(cli)]
    headers = ["pair", "plain s", "medimg s", "plain fit s", "medimg fit s", "plain other s", "medimg other s"]
    common.print_table(header, [*headers, "plain / medimg"], rows)
    median = common.median([plain / ours for plain, ours, *_ in pairs])
    print(f"\nin-process median ratio: {common.verdict(median, TARGET)}")
    if cli:
        print(f"subprocess median ratio: {common.verdict(common.median([p / m for p, m in cli]), TARGET)}")


def child(args) -> None:
    entries = json.loads(Path(args.child).read_text())
    plain_keras(entries, args.batch_size, args.epochs, Path(args.out))


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="synthetic images (0: the real dataset and its splits)")
    parser.add_argument("--size", type=int, default=128, help="side of the synthetic JPEGs")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--color", choices=["gray", "rgb"], default="gray")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=3, help="in-process A/B pairs")
    parser.add_argument("--cli-pairs", type=int, default=2, help="subprocess A/B pairs (0 to skip)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads = common.configure_threads(args.intra, args.inter)
    if args.child:
        return child(args)
    if args.quick:
        args.n, args.epochs, args.pairs, args.cli_pairs = 0, 3, 2, 1
    work = Path(tempfile.mkdtemp(prefix="train-overhead-", dir=common.bench_home()))
    atexit.register(lambda: shutil.rmtree(work, ignore_errors=True))
    root = synth.synthesize(args.n, args.size, args.data) if args.n else args.data
    spec = make_spec(root, args)
    entries = cached_files(spec)
    pairs = in_process_pairs(spec, entries, args, work)
    cli = subprocess_pairs(root, entries, args, work) if args.cli_pairs else []
    counts = ", ".join(f"{name} {entry['count']}" for name, entry in entries.items())
    header = f"train overhead: {counts} images at {args.image_size} px {args.color}, {args.epochs} epochs, {threads}"
    report(pairs, cli, header)


if __name__ == "__main__":
    main()
