"""Quality levers, one at a time, on the plain CNN (issue #11's floor, `quality.plain_cnn`): test AUC and accuracy
over several seeds on one dataset, each variant beside the unchanged CNN in the same invocation. A benchmark, not a
test: it answers "would this setting, added to the automatic search, move the figures?" before the slow
`quality.py` runs are spent on it.

    python bench/levers.py [--data ../shared/datasets/retinamnist] [--seeds 0,1,2] [--only base,smoothing]

Variants (each changes one thing of the plain CNN: Rescaling → flip → rotation 0.05 → Conv-BN-ReLU blocks 32/64/128
→ global average pooling → dropout 0.3 → softmax; Adam 1e-3, batch 32, ≤ 30 epochs, early stopping on validation
loss with patience 5, best weights restored):
- base: unchanged;
- val_auc: early stopping on validation AUC (patience 7, ≤ 45 epochs), as the automatic mode's trials do;
- smoothing: label smoothing 0.1 (Szegedy et al. 2016, arXiv:1512.00567);
- adamw_cosine: AdamW, weight decay 1e-4, cosine decay of the rate to 0 (Loshchilov & Hutter 2019,
  arXiv:1711.05101);
- wider: blocks of 64/128/256 filters;
- flips_zoom: vertical flips too, and zoom up to 10 %;
- ema: the weights' exponential moving average (momentum 0.99, Polyak & Juditsky 1992) is what is validated,
  kept and tested (Keras' `use_ema` with `keras.callbacks.SwapEMAWeights`);
- mixup: mixup of image pairs and their labels, α = 0.2 (Zhang et al. 2018, arXiv:1710.09412; `keras.layers.MixUp`);
- smoothing_cosine: label smoothing 0.1 together with AdamW and cosine decay;
- val_auc_ema: early stopping on validation AUC as in val_auc, scored on the averaged weights as in ema;
- average_max: global average and global max pooling concatenated before the classifier (small findings);
- standardize: each image to zero mean, unit variance (per image) instead of the 1/255 scale;
- ordinal2, ordinal4: soft ordinal labels for graded classes (SORD, Díaz & Marathe, CVPR 2019): the target of grade
  t puts exp(-α·(t − i)²) on class i, normalised, α = 2 or 4, so a neighbouring grade costs less than a distant one;
- graham: each image minus its local average colour (Gaussian blur, σ = 2 px), ×4, + 128: Ben Graham's fundus
  preprocessing from the Kaggle Diabetic Retinopathy Detection winning entry (2015), for colour fundus photographs;
- ordinal2_seeds5: ordinal2's soft labels in seeds5's bag of five;
- smoothing_seeds5: smoothing's labels in seeds5's bag of five (is it the order of the grades, or softer targets?);
- seeds5: the mean of five plain CNNs trained with different seeds (the first is base's), a bagging floor for the
  automatic mode's top-5 ensemble;
- ordinal1_seeds5: softer ordinal labels (α = 1) in a bag of five;
- ordinal2_cosine_seeds5, ordinal2_mixup_seeds5: ordinal2_seeds5 with AdamW and cosine decay, or with mixup;
- ordinal2_pairs_seeds5: ordinal2_seeds5 with two Conv-BN-ReLU per block (VGG's stacked 3×3 convolutions);
- ordinal2_batch16_seeds5, ordinal2_dropout5_seeds5, ordinal2_rate5e-4_seeds5: ordinal2_seeds5 with batches of 16,
  dropout 0.5, or Adam's rate at 5e-4;
- ordinal2_turns_seeds5: ordinal2_seeds5 with rotations of up to half a turn either way and vertical flips (a
  fundus photograph has no upright);
- ordinal2_deeper_seeds5: ordinal2_seeds5 with a fourth block of 256 filters (28 → 14 → 7 → 3 px);
- ordinal2_patience10_seeds5: ordinal2_seeds5 with early stopping's patience 10 and up to 60 epochs.
"a+b" in --only is the mean of both variants' models: each model's test probabilities are kept in
~/.cache/medimg-bench/levers, so such a mix of variants already run costs no training.
The image size and colour are the dataset's own (28 px RGB for RetinaMNIST).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import common
import numpy as np
from quality import plain_cnn_network, scores

CACHE = Path.home() / ".cache" / "medimg-bench" / "levers"
VARIANTS = {
    "base": {},
    "val_auc": {"monitor": "val_auc", "epochs": 45},
    "smoothing": {"smoothing": 0.1},
    "adamw_cosine": {"weight_decay": 1e-4, "cosine": True},
    "wider": {"widths": (64, 128, 256)},
    "flips_zoom": {"vertical": True, "zoom": 0.1},
    "ema": {"ema": True},
    "mixup": {"mixup": 0.2},
    "smoothing_cosine": {"smoothing": 0.1, "weight_decay": 1e-4, "cosine": True},
    "val_auc_ema": {"monitor": "val_auc", "epochs": 45, "ema": True},
    "average_max": {"pooling": "average_max"},
    "standardize": {"standardize": True},
    "ordinal2": {"ordinal": 2.0},
    "ordinal4": {"ordinal": 4.0},
    "seeds5": {"members": 5},
    "graham": {"graham": 2.0},
    "ordinal2_seeds5": {"ordinal": 2.0, "members": 5},
    "smoothing_seeds5": {"smoothing": 0.1, "members": 5},
    "ordinal1_seeds5": {"ordinal": 1.0, "members": 5},
    "ordinal2_cosine_seeds5": {"ordinal": 2.0, "weight_decay": 1e-4, "cosine": True, "members": 5},
    "ordinal2_mixup_seeds5": {"ordinal": 2.0, "mixup": 0.2, "members": 5},
    "ordinal2_pairs_seeds5": {"ordinal": 2.0, "convs_per_block": 2, "members": 5},
    "ordinal2_batch16_seeds5": {"ordinal": 2.0, "batch_size": 16, "members": 5},
    "ordinal2_dropout5_seeds5": {"ordinal": 2.0, "dropout": 0.5, "members": 5},
    "ordinal2_turns_seeds5": {"ordinal": 2.0, "rotation": 0.5, "vertical": True, "members": 5},
    "ordinal2_deeper_seeds5": {"ordinal": 2.0, "widths": (32, 64, 128, 256), "members": 5},
    "ordinal2_rate5e-4_seeds5": {"ordinal": 2.0, "rate": 5e-4, "members": 5},
    "ordinal2_patience10_seeds5": {"ordinal": 2.0, "patience": 10, "epochs": 60, "members": 5},
}


def fit(
    data,
    seed: int,
    *,
    smoothing: float = 0.0,
    weight_decay: float = 0.0,
    cosine: bool = False,
    widths: tuple[int, ...] = (32, 64, 128),
    vertical: bool = False,
    zoom: float = 0.0,
    monitor: str = "val_loss",
    epochs: int = 30,
    ema: bool = False,
    mixup: float = 0.0,
    pooling: str = "average",
    standardize: bool = False,
    ordinal: float = 0.0,
    graham: float = 0.0,
    convs_per_block: int = 1,
    batch_size: int = 32,
    dropout: float = 0.3,
    rotation: float = 0.05,
    rate: float = 1e-3,
    patience: int = 0,
    members: int = 1,
) -> np.ndarray:
    """Test-split probabilities (N×classes) of the plain CNN with one lever changed, trained with `seed` (the mean
    of `members` such CNNs, each with its own seed)."""
    settings = {k: v for k, v in locals().items() if k not in ("data", "seed", "members")}
    # Settings left at their defaults stay out of the cache key, so models cached before they existed are found.
    defaults = {"batch_size": 32, "dropout": 0.3, "rotation": 0.05, "rate": 1e-3, "patience": 0}
    settings = {k: v for k, v in settings.items() if defaults.get(k, object()) != v}
    member_seeds = [seed] + [seed * 1000 + i for i in range(1, members)]
    return np.mean([_cached(data, s, settings) for s in member_seeds], axis=0)


def variant_scores(data, seed: int, name: str) -> tuple[float, float, float]:
    """Test (AUC, accuracy, balanced accuracy) of a variant, or of the mean of variants joined by "+" (each
    variant's own bag weighs the same)."""
    probs = np.mean([fit(data, seed, **VARIANTS[part]) for part in name.split("+")], axis=0)
    return scores(data.arrays["test"].labels, probs)


def _cached(data, seed: int, settings: dict) -> np.ndarray:
    """`_probabilities`, kept on disk per dataset, settings and seed (`CACHE`), so that a bag mixing members of
    other variants (`--mix`) costs no training."""
    import hashlib
    import json

    dataset = [data.class_names, data.input_shape, len(data.arrays["train"].labels)]
    key = json.dumps({"data": dataset, "seed": seed, **settings}, sort_keys=True, default=str)
    path = CACHE / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.npy"
    if path.is_file():
        return np.load(path)
    probs = _probabilities(data, seed, **settings)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, probs)
    return probs


def _probabilities(
    data,
    seed: int,
    *,
    smoothing: float,
    weight_decay: float,
    cosine: bool,
    widths: tuple[int, ...],
    vertical: bool,
    zoom: float,
    monitor: str,
    epochs: int,
    ema: bool,
    mixup: float,
    pooling: str,
    standardize: bool,
    ordinal: float,
    graham: float,
    convs_per_block: int,
    batch_size: int = 32,
    dropout: float = 0.3,
    rotation: float = 0.05,
    rate: float = 1e-3,
    patience: int = 0,
) -> np.ndarray:
    """Test-split probabilities (N×classes) of one plain CNN fitted with these settings."""
    import keras

    keras.utils.set_random_seed(seed)
    train, val, test = (data.arrays[s] for s in ("train", "val", "test"))
    classes = data.num_classes
    model = plain_cnn_network(
        data.input_shape,
        classes,
        "softmax",
        widths=widths,
        vertical_flip=vertical,
        zoom=zoom,
        pooling=pooling,
        standardize=standardize,
        convs_per_block=convs_per_block,
        dropout=dropout,
        rotation=rotation,
    )
    steps = int(np.ceil(len(train.labels) / batch_size)) * epochs
    rate = keras.optimizers.schedules.CosineDecay(rate, steps) if cosine else rate
    if weight_decay:
        optimizer = keras.optimizers.AdamW(rate, weight_decay=weight_decay, use_ema=ema)
    else:
        optimizer = keras.optimizers.Adam(rate, use_ema=ema)
    # One-hot labels: Keras 3's sparse cross-entropy has no label smoothing.
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=smoothing),
        metrics=[keras.metrics.AUC(name="auc", multi_label=True, num_labels=classes)] if monitor == "val_auc" else [],
    )
    stop = keras.callbacks.EarlyStopping(
        monitor=monitor,
        mode="max" if monitor == "val_auc" else "min",
        patience=patience or (7 if monitor == "val_auc" else 5),
        restore_best_weights=True,
    )

    def pixels(split) -> np.ndarray:
        images = np.asarray(split.images, np.float32)
        if graham:
            import cv2

            blurred = np.stack([cv2.GaussianBlur(image, (0, 0), graham) for image in images]).reshape(images.shape)
            images = np.clip(4 * (images - blurred) + 128, 0, 255)
        return images

    images, targets = pixels(train), keras.utils.to_categorical(train.labels, classes)
    if ordinal:
        from medimg.model.losses import soft_targets

        targets = soft_targets("ordinal", classes, scale=ordinal)[np.asarray(train.labels)]
    if mixup:
        import tensorflow as tf

        mix = keras.layers.MixUp(alpha=mixup, seed=seed)
        pairs = tf.data.Dataset.from_tensor_slices((images, targets)).shuffle(len(images), seed=seed).batch(batch_size)
        training = pairs.map(lambda x, y: tuple(mix({"images": x, "labels": y}, training=True).values()))
        fit_args = {"x": training}
    else:
        fit_args = {"x": images, "y": targets, "batch_size": batch_size}
    # SwapEMAWeights before EarlyStopping: the averaged weights are what each epoch's validation scores and keeps.
    swap = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if ema else []
    model.fit(
        **fit_args,
        validation_data=(pixels(val), keras.utils.to_categorical(val.labels, classes)),
        epochs=epochs,
        callbacks=[*swap, stop],
        verbose=0,
    )
    return model.predict(pixels(test), verbose=0)


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.set_defaults(data=common.REPO.parent / "shared" / "datasets" / "retinamnist")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--only", default=",".join(VARIANTS), help="comma-separated variants; a+b: the mean of both variants' models"
    )
    args = parser.parse_args()
    common.configure_threads(args.intra, args.inter)
    from medimg.config import DatasetConfig
    from medimg.datasets import prepared, scanning

    report = scanning.scan(str(args.data))
    color = "rgb" if any("RGB" in mode for mode in report.modes) else "gray"
    side = min(int(v) for v in next(iter(report.sizes)).split("x"))
    data = prepared.prepare_data(DatasetConfig(path=str(args.data), image_size=side, color=color))
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"# levers: {args.data} at {side} px {color}, seeds {seeds}, load average {os.getloadavg()[0]:.1f}")
    print("| variant | test AUC (mean) | per seed | Δ AUC vs base | accuracy (mean) | Δ acc | seconds |")
    print("|---|---:|---|---:|---:|---:|---:|", flush=True)
    base = None
    for name in args.only.split(","):
        started = time.time()
        results = np.array([variant_scores(data, seed, name) for seed in seeds])
        auc, accuracy = results[:, 0].mean(), results[:, 1].mean()
        base = base if base is not None else (auc, accuracy)
        print(
            f"| {name} | {auc:.3f} | {' '.join(f'{a:.3f}' for a in results[:, 0])} | {auc - base[0]:+.3f} | "
            f"{accuracy:.3f} | {accuracy - base[1]:+.3f} | {time.time() - started:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
