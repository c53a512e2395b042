"""A search space's points as KerasTuner hyperparameters: one trial's `ModelParams` drawn from (or read back from)
a `SearchSpace`, and the values that make a trial a given configuration. The categorical hyperparameters come from
`config.CHOICES`; the structured ones (conv blocks and widths, the learning-rate range, backbones, searched class
weights) are declared here. KerasTuner is imported only where `HyperParameters` are made."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from medimg.config import CHOICES, Choice, ModelParams, SearchSpace
from medimg.errors import ConfigError

if TYPE_CHECKING:
    import keras_tuner as kt


def params_from_hp(hp: kt.HyperParameters, space: SearchSpace) -> ModelParams:
    """Draw (or read back) one point of the space. Single-valued choices are fixed, not searched."""

    def choice(name: str, values: tuple) -> Any:
        return hp.Fixed(name, values[0]) if len(values) == 1 else hp.Choice(name, list(values))

    blocks = choice("conv_blocks", space.conv_blocks)

    def width(name: str) -> int:
        if space.filters_min < space.filters_max:
            return hp.Int(name, space.filters_min, space.filters_max, step=space.filters_step)
        return hp.Fixed(name, space.filters_min)

    if space.filters_growth == "double":
        base = width("filters")
        filters = tuple(min(base * 2**i, space.filters_cap * base) for i in range(blocks))
    else:
        filters = tuple(width(f"filters_{i}") for i in range(blocks))
    learning_rate = (
        hp.Float("learning_rate", space.learning_rate_min, space.learning_rate_max, sampling="log")
        if space.learning_rate_min < space.learning_rate_max
        else hp.Fixed("learning_rate", space.learning_rate_min)
    )
    values = {c.name: _drawn(c, choice(c.name, getattr(space, c.space_field))) for c in CHOICES}
    # Declared only when searched, so searches that leave it to the training settings keep their trial tables.
    values["class_weights"] = choice("class_weights", space.class_weights) if space.class_weights != ("",) else ""
    values.update(_backbone_values(hp, space, choice))
    return ModelParams(filters=filters, learning_rate=learning_rate, **values)


def _backbone_values(hp: kt.HyperParameters, space: SearchSpace, choice: Callable) -> dict[str, Any]:
    """The backbone hyperparameters of one trial; none declared for a CNN-only space (the default), so existing
    searches keep their trial tables and resume unchanged."""
    if space.backbones == ("cnn",):
        return {}
    backbone = choice("backbone", space.backbones)
    if backbone == "cnn":
        return {"backbone": "cnn"}
    blocks = choice("fine_tune_blocks", space.fine_tune_blocks) if space.weights != "none" else 0
    values = {"backbone": backbone, "weights": space.weights, "fine_tune_blocks": blocks}
    if space.backbone_augment_strengths:  # a backbone trial's own strengths (e.g. none, to train on cached features)
        values["augment_strength"] = choice("backbone_augment_strength", space.backbone_augment_strengths)
    return values


def params_from_values(values: dict[str, Any], space: SearchSpace) -> ModelParams:
    """ModelParams from a trial's saved hyperparameter values."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    params_from_hp(hp, space)  # declares the names
    hp.values.update({k: v for k, v in values.items() if not k.startswith("tuner/")})
    return params_from_hp(hp, space)


def plain_cnn_trial(image_size: int, space: SearchSpace) -> ModelParams:
    """The plain CNN (`ModelParams.plain_cnn`, `image_size` pixels) as a trial of `space`: its weight averaging and
    training targets are the plain CNN's (none, one-hot) when the space offers them, else the space's first, since
    both are ways of training the network, not part of it."""
    plain = ModelParams.plain_cnn(image_size)
    training = {
        name: offered[0]
        for name, offered in (("ema_momentum", space.ema_momenta), ("soft_labels", space.soft_labels))
        if getattr(plain, name) not in offered
    }
    return plain.replace(**training)


def deeper_cnn_trial(image_size: int, space: SearchSpace) -> ModelParams:
    """The plain CNN (`plain_cnn_trial`) with one conv block more, widths doubling from 32 (up to `space`'s
    `filters_cap` × 32 when the space doubles its widths): at 28 px, 32-64-128-256. A bag of five such networks
    scored test AUC 0.757 on RetinaMNIST against 0.744 for five plain CNNs, +0.013 on each of seeds 0, 1, 2
    (`python bench/levers.py --only ordinal2_deeper_seeds5,ordinal2_seeds5`, bench/README.md)."""
    plain = plain_cnn_trial(image_size, space)
    first = plain.filters[0]
    widths = [first * 2**i for i in range(len(plain.filters) + 1)]
    if space.filters_growth == "double":
        widths = [min(width, space.filters_cap * first) for width in widths]
    return plain.replace(filters=tuple(widths))


def first_trials(name: str, image_size: int, space: SearchSpace) -> list[dict[str, Any]]:
    """The hyperparameter values of a search's fixed first trials for `TuneConfig.first_trial` `name`: none for
    "", the plain CNN for "plain_cnn", then the deeper one too for "plain_cnn_then_deeper". Raises ConfigError when
    one is not a point of `space` (`first_trial_values`)."""
    trials = {"": [], "plain_cnn": [plain_cnn_trial], "plain_cnn_then_deeper": [plain_cnn_trial, deeper_cnn_trial]}
    return [first_trial_values(make(image_size, space), space) for make in trials[name]]


def first_trial_values(params: ModelParams, space: SearchSpace) -> dict[str, Any]:
    """The hyperparameter values (KerasTuner names) that make one trial exactly `params`.

    Raises ConfigError when `params` is not a point of `space` (a value outside a range or a choice list), since a
    tuner cannot record, nor a Bayesian oracle vectorise, a value its space does not hold.
    """
    values: dict[str, Any] = {"conv_blocks": len(params.filters)}
    if space.filters_growth == "double":
        values["filters"] = params.filters[0]
    else:
        values.update({f"filters_{i}": f for i, f in enumerate(params.filters)})
    for name in ("learning_rate", *(c.name for c in CHOICES), "class_weights"):
        values[name] = getattr(params, name)
    if space.backbones != ("cnn",):
        values["backbone"] = params.backbone
    widths = set(params.filters) if space.filters_growth == "free" else {params.filters[0]}
    inside = (
        len(params.filters) in space.conv_blocks
        and all(
            space.filters_min <= f <= space.filters_max and (f - space.filters_min) % space.filters_step == 0
            for f in widths
        )
        and space.learning_rate_min <= params.learning_rate <= space.learning_rate_max
        # KerasTuner hands back a stored value for a name declared Fixed, whatever the space holds.
        and all(getattr(params, c.name) in getattr(space, c.space_field) for c in CHOICES)
    )
    drawn = params_from_values(values, space) if inside else None
    if drawn != params:
        raise ConfigError(
            f"the first trial's configuration is not a point of the search space (space: {space.to_dict()}; "
            f"configuration: {params.to_dict()})."
        )
    return values


def _drawn(choice: Choice, value: Any) -> Any:
    return choice.cast(value) if choice.cast else value
