"""Soft training targets (`ModelParams.soft_labels`) and `SoftTargetCrossentropy`, the cross-entropy against them
for integer labels, registered under the package name "medimg" as `auc.SparseAUC` is. Importing this module
registers it and imports Keras."""

from __future__ import annotations

import keras
import numpy as np

# Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer Vision" (arXiv:1512.00567), sec. 7: ε = 0.1.
LABEL_SMOOTHING = 0.1
# α of the squared grade distance in the ordinal targets: bench/levers.py measured α = 2 against 4 on RetinaMNIST
# (bench/README.md, "Levers"); at 2 a neighbouring grade gets e^-2 ≈ 0.14 of the true grade's weight.
ORDINAL_SCALE = 2.0


def soft_targets(kind: str, num_classes: int, scale: float = ORDINAL_SCALE) -> np.ndarray:
    """The K×K float32 matrix whose row t is the training target for an image of class t (rows sum to 1).

    "none": the identity (one-hot). "smoothing": (1 − ε)·one-hot + ε/K with ε = `LABEL_SMOOTHING`.
    "ordinal": soft ordinal labels (SORD; Díaz & Marathe 2019, "Soft Labels for Ordinal Regression", CVPR, eq. 2):
    row t ∝ exp(−α·(t − i)²) over classes i, α = `scale` (default `ORDINAL_SCALE`), the class index order taken as
    the grade order.
    Raises ValueError for another `kind` or fewer than two classes."""
    if num_classes < 2:
        raise ValueError(f"soft targets need at least two classes, not {num_classes}.")
    eye = np.eye(num_classes, dtype=np.float32)
    if kind == "none":
        return eye
    if kind == "smoothing":
        return (1 - LABEL_SMOOTHING) * eye + LABEL_SMOOTHING / num_classes
    if kind == "ordinal":
        grades = np.arange(num_classes, dtype=np.float64)
        weights = np.exp(-scale * (grades[:, None] - grades[None, :]) ** 2)
        return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
    raise ValueError(f"soft labels '{kind}' must be none, smoothing or ordinal.")


@keras.saving.register_keras_serializable(package="medimg")
class SoftTargetCrossentropy(keras.losses.Loss):
    """Cross-entropy between predictions and the soft target row of each integer label (N,): categorical for
    softmax outputs (N×K), binary for one sigmoid unit (N×1), whose target is column 1 of the row (the positive
    class's share). `targets`: a K×K matrix from `soft_targets`."""

    def __init__(self, targets, name: str = "soft_target_crossentropy", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.targets = np.asarray(targets, dtype=np.float32)

    def call(self, y_true, y_pred):
        index = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        if y_pred.shape[-1] == 1:
            positive = keras.ops.take(keras.ops.convert_to_tensor(self.targets[:, 1]), index)
            return keras.losses.binary_crossentropy(keras.ops.expand_dims(positive, -1), y_pred)
        rows = keras.ops.take(keras.ops.convert_to_tensor(self.targets), index, axis=0)
        return keras.losses.categorical_crossentropy(rows, y_pred)

    def get_config(self) -> dict:
        return {**super().get_config(), "targets": self.targets.tolist()}
