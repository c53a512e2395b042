"""OnFullModel: KerasTuner's best-epoch checkpoint of a head trained on cached features holds the full model with
the best epoch's head, written once at the end of training."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def test_the_deferred_checkpoint_is_the_full_model_at_the_best_epoch(tmp_path: Path) -> None:
    import keras
    import keras_tuner as kt
    from keras_tuner.src.engine.tuner_utils import SaveBestEpoch

    from medimg.model.callbacks import OnFullModel

    image = keras.Input((4,))
    frozen = keras.layers.Dense(3, name="backbone", trainable=False)(image)
    dense = keras.layers.Dense(1, name="head")
    full = keras.Model(image, dense(frozen))
    features = keras.Input((3,))
    head = keras.Model(features, dense(features))  # shares the head layer with the full model

    path = tmp_path / "checkpoint.weights.h5"
    saves: list[str] = []
    original = full.save_weights
    full.save_weights = lambda *args, **kwargs: saves.append("full") or original(*args, **kwargs)
    callback = OnFullModel(SaveBestEpoch(kt.Objective("val_loss", "min"), str(path)), full)
    callback.set_model(head)
    callback.on_train_begin()
    heads = []
    for epoch, loss in enumerate([0.9, 0.5, 0.7, 0.6]):  # epoch 1 is the best
        head.get_layer("head").set_weights([np.full((3, 1), float(epoch)), np.array([float(epoch)])])
        heads.append(head.get_weights())
        callback.on_epoch_end(epoch, {"val_loss": loss})
    assert saves == [] and not path.exists()  # nothing written per epoch
    callback.on_train_end()
    assert saves == ["full"]
    fresh = keras.models.clone_model(full)
    fresh.load_weights(path)
    np.testing.assert_array_equal(fresh.get_layer("head").get_weights()[0], heads[1][0])  # the best epoch's head
    np.testing.assert_array_equal(
        fresh.get_layer("backbone").get_weights()[0], full.get_layer("backbone").get_weights()[0]
    )
    np.testing.assert_array_equal(head.get_weights()[0], heads[3][0])  # training's last state is left as it was
