"""The backbone feature cache: computed once and then read from the memory map, invalidated by a changed file;
a frozen-backbone search builds, trains and checkpoints only heads on features, and its models come out as full image
models; augmentation keeps a search on pixels and says so.

Runs eagerly like tests/test_backbones.py (tracing MobileNetV3 costs more than running it on 32 px images)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from medimg import jobs
from medimg.config import AugmentConfig, DatasetConfig, ModelParams, RunSpec, SearchSpace, TrainConfig, TuneConfig
from medimg.errors import ConfigError
from medimg.model import backbones, batchnorm, features, hyperparameters, models, training, tuning
from medimg.store import runs
from tests.conftest import DEMO

NAME = "mobilenet_v3_small"
SIZE = 32
PARAMS = ModelParams(backbone=NAME, weights="imagenet", dense_units=0, dropout=0.0)


pytestmark = pytest.mark.usefixtures("eager_functions")


@pytest.fixture(autouse=True)
def weights_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A test-saved MobileNetV3Small weight file in $MEDIMG_WEIGHTS_DIR under Keras' name; downloads off."""
    folder = tmp_path_factory.getbasetemp() / "feature_weights"
    path = folder / backbones.get_backbone(NAME).file_name
    if not path.exists():
        save_calibrated_weights(NAME, path)
    monkeypatch.setenv(backbones.WEIGHTS_DIR_VARIABLE, str(folder))
    monkeypatch.delenv(backbones.DOWNLOADS_VARIABLE, raising=False)
    return folder


def save_calibrated_weights(name: str, path: Path) -> Path:
    """Random notop weights in Keras' file format, their BatchNorm statistics set from demo images: a randomly
    initialised MobileNetV3 with the initial statistics (mean 0, variance 1) pools to ~1e-11 everywhere, which would
    make every head predict 0.5 and every comparison below vacuous."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(1)
    application = getattr(keras.applications, backbones.get_backbone(name).constructor)(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)
    )
    images = training.prepare_data(DatasetConfig(path=str(DEMO), image_size=SIZE, color="rgb")).arrays["train"].images
    batchnorm.recompute_statistics(application, np.asarray(images, np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as stream:
        legacy_h5_format.save_weights_to_hdf5_group(stream, application)
    return path


@pytest.fixture()
def computed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of images each backbone forward pass over a split was asked for (one entry per computation)."""
    calls: list[int] = []
    compute = features._compute_features

    def counting(extractor, images, on_progress, view=features.ORIGINAL):
        calls.append(len(images))
        return compute(extractor, images, on_progress, view)

    monkeypatch.setattr(features, "_compute_features", counting)
    return calls


def test_which_trials_can_use_cached_features() -> None:
    assert features.unused_reason(PARAMS, AugmentConfig()) is None
    assert features.unused_reason(PARAMS.replace(augment_strength=0.0), AugmentConfig(rotation=0.1)) is None
    assert features.unused_reason(PARAMS, AugmentConfig(flip_horizontal=True, flip_vertical=True)) is None
    assert (
        features.unused_reason(PARAMS, AugmentConfig(flip_horizontal=True, zoom=0.1))
        == "augmentation other than flips needs pixels"
    )
    assert features.views(AugmentConfig()) == ((False, False),)
    assert features.views(AugmentConfig(flip_horizontal=True, flip_vertical=True)) == (
        (False, False),
        (False, True),
        (True, False),
        (True, True),
    )
    assert "fine_tune_blocks > 0" in features.unused_reason(PARAMS.replace(fine_tune_blocks=2), AugmentConfig())
    assert "weights 'none'" in features.unused_reason(PARAMS.replace(weights="none"), AugmentConfig())
    assert "no frozen backbone" in features.unused_reason(ModelParams(), AugmentConfig())
    space = SearchSpace(backbones=("cnn", NAME), fine_tune_blocks=(0, 2))
    assert features.search_reasons(space, AugmentConfig()) == {NAME: None}
    assert features.search_reasons(space.replace(fine_tune_blocks=(2,)), AugmentConfig()) == {
        NAME: "fine_tune_blocks > 0: the top blocks train"
    }
    with pytest.raises(ConfigError, match="cannot be cached for this model: fine_tune_blocks > 0"):
        features.backbone_features(None, PARAMS.replace(fine_tune_blocks=1), None)  # type: ignore[arg-type]


def test_features_are_computed_once_and_a_changed_file_invalidates_them(tmp_path: Path, computed: list[int]) -> None:
    root = tmp_path / "demo"
    shutil.copytree(DEMO, root)
    config = DatasetConfig(path=str(root), image_size=SIZE, color="gray")
    data = training.prepare_data(config)
    val = data.arrays["val"]
    first = features.backbone_features(val, PARAMS, data)
    assert computed == [len(val)] and first.dtype == np.float32 and first.shape == (len(val), 576)
    again = features.backbone_features(val, PARAMS, data)
    assert computed == [len(val)] and isinstance(again, np.memmap)  # read from the memory map, not computed
    np.testing.assert_array_equal(again, first)
    # The features are the pooled output of the full model's frozen backbone.
    model = models.build_model(PARAMS, data.input_shape, data.num_classes)
    expected = features.feature_extractor(model)(np.asarray(val.images[:4], np.float32), training=False)
    np.testing.assert_allclose(first[:4], np.asarray(expected), atol=1e-5)

    changed = Path(val.paths[0])
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a changed file: new image key
    data = training.prepare_data(config)
    features.backbone_features(data.arrays["val"], PARAMS, data)
    assert computed == [len(val), len(val)]


def frozen_search(tmp_path: Path, augment: AugmentConfig, trials: int, epochs: int) -> runs.Run:
    spec = RunSpec(
        kind="tune",
        dataset=DatasetConfig(path=str(DEMO), image_size=SIZE, color="gray", seed=3),
        augment=augment,
        search=SearchSpace(
            backbones=(NAME,),
            weights="imagenet",
            fine_tune_blocks=(0,),
            learning_rate_min=1e-3,
            learning_rate_max=1e-2,
            dropouts=(0.0, 0.25),
            dense_units=(0, 8),
            batch_sizes=(16,),
        ),
        tune=TuneConfig(tuner="random", max_trials=trials, objective="val_loss", ensemble_size=1),
        train=TrainConfig(epochs=epochs, early_stopping_patience=0, reduce_lr_patience=0, seed=3),
    )
    run = runs.create_run(spec, tmp_path / "runs")
    lines: list[str] = []
    jobs.execute(run, echo=lines.append)
    run.lines = lines  # type: ignore[attr-defined]
    return run


def test_flipped_views_are_the_backbone_on_flipped_images_and_each_epoch_draws_one_per_image(
    computed: list[int],
) -> None:
    data = training.prepare_data(DatasetConfig(path=str(DEMO), image_size=SIZE, color="gray"))
    val = data.arrays["val"]
    mirrored = features.backbone_features(val, PARAMS, data, view=(True, False))
    model = models.build_model(PARAMS, data.input_shape, data.num_classes)
    flipped = np.asarray(val.images[:4], np.float32)[:, :, ::-1]
    expected = features.feature_extractor(model)(flipped, training=False)
    np.testing.assert_allclose(mirrored[:4], np.asarray(expected), atol=1e-5)
    original = features.backbone_features(val, PARAMS, data)
    assert not np.allclose(original, mirrored)  # a distinct cache entry, not the original's

    # Three images, two views told apart by their sign: every epoch has each image once, in either view.
    views = (np.arange(1, 4, dtype=np.float32)[:, None], -np.arange(1, 4, dtype=np.float32)[:, None])
    dataset = features.training_dataset(views, np.array([0, 1, 2], np.int32), batch_size=2, seed=3)
    drawn = []
    for _ in range(40):
        batches = [(x.numpy()[:, 0], y.numpy()) for x, y in dataset]
        rows = np.concatenate([x for x, _ in batches])
        labels = np.concatenate([y for _, y in batches])
        assert sorted(np.abs(rows)) == [1.0, 2.0, 3.0]
        np.testing.assert_array_equal(np.abs(rows) - 1, labels)  # each view keeps its image's label
        drawn.append(rows)
    flipped_share = np.mean(np.concatenate(drawn) < 0)
    assert 0.3 < flipped_share < 0.7  # about half the draws are the flipped view


def test_a_frozen_backbone_search_trains_heads_on_features_and_keeps_full_models(
    tmp_path: Path, computed: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sklearn.metrics import log_loss

    built: list[str] = []
    build = models.build_model
    monkeypatch.setattr(models, "build_model", lambda *a: built.append("image model") or build(*a))
    run = frozen_search(tmp_path, AugmentConfig(), trials=2, epochs=2)
    record = run.record
    assert record["status"] == "completed" and record["trials_completed"] == 2
    (cache_use,) = record["feature_cache"]
    assert cache_use["used"] and cache_use["backbone"] == NAME and cache_use["width"] == 576
    assert any(line.startswith(f"backbone features cached for {NAME}: trials over the head") for line in run.lines)
    assert len(computed) <= 2  # train and val once for the whole search (none when an earlier test cached them)
    # The image model (its backbone read from the weights file) is built for the final model only, not per trial
    # (plus once per split to compute features when an earlier test has not cached them).
    assert len(built) == 1 + len(computed)

    # The best trial's checkpoint is its head's: in a head model its predictions on features, and in the run's
    # model (the image model with that head) the same predictions on the images. Its validation loss is the score
    # KerasTuner recorded for the trial (its best epoch's).
    data = training.prepare_data(run.spec.dataset)
    trial = next(t for t in tuning.read_trials(run.path / tuning.TUNER_FOLDER) if t["trial_id"] == record["best_trial"])
    params = hyperparameters.params_from_values(trial["hyperparameters"], run.spec.search)
    head = features.head_model(params, 576, data.num_classes)
    (checkpoint,) = (run.path / tuning.TUNER_FOLDER / f"trial_{trial['trial_id']}").glob("checkpoint*.h5")
    head.load_weights(checkpoint)
    val = data.arrays["val"]
    from_features = models.probabilities(head, features.backbone_features(val, params, data))
    model = models.load_run_model(run)
    assert model.name == f"medimg_{NAME}" and model.input.shape[1:] == data.input_shape
    from_images = models.probabilities(model, np.asarray(val.images, np.float32))
    np.testing.assert_allclose(from_images, from_features, atol=1e-5)
    weight_decay = sum(float(loss) for loss in model.losses)  # Keras adds the head's L1/L2 terms to val_loss
    loss = log_loss(val.labels, from_images, labels=[0, 1]) + weight_decay
    assert loss == pytest.approx(trial["score"], abs=1e-4)


def test_an_augmented_search_says_the_cache_is_not_used_and_trains_on_pixels(
    tmp_path: Path, computed: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    heads: list[str] = []
    monkeypatch.setattr(features, "head_model", lambda *args: heads.append("head") or pytest.fail("a head model"))
    run = frozen_search(tmp_path, AugmentConfig(flip_horizontal=True, rotation=0.1), trials=1, epochs=1)
    assert run.record["status"] == "completed"
    reason = "augmentation other than flips needs pixels"
    assert run.record["feature_cache"] == [
        {
            "backbone": NAME,
            "used": False,
            "reason": reason,
            "message": f"backbone feature cache not used for {NAME}: {reason}",
        }
    ]
    assert f"backbone feature cache not used for {NAME}: {reason}" in run.lines
    assert computed == [] and heads == []


def test_a_fine_tuning_search_trial_runs_both_stages(tmp_path: Path) -> None:
    """fine_tune_blocks > 0: no feature cache (the top blocks train), and the trial fine-tunes as `train` does."""
    spec = RunSpec(
        kind="tune",
        dataset=DatasetConfig(path=str(DEMO), image_size=SIZE, color="gray", seed=3),
        search=SearchSpace(backbones=(NAME,), fine_tune_blocks=(1,), dense_units=(0,), batch_sizes=(16,)),
        tune=TuneConfig(tuner="random", max_trials=1, objective="val_loss", ensemble_size=1),
        train=TrainConfig(epochs=2, early_stopping_patience=0, reduce_lr_patience=0, seed=3),
    )
    run = runs.create_run(spec, tmp_path / "runs")
    jobs.execute(run)
    assert run.record["status"] == "completed"
    assert run.record["feature_cache"][0]["used"] is False
    trial = run.record["best_trial"]
    stages = [(e["epoch"], e["stage"], e["epochs"]) for e in run.events("epoch") if e.get("trial") == trial]
    assert stages == [(0, 1, 2), (1, 2, 2)]
    assert run.stage_starts(trial) == [2]


def test_a_search_mixing_backbones_and_cnns_averages_only_cnns(tmp_path: Path) -> None:
    """An ensemble is built from configurable CNNs only (`models.build_ensemble`): a search over both kinds with
    ensemble_size 3 ends with a model all the same, and says which rule made it."""
    spec = RunSpec(
        kind="tune",
        dataset=DatasetConfig(path=str(DEMO), image_size=SIZE, color="gray", seed=3),
        search=SearchSpace(
            backbones=("cnn", NAME),
            weights="imagenet",
            fine_tune_blocks=(0,),
            conv_blocks=(2,),
            filters_min=8,
            filters_max=8,
            dense_units=(0,),
            batch_sizes=(16,),
        ),
        tune=TuneConfig(tuner="random", max_trials=4, objective="val_loss", ensemble_size=3),
        train=TrainConfig(epochs=1, early_stopping_patience=0, reduce_lr_patience=0, seed=3),
    )
    run = runs.create_run(spec, tmp_path / "runs")
    jobs.execute(run)
    record = run.record
    assert record["status"] == "completed"
    trials = {t["trial_id"]: t for t in tuning.read_trials(run.path / tuning.TUNER_FOLDER)}
    kinds = {i: t["hyperparameters"]["backbone"] for i, t in trials.items()}
    assert set(kinds.values()) == {"cnn", NAME}  # the seed draws both kinds; otherwise this test proves nothing
    ensemble = record["ensemble"]
    model = models.load_run_model(run)
    if kinds[record["best_trial"]] == NAME:
        assert ensemble["members"] == [record["best_trial"]] and "best trial alone" in ensemble["note"]
        assert model.name == f"medimg_{NAME}"
    else:
        assert all(kinds[m] == "cnn" for m in ensemble["members"]) and "CNN trials only" in ensemble["note"]
        assert not any(layer.name.startswith(("m0_expanded", "expanded")) for layer in model.layers)


def test_the_automatic_search_tries_found_backbones_on_cached_features(tmp_path: Path) -> None:
    """With a weights file found, `auto.plan` adds the frozen backbone; its trials draw augmentation strength 0
    (flips only, which the cache serves as flipped views), so they train heads on cached features while the CNN's
    trials keep their rotations."""
    from medimg import auto

    # Seed 2 draws both kinds in trials 2-4. KerasTuner's random draws advance one seed per declared hyperparameter,
    # so a new hyperparameter changes what a seed draws: the assertion on `kinds` below catches that.
    chosen = auto.plan(DEMO, 2, image_size=SIZE, color="gray", seed=2)
    spec = chosen.spec.replace(
        train=chosen.spec.train.replace(epochs=1, early_stopping_patience=0),
        tune=chosen.spec.tune.replace(max_trials=4, max_minutes=0.0, ensemble_size=1),
    )
    run = runs.create_run(spec, tmp_path / "runs")
    jobs.execute(run)
    assert run.record["status"] == "completed"
    (cache_use,) = run.record["feature_cache"]
    assert cache_use["used"] and cache_use["backbone"] == NAME
    assert cache_use["flipped_views"] == 1  # the automatic augmentation's horizontal flip, served from the cache
    drawn = [t["hyperparameters"] for t in tuning.read_trials(run.path / tuning.TUNER_FOLDER)]
    kinds = [values["backbone"] for values in drawn]
    assert "cnn" in kinds and NAME in kinds  # the seed draws both kinds; otherwise this test proves nothing
    for values in drawn:
        params = hyperparameters.params_from_values(values, spec.search)
        if params.backbone == NAME:
            assert params.augment_strength == 0.0 and features.unused_reason(params, spec.augment) is None
