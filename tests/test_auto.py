"""Automatic mode: settings chosen from the data with reasons, the plain CNN first, the budget honoured, collapsed
trials never best, ensembles that load safely and predict the mean of their members."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medimg import auto
from medimg.config import ModelParams, SearchSpace
from medimg.errors import ConfigError
from medimg.model import hyperparameters
from medimg.store import runs
from tests.conftest import BREASTMNIST, DEMO
from tests.test_cli import medimg


def reasons(chosen: auto.AutoPlan) -> dict[str, str]:
    return {choice.setting: choice.reason for choice in chosen.choices}


def test_breastmnist_is_used_at_its_own_28_px_in_gray_with_class_weights_searched(breastmnist_dir: Path) -> None:
    chosen = auto.plan(breastmnist_dir, 10)
    spec = chosen.spec
    assert spec.dataset.image_size == 28 and spec.dataset.color == "gray"
    why = reasons(chosen)
    assert why["image_size"].startswith("28 px: the images are 28 px")
    assert why["color"] == "gray: every image is single-channel"
    # 399 benign vs 147 malignant training images: 2.7×, so weighting is searched, not imposed.
    assert spec.search.class_weights == ("none", "balanced") and "2.7×" in why["class_weights"]
    # Below 64 px the plain CNN is followed by the same network with a fourth block of 256 filters.
    assert spec.tune.first_trial == "plain_cnn_then_deeper" and spec.tune.max_trials == auto.BUDGET_MAX_TRIALS
    assert spec.search.filters_cap == 8 and "doubling per block up to 8×" in why["search"]
    # The final stage predicts validation (78 images) twice and test (156) once with each member.
    reserve = auto.final_stage_seconds(10, 2 * 78 + 156, 28, "gray")
    assert spec.tune.max_minutes == pytest.approx(10 - reserve / 60, abs=1e-3)
    assert why["budget"].endswith(f"{reserve:.0f} s kept for the final model and its evaluation")
    assert json.loads(json.dumps(chosen.record()))["choices"][0]["setting"] == "color"
    # No ImageNet weights here (the tests' own Keras home is empty): the search stays with the CNN, and says why.
    assert spec.search.backbones == ("cnn",)
    assert why["network"].startswith("the configurable CNN from scratch: no ImageNet weights are on this machine")
    assert spec.tune.cv_folds == 0 and "cv_folds" not in why  # cross-validation only when asked for
    # Retraining the best trials on train + val did not win end to end (bench/README.md, "Retrained members").
    assert spec.tune.refit_members == 0


def test_cross_validation_when_asked_is_planned_and_said(breastmnist_dir: Path) -> None:
    chosen = auto.plan(breastmnist_dir, 10, cv_folds=3)
    assert chosen.spec.tune.cv_folds == 3
    assert reasons(chosen)["cv_folds"].startswith("3-fold cross-validation of the training split per trial: given")


def test_found_imagenet_weights_put_their_frozen_backbones_in_the_search_when_the_images_are_large_enough(
    breastmnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medimg.model import backbones

    monkeypatch.setenv("MEDIMG_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / backbones.get_backbone("mobilenet_v3_small").file_name).write_bytes(b"weights")
    chosen = auto.plan(breastmnist_dir, 10)  # 28 px: below what a backbone takes, and never upsampled
    assert chosen.spec.search.backbones == ("cnn",)
    assert reasons(chosen)["network"] == (
        "the configurable CNN from scratch: ImageNet weights are here for mobilenet_v3_small, but 28 px images are "
        "below the 32 px a backbone needs (never upsampled)"
    )
    chosen = auto.plan(DEMO, 10)
    space = chosen.spec.search
    assert chosen.spec.dataset.image_size >= 32
    assert space.backbones == ("cnn", "mobilenet_v3_small") and space.weights == "imagenet"
    # Frozen, and strength 0 (flips only), so every backbone trial can train its head on cached features.
    assert space.fine_tune_blocks == (0,) and space.backbone_augment_strengths == (0.0,)
    assert space.augment_strengths == (0.0, 1.0, 2.0)  # the CNN's trials keep their augmentation
    assert reasons(chosen)["network"].startswith(
        "the configurable CNN or a frozen pretrained mobilenet_v3_small (ImageNet weights found) with a searched head"
    )
    assert chosen.spec.tune.first_trial == "plain_cnn"
    # Their features must fit a tenth of the search: a million images in a one-minute search do not.
    networks, why = auto._networks(64, 1_000_000, 60.0)
    assert networks == ("cnn",) and "would take more than 10% of the search's 1.0 minutes" in why


def test_gray_pictures_stored_as_rgb_stay_gray_and_large_images_shrink_with_the_budget() -> None:
    # The demo's 224 px chest X-rays are RGB JPEGs whose three channels are copies of one.
    short, long = auto.plan(DEMO, 2), auto.plan(DEMO, 60)
    assert short.spec.dataset.color == "gray" and "identical channels" in reasons(short)["color"]
    assert short.spec.dataset.image_size <= long.spec.dataset.image_size <= 224
    assert short.spec.dataset.image_size < 224
    assert "the images are 224 px" in reasons(short)["image_size"]


def test_images_larger_than_64_px_keep_64_px_while_one_full_trial_fits_there() -> None:
    # A 4-class MRI set of issue #11's size (5,712 training images, 512 px) with 12 minutes: four full trials fit
    # only at 32 px, one at the plain CNN's 64 px; detail is kept, and the reason says what it costs.
    search = 12 * 60 - auto.final_stage_seconds(12)
    size, why = auto._choose_size(512, 4855, 20, "gray", search)
    assert size == 64 and "fewer trials fit" in why and "about 5.1 minutes of the search's 11.0" in why
    # Where four full trials fit above 64 px, the larger size is taken as before.
    size, why = auto._choose_size(512, 300, 20, "gray", search)
    assert size > 64 and "leaving room for 4 or more trials" in why
    # Where not even one full trial fits at 64 px, the smallest size is taken and no room is claimed.
    size, why = auto._choose_size(512, 20000, 20, "gray", search)
    assert size == auto.SIZES[0] and "the smallest offered" in why and "room for" not in why


def test_the_training_share_planned_with_leaves_out_the_validation_carved_from_a_train_folder(tmp_path: Path) -> None:
    import shutil

    for split in ("train", "test"):  # no val/ folder: make_splits carves 15 % of train/ for validation
        shutil.copytree(BREASTMNIST / split, tmp_path / split)
    in_train = {c.name: len(list(c.glob("*.png"))) for c in (BREASTMNIST / "train").iterdir()}
    kept = sum(int(n * 0.85) for n in in_train.values())
    chosen = auto.plan(tmp_path, 5)
    assert reasons(chosen)["batch_size"].endswith(
        f"{kept:,} training images (small: smaller batches give more steps per epoch)"
    )


def test_colour_images_are_used_in_rgb(tmp_path: Path) -> None:
    import cv2

    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(6):
            cv2.imwrite(str(tmp_path / label / f"{i}.png"), rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    chosen = auto.plan(tmp_path, 5)
    assert (
        chosen.spec.dataset.color == "rgb" and reasons(chosen)["color"] == "rgb: 12 of 12 sampled images carry colour"
    )
    assert chosen.spec.dataset.image_size == 20


def graded_folders(root: Path, names: list[str]) -> Path:
    """Class folders called `names`, each holding a few real BreastMNIST images (only the names matter here)."""
    import shutil

    images = sorted((BREASTMNIST / "train" / "malignant").glob("*.png"))
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for image in images[3 * i : 3 * i + 3]:
            shutil.copy(image, root / name / image.name)
    return root


def test_numbered_grades_train_on_soft_ordinal_labels_and_other_classes_on_one_hot(tmp_path: Path) -> None:
    grades = ["0_no_dr", "1_mild_npdr", "2_moderate_npdr", "3_severe_npdr", "4_proliferative_dr"]
    chosen = auto.plan(graded_folders(tmp_path / "grades", grades), 5)
    assert chosen.spec.search.soft_labels == ("ordinal",)
    assert reasons(chosen)["soft_labels"].startswith("ordinal: the 5 class names are numbered 0_no_dr … 4_prolif")
    # The search's first trial is the plain CNN trained on the same targets.
    plain = hyperparameters.plain_cnn_trial(28, chosen.spec.search)
    assert plain == ModelParams.plain_cnn(28).replace(soft_labels="ordinal")
    assert (
        hyperparameters.params_from_values(
            hyperparameters.first_trial_values(plain, chosen.spec.search), chosen.spec.search
        )
        == plain
    )
    given = auto.plan(tmp_path / "grades", 5, soft_labels="none")
    assert given.spec.search.soft_labels == ("none",) and reasons(given)["soft_labels"] == "none: given"
    # Numbers that are not one run 0..K-1 or 1..K in index order (sorted names) do not give an order.
    for name, names in (
        ("words", ["glioma", "meningioma", "pituitary"]),
        ("gap", ["0_a", "1_b", "3_c"]),
        ("ten", [str(n) for n in range(1, 11)]),  # sorted as text, 10 comes before 2: index order is not grade order
        ("part", ["0_a", "1_b", "c"]),
    ):
        chosen = auto.plan(graded_folders(tmp_path / name, names), 5)
        assert chosen.spec.search.soft_labels == ("none",), name
        assert reasons(chosen)["soft_labels"].startswith("none (one-hot targets): the class names, sorted, are not")
    assert reasons(auto.plan(BREASTMNIST, 5))["soft_labels"] == "none (one-hot targets): two classes"
    given = reasons(auto.plan(tmp_path / "words", 5, soft_labels="ordinal"))["soft_labels"]
    assert given.startswith("ordinal: given (the class names, sorted, are not numbered grades")


def test_hand_set_targets_get_a_note_when_they_differ_from_the_automatic_choice() -> None:
    grades = ["0_no_dr", "1_mild_npdr", "2_moderate_npdr", "3_severe_npdr", "4_proliferative_dr"]
    note = auto.targets_note(grades, ["none"])
    assert note is not None and note.startswith("The class names are numbered grades (0_no_dr … 4_proliferative_dr)")
    assert auto.targets_note(grades, ["none", "ordinal"]) is None  # the search may try both
    assert auto.targets_note(grades, ("ordinal",)) is None
    words = ["glioma", "meningioma", "no_tumor", "pituitary", "other"]
    note = auto.targets_note(words, ["ordinal"])
    assert note is not None and "(glioma, meningioma, no_tumor, pituitary …)" in note
    assert auto.targets_note(words, ["none", "smoothing"]) is None
    # Two classes: ordinal targets are a mild smoothing there, not a wrong order; an unlistable dataset says nothing.
    assert auto.targets_note(["benign", "malignant"], ["ordinal"]) is None
    assert auto.targets_note([], ["none"]) is None


def test_a_budget_under_a_minute_is_refused(breastmnist_dir: Path) -> None:
    with pytest.raises(ConfigError, match="at least 1 minute"):
        auto.plan(breastmnist_dir, 0.5)
    # The shortest budget allowed reads as English ("1 minute", not "1 minutes").
    assert reasons(auto.plan(breastmnist_dir, 1))["budget"].startswith("1 minute: ")
    assert reasons(auto.plan(breastmnist_dir, 2))["budget"].startswith("2 minutes: ")


@pytest.mark.parametrize("size", [28, 64])
def test_the_plain_cnn_is_a_point_of_every_automatic_space(breastmnist_dir: Path, size: int) -> None:
    chosen = auto.plan(breastmnist_dir, 10, image_size=size)
    spec = chosen.spec
    blocks = {28: "32-64-128 conv blocks", 64: "32-64-128-128 conv blocks"}[size]  # a fourth block from 64 px
    why = reasons(chosen)["first_trial"]
    assert why.startswith(f"trial 1 is the plain Keras CNN ({blocks}, BatchNorm")
    values = hyperparameters.first_trial_values(ModelParams.plain_cnn(size), spec.search)
    assert hyperparameters.params_from_values(values, spec.search) == ModelParams.plain_cnn(size)
    fixed = hyperparameters.first_trials(spec.tune.first_trial, size, spec.search)
    assert fixed[0] == values
    if size < 64:  # the deeper second trial, a point of the same space
        assert len(fixed) == 2 and "trial 2 is the same with a fourth block (32-64-128-256)" in why
        deeper = hyperparameters.params_from_values(fixed[1], spec.search)
        assert deeper == ModelParams.plain_cnn(size).replace(filters=(32, 64, 128, 256))
    else:  # at 64 px and above the plain CNN already has four blocks, and no deeper one was measured
        assert len(fixed) == 1 and "trial 2" not in why and spec.search.filters_cap == 4
    with pytest.raises(ConfigError, match="not a point of the search space"):
        hyperparameters.first_trial_values(ModelParams.plain_cnn(size), SearchSpace.quick())


def tiny_member(seed: int) -> object:
    import keras

    from medimg.model import models

    keras.utils.set_random_seed(seed)
    return models.build_model(ModelParams(filters=(4, 8), dense_units=0, dropout=0.0), (16, 16, 1), 3)


def test_an_ensemble_loads_in_safe_mode_and_predicts_the_mean_of_its_members(tmp_path: Path) -> None:
    import keras

    from medimg.model import explain, models

    members = [tiny_member(0), tiny_member(1)]
    params = [ModelParams(filters=(4, 8), dense_units=0, dropout=0.0)] * 2
    ensemble = models.build_ensemble(members, params, (16, 16, 1), 3)
    keras.saving.save_model(ensemble, tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    images = np.random.default_rng(0).integers(0, 256, (7, 16, 16, 1)).astype(np.float32)
    expected = np.mean([np.asarray(m(images, training=False)) for m in members], axis=0)
    np.testing.assert_allclose(np.asarray(loaded(images, training=False)), expected, atol=1e-6)
    assert explain.last_conv_layer_name(loaded).startswith("m0_")
    heatmaps, probs = explain.gradcam_heatmaps(loaded, images[:2].astype(np.uint8), [0, 1])
    assert heatmaps.shape == (2, 16, 16) and heatmaps.max() <= 1.0
    np.testing.assert_allclose(probs, expected[:2], atol=1e-5)


def test_a_trial_that_calls_every_validation_image_one_class_scores_worst(breastmnist_dir: Path) -> None:
    from medimg.config import AugmentConfig, DatasetConfig, TrainConfig
    from medimg.model import search, training

    data = training.prepare_data(DatasetConfig(path=str(breastmnist_dir), image_size=16, color="gray"))
    space = SearchSpace(learning_rate_min=1e-6, learning_rate_max=1e-6, conv_blocks=(1,), filters_min=4, filters_max=4)
    reported: list[tuple[str, str]] = []
    hypermodel = search.MedimgHyperModel(
        space,
        data,
        AugmentConfig(),
        TrainConfig(epochs=1, early_stopping_patience=0, reduce_lr_patience=0),
        lambda trial_id: [],
        lambda trial_id, name: reported.append((trial_id, name)),
    )
    import keras_tuner as kt

    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    # A bias of +20 on the output unit: p(second class) ≈ 1 for every image, and 1e-6 steps cannot move it.
    output = model.get_layer("probabilities")
    kernel, bias = output.get_weights()
    output.set_weights([np.zeros_like(kernel), np.full_like(bias, 20.0)])
    hypermodel.trial_id = "007"
    result = hypermodel.fit(hp, model)
    assert result == {"val_auc": search.WORST_SCORE["max"]}
    assert reported == [("007", data.class_names[1])]
    labels = data.arrays["val"].labels
    # All-one-class calls on a split holding one class are right, not a collapse.
    assert search.one_class_called(model, data.arrays["val"].images[labels == 1], labels[labels == 1]) is None


@pytest.mark.slow
def test_auto_on_the_demo_keeps_starting_trials_until_the_budget_and_records_its_reasons(tmp_path: Path) -> None:
    # Label smoothing given: two classes train on soft targets through a sigmoid unit, trials and final model.
    result = medimg(
        "auto", str(DEMO), "--minutes", "1", "--image-size", "16", "--runs", str(tmp_path), "--seed", "1",
        "--soft-labels", "smoothing",
    )  # fmt: skip
    run = runs.Run(result.stdout.strip().splitlines()[-1])
    record = run.record
    assert record["status"] == "completed"
    assert {c["setting"] for c in record["auto"]["choices"]} >= {"color", "image_size", "epochs", "class_weights"}
    chosen = {c["setting"]: c["reason"] for c in record["auto"]["choices"]}
    assert chosen["image_size"] == "16 px: given" and chosen["soft_labels"] == "smoothing: given"
    begins = run.events("trial_begin")
    epochs = run.events("epoch")
    deadline = record["search_deadline"]
    # The budget, not a trial count, ends the search: trials start until the deadline, none after it, and the
    # last epoch ends within one epoch's time of it.
    assert len(begins) >= 2 and all(event["t"] < deadline for event in begins)
    longest_epoch = max(event["seconds"] for event in epochs)
    assert epochs[-1]["t"] <= deadline + longest_epoch + 1.0
    assert epochs[-1]["t"] >= deadline - longest_epoch - 1.0  # still training when the budget ran out
    # The trial the budget cut short (if it was mid-epoch then) says so in the table and in the CLI's line for it.
    from medimg.model import tuning

    cut = run.events("trial_cut_by_budget")
    assert len(cut) <= 1 and all(event["trial"] == begins[-1]["trial"] for event in cut)
    rows = {row["trial"]: row["status"] for row in tuning.trial_table(run)}
    for event in cut:
        status = rows[runs.trial_number(event["trial"])]
        assert status in ("CUT_BY_BUDGET", "COLLAPSED"), status
        if status == "CUT_BY_BUDGET":
            assert f"(cut by the time budget in epoch {event['epoch'] + 1} of " in result.stderr
    # Trial 0 is the plain CNN.
    first = next(event for event in begins if event["trial"] == "000")
    plain = hyperparameters.first_trial_values(
        ModelParams.plain_cnn(16).replace(soft_labels="smoothing"), run.spec.search
    )
    assert {k: first["hyperparameters"][k] for k in plain} == plain
    # Trial 1 is the plain CNN with a fourth block (16 px images: below 64 px).
    second = next(event for event in begins if event["trial"] == "001")
    deeper = hyperparameters.first_trial_values(
        ModelParams.plain_cnn(16).replace(soft_labels="smoothing", filters=(32, 64, 128, 256)), run.spec.search
    )
    assert {k: second["hyperparameters"][k] for k in deeper} == deeper
    assert "test (threshold 0.5 / arg-max)" in result.stderr
    evaluated = json.loads(medimg("evaluate", str(run.path), "--json").stdout)
    assert evaluated["count"] == 30 and evaluated["validation_operating_point"]["chosen_on"] == "val"


def test_the_images_suggest_their_own_size_up_to_64_px_and_their_channel_mode(breastmnist_dir: Path) -> None:
    from medimg.datasets import scanning

    sizes = (16, 28, 32, 48, 64, 96, 128)
    small = auto.suggest_input(scanning.scan(str(breastmnist_dir)), sizes)
    assert (small.image_size, small.color, small.native) == (28, "gray", 28)  # never upsampled
    demo = auto.suggest_input(scanning.scan(str(DEMO)), sizes)
    # 224 px gray pictures stored as RGB JPEGs: 64 px, gray, as the automatic mode chooses too.
    assert (demo.image_size, demo.color, demo.native) == (64, "gray", 224)
    assert demo.color_reason.startswith("gray: 0 of ")
    assert auto.suggest_input(scanning.scan(str(breastmnist_dir)), (16, 32, 64)).image_size == 16  # none above 28


def test_the_final_stage_reserve_grows_with_the_images_it_predicts() -> None:
    # A few hundred 28 px images cost the members well under a second; tens of thousands at 64 px most of a minute,
    # which a fixed reserve would leave to overrun the budget.
    small = auto.final_stage_seconds(10, 312, 28, "gray")
    assert auto.final_stage_seconds(10) < small < auto.final_stage_seconds(10) + 1
    large = auto.final_stage_seconds(10, 2 * 4500 + 4500, 64, "gray")
    assert large - auto.final_stage_seconds(10) == pytest.approx(
        auto.ENSEMBLE_CANDIDATES * 13500 * auto.SECONDS_PER_IMAGE_EPOCH_64 * auto.FORWARD_SHARE
    )
    assert auto.final_stage_seconds(2, 10**6, 224, "rgb") == 60  # never more than half the budget
