"""Soft training targets: label smoothing equal to Keras' own, soft ordinal labels by their formula, the loss
against them saved and loaded in safe mode, and a model compiled with them when its parameters ask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medimg.config import ModelParams
from medimg.model import losses, models


def test_label_smoothing_is_keras_own_for_softmax_and_sigmoid_outputs() -> None:
    import keras

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 32)
    probs = rng.dirichlet(np.ones(4), 32).astype(np.float32)
    ours = losses.SoftTargetCrossentropy(losses.soft_targets("smoothing", 4))(labels, probs)
    keras_own = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(np.eye(4)[labels], probs)
    assert float(ours) == pytest.approx(float(keras_own), rel=1e-5)
    binary, positive = rng.integers(0, 2, 32), rng.uniform(0.01, 0.99, (32, 1)).astype(np.float32)
    ours = losses.SoftTargetCrossentropy(losses.soft_targets("smoothing", 2))(binary, positive)
    keras_own = keras.losses.BinaryCrossentropy(label_smoothing=0.1)(binary[:, None].astype(np.float32), positive)
    assert float(ours) == pytest.approx(float(keras_own), rel=1e-5)
    one_hot = losses.SoftTargetCrossentropy(losses.soft_targets("none", 4))(labels, probs)
    assert float(one_hot) == pytest.approx(float(keras.losses.SparseCategoricalCrossentropy()(labels, probs)), rel=1e-5)


def test_ordinal_targets_fall_with_the_squared_grade_distance() -> None:
    targets = losses.soft_targets("ordinal", 5)
    assert targets.shape == (5, 5) and np.allclose(targets.sum(axis=1), 1)
    weights = np.exp(-2.0 * np.array([0, 1, 4, 9, 16]))  # exp(−α·d²), α = 2, for grade 0 against grades 0..4
    assert np.allclose(targets[0], weights / weights.sum(), atol=1e-7)
    assert np.allclose(targets, targets[::-1, ::-1])  # the same spread from either end of the scale
    assert targets[2, 1] == pytest.approx(targets[2, 3]) and targets[2, 1] > targets[2, 0] > 0
    assert targets.argmax(axis=1).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="none, smoothing or ordinal"):
        losses.soft_targets("graded", 5)
    with pytest.raises(ValueError, match="at least two classes"):
        losses.soft_targets("ordinal", 1)


def test_a_model_trained_on_ordinal_targets_saves_its_loss_and_loads_in_safe_mode(tmp_path: Path) -> None:
    import keras

    params = ModelParams(filters=(4,), dense_units=0, dropout=0.0, soft_labels="ordinal")
    model = models.build_model(params, (8, 8, 1), 5)
    assert isinstance(model.loss, losses.SoftTargetCrossentropy)
    assert np.array_equal(model.loss.targets, losses.soft_targets("ordinal", 5))
    rng = np.random.default_rng(1)
    model.fit(rng.integers(0, 256, (20, 8, 8, 1)).astype(np.float32), rng.integers(0, 5, 20), epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert np.array_equal(loaded.loss.targets, model.loss.targets)
    plain = models.build_model(params.replace(soft_labels="none"), (8, 8, 1), 5)
    assert isinstance(plain.loss, keras.losses.SparseCategoricalCrossentropy)
