"""The input contract: how a file becomes a model's input, the same for training, evaluation, prediction, the report,
the bundle, the exports and every page.

A run records its contract in run.json ("input"); whoever turns one of that run's files (or an upload) into pixels
for its model goes through `InputContract.load`, so a run trained with a custom DICOM window is tested, explained and
asked for predictions on images decoded with that window.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medimg.errors import RunError, file_reason

if TYPE_CHECKING:
    from medimg.config import DatasetConfig
    from medimg.imaging.dicom import DicomWindow


@dataclasses.dataclass(frozen=True)
class InputContract:
    """What a model takes: `image_size`×`image_size`×`channels` uint8 0–255 images in `color` mode.

    image_size: pixels, square (images are resized without keeping the aspect ratio).
    color: "gray" (OpenCV RGB2GRAY, one channel) or "rgb" (three channels).
    dicom_window: (centre, width) in the modality's units (after the rescale; Hounsfield units for CT) applied to
        every monochrome DICOM, or None for each file's own header window (DICOM PS3.3 C.11.2, VOI LUT).
    A backbone's own preprocessing (scaling, mean and deviation) lives inside the model, so the contract stays the
    same for every network.
    """

    image_size: int
    color: str
    dicom_window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.color not in ("gray", "rgb"):
            raise ValueError(f"color must be 'gray' or 'rgb', not {self.color!r}")
        if self.dicom_window is not None:
            object.__setattr__(self, "dicom_window", (float(self.dicom_window[0]), float(self.dicom_window[1])))

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    @property
    def window(self) -> DicomWindow | None:
        """The training window as a `dicom.DicomWindow`, or None for each file's header window."""
        from medimg.imaging.dicom import DicomWindow

        return DicomWindow(*self.dicom_window) if self.dicom_window else None

    @classmethod
    def from_config(cls, config: DatasetConfig) -> InputContract:
        return cls(int(config.image_size), str(config.color), config.window)

    @classmethod
    def from_record(cls, record: dict[str, Any], run_id: str = "") -> InputContract:
        """The contract a run recorded in run.json. Raises RunError when it has none (it never trained a model)."""
        recorded = record.get("input")
        if not recorded:
            name = run_id or record.get("id", "")
            raise RunError(f"run {name} has no input contract yet; it has not trained a model.")
        window = recorded.get("dicom_window")
        return cls(int(recorded["image_size"]), str(recorded["color"]), tuple(window) if window else None)

    def to_json(self) -> dict[str, Any]:
        """The run.json form: image_size, color, channels, dicom_window ([centre, width] or null)."""
        return {
            "image_size": self.image_size,
            "color": self.color,
            "channels": self.channels,
            "dicom_window": list(self.dicom_window) if self.dicom_window else None,
        }

    def load(self, source: str | Path | bytes, frame: int = 0, window: DicomWindow | None = None) -> np.ndarray:
        """One file (a path or its bytes) as this contract's image_size×image_size×channels uint8 array.

        frame: the DICOM frame (0-based) of a multi-frame file. window: a DICOM window for this call only (the
        Predict page's choice), else the contract's own. Raises `errors.ImageReadError` with the file's reason.
        """
        from medimg.imaging import images

        return images.load_image(source, self.image_size, self.color, frame=frame, window=window or self.window)

    def load_many(self, paths: list[str], indices: list[int]) -> tuple[list[tuple[int, np.ndarray]], list[str]]:
        """`paths[i]` for each i of `indices` through `load`, for a gallery: ([(i, pixels)], ["name: reason"]). A file
        changed or removed since the run tested it is named in the second list and the others are still loaded."""
        loaded, failures = [], []
        for i in indices:
            try:
                loaded.append((i, self.load(paths[i])))
            except Exception as error:  # any decoder failure is that file's reason (errors.file_reason)
                failures.append(f"{Path(paths[i]).name}: {file_reason(error)}")
        return loaded, failures

    def describe(self) -> str:
        """The contract in words, for a page caption or a model card."""
        window = (
            f"DICOM window centre {self.dicom_window[0]:g} / width {self.dicom_window[1]:g}"
            if self.dicom_window
            else "each DICOM file's own header window"
        )
        return f"{self.image_size}×{self.image_size} px, {self.color}, {window}"
