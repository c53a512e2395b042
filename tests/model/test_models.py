"""The configurable CNN: output and loss right for the task, Rescaling inside, options honoured, .keras round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medimg.config import ModelParams
from medimg.model import models

SMALL = ModelParams(filters=(4, 8), dense_units=8, batch_size=4)


@pytest.fixture(scope="module")
def keras():
    import keras

    keras.utils.set_random_seed(0)
    return keras


def layer_types(model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


def test_binary_is_one_sigmoid_unit_with_binary_cross_entropy(keras) -> None:
    model = models.build_model(SMALL, (16, 16, 1), 2)
    output = model.get_layer("probabilities")
    assert output.units == 1 and output.activation.__name__ == "sigmoid"
    assert tuple(model.outputs[0].shape) == (None, 1)
    assert isinstance(model.loss, keras.losses.BinaryCrossentropy)


def test_three_classes_are_softmax_with_sparse_categorical_cross_entropy(keras) -> None:
    model = models.build_model(SMALL, (16, 16, 3), 3)
    output = model.get_layer("probabilities")
    assert output.units == 3 and output.activation.__name__ == "softmax"
    assert isinstance(model.loss, keras.losses.SparseCategoricalCrossentropy)
    probs = models.probabilities(model, np.random.default_rng(0).uniform(0, 255, (5, 16, 16, 3)).astype("float32"))
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_rescaling_is_the_first_layer_after_the_input(keras) -> None:
    model = models.build_model(SMALL, (16, 16, 1), 2)
    rescale = model.get_layer("rescale")
    assert layer_types(model)[:2] == ["InputLayer", "Rescaling"]
    assert rescale.scale == pytest.approx(1 / 255)
    np.testing.assert_allclose(np.asarray(rescale(np.full((1, 16, 16, 1), 255.0, "float32"))), 1.0, rtol=1e-6)
    assert model.get_layer("conv0").input is rescale.output  # the convolutions see 0..1 values


def test_seed_tutorial_network_builds(keras) -> None:
    model = models.build_model(ModelParams.seed_tutorial(), (32, 32, 1), 2)
    types = layer_types(model)
    assert "BatchNormalization" not in types
    assert "Flatten" in types and "GlobalAveragePooling2D" not in types
    assert [model.get_layer(f"conv{i}").filters for i in range(2)] == [32, 64]
    assert all(model.get_layer(f"conv{i}").use_bias for i in range(2))
    assert "dense" not in [layer.name for layer in model.layers]
    # 32 → 16 → 8 after two pools; flatten gives 8 × 8 × 64 features into the one output unit.
    assert model.get_layer("probabilities").kernel.shape == (8 * 8 * 64, 1)


def test_options_are_honoured(keras) -> None:
    params = ModelParams(
        filters=(4, 4, 8),
        kernel_size=5,
        activation="tanh",
        batch_norm=True,
        dropout=0.5,
        dense_units=16,
        l1=1e-5,
        l2=1e-4,
        optimizer="sgd",
        learning_rate=0.02,
    )
    model = models.build_model(params, (16, 16, 1), 4)
    types = layer_types(model)
    assert types.count("BatchNormalization") == 3 and types.count("Dropout") == 1
    conv = model.get_layer("conv1")
    assert conv.kernel_size == (5, 5) and not conv.use_bias  # batch norm supplies the bias
    assert conv.kernel_regularizer is not None
    assert model.get_layer("act0").activation.__name__ == "tanh"
    assert model.get_layer("dense").units == 16
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.02)
    model(np.zeros((1, 16, 16, 1), "float32"))
    assert len(model.losses) == 4  # an L1L2 penalty per conv block (3) and one for the dense layer


def test_stacked_convolutions_per_block(keras) -> None:
    model = models.build_model(ModelParams(filters=(4, 8), conv_layers=2, dense_units=0), (16, 16, 1), 2)
    convs = [layer.name for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert convs == ["conv0", "conv0_1", "conv1", "conv1_1"]  # the first of each block keeps its old name
    assert layer_types(model).count("MaxPooling2D") == 1  # pooling between blocks, not between stacked convs
    assert model.get_layer("conv0_1").input.shape[-1] == 4 and model.get_layer("conv1_1").filters == 8
    single = models.build_model(ModelParams(filters=(4, 8), dense_units=0), (16, 16, 1), 2)
    assert model.count_params() - single.count_params() == (3 * 3 * 4 * 4 + 2 * 4) + (3 * 3 * 8 * 8 + 2 * 8) + (
        2 * 4 + 2 * 8  # and the BatchNorm moving statistics
    )


def test_no_regulariser_when_l1_and_l2_are_zero(keras) -> None:
    model = models.build_model(SMALL.replace(l2=0.0), (16, 16, 1), 2)
    assert model.get_layer("conv0").kernel_regularizer is None


def test_pooling_stops_when_the_map_is_one_pixel(keras) -> None:
    model = models.build_model(ModelParams(filters=(2,) * 6, dense_units=0), (16, 16, 1), 2)
    pools = [layer for layer in model.layers if type(layer).__name__ == "MaxPooling2D"]
    assert len(pools) == 4  # 16 → 8 → 4 → 2 → 1, then no more pooling
    assert tuple(model.get_layer("act5").output.shape) == (None, 1, 1, 2)


def test_binary_probabilities_are_two_columns(keras) -> None:
    model = models.build_model(SMALL, (16, 16, 1), 2)
    batch = np.random.default_rng(1).uniform(0, 255, (4, 16, 16, 1)).astype("float32")
    raw = np.asarray(model(batch, training=False))
    probs = models.probabilities(model, batch)
    assert probs.shape == (4, 2)
    np.testing.assert_allclose(probs[:, 1], raw[:, 0], rtol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_sparse_auc_matches_scikit_learn_macro_one_vs_rest(keras) -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1, 2], 40)
    logits = rng.normal(size=(120, 3)) + np.eye(3)[labels] * 1.2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    from medimg.model.auc import SparseAUC

    metric = SparseAUC(3, name="auc")
    metric.update_state(labels, probs.astype("float32"))
    expected = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert float(metric.result()) == pytest.approx(expected, abs=0.01)  # Keras uses 200 thresholds


@pytest.mark.parametrize("num_classes", [2, 3])
def test_fit_one_epoch_reports_loss_accuracy_and_auc(keras, num_classes: int) -> None:
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 255, (16, 16, 16, 1)).astype("float32")
    y = np.arange(16) % num_classes
    y = y.reshape(-1, 1).astype("float32") if num_classes == 2 else y.astype("int32")
    model = models.build_model(SMALL, (16, 16, 1), num_classes)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert set(history.history) >= {"loss", "accuracy", "auc"}
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("num_classes", [2, 3])
def test_model_saves_and_loads_as_keras_file(keras, tmp_path: Path, num_classes: int) -> None:
    model = models.build_model(SMALL, (16, 16, 1), num_classes)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    batch = np.random.default_rng(4).uniform(0, 255, (3, 16, 16, 1)).astype("float32")
    np.testing.assert_allclose(models.probabilities(loaded, batch), models.probabilities(model, batch), rtol=1e-5)
    assert loaded.get_layer("rescale").scale == pytest.approx(1 / 255)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_undoing_class_weights_divides_the_probabilities_by_the_weights(keras, num_classes: int) -> None:
    model = models.build_model(SMALL, (16, 16, 1), num_classes)
    output = model.get_layer(models.OUTPUT_LAYER)
    kernel, bias = output.get_weights()
    output.set_weights([kernel, np.linspace(-0.5, 0.5, bias.shape[0]).astype(bias.dtype)])
    batch = np.random.default_rng(2).uniform(0, 255, (6, 16, 16, 1)).astype("float32")
    before = models.probabilities(model, batch)
    weights = {0: 0.7, 1: 2.6, 2: 1.3} if num_classes == 3 else {0: 0.68, 1: 1.86}
    assert models.undo_class_weights(model, weights)
    expected = before / np.array([weights[k] for k in range(num_classes)])
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(models.probabilities(model, batch), expected, rtol=1e-4)
    assert not models.undo_class_weights(model, None)  # trained without weights: nothing to undo
    assert not models.undo_class_weights(model, dict.fromkeys(range(num_classes), 0.9))  # equal: nothing either
    np.testing.assert_allclose(models.probabilities(model, batch), expected, rtol=1e-4)


def test_undoing_class_weights_needs_the_output_layer(keras) -> None:
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="scores")(inputs))
    with pytest.raises(ValueError, match="no layer 'probabilities'"):
        models.undo_class_weights(model, {0: 1.0, 1: 2.0})
