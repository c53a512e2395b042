"""Configurations: validated on construction, frozen, JSON round-trip, messages that name the setting."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from medimg.config import (
    AugmentConfig,
    DatasetConfig,
    ModelParams,
    RunSpec,
    SearchSpace,
    TrainConfig,
    TuneConfig,
    load_spec_file,
)
from medimg.errors import ConfigError, MedimgError

ALL_CONFIGS = [DatasetConfig, AugmentConfig, ModelParams, SearchSpace, TrainConfig, TuneConfig, RunSpec]


@pytest.mark.parametrize("cls", ALL_CONFIGS)
def test_defaults_round_trip_through_json(cls: type) -> None:
    config = cls()
    text = config.to_json()
    assert json.loads(text) == json.loads(json.dumps(config.to_dict()))
    assert cls.from_json(text) == config


def test_non_default_run_spec_round_trips_and_lists_become_tuples() -> None:
    spec = RunSpec(
        kind="tune",
        dataset=DatasetConfig(path="/data", image_size=32, color="rgb", group_regex=r"^(person\d+)"),
        augment=AugmentConfig(flip_horizontal=True, rotation=0.1),
        params=ModelParams(filters=(8, 16, 32), head="flatten"),
        search=SearchSpace.quick(),
        tune=TuneConfig(tuner="hyperband", max_trials=3),
    )
    # JSON has no tuples: after the round trip, sequences must come back as tuples or equality (and hashing) breaks.
    data = json.loads(spec.to_json())
    assert data["params"]["filters"] == [8, 16, 32]
    again = RunSpec.from_dict(data)
    assert again == spec
    assert again.params.filters == (8, 16, 32)
    assert isinstance(again.search.activations, tuple)
    assert isinstance(again.dataset, DatasetConfig)
    hash(again.params)  # frozen dataclasses of tuples are hashable


def test_nested_sections_may_be_partial_dicts() -> None:
    spec = RunSpec.from_dict({"kind": "train", "dataset": {"image_size": 16}, "train": {"epochs": 2}})
    assert spec.dataset.image_size == 16
    assert spec.dataset.color == "gray"  # default kept
    assert spec.train.epochs == 2
    assert spec.params == ModelParams()


def test_unknown_setting_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"DatasetConfig has no setting imagesize") as caught:
        DatasetConfig.from_dict({"imagesize": 32})
    assert "image_size" in str(caught.value)


def test_unknown_nested_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"TrainConfig has no setting epoch"):
        RunSpec.from_dict({"train": {"epoch": 3}})


def test_configs_are_frozen() -> None:
    config = DatasetConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.image_size = 128  # type: ignore[misc]
    changed = config.replace(image_size=128)
    assert changed.image_size == 128 and config.image_size == 64


def test_config_error_is_a_medimg_error_and_a_value_error() -> None:
    with pytest.raises(ValueError):
        DatasetConfig(image_size=2)
    with pytest.raises(MedimgError):
        DatasetConfig(image_size=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 4}, "image_size 4 must be between 8 and 1024"),
        ({"image_size": 2048}, "image_size 2048 must be between 8 and 1024"),
        ({"color": "cmyk"}, "color 'cmyk' must be one of"),
        ({"val_fraction": 1.0}, r"split fractions must be in \[0, 1\)"),
        ({"val_fraction": 0.5, "test_fraction": 0.45}, "val_fraction \\+ test_fraction = 0.95"),
        ({"group_regex": "person("}, "group_regex 'person\\(' is not a valid regular expression"),
        ({"group_regex": r"person\d+"}, "needs one capture group"),
    ],
)
def test_dataset_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DatasetConfig(**kwargs)


def test_dataset_channels_follow_color() -> None:
    assert DatasetConfig(color="gray").channels == 1
    assert DatasetConfig(color="rgb").channels == 3


def test_augment_identity_and_validation() -> None:
    assert AugmentConfig().is_identity
    assert not AugmentConfig(flip_vertical=True).is_identity
    assert not AugmentConfig(noise=0.01).is_identity
    with pytest.raises(ConfigError, match=r"augmentation rotation=0\.6 must be between 0 and 0\.5"):
        AugmentConfig(rotation=0.6)
    with pytest.raises(ConfigError, match=r"augmentation noise=-0\.1"):
        AugmentConfig(noise=-0.1)


def test_augment_scaled_multiplies_strengths_clips_at_half_and_keeps_flips() -> None:
    config = AugmentConfig(flip_horizontal=True, rotation=0.1, zoom=0.3, noise=0.02)
    assert config.scaled(1.0) is config
    doubled = config.scaled(2.0)
    assert doubled.rotation == pytest.approx(0.2)
    assert doubled.zoom == 0.5  # 0.6 clipped to the allowed maximum
    assert doubled.noise == pytest.approx(0.04)
    assert doubled.flip_horizontal is True
    off = config.scaled(0.0)
    assert (off.rotation, off.zoom, off.noise) == (0.0, 0.0, 0.0)
    assert off.flip_horizontal is True  # flips are not strengths


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"filters": ()}, "0 conv blocks; use 1 to 6"),
        ({"filters": (8,) * 7}, "7 conv blocks"),
        ({"filters": (8, 0)}, r"filters \[8, 0\] must be in 1..1024"),
        ({"kernel_size": 4}, "kernel_size 4 must be 1, 3, 5 or 7"),
        ({"activation": "softmax"}, "activation 'softmax' must be one of"),
        ({"dropout": 1.0}, r"dropout 1.0 must be in \[0, 1\)"),
        ({"dense_units": -1}, "dense_units must be >= 0"),
        ({"l2": -1e-4}, "l1 and l2 weight decay must be >= 0"),
        ({"head": "attention"}, "head 'attention' must be one of"),
        ({"optimizer": "lbfgs"}, "optimizer 'lbfgs' must be one of"),
        ({"learning_rate": 0.0}, r"learning_rate 0.0 must be in \(0, 1\)"),
        ({"batch_size": 0}, "batch_size 0 must be in 1..1024"),
        ({"augment_strength": 4.0}, r"augment_strength 4.0 must be in \[0, 3\]"),
    ],
)
def test_model_params_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelParams(**kwargs)


def test_seed_tutorial_is_the_tutorials_network() -> None:
    params = ModelParams.seed_tutorial()
    assert params.filters == (32, 64)
    assert params.batch_norm is False
    assert params.head == "flatten"
    assert params.dense_units == 0
    assert params.l2 == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"learning_rate_min": 0.1, "learning_rate_max": 0.01}, "0 < min <= max < 1"),
        ({"conv_blocks": (0, 2)}, "conv_blocks must be in 1..6"),
        ({"conv_blocks": ()}, "conv_blocks must be in 1..6"),
        ({"filters_min": 64, "filters_max": 32}, "1 <= min <= max <= 1024"),
        ({"filters_step": 0}, "filters_step must be >= 1"),
        ({"activations": ("relu", "mish")}, r"activations: \['mish'\] not supported"),
        ({"activations": ()}, "activations needs at least one value"),
        ({"kernel_sizes": (2,)}, r"kernel_sizes: \[2\] not supported"),
        ({"dropouts": (1.0,)}, r"dropouts must be in \[0, 1\)"),
        ({"batch_sizes": (0,)}, "batch_sizes must be in 1..1024"),
        ({"l1": ()}, "batch_norm, l1 and l2 need at least one value"),
        ({"augment_strengths": (5.0,)}, r"augment_strengths must be in \[0, 3\]"),
    ],
)
def test_search_space_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SearchSpace(**kwargs)


def test_search_space_size_estimate_counted_by_hand() -> None:
    # quick(): filters 16..64 step 16 → 4 values per block; 2 or 3 blocks → 4² + 4³ = 80 architectures;
    # choices with more than one value: activations 2, dropouts 2, dense_units 2 → 80 × 8 = 640.
    assert SearchSpace.quick().size_estimate() == 640
    one_point = SearchSpace(
        conv_blocks=(1,),
        filters_min=8,
        filters_max=8,
        activations=("relu",),
        dropouts=(0.0,),
    )
    assert one_point.size_estimate() == 1


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (TrainConfig, {"epochs": 0}, "epochs 0 must be in 1..10000"),
        (TrainConfig, {"class_weights": "inverse"}, "class_weights must be auto, balanced or none"),
        (TrainConfig, {"monitor": "loss"}, "monitor 'loss' must be one of"),
        (TrainConfig, {"early_stopping_patience": -1}, "early_stopping_patience must be >= 0"),
        (TuneConfig, {"tuner": "grid"}, "tuner 'grid' must be one of"),
        (TuneConfig, {"objective": "accuracy"}, "objective 'accuracy' must be one of"),
        (TuneConfig, {"max_trials": 0}, "max_trials must be >= 1"),
        (TuneConfig, {"max_minutes": -1.0}, "max_minutes must be >= 0"),
        (RunSpec, {"kind": "predict"}, "run kind 'predict' must be tune or train"),
        (RunSpec, {"distribution": "tpu"}, "distribution must be none or mirrored"),
    ],
)
def test_train_tune_and_run_validation(cls: type, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cls(**kwargs)


def test_load_spec_file_json_and_toml(tmp_path: Path) -> None:
    json_file = tmp_path / "spec.json"
    json_file.write_text('{"dataset": {"image_size": 32}, "train": {"epochs": 3}}')
    toml_file = tmp_path / "spec.toml"
    toml_file.write_text('[dataset]\nimage_size = 32\ncolor = "rgb"\n\n[search]\nactivations = ["relu", "tanh"]\n')
    assert load_spec_file(json_file) == {"dataset": {"image_size": 32}, "train": {"epochs": 3}}
    sections = load_spec_file(toml_file)
    assert sections["dataset"] == {"image_size": 32, "color": "rgb"}
    spec = RunSpec.from_dict({"kind": "tune", **sections})
    assert spec.search.activations == ("relu", "tanh")


def test_load_spec_file_errors_name_the_file(tmp_path: Path) -> None:
    broken_json = tmp_path / "bad.json"
    broken_json.write_text("{dataset: 1")
    with pytest.raises(ConfigError, match=r"bad.json is not valid JSON"):
        load_spec_file(broken_json)
    broken_toml = tmp_path / "bad.toml"
    broken_toml.write_text("[dataset\n")
    with pytest.raises(ConfigError, match=r"bad.toml is not valid TOML"):
        load_spec_file(broken_toml)
    with pytest.raises(ConfigError, match="cannot read spec file"):
        load_spec_file(tmp_path / "missing.json")


def test_parameters_are_described_in_plain_words_and_units() -> None:
    from medimg.config import describe_params

    rows = dict(describe_params(ModelParams.plain_cnn(28)))
    assert rows["Conv blocks (filters each)"] == "32 → 64 → 128"
    assert rows["Learning rate"] == "1.0e-03" and rows["Dropout"] == "0.3" and rows["Dense layer"] == "none"
    assert rows["Class weights"] == "none"
    assert rows["Augmentation strength"] == "1× the chosen augmentation's amounts (flips kept as chosen)"
    assert not [value for value in rows.values() if value in ("None", "True", "False")]
    weighted = dict(describe_params(ModelParams.plain_cnn(28).replace(class_weights="balanced")))
    assert weighted["Class weights"].startswith("balanced in training;") and "shifted back" in weighted["Class weights"]
    # Left to the training settings (""): worded from them when given (seen: "as the training settings say" on a
    # search whose settings said auto).
    deferred = ModelParams.plain_cnn(28).replace(class_weights="")
    assert dict(describe_params(deferred))["Class weights"] == "as the training settings say"
    auto = dict(describe_params(deferred, TrainConfig(class_weights="auto")))["Class weights"]
    assert auto.startswith("balanced in training when the classes differ by more than 1.5×")


def test_cross_validation_refuses_what_would_break_its_scores() -> None:
    from medimg.config import TuneConfig
    from medimg.errors import ConfigError

    assert TuneConfig(cv_folds=5).cv_folds == 5 and TuneConfig().cv_folds == 0
    with pytest.raises(ConfigError, match="cannot use the hyperband tuner"):
        TuneConfig(cv_folds=3, tuner="hyperband")
    with pytest.raises(ConfigError, match="cv_folds and executions_per_trial both repeat a trial"):
        TuneConfig(cv_folds=3, executions_per_trial=2)
    with pytest.raises(ConfigError, match=r"must be 0 \(off\) or 2\.\.10"):
        TuneConfig(cv_folds=1)
    with pytest.raises(ConfigError, match="refit_members and cv_folds cannot be combined"):
        TuneConfig(cv_folds=3, refit_members=5)
    with pytest.raises(ConfigError, match=r"refit_members 11 must be in 0\.\.10"):
        TuneConfig(refit_members=11)
    assert TuneConfig.from_dict(TuneConfig(refit_members=5).to_dict()).refit_members == 5
    assert TuneConfig.from_json(TuneConfig(cv_folds=4).to_json()).cv_folds == 4


def test_a_search_over_training_targets_is_not_ranked_by_validation_loss() -> None:
    both = SearchSpace(soft_labels=("none", "ordinal"))
    with pytest.raises(ConfigError, match="cannot rank its trials by validation loss"):
        RunSpec(kind="tune", search=both, tune=TuneConfig(objective="val_loss"))
    assert RunSpec(kind="tune", search=both, tune=TuneConfig(objective="val_auc")).search == both
    one = SearchSpace(soft_labels=("ordinal",))  # every trial's loss against the same targets: comparable
    assert RunSpec(kind="tune", search=one, tune=TuneConfig(objective="val_loss")).tune.objective == "val_loss"


def test_a_run_says_which_augmentation_its_models_trained_with() -> None:
    from medimg.config import describe_run_augment

    augment = AugmentConfig(flip_horizontal=True, rotation=0.05)
    search = SearchSpace(augment_strengths=(0.0, 1.0, 2.0))
    tune = RunSpec(kind="tune", augment=augment, search=search)
    # Seen on the Tune page: the run's augmentation shown plainly while its best trial trained at strength 0.
    assert describe_run_augment(tune, ModelParams(augment_strength=0.0)) == (
        "horizontal flip, rotation ±18° at a searched strength (0×/1×/2×); the best trial's: horizontal flip"
    )
    assert describe_run_augment(tune).endswith("at a searched strength (0×/1×/2×)")  # no best trial yet
    fixed = RunSpec(kind="tune", augment=augment, search=SearchSpace(augment_strengths=(1.0,)))
    assert describe_run_augment(fixed) == "horizontal flip, rotation ±18°"
    train = RunSpec(kind="train", augment=augment, params=ModelParams(augment_strength=2.0))
    assert describe_run_augment(train) == "horizontal flip, rotation ±36°"
