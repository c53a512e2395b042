"""Automatic mode: every setting of a search chosen from the data and a time budget, each with a one-line reason.

`plan(path, minutes)` scans the dataset (no TensorFlow) and returns the `RunSpec` of a tune run that starts from
the plain CNN (`ModelParams.plain_cnn`), searches around it until the budget is spent, and keeps the mean of its
best models when that wins on validation (`TuneConfig.ensemble_size`). The CLI's `auto` command and the Tune page's
Automatic mode both run this plan; the choices and reasons go into the run's `run.json` under `auto`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from medimg.config import (
    AugmentConfig,
    DatasetConfig,
    ModelParams,
    RunSpec,
    SearchSpace,
    TrainConfig,
    TuneConfig,
)
from medimg.errors import ConfigError, DatasetError
from medimg.model.hyperparameters import deeper_cnn_trial
from medimg.model.tuning import FIT_SETUP_SECONDS
from medimg.store.runs import BUDGET_ONLY_TRIALS

# Seconds per training image per epoch of the plain CNN, gray, batch 32, measured on the 2-core CPU this project is
# built on (`python bench/quality.py --speed` prints them): 0.63 ms at 28 px, 2.46 ms at 64 px, 20 ms at 128 px;
# RGB input costs about 2× at 64 px. A faster machine only makes the plan conservative.
SECONDS_PER_IMAGE_EPOCH_64 = 2.46e-3
RGB_FACTOR = 2.0
# Validation and the PreciseBN pass add about a quarter to each epoch.
EPOCH_OVERHEAD = 1.25
# Fixed costs the per-image figure misses, which dominate small datasets: per epoch (callbacks, the event log, the
# checkpoint) and per trial (building and tracing the model, `tuning.FIT_SETUP_SECONDS`). Measured on the chest X-ray
# mini set at 64 px gray (240 training images), idle 2-core machine: median epoch 0.90 s against 0.74 s per-image
# estimate (`python -m medimg auto DATA --minutes 1.5`, the run's epoch events).
EPOCH_FIXED_SECONDS = 0.2
# Largest sizes tried for images above 64 px; never more than the images' own size.
SIZES = (32, 48, 64, 96, 128, 160, 192, 224, 256)
SMALL_NATIVE = 64  # at or below this, the images are used at their own size
SMALL_DATASET = 1000  # training images; below it batches of 16 are searched too (more steps per epoch)
TRIALS_AT_FULL_LENGTH = 4  # the plan keeps at least this many full-length trials inside the search's share
ENSEMBLE_CANDIDATES = 5
FORWARD_SHARE = 1 / 3  # of a training step's time per image: prediction has no backward pass
# Unlimited in practice: the budget, not a trial count, ends an automatic search.
BUDGET_MAX_TRIALS = BUDGET_ONLY_TRIALS
# A frozen backbone's epoch took at most 1.5× the plain CNN's at 64 px (ResNet50V2; 0.1-1.0× at 96-128 px) in
# `python bench/backbones.py` (bench/README.md); computing features is its forward pass alone, so this is an upper
# bound per image. Features may take this share of an automatic search.
FEATURE_COST_VS_CNN_EPOCH = 1.5
FEATURE_BUDGET_SHARE = 0.1


@dataclasses.dataclass(frozen=True)
class Choice:
    """One setting the plan chose: its value and why, in one line."""

    setting: str
    value: Any
    reason: str


@dataclasses.dataclass(frozen=True)
class AutoPlan:
    """The spec to run and the choices behind it."""

    spec: RunSpec
    choices: tuple[Choice, ...]
    minutes: float

    def record(self) -> dict[str, Any]:
        """What `run.json` keeps under `auto`."""
        return {
            "minutes": self.minutes,
            "choices": [dataclasses.asdict(choice) for choice in self.choices],
        }

    def lines(self) -> list[str]:
        return [f"{choice.setting}: {choice.reason}" for choice in self.choices]


def seconds_per_image_epoch(size: int, color: str) -> float:
    """Estimated training time of the plain CNN per image per epoch (seconds), validation included.

    Quadratic in the side up to 64 px, cubic above (measured: 128 px costs 8× 64 px on 2 cores, caches spill)."""
    ratio = size / 64
    cost = SECONDS_PER_IMAGE_EPOCH_64 * (ratio**2 if ratio <= 1 else ratio**3)
    return cost * (RGB_FACTOR if color == "rgb" else 1.0) * EPOCH_OVERHEAD


def full_trial_seconds(n_train: int, epochs: int, size: int, color: str) -> float:
    """Estimated seconds of one trial that runs all its `epochs` on `n_train` images at `size` px (validation,
    the per-epoch and per-trial fixed costs included; early stopping usually ends a trial sooner)."""
    return n_train * epochs * seconds_per_image_epoch(size, color) + epochs * EPOCH_FIXED_SECONDS + FIT_SETUP_SECONDS


def plan(
    path: str | Path,
    minutes: float = 10.0,
    *,
    seed: int = 42,
    image_size: int | None = None,
    color: str | None = None,
    base: RunSpec | None = None,
    report: Any = None,
    cv_folds: int | None = None,
    soft_labels: str | None = None,
) -> AutoPlan:
    """Choose every setting of a search for the dataset at `path` within `minutes` of wall time (all stages).

    `image_size` and `color` fix those settings instead of choosing them; `base` (a spec file's sections) supplies
    anything else the user set (its dataset fractions, group regex and DICOM window are kept). `report` is a
    `scanning.ScanReport` of `path` when the caller has one. `cv_folds` (2..10) scores each trial by
    cross-validation of the training split (`TuneConfig.cv_folds`); not chosen automatically, since no benchmark
    has shown it paying off within a budget (bench/README.md). `soft_labels` ("none", "smoothing", "ordinal") fixes
    the training targets instead of choosing them (`choose_targets`). Raises ConfigError for a budget under one
    minute and DatasetError when the dataset has fewer than two classes with readable images.
    """
    from medimg.datasets import scanning

    if minutes < 1:
        raise ConfigError(f"a budget of {minutes:g} minutes is too short; give at least 1 minute.")
    report = report or scanning.scan(str(path))
    counts = dict(report.classes)
    if len([c for c in counts.values() if c]) < 2:
        raise DatasetError(f"{path}: fewer than two classes with readable images ({counts}); nothing to learn.")
    choices: list[Choice] = []
    base_dataset = base.dataset if base else DatasetConfig()
    train_counts = _train_counts(report, base_dataset)
    n_train = sum(train_counts.values())

    if color is None:
        color, reason = _choose_color(report, seed)
        choices.append(Choice("color", color, reason))
    else:
        choices.append(Choice("color", color, f"{color}: given"))

    epochs, patience, epochs_reason = _epochs(n_train)
    native = _native_size(report)
    predicted = _predicted_images(report, base_dataset)
    if image_size is None:
        # The reserve depends on the size: a first choice with its fixed part, then again with that size's.
        image_size, _ = _choose_size(native, n_train, epochs, color, minutes * 60 - final_stage_seconds(minutes))
        kept = final_stage_seconds(minutes, predicted, image_size, color)
        image_size, reason = _choose_size(native, n_train, epochs, color, minutes * 60 - kept)
        choices.append(Choice("image_size", image_size, reason))
    else:
        choices.append(Choice("image_size", image_size, f"{image_size} px: given"))
    choices.append(Choice("epochs", epochs, epochs_reason))
    reserve = final_stage_seconds(minutes, predicted, image_size, color)
    search_seconds = minutes * 60 - reserve

    small = n_train < SMALL_DATASET
    batch_sizes = (16, 32) if small else (32,)
    choices.append(
        Choice(
            "batch_size",
            list(batch_sizes),
            f"{' or '.join(map(str, batch_sizes))}: {n_train:,} training images"
            + (" (small: smaller batches give more steps per epoch)" if small else ""),
        )
    )
    ratio = max(train_counts.values()) / max(1, min(train_counts.values()))
    weights = ("none", "balanced") if ratio > 1.5 else ("none",)
    choices.append(
        Choice(
            "class_weights",
            list(weights),
            (
                f"searched (none or balanced): the largest class is {ratio:.1f}× the smallest in training; "
                "weights are kept only if they win on validation, and a weighted model's outputs are shifted back to "
                "the training class frequencies, so its probabilities and arg-max mean what an unweighted model's do"
                if len(weights) > 1
                else f"none: classes within 1.5× of each other ({ratio:.1f}×)"
            ),
        )
    )
    chosen_targets, reason = choose_targets(report.class_names)
    if soft_labels is None:
        soft_labels = chosen_targets
    else:
        caveat = (
            " (the class names, sorted, are not numbered grades: their sorted order is taken as the grade order)"
            if soft_labels == "ordinal" and chosen_targets != "ordinal"
            else ""
        )
        reason = f"{soft_labels}: given{caveat}"
    choices.append(Choice("soft_labels", soft_labels, reason))
    blocks = (3, 4, 5) if image_size >= 64 else (2, 3, 4)
    # Below 64 px a fourth block reaches 256 filters (8× the base), the deeper network `first_trial` names.
    deeper = image_size < SMALL_NATIVE
    space = SearchSpace(
        learning_rate_min=3e-4,
        learning_rate_max=3e-3,
        conv_blocks=blocks,
        filters_min=16,
        filters_max=64,
        filters_step=16,
        filters_growth="double",
        filters_cap=8 if deeper else 4,
        kernel_sizes=(3,),
        activations=("relu",),
        dropouts=(0.0, 0.15, 0.3, 0.5),
        dense_units=(0, 128),
        batch_norm=(True,),
        l1=(0.0,),
        l2=(0.0, 1e-4),
        heads=("global_average",),
        optimizers=("adam",),
        batch_sizes=batch_sizes,
        augment_strengths=(0.0, 1.0, 2.0),
        class_weights=weights,
        soft_labels=(soft_labels,),
    )
    n_total = sum(report.classes.values())
    # Features of the training images in both views of the horizontal flip, and of the rest (validation at most).
    feature_images = 2 * n_train + max(0, n_total - n_train)
    networks, network_reason = _networks(image_size, feature_images, search_seconds)
    if len(networks) > 1:
        space = space.replace(
            backbones=networks, weights="imagenet", fine_tune_blocks=(0,), backbone_augment_strengths=(0.0,)
        )
    per_trial = full_trial_seconds(n_train, epochs, image_size, color)
    if cv_folds:  # k fits, each on (k - 1) / k of the training split, each with its own fixed costs
        fixed = epochs * EPOCH_FIXED_SECONDS + FIT_SETUP_SECONDS
        per_trial = (per_trial - fixed) * (cv_folds - 1) + fixed * cv_folds
    expected = max(1, int(search_seconds / max(per_trial * 0.6, 1e-3)))  # early stopping ends most trials sooner
    choices.append(
        Choice(
            "search",
            "random",
            f"random search around the plain CNN (conv blocks {'/'.join(map(str, blocks))}, base width 16-64 "
            f"doubling per block up to {space.filters_cap}×, learning rate 3e-4 to 3e-3, dropout, weight decay, "
            f"augmentation strength, batch size); about {expected} trials fit in {search_seconds / 60:.1f} minutes, "
            "too few for a Bayesian model of this space (KerasTuner starts one after 3 random trials per dimension)",
        )
    )
    choices.append(Choice("network", list(networks) if len(networks) > 1 else "cnn", network_reason))
    first_trial = "plain_cnn_then_deeper" if deeper else "plain_cnn"
    choices.append(
        Choice(
            "first_trial",
            first_trial,
            f"trial 1 is the plain Keras CNN ({_widths(ModelParams.plain_cnn(image_size))} conv "
            "blocks, BatchNorm, dropout 0.3, Adam 1e-3"
            + (", with the training targets above" if soft_labels != "none" else "")
            + "), so the search can only improve on it"
            + (
                f"; trial 2 is the same with a fourth block ({_widths(deeper_cnn_trial(image_size, space))}), "
                "which beat it in bags of five on RetinaMNIST (bench/README.md)"
                if deeper
                else ""
            ),
        )
    )
    choices.append(
        Choice(
            "final_model",
            f"mean of the {ENSEMBLE_CANDIDATES} best trials",
            f"the mean of the {ENSEMBLE_CANDIDATES} best trials' models (fewer if fewer trials finish), the "
            "rule that scored best in the benchmarks (bench/README.md)"
            + (
                "; a backbone trial that ranks first stands alone (backbones are not averaged)"
                if len(networks) > 1
                else ""
            ),
        )
    )
    augment = AugmentConfig(flip_horizontal=True, rotation=0.05)
    choices.append(
        Choice(
            "augmentation",
            augment.to_dict(),
            "horizontal flips, and rotations of a searched strength: none, up to ±18° or up to ±36° (flips only "
            "for a frozen backbone, whose features are cached)"
            if len(networks) > 1
            else "horizontal flips, and rotations of a searched strength: none, up to ±18° or up to ±36°",
        )
    )
    dataset = base_dataset.replace(path=str(Path(path).resolve()), image_size=image_size, color=color, seed=seed)
    spec = RunSpec(
        kind="tune",
        dataset=dataset,
        augment=augment,
        train=TrainConfig(
            epochs=epochs,
            early_stopping_patience=patience,
            reduce_lr_patience=0,
            class_weights="none",
            seed=seed,
            monitor="val_auc",
        ),
        params=ModelParams.plain_cnn(image_size),
        search=space,
        tune=TuneConfig(
            tuner="random",
            objective="val_auc",
            max_trials=BUDGET_MAX_TRIALS,
            max_minutes=round(search_seconds / 60, 3),
            first_trial=first_trial,
            ensemble_size=ENSEMBLE_CANDIDATES,
            cv_folds=cv_folds or 0,
        ),
    )
    if cv_folds:
        choices.append(
            Choice(
                "cv_folds",
                cv_folds,
                f"{cv_folds}-fold cross-validation of the training split per trial: given ({cv_folds}× the time of a "
                "trial, a steadier score)",
            )
        )
    choices.append(
        Choice(
            "budget",
            minutes,
            f"{minutes:g} minute{'' if minutes == 1 else 's'}: {search_seconds / 60:.1f} for decoding and the search, "
            f"{reserve:.0f} s kept for the final model and its evaluation",
        )
    )
    return AutoPlan(spec=spec, choices=tuple(choices), minutes=float(minutes))


@dataclasses.dataclass(frozen=True)
class InputSuggestion:
    """Model-input settings the images themselves suggest, for a user choosing by hand (the Dataset page): the
    size and channel mode, the images' own size, and the colour reason (`_choose_color`'s)."""

    image_size: int  # pixels, one of the caller's sizes
    color: str  # "gray" or "rgb"
    native: int  # median shorter side of the readable images, pixels
    color_reason: str


def suggest_input(report: Any, sizes: tuple[int, ...] | list[int], seed: int = 42) -> InputSuggestion:
    """The image size and channel mode a dataset's images suggest, without a budget: the images' own size when at
    most SMALL_NATIVE px (the largest of `sizes` not above it: never upsampled), else SMALL_NATIVE px; RGB when most
    sampled images carry colour (as `plan` chooses). `report`: a `scanning.ScanReport`; `sizes`: the sizes a
    widget offers, ascending, pixels."""
    native = _native_size(report)
    target = min(native, SMALL_NATIVE)
    fitting = [size for size in sizes if size <= target]
    color, reason = _choose_color(report, seed)
    return InputSuggestion(max(fitting) if fitting else min(sizes), color, native, reason)


def final_stage_seconds(minutes: float, predicted_images: int = 0, size: int = 28, color: str = "gray") -> float:
    """Seconds kept after the search for loading the best trials, the ensemble choice and the evaluation: a fixed
    part (8 % of the budget, 20 to 60 s: loading, saving, the report figures) and the forward passes, each of the
    ENSEMBLE_CANDIDATES members predicting `predicted_images` images at `size` px in `color` (the validation split
    for the ensemble choice, then validation and test again to evaluate: `_predicted_images`). At most half the
    budget. A forward pass costs about a third of a training step (the backward pass is about twice the forward's
    arithmetic; Kaplan et al. 2020, arXiv:2001.08361, count 2N and 4N FLOPs). An estimate at the plain CNN's cost
    per image: a frozen pretrained backbone among the members costs more."""
    fixed = min(60.0, max(20.0, 0.08 * minutes * 60))
    forward = seconds_per_image_epoch(size, color) / EPOCH_OVERHEAD * FORWARD_SHARE
    return min(fixed + ENSEMBLE_CANDIDATES * predicted_images * forward, 0.5 * minutes * 60)


def _predicted_images(report: Any, dataset: DatasetConfig) -> int:
    """Images the final stage predicts with every member: validation twice (the ensemble choice, then the
    evaluation) and test once, as `make_splits` will leave the splits (folders the dataset has, else the shares
    it carves)."""
    splits = {name: sum(report.splits.get(name, {}).values()) for name in ("train", "val", "test")}
    if not splits["train"]:  # no split folders: both shares are of the whole dataset
        total = sum(report.classes.values())
        return 2 * int(total * dataset.val_fraction) + int(total * dataset.test_fraction)
    test = splits["test"] or int(splits["train"] * dataset.test_fraction)
    val = splits["val"] or int((splits["train"] - (0 if splits["test"] else test)) * dataset.val_fraction)
    return 2 * val + test


def _widths(params: ModelParams) -> str:
    return "-".join(map(str, params.filters))


def _train_counts(report: Any, dataset: DatasetConfig) -> dict[str, int]:
    """Training images per class as `make_splits` will leave them: a dataset's own train/ folder less the test and
    validation shares it carves from it when those folders are missing, else the seeded split's training share."""
    if report.splits.get("train"):
        share = (1 - dataset.test_fraction if not report.splits.get("test") else 1.0) * (
            1 - dataset.val_fraction if not report.splits.get("val") else 1.0
        )
        return {name: max(1, int(report.splits["train"].get(name, 0) * share)) for name in report.classes}
    share = 1 - dataset.val_fraction - dataset.test_fraction
    return {name: max(1, int(count * share)) for name, count in report.classes.items()}


def _native_size(report: Any) -> int:
    """Median shorter side (pixels) over the readable images."""
    sides: list[int] = []
    for text, count in report.sizes.items():
        width, _, height = text.partition("x")
        try:
            sides += [min(int(width), int(height))] * count
        except ValueError:
            continue
    return int(np.median(sides)) if sides else SMALL_NATIVE


def _choose_size(native: int, n_train: int, epochs: int, color: str, search_seconds: float) -> tuple[int, str]:
    """The input side (pixels): the images' own below SMALL_NATIVE px; above it, the largest of SIZES at which
    TRIALS_AT_FULL_LENGTH full-length trials fit in the search, but not below SMALL_NATIVE while one does. The
    search's first trial is the plain CNN at SMALL_NATIVE px (issue #11's floor); a smaller input would make every
    trial a lower-resolution copy of it, and MedMNIST+ (Doerrich et al. 2024, arXiv:2404.15786) found 64 px beating
    28 px for most of its models and datasets, so detail is kept before trial count."""
    if native <= SMALL_NATIVE:
        size = max(8, native)
        return size, f"{size} px: the images are {native} px (never upsampled)"

    def full_trial(side: int) -> float:
        return full_trial_seconds(n_train, epochs, side, color)

    affordable = [s for s in SIZES if s <= native and full_trial(s) <= search_seconds / TRIALS_AT_FULL_LENGTH]
    size = max(affordable) if affordable else SIZES[0]
    trial = f"({n_train:,} images × {epochs} epochs)"
    if size < SMALL_NATIVE and full_trial(SMALL_NATIVE) <= search_seconds:
        seconds = full_trial(SMALL_NATIVE)
        return SMALL_NATIVE, (
            f"{SMALL_NATIVE} px: the images are {native} px; at {SMALL_NATIVE} px a full trial {trial} takes about "
            f"{seconds / 60:.1f} minutes of the search's {search_seconds / 60:.1f}, so fewer trials fit (early "
            f"stopping ends most sooner), but a smaller size would lose detail the plain CNN uses at "
            f"{SMALL_NATIVE} px, and it is the search's first trial"
        )
    seconds = full_trial(size)
    if not affordable:
        return size, (
            f"{size} px, the smallest offered: the images are {native} px; even at {size} px a full trial {trial} "
            f"takes about {seconds / 60:.1f} minutes of the search's {search_seconds / 60:.1f}, so few trials fit "
            "(a longer budget buys more, or a larger size)"
        )
    return size, (
        f"{size} px: the images are {native} px; at {size} px a full trial {trial} "
        f"takes about {seconds / 60:.1f} minutes of the search's {search_seconds / 60:.1f}, leaving room for "
        f"{TRIALS_AT_FULL_LENGTH} or more trials"
        + (" (a larger size would not)" if size < max(s for s in SIZES if s <= native) else "")
    )


def _epochs(n_train: int) -> tuple[int, int, str]:
    """Epochs per trial and early-stopping patience from the dataset size: about 1,500 optimizer steps at most."""
    steps = max(1, math.ceil(n_train / 32))
    epochs = int(min(60, max(20, math.ceil(1500 / steps))))
    patience = max(5, epochs // 6)
    return (
        epochs,
        patience,
        f"up to {epochs} per trial ({steps} steps per epoch in batches of 32"
        + (", twice as many in batches of 16" if n_train < SMALL_DATASET else "")
        + f"), stopping after {patience} epochs without a "
        "better validation AUC, best epoch kept",
    )


def _networks(image_size: int, feature_images: int, search_seconds: float) -> tuple[tuple[str, ...], str]:
    """The networks the automatic search draws from, and why: the configurable CNN, plus each pretrained backbone
    whose ImageNet weights are on this machine (`backbones.weights_status`) when the images are large enough for it
    and its features fit the budget. A backbone trial stays frozen and draws augmentation strength 0 (flips only,
    which the feature cache serves), so it trains a head on features computed once and costs seconds; validation
    decides whether it beats the CNN. `feature_images`: images whose features are computed (views included);
    `search_seconds`: the search's share of the budget. The features of each backbone are estimated at
    FEATURE_COST_VS_CNN_EPOCH × the plain CNN's per-image epoch cost, and all of them must fit in
    FEATURE_BUDGET_SHARE of the search."""
    from medimg.errors import ConfigError
    from medimg.model import backbones

    found = [row["backbone"] for row in backbones.weights_status() if row["found"]]
    if not found:
        return ("cnn",), (
            "the configurable CNN from scratch: no ImageNet weights are on this machine (`python -m medimg weights "
            "list`; `weights fetch` or `weights import` adds them, and the search then tries their frozen backbones "
            "too)"
        )
    usable = []
    for name in found:
        try:
            backbones.check_input_size(name, (image_size, image_size, 3))
        except ConfigError:
            continue
        usable.append(name)
    if not usable:
        return ("cnn",), (
            f"the configurable CNN from scratch: ImageNet weights are here for {', '.join(found)}, but "
            f"{image_size} px images are below the {backbones.MIN_SIZE} px a backbone needs (never upsampled)"
        )
    each = feature_images * seconds_per_image_epoch(image_size, "gray") * FEATURE_COST_VS_CNN_EPOCH
    affordable = max(0, int(search_seconds * FEATURE_BUDGET_SHARE // max(each, 1e-9)))
    if affordable < len(usable):
        if not affordable:
            return ("cnn",), (
                f"the configurable CNN from scratch: ImageNet weights are here for {', '.join(usable)}, but their "
                f"features ({feature_images:,} images, about {each:.0f} s a backbone) would take more than "
                f"{FEATURE_BUDGET_SHARE:.0%} of the search's {search_seconds / 60:.1f} minutes"
            )
        usable = usable[:affordable]
    return ("cnn", *usable), (
        f"the configurable CNN or a frozen pretrained {', '.join(usable)} (ImageNet weights found) with a searched "
        "head: the backbone's features are computed once and its trials train only the head on them (seconds "
        "each); validation decides. Their benefit is not measured in bench/ (no ImageNet weights there)"
    )


def targets_note(class_names: list[str], chosen: tuple[str, ...] | list[str]) -> str | None:
    """What to tell a user who sets the training targets by hand (the Tune page's Advanced mode, the Train page):
    None when `chosen` (soft-label kinds, `config.SOFT_LABELS`) agrees with what `choose_targets` would choose for
    `class_names`; else one sentence, e.g. numbered grades trained on one-hot targets only, or ordinal targets on
    classes whose names give no order. An empty `class_names` (the dataset could not be listed) gives None."""
    if not class_names or not chosen:
        return None
    wanted, _ = choose_targets(class_names)
    if wanted == "ordinal" and "ordinal" not in chosen:
        return (
            f"The class names are numbered grades ({class_names[0]} … {class_names[-1]}): the automatic mode trains "
            "on soft ordinal labels here (on RetinaMNIST a mean of five CNNs scored test AUC 0.747 with them, 0.739 "
            "with one-hot targets; bench/README.md). Choose ordinal training targets unless the numbers are not "
            "an order."
        )
    if wanted != "ordinal" and "ordinal" in chosen and len(class_names) > 2:
        return (
            "Ordinal targets take the sorted class names "
            f"({', '.join(class_names[:4])}{' …' if len(class_names) > 4 else ''}) as grades in that order; these "
            "names are not numbered grades, so a neighbouring class may not be a near miss."
        )
    return None


def choose_targets(class_names: list[str]) -> tuple[str, str]:
    """Soft ordinal labels when the classes are numbered grades, else one-hot targets, with the reason.

    Numbered grades: three or more classes whose names, in class index order (sorted), start with consecutive whole
    numbers (0_no_dr, 1_mild, ... or 1, 2, 3), the way graded labels are exported (MedMNIST's RetinaMNIST is
    "ordinal regression"); then the grade order is the index order that the ordinal targets need. Measured on
    RetinaMNIST (bench/README.md): a mean of five plain CNNs scored test AUC 0.747 with these targets against
    0.739 with one-hot ones, on each of five seeds, accuracy 0.540 against 0.536. Numbers that are not an order
    cost accuracy, not AUC: with RetinaMNIST's grades renumbered out of order, the same bag scored 0.738 / 0.526
    against one-hot targets' 0.736 / 0.542 (three seeds), so the rule reads the names and says so in its reason."""
    from medimg.metrics.ordinal import numbered_grades

    if numbered_grades(class_names):
        return "ordinal", (
            f"ordinal: the {len(class_names)} class names are numbered {class_names[0]} … {class_names[-1]}, read as "
            "ordered grades; each image's target also gives its neighbouring grades a share (soft ordinal labels), "
            "so a near miss costs less than a distant one (set the training targets to none if the numbers are not "
            "an order)"
        )
    why = "two classes" if len(class_names) == 2 else "the class names, sorted, are not numbered 0, 1, 2 … or 1, 2, 3 …"
    return "none", f"none (one-hot targets): {why}"


def _choose_color(report: Any, seed: int) -> tuple[str, str]:
    """gray unless most sampled images carry colour (3-channel files holding gray copies count as gray)."""
    from medimg.imaging import images

    files = list(report.files)
    total_colour_files = sum(count for mode, count in report.modes.items() if "RGB" in mode)
    if not files or not total_colour_files:
        return "gray", "gray: every image is single-channel"
    colour, read = images.count_colour([file.path for file in files], images.COLOUR_SAMPLE, seed)
    if read and colour / read >= 0.5:
        return "rgb", f"rgb: {colour} of {read} sampled images carry colour"
    return "gray", (
        f"gray: {colour} of {read} sampled images carry colour "
        f"({total_colour_files:,} files are stored as RGB, most with identical channels)"
    )
