"""Pretrained backbones: built flat in the model's graph at 32 px, trained one epoch on demo images, safe-loaded,
explained; weights found offline through each lookup step with their SHA-256; the missing-weights message; no
download unless allowed; two-stage fine-tuning unfreezes exactly the top blocks with BatchNorm frozen.

Everything runs eagerly (`tf.config.run_functions_eagerly`): tracing a 427-layer DenseNet into a graph costs over a
minute on two cores, while the layers, losses and callbacks exercised are the same."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest

from medimg.config import AugmentConfig, DatasetConfig, ModelParams, TrainConfig
from medimg.errors import ConfigError
from medimg.model import backbones, callbacks, explain, hyperparameters, models, training
from tests.conftest import DEMO

NAMES = list(backbones.BACKBONE_NAMES)
SIZE = 32


pytestmark = pytest.mark.usefixtures("eager_functions")


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No weights folder, an empty Keras home, downloads off, and any network connection or `get_file` fails."""
    import keras

    monkeypatch.delenv(backbones.WEIGHTS_DIR_VARIABLE, raising=False)
    monkeypatch.delenv(backbones.DOWNLOADS_VARIABLE, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))

    def no_download(*args, **kwargs):
        pytest.fail(f"a download was attempted: get_file{args}")

    def no_network(*args, **kwargs):
        pytest.fail(f"a network connection was attempted: {args}")

    monkeypatch.setattr(keras.utils, "get_file", no_download)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    return tmp_path


@pytest.fixture(scope="module")
def demo() -> dict[str, training.PreparedData]:
    """The demo at 32 px, gray and RGB, cut to 16 training and 8 validation images."""
    prepared = {}
    for color in ("gray", "rgb"):
        data = training.prepare_data(DatasetConfig(path=str(DEMO), image_size=SIZE, color=color))
        arrays = dict(data.arrays)
        for split, count in (("train", 16), ("val", 8)):
            order = np.argsort(np.arange(len(arrays[split])) % 2, kind="stable")[:count]  # both classes
            whole = arrays[split]
            arrays[split] = dataclasses.replace(whole, images=whole.images[order], labels=whole.labels[order])
        prepared[color] = dataclasses.replace(data, arrays=arrays)
    return prepared


def save_notop_weights(name: str, path: Path) -> Path:
    """A notop application's weights in Keras' own (legacy H5) weight-file format, under the given path."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(1)
    application = getattr(keras.applications, backbones.get_backbone(name).constructor)(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as stream:
        legacy_h5_format.save_weights_to_hdf5_group(stream, application)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------------- configuration
def test_model_params_with_a_backbone_round_trip_to_json() -> None:
    params = ModelParams(backbone="densenet121", weights="none", fine_tune_blocks=3, fine_tune_learning_rate=2e-5)
    assert ModelParams.from_json(params.to_json()) == params
    assert ModelParams().backbone == "cnn" and ModelParams().fine_tune_blocks == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"backbone": "vgg16"}, "backbone 'vgg16' must be 'cnn' or one of"),
        ({"backbone": "resnet50_v2", "weights": ""}, "weights must be 'imagenet', 'none' or the path"),
        ({"weights": "/tmp/w.h5"}, "needs a backbone"),
        ({"backbone": "resnet50_v2", "fine_tune_blocks": -1}, "fine_tune_blocks -1 must be"),
        ({"backbone": "resnet50_v2", "fine_tune_learning_rate": 0.0}, "fine_tune_learning_rate 0.0 must be"),
    ],
)
def test_backbone_settings_are_validated(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelParams(**changes)


def test_too_small_an_input_is_refused_with_the_suited_size() -> None:
    with pytest.raises(ConfigError, match=r"at least 32 px, got 28×28.*224 px"):
        models.build_model(ModelParams(backbone="efficientnet_b0", weights="none"), (28, 28, 1), 2)


# ------------------------------------------------------------------------------------------ build, train, save, explain
@pytest.mark.parametrize("name", NAMES)
def test_every_backbone_builds_flat_trains_loads_safely_and_explains(
    name: str, demo: dict[str, training.PreparedData], tmp_path: Path
) -> None:
    import keras

    params = ModelParams(backbone=name, weights="none", dense_units=8, batch_size=8)
    rgb = models.build_model(params, (SIZE, SIZE, 3), 2)
    assert "gray_to_rgb" not in [layer.name for layer in rgb.layers]
    color = "gray" if NAMES.index(name) % 2 == 0 else "rgb"  # train each colour on two of the four backbones
    data = demo[color]
    model, history = training.fit_model(params, data, AugmentConfig(), TrainConfig(epochs=1), [])
    assert len(history.epoch) == 1 and np.isfinite(history.history["loss"][0])
    types = {type(layer).__name__ for layer in model.layers}
    assert "Functional" not in types and "Lambda" not in types  # one flat graph, nothing safe_mode refuses
    assert ("gray_to_rgb" in [layer.name for layer in model.layers]) == (color == "gray")

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    images = data.arrays["val"].images[:4]
    np.testing.assert_allclose(models.probabilities(loaded, images), models.probabilities(model, images), atol=1e-5)

    layer = explain.last_conv_layer_name(loaded)
    assert layer in {layer.name for layer in models.backbone_layers(loaded)}
    heatmaps, probs = explain.gradcam_heatmaps(loaded, images)
    assert heatmaps.shape == (4, SIZE, SIZE) and probs.shape == (4, 2)
    assert np.all((heatmaps >= 0) & (heatmaps <= 1))


def test_the_plain_cnn_is_unchanged() -> None:
    model = models.build_model(ModelParams(filters=(4, 8)), (16, 16, 1), 2)
    assert model.name == "medimg_cnn" and model.layers[1].name == "rescale"


# -------------------------------------------------------------------------------------------------------- weights
def test_weights_are_found_through_each_lookup_step(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "mobilenet_v3_small"
    file_name = backbones.get_backbone(name).file_name
    explicit = save_notop_weights(name, offline / "anywhere" / "my.h5")
    digest = sha256(explicit)
    assert backbones.resolve_weights(name, str(explicit)) == (explicit, digest)

    cached = offline / "keras_home" / "models" / file_name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(explicit.read_bytes())
    assert backbones.resolve_weights(name, "imagenet") == (cached, digest)

    folder = offline / "weights"
    monkeypatch.setenv(backbones.WEIGHTS_DIR_VARIABLE, str(folder))
    save_notop_weights(name, folder / file_name)  # same seed, same weights, but a file of its own
    assert backbones.resolve_weights(name, "imagenet") == (folder / file_name, sha256(folder / file_name))
    assert backbones.resolve_weights(name, "none") == (None, None)


@pytest.mark.parametrize("name", NAMES)
def test_a_weights_file_loads_into_the_backbone_which_is_frozen(name: str, offline: Path) -> None:
    path = save_notop_weights(name, offline / backbones.get_backbone(name).file_name)
    model = models.build_model(ModelParams(backbone=name, weights=str(path)), (SIZE, SIZE, 1), 2)
    layers = models.backbone_layers(model)
    assert not any(layer.trainable for layer in layers)
    assert [w.name for w in model.trainable_weights] == ["kernel", "bias", "kernel", "bias"]  # dense + output
    import h5py

    conv = next(layer for layer in layers if type(layer).__name__ == "Conv2D")
    with h5py.File(path) as stream:
        first_conv = stream[stream.attrs["layer_names"][_first_conv_index(stream)]]
        kernel = np.asarray(first_conv[first_conv.attrs["weight_names"][0]])
    np.testing.assert_array_equal(np.asarray(conv.kernel), kernel)


def _first_conv_index(stream) -> int:
    for index, layer_name in enumerate(stream.attrs["layer_names"]):
        group = stream[layer_name]
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
        if names and len(group[names[0]].shape) == 4 and "depthwise" not in names[0]:
            return index
    raise AssertionError("no convolution in the file")


def test_missing_weights_is_one_clear_message_and_no_download() -> None:
    backbone = backbones.get_backbone("densenet121")
    with pytest.raises(ConfigError) as raised:
        models.build_model(ModelParams(backbone="densenet121"), (SIZE, SIZE, 3), 2)
    message = str(raised.value)
    assert backbone.file_name in message and backbone.md5 in message
    assert "python -m medimg weights fetch densenet121" in message
    assert "python -m medimg weights import FILE" in message


def test_a_download_only_when_allowed(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    calls = []

    def fake_get_file(fname, origin, **kwargs):
        calls.append((fname, origin, kwargs))
        return str(save_notop_weights("mobilenet_v3_small", Path(kwargs["cache_dir"]) / "models" / fname))

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    with pytest.raises(ConfigError):
        backbones.resolve_weights("mobilenet_v3_small", "imagenet")
    assert calls == []
    monkeypatch.setenv(backbones.DOWNLOADS_VARIABLE, "1")
    path, digest = backbones.resolve_weights("mobilenet_v3_small", "imagenet")
    backbone = backbones.get_backbone("mobilenet_v3_small")
    assert calls[0][0] == backbone.file_name and calls[0][2]["file_hash"] == backbone.md5
    assert path == offline / "keras_home" / "models" / backbone.file_name and digest == sha256(path)


def test_import_checks_the_file_and_the_command_reports(
    offline: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    backbone = backbones.get_backbone("mobilenet_v3_small")
    carried = save_notop_weights(backbone.name, offline / "usb" / backbone.file_name)
    with pytest.raises(ConfigError, match=f"not Keras' {backbone.md5}.*--force"):
        backbones.import_weights(carried)
    unknown = offline / "usb" / "something.h5"
    unknown.write_bytes(b"not weights")
    with pytest.raises(ConfigError, match="not a known backbone weight file"):
        backbones.import_weights(unknown)

    monkeypatch.setenv(backbones.WEIGHTS_DIR_VARIABLE, str(offline / "weights"))
    assert backbones.weights_command(["import", str(unknown)]) == 1
    assert backbones.weights_command(["import", str(carried), "--force"]) == 0
    assert backbones.resolve_weights(backbone.name, "imagenet")[0] == offline / "weights" / backbone.file_name
    assert backbones.weights_command(["list"]) == 0
    shown = capsys.readouterr().out
    assert "not a known backbone weight file" in shown
    assert str(offline / "weights" / backbone.file_name) in shown and "missing: efficientnetb0_notop.h5" in shown


# -------------------------------------------------------------------------------------------------- fine-tuning
def test_blocks_follow_the_layer_names() -> None:
    import keras

    model = models.build_model(ModelParams(backbone="resnet50_v2", weights="none"), (SIZE, SIZE, 3), 2)
    layers = models.backbone_layers(model)
    assert backbones.set_trainable_blocks("resnet50_v2", layers, 2) == ["conv5_block3", "conv5_block2"]
    trainable = {layer.name for layer in layers if layer.trainable}
    assert "conv5_block2_1_conv" in trainable and "conv5_block1_1_conv" not in trainable
    assert "post_bn" not in trainable and "conv5_block3_1_bn" not in trainable  # BatchNorm stays frozen
    assert all(not layer.trainable for layer in layers if isinstance(layer, keras.layers.BatchNormalization))


def test_stage_two_unfreezes_exactly_the_top_blocks(offline: Path, demo: dict[str, training.PreparedData]) -> None:
    import keras

    name = "mobilenet_v3_small"
    path = save_notop_weights(name, offline / "weights.h5")
    params = ModelParams(backbone=name, weights=str(path), fine_tune_blocks=2, batch_size=8, dense_units=0)
    epochs_seen = []

    class Epochs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            epochs_seen.append(epoch)

    from medimg.config import RunSpec
    from medimg.store import runs

    run = runs.create_run(RunSpec(kind="train", dataset=DatasetConfig(path=str(DEMO))), offline / "runs")
    progress = callbacks.ProgressEvents(run)
    backup = callbacks.AtomicBackupAndRestore(offline / "backup")  # each stage keeps its own checkpoint
    config = TrainConfig(epochs=3)
    model, history = training.fit_model(params, demo["gray"], AugmentConfig(), config, [progress, Epochs(), backup])
    assert epochs_seen == [0, 1, 2] and history.epoch == [0, 1, 2]  # stage 1: epoch 0; stage 2: 1 and 2
    events = run.events("epoch")
    assert [(e["epoch"], e["stage"], e["epochs"]) for e in events] == [(0, 1, 3), (1, 2, 3), (2, 2, 3)]
    assert run.stage_starts() == [2]  # the charts' "fine-tuning" line: before epoch 2 of 1..3
    assert (offline / "backup" / "stage2" / "latest.weights.h5").is_file()
    assert len(history.history["loss"]) == 3
    layers = models.backbone_layers(model)
    blocks = backbones.block_names(name, layers)
    trainable = {layer.name for layer in layers if layer.trainable}
    expected = {
        layer.name
        for layer, block in zip(layers, blocks, strict=True)
        if block in ("expanded_conv_9", "expanded_conv_10") and not isinstance(layer, keras.layers.BatchNormalization)
    }
    assert trainable == expected and "conv_1" in expected and "expanded_conv_8_project" not in trainable
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(1e-5)


# ------------------------------------------------------------------------------------------ runs, search, CLI
def test_a_train_run_records_its_starting_weights_and_the_model_card_names_them(offline: Path) -> None:
    from medimg import jobs
    from medimg.config import RunSpec, TrainConfig
    from medimg.results import report
    from medimg.store import runs

    weights = save_notop_weights("mobilenet_v3_small", offline / "my-weights.h5")
    spec = RunSpec(
        kind="train",
        dataset=DatasetConfig(path=str(DEMO), image_size=SIZE, color="gray"),
        params=ModelParams(backbone="mobilenet_v3_small", weights=str(weights), dense_units=0, batch_size=16),
        train=TrainConfig(epochs=1, early_stopping_patience=0, reduce_lr_patience=0),
    )
    run = runs.create_run(spec, offline / "runs")
    jobs.execute(run)
    assert run.status == "completed"
    assert run.record["weights"] == [
        {"backbone": "mobilenet_v3_small", "weights": str(weights), "file": str(weights), "sha256": sha256(weights)}
    ]
    card = report.write_report(run, offline / "report.html").read_text(encoding="utf-8")
    assert f"Backbone mobilenet_v3_small started from {weights} weights: my-weights.h5, SHA-256 {sha256(weights)}" in (
        card
    )


def test_missing_imagenet_weights_stop_a_search_before_any_trial(offline: Path) -> None:
    from medimg import jobs
    from medimg.config import RunSpec, SearchSpace, TrainConfig, TuneConfig
    from medimg.store import runs

    spec = RunSpec(
        kind="tune",
        dataset=DatasetConfig(path=str(DEMO), image_size=SIZE),
        search=SearchSpace.quick().replace(backbones=("cnn", "efficientnet_b0")),
        tune=TuneConfig(max_trials=2),
        train=TrainConfig(epochs=1),
    )
    run = runs.create_run(spec, offline / "runs")
    with pytest.raises(ConfigError, match=r"no file efficientnetb0_notop\.h5 \(MD5 50bc09e76180e00e4465e1a485ddc09d\)"):
        jobs.execute(run)
    assert run.events("trial_begin") == []


def test_a_search_space_with_backbones_draws_them_and_a_cnn_only_space_declares_none() -> None:
    import keras_tuner as kt

    from medimg.config import SearchSpace

    space = SearchSpace.quick().replace(backbones=("cnn", "mobilenet_v3_small"), fine_tune_blocks=(0, 2))
    hp = kt.HyperParameters()
    hyperparameters.params_from_hp(hp, space)
    assert {p.name for p in hp.space} >= {"backbone"}
    drawn = hyperparameters.params_from_values({"backbone": "mobilenet_v3_small", "fine_tune_blocks": 2}, space)
    assert (drawn.backbone, drawn.weights, drawn.fine_tune_blocks) == ("mobilenet_v3_small", "imagenet", 2)
    assert hyperparameters.params_from_values({"backbone": "cnn"}, space).backbone == "cnn"
    cnn_only = kt.HyperParameters()
    hyperparameters.params_from_hp(cnn_only, SearchSpace.quick())
    assert not {"backbone", "fine_tune_blocks"} & {p.name for p in cnn_only.space}
    backbone_only = SearchSpace.quick().replace(backbones=("mobilenet_v3_small",), fine_tune_blocks=(0, 2))
    assert space.size_estimate() == SearchSpace.quick().size_estimate() + backbone_only.size_estimate()


def test_the_cli_sets_backbones_for_train_and_tune_and_lists_weights(offline: Path, capsys) -> None:
    from medimg import cli

    parser = cli.build_parser()
    train = cli.build_spec(
        parser.parse_args(["train", "--backbone", "densenet121", "--weights", "none", "--fine-tune-blocks", "1"]),
        "train",
    )
    assert (train.params.backbone, train.params.weights, train.params.fine_tune_blocks) == ("densenet121", "none", 1)
    tune = cli.build_spec(
        parser.parse_args(["tune", "--backbone", "cnn,resnet50_v2", "--fine-tune-blocks", "0,2"]), "tune"
    )
    assert tune.search.backbones == ("cnn", "resnet50_v2") and tune.search.fine_tune_blocks == (0, 2)
    assert cli.main(["weights", "list"]) == 0
    listed = capsys.readouterr().out
    assert "resnet50_v2" in listed and "missing: resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5" in listed


def test_missing_weights_are_a_message_before_any_run_folder(offline: Path, capsys) -> None:
    from medimg import cli, jobs
    from medimg.config import RunSpec

    runs_folder = offline / "runs"
    assert cli.main(["train", "--runs", str(runs_folder), "--image-size", "32", "--backbone", "efficientnet_b0"]) == 2
    assert "no file efficientnetb0_notop.h5 (MD5 50bc09e76180e00e4465e1a485ddc09d)" in capsys.readouterr().err
    spec = RunSpec(kind="train", params=ModelParams(backbone="densenet121"))
    with pytest.raises(ConfigError, match=r"densenet121_weights_tf_dim_ordering_tf_kernels_notop\.h5"):
        jobs.launch(spec, runs_folder)  # what the Train page's Start calls
    assert not runs_folder.exists() or not any(runs_folder.iterdir())
