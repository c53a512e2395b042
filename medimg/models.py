"""The configurable CNN. The seed tutorial's network is one point of its space (`ModelParams.seed_tutorial`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from medimg.config import ModelParams

if TYPE_CHECKING:
    import keras


def _register_metrics() -> type:
    import keras

    @keras.saving.register_keras_serializable(package="medimg")
    class SparseAUC(keras.metrics.AUC):
        """ROC AUC (macro over classes) for integer labels and softmax outputs."""

        def __init__(self, num_classes: int = 2, **kwargs) -> None:
            kwargs.setdefault("multi_label", True)
            kwargs.setdefault("num_labels", num_classes)
            super().__init__(**kwargs)
            self.num_classes = num_classes

        def update_state(self, y_true, y_pred, sample_weight=None):
            y_true = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), self.num_classes)
            return super().update_state(y_true, y_pred, sample_weight)

        def get_config(self) -> dict:
            config = super().get_config()
            config.pop("num_labels", None)
            config.pop("multi_label", None)
            return {**config, "num_classes": self.num_classes}

    return SparseAUC


_SPARSE_AUC: type | None = None


def sparse_auc(num_classes: int) -> keras.metrics.Metric:
    global _SPARSE_AUC
    if _SPARSE_AUC is None:
        _SPARSE_AUC = _register_metrics()
    return _SPARSE_AUC(num_classes=num_classes, name="auc")


def build_model(params: ModelParams, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """A compiled functional CNN: Rescaling → conv blocks → head → output right for the task.

    Two classes: one sigmoid unit with binary cross-entropy. More: softmax with sparse categorical cross-entropy.
    """
    import keras

    regularizer = keras.regularizers.L1L2(l1=params.l1, l2=params.l2) if (params.l1 or params.l2) else None
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for block, filters in enumerate(params.filters):
        x = keras.layers.Conv2D(
            int(filters),
            params.kernel_size,
            padding="same",
            use_bias=not params.batch_norm,
            kernel_regularizer=regularizer,
            name=f"conv{block}",
        )(x)
        if params.batch_norm:
            x = keras.layers.BatchNormalization(name=f"bn{block}")(x)
        x = keras.layers.Activation(params.activation, name=f"act{block}")(x)
        if min(x.shape[1], x.shape[2]) >= 2:
            x = keras.layers.MaxPooling2D(name=f"pool{block}")(x)
    x = keras.layers.Flatten()(x) if params.head == "flatten" else keras.layers.GlobalAveragePooling2D()(x)
    if params.dense_units:
        x = keras.layers.Dense(
            params.dense_units, activation=params.activation, kernel_regularizer=regularizer, name="dense"
        )(x)
    if params.dropout:
        x = keras.layers.Dropout(params.dropout)(x)
    binary = num_classes == 2
    outputs = keras.layers.Dense(
        1 if binary else num_classes,
        activation="sigmoid" if binary else "softmax",
        dtype="float32",
        name="probabilities",
    )(x)
    model = keras.Model(inputs, outputs, name="medimg_cnn")
    compile_model(model, params, num_classes)
    return model


def compile_model(model: keras.Model, params: ModelParams, num_classes: int) -> None:
    import keras

    optimizers = {
        "adam": keras.optimizers.Adam,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
        "adamw": keras.optimizers.AdamW,
    }
    optimizer = optimizers[params.optimizer](learning_rate=params.learning_rate)
    if num_classes == 2:
        loss = keras.losses.BinaryCrossentropy()
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy"), sparse_auc(num_classes)]
    # Keyword arguments only: Keras 3 changed compile()'s positional order.
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)


def probabilities(model: keras.Model, batch: np.ndarray) -> np.ndarray:
    """Class probabilities (N × num_classes) for a float/uint8 batch, calling the model directly (no predict())."""
    output = np.asarray(model(batch, training=False))
    if output.shape[-1] == 1:
        return np.concatenate([1.0 - output, output], axis=-1)
    return output
