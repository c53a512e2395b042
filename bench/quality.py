"""Quality of the defaults: `python -m medimg auto DATA --minutes M --seed S` against a plain Keras CNN trained in
the same script on the same splits, beside the published MedMNIST v2 rows. A benchmark, not a test.

    python bench/quality.py                                   # BreastMNIST 10 min × seeds 0,1,2; RetinaMNIST
                                                              # 5 min × 0,1,2; chest X-ray mini 10 min × seed 0
    python bench/quality.py --only breastmnist --seeds 0 --minutes 2     # one quick row

Prints one Markdown table per dataset (and appends them to bench/quality-results.md with --save): dataset, seed,
budget, trials, wall time, test AUC / accuracy / balanced accuracy of the automatic run (arg-max, i.e. 0.5 for two
classes), and the plain CNN's. For the final-model rule it also prints, per run, the test AUC and accuracy of the
best trial alone, of the mean of the top 5 trials, and of the k chosen on validation — measured here on test only
to compare the rules; the product never looks at test to choose. `--rules RUN...` prints just that for saved runs.
`--rules RUN... --undo` compares the final model's members with their class weights as trained and undone;
`--rules RUN... --rerank` ranks the trials by the validation AUC of each model as kept (weights undone) instead;
`--rules RUN... --geometric` compares the arithmetic and the normalised geometric mean of the candidates.

The plain CNN (issue #11's floor): Rescaling(1/255) → RandomFlip(horizontal) → RandomRotation(0.05) → Conv2D 3×3
blocks (32, 64, 128; a fourth of 128 at ≥ 64 px) without bias + BatchNormalization + ReLU, max pooling between
blocks → global average pooling → Dropout 0.3 → sigmoid/softmax; Adam 1e-3, batch 32, up to 30 epochs, early
stopping on val loss (patience 5, best weights restored), no class weights. Same files, splits and colour as the
automatic run; same image size too, except that images larger than 64 px are used at 64 px as in the issue's
floor, whatever size the automatic run chose ("CNN px").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import REPO, bench_home, isolate_caches

SHARED = REPO.parent / "shared" / "datasets"
DEFAULT_PLAN = {
    "breastmnist": (10.0, (0, 1, 2)),
    "retinamnist": (5.0, (0, 1, 2)),
    "chest_xray_pneumonia_mini": (10.0, (0,)),
}
PUBLISHED = {  # MedMNIST v2 benchmark rows, from each dataset's README (test AUC, ACC)
    "breastmnist": {
        "ResNet-18 (28)": (0.901, 0.863),
        "AutoKeras": (0.871, 0.831),
        "Google AutoML Vision": (0.919, 0.861),
    },
    "retinamnist": {
        "ResNet-18 (28)": (0.717, 0.524),
        "AutoKeras": (0.719, 0.503),
        "Google AutoML Vision": (0.750, 0.531),
    },
}


def run_auto(data: Path, minutes: float, seed: int, runs: Path, extra: list[str] = ()) -> tuple[Path, float]:
    started = time.time()
    command = [sys.executable, "-m", "medimg", "auto", str(data), "--minutes", str(minutes), "--seed", str(seed)]
    command += list(extra)
    result = subprocess.run(
        [*command, "--runs", str(runs)], capture_output=True, text=True, cwd=REPO, env={**os.environ}
    )
    wall = time.time() - started
    if result.returncode:
        raise SystemExit(f"auto failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1]), wall


def scores(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float, float]:
    from sklearn import metrics

    from medimg.metrics.clinical import roc_auc

    predicted = probs.argmax(axis=1)
    return (
        roc_auc(labels, probs),
        float(metrics.accuracy_score(labels, predicted)),
        float(metrics.balanced_accuracy_score(labels, predicted)),
    )


def plain_cnn_network(
    input_shape: tuple[int, int, int],
    units: int,
    activation: str,
    *,
    widths: tuple[int, ...] | None = None,
    vertical_flip: bool = False,
    zoom: float = 0.0,
    pooling: str = "average",
    standardize: bool = False,
    convs_per_block: int = 1,
    dropout: float = 0.3,
    rotation: float = 0.05,
):
    """The plain CNN's layers (module docstring), uncompiled, with `units` outputs of `activation`. `widths`: the
    blocks' filters (default 32-64-128, a fourth 128 at ≥ 64 px); `vertical_flip`, `zoom`: more augmentation;
    `pooling` "average_max": global average and global max pooling side by side; `standardize`: each image to zero
    mean and unit variance instead of the 1/255 scale; `convs_per_block` 2: two Conv-BN-ReLU per block, as VGG's
    blocks (Simonyan & Zisserman 2015, arXiv:1409.1556); `dropout` before the classifier; `rotation`: the largest
    random rotation, a fraction of a turn either way (`levers.py`)."""
    import keras

    size = input_shape[0]
    inputs = keras.Input(input_shape)
    if standardize:  # per image, over its pixels and channels (tf.image.per_image_standardization's rule)
        x = keras.layers.Lambda(
            lambda t: (
                (t - keras.ops.mean(t, axis=(1, 2, 3), keepdims=True))
                / keras.ops.maximum(keras.ops.std(t, axis=(1, 2, 3), keepdims=True), 1.0)
            )
        )(inputs)
    else:
        x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.RandomFlip("horizontal_and_vertical" if vertical_flip else "horizontal")(x)
    x = keras.layers.RandomRotation(rotation)(x)
    if zoom:
        x = keras.layers.RandomZoom(zoom)(x)
    widths = widths or ((32, 64, 128, 128) if size >= 64 else (32, 64, 128))
    for i, width in enumerate(widths):
        if i:
            x = keras.layers.MaxPooling2D()(x)
        for _ in range(convs_per_block):
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.ReLU()(x)
    if pooling == "average_max":
        x = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(x), keras.layers.GlobalMaxPooling2D()(x)])
    else:
        x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(dropout)(x)
    return keras.Model(inputs, keras.layers.Dense(units, activation=activation)(x))


def plain_cnn(data, seed: int) -> tuple[float, float, float, float]:
    import keras

    keras.utils.set_random_seed(seed)
    train, val, test = (data.arrays[s] for s in ("train", "val", "test"))
    binary = data.num_classes == 2
    model = plain_cnn_network(data.input_shape, 1 if binary else data.num_classes, "sigmoid" if binary else "softmax")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
    )
    started = time.time()
    model.fit(
        np.asarray(train.images, np.float32),
        train.labels.astype(np.float32),
        validation_data=(np.asarray(val.images, np.float32), val.labels.astype(np.float32)),
        batch_size=32,
        epochs=30,
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True)],
        verbose=0,
    )
    seconds = time.time() - started
    probs = model.predict(np.asarray(test.images, np.float32), verbose=0)
    if binary:
        probs = np.concatenate([1 - probs, probs], axis=1)
    return (*scores(test.labels, probs), seconds)


def trial_model(run, values: dict, trial_id: str, data, undo: bool = True):
    """A saved trial's network from its checkpoint, as (model, params); with `undo`, its class weights undone as the
    product keeps it (`training.restore_class_prior`). `values`: the trial's hyperparameters."""
    import warnings

    from medimg.model import hyperparameters, models, training, tuning

    params = hyperparameters.params_from_values(values, run.spec.search)
    model = models.build_model(params, data.input_shape, data.num_classes)
    with warnings.catch_warnings():
        # A trial's checkpoint holds its optimizer's state; prediction does not need it.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(run.path / tuning.TUNER_FOLDER / f"trial_{trial_id}" / "checkpoint.weights.h5")
    if undo:
        training.restore_class_prior(model, params, run.spec.train, data)
    return model, params


def final_model_rules(run_path: Path, data) -> dict[str, float | None]:
    """Test AUC of: the best trial alone, the mean of the top-5 candidates, and the k chosen on validation."""
    from medimg.model import tuning
    from medimg.model.models import predict_arrays
    from medimg.store import runs

    run = runs.Run(run_path)
    record = run.record
    ensemble = record.get("ensemble") or {}
    candidates = ensemble.get("candidates") or [record["best_trial"]]
    trials = {t["trial_id"]: t for t in tuning.read_trials(run_path / tuning.TUNER_FOLDER)}
    test = data.arrays["test"]
    probs = []
    for trial_id in candidates:
        model, _ = trial_model(run, trials[trial_id]["hyperparameters"], trial_id, data)
        probs.append(predict_arrays(model, test.images))
    chosen = len(ensemble.get("members") or [candidates[0]])
    return {
        "best": scores(test.labels, probs[0]),
        "top5": scores(test.labels, np.mean(probs, axis=0)),
        "chosen_k": chosen,
        "chosen": scores(test.labels, np.mean(probs[:chosen], axis=0)),
    }


def train_val_rule(run_path: Path, data) -> tuple[tuple, tuple, tuple, list]:
    """Issue #11 item 6's alternative final model: each ensemble member's configuration retrained on train + val
    for the number of epochs its trial peaked at (no validation left to stop on), averaged. Returns test scores of
    the members as searched, of the retrained ones, of all of them together, and (AUC, accuracy, seconds of
    fitting) of the searched members plus the best m retrained, for m = 1 .. k: what a final stage that retrains
    only as many as its time allows would get."""
    import dataclasses

    from medimg.datasets.cache import CachedArrays
    from medimg.model import training, tuning
    from medimg.model.models import predict_arrays
    from medimg.store import runs

    run = runs.Run(run_path)
    members = (run.record.get("ensemble") or {}).get("members") or [run.record["best_trial"]]
    trials = {t["trial_id"]: t for t in tuning.read_trials(run_path / tuning.TUNER_FOLDER)}
    histories = run.trial_histories()
    train, val, test = (data.arrays[s] for s in ("train", "val", "test"))
    joined = CachedArrays(
        np.concatenate([train.images, val.images]),
        np.concatenate([train.labels, val.labels]),
        train.paths + val.paths,
        [],
    )
    data_joined = dataclasses.replace(data, arrays={"train": joined, "val": val, "test": test})
    objective = run.record.get("objective") or run.spec.tune.objective
    kept, retrained, seconds = [], [], []
    for trial_id in members:
        model, params = trial_model(run, trials[trial_id]["hyperparameters"], trial_id, data)
        kept.append(predict_arrays(model, test.images))
        curve = histories.get(trial_id, {}).get(objective) or []
        best = (int(np.argmin(curve) if objective.endswith("loss") else np.argmax(curve)) + 1) if curve else None
        config = run.spec.train.replace(early_stopping_patience=0, reduce_lr_patience=0)
        started = time.time()
        model, _ = training.fit_model(params, data_joined, run.spec.augment, config, [], epochs=best)
        seconds.append(time.time() - started)
        training.restore_class_prior(model, params, run.spec.train, data_joined)
        retrained.append(predict_arrays(model, test.images))
    # The searched members plus the best m of them retrained, m = 1 .. k, with the seconds those m fits took.
    partial = [
        (*scores(test.labels, np.mean(kept + retrained[:m], axis=0))[:2], sum(seconds[:m]))
        for m in range(1, len(retrained) + 1)
    ]
    return (
        scores(test.labels, np.mean(kept, axis=0)),
        scores(test.labels, np.mean(retrained, axis=0)),
        scores(test.labels, np.mean(kept + retrained, axis=0)),
        partial,
    )


def geometric_rule(run_path: Path, data) -> dict[str, tuple[float, ...]]:
    """The final model's candidates combined by the arithmetic mean of their probabilities (the product's rule) vs
    the normalised geometric mean (log-linear pooling: softmax of the mean log-probability, i.e. of the mean logits),
    as (validation log loss, validation AUC, test AUC, accuracy, balanced accuracy, log loss)."""
    from medimg.model import tuning
    from medimg.model.models import predict_arrays
    from medimg.store import runs

    run = runs.Run(run_path)
    record = run.record
    candidates = (record.get("ensemble") or {}).get("candidates") or [record["best_trial"]]
    trials = {t["trial_id"]: t for t in tuning.read_trials(run_path / tuning.TUNER_FOLDER)}
    val, test = data.arrays["val"], data.arrays["test"]
    on_val, on_test = [], []
    for trial_id in candidates:
        model, _ = trial_model(run, trials[trial_id]["hyperparameters"], trial_id, data)
        on_val.append(predict_arrays(model, val.images))
        on_test.append(predict_arrays(model, test.images))

    def geometric(probs: list[np.ndarray]) -> np.ndarray:
        mean_log = np.mean([np.log(np.clip(p, 1e-7, 1.0)) for p in probs], axis=0)
        pooled = np.exp(mean_log - mean_log.max(axis=1, keepdims=True))
        return pooled / pooled.sum(axis=1, keepdims=True)

    return {
        name: split_row(data, combine(on_val), combine(on_test), val_score=0)
        for name, combine in (("arithmetic", lambda probs: np.mean(probs, axis=0)), ("geometric", geometric))
    }


def every_k(run_path: Path, data) -> list[tuple[float, float, float]]:
    """Test scores of the mean of the top k completed trials (ranked by their validation score), for every k: does
    a larger ensemble help, or do the members plateau together?"""

    from medimg.model import tuning
    from medimg.model.models import predict_arrays
    from medimg.store import runs

    run = runs.Run(run_path)
    objective = run.record.get("objective") or run.spec.tune.objective
    trials = [
        t
        for t in tuning.read_trials(run_path / tuning.TUNER_FOLDER)
        if t["status"] == "COMPLETED" and t.get("score") is not None
    ]
    trials.sort(key=lambda t: t["score"], reverse=not objective.endswith("loss"))
    test = data.arrays["test"]
    probs = []
    for trial in trials:
        model, _ = trial_model(run, trial["hyperparameters"], trial["trial_id"], data)
        probs.append(predict_arrays(model, test.images))
    return [scores(test.labels, np.mean(probs[:k], axis=0)) for k in range(1, len(probs) + 1)]


def undo_rule(run_path: Path, data) -> dict[str, tuple[float, ...]]:
    """The final model's members (the run's ensemble candidates) averaged with their class weights as trained and
    undone (`training.restore_class_prior`): validation log loss and accuracy, test AUC, accuracy, balanced
    accuracy and log loss of each. The product keeps the undone one; validation is what argues for it."""

    from medimg.model import training, tuning
    from medimg.model.models import predict_arrays
    from medimg.store import runs

    run = runs.Run(run_path)
    record = run.record
    candidates = (record.get("ensemble") or {}).get("candidates") or [record["best_trial"]]
    trials = {t["trial_id"]: t for t in tuning.read_trials(run_path / tuning.TUNER_FOLDER)}
    splits = {s: data.arrays[s] for s in ("val", "test")}
    probs: dict[str, dict[str, list]] = {"trained": {"val": [], "test": []}, "undone": {"val": [], "test": []}}
    for trial_id in candidates:
        model, params = trial_model(run, trials[trial_id]["hyperparameters"], trial_id, data, undo=False)
        for split, arrays in splits.items():
            probs["trained"][split].append(predict_arrays(model, arrays.images))
        training.restore_class_prior(model, params, run.spec.train, data)
        for split, arrays in splits.items():
            probs["undone"][split].append(predict_arrays(model, arrays.images))
    return {
        name: split_row(data, *(np.mean(by_split[s], axis=0) for s in ("val", "test")), val_score=1)
        for name, by_split in probs.items()
    }


def split_row(data, p_val: np.ndarray, p_test: np.ndarray, val_score: int) -> tuple[float, ...]:
    """(validation log loss, one validation score, test AUC, accuracy, balanced accuracy, log loss) of N × K
    probabilities; `val_score` picks the validation figure from `scores` (0 AUC, 1 accuracy)."""
    from sklearn.metrics import log_loss

    val, test, classes = data.arrays["val"], data.arrays["test"], list(range(data.num_classes))
    return (
        log_loss(val.labels, np.clip(p_val, 1e-7, 1), labels=classes),
        scores(val.labels, p_val)[val_score],
        *scores(test.labels, p_test),
        log_loss(test.labels, np.clip(p_test, 1e-7, 1), labels=classes),
    )


def print_rows(rows: dict[str, tuple[float, ...]], width: int, val_name: str) -> None:
    """One line per combination, as `split_row` orders its figures."""
    for name, row in rows.items():
        print(
            f"  {name:>{width}}: val log loss {row[0]:.3f} {val_name} {row[1]:.3f}; test AUC {row[2]:.3f} acc "
            f"{row[3]:.3f} bal. acc {row[4]:.3f} log loss {row[5]:.3f}",
            flush=True,
        )


def rerank_rule(run_path: Path, data) -> dict[str, tuple[list[str], float]]:
    """Would ranking trials by the validation AUC of the model as kept (class weights undone) choose a better top
    5 than the score the search recorded (the network as trained)? Returns, for each ranking, the top-5 trial ids
    and the test AUC of their mean (members undone, as the product keeps them). The validation AUC is the
    package's `roc_auc` (macro one-vs-rest); for two classes the shift keeps the order, so only multi-class runs
    can differ."""
    from medimg import auto
    from medimg.metrics.clinical import roc_auc
    from medimg.model import training, tuning
    from medimg.model.models import predict_arrays
    from medimg.store import runs

    run = runs.Run(run_path)
    trials = [
        t
        for t in tuning.read_trials(run_path / tuning.TUNER_FOLDER)
        if t["status"] == "COMPLETED" and t.get("score") is not None
    ]
    val, test = data.arrays["val"], data.arrays["test"]
    rows = []
    for trial in trials:
        model, params = trial_model(run, trial["hyperparameters"], trial["trial_id"], data, undo=False)
        training.restore_class_prior(model, params, run.spec.train, data)
        kept_val = roc_auc(val.labels, predict_arrays(model, val.images))
        rows.append((trial["trial_id"], trial["score"], kept_val, predict_arrays(model, test.images)))
    objective = run.record.get("objective") or run.spec.tune.objective
    sign = -1 if objective.endswith("loss") else 1  # a one-class validation split ranks trials by val_loss
    result = {}
    for name, column, direction in (("recorded score", 1, sign), ("AUC as kept", 2, 1)):
        top = sorted(rows, key=lambda row: direction * row[column], reverse=True)[: auto.ENSEMBLE_CANDIDATES]
        result[name] = ([row[0] for row in top], roc_auc(test.labels, np.mean([row[3] for row in top], axis=0)))
    return result


def speed() -> None:
    """Seconds per training image per epoch of the plain CNN at a few sizes (the constants in medimg/auto.py)."""
    from medimg.config import ModelParams
    from medimg.model import models

    for size, channels in ((28, 1), (64, 1), (128, 1), (64, 3)):
        model = models.build_model(ModelParams.plain_cnn(size), (size, size, channels), 2)
        images = np.random.default_rng(0).integers(0, 256, (1024, size, size, channels)).astype("float32")
        labels = np.random.default_rng(1).integers(0, 2, (1024, 1)).astype("float32")
        model.fit(images[:64], labels[:64], batch_size=32, verbose=0)  # traced before timing
        started = time.time()
        model.fit(images, labels, batch_size=32, epochs=1, verbose=0)
        per_image = (time.time() - started) / len(images)
        print(f"{size} px, {channels} channel(s): {per_image * 1000:.3f} ms per image per epoch", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="one dataset folder name under ../shared/datasets")
    parser.add_argument("--seeds", help="comma-separated seeds (default per dataset)")
    parser.add_argument("--minutes", type=float, help="budget (default per dataset)")
    parser.add_argument("--save", action="store_true", help="append the tables to bench/quality-results.md")
    parser.add_argument("--auto-args", default="", help='more arguments for `auto`, e.g. "--cv-folds 3"')
    parser.add_argument("--speed", action="store_true", help="only time the plain CNN per image (medimg/auto.py)")
    parser.add_argument("--rules", nargs="+", type=Path, help="only compare the final-model rules of these runs")
    parser.add_argument(
        "--every-k", action="store_true", help="with --rules: test AUC/acc of the mean of the top k, for every k"
    )
    parser.add_argument(
        "--undo",
        action="store_true",
        help="with --rules: the final model's members with their class weights as trained vs undone",
    )
    parser.add_argument(
        "--rerank",
        action="store_true",
        help="with --rules: the top 5 ranked by the recorded trial score vs by the validation AUC as kept",
    )
    parser.add_argument(
        "--geometric",
        action="store_true",
        help="with --rules: the candidates' arithmetic vs normalised geometric mean of probabilities",
    )
    parser.add_argument(
        "--train-val",
        action="store_true",
        help="with --rules: the ensemble's members retrained on train + val for their best epoch count, vs as is",
    )
    args = parser.parse_args()
    if args.speed:
        speed()
        return
    if args.rules:
        from medimg.model import training

        for run_path in args.rules:
            record = json.loads((run_path / "run.json").read_text())
            data = training.prepare_data(runs_spec_dataset(record))  # once per run, for every comparison below
            rules = final_model_rules(run_path, data)
            shown = "  ".join(f"{r}: AUC {rules[r][0]:.3f} acc {rules[r][1]:.3f}" for r in ("best", "top5", "chosen"))
            print(f"{run_path.name}  {shown}  (k={rules['chosen_k']})", flush=True)
            if args.train_val:
                kept, retrained, both, partial = train_val_rule(run_path, data)
                print(
                    f"  members as searched: AUC {kept[0]:.3f} acc {kept[1]:.3f}; retrained on train + val: AUC "
                    f"{retrained[0]:.3f} acc {retrained[1]:.3f}; all of them: AUC {both[0]:.3f} acc {both[1]:.3f}",
                    flush=True,
                )
                for m, (auc, accuracy, spent) in enumerate(partial, 1):
                    print(f"  searched + best {m} retrained: AUC {auc:.3f} acc {accuracy:.3f} ({spent:.0f} s of fits)")
            if args.undo:
                print_rows(undo_rule(run_path, data), 7, "acc")
            if args.geometric:
                print_rows(geometric_rule(run_path, data), 10, "AUC")
            if args.rerank:
                for name, (ids, auc) in rerank_rule(run_path, data).items():
                    print(f"  top 5 by {name}: {', '.join(ids)}; test AUC {auc:.3f}", flush=True)
            if args.every_k:
                for k, (auc, accuracy, _) in enumerate(every_k(run_path, data), 1):
                    print(f"  top {k:>2} by validation: AUC {auc:.3f} acc {accuracy:.3f}", flush=True)
        return
    isolate_caches()
    from medimg.model import training

    runs_dir = bench_home() / "quality-runs"
    names = [args.only] if args.only else list(DEFAULT_PLAN)
    output = [f"load average at start: {os.getloadavg()[0]:.2f} (2 cores)"]
    print(output[0], flush=True)
    for name in names:
        minutes, seeds = DEFAULT_PLAN.get(name, (10.0, (0,)))
        minutes = args.minutes or minutes
        seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else seeds
        rows = []
        for seed in seeds:
            run_path, wall = run_auto(SHARED / name, minutes, seed, runs_dir, args.auto_args.split())
            record = json.loads((run_path / "run.json").read_text())
            data = training.prepare_data(runs_spec_dataset(record))
            auc, accuracy, balanced = (record["metrics"][k] for k in ("auc", "accuracy", "balanced_accuracy"))
            rules = final_model_rules(run_path, data)
            cnn_data = floor_data(data, runs_spec_dataset(record))
            cnn = plain_cnn(cnn_data, seed)
            chosen = {c["setting"]: c["value"] for c in record["auto"]["choices"]}
            rows.append(
                f"| {name} | {seed} | {minutes:g} | {chosen['image_size']} {chosen['color']} | "
                f"{record.get('trials_completed')} ({len(record.get('trials_collapsed') or [])} collapsed) | "
                f"{wall / 60:.1f} | {auc:.3f} | {accuracy:.3f} | {balanced:.3f} | "
                f"{'yes' if record.get('one_class') else 'no'} | "
                f"{cnn_data.input_shape[0]} | {cnn[0]:.3f} | {cnn[1]:.3f} | {cnn[2]:.3f} | {cnn[3]:.0f} | "
                + " / ".join(f"{rules[r][0]:.3f}, {rules[r][1]:.3f}" for r in ("best", "top5", "chosen"))
                + f" (k={rules['chosen_k']}) |"
            )
            print(rows[-1], flush=True)
        header = (
            f"\n### {name}: `python -m medimg auto DATA --minutes {minutes:g} --seed S` vs the plain CNN\n\n"
            "| dataset | seed | minutes | size colour | trials | wall min | auto AUC | auto acc | auto bal. acc | "
            "one class | CNN px | CNN AUC | CNN acc | CNN bal. acc | CNN s | "
            "test AUC, acc: best trial / top-5 mean / chosen k |\n"
            "|---|---:|---:|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|"
        )
        table = [header, *rows]
        aucs = [float(r.split("|")[7]) for r in rows]
        accs = [float(r.split("|")[8]) for r in rows]
        table.append(f"\nmean auto: AUC {np.mean(aucs):.3f}, accuracy {np.mean(accs):.3f} over {len(rows)} seeds")
        for method, (p_auc, p_acc) in PUBLISHED.get(name, {}).items():
            table.append(f"- published {method}: AUC {p_auc:.3f}, accuracy {p_acc:.3f}")
        text = "\n".join(table)
        print(text, flush=True)
        output.append(text)
    if args.save:
        with open(Path(__file__).parent / "quality-results.md", "a", encoding="utf-8") as stream:
            stream.write(f"\n## {time.strftime('%Y-%m-%d %H:%M')}\n" + "\n".join(output) + "\n")


def floor_data(data, dataset):
    """The arrays the plain CNN trains on: the run's own, except for images larger than 64 px, which issue #11's
    floor uses at 64 px whatever size the automatic mode chose (same files and splits, decoded at that size)."""
    from medimg import auto
    from medimg.datasets import scanning
    from medimg.model import training

    native = auto._native_size(scanning.scan(dataset.path))
    floor = min(auto.SMALL_NATIVE, native)
    if dataset.image_size == floor:
        return data
    return training.prepare_data(dataset.replace(image_size=floor))


def runs_spec_dataset(record: dict):
    from medimg.config import DatasetConfig

    return DatasetConfig.from_dict(record["spec"]["dataset"])


if __name__ == "__main__":
    main()
