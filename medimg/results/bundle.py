"""The run's model together with its preprocessing and decision contract, as one zip for use outside medimg."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

from medimg import __version__
from medimg.errors import RunError
from medimg.metrics import clinical
from medimg.results.report import NOT_FOR_CLINICAL_USE
from medimg.store.runs import Run


def contract(
    run: Run,
    threshold: float = 0.5,
    positive: str | int | None = None,
    preset: str | None = None,
    target: float = 0.95,
) -> dict[str, Any]:
    """The preprocessing and decision contract that goes with model.keras: what goes in, what comes out.

    `preset`: the preset rule that chose `threshold`, when known (see `evaluation.threshold_origin`); `target`: the
    sensitivity / specificity target (fraction) its target presets were chosen at."""
    record = run.record
    if "class_names" not in record:
        raise RunError(f"run {run.id} has no input contract yet; it has not trained a model.")
    terms = run.input_contract.to_json()
    names = list(record["class_names"])
    binary = len(names) == 2
    metrics = run.read_json("metrics.json") or {}
    result = {
        "run_id": run.id,
        "model_file": "model.keras",
        "model_sha256": record.get("model_sha256"),
        **terms,
        "class_names": names,
        "input": (
            "float32 pixel values 0..255 (an 8-bit image's values, cast), shape (batch, image_size, image_size, "
            "channels); the model rescales to "
            "[0, 1] itself. Images are converted to the channel mode (gray: OpenCV RGB2GRAY) and resized to a square "
            "(OpenCV INTER_AREA when shrinking, INTER_LINEAR when enlarging), without keeping the aspect ratio. "
            "DICOM (pydicom): the modality LUT (rescale slope/intercept) applied, then the VOI transform: "
            "dicom_window [centre, width] when set, else the header's first VOI LUT Sequence item or, without one, "
            "its first Window Center / Width (DICOM PS3.3 C.11.2), else the values stretched from their own minimum "
            "to maximum; MONOCHROME1 inverted; YBR colour converted to RGB."
        ),
        "output": (
            f"one sigmoid unit: p({names[1]}); p({names[0]}) = 1 - output"
            if binary
            else f"softmax over {len(names)} classes in class_names order"
        ),
        "temperature": (metrics.get("calibration") or {}).get("temperature"),
        "temperature_note": _temperature_note(metrics.get("calibration") or {}, binary),
        "medimg_version": __version__,
        "not_for_clinical_use": NOT_FOR_CLINICAL_USE,
    }
    if binary:
        index = clinical.positive_index(names, positive)
        result.update(
            positive_class=names[index],
            threshold=float(threshold),
            threshold_chosen_by=_threshold_origin(run, float(threshold), index, preset, target),
            decision_rule=f"call {names[index]} when p({names[index]}) >= {float(threshold):.4f}",
        )
    return result


def _temperature_note(calibration: dict, binary: bool) -> str:
    """What `temperature` in the contract is for, and whether the evaluation found it worth applying."""
    if calibration.get("temperature") is None:
        return "no temperature was fitted" + (f": {calibration['skipped']}" if calibration.get("skipped") else "")
    text = (
        "The model outputs unscaled probabilities. temperature is T of temperature scaling (Guo et al. 2017), "
        "fitted on the validation split; applying it means softmax(log(p) / T) (two classes: "
        "sigmoid(logit(p) / T))." + (" The contract's threshold is for the unscaled probabilities." if binary else "")
    )
    warning = calibration.get("warning")
    return f"{text} Not recommended here: {warning}" if warning else text


def _threshold_origin(run: Run, threshold: float, positive: int, preset: str | None, target: float) -> str:
    from medimg.errors import MedimgError
    from medimg.results import evaluation

    try:
        scored = evaluation.load_scored(run)
    except MedimgError:
        return "unknown: the run has no saved predictions to compare it with"
    presets, split = evaluation.preset_thresholds(scored["test"], scored.get("val"), positive, target, target)
    return evaluation.threshold_origin(threshold, presets, split, preset)[0]


def model_bundle(
    run: Run,
    threshold: float = 0.5,
    positive: str | int | None = None,
    preset: str | None = None,
    target: float = 0.95,
) -> bytes:
    """A zip of model.keras and contract.json (image size, channel mode, class names, threshold; `preset` and
    `target` as `contract`)."""
    if not run.model_path.is_file():
        raise RunError(f"run {run.id} has no model.keras; train it first.")
    terms = contract(run, threshold, positive, preset, target)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(run.model_path, "model.keras")
        archive.writestr("contract.json", json.dumps(terms, indent=2))
    return buffer.getvalue()
