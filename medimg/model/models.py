"""The configurable CNN (the seed tutorial's network is one point of its space, `ModelParams.seed_tutorial`) and the
pretrained-backbone model (`build_backbone_model`: a `keras.applications` network with a small head)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from medimg.config import ModelParams

if TYPE_CHECKING:
    import keras

    from medimg.store.runs import Run


OUTPUT_LAYER = "probabilities"  # the output Dense of every network built here (`network`, `backbone_head`)


def build_model(params: ModelParams, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """A compiled functional CNN: Rescaling → conv blocks → head → output right for the task.

    Two classes: one sigmoid unit with binary cross-entropy. More: softmax with sparse categorical cross-entropy.
    `params.backbone` other than "cnn": `build_backbone_model` instead.
    """
    import keras

    if params.backbone != "cnn":
        return build_backbone_model(params, input_shape, num_classes)
    inputs = keras.Input(shape=input_shape, name="image")
    model = keras.Model(inputs, network(params, inputs, num_classes), name="medimg_cnn")
    compile_model(model, params, num_classes)
    return model


def network(params: ModelParams, inputs: keras.KerasTensor, num_classes: int, prefix: str = "") -> keras.KerasTensor:
    """The CNN's layers applied to `inputs` (N×H×W×C, 0-255); returns the probability output. Every layer that
    holds weights is named `prefix` + a fixed name, so several networks can share one graph (an ensemble)."""
    import keras

    regularizer = keras.regularizers.L1L2(l1=params.l1, l2=params.l2) if (params.l1 or params.l2) else None
    x = keras.layers.Rescaling(1.0 / 255, name=f"{prefix}rescale")(inputs)
    for block, filters in enumerate(params.filters):
        for layer in range(params.conv_layers):
            # The first convolution of a block keeps the name it had before blocks could stack several, so saved
            # models and their Grad-CAM layer names read the same.
            suffix = f"{block}" if layer == 0 else f"{block}_{layer}"
            x = keras.layers.Conv2D(
                int(filters),
                params.kernel_size,
                padding="same",
                use_bias=not params.batch_norm,
                kernel_regularizer=regularizer,
                name=f"{prefix}conv{suffix}",
            )(x)
            if params.batch_norm:
                x = keras.layers.BatchNormalization(name=f"{prefix}bn{suffix}")(x)
            x = keras.layers.Activation(params.activation, name=f"{prefix}act{suffix}")(x)
        last = block == len(params.filters) - 1
        # Global average pooling follows the last block directly: a max pool before it only discards positions.
        if min(x.shape[1], x.shape[2]) >= 2 and not (last and params.head == "global_average"):
            x = keras.layers.MaxPooling2D(name=f"{prefix}pool{block}")(x)
    if params.head == "flatten":
        x = keras.layers.Flatten(name=f"{prefix}flatten")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name=f"{prefix}gap")(x)
    if params.dense_units:
        x = keras.layers.Dense(
            params.dense_units, activation=params.activation, kernel_regularizer=regularizer, name=f"{prefix}dense"
        )(x)
    if params.dropout:
        x = keras.layers.Dropout(params.dropout, name=f"{prefix}dropout")(x)
    binary = num_classes == 2
    return keras.layers.Dense(
        1 if binary else num_classes,
        activation="sigmoid" if binary else "softmax",
        dtype="float32",
        name=f"{prefix}{OUTPUT_LAYER}",
    )(x)


HEAD_START = "head_gap"  # the first layer after a backbone; `backbone_layers` reads the backbone up to it


def build_backbone_model(params: ModelParams, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """A compiled model: uint8-range input (H×W×1 or ×3, H and W at least 32 px) → gray to RGB → the backbone's own
    preprocessing → `keras.applications` backbone → global average pooling → dropout → optional dense → the same
    output and loss as `build_model`.

    With weights (ImageNet or a file) the backbone is frozen, its BatchNorm layers in inference mode (stage 1 of
    https://keras.io/guides/transfer_learning/ ; `training.fit_model` runs stage 2); with `weights="none"` the
    whole network is trainable (nothing to keep). Raises ConfigError for a too small input or missing weights
    (`backbones.resolve_weights`); never falls back to random weights.
    """
    import keras

    from medimg.model import backbones

    backbones.check_input_size(params.backbone, input_shape)
    weights_path, _ = backbones.resolve_weights(params.backbone, params.weights)
    inputs = keras.Input(shape=input_shape, name="image")
    features = backbones.build_backbone(params.backbone, inputs, weights_path)
    x = keras.layers.GlobalAveragePooling2D(name=HEAD_START)(features)
    outputs = backbone_head(params, x, num_classes)
    model = keras.Model(inputs, outputs, name=f"medimg_{params.backbone}")
    if weights_path is not None:
        backbones.set_trainable_blocks(params.backbone, backbone_layers(model), 0)
    compile_model(model, params, num_classes)
    return model


def backbone_head(params: ModelParams, features: keras.KerasTensor, num_classes: int) -> keras.KerasTensor:
    """The head of a backbone model applied to its pooled features (N×D): dropout → optional dense → the output
    layer. The layers' names are fixed ("head_dropout", "head_dense", "probabilities"), so a head built alone on
    cached features (`features.head_model`) carries its weights into the full model by name."""
    import keras

    regularizer = keras.regularizers.L1L2(l1=params.l1, l2=params.l2) if (params.l1 or params.l2) else None
    x = features
    if params.dropout:
        x = keras.layers.Dropout(params.dropout, name="head_dropout")(x)
    if params.dense_units:
        x = keras.layers.Dense(
            params.dense_units, activation=params.activation, kernel_regularizer=regularizer, name="head_dense"
        )(x)
    binary = num_classes == 2
    return keras.layers.Dense(
        1 if binary else num_classes,
        activation="sigmoid" if binary else "softmax",
        dtype="float32",
        name=OUTPUT_LAYER,
    )(x)


def backbone_layers(model: keras.Model) -> list:
    """The backbone's layers of a `build_backbone_model` model, in graph order (preprocessing and head excluded)."""
    from medimg.model import backbones

    return backbones.backbone_layers(model, HEAD_START)


ENSEMBLE_NAME = "medimg_ensemble"
MEMBER_PREFIX = "m{}_"


def build_ensemble(
    members: list[keras.Model], params: list[ModelParams], input_shape: tuple[int, int, int], num_classes: int
) -> keras.Model:
    """One flat, compiled model whose output is the mean of the members' probabilities (N × 1 or N × K).

    The members' layers are rebuilt in one graph (names prefixed m0_, m1_, …, m0_ the first member) with their
    trained weights copied, not nested as sub-models: the file loads with Keras' safe_mode (no Lambda, no custom
    layer) and Grad-CAM finds a convolution (the first member's, see `explain.last_conv_layer_name`).
    Raises ValueError when the lists differ in length, ConfigError when a member has a backbone.
    """
    import keras

    if len(members) != len(params) or not members:
        raise ValueError(f"{len(members)} members but {len(params)} parameter sets")
    if any(p.backbone != "cnn" for p in params):
        from medimg.errors import ConfigError

        raise ConfigError("an ensemble combines configurable CNNs only; a backbone model cannot be a member yet.")
    inputs = keras.Input(shape=input_shape, name="image")
    outputs = [network(p, inputs, num_classes, MEMBER_PREFIX.format(i)) for i, p in enumerate(params)]
    model = keras.Model(inputs, keras.layers.Average(name="mean_probabilities")(outputs), name=ENSEMBLE_NAME)
    for i, member in enumerate(members):
        prefix = MEMBER_PREFIX.format(i)
        for layer in member.layers:
            if layer.weights:
                model.get_layer(prefix + layer.name).set_weights(layer.get_weights())
    compile_model(model, params[0], num_classes)
    return model


def undo_class_weights(model: keras.Model, weights: dict[int, float] | None) -> bool:
    """Shift the output layer's bias so that a model trained with class weights w_k reports probabilities under
    the class frequencies of its training data again. Returns whether anything changed (False for no weights).

    A cross-entropy weighted by w_k is minimised by p_w(k | x) ∝ w_k · p(k | x), so p(k | x) ∝ p_w(k | x) / w_k:
    the correction of Saerens, Latinne & Decaestecker (2002, Neural Computation 14(1), "Adjusting the outputs of a
    classifier to new a priori probabilities"), applied to the logits as in Menon et al. (2021, ICLR, "Long-tail
    learning via logit adjustment"). Softmax output: b_k −= log w_k; one sigmoid unit (two classes):
    b −= log(w_1 / w_0). Exact for one-hot targets at the loss's minimum, approximate for soft targets. So class
    weights change what the network learns, not the meaning of its probabilities: members trained with and without
    weights can be averaged, and the arg-max (0.5 for two classes) is the most probable class again. Raises
    ValueError when the model has no output layer named `OUTPUT_LAYER`; returns False for equal weights, which
    change nothing the loss is minimised by."""
    if not weights or len(set(weights.values())) == 1:
        return False
    layer = next((layer for layer in model.layers if layer.name == OUTPUT_LAYER), None)
    if layer is None:
        raise ValueError(f"model {model.name!r} has no layer {OUTPUT_LAYER!r} to shift")
    kernel, bias = layer.get_weights()
    log_weights = np.log([weights[k] for k in sorted(weights)])
    shift = log_weights[1:] - log_weights[0] if bias.shape[0] == 1 else log_weights
    layer.set_weights([kernel, (bias - shift).astype(bias.dtype)])
    return True


def compile_model(model: keras.Model, params: ModelParams, num_classes: int, steps_per_execution: int = 1) -> None:
    """Compile `model` with `params`' optimizer and learning rate, the loss for `num_classes` and the accuracy and
    AUC metrics. `steps_per_execution`: batches per call of Keras' compiled train step (Keras' own option; more
    than one only where a step is so small that the per-call overhead dominates, e.g. a head on cached features).
    With `params.ema_momentum` the optimizer also keeps the weights' moving average (Keras' `use_ema`); a fit
    validates and returns that average only with `training.weight_averaging`'s callback in front. With
    `params.soft_labels` other than "none" the loss compares with soft targets (`losses.soft_targets`)."""
    import keras

    from medimg.model.auc import SparseAUC
    from medimg.model.losses import SoftTargetCrossentropy, soft_targets

    optimizers = {
        "adam": keras.optimizers.Adam,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
        "adamw": keras.optimizers.AdamW,
    }
    averaging = {"use_ema": True, "ema_momentum": params.ema_momentum} if params.ema_momentum else {}
    optimizer = optimizers[params.optimizer](learning_rate=params.learning_rate, **averaging)
    if num_classes == 2:
        loss = keras.losses.BinaryCrossentropy()
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy"), SparseAUC(num_classes, name="auc")]
    if params.soft_labels != "none":
        loss = SoftTargetCrossentropy(soft_targets(params.soft_labels, num_classes))
    # Keyword arguments only: Keras 3 changed compile()'s positional order.
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics, steps_per_execution=steps_per_execution)


def validation_model(model: keras.Model, record: dict) -> keras.Model:
    """The part of a run's saved model that validation can judge: `model` itself, or, when some members of a
    search's mean were retrained on train + val (run.json `ensemble.refit`), the mean of the members that were not
    (the first `validation_members`, as `build_ensemble` ordered them), sharing the loaded layers. Their validation
    predictions stand in for the whole model's when a temperature or an operating point is chosen, or the model's
    validation figures are reported.
    """
    import keras

    refit = (record.get("ensemble") or {}).get("refit") or {}
    searched = refit.get("validation_members")
    if not refit.get("members") or not searched:
        return model
    outputs = model.get_layer("mean_probabilities").input
    if searched >= len(outputs):
        return model
    mean = outputs[0] if searched == 1 else keras.layers.Average(name="searched_mean")(outputs[:searched])
    # One input tensor, not the list: the saved model is called with an array, and a list input makes Keras warn.
    return keras.Model(model.inputs[0], mean, name="searched_members")


def predict_arrays(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N × K) for uint8 images, in batches, calling the model directly."""
    if len(images) == 0:
        return np.zeros((0, 0))
    chunks = [
        probabilities(model, np.asarray(images[i : i + batch_size], dtype=np.float32))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks)


def probabilities(model: keras.Model, batch: np.ndarray) -> np.ndarray:
    """Class probabilities (N × num_classes) for a float/uint8 batch, calling the model directly (no predict())."""
    output = np.asarray(model(batch, training=False))
    if output.shape[-1] == 1:
        return np.concatenate([1.0 - output, output], axis=-1)
    return output


def load_run_model(run: Run) -> keras.Model:
    """Load a run's model: `.keras` from that run only, hash checked, Keras safe mode on.

    Raises RunError when the run has no model yet or model.keras no longer matches the SHA-256 recorded at saving.
    """
    from medimg.errors import RunError
    from medimg.store.runs import file_sha256

    if not run.model_path.is_file():
        raise RunError(f"run {run.id} has no model yet (status: {run.status}); train it first.")
    expected = run.record.get("model_sha256")
    if not expected or file_sha256(run.model_path) != expected:
        raise RunError(
            f"run {run.id}: model.keras does not match the hash recorded when it was saved; "
            "it was changed outside medimg and will not be loaded."
        )
    import keras

    from medimg.model.auc import SparseAUC  # noqa: F401 - registers the metric class the file's config names

    return keras.saving.load_model(run.model_path, compile=False, safe_mode=True)
