"""A run's model as a folder that leaves the app: ONNX, LiteRT (TFLite), SavedModel or .keras, each with the input
contract, a reference script, and a parity check against the Keras model run in the format's own runtime.

| format        | model file     | written by                             | checked in                 | quantize      |
|---------------|----------------|----------------------------------------|----------------------------|---------------|
| `onnx`        | `model.onnx`   | Keras `model.export("onnx")` (tf2onnx) | onnxruntime                | no            |
| `litert`      | `model.tflite` | Keras `model.export("litert")`         | ai_edge_litert Interpreter | float16, int8 |
| `saved_model` | `saved_model/` | Keras `model.export("tf_saved_model")` | `tf.saved_model.load`      | no            |
| `keras`       | `model.keras`  | the run's hash-checked file, copied    | `keras.saving.load_model`  | no            |

Every exported model takes N×H×W×C float32 pixel values 0..255 (the model rescales itself) and returns the Keras
model's output: N×1 sigmoid p(second class) for two classes, N×K softmax otherwise. Quantised LiteRT models keep
float32 inputs and outputs (weights float16; or weights and activations int8, calibrated on training images).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medimg import __version__
from medimg.datasets import novelty
from medimg.errors import ConfigError, MedimgError
from medimg.model.models import load_run_model
from medimg.store.runs import Run

FORMATS = ("onnx", "litert", "saved_model", "keras")
QUANTIZATIONS: dict[str, tuple[str | None, ...]] = {
    "onnx": (None,),
    "litert": (None, "float16", "int8"),
    "saved_model": (None,),
    "keras": (None,),
}
MODEL_FILES = {"onnx": "model.onnx", "litert": "model.tflite", "saved_model": "saved_model", "keras": "model.keras"}
RUNTIMES = {"onnx": "onnxruntime", "litert": "ai-edge-litert", "saved_model": "tensorflow", "keras": "keras"}
# Largest |p_export - p_keras| over the parity sample, in probability units. float32 formats differ only by the
# order of float operations; float16 weights move probabilities by ~1e-4..1e-3, int8 activations by ~1e-3..1e-2.
TOLERANCES: dict[str | None, float] = {None: 1e-4, "float16": 1e-2, "int8": 5e-2}
PARITY_SAMPLE = 32  # test images, evenly spaced over the split
REPRESENTATIVE_SAMPLE = 100  # training images that calibrate int8 ranges
EXPORT_VERSION = 1


class ExportError(MedimgError):
    """An export could not be written or loaded: a missing optional package, or a converter that failed."""


class ParityError(ExportError):
    """The exported model's probabilities differ from the Keras model's by more than the stated tolerance."""


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """One export folder and its parity figure (probability units, over `sample_size` test images)."""

    path: Path
    format: str
    quantize: str | None
    model_file: Path
    max_abs_diff: float
    tolerance: float
    sample_size: int
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "path": str(self.path), "model_file": str(self.model_file)}


def check_request(fmt: str, quantize: str | None) -> None:
    """Raise ConfigError unless `fmt` is a known format that accepts `quantize` (see QUANTIZATIONS)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if quantize not in QUANTIZATIONS[fmt]:
        accepted = [q for q in QUANTIZATIONS[fmt] if q]
        hint = f"it accepts {' or '.join(accepted)}" if accepted else "only litert accepts float16 or int8"
        raise ConfigError(f"format {fmt} cannot be quantised to {quantize!r}; {hint}. Leave quantize off otherwise.")


def folder_name(run: Run, fmt: str, quantize: str | None = None) -> str:
    return f"{run.id}-{fmt}" + (f"-{quantize}" if quantize else "")


def export_run(
    run: Run,
    fmt: str,
    out_dir: str | Path,
    quantize: str | None = None,
    *,
    threshold: float | None = None,
    positive: str | None = None,
    sample_size: int = PARITY_SAMPLE,
) -> ExportResult:
    """Write `out_dir/<run>-<fmt>[-<quantize>]/` (model, contract.json, export.json, predict_<fmt>.py, and the run's
    image_profile.json when it has one) and check it.

    Args:
        run: a run with a trained model.keras.
        fmt: one of FORMATS; quantize: None, or float16 / int8 for litert only.
        threshold, positive: the two-class decision rule written into contract.json; default: the run's own
            operating point (`predict.decision_threshold`).
        sample_size: test images (evenly spaced over the split) both models predict for the parity check.
    Returns:
        ExportResult with the folder and the largest absolute probability difference to the Keras model.
    Raises:
        ConfigError: unknown format or a quantisation the format does not take. RunError: no model or contract.
        ExportError: an optional package is missing or the converter failed. ParityError: difference > tolerance.
    """
    from medimg.datasets import prepared
    from medimg.results import bundle, predict

    check_request(fmt, quantize)
    model = load_run_model(run)
    default_positive, default_threshold = predict.decision_threshold(run.record)
    terms = bundle.contract(run, default_threshold if threshold is None else threshold, positive or default_positive)
    data = prepared.prepare_data(run.spec.dataset)
    sample = _evenly_spaced(data.arrays["test"].images, sample_size)
    final = Path(out_dir) / folder_name(run, fmt, quantize)
    staging = final.with_name(f".{final.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        representative = _evenly_spaced(data.arrays["train"].images, REPRESENTATIVE_SAMPLE)
        write_model(model, fmt, staging / MODEL_FILES[fmt], quantize, representative, source=run.model_path)
        difference = parity(model, runtime_predictor(fmt, staging), sample)
        tolerance = TOLERANCES[quantize]
        if not difference <= tolerance:
            raise ParityError(
                f"the {fmt}{f' ({quantize})' if quantize else ''} export of run {run.id} differs from the Keras "
                f"model by {difference:.3g} in probability on {len(sample)} test images, above the tolerance "
                f"{tolerance:g}; nothing was written. "
                + ("Try float16 or no quantisation." if quantize else "This is a converter bug; export keras.")
            )
        # model_sha256 names the file beside it (a SavedModel folder: its saved_model.pb); the Keras model it was
        # converted from keeps its own hash under source_model_sha256.
        exported = staging / MODEL_FILES[fmt]
        hashed = exported / "saved_model.pb" if exported.is_dir() else exported
        terms.update(
            model_file=MODEL_FILES[fmt],
            model_sha256=hashlib.sha256(hashed.read_bytes()).hexdigest(),
            source_model_sha256=run.record.get("model_sha256"),
            format=fmt,
            quantize=quantize,
            input_dtype="float32",
        )
        _write_text(staging / "contract.json", json.dumps(terms, indent=2))
        _write_text(staging / f"predict_{fmt}.py", reference_script(fmt))
        if (run.path / novelty.PROFILE_FILE).is_file():  # the script's "unlike the training images" notes
            shutil.copyfile(run.path / novelty.PROFILE_FILE, staging / novelty.PROFILE_FILE)
        metadata = _metadata(run, fmt, quantize, difference, tolerance, len(sample))
        _write_text(staging / "export.json", json.dumps(metadata, indent=2))
        _replace_folder(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(
        final,
        fmt,
        quantize,
        final / MODEL_FILES[fmt],
        difference,
        tolerance,
        len(sample),
        _size(final / MODEL_FILES[fmt]),
    )


def write_model(
    model: Any, fmt: str, path: Path, quantize: str | None, representative: np.ndarray, source: Path | None = None
) -> None:
    """Write the model file (or SavedModel folder) at `path` with Keras' own exporter or the format's converter.

    `representative`: N×H×W×C uint8 training images that calibrate int8. `source`: the .keras file to copy for
    format keras. Raises ExportError when the format's package is missing or its converter fails.
    """
    import tensorflow as tf

    # An explicit signature: Keras infers one only from a model that has been called, and this names the input.
    signature = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="image")]
    try:
        if fmt == "keras" and source:
            shutil.copyfile(source, path)
        elif fmt == "keras":
            model.save(path)
        elif fmt == "saved_model":
            model.export(str(path), format="tf_saved_model", verbose=False, input_signature=signature)
        elif fmt == "onnx":
            with warnings.catch_warnings():
                # tf2onnx's use of deprecated NumPy aliases (a FutureWarning per export): the converter's concern,
                # not the user's; the parity check below is what tells whether the export is right.
                warnings.simplefilter("ignore", FutureWarning)
                model.export(str(path), format="onnx", verbose=False, input_signature=signature)
        else:
            options = litert_options(quantize, representative)
            model.export(str(path), format="litert", verbose=False, input_signature=signature, **options)
    except ImportError as error:
        raise ExportError(f"{fmt} export needs {_missing(error)}; {INSTALL_HINT}") from error
    except (ValueError, RuntimeError, TypeError) as error:  # the converters' own failures, first line kept
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise ExportError(f"the {fmt} converter failed ({type(error).__name__}: {first}); export keras.") from error


INSTALL_HINT = "install the optional export packages with `pip install -r requirements-export.txt`."


def litert_options(quantize: str | None, representative: np.ndarray) -> dict[str, Any]:
    """TFLiteConverter settings for a quantisation, as `keras.Model.export(format="litert", **options)` takes them.

    float16: weights stored as float16. int8: weights and activations int8, ranges calibrated on `representative`
    (N×H×W×C uint8, one image per step); inputs and outputs stay float32 so the contract does not change.
    """
    import tensorflow as tf

    if quantize is None:
        return {}
    if quantize == "float16":
        return {"optimizations": [tf.lite.Optimize.DEFAULT], "target_spec": {"supported_types": [tf.float16]}}

    def dataset() -> Any:
        for image in representative:
            yield [np.asarray(image, np.float32)[np.newaxis]]

    return {"optimizations": [tf.lite.Optimize.DEFAULT], "representative_dataset": dataset}


def runtime_predictor(fmt: str, folder: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """A function N×H×W×C float32 (0..255) → the model's raw output (N×1 or N×K), run by the format's runtime on
    the export in `folder`. Raises ExportError when the runtime is not installed."""
    path = Path(folder) / MODEL_FILES[fmt]
    try:
        return _LOADERS[fmt](path)
    except ImportError as error:
        raise ExportError(f"loading a {fmt} export needs {_missing(error)}; {INSTALL_HINT}") from error


def _onnx(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: np.asarray(batch, np.float32)})[0]


def _litert(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    shape: list[tuple[int, ...]] = [()]

    def forward(batch: np.ndarray) -> np.ndarray:
        if shape[0] != batch.shape:  # the batch dimension is dynamic; tensors are re-allocated when it changes
            interpreter.resize_tensor_input(source["index"], batch.shape)
            interpreter.allocate_tensors()
            shape[0] = batch.shape
        interpreter.set_tensor(source["index"], np.asarray(batch, np.float32))
        interpreter.invoke()
        return interpreter.get_tensor(target["index"]).copy()

    return forward


def _saved_model(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    return lambda batch: loaded.serve(tf.constant(batch, tf.float32)).numpy()


def _keras(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import keras

    from medimg.model.auc import SparseAUC  # noqa: F401 - registers the metric class the file's config names

    model = keras.saving.load_model(path, compile=False, safe_mode=True)
    return lambda batch: np.asarray(model(np.asarray(batch, np.float32), training=False))


_LOADERS = {"onnx": _onnx, "litert": _litert, "saved_model": _saved_model, "keras": _keras}


def parity(model: Any, forward: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> float:
    """Largest absolute difference between the Keras model's class probabilities and `forward`'s on `images`
    (N×H×W×C uint8), both as N×K probabilities (`models.probabilities`); 0.0 for no images."""
    from medimg.model.models import probabilities

    if len(images) == 0:
        return 0.0
    batch = np.asarray(images, np.float32)
    expected = probabilities(model, batch)
    output = np.asarray(forward(batch), np.float32)
    actual = np.concatenate([1.0 - output, output], axis=-1) if output.shape[-1] == 1 else output
    return float(np.max(np.abs(actual - expected)))


def export_zip(result: ExportResult) -> bytes:
    """The export folder as a zip (paths inside start with the folder's name)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(result.path.rglob("*")):
            if path.is_file():
                archive.write(path, str(path.relative_to(result.path.parent)))
    return buffer.getvalue()


def _evenly_spaced(images: np.ndarray, count: int) -> np.ndarray:
    if len(images) <= count:
        return np.asarray(images)
    return np.asarray(images[np.linspace(0, len(images) - 1, count).round().astype(int)])


def _metadata(run: Run, fmt: str, quantize: str | None, difference: float, tolerance: float, count: int) -> dict:
    return {
        "export_version": EXPORT_VERSION,
        "run_id": run.id,
        "source_model_sha256": run.record.get("model_sha256"),
        "format": fmt,
        "quantize": quantize,
        "model_file": MODEL_FILES[fmt],
        "reference_script": f"predict_{fmt}.py",
        "parity": {
            "max_abs_diff": difference,
            "tolerance": tolerance,
            "images": count,
            "split": "test",
            "runtime": f"{RUNTIMES[fmt]} {_version(RUNTIMES[fmt])}",
        },
        "versions": {name: _version(name) for name in ("tensorflow", "keras", "tf2onnx", "onnxruntime")},
        "medimg_version": __version__,
        "created": time.time(),
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _missing(error: ImportError) -> str:
    return f"the {error.name} package" if getattr(error, "name", None) else "an optional package"


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _replace_folder(staging: Path, final: Path) -> None:
    """Move the checked export into place; an older export of the same name is replaced, anything else kept."""
    if final.exists():
        if not (final / "export.json").is_file():
            raise ExportError(f"{final} exists and is not a medimg export; choose another --out folder.")
        shutil.rmtree(final)
    os.replace(staging, final)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def reference_script(fmt: str) -> str:
    """The `predict_<fmt>.py` written next to an export: image files in, one JSON line of probabilities (or of why
    the file could not be read) per file out. Without medimg importable it exits with how to install it from the
    checkout that exported the model (pyproject.toml)."""
    source = Path(__file__).resolve().parent.parent
    loader = "\n".join(("    " + line) if line else "" for line in _SCRIPT_LOADERS[fmt].strip().splitlines())
    return _SCRIPT.format(fmt=fmt, runtime=RUNTIMES[fmt], loader=loader, source=source)


_SCRIPT = '''"""Predict images with the {fmt} model in this folder:  python predict_{fmt}.py IMAGE [IMAGE ...]

Needs {runtime} and medimg (for its preprocessing, medimg.imaging.images.load_image, the same code training used):
pip install {source}  (the medimg checkout this model was exported from).
Prints one JSON object per image, in the order given: the file, the probability of each class and the class called
by contract.json's decision rule, or the file and why it could not be read (the other images are still predicted;
the exit status is then 1). A "note" says why a prediction may not hold: the image is unlike the training images
(image_profile.json, the run's profile of them) or of the other colour mode, as the app's Predict page says.
"""

import json
import sys
from pathlib import Path

import numpy as np

try:
    from medimg.errors import MedimgError
    from medimg.datasets.novelty import PROFILE_FILE, ImageProfile, input_note
    from medimg.imaging.dicom import DicomWindow
    from medimg.imaging.images import load_image
    from medimg.model.runtime import start_tensorflow  # TensorFlow's start-up lines filtered out of stderr
except ImportError as error:
    sys.exit(
        f"predict_{fmt}.py needs medimg for its preprocessing ({{error}}). Install it from the checkout this model "
        "was exported from:  pip install {source}  (or run with that folder on PYTHONPATH)."
    )

if len(sys.argv) < 2:
    sys.exit("usage: python predict_{fmt}.py IMAGE [IMAGE ...]")
HERE = Path(__file__).resolve().parent
contract = json.loads((HERE / "contract.json").read_text(encoding="utf-8"))
window = DicomWindow(*contract["dicom_window"]) if contract["dicom_window"] else None
try:  # the notes need it; a missing or damaged profile only means no "unlike the training images" note
    profile = ImageProfile.from_dict(json.loads((HERE / PROFILE_FILE).read_text(encoding="utf-8")))
except (OSError, ValueError, MedimgError):
    profile = None
rows, images = [], []
for name in sys.argv[1:]:
    try:
        image = load_image(name, contract["image_size"], contract["color"], window=window)
        note = input_note(name, image, contract["color"], profile)
        images.append(image)
        rows.append({{"file": name, **({{"note": note}} if note else {{}})}})
    except (MedimgError, OSError) as error:  # one unreadable file never stops the others
        rows.append({{"file": name, "error": str(error)}})

if images:
{loader}

    # One image at a time (1 x H x W x C, values 0..255: the model rescales itself): every format takes that shape.
    outputs = iter([np.asarray(run_model(image[np.newaxis].astype(np.float32)), np.float32)[0] for image in images])
names = contract["class_names"]
for row in rows:
    if "error" not in row:
        output = next(outputs)
        probabilities = [1.0 - float(output[0]), float(output[0])] if output.shape[-1] == 1 else output.tolist()
        row["probabilities"] = dict(zip(names, probabilities))
        if "positive_class" in contract:  # two classes: the operating point in contract.json
            positive = contract["positive_class"]
            other = names[1 - names.index(positive)]
            row["called"] = positive if row["probabilities"][positive] >= contract["threshold"] else other
        else:
            row["called"] = names[int(np.argmax(probabilities))]
    print(json.dumps(row))
sys.exit(1 if any("error" in row for row in rows) else 0)
'''

_SCRIPT_LOADERS = {
    "onnx": """
import onnxruntime

session = onnxruntime.InferenceSession(str(HERE / "model.onnx"), providers=["CPUExecutionProvider"])


def run_model(batch):
    return session.run(None, {session.get_inputs()[0].name: batch})[0]
""",
    "litert": """
try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # older installs: the interpreter bundled with TensorFlow (deprecated there)
    start_tensorflow()
    import tensorflow as tf

    Interpreter = tf.lite.Interpreter

interpreter = Interpreter(model_path=str(HERE / "model.tflite"))


def run_model(batch):
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], batch.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], batch)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
""",
    "saved_model": """
start_tensorflow()
import tensorflow as tf

model = tf.saved_model.load(str(HERE / "saved_model"))


def run_model(batch):
    return model.serve(tf.constant(batch)).numpy()  # also served as signature "serving_default" (TF Serving)
""",
    "keras": """
start_tensorflow()
import keras

from medimg.model.auc import SparseAUC  # noqa: F401 - registers the metric class the file's config names

model = keras.saving.load_model(HERE / "model.keras", compile=False, safe_mode=True)


def run_model(batch):
    return model(batch, training=False)
""",
}
