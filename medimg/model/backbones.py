"""Pretrained backbones from `keras.applications`: the registry, building one in the model's own graph, and finding
its ImageNet weights offline (explicit file, `$MEDIMG_WEIGHTS_DIR`, the Keras cache, a download only when allowed).

The fine-tuning recipe (frozen backbone with BatchNorm in inference mode, then the top blocks unfrozen at a low
learning rate, BatchNorm still frozen) is the Keras transfer-learning guide's:
https://keras.io/guides/transfer_learning/ . The weight files are the ones Keras itself downloads for
`include_top=False` (names and MD5 hashes copied from `keras/src/applications/*.py`), so a file in the Keras cache is
found under the name Keras gave it. This module imports no TensorFlow at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import logging
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medimg.config import BACKBONE_NAMES
from medimg.errors import ConfigError

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

MIN_SIZE = 32  # pixels: the smallest input every application accepts with include_top=False
DOWNLOADS_VARIABLE = "MEDIMG_ALLOW_DOWNLOADS"
WEIGHTS_DIR_VARIABLE = "MEDIMG_WEIGHTS_DIR"
# Layers medimg adds in front of an application; everything between them and the head is the backbone.
GRAY_TO_RGB = "gray_to_rgb"
PREPROCESS_PREFIX = "backbone_preprocess"
# ImageNet channel statistics of the 'torch' preprocessing mode (keras/src/applications/imagenet_utils.py).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One `keras.applications` network without its classifier.

    `constructor`: the name in `keras.applications`; `preprocessing`: "builtin" (the application rescales 0-255
    itself: MobileNetV3 with `include_preprocessing=True`, EfficientNet always), "minus_one_to_one" (x / 127.5 - 1)
    or "torch" (x / 255, then ImageNet mean and standard deviation); `file_name` / `md5` / `origin`: Keras' notop
    weight file; `block_pattern`: a regular expression whose first group names the block of a layer (layers that do
    not match belong to the block before them); `size`: the input side (pixels) the ImageNet weights were trained
    at; `paper`: where the network is from.
    """

    name: str
    constructor: str
    preprocessing: str
    file_name: str
    md5: str
    origin: str
    block_pattern: str
    size: int
    paper: str


_KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications/"
BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone(
            "mobilenet_v3_small",
            "MobileNetV3Small",
            "builtin",
            "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
            "d3e8ec802a04aa4fc771ee12a9a9b836",
            _KERAS_APPS + "mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
            r"^(expanded_conv(?:_\d+)?)_",
            224,
            "Howard et al., Searching for MobileNetV3, ICCV 2019, arXiv:1905.02244",
        ),
        Backbone(
            "efficientnet_b0",
            "EfficientNetB0",
            "builtin",
            "efficientnetb0_notop.h5",
            "50bc09e76180e00e4465e1a485ddc09d",
            "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
            r"^(block\d[a-z])_",
            224,
            "Tan & Le, EfficientNet: Rethinking Model Scaling for CNNs, ICML 2019, arXiv:1905.11946",
        ),
        Backbone(
            "densenet121",
            "DenseNet121",
            "torch",
            "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "30ee3e1110167f948a6b9946edeeb738",
            _KERAS_APPS + "densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
            r"^(conv\d_block\d+)_",
            224,
            "Huang et al., Densely Connected Convolutional Networks, CVPR 2017, arXiv:1608.06993",
        ),
        Backbone(
            "resnet50_v2",
            "ResNet50V2",
            "minus_one_to_one",
            "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "fac2f116257151a9d068a22e544a4917",
            _KERAS_APPS + "resnet/resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
            r"^(conv\d_block\d+)_",
            224,
            "He et al., Identity Mappings in Deep Residual Networks, ECCV 2016, arXiv:1603.05027",
        ),
    )
}
assert tuple(BACKBONES) == BACKBONE_NAMES, "config.BACKBONE_NAMES names every registry entry, in order"


def get_backbone(name: str) -> Backbone:
    """The registry entry for `name`. Raises ConfigError for an unknown name."""
    if name not in BACKBONES:
        raise ConfigError(f"backbone '{name}' is not known; choose from {list(BACKBONES)}.")
    return BACKBONES[name]


def check_input_size(name: str, input_shape: tuple[int, ...]) -> None:
    """Raise ConfigError when an H×W×C input is below `MIN_SIZE` pixels on a side (a build-time check)."""
    backbone = get_backbone(name)
    if min(input_shape[0], input_shape[1]) < MIN_SIZE:
        raise ConfigError(
            f"backbone '{name}' needs images of at least {MIN_SIZE} px, got {input_shape[0]}×{input_shape[1]}; "
            f"set the image size to {MIN_SIZE} or more (its ImageNet weights were trained at {backbone.size} px, "
            f"so {backbone.size} suits it best)."
        )


# ---------------------------------------------------------------------------------------------------------- building
def build_backbone(name: str, inputs: keras.KerasTensor, weights_path: str | Path | None) -> keras.KerasTensor:
    """The application's feature maps (N×h×w×F) for `inputs` (N×H×W×1 or ×3, values 0-255), built in the caller's
    graph: `input_tensor=` makes its layers the caller's layers (no nested Model), so Grad-CAM finds its last
    convolution. Gray becomes three channels by concatenation (no Lambda layer: safe loading refuses Lambda); the
    preprocessing is made of Keras layers inside the model. `weights_path`: a Keras notop `.h5` file, or None for
    random initial weights. Raises ConfigError for an unknown name, a too small input or a file that does not fit.
    """
    import keras

    backbone = get_backbone(name)
    check_input_size(name, tuple(inputs.shape[1:]))
    x = inputs
    if inputs.shape[-1] == 1:
        x = keras.layers.Concatenate(name=GRAY_TO_RGB)([x, x, x])
    x = _preprocess(backbone, x)
    constructor = getattr(keras.applications, backbone.constructor)
    # MobileNetV3 makes its Rescaling optional; EfficientNet (Keras 3) always includes its Rescaling + Normalization.
    options = {"include_preprocessing": True} if backbone.constructor.startswith("MobileNetV3") else {}
    application = constructor(include_top=False, weights=None, input_tensor=x, **options)
    if weights_path is not None:
        try:
            application.load_weights(str(weights_path))
        except (ValueError, OSError, KeyError) as error:
            raise ConfigError(
                f"weights file {weights_path} does not fit backbone '{name}' (expected Keras' "
                f"{backbone.file_name}): {error}"
            ) from error
    return application.output


def _preprocess(backbone: Backbone, x: keras.KerasTensor) -> keras.KerasTensor:
    """0-255 RGB → the value range the application's weights expect (as weightless Keras layers)."""
    import keras

    if backbone.preprocessing == "minus_one_to_one":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name=f"{PREPROCESS_PREFIX}_scale")(x)
    if backbone.preprocessing == "torch":
        x = keras.layers.Rescaling(1 / 255, name=f"{PREPROCESS_PREFIX}_scale")(x)
        variance = [s * s for s in IMAGENET_STD]
        return keras.layers.Normalization(mean=IMAGENET_MEAN, variance=variance, name=f"{PREPROCESS_PREFIX}_norm")(x)
    return x  # "builtin": the application's own Rescaling (and Normalization) layers


def backbone_layers(model: keras.Model, head_start: str) -> list:
    """The layers of a backbone model between medimg's input/preprocessing layers and the layer `head_start`
    (the head's first layer), in graph order."""
    import keras

    layers = []
    for layer in model.layers:
        if layer.name == head_start:
            return layers
        if isinstance(layer, keras.layers.InputLayer) or layer.name == GRAY_TO_RGB:
            continue
        if not layer.name.startswith(PREPROCESS_PREFIX):
            layers.append(layer)
    raise ValueError(f"model {model.name} has no layer {head_start}")


def block_names(name: str, layers: list) -> list[str | None]:
    """Each layer's block per the registry's `block_pattern` (None for the stem before the first block); layers
    whose name does not match (pooling, transitions, the final BatchNorm and activation) join the block before."""
    pattern = re.compile(get_backbone(name).block_pattern)
    current: str | None = None
    blocks = []
    for layer in layers:
        match = pattern.match(layer.name)
        if match:
            current = match.group(1)
        blocks.append(current)
    return blocks


def set_trainable_blocks(name: str, layers: list, count: int) -> list[str]:
    """Freeze the backbone `layers`, then unfreeze the top `count` blocks except BatchNormalization (kept in
    inference mode, as the Keras guide advises). `count` above the number of blocks unfreezes the stem too.
    Returns the unfrozen blocks' names, top first."""
    import keras

    blocks = block_names(name, layers)
    order = list(dict.fromkeys(blocks))  # first-appearance order, None (the stem) first
    chosen = set(order[-count:]) if count > 0 else set()
    for layer, block in zip(layers, blocks, strict=True):
        layer.trainable = block in chosen and not isinstance(layer, keras.layers.BatchNormalization)
    return [str(b) if b is not None else "stem" for b in reversed(order) if b in chosen]


# ----------------------------------------------------------------------------------------------------------- weights
def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights: `$KERAS_HOME/models`, else `~/.keras/models` (read on every call)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def file_hashes(path: str | Path) -> tuple[str, str]:
    """(SHA-256, MD5) hex digests of a file, read once in 1 MiB pieces and remembered by (path, size, mtime): a
    run resolves its weights when it starts, and again for every model a search builds (ResNet50V2's file is
    ~95 MB)."""
    status = os.stat(path)
    return _file_hashes(os.path.realpath(path), status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _file_hashes(path: str, size: int, mtime_ns: int) -> tuple[str, str]:
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as stream:
        for piece in iter(lambda: stream.read(1 << 20), b""):
            sha256.update(piece)
            md5.update(piece)
    return sha256.hexdigest(), md5.hexdigest()


def resolve_weights(name: str, weights: str) -> tuple[Path | None, str | None]:
    """The weight file of backbone `name` and its SHA-256, or (None, None) for `weights="none"`.

    `weights`: "imagenet", "none" or a file path. For "imagenet" the lookup order is `$MEDIMG_WEIGHTS_DIR/<file>`,
    the Keras cache (`keras_cache_dir()`), and only when `MEDIMG_ALLOW_DOWNLOADS=1` a download with Keras'
    `get_file` (checked against Keras' MD5). A found file whose MD5 is not Keras' is used (it may be a deliberate
    conversion) with a logged warning; its SHA-256 is returned for the run record. Raises ConfigError (one message:
    the file, its hash and the two ways to get it) when nothing is found; never falls back to random weights.
    """
    backbone = get_backbone(name)
    if weights == "none":
        return None, None
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"weights file {path} for backbone '{name}' does not exist.")
        return path, file_hashes(path)[0]
    for path in _candidates(backbone):
        if path.is_file():
            return path, _checked_sha256(backbone, path)
    if os.environ.get(DOWNLOADS_VARIABLE) == "1":
        path = Path(fetch_weights(name))
        return path, file_hashes(path)[0]
    raise ConfigError(missing_weights_message(backbone))


def _candidates(backbone: Backbone) -> list[Path]:
    folders = [Path(os.environ[WEIGHTS_DIR_VARIABLE]).expanduser()] if os.environ.get(WEIGHTS_DIR_VARIABLE) else []
    return [folder / backbone.file_name for folder in [*folders, keras_cache_dir()]]


def _checked_sha256(backbone: Backbone, path: Path) -> str:
    sha256, md5 = file_hashes(path)
    if md5 != backbone.md5:
        log.warning("%s has MD5 %s, not Keras' %s; using it as found", path, md5, backbone.md5)
    return sha256


def missing_weights_message(backbone: Backbone) -> str:
    """The one message for missing ImageNet weights: what, where looked, and the two ways to get the file."""
    looked = ", ".join(str(p.parent) for p in _candidates(backbone))
    return (
        f"ImageNet weights for backbone '{backbone.name}' not found: no file {backbone.file_name} "
        f"(MD5 {backbone.md5}) in {looked}, and downloads are off ({DOWNLOADS_VARIABLE} is not 1). "
        f"On a connected machine run `python -m medimg weights fetch {backbone.name}`; on an air-gapped one copy "
        f"the file over and run `python -m medimg weights import FILE`. Or choose weights 'none' to train from "
        "random weights."
    )


def fetch_weights(name: str) -> Path:
    """Download backbone `name`'s notop weights into the Keras cache with `keras.utils.get_file`, checked against
    Keras' MD5 (needs a network connection). Returns the file's path. Raises ConfigError when the download fails
    or the hash differs."""
    import keras

    backbone = get_backbone(name)
    cache = keras_cache_dir()
    try:
        path = keras.utils.get_file(
            backbone.file_name,
            backbone.origin,
            cache_subdir=cache.name,
            cache_dir=str(cache.parent),
            file_hash=backbone.md5,
        )
    except Exception as error:  # urllib, socket and hash errors alike: the user's next step is the same
        raise ConfigError(
            f"could not download {backbone.file_name} from {backbone.origin}: {error}. On an air-gapped machine, copy "
            "the file over and run `python -m medimg weights import FILE`."
        ) from error
    return Path(path)


def import_weights(file: str | Path, force: bool = False) -> Path:
    """Copy a weight file into `$MEDIMG_WEIGHTS_DIR` (else the Keras cache) under the name lookup expects.

    The file is recognised by its MD5 (Keras' published hash, whatever the file is called) or else by its file name.
    A known name with an unknown hash is refused unless `force` (then it is copied with a logged warning): a file
    carried into an air-gapped network should be the one Keras publishes. Returns the destination path.
    Raises ConfigError for a missing file, an unknown file, or a hash mismatch without `force`.
    """
    source = Path(file).expanduser()
    if not source.is_file():
        raise ConfigError(f"weights file {source} does not exist.")
    md5 = file_hashes(source)[1]
    backbone = next((b for b in BACKBONES.values() if b.md5 == md5), None)
    if backbone is None:
        backbone = next((b for b in BACKBONES.values() if b.file_name == source.name), None)
        if backbone is None:
            names = ", ".join(b.file_name for b in BACKBONES.values())
            raise ConfigError(f"{source} is not a known backbone weight file (MD5 {md5}); expected one of {names}.")
        if not force:
            raise ConfigError(
                f"{source} has MD5 {md5}, not Keras' {backbone.md5} for {backbone.file_name}; the file may be "
                "damaged or a different version. Fetch it again, or import it anyway with --force."
            )
        log.warning("importing %s with MD5 %s instead of Keras' %s", source, md5, backbone.md5)
    folder = os.environ.get(WEIGHTS_DIR_VARIABLE)
    destination = (Path(folder).expanduser() if folder else keras_cache_dir()) / backbone.file_name
    destination.parent.mkdir(parents=True, exist_ok=True)
    if source.resolve() != destination.resolve():
        temporary = destination.with_name(f".{destination.name}.partial")
        shutil.copyfile(source, temporary)
        os.replace(temporary, destination)
    return destination


def weights_status() -> list[dict[str, Any]]:
    """One row per backbone: name, Keras file name, MD5, and the path where lookup finds it (or "")."""
    rows = []
    for backbone in BACKBONES.values():
        found = next((p for p in _candidates(backbone) if p.is_file()), None)
        rows.append(
            {"backbone": backbone.name, "file": backbone.file_name, "md5": backbone.md5, "found": str(found or "")}
        )
    return rows


def weights_command(argv: list[str]) -> int:
    """`python -m medimg weights fetch NAME | import FILE [--force] | list`. Returns the exit status (0 ok, 1 a
    MedimgError, whose message is printed)."""
    parser = argparse.ArgumentParser(prog="python -m medimg weights", description="Backbone weight files.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="download a backbone's ImageNet weights (needs a network)").add_argument(
        "name", choices=BACKBONE_NAMES
    )
    importer = commands.add_parser("import", help="copy a weight file into the weights folder")
    importer.add_argument("file")
    importer.add_argument("--force", action="store_true", help="accept a file whose hash is not Keras'")
    commands.add_parser("list", help="which weight files are present")
    arguments = parser.parse_args(argv)
    try:
        if arguments.command == "fetch":
            print(fetch_weights(arguments.name))
        elif arguments.command == "import":
            print(import_weights(arguments.file, force=arguments.force))
        else:
            for row in weights_status():
                print(
                    f"{row['backbone']:<20} {row['found'] or 'missing: ' + row['file'] + ' (MD5 ' + row['md5'] + ')'}"
                )
    except ConfigError as error:
        print(f"error: {error}")
        return 1
    return 0


def weights_record(name: str, weights: str) -> dict[str, str] | None:
    """What run.json and the model card say about a backbone's starting weights: {"backbone", "weights", "file",
    "sha256"}; None for the CNN and for random weights. Resolved when a run starts, so a missing file stops it
    before any work with `resolve_weights`' message (ConfigError)."""
    if name == "cnn" or weights == "none":
        return None
    path, sha256 = resolve_weights(name, weights)
    return {"backbone": name, "weights": weights, "file": str(path), "sha256": str(sha256)}


def check_spec_weights(spec: Any) -> None:
    """Find every starting-weights file a run spec needs (its params' backbone, or every backbone its search may
    draw) before a run folder is made, so a missing file is the one message and not a failed run. Raises ConfigError
    as `resolve_weights`."""
    if spec.kind == "tune":
        for name in spec.search.backbones:
            weights_record(name, spec.search.weights)
    else:
        weights_record(spec.params.backbone, spec.params.weights)
