"""Configurations as data: frozen dataclasses with plain-typed fields, validated, JSON round-trip."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, TypeVar

from medimg.errors import ConfigError

COLOR_MODES = ("gray", "rgb")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "gelu", "swish")
OPTIMIZERS = ("adam", "sgd", "rmsprop", "adamw")
HEADS = ("flatten", "global_average")
TUNERS = ("random", "bayesian", "hyperband")
# "" (in ModelParams and SearchSpace): the run's TrainConfig.class_weights decides.
CLASS_WEIGHTS = ("auto", "balanced", "none")
OBJECTIVES = ("val_auc", "val_accuracy", "val_loss")
# Training targets (`medimg.model.losses.soft_targets`): one-hot; label smoothing; soft ordinal labels for graded
# classes, whose class index order is the grade order.
SOFT_LABELS = ("none", "smoothing", "ordinal")

T = TypeVar("T", bound="_Config")


class _Config:
    """Mixin: `to_dict`/`from_dict`/JSON for a frozen dataclass, unknown keys refused."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
        data = dict(data or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"{cls.__name__} has no setting {', '.join(unknown)}; known settings: {', '.join(fields)}."
            )
        for name, value in data.items():
            if isinstance(value, list):
                data[name] = tuple(value)
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_dict(json.loads(text))

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_choices(name: str, values: tuple, allowed: tuple) -> None:
    _check(len(values) > 0, f"{name} needs at least one value.")
    bad = [v for v in values if v not in allowed]
    _check(not bad, f"{name}: {bad} not supported; choose from {list(allowed)}.")


# The keras.applications networks medimg can build (`medimg.model.backbones` holds how); named here, below the registry,
# so configurations can be checked without importing TensorFlow.
BACKBONE_NAMES = ("mobilenet_v3_small", "efficientnet_b0", "densenet121", "resnet50_v2")


@dataclasses.dataclass(frozen=True)
class DatasetConfig(_Config):
    """Where the images are and how they become model inputs.

    `path` is a folder with class folders, or train/val/test folders of class folders,
    or a CSV manifest (`path,label[,group]`). Fractions apply only when the dataset has no split folders.
    """

    path: str = ""
    image_size: int = 64
    color: str = "gray"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 42
    group_regex: str = ""
    window_center: float = 0.0
    window_width: float = 0.0
    # CSV manifests: labels that differ only in case ("Normal", "normal") are one class when True; reported and kept
    # apart when False (a spreadsheet's typo, or two real classes: only the user knows).
    merge_label_case: bool = False

    def __post_init__(self) -> None:
        _check(
            self.window_width == 0 or self.window_width > 1,
            f"DICOM window width {self.window_width} must be above 1 (or 0 to use each file's own window).",
        )
        _check(8 <= self.image_size <= 1024, f"image_size {self.image_size} must be between 8 and 1024 pixels.")
        _check(self.color in COLOR_MODES, f"color '{self.color}' must be one of {list(COLOR_MODES)}.")
        _check(0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1, "split fractions must be in [0, 1).")
        _check(
            self.val_fraction + self.test_fraction < 0.9,
            f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:.2f} leaves too little to "
            "train on; keep it under 0.9.",
        )
        if self.group_regex:
            import re

            try:
                pattern = re.compile(self.group_regex)
            except re.error as error:
                raise ConfigError(
                    f"group_regex '{self.group_regex}' is not a valid regular expression: {error}"
                ) from error
            _check(
                pattern.groups >= 1, f"group_regex '{self.group_regex}' needs one capture group, e.g. 'person(\\d+)_'."
            )

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    @property
    def window(self) -> tuple[float, float] | None:
        """(centre, width) replacing every DICOM file's own window, or None to use each file's header."""
        return (self.window_center, self.window_width) if self.window_width else None


@dataclasses.dataclass(frozen=True)
class AugmentConfig(_Config):
    """Training-time augmentation; every strength 0 (or False) means off.

    Rotation is a fraction of a full turn (Keras convention), zoom/translation/crop fractions of the
    image size, brightness/contrast fractions of the value range, noise a standard deviation as a fraction of
    the value range (0.02 is about 5 grey levels).
    """

    flip_horizontal: bool = False
    flip_vertical: bool = False
    rotation: float = 0.0
    zoom: float = 0.0
    translation: float = 0.0
    crop: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    noise: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rotation", "zoom", "translation", "crop", "brightness", "contrast", "noise"):
            value = getattr(self, name)
            _check(0.0 <= value <= 0.5, f"augmentation {name}={value} must be between 0 and 0.5.")

    @property
    def is_identity(self) -> bool:
        return self == AugmentConfig()

    def scaled(self, strength: float) -> AugmentConfig:
        """The same augmentations with every strength multiplied by `strength` (flips stay as they are)."""
        if strength == 1.0:
            return self
        clip = lambda v: min(0.5, v * strength)
        return self.replace(
            rotation=clip(self.rotation),
            zoom=clip(self.zoom),
            translation=clip(self.translation),
            crop=clip(self.crop),
            brightness=clip(self.brightness),
            contrast=clip(self.contrast),
            noise=clip(self.noise),
        )


@dataclasses.dataclass(frozen=True)
class ModelParams(_Config):
    """One point of the configurable CNN, or a pretrained backbone with a head. `filters` has one entry per conv block.

    Backbones (`medimg.model.backbones`): `backbone` is "cnn" (the configurable CNN) or a `keras.applications` network
    (`BACKBONE_NAMES`); `weights` is "imagenet" (looked up offline, see `backbones.resolve_weights`), "none" (random
    weights, the whole network trained) or a weight file's path, and matters only for a backbone;
    `fine_tune_blocks` is how many top blocks stage 2 unfreezes (0: only the head is trained) at
    `fine_tune_learning_rate`. For a backbone, `filters`, `kernel_size`, `batch_norm` and `head` are not used.
    """

    filters: tuple[int, ...] = (32, 64)
    conv_layers: int = 1  # convolutions per block before its pooling (2: VGG's stacked 3×3 convolutions)
    kernel_size: int = 3
    activation: str = "relu"
    batch_norm: bool = True
    dropout: float = 0.25
    dense_units: int = 64
    l1: float = 0.0
    l2: float = 1e-4
    head: str = "global_average"
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    batch_size: int = 32
    augment_strength: float = 1.0
    class_weights: str = ""
    backbone: str = "cnn"
    weights: str = "imagenet"
    fine_tune_blocks: int = 0
    fine_tune_learning_rate: float = 1e-5
    # Polyak averaging of the weights: the optimizer keeps their exponential moving average with this momentum, and
    # that average is what each epoch validates, keeps and finally returns (0: off; Keras' `use_ema`).
    ema_momentum: float = 0.0
    # The targets the loss compares with: "none" (one-hot), "smoothing" or "ordinal" (`losses.soft_targets`).
    soft_labels: str = "none"

    def __post_init__(self) -> None:
        _check(
            self.backbone in ("cnn", *BACKBONE_NAMES),
            f"backbone '{self.backbone}' must be 'cnn' or one of {list(BACKBONE_NAMES)}.",
        )
        _check(
            isinstance(self.weights, str) and self.weights.strip() != "",
            "weights must be 'imagenet', 'none' or the path of a weight file.",
        )
        _check(
            self.backbone != "cnn" or self.weights in ("imagenet", "none"),
            f"weights file '{self.weights}' needs a backbone; backbone 'cnn' is trained from random weights.",
        )
        _check(
            isinstance(self.fine_tune_blocks, int) and 0 <= self.fine_tune_blocks <= 100,
            f"fine_tune_blocks {self.fine_tune_blocks} must be a whole number in 0..100 (0: train only the head).",
        )
        _check(
            0 < self.fine_tune_learning_rate < 1,
            f"fine_tune_learning_rate {self.fine_tune_learning_rate} must be in (0, 1), typically 1e-5.",
        )
        _check(
            self.class_weights in ("", *CLASS_WEIGHTS),
            f"class_weights '{self.class_weights}' must be one of {list(CLASS_WEIGHTS)} (or empty for the run's).",
        )
        _check(1 <= len(self.filters) <= 6, f"{len(self.filters)} conv blocks; use 1 to 6.")
        _check(all(1 <= int(f) <= 1024 for f in self.filters), f"filters {list(self.filters)} must be in 1..1024.")
        _check(self.kernel_size in (1, 3, 5, 7), f"kernel_size {self.kernel_size} must be 1, 3, 5 or 7.")
        _check(self.conv_layers in (1, 2, 3), f"conv_layers {self.conv_layers} must be 1, 2 or 3 per block.")
        _check(self.activation in ACTIVATIONS, f"activation '{self.activation}' must be one of {list(ACTIVATIONS)}.")
        _check(0.0 <= self.dropout < 1.0, f"dropout {self.dropout} must be in [0, 1).")
        _check(self.dense_units >= 0, "dense_units must be >= 0 (0 means no hidden dense layer).")
        _check(self.l1 >= 0 and self.l2 >= 0, "l1 and l2 weight decay must be >= 0.")
        _check(self.head in HEADS, f"head '{self.head}' must be one of {list(HEADS)}.")
        _check(self.optimizer in OPTIMIZERS, f"optimizer '{self.optimizer}' must be one of {list(OPTIMIZERS)}.")
        _check(0 < self.learning_rate < 1, f"learning_rate {self.learning_rate} must be in (0, 1).")
        _check(1 <= self.batch_size <= 1024, f"batch_size {self.batch_size} must be in 1..1024.")
        _check(0 <= self.augment_strength <= 3, f"augment_strength {self.augment_strength} must be in [0, 3].")
        _check(0 <= self.ema_momentum < 1, f"ema_momentum {self.ema_momentum} must be in [0, 1) (0: no averaging).")
        _check(self.soft_labels in SOFT_LABELS, f"soft_labels '{self.soft_labels}' must be one of {list(SOFT_LABELS)}.")

    @classmethod
    def plain_cnn(cls, image_size: int) -> ModelParams:
        """A strong known starting point (the "plain Keras CNN" of issue #11, the floor every default must beat):
        3×3 conv blocks of 32, 64, 128 filters (a fourth of 128 from 64 px) without bias, BatchNorm, ReLU, max
        pooling between blocks, global average pooling, dropout 0.3, Adam 1e-3, batch 32, no class weights."""
        return cls(
            filters=(32, 64, 128, 128) if image_size >= 64 else (32, 64, 128),
            kernel_size=3,
            activation="relu",
            batch_norm=True,
            dropout=0.3,
            dense_units=0,
            l1=0.0,
            l2=0.0,
            head="global_average",
            optimizer="adam",
            learning_rate=1e-3,
            batch_size=32,
            augment_strength=1.0,
            class_weights="none",
        )

    @classmethod
    def seed_tutorial(cls) -> ModelParams:
        """The tutorial's CNN: conv blocks without batch norm, flatten head, no hidden dense layer."""
        return cls(
            filters=(32, 64),
            activation="relu",
            batch_norm=False,
            dropout=0.25,
            dense_units=0,
            l2=0.0,
            head="flatten",
            learning_rate=1e-3,
        )


@dataclasses.dataclass(frozen=True)
class StrengthUnit:
    """How people read one augmentation strength: `shown = stored × scale`, in `unit`, 0 … `maximum` in `step`s."""

    label: str
    scale: float
    unit: str
    maximum: float
    step: float
    help: str

    def shown(self, stored: float) -> float:
        return round(stored * self.scale, 2)

    def stored(self, shown: float) -> float:
        return shown / self.scale


# Keras' RandomRotation takes a fraction of a full turn (0.05 = ±18°), RandomZoom / RandomTranslation fractions of
# the image size; people think in degrees and percent (keras.io/api/layers/preprocessing_layers/image_augmentation).
AUGMENT_UNITS: dict[str, StrengthUnit] = {
    "rotation": StrengthUnit(
        "Rotation (± degrees)", 360.0, "°", 180.0, 1.0, "Each image turned by up to ± this angle."
    ),
    "zoom": StrengthUnit("Zoom (± % of the size)", 100.0, "%", 50.0, 1.0, "Scaled in or out by up to this share."),
    "translation": StrengthUnit(
        "Shift (± % of the size)", 100.0, "%", 50.0, 1.0, "Moved sideways and up or down by up to this share."
    ),
    "crop": StrengthUnit(
        "Random crop (% of the size)", 100.0, "%", 50.0, 1.0, "Up to this share cut away, then resized back."
    ),
    "brightness": StrengthUnit(
        "Brightness (± % of the range)", 100.0, "%", 50.0, 1.0, "Shifted by up to this share of 0–255."
    ),
    "contrast": StrengthUnit("Contrast (± %)", 100.0, "%", 50.0, 1.0, "Contrast scaled by up to ± this share."),
    "noise": StrengthUnit(
        "Gaussian noise (SD, % of the range)",
        100.0,
        "%",
        50.0,
        0.5,
        "Noise with this standard deviation added: 2 % is about 5 grey levels.",
    ),
}


def describe_augment(config: AugmentConfig) -> str:
    """The augmentation in plain words and units: 'horizontal flip, rotation ±18°, zoom ±10%', or 'none'."""
    parts = [
        name
        for name, on in (("horizontal flip", config.flip_horizontal), ("vertical flip", config.flip_vertical))
        if on
    ]
    for field, unit in AUGMENT_UNITS.items():
        value = getattr(config, field)
        if value:
            sign = "" if field in ("crop", "noise") else "±"
            parts.append(f"{field.replace('translation', 'shift')} {sign}{unit.shown(value):g}{unit.unit}")
    return ", ".join(parts) or "none"


def describe_run_augment(spec: RunSpec, best: ModelParams | None = None) -> str:
    """The augmentation a run's models trained with, in words: a train run's `augment` scaled by its
    `params.augment_strength`; a search's, with the strengths its trials drew from and, given the `best` trial's
    parameters, the one that trial used ("horizontal flip, rotation ±18° at a searched strength (0×/1×/2×); the
    best trial's: horizontal flip"). Strength 0 keeps the flips (`AugmentConfig.scaled`)."""
    if spec.kind != "tune":
        return describe_augment(spec.augment.scaled(spec.params.augment_strength))
    strengths = tuple(spec.search.augment_strengths)
    if set(strengths) <= {1.0}:
        return describe_augment(spec.augment)
    text = f"{describe_augment(spec.augment)} at a searched strength ({'/'.join(f'{s:g}×' for s in strengths)})"
    if best is not None:
        text += f"; the best trial's: {describe_augment(spec.augment.scaled(best.augment_strength))}"
    return text


def describe_params(params: ModelParams, train: TrainConfig | None = None) -> list[tuple[str, str]]:
    """(setting, value) rows in plain words and units for people: filters per block, learning rate as 1e-3, dropout
    and weight decay as numbers, class weights and augmentation strength named; a categorical hyperparameter with
    no wording of its own here (`CHOICES`) under its label, as it is. Class weights the parameters leave to the
    training settings ("") are worded from `train` when given."""
    weights = {
        "": "as the training settings say",
        "none": "none",
        "balanced": "balanced in training; the kept model's outputs are shifted back to the class frequencies",
        "auto": "balanced in training when the classes differ by more than 1.5×, undone in the kept model's outputs",
    }
    class_weights = params.class_weights or (train.class_weights if train else "")
    worded = {
        "kernel_size": ("Kernel size", f"{params.kernel_size}×{params.kernel_size}"),
        "activation": ("Activation", params.activation),
        "batch_norm": ("Batch normalisation", "yes" if params.batch_norm else "no"),
        "head": ("Head", "global average pooling" if params.head == "global_average" else "flatten"),
        "dense_units": ("Dense layer", f"{params.dense_units} units" if params.dense_units else "none"),
        "dropout": ("Dropout", f"{params.dropout:g}"),
        "l2": ("L2 weight decay", f"{params.l2:g}"),
        "l1": ("L1 weight decay", f"{params.l1:g}"),
        "optimizer": ("Optimizer", params.optimizer),
        "batch_size": ("Batch size", str(params.batch_size)),
        "augment_strength": (
            "Augmentation strength",
            # Flips are on or off, not an amount: a strength of 0 keeps them (seen read as "no augmentation").
            f"{params.augment_strength:g}× the chosen augmentation's amounts (flips kept as chosen)",
        ),
        "ema_momentum": (
            "Weight averaging",
            f"moving average, momentum {params.ema_momentum:g}" if params.ema_momentum else "none",
        ),
        "soft_labels": (
            "Training targets",
            {
                "none": "one-hot",
                "smoothing": "label smoothing 0.1",
                "ordinal": "soft ordinal labels (classes are ordered grades)",
            }[params.soft_labels],
        ),
    }
    return [
        ("Conv blocks (filters each)", " → ".join(str(int(f)) for f in params.filters)),
        *(worded.get(c.name, (c.label, str(getattr(params, c.name)))) for c in CHOICES),
        ("Learning rate", f"{params.learning_rate:.1e}"),
        ("Class weights", weights.get(class_weights, class_weights)),
    ]


HYPERBAND_FACTOR = 3  # KerasTuner's default and the paper's (Li et al. 2018, "Hyperband", JMLR 18(185))


@dataclasses.dataclass(frozen=True)
class Choice:
    """A categorical hyperparameter: `ModelParams.<name>` is one of `SearchSpace.<space_field>` (KerasTuner's
    `hp.Choice(name, ...)`, or `hp.Fixed` when the space holds one value); the Tune page offers `offered` under
    `label`, shown as `shown` says ("" as it is, "rate": 1e-04 and 0 as none, "with": with / without, "momentum":
    0.99 and 0 as none)."""

    name: str
    space_field: str
    label: str
    offered: tuple
    shown: str = ""
    cast: type | None = None  # KerasTuner gives a Choice of booleans back as 1 / 0
    # The Train page picks a number from `offered` instead of typing it (values near 1, where a typing step of the
    # smallest offered value makes no sense).
    picked: bool = False
    help: str = ""  # what the setting does, for the widgets' help (a typed number's adds the offered values)


# The categorical hyperparameters, in the order KerasTuner declares them (a resumed search keeps its vector order).
# `hyperparameters.params_from_hp` and `first_trial_values`, `SearchSpace.size_estimate` and the Tune page's widgets
# all read this table: a new categorical hyperparameter is one entry here, its ModelParams and SearchSpace fields,
# and its use in `models.build_model`. The structured ones (conv blocks and widths, the learning-rate range,
# backbones, searched class weights) are declared in `hyperparameters.params_from_hp` itself.
CHOICES = (
    Choice("kernel_size", "kernel_sizes", "Kernel size", (3, 5, 7)),
    Choice("activation", "activations", "Activation", ACTIVATIONS),
    Choice("dropout", "dropouts", "Dropout", (0.0, 0.1, 0.25, 0.5)),
    Choice("dense_units", "dense_units", "Dense units (0 = none)", (0, 32, 64, 128, 256, 512)),
    Choice("batch_norm", "batch_norm", "Batch normalisation", (True, False), "with", bool),
    Choice("l1", "l1", "L1 weight decay", (0.0, 1e-5, 1e-4), "rate"),
    Choice("l2", "l2", "L2 weight decay", (0.0, 1e-5, 1e-4, 1e-3), "rate"),
    Choice("head", "heads", "Head", HEADS),
    Choice("optimizer", "optimizers", "Optimizer", OPTIMIZERS),
    Choice("batch_size", "batch_sizes", "Batch size", (8, 16, 32, 64, 128)),
    Choice(
        "augment_strength",
        "augment_strengths",
        "Augmentation strength (× the Augment page)",
        (0.0, 0.5, 1.0, 1.5, 2.0),
    ),
    Choice("conv_layers", "conv_layers", "Conv layers per block", (1, 2)),
    Choice(
        "ema_momentum",
        "ema_momenta",
        "Weight averaging (EMA momentum)",
        (0.0, 0.99, 0.999),
        "momentum",
        picked=True,
        help="The optimizer keeps an exponential moving average of the weights (0.99: about the last 100 steps); "
        "each epoch validates and keeps that average, and the fit returns it. none: the weights as trained.",
    ),
    Choice(
        "soft_labels",
        "soft_labels",
        "Training targets (soft labels)",
        SOFT_LABELS,
        help="What the loss compares the predictions with. none: one-hot (the true class 1, the others 0). "
        "smoothing: 0.1 of the target spread over all classes. ordinal: for ordered grades (class index order, e.g. "
        "0_no_dr … 4_proliferative_dr), the target spread over neighbouring grades, less the further away.",
    ),
)


@dataclasses.dataclass(frozen=True)
class SearchSpace(_Config):
    """Ranges KerasTuner searches. The defaults are the seed tutorial's ranges."""

    learning_rate_min: float = 1e-4
    learning_rate_max: float = 1e-2
    conv_blocks: tuple[int, ...] = (2, 3)
    filters_min: int = 32
    filters_max: int = 512
    filters_step: int = 32
    # "free": every block draws its own width; "double": one base width drawn, doubled per block up to
    # `filters_cap` × the base (the usual CNN shape, and one hyperparameter instead of one per block).
    filters_growth: str = "free"
    filters_cap: int = 4
    kernel_sizes: tuple[int, ...] = (3,)
    conv_layers: tuple[int, ...] = (1,)
    activations: tuple[str, ...] = ("relu", "tanh", "sigmoid")
    dropouts: tuple[float, ...] = (0.0, 0.25, 0.5)
    dense_units: tuple[int, ...] = (64,)
    batch_norm: tuple[bool, ...] = (True,)
    l1: tuple[float, ...] = (0.0,)
    l2: tuple[float, ...] = (1e-4,)
    heads: tuple[str, ...] = ("global_average",)
    optimizers: tuple[str, ...] = ("adam",)
    batch_sizes: tuple[int, ...] = (32,)
    augment_strengths: tuple[float, ...] = (1.0,)
    class_weights: tuple[str, ...] = ("",)
    ema_momenta: tuple[float, ...] = (0.0,)
    soft_labels: tuple[str, ...] = ("none",)
    # Networks the trials choose from ("cnn": the configurable CNN above; others: `medimg.model.backbones`), the weights
    # every backbone starts from ("imagenet" looked up offline, or "none"), and how many top blocks a backbone
    # unfreezes in its second stage. For a backbone trial the conv settings above are not used.
    backbones: tuple[str, ...] = ("cnn",)
    weights: str = "imagenet"
    fine_tune_blocks: tuple[int, ...] = (0,)
    # The augmentation strengths a backbone trial draws from; empty: `augment_strengths`, as the CNN's. (0.0,) keeps
    # every frozen backbone trial on cached features (`medimg.model.features`), as the automatic mode does.
    backbone_augment_strengths: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _check_choices("class_weights", self.class_weights, ("", *CLASS_WEIGHTS))
        _check_choices("backbones", self.backbones, ("cnn", *BACKBONE_NAMES))
        _check(bool(self.backbones), "backbones needs at least one value (cnn for the configurable CNN).")
        _check(self.weights in ("imagenet", "none"), f"weights '{self.weights}' must be imagenet or none for a search.")
        _check(
            bool(self.fine_tune_blocks) and all(0 <= b <= 100 for b in self.fine_tune_blocks),
            "fine_tune_blocks must be in 0..100.",
        )
        _check(
            0 < self.learning_rate_min <= self.learning_rate_max < 1,
            "learning rate range must satisfy 0 < min <= max < 1.",
        )
        _check(all(1 <= b <= 6 for b in self.conv_blocks) and self.conv_blocks, "conv_blocks must be in 1..6.")
        _check(1 <= self.filters_min <= self.filters_max <= 1024, "filters range must satisfy 1 <= min <= max <= 1024.")
        _check(self.filters_step >= 1, "filters_step must be >= 1.")
        _check(self.filters_growth in ("free", "double"), "filters_growth must be free or double.")
        _check(self.filters_cap in (1, 2, 4, 8, 16), "filters_cap must be 1, 2, 4, 8 or 16 (a power of two).")
        _check_choices("activations", self.activations, ACTIVATIONS)
        _check_choices("heads", self.heads, HEADS)
        _check_choices("optimizers", self.optimizers, OPTIMIZERS)
        _check_choices("kernel_sizes", self.kernel_sizes, (1, 3, 5, 7))
        _check_choices("conv_layers", self.conv_layers, (1, 2, 3))
        _check(bool(self.dropouts) and all(0 <= d < 1 for d in self.dropouts), "dropouts must be in [0, 1).")
        _check(bool(self.dense_units) and all(u >= 0 for u in self.dense_units), "dense_units must be >= 0.")
        _check(
            bool(self.batch_sizes) and all(1 <= b <= 1024 for b in self.batch_sizes), "batch_sizes must be in 1..1024."
        )
        _check(
            bool(self.batch_norm) and bool(self.l1) and bool(self.l2), "batch_norm, l1 and l2 need at least one value."
        )
        _check(
            bool(self.augment_strengths) and all(0 <= s <= 3 for s in self.augment_strengths),
            "augment_strengths must be in [0, 3].",
        )
        _check(
            all(0 <= s <= 3 for s in self.backbone_augment_strengths), "backbone_augment_strengths must be in [0, 3]."
        )
        _check(bool(self.ema_momenta) and all(0 <= m < 1 for m in self.ema_momenta), "ema_momenta must be in [0, 1).")
        _check_choices("soft_labels", self.soft_labels, SOFT_LABELS)

    @classmethod
    def quick(cls) -> SearchSpace:
        """A small space for 2-core machines and demos: few filters, relu/tanh, modest dropout."""
        return cls(
            conv_blocks=(2, 3),
            filters_min=16,
            filters_max=64,
            filters_step=16,
            activations=("relu", "tanh"),
            dropouts=(0.0, 0.25),
            dense_units=(32, 64),
        )

    def size_estimate(self) -> float:
        """Rough count of distinct points (log10 not taken), for showing the user how big the space is."""
        filters = max(1, (self.filters_max - self.filters_min) // self.filters_step + 1)
        per_model = (
            filters * len(self.conv_blocks)
            if self.filters_growth == "double"
            else sum(filters**b for b in self.conv_blocks)
        )
        choices = [getattr(self, choice.space_field) for choice in CHOICES] + [self.class_weights]
        networks = ("cnn" in self.backbones) * per_model + (len(self.backbones) - ("cnn" in self.backbones)) * len(
            self.fine_tune_blocks
        )
        return networks * math.prod(len(c) for c in choices)


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Config):
    """How one model is fitted (and how each trial is fitted during a search)."""

    epochs: int = 20
    early_stopping_patience: int = 5
    reduce_lr_patience: int = 3
    class_weights: str = "auto"
    seed: int = 42
    monitor: str = "val_auc"

    def __post_init__(self) -> None:
        _check(1 <= self.epochs <= 10000, f"epochs {self.epochs} must be in 1..10000.")
        _check(self.early_stopping_patience >= 0, "early_stopping_patience must be >= 0 (0 turns it off).")
        _check(self.reduce_lr_patience >= 0, "reduce_lr_patience must be >= 0 (0 turns it off).")
        _check(self.class_weights in ("auto", "balanced", "none"), "class_weights must be auto, balanced or none.")
        _check(self.monitor in OBJECTIVES, f"monitor '{self.monitor}' must be one of {list(OBJECTIVES)}.")

    def final_fit(self, objective: str) -> TrainConfig:
        """The schedule for the final model after a search: at least twice the per-trial epochs (50 or more),
        early stopping on the search's objective with a longer patience (the best epoch's weights restored), and
        the learning rate halved on plateaus. A trial's short schedule is tuned for ranking, not for the last
        point of accuracy."""
        return self.replace(
            epochs=max(50, 2 * self.epochs),
            early_stopping_patience=max(10, 2 * self.early_stopping_patience),
            reduce_lr_patience=max(4, self.reduce_lr_patience),
            monitor=objective,
        )


FIRST_TRIALS = ("", "plain_cnn", "plain_cnn_then_deeper")


@dataclasses.dataclass(frozen=True)
class TuneConfig(_Config):
    """The search itself: which tuner, how many trials, what to optimise, how long at most."""

    tuner: str = "random"
    objective: str = "val_auc"
    max_trials: int = 10
    executions_per_trial: int = 1
    max_minutes: float = 0.0
    # Trial 0's values: "" lets the tuner draw it; "plain_cnn" starts from `ModelParams.plain_cnn`, so a search
    # can only improve on that known configuration; "plain_cnn_then_deeper" makes the second trial (id 1) the plain
    # CNN with one block more (`hyperparameters.deeper_cnn_trial`), a second known configuration.
    first_trial: str = ""
    # The final model averages up to this many of the best trials; 1: the best trial alone.
    ensemble_size: int = 1
    # "top": the best `ensemble_size` trials, always; "validation": k ≤ ensemble_size grown while the validation
    # objective improves. Which wins is measured by bench/quality.py (bench/README.md, "Quality of the defaults"):
    # the trial that won on validation is flattered by having been chosen there, so growing k on validation stops
    # too early.
    ensemble_rule: str = "top"
    # k ≥ 2: each trial is trained k times, on k - 1 folds of the training split, validated on the fold left out,
    # and scored by the mean (folds stratified, patient-aware when groups are known). A trial's saved model is its
    # best fold's (KerasTuner keeps one checkpoint per trial). The validation split stays out of the search: it
    # chooses the ensemble and the operating point. 0: off.
    cv_folds: int = 0
    # n ≥ 1: the best n members of the final mean are also each retrained on train + val for the epochs their trial
    # peaked at, and added to the mean (the searched members stay; validation figures, the temperature and the
    # operating point come from them alone, since the retrained ones have seen validation). With a time budget the
    # search ends early enough for the retraining its best trials need, estimated from their own epochs. 0: off, and
    # the automatic mode's choice: paying for it out of the search did not win end to end (bench/README.md,
    # "Retrained members"). A spec file's [tune] section turns it on.
    refit_members: int = 0

    def __post_init__(self) -> None:
        _check(
            self.first_trial in FIRST_TRIALS,
            f"first_trial '{self.first_trial}' must be one of {list(FIRST_TRIALS)} ('' lets the tuner draw it).",
        )
        _check(0 <= self.refit_members <= 10, f"refit_members {self.refit_members} must be in 0..10.")
        # A cross-validated trial's model is one fold's; its best epoch count is not one schedule for all the data.
        _check(
            not (self.refit_members and self.cv_folds),
            "refit_members and cv_folds cannot be combined; use one of them.",
        )
        _check(
            self.cv_folds == 0 or 2 <= self.cv_folds <= 10,
            f"cv_folds {self.cv_folds} must be 0 (off) or 2..10.",
        )
        # Hyperband continues a trial from its previous checkpoint, which was fitted on other folds: it has seen
        # the fold it would be scored on.
        _check(
            not (self.cv_folds and self.tuner == "hyperband"),
            "cross-validated trials (cv_folds) cannot use the hyperband tuner; use random or bayesian.",
        )
        _check(
            not (self.cv_folds and self.executions_per_trial > 1),
            "cv_folds and executions_per_trial both repeat a trial; use one of them.",
        )
        _check(1 <= self.ensemble_size <= 10, f"ensemble_size {self.ensemble_size} must be in 1..10.")
        _check(self.ensemble_rule in ("top", "validation"), "ensemble_rule must be top or validation.")
        _check(self.tuner in TUNERS, f"tuner '{self.tuner}' must be one of {list(TUNERS)}.")
        _check(self.objective in OBJECTIVES, f"objective '{self.objective}' must be one of {list(OBJECTIVES)}.")
        _check(self.max_trials >= 1, "max_trials must be >= 1.")
        _check(self.executions_per_trial >= 1, "executions_per_trial must be >= 1.")
        _check(self.max_minutes >= 0, "max_minutes must be >= 0 (0 means no time limit).")


def _nested(cls: type[T], value: Any) -> T:
    if isinstance(value, cls):
        return value
    # An instance of a reloaded copy of the class (e.g. kept in a UI session across a code reload) is data too.
    return cls.from_dict(value.to_dict() if hasattr(value, "to_dict") else value)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named starting point for a hand-set search and a hand-set training, the same from the CLI (`tune
    --preset NAME`, `train`) and on the pages (the values they start with). The automatic mode needs none: it
    chooses from the data and the budget (`auto.plan`)."""

    name: str
    about: str
    search: SearchSpace
    max_trials: int
    trial_epochs: int  # epochs per trial of a search
    train_epochs: int  # epochs of a training set by hand


PRESETS = {
    preset.name: preset
    for preset in (
        Preset("quick", "a small space for 2 cores: 4 trials of 10 epochs", SearchSpace.quick(), 4, 10, 30),
        Preset("seed", "the seed tutorial's wide ranges: 10 trials of 10 epochs", SearchSpace(), 10, 10, 30),
    )
}
DEFAULT_PRESET = "quick"


@dataclasses.dataclass(frozen=True)
class RunSpec(_Config):
    """Everything that defines a run; rerunning from this record gives the same model (seeded)."""

    kind: str = "train"
    dataset: DatasetConfig = dataclasses.field(default_factory=DatasetConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    params: ModelParams = dataclasses.field(default_factory=ModelParams)
    search: SearchSpace = dataclasses.field(default_factory=SearchSpace)
    tune: TuneConfig = dataclasses.field(default_factory=TuneConfig)
    distribution: str = "none"

    def __post_init__(self) -> None:
        _check(self.kind in ("tune", "train"), f"run kind '{self.kind}' must be tune or train.")
        _check(self.distribution in ("none", "mirrored"), "distribution must be none or mirrored.")
        for name, cls in (
            ("dataset", DatasetConfig),
            ("augment", AugmentConfig),
            ("train", TrainConfig),
            ("params", ModelParams),
            ("search", SearchSpace),
            ("tune", TuneConfig),
        ):
            object.__setattr__(self, name, _nested(cls, getattr(self, name)))
        # The loss is measured against each trial's own training targets (`losses.SoftTargetCrossentropy`), whose
        # entropy sets its floor: losses of trials with different targets do not compare.
        _check(
            self.kind != "tune" or len(set(self.search.soft_labels)) == 1 or "loss" not in self.tune.objective,
            "a search over training targets cannot rank its trials by validation loss (each kind of target has its "
            "own loss floor); rank by validation AUC or accuracy, or search one kind of training targets.",
        )


def load_spec_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML spec file into a plain dict of sections (dataset, augment, search, ...)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read spec file {path}: {error.strerror}") from error
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            return tomllib.loads(text)
        return json.loads(text)
    except ValueError as error:
        raise ConfigError(
            f"spec file {path} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {error}"
        ) from error
