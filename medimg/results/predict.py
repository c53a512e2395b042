"""Prediction for any supported file through a run's input contract (size, channel mode, class names)."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import numpy as np

from medimg.datasets import novelty
from medimg.errors import ConfigError, RunError, file_reason
from medimg.imaging import dicom, images
from medimg.model.models import load_run_model
from medimg.store.runs import Run


@dataclasses.dataclass
class Prediction:
    """One file's result: probabilities by class, or the reason it could not be read."""

    name: str
    probabilities: dict[str, float]
    predicted: str = ""
    error: str = ""
    image: np.ndarray | None = dataclasses.field(default=None, repr=False)
    note: str = ""  # predicted, but the input is unlike the training images (`Predictor.input_note`)


class Predictor:
    """A run's model with its preprocessing contract, loaded once and reused for many files."""

    def __init__(self, run: Run) -> None:
        record = run.record
        if "class_names" not in record:
            raise RunError(f"run {run.id} has no input contract yet; it has not trained a model.")
        self.run = run
        self.contract = run.input_contract
        self.size, self.color = self.contract.image_size, self.contract.color
        self.window = self.contract.window  # the one training used
        self.class_names = list(record["class_names"])
        self.positive, self.threshold = decision_threshold(record)
        self.profile = image_profile(run)
        self.model = load_run_model(run)

    @property
    def decision(self) -> str:
        """The rule that turns probabilities into the called class, in words."""
        if self.positive is None:
            return "the class with the highest probability"
        return (
            f"{self.positive} when p({self.positive}) ≥ {self.threshold:.3f} (the operating point chosen on validation)"
            if self.threshold != 0.5
            else f"{self.positive} when p({self.positive}) ≥ 0.5"
        )

    def called(self, probabilities: np.ndarray) -> str:
        """The class called for one row of probabilities (K,), by `decision`."""
        if self.positive is None:
            return self.class_names[int(np.argmax(probabilities))]
        index = self.class_names.index(self.positive)
        return self.positive if probabilities[index] >= self.threshold else self.class_names[1 - index]

    def prepare(
        self, source: str | Path | bytes, frame: int = 0, window: dicom.DicomWindow | None = None
    ) -> np.ndarray:
        """One file as model input (S×S×C uint8) through the run's contract; `window` overrides the trained one."""
        return self.contract.load(source, frame=frame, window=window)

    def input_note(self, source: str | Path | bytes, pixels: np.ndarray | None = None) -> str:
        """Why this input is unlike what the model was trained on, or "". A probability is still given; the note
        says not to trust it as much. Two checks, joined by "; " when both apply:

        - colour given to a model trained on gray images (it sees the colour converted to gray), named unlike the
          training images when none of the profile's sampled training files carried colour; or gray given to one
          trained on colour (`images.carries_colour` on the file);
        - `pixels` (the model input, S×S×C uint8) beyond the run's image profile (`novelty.ImageProfile.note`:
          the distance to the training images against the most any validation image had). Runs saved before
          profiles were written (`novelty.PROFILE_FILE`) have none and never get this note.
        """
        return novelty.input_note(source, pixels, self.color, self.profile)

    def predict_images(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N × K) through a forward pass traced once (an eager call is ~4× slower)."""
        import tensorflow as tf

        if getattr(self, "_forward", None) is None:
            shape = (None, self.size, self.size, 1 if self.color == "gray" else 3)
            self._forward = tf.function(
                lambda x: self.model(x, training=False), input_signature=[tf.TensorSpec(shape, tf.float32)]
            )
        chunks = [
            np.asarray(self._forward(tf.constant(batch[i : i + 256], tf.float32))) for i in range(0, len(batch), 256)
        ]
        output = np.concatenate(chunks) if chunks else np.zeros((0, len(self.class_names)), np.float32)
        return np.concatenate([1.0 - output, output], axis=-1) if output.shape[-1] == 1 else output

    def predict(
        self,
        sources: list[tuple[str, str | Path | bytes]],
        *,
        window: dicom.DicomWindow | None = None,
        frames: dict[int, int] | None = None,
    ) -> list[Prediction]:
        """Predict named sources (path or bytes); unreadable ones come back with their reason, the rest go on.

        For DICOM sources, `window` replaces the header's window and `frames` maps a source's position in the list
        to the frame to read (default 0); both are ignored for other formats.
        """
        results: list[Prediction] = []
        ready: list[tuple[int, np.ndarray]] = []
        for position, (name, source) in enumerate(sources):
            try:
                data = source if isinstance(source, bytes) else images.read_bytes(source)  # once, for both uses
                pixels = self.prepare(data, (frames or {}).get(position, 0), window)
                ready.append((len(results), pixels))
                results.append(Prediction(name, {}, image=pixels, note=self.input_note(data, pixels)))
            except Exception as error:  # one file's decoder failure is that file's row; the others are predicted
                results.append(Prediction(name, {}, error=file_reason(error)))
        if ready:
            probs = self.predict_images(np.stack([pixels for _, pixels in ready]))
            for (index, _), row in zip(ready, probs, strict=True):
                results[index].probabilities = {c: float(p) for c, p in zip(self.class_names, row, strict=True)}
                results[index].predicted = self.called(row)
        return results

    def gradcam(self, pixels: np.ndarray, class_index: int | None = None) -> np.ndarray:
        """Grad-CAM heatmap (H×W in 0..1) of one model input (H×W×C uint8) for `class_index` (default: the arg-max;
        `explain` gives the called class's)."""
        from medimg.model.explain import gradcam_heatmap

        heatmap, _ = gradcam_heatmap(self.model, pixels, class_index)
        return heatmap

    def explain(self, prediction: Prediction) -> np.ndarray:
        """The Grad-CAM heatmap (H×W in 0..1) of the class a prediction calls, which for two classes at an
        operating point other than 0.5 need not be the arg-max (seen: "Grad-CAM for malignant" drawn for
        normal_benign at p(malignant) 0.433 and threshold 0.326). Raises RunError for a skipped file."""
        if prediction.error or prediction.image is None or not prediction.predicted:
            raise RunError(f"{prediction.name} was not predicted: {prediction.error or 'no model input'}")
        return self.gradcam(prediction.image, self.class_names.index(prediction.predicted))


def image_profile(run: Run) -> novelty.ImageProfile | None:
    """The run's profile of its training images (`workflows.save_image_profile`), or None for a run saved before
    profiles were written (or whose profile file is unreadable: no note rather than no prediction)."""
    data = run.read_json(novelty.PROFILE_FILE)
    if data is None:
        return None
    try:
        return novelty.ImageProfile.from_dict(data)
    except ConfigError:
        return None


def decision_threshold(record: dict) -> tuple[str | None, float]:
    """(positive class, threshold) a two-class run calls by: its operating point chosen on validation (run.json
    `metrics.operating_point`, Youden's J) when there is one, else (positive class, 0.5); (None, 0.5) for several
    classes, which are called by the arg-max."""
    from medimg.metrics import clinical

    names = list(record.get("class_names") or [])
    if len(names) != 2:
        return None, 0.5
    point = (record.get("metrics") or {}).get("operating_point") or {}
    positive = point.get("positive_class") or names[clinical.default_positive(names)]
    if point.get("chosen_on") == "val" and positive in names:
        return positive, float(point["threshold"])
    return positive, 0.5


def summary_line(predictions: list[Prediction]) -> str:
    """'3 predicted, 1 skipped' for a batch."""
    skipped = sum(1 for p in predictions if p.error)
    return f"{len(predictions) - skipped} predicted, {skipped} skipped"


def dicom_summary(source: str | Path | bytes) -> dicom.DicomSummary | None:
    """Pixel facts of a DICOM source (frames, window, modality), or None for any other format."""
    data = source if isinstance(source, bytes) else images.read_bytes(source)
    if not images.is_dicom(data):
        return None
    return dicom.dicom_summary(data)


def predictions_csv(predictions: list[Prediction], class_names: list[str]) -> str:
    """All predictions as CSV text: file, called class (by the Predictor's decision rule), one probability column
    per class, error (why a file was skipped), note (why a prediction may not hold: `Predictor.input_note`)."""
    stream = io.StringIO()
    writer = csv.writer(stream)
    writer.writerow(["file", "predicted", *[f"p_{c}" for c in class_names], "error", "note"])
    for p in predictions:
        writer.writerow(
            [
                p.name,
                p.predicted,
                *[f"{p.probabilities[c]:.6f}" if p.probabilities else "" for c in class_names],
                p.error,
                p.note,
            ]
        )
    return stream.getvalue()


def top_k(prediction: Prediction, k: int = 3) -> list[tuple[str, float]]:
    return sorted(prediction.probabilities.items(), key=lambda item: -item[1])[:k]
