"""Search efficiency: best validation AUC reached vs wall time, medimg's default search vs the seed's KerasTuner search.

Both get the same wall-time budget (`--minutes`), the same epochs per trial, the same train and validation files
(the real dataset's train/ and val/ folders) and the same image side:
- medimg: a tune run (`SearchSpace.quick()`, random tuner, its pipeline: cache, tf.data, early stopping),
  carried out by `jobs.execute` with `max_minutes` as the budget;
- seed: KerasTuner `RandomSearch` over the tutorial's HyperModel (2–3 conv layers of 32–512 filters step 32,
  relu/tanh/sigmoid, MaxPooling, Flatten, dropout 0/0.25/0.5, one sigmoid unit, Adam 1e-4..1e-2 log) on RGB
  arrays loaded the tutorial's way (`cv2.imread` loop, rescaled in Python), stopped at the same budget.
The clock starts before data loading for both; every epoch's val AUC is recorded and the best so far is shown at
checkpoints of the budget.

    python bench/search.py [--quick] [--minutes 3] [--epochs 10]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import common
import numpy as np

CHECKPOINTS = (0.1, 0.25, 0.5, 0.75, 1.0)


def medimg_search(args, work: Path) -> tuple[list[tuple[float, float]], list[float]]:
    """(seconds, val AUC) per epoch and the seconds at which each trial ended."""
    from medimg import jobs
    from medimg.config import DatasetConfig, RunSpec, SearchSpace, TrainConfig, TuneConfig
    from medimg.store import runs

    spec = RunSpec(
        kind="tune",
        dataset=DatasetConfig(path=str(args.data), image_size=args.image_size, color="gray"),
        search=SearchSpace.quick(),
        tune=TuneConfig(tuner="random", max_trials=1000, max_minutes=args.minutes),
        train=TrainConfig(epochs=args.epochs),
    )
    run = runs.create_run(spec, work / "runs")
    start = time.time()
    jobs.execute(run)
    epochs = [(e["t"] - start, e["logs"].get("val_auc", 0.0)) for e in run.events("epoch") if e.get("trial")]
    trials = [e["t"] - start for e in run.events("trial_end")]
    return epochs, trials


def seed_hypermodel(input_shape: tuple[int, ...]):
    """The tutorial's build_model(hp), with the AUC metric added so both searches report val AUC."""
    import keras

    def build(hp):
        model = keras.Sequential([keras.Input(shape=input_shape)])
        for i in range(hp.Choice("num_layers", [2, 3])):
            filters = hp.Int(f"units_{i}", min_value=32, max_value=512, step=32)
            activation = hp.Choice(f"activation_{i}", ["relu", "tanh", "sigmoid"])
            model.add(keras.layers.Conv2D(filters, (3, 3), activation=activation))
            model.add(keras.layers.MaxPooling2D())
        model.add(keras.layers.Flatten())
        model.add(keras.layers.Dropout(hp.Choice("dropout", [0.0, 0.25, 0.5])))
        model.add(keras.layers.Dense(1, activation="sigmoid"))
        learning_rate = hp.Float("learning_rate", min_value=1e-4, max_value=1e-2, sampling="log")
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
            loss=keras.losses.BinaryCrossentropy(),
            metrics=["accuracy", keras.metrics.AUC(name="auc")],
        )
        return model

    return build


def seed_callback(start: float, deadline: float, record):
    """Records (seconds, val AUC) per epoch through `record` (a function: KerasTuner deep-copies callbacks)."""
    import keras

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None) -> None:
            record(time.time() - start, float((logs or {}).get("val_auc", 0.0)))

        def on_train_batch_end(self, batch, logs=None) -> None:
            if time.time() > deadline:
                self.model.stop_training = True

    return Recorder()


def seed_search(args, work: Path) -> tuple[list[tuple[float, float]], list[float]]:
    """(seconds, val AUC) per epoch and trial end times of the seed's search, clock started before loading."""
    start = time.time()
    deadline = start + 60 * args.minutes
    x_train, y_train = seed_arrays(args.data / "train", args.image_size)
    validation = seed_arrays(args.data / "val", args.image_size)
    epochs: list[tuple[float, float]] = []
    trials: list[float] = []
    tuner = seed_tuner(x_train.shape[1:], work, deadline, lambda: trials.append(time.time() - start))
    record = lambda seconds, auc: epochs.append((seconds, auc))
    callback = seed_callback(start, deadline, record)
    try:
        tuner.search(x_train, y_train, epochs=args.epochs, batch_size=32, validation_data=validation,
                     callbacks=[callback], verbose=0)  # fmt: skip
    except TimeoutError:
        pass
    return epochs, trials


def seed_tuner(input_shape: tuple[int, ...], work: Path, deadline: float, on_trial_end):
    """RandomSearch over the seed's HyperModel that starts no trial after the deadline."""
    import keras_tuner as kt

    class SeedTuner(kt.RandomSearch):
        def pre_create_trial(self) -> None:
            if time.time() > deadline:
                raise TimeoutError("budget used")

        def on_trial_end(self, trial) -> None:
            super().on_trial_end(trial)
            on_trial_end()

    return SeedTuner(
        seed_hypermodel(input_shape),
        objective=kt.Objective("val_auc", "max"),
        max_trials=1000,
        executions_per_trial=1,
        directory=str(work / "seed-tuner"),
        overwrite=True,
        seed=42,
    )


def seed_arrays(folder: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    paths, labels, _ = common.class_folder_files(folder)
    return common.seed_load(paths, size, "rgb"), np.asarray(labels, dtype=np.float32).reshape(-1, 1)


def best_by(epochs: list[tuple[float, float]], seconds: float) -> float | str:
    values = [auc for t, auc in epochs if t <= seconds]
    return max(values) if values else "none yet"


def report(results: dict[str, tuple[list, list]], args) -> None:
    budget = 60 * args.minutes
    rows = []
    for fraction in CHECKPOINTS:
        row: list = [f"{fraction * budget:.0f}"]
        for epochs, trials in results.values():
            row += [best_by(epochs, fraction * budget), sum(t <= fraction * budget for t in trials)]
        rows.append(row)
    headers = ["seconds"]
    for name in results:
        headers += [f"{name}: best val AUC", f"{name}: trials done"]
    title = f"best-so-far val AUC, budget {args.minutes:g} min, {args.epochs} epochs per trial, {args.image_size} px"
    common.print_table(title, headers, rows)
    for name, (epochs, _) in results.items():
        print(f"{name}: {len(epochs)} epochs in the budget")


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="wall-time budget for each search")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per trial (both)")
    parser.add_argument("--image-size", type=int, default=64, help="image side for both (the seed used 224)")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.epochs = min(args.minutes, 0.75), min(args.epochs, 3)
    threads = common.configure_threads(args.intra, args.inter)
    print(f"# search: {args.data}, {threads}")
    work = Path(tempfile.mkdtemp(prefix="search-", dir=common.bench_home()))
    try:
        results = {"medimg": medimg_search(args, work)}
        import keras

        keras.backend.clear_session()
        results["seed"] = seed_search(args, work)
        report(results, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
