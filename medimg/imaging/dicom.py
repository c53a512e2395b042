"""DICOM: reading a file's dataset with identifiers dropped, its windows and rescale, and its pixels as an image.

`images.decode` hands DICOM bytes here; everything about windows (the header's, CT presets, a custom one) lives in
this module so the Dataset, Predict and report code share one definition.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import struct
import threading
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from medimg.errors import ImageReadError, first_line
from medimg.imaging.formats import MAX_IMAGE_PIXELS, ImageInfo

if TYPE_CHECKING:
    import pydicom


# Value representations (PS3.5 6.2) by header form in explicit VR: a 2-byte length, or two reserved bytes and a
# 4-byte length (PS3.5 7.1.2).
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split())
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())

# (little endian, explicit VR): the encodings a data set may have (PS3.5 A.1 to A.3).
_DICOM_ENCODINGS = ((True, False), (True, True), (False, True))


def looks_like_bare_dataset(data: bytes) -> bool:
    """Whether bytes without preamble and "DICM" start like a DICOM data set (PS3.5 7): two consecutive data
    elements in one of the three encodings (implicit or explicit VR little endian, explicit VR big endian), the
    first in a standard group up to 0028 (file meta, identification, ..., image pixel), tags ascending, lengths
    within the file. Random or foreign bytes rarely pass both elements."""
    return any(
        _two_elements(data, little, explicit) for little, explicit in ((True, False), (True, True), (False, True))
    )


def _two_elements(data: bytes, little: bool, explicit: bool) -> bool:
    first = _element_header(data, 0, little, explicit)
    if first is None or not (first[0] % 2 == 0 and 0x0002 <= first[0] <= 0x0028):
        return False
    second = _element_header(data, first[2], little, explicit)
    return second is not None and (second[0], second[1]) > (first[0], first[1])


def _element_header(data: bytes, position: int, little: bool, explicit: bool) -> tuple[int, int, int] | None:
    """(group, element, where the next element starts) of a data element at `position`, or None when the bytes
    there cannot be one (unknown VR, or a value running past the end of the data)."""
    order = "<" if little else ">"
    if position + 8 > len(data):
        return None
    group, element = struct.unpack_from(f"{order}HH", data, position)
    if not explicit:
        (length,) = struct.unpack_from(f"{order}I", data, position + 4)
        start = position + 8
    elif data[position + 4 : position + 6] in _SHORT_VRS:
        (length,) = struct.unpack_from(f"{order}H", data, position + 6)
        start = position + 8
    elif data[position + 4 : position + 6] in _LONG_VRS and data[position + 6 : position + 8] == b"\x00\x00":
        if position + 12 > len(data):
            return None
        (length,) = struct.unpack_from(f"{order}I", data, position + 8)
        start = position + 12
    else:
        return None
    if start + length > len(data):  # includes undefined length (0xFFFFFFFF), which a first element never has
        return None
    return group, element, start + length


def read_dicom_dataset(data: bytes) -> pydicom.Dataset:
    """Parse DICOM bytes (with or without the preamble), keeping only the elements that describe the pixels.

    Patient, study and institution identifiers never leave this function: see `_keep_pixel_elements`.
    """
    import pydicom
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if data.startswith(b"DICM"):  # preamble stripped but marker kept: what follows is the file meta group
        data = data[4:]
    try:
        # pydicom warns (warnings and logging both) when the file ends early and returns what it read; the warning
        # is kept here to name the cause instead of reaching the console.
        with _pydicom_logs_silenced(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as error:  # a malformed header fails wherever the parser trips (struct.error, KeyError, ...)
        raise ImageReadError(f"corrupt DICOM: {first_line(error)}") from error
    ended_early = [str(w.message) for w in caught if "End of file reached" in str(w.message)]
    if ended_early and "PixelData" not in dataset and "FloatPixelData" not in dataset:
        raise ImageReadError(f"truncated DICOM: the file ends before its pixel data is complete ({ended_early[0]})")
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
    bit_depth: int | None  # Bits Stored; 32 / 64 for (Double) Float Pixel Data; None when the header gives none
    sample_format: str  # "uint", "int" (Pixel Representation 1) or "float" (the float pixel data elements)
    bits_allocated: int | None
    window: DicomWindow | None  # the header's first window (Window Center / Width)
    windows: int  # how many windows the header lists; the decoder uses the first, as viewers do by default
    voi_lut: str | None  # the VOI LUT the decoder applies: its LUT Explanation ("" when none); None: no usable LUT
    rescale_slope: float
    rescale_intercept: float
    photometric_given: bool = True  # False: the header lacks (0028,0004) and `photometric` is the decoder's reading

    @property
    def monochrome(self) -> bool:
        return self.photometric.startswith("MONOCHROME")

    @property
    def depth_text(self) -> str:
        """The stored sample type in words: "12-bit", "16-bit signed", "32-bit float" or "bit depth not given"."""
        if self.sample_format == "float":
            return f"{self.bit_depth}-bit float"
        if self.bit_depth is None:  # Bits Stored is type 1 (PS3.3 C.7.6.3), but files lack it: never guess one
            return "bit depth not given"
        return f"{self.bit_depth}-bit" + (" signed" if self.sample_format == "int" else "")

    def display_text(self, window: DicomWindow | None = None) -> str:
        """How the decoder turns this file's values into gray levels (`decode_dicom`), in words.

        Args:
            window: the window that replaces the header's (chosen on the page, or the one the model was trained
                with); None when the header's VOI LUT or window applies.
        """
        if not self.monochrome:
            return "palette colour through its table" if self.photometric == "PALETTE COLOR" else "colour, no window"
        header = "VOI LUT" if self.voi_lut is not None else "window" if self.window else ""
        inverted = ", inverted (MONOCHROME1)" if self.photometric == "MONOCHROME1" else ""
        if window is not None:
            instead = f" instead of the header's {header}" if header else ""
            return f"window centre {window.center:g} / width {window.width:g} applied{instead}{inverted}"
        if self.voi_lut is not None:  # it wins over a window, as in `_voi_lut`
            explained = f" ({self.voi_lut})" if self.voi_lut else ""
            ignored = ", not its window" if self.window else ""
            return f"header VOI LUT applied{explained}{ignored}{inverted}"
        if self.window:
            first = f" (the first of {self.windows})" if self.windows > 1 else ""
            return f"header window centre {self.window.center:g} / width {self.window.width:g} applied{first}{inverted}"
        return f"no VOI LUT or window in the header: {self._unwindowed()}{inverted}"

    def _unwindowed(self) -> str:
        # What `_monochrome_display` and `images.to_uint8` do without a VOI transform.
        identity = (self.rescale_slope, self.rescale_intercept) == (1.0, 0.0)
        if self.sample_format == "uint" and self.bits_allocated == 8 and identity:
            narrow = self.bit_depth is not None and self.bit_depth < 8
            return f"its 0–{2**self.bit_depth - 1} range shown as 0–255" if narrow else "shown as stored (0–255)"
        return "stretched from the image's own minimum to maximum"

    def caption(self, window: DicomWindow | None = None) -> str:
        """One line for the Predict page: modality, size, photometric, depth, then `display_text(window)`. A header
        without Modality or Photometric Interpretation is said to lack it, not shown as "?" or as a value it never
        gave."""
        photometric = self.photometric if self.photometric_given else f"{self.photometric} (assumed: not in the header)"
        return (
            f"DICOM {self.modality or 'modality not given'} · {self.columns}×{self.rows} · {photometric} · "
            f"{self.depth_text} · {self.display_text(window)}"
        )


def dicom_summary(data: bytes) -> DicomSummary:
    """Frames, size, photometric interpretation, sample type, the header's VOI transform and rescale of DICOM bytes.

    Raises:
        ImageReadError: the bytes are not a readable DICOM data set (`read_dicom_dataset`).
    """
    dataset = read_dicom_dataset(data)
    window, windows = None, 0
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        center, width = (_first_value(dataset[name].value) for name in ("WindowCenter", "WindowWidth"))
        window = DicomWindow(center, width) if width > 1 else None
        windows = _value_count(dataset["WindowCenter"].value)
    lut = _voi_lut(dataset)
    bit_depth, sample_format = _sample_type(dataset)
    return DicomSummary(
        modality=str(dataset.get("Modality", "") or ""),
        rows=int(dataset.get("Rows", 0) or 0),
        columns=int(dataset.get("Columns", 0) or 0),
        frames=int(dataset.get("NumberOfFrames", 1) or 1),
        photometric=str(dataset.get("PhotometricInterpretation", "MONOCHROME2")),
        bit_depth=bit_depth,
        sample_format=sample_format,
        bits_allocated=int(dataset.BitsAllocated) if dataset.get("BitsAllocated") else None,
        window=window,
        windows=windows,
        voi_lut=None if lut is None else str(lut.get("LUTExplanation", "") or "").strip(),
        rescale_slope=float(dataset.get("RescaleSlope", 1) or 1),
        rescale_intercept=float(dataset.get("RescaleIntercept", 0) or 0),
        photometric_given="PhotometricInterpretation" in dataset,
    )


def _sample_type(dataset: pydicom.Dataset) -> tuple[int | None, str]:
    """(bits per sample, "uint" / "int" / "float"): Float Pixel Data is 32-bit and Double Float Pixel Data 64-bit
    IEEE floats whatever Bits Allocated says (PS3.3 C.7.6.24); integer data has the depth of Bits Stored, or None
    when the header has none (not a guess)."""
    if "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset:
        return (32 if "FloatPixelData" in dataset else 64), "float"
    bits = int(dataset.BitsStored) if dataset.get("BitsStored") else None
    return bits, "int" if int(dataset.get("PixelRepresentation", 0) or 0) == 1 else "uint"


def _value_count(value: object) -> int:
    from pydicom.multival import MultiValue

    return len(value) if isinstance(value, MultiValue | list | tuple) else 1


def _first_value(value: object) -> float:
    from pydicom.multival import MultiValue

    return float(value[0] if isinstance(value, MultiValue | list | tuple) else value)  # several windows: the first


def apply_window(values: np.ndarray, window: DicomWindow) -> np.ndarray:
    """DICOM's linear window (PS3.3 C.11.2.1.2.1) onto 0..255: below the window black, above it white."""
    scaled = (np.asarray(values, np.float64) - (window.center - 0.5)) / (window.width - 1) + 0.5
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def decode_dicom(data: bytes, frame: int, window: DicomWindow | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Decode one frame of DICOM bytes to the values a viewer shows (PS3.4 N.2: modality, VOI, presentation).

    Monochrome images get the Modality LUT or rescale (PS3.3 C.11.1), then `window` if given, else the header's
    first VOI LUT or window (C.11.2) mapped from its output range onto 0..255; MONOCHROME1 is inverted. PALETTE
    COLOR goes through its palette (C.7.6.3.1.5 and C.7.9); YBR colour spaces are converted to RGB exactly once.

    Returns:
        (H×W or H×W×3 array, ImageInfo). uint8 once a VOI or palette applies; otherwise the stored values in their
        modality's units (uint/int/float, native byte order), which `images.to_uint8` stretches.

    Raises:
        ImageReadError: the bytes are not a readable DICOM image, the frame does not exist, no installed decoder
            handles the transfer syntax, or a decoder failed (its exception type and first line are the reason).
    """
    with _pydicom_logs_silenced():
        dataset = read_dicom_dataset(data)
        try:
            notes, frames = _check_image(dataset, frame)
            pixels, photometric = _decode_frame(dataset, frame if frames > 1 else None)
            pixels = _display_values(pixels, photometric, dataset, window)
            info = _image_info(dataset, pixels, notes)
        except ImageReadError:
            raise
        except Exception as error:  # pydicom reads elements lazily: a malformed one fails wherever it is first used
            raise ImageReadError(f"DICOM pixel data is unreadable ({first_line(error)})") from error
    return pixels, info


# While medimg decodes, pydicom (and the pylibjpeg/openjpeg plugins) log every failed plugin with
# `LOGGER.exception`: a full traceback on the console for a file medimg already reports in one line. Their loggers
# are raised to CRITICAL for the duration only (children such as "pydicom.pixels.decoders.base" inherit the level),
# counted so that overlapping decodes in a thread pool restore the levels once, when the last one ends.
_LIBRARY_LOGGERS = ("pydicom", "pylibjpeg", "openjpeg")
_silence_lock = threading.Lock()
_silence_depth = 0
_saved_levels: dict[str, int] = {}


@contextlib.contextmanager
def _pydicom_logs_silenced() -> Iterator[None]:
    global _silence_depth
    with _silence_lock:
        if _silence_depth == 0:
            for name in _LIBRARY_LOGGERS:
                logger = logging.getLogger(name)
                _saved_levels[name] = logger.level
                logger.setLevel(logging.CRITICAL)
        _silence_depth += 1
    try:
        yield
    finally:
        with _silence_lock:
            _silence_depth -= 1
            if _silence_depth == 0:
                for name, level in _saved_levels.items():
                    logging.getLogger(name).setLevel(level)


def _check_image(dataset: pydicom.Dataset, frame: int) -> tuple[list[str], int]:
    """The notes for the scan report and the frame count, once the header describes a decodable image."""
    if not any(name in dataset for name in _PIXEL_KEYWORDS):
        raise ImageReadError("DICOM file has no pixel data (a report or structured document, not an image)")
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    if rows * columns > MAX_IMAGE_PIXELS:
        raise ImageReadError(
            f"DICOM image of {columns}x{rows} pixels is over the {MAX_IMAGE_PIXELS // 2**20} megapixel limit"
        )
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if not 0 <= frame < frames:
        raise ImageReadError(
            f"frame {frame} does not exist; this DICOM has {frames} frame{'s' if frames != 1 else ''} (0..{frames - 1})"
        )
    notes = [f"multi-frame DICOM ({frames} frames): frame {frame} used"] if frames > 1 else []
    if "PhotometricInterpretation" not in dataset:
        if int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
            raise ImageReadError(
                "DICOM colour image without a Photometric Interpretation (0028,0004): its colour space is unknown"
            )
        # PS3.3 C.7.6.3.1.2: one sample per pixel is MONOCHROME1, MONOCHROME2 or PALETTE COLOR, and a palette
        # needs its tables; MONOCHROME2 is what viewers assume.
        dataset.PhotometricInterpretation = "MONOCHROME2"
        notes.append("DICOM without Photometric Interpretation (0028,0004): read as MONOCHROME2")
    if "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset:
        notes.append("floating-point DICOM pixel data: values stretched from their own minimum to maximum")
    return notes, frames


_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _decode_frame(dataset: pydicom.Dataset, index: int | None) -> tuple[np.ndarray, str]:
    """The frame's pixels as the decoder returns them, and the photometric interpretation they are now in.

    The decoder converts YBR_FULL/YBR_FULL_422 to RGB itself, and JPEG 2000 decoders undo YBR_RCT/YBR_ICT, so the
    header's value no longer describes the array: the decoder's own report of it is what later steps use.
    """
    from pydicom.pixels import get_decoder
    from pydicom.pixels.utils import as_pixel_options

    syntax = dataset.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as error:
        raise ImageReadError(f"DICOM transfer syntax '{syntax.name}' has no pixel decoder in pydicom") from error
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
        raise ImageReadError(
            f"DICOM compressed as '{syntax.name}' and no decoder for it is installed (pydicom needs one of: {needs})"
        )
    pixels, meta = decoder.as_array(dataset, index=index, **as_pixel_options(dataset))
    if pixels.dtype.byteorder not in "=|":  # big endian files: native order for OpenCV and the digests
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    return pixels, str(meta.get("photometric_interpretation", dataset.PhotometricInterpretation))


def _display_values(
    pixels: np.ndarray, photometric: str, dataset: pydicom.Dataset, window: DicomWindow | None
) -> np.ndarray:
    from pydicom.pixels import apply_color_lut, convert_color_space

    if photometric == "PALETTE COLOR":
        coloured = apply_color_lut(pixels, dataset)
        return _range_to_uint8(coloured, 0, np.iinfo(coloured.dtype).max)  # 8- or 16-bit table entries
    if photometric.startswith("MONOCHROME") or pixels.ndim == 2:
        return _monochrome_display(pixels, photometric, dataset, window)
    if photometric.startswith("YBR_FULL"):
        return convert_color_space(pixels, photometric, "RGB")
    if photometric != "RGB":
        raise ImageReadError(f"DICOM colour space '{photometric}' cannot be converted to RGB")
    return pixels


def _monochrome_display(
    pixels: np.ndarray, photometric: str, dataset: pydicom.Dataset, window: DicomWindow | None
) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    bits_stored = int(dataset.get("BitsStored", 8) or 8)
    if pixels.dtype == np.uint8 and bits_stored < 8 and window is None and not _has_voi(dataset):
        # 1-bit masks (0/1) and other narrow images would be near black as stored: their full range is 0..255.
        pixels = _range_to_uint8(pixels, 0, 2**bits_stored - 1)
    else:
        pixels = apply_modality_lut(pixels, dataset)
        if window is not None:
            pixels = apply_window(pixels, window)
        elif _has_voi(dataset):
            pixels = _range_to_uint8(apply_voi_lut(pixels, dataset, index=0), *_voi_output_range(dataset))
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels if pixels.dtype == np.uint8 else pixels.max() - pixels
    return pixels


def _has_voi(dataset: pydicom.Dataset) -> bool:
    return _voi_lut(dataset) is not None or ("WindowCenter" in dataset and "WindowWidth" in dataset)


def _voi_lut(dataset: pydicom.Dataset) -> pydicom.Dataset | None:
    """The first VOI LUT Sequence item, when it has the descriptor and data `apply_voi_lut` needs (it then wins
    over a window, as `prefer_lut` does)."""
    items = dataset.get("VOILUTSequence") or []
    first = items[0] if len(items) else None
    return first if first is not None and "LUTDescriptor" in first and "LUTData" in first else None


def _voi_output_range(dataset: pydicom.Dataset) -> tuple[float, float]:
    """What `apply_voi_lut` can output: 0..2^n-1 for a VOI LUT with n bits per entry (PS3.3 C.11.2.1.1), the
    y range of the window function otherwise (C.11.2.1.2); not the image's own minimum and maximum."""
    from pydicom.pixels import apply_voi_lut

    lut = _voi_lut(dataset)
    if lut is not None:
        return 0.0, float(2 ** int(lut.LUTDescriptor[2]) - 1)
    with np.errstate(over="ignore"):
        low, high = apply_voi_lut(np.array([-1e12, 1e12]), dataset, index=0)
    return float(low), float(high)


def _range_to_uint8(pixels: np.ndarray, low: float, high: float) -> np.ndarray:
    """Values from `low`..`high` onto 0..255, clipped; unchanged when the range is empty."""
    if not high > low:
        return pixels
    scaled = (np.asarray(pixels, np.float64) - low) / (high - low)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _image_info(dataset: pydicom.Dataset, pixels: np.ndarray, notes: list[str]) -> ImageInfo:
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    channels = 1 if pixels.ndim == 2 else pixels.shape[-1]
    bits, sample_format = _sample_type(dataset)
    if bits is None:  # the scan's table needs a number: the container the samples came in
        bits = int(dataset.get("BitsAllocated", 8) or 8)
    return ImageInfo("dicom", columns, rows, channels, bits, "; ".join(notes), sample_format)
