"""`SparseAUC`: Keras' ROC AUC for integer labels and softmax outputs, registered under the package name "medimg"
so a saved model naming it in its compile configuration loads (https://keras.io/api/models/model_saving_apis/
serialization_utils/#registerkerasserializable-function). Importing this module registers it and imports Keras."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="medimg")
class SparseAUC(keras.metrics.AUC):
    """ROC AUC (macro over `num_classes` one-vs-rest labels) from integer labels (N,) and probabilities (N×K);
    Keras' `AUC` approximates it with 200 thresholds (`num_thresholds`)."""

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
