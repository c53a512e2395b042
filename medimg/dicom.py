"""DICOM: reading a file's dataset with identifiers dropped, its windows and rescale, and its pixels as an image.

`images.decode` hands DICOM bytes here; everything about windows (the header's, CT presets, a custom one) lives in
this module so the Dataset, Predict and report code share one definition.
"""

from __future__ import annotations

import dataclasses
import io
from typing import TYPE_CHECKING

import numpy as np

from medimg.errors import ImageReadError
from medimg.formats import MAX_IMAGE_PIXELS, ImageInfo

if TYPE_CHECKING:
    import pydicom


def read_dicom_dataset(data: bytes) -> pydicom.Dataset:
    """Parse DICOM bytes (with or without the preamble), keeping only the elements that describe the pixels.

    Patient, study and institution identifiers never leave this function: see `_keep_pixel_elements`.
    """
    import pydicom
    from pydicom.errors import BytesLengthException, InvalidDicomError
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if data.startswith(b"DICM"):  # preamble stripped but marker kept: what follows is the file meta group
        data = data[4:]
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    except (
        InvalidDicomError,
        BytesLengthException,  # an element whose length does not fit its value representation
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        OSError,
    ) as error:
        raise ImageReadError(f"corrupt DICOM: {error}") from error
    if "TransferSyntaxUID" not in dataset.file_meta:
        # A bare dataset (no preamble, no file meta): pydicom needs the transfer syntax it was read with to decode.
        implicit, little = dataset.original_encoding
        syntaxes = {(True, True): ImplicitVRLittleEndian, (False, False): ExplicitVRBigEndian}
        dataset.file_meta.TransferSyntaxUID = syntaxes.get((implicit, little), ExplicitVRLittleEndian)
    _keep_pixel_elements(dataset)
    return dataset


# Everything medimg needs from a DICOM file: the Image Pixel, Modality LUT and VOI LUT modules (group 0028), the
# pixel data (group 7FE0) and these four elements. An allow-list rather than a deny-list of identifiers, so that
# names, IDs, dates, addresses, private tags and free text (PS3.15 Annex E) cannot reach a log, a run or a page.
DICOM_KEPT_GROUPS = (0x0028, 0x7FE0)
DICOM_KEPT_ELEMENTS = frozenset({0x00080005, 0x00080008, 0x00080016, 0x00080060})  # charset, type, SOP class, modality


def _keep_pixel_elements(dataset: pydicom.Dataset) -> None:
    # Deleting by tag never converts a raw element, so an identifier's value is not even decoded.
    for tag in list(dataset.keys()):
        if tag.group not in DICOM_KEPT_GROUPS and int(tag) not in DICOM_KEPT_ELEMENTS:
            del dataset[tag]


@dataclasses.dataclass(frozen=True)
class DicomWindow:
    """A display window in the modality's units (Hounsfield units for CT): centre (level) and width."""

    center: float
    width: float

    def __post_init__(self) -> None:
        if not self.width > 1:
            raise ImageReadError(f"window width {self.width} is too small; use a width above 1 (e.g. 400 for CT).")


# The usual CT windows (centre, width) in Hounsfield units.
CT_WINDOWS = {
    "lung": DicomWindow(-600, 1500),
    "mediastinum": DicomWindow(50, 350),
    "bone": DicomWindow(400, 1800),
    "brain": DicomWindow(40, 80),
}


@dataclasses.dataclass(frozen=True)
class DicomSummary:
    """What the Predict page may show about a DICOM file: pixel facts only, never an identifier."""

    modality: str
    rows: int
    columns: int
    frames: int
    photometric: str
    bits_stored: int
    window: DicomWindow | None
    rescale_slope: float
    rescale_intercept: float

    @property
    def monochrome(self) -> bool:
        return self.photometric.startswith("MONOCHROME")


def dicom_summary(data: bytes) -> DicomSummary:
    """Frames, size, photometric interpretation, the header's first window and the rescale of DICOM bytes."""
    dataset = read_dicom_dataset(data)
    window = None
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        center, width = (_first_value(dataset[name].value) for name in ("WindowCenter", "WindowWidth"))
        window = DicomWindow(center, width) if width > 1 else None
    return DicomSummary(
        modality=str(dataset.get("Modality", "") or ""),
        rows=int(dataset.get("Rows", 0) or 0),
        columns=int(dataset.get("Columns", 0) or 0),
        frames=int(dataset.get("NumberOfFrames", 1) or 1),
        photometric=str(dataset.get("PhotometricInterpretation", "MONOCHROME2")),
        bits_stored=int(dataset.get("BitsStored", 8) or 8),
        window=window,
        rescale_slope=float(dataset.get("RescaleSlope", 1) or 1),
        rescale_intercept=float(dataset.get("RescaleIntercept", 0) or 0),
    )


def _first_value(value: object) -> float:
    from pydicom.multival import MultiValue

    return float(value[0] if isinstance(value, MultiValue | list | tuple) else value)  # several windows: the first


def apply_window(values: np.ndarray, window: DicomWindow) -> np.ndarray:
    """DICOM's linear window (PS3.3 C.11.2.1.2.1) onto 0..255: below the window black, above it white."""
    scaled = (np.asarray(values, np.float64) - (window.center - 0.5)) / (window.width - 1) + 0.5
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def decode_dicom(data: bytes, frame: int, window: DicomWindow | None = None) -> tuple[np.ndarray, ImageInfo]:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    dataset = read_dicom_dataset(data)
    if "PixelData" not in dataset and "FloatPixelData" not in dataset:
        raise ImageReadError("DICOM file has no pixel data (a report or structured document, not an image)")
    rows, columns = int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))
    if rows * columns > MAX_IMAGE_PIXELS:
        raise ImageReadError(
            f"DICOM image of {columns}x{rows} pixels is over the {MAX_IMAGE_PIXELS // 2**20} megapixel limit"
        )
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    note = ""
    if not 0 <= frame < frames:
        raise ImageReadError(
            f"frame {frame} does not exist; this DICOM has {frames} frame{'s' if frames != 1 else ''} (0..{frames - 1})"
        )
    if frames > 1:
        note = f"multi-frame DICOM ({frames} frames): frame {frame} used"
    try:
        pixels = dataset.pixel_array if frames == 1 else dataset.pixel_array[frame]
    except (RuntimeError, NotImplementedError) as error:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise ImageReadError(
            f"DICOM compressed as '{name}' and no decoder for it is installed; install pylibjpeg and "
            f"pylibjpeg-libjpeg (or python-gdcm) to read it. Decoder said: {str(error).splitlines()[0]}"
        ) from error
    except (ValueError, AttributeError, KeyError, TypeError, IndexError) as error:
        raise ImageReadError(f"DICOM pixel data is unreadable: {error}") from error
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim == 2 or photometric.startswith("MONOCHROME"):
        pixels = apply_modality_lut(pixels, dataset)
        if window is not None:
            pixels = apply_window(pixels, window)
        elif "WindowCenter" in dataset and "WindowWidth" in dataset:
            pixels = _window_to_uint8(apply_voi_lut(pixels, dataset, index=0), dataset)
        if photometric == "MONOCHROME1":
            pixels = 255 - pixels if pixels.dtype == np.uint8 else pixels.max() - pixels
    elif photometric not in ("RGB",):
        from pydicom.pixels import convert_color_space

        pixels = convert_color_space(pixels, photometric, "RGB")
    channels = 1 if pixels.ndim == 2 else pixels.shape[-1]
    bits = int(dataset.get("BitsStored", 8) or 8)
    return np.asarray(pixels), ImageInfo("dicom", columns, rows, channels, bits, note)


def _window_to_uint8(pixels: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray:
    """The window's output range (not the image's own min/max) mapped to 0..255, as a DICOM viewer shows it."""
    from pydicom.pixels import apply_voi_lut

    with np.errstate(over="ignore"):
        low, high = apply_voi_lut(np.array([-1e12, 1e12]), dataset, index=0)
    if not high > low:
        return pixels
    return np.round(np.clip((pixels - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.uint8)
