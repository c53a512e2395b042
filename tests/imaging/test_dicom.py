"""What the Predict page says about a DICOM file (`dicom.DicomSummary`) matches what the decoder does with it: the
VOI transform applied (VOI LUT Sequence, window, none) and the stored sample type, never a guessed bit depth.

The field cases are the copies in tests/data/cases (provenance and expectations in its README)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from medimg.imaging import dicom, images
from tests.conftest import PROJECT
from tests.dicom_files import new_dicom

CASES = PROJECT / "tests" / "data" / "cases"
VOI_LUT = CASES / "dicom-voi-lut-sequence" / "normal" / "cr_voi_lut.dcm"
ODD = CASES / "dicom-odd-headers" / "mr"


def dicom_bytes(dataset: pydicom.Dataset) -> bytes:
    stream = io.BytesIO()
    dataset.save_as(stream, enforce_file_format=True)
    return stream.getvalue()


def monochrome(pixels: np.ndarray, **elements: object) -> pydicom.Dataset:
    """A MONOCHROME2 secondary capture of `pixels` with extra header elements."""
    dataset = new_dicom()
    dataset.Modality = "OT"
    dataset.set_pixel_data(pixels, photometric_interpretation="MONOCHROME2", bits_stored=pixels.itemsize * 8)
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    return dataset


def test_a_voi_lut_sequence_is_said_to_be_applied() -> None:
    data = VOI_LUT.read_bytes()
    summary = dicom.dicom_summary(data)
    assert (summary.window, summary.voi_lut, summary.depth_text) == (None, "SIGMOID CURVE", "12-bit")
    assert summary.caption() == "DICOM CR · 128×128 · MONOCHROME2 · 12-bit · header VOI LUT applied (SIGMOID CURVE)"
    # ... and it is: the decoded picture is the LUT's output, not a min-max stretch of the stored values.
    decoded, _ = images.decode(data)
    assert not np.array_equal(decoded, images.to_uint8(pydicom.dcmread(VOI_LUT).pixel_array))


def test_a_chosen_window_replaces_the_header_voi_lut_in_words_too() -> None:
    summary = dicom.dicom_summary(VOI_LUT.read_bytes())
    text = summary.display_text(dicom.CT_WINDOWS["lung"])
    assert text == "window centre -600 / width 1500 applied instead of the header's VOI LUT"


def test_float_pixel_data_is_32_bit_float_not_8_bit() -> None:
    summary = dicom.dicom_summary((ODD / "float_pixels.dcm").read_bytes())
    assert "BitsStored" not in pydicom.dcmread(ODD / "float_pixels.dcm", force=True)
    assert (summary.bit_depth, summary.sample_format, summary.depth_text) == (32, "float", "32-bit float")
    assert summary.caption() == (
        "DICOM MR · 64×64 · MONOCHROME2 · 32-bit float · no VOI LUT or window in the header: stretched from the "
        "image's own minimum to maximum"
    )


def test_a_header_without_modality_or_photometric_interpretation_is_captioned_as_lacking_them() -> None:
    # Field case: a DICOM with no preamble that starts at group 0028 carries no Modality (0008,0060); another lacks
    # Photometric Interpretation (0028,0004), which the decoder reads as MONOCHROME2.
    starts_0028 = dicom.dicom_summary((ODD / "no_preamble_starts_0028.dcm").read_bytes())
    assert "Modality" not in pydicom.dcmread(ODD / "no_preamble_starts_0028.dcm", force=True)
    assert starts_0028.caption().startswith("DICOM modality not given · 64×64 · MONOCHROME2 · ")
    missing = dicom.dicom_summary((ODD / "missing_photometric.dcm").read_bytes())
    assert not missing.photometric_given and missing.monochrome
    assert " · MONOCHROME2 (assumed: not in the header) · 16-bit signed · " in missing.caption()
    assert dicom.dicom_summary((ODD / "float_pixels.dcm").read_bytes()).photometric_given


def test_double_float_pixel_data_is_64_bit_float() -> None:
    dataset = new_dicom()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.update({"SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2", "Rows": 2, "Columns": 3})
    dataset.BitsAllocated = 64
    dataset.DoubleFloatPixelData = np.linspace(-1.0, 1.0, 6).astype("<f8").tobytes()
    summary = dicom.dicom_summary(dicom_bytes(dataset))
    assert (summary.bit_depth, summary.depth_text) == (64, "64-bit float")


def test_no_bits_stored_is_said_not_invented() -> None:
    dataset = monochrome(np.arange(12, dtype=np.uint16).reshape(3, 4))
    del dataset.BitsStored
    summary = dicom.dicom_summary(dicom_bytes(dataset))
    assert summary.bit_depth is None and summary.depth_text == "bit depth not given"
    assert "bit depth not given" in summary.caption() and "8-bit" not in summary.caption()


def test_signed_depth_and_the_first_of_several_windows() -> None:
    dataset = monochrome(np.arange(-6, 6, dtype=np.int16).reshape(3, 4), WindowCenter=[40, 400], WindowWidth=[80, 1800])
    summary = dicom.dicom_summary(dicom_bytes(dataset))
    assert summary.depth_text == "16-bit signed" and summary.windows == 2
    assert summary.display_text() == "header window centre 40 / width 80 applied (the first of 2)"


def test_a_voi_lut_wins_over_a_window_and_the_caption_says_so() -> None:
    dataset = pydicom.dcmread(VOI_LUT)
    dataset.WindowCenter, dataset.WindowWidth = 2048, 4096
    data = dicom_bytes(dataset)
    summary = dicom.dicom_summary(data)
    assert summary.display_text() == "header VOI LUT applied (SIGMOID CURVE), not its window"
    # The decoder does the same: the window is ignored, so the picture is that of the file without it.
    np.testing.assert_array_equal(images.decode(data)[0], images.decode(VOI_LUT.read_bytes())[0])


@pytest.mark.parametrize(
    ("bits_stored", "expected"), [(8, "shown as stored (0–255)"), (4, "its 0–15 range shown as 0–255")]
)
def test_without_voi_the_caption_says_what_the_decoder_shows(bits_stored: int, expected: str) -> None:
    dataset = monochrome(np.arange(12, dtype=np.uint8).reshape(3, 4))
    dataset.BitsStored, dataset.HighBit = bits_stored, bits_stored - 1
    summary = dicom.dicom_summary(dicom_bytes(dataset))
    assert summary.display_text() == f"no VOI LUT or window in the header: {expected}"
    decoded, _ = images.decode(dicom_bytes(dataset))
    assert decoded.max() == (11 if bits_stored == 8 else round(11 / 15 * 255))


def test_monochrome1_is_said_to_be_inverted() -> None:
    dataset = monochrome(np.arange(12, dtype=np.uint8).reshape(3, 4), PhotometricInterpretation="MONOCHROME1")
    assert dicom.dicom_summary(dicom_bytes(dataset)).display_text().endswith(", inverted (MONOCHROME1)")


def test_colour_files_get_no_window_text() -> None:
    summary = dicom.dicom_summary((CASES / "dicom-ybr-jpeg" / "colour_b" / "SC_rgb_rle.dcm").read_bytes())
    assert summary.caption().endswith("RGB · 8-bit · colour, no window")
