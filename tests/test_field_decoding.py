"""Files from the field (tests/data/cases, issue #13) decode to what a viewer shows: DICOM colour, VOI LUTs, odd
headers, 1-bit masks, palettes, EXIF orientation in every container, and the JPEG variants."""

from __future__ import annotations

import io
import logging
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageOps
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_voi_lut
from pydicom.pixels.decoders.base import Decoder
from pydicom.pixels.utils import pack_bits

from medimg.errors import ImageReadError
from medimg.imaging import images
from tests.conftest import PROJECT
from tests.dicom_files import new_dicom

CASES = PROJECT / "tests" / "data" / "cases"
YBR_FILES = sorted((CASES / "dicom-ybr-jpeg").glob("*/*.dcm"))
J2K_RCT = CASES / "dicom-j2k-ybr-rct" / "malignant" / "us_doppler_j2k.dcm"
VOI_LUT = CASES / "dicom-voi-lut-sequence" / "normal" / "cr_voi_lut.dcm"
ODD = CASES / "dicom-odd-headers" / "mr"
FILMS = CASES / "exif-orientation" / "films"
JPEGS = CASES / "jpeg-variants" / "imgs"


def dicom_bytes(dataset: pydicom.Dataset) -> bytes:
    stream = io.BytesIO()
    dataset.save_as(stream, enforce_file_format=True)
    return stream.getvalue()


# ---------------------------------------------------------------- colour DICOM: converted to RGB exactly once


def test_the_ybr_cases_are_the_four_kinds_the_issue_names() -> None:
    kinds = {
        (str(d.file_meta.TransferSyntaxUID.name), str(d.PhotometricInterpretation))
        for d in map(pydicom.dcmread, YBR_FILES)
    }
    assert kinds == {
        ("JPEG Baseline (Process 1)", "YBR_FULL_422"),
        ("JPEG Baseline (Process 1)", "YBR_FULL"),
        ("Explicit VR Little Endian", "YBR_FULL_422"),
        ("RLE Lossless", "RGB"),
    }


@pytest.mark.parametrize("path", YBR_FILES, ids=lambda p: p.name)
def test_colour_dicom_top_band_is_red_as_a_viewer_shows_it(path: Path) -> None:
    pixels, info = images.decode(path.read_bytes())
    assert (info.format, info.channels, pixels.shape) == ("dicom", 3, (100, 100, 3))
    assert np.abs(pixels[2, 50].astype(int) - (255, 0, 0)).max() <= 3  # was (75, 255, 27): converted twice
    # RLE RGB is the lossless reference; the JPEG files differ from it only by their compression.
    reference, _ = images.decode((CASES / "dicom-ybr-jpeg" / "colour_b" / "SC_rgb_rle.dcm").read_bytes())
    assert np.abs(pixels.astype(int) - reference).mean() < 4
    rgb = images.load_image(path, 10, "rgb")
    assert np.abs(rgb[0, 5].astype(int) - (255, 0, 0)).max() <= 3


def test_jpeg2000_ybr_rct_ultrasound_reads_in_colour() -> None:
    pixels, info = images.decode(J2K_RCT.read_bytes())
    assert (info.format, info.width, info.height, info.channels) == ("dicom", 640, 480, 3)
    # The decoder undid the reversible colour transform: the same RGB as pydicom's own decode, with colour in it.
    np.testing.assert_array_equal(pixels, pydicom.dcmread(J2K_RCT).pixel_array)
    assert (np.abs(pixels[..., 0].astype(int) - pixels[..., 2]) > 50).sum() > 1000  # the Doppler colour
    info, key = images.inspect(J2K_RCT.read_bytes())
    assert info.channels == 3 and key.startswith("exact:")
    assert images.load_image(J2K_RCT, 32, "rgb").shape == (32, 32, 3)


@pytest.mark.parametrize(
    "error",
    [
        NotImplementedError("Conversion from YBR_RCT to RGB is not supported."),
        RuntimeError("Unable to decode as exceptions were raised by all available plugins:\n  pillow: broken"),
        ValueError("The length of the pixel data is wrong"),
        struct.error("unpack requires a buffer of 4 bytes"),
        KeyError("BitsStored"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_any_decoder_exception_becomes_a_one_line_reason(error: Exception, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(Decoder, "as_array", failing)
    data = J2K_RCT.read_bytes()
    for read in (images.decode, images.inspect, lambda d: images.load_image(d, 16, "rgb")):
        with pytest.raises(ImageReadError) as caught:
            read(data)
        reason = str(caught.value)
        assert reason.startswith(f"DICOM pixel data is unreadable ({type(error).__name__}")
        assert "\n" not in reason


def test_without_a_decoder_the_reason_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    monkeypatch.setattr(Decoder, "missing_dependencies", property(lambda self: ["pylibjpeg - requires pylibjpeg"]))
    with pytest.raises(ImageReadError) as caught:
        images.decode(J2K_RCT.read_bytes())
    assert str(caught.value) == (
        "DICOM compressed as 'JPEG 2000 Image Compression (Lossless Only)' and no decoder for it is installed "
        "(pydicom needs one of: pylibjpeg - requires pylibjpeg)"
    )


def broken_jpeg2000_dicom() -> bytes:
    dataset = pydicom.dcmread(J2K_RCT)
    dataset.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(range(256)) * 4])  # SOC, SIZ, then garbage
    return dicom_bytes(dataset)


def test_a_failing_decoder_logs_no_traceback(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    data = broken_jpeg2000_dicom()
    level = logging.getLogger("pydicom").level
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RuntimeError):  # the same file through pydicom alone: a traceback per failed plugin
        _ = pydicom.dcmread(io.BytesIO(data)).pixel_array
    assert any(record.exc_info for record in caplog.records)
    caplog.clear()
    with pytest.raises(ImageReadError, match=r"^DICOM pixel data is unreadable \(RuntimeError: "):
        images.decode(data)
    assert not caplog.records
    assert "Traceback" not in capsys.readouterr().err
    assert logging.getLogger("pydicom").level == level  # quiet only while medimg decodes


# ---------------------------------------------------------------- monochrome display: VOI LUT, 1-bit, palette


def test_voi_lut_sequence_is_applied_as_a_viewer_applies_it() -> None:
    dataset = pydicom.dcmread(VOI_LUT)
    assert "WindowCenter" not in dataset and list(dataset.VOILUTSequence[0].LUTDescriptor) == [4096, 0, 12]
    stored = dataset.pixel_array
    # PS3.3 C.11.2.1.1: the LUT's output is 12 bits (0..4095), which is what maps onto 0..255.
    expected = np.round(apply_voi_lut(stored, dataset).astype(np.float64) / 4095 * 255).astype(np.uint8)
    decoded, info = images.decode(VOI_LUT.read_bytes())
    assert decoded.dtype == np.uint8 and info.bit_depth == 12
    np.testing.assert_array_equal(decoded, expected)
    stretched = images.to_uint8(stored)  # what was shown before: the stored range stretched
    assert np.abs(decoded.astype(int) - stretched).mean() > 20
    assert decoded[2, 50] == 255 and stretched[2, 50] == 100  # the sigmoid LUT lifts this pixel to white


def test_one_bit_segmentation_mask_reads_as_0_and_255() -> None:
    mask = np.zeros((4, 16), np.uint8)
    mask[1:3, 4:12] = 1
    dataset = new_dicom()
    dataset.Rows, dataset.Columns = mask.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 1, 1, 0, 0
    dataset.PixelData = pack_bits(mask)
    decoded, info = images.decode(dicom_bytes(dataset))
    np.testing.assert_array_equal(decoded, mask * 255)
    assert (info.bit_depth, info.channels) == (1, 1)
    loaded = images.load_image(dicom_bytes(dataset), 16, "gray")
    assert (loaded.min(), loaded.max()) == (0, 255)  # not 0/1, which would train on a black image


def test_palette_colour_goes_through_its_palette() -> None:
    indices = np.array([[0, 1], [2, 3]], np.uint8)
    palette = np.zeros((3, 256), np.uint16)
    palette[:, 1] = (65535, 0, 0)
    palette[:, 2] = (0, 65535, 0)
    palette[:, 3] = (0, 0, 32768)
    dataset = new_dicom()
    dataset.set_pixel_data(indices, photometric_interpretation="MONOCHROME2", bits_stored=8)
    dataset.PhotometricInterpretation = "PALETTE COLOR"
    for colour, table in zip(("Red", "Green", "Blue"), palette, strict=True):
        setattr(dataset, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(dataset, f"{colour}PaletteColorLookupTableData", table.astype("<u2").tobytes())
    decoded, info = images.decode(dicom_bytes(dataset))
    assert info.channels == 3
    np.testing.assert_array_equal(decoded, [[[0, 0, 0], [255, 0, 0]], [[0, 255, 0], [0, 0, 128]]])


# ---------------------------------------------------------------- odd headers: read, never "not an image"


@pytest.mark.parametrize(
    "name", ["no_preamble_implicit.dcm", "no_preamble_bigendian.dcm", "no_preamble_starts_0028.dcm"]
)
def test_dicom_without_preamble_or_file_meta_in_any_encoding(name: str) -> None:
    data = (ODD / name).read_bytes()
    assert images.is_dicom(data)
    decoded, info = images.decode(data)
    reference = pydicom.dcmread(ODD / "no_preamble_implicit.dcm", force=True)
    assert (info.format, info.width, info.height, info.bit_depth) == ("dicom", 64, 64, 16)
    expected, _ = images.decode((ODD / "no_preamble_implicit.dcm").read_bytes())
    np.testing.assert_array_equal(decoded, expected)
    assert int(reference.WindowCenter) == 600 and decoded.dtype == np.uint8  # the header's window applied


def test_deflated_dicom_reads() -> None:
    decoded, info = images.decode((ODD / "deflated.dcm").read_bytes())
    np.testing.assert_array_equal(decoded, pydicom.dcmread(ODD / "deflated.dcm").pixel_array)
    assert (info.width, info.height) == (512, 512)


def test_float_pixel_data_is_reported_as_float() -> None:
    data = (ODD / "float_pixels.dcm").read_bytes()
    decoded, info = images.decode(data)
    np.testing.assert_array_equal(decoded, pydicom.dcmread(ODD / "float_pixels.dcm").pixel_array)
    assert decoded.dtype == np.float32
    assert (info.bit_depth, info.sample_format, info.depth_name) == (32, "float", "32-bit float")
    assert "floating-point" in info.note
    assert images.inspect(data)[0] == info


def test_missing_photometric_interpretation_reads_as_monochrome2_with_a_note() -> None:
    decoded, info = images.decode((ODD / "missing_photometric.dcm").read_bytes())
    expected, _ = images.decode((ODD / "no_preamble_implicit.dcm").read_bytes())
    np.testing.assert_array_equal(decoded, expected)
    assert info.note == "DICOM without Photometric Interpretation (0028,0004): read as MONOCHROME2"


def test_colour_dicom_without_photometric_interpretation_is_refused_with_a_dicom_reason() -> None:
    dataset = pydicom.dcmread(YBR_FILES[2])  # RLE RGB
    del dataset.PhotometricInterpretation
    with pytest.raises(ImageReadError, match=r"^DICOM colour image without a Photometric Interpretation"):
        images.decode(dicom_bytes(dataset))


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.7\n" + bytes(100),
        b"PK\x03\x04" + bytes(100),
        b"\x08\x00\x05\x00" + bytes(100),  # a plausible first tag, then nothing like an element
        b"\x00\x08\x00\x08CS\x00\x04ABCD" + b"\xff" * 40,  # a big endian element, then no second one
        b"(\x00\x10\x00\xff\xff\xff\xff" + bytes(40),  # undefined length
    ],
)
def test_foreign_bytes_are_not_headerless_dicom(data: bytes) -> None:
    assert not images.is_dicom(data)
    with pytest.raises(ImageReadError, match="not an image"):
        images.decode(data)


def test_random_bytes_are_not_headerless_dicom() -> None:
    rng = np.random.default_rng(13)
    for _ in range(20000):
        head = rng.integers(0, 256, 64, dtype=np.uint8)
        head[0], head[1] = (2 * rng.integers(1, 21), 0) if rng.random() < 0.5 else (0, 2 * rng.integers(1, 21))
        assert not images.is_dicom(head.tobytes())


# ---------------------------------------------------------------- EXIF orientation in JPEG, TIFF and PNG


def test_the_sideways_film_is_upright_in_every_container_and_every_reader() -> None:
    upright = np.asarray(ImageOps.exif_transpose(Image.open(FILMS / "film.jpg")))
    assert upright.shape == (200, 320)
    for path in sorted(FILMS.iterdir()):
        data = path.read_bytes()
        decoded, info = images.decode(data)
        assert decoded.shape == (200, 320) and (info.width, info.height) == (320, 200), path.name
        assert np.abs(decoded.astype(int) - upright).mean() < 1.5, path.name
        assert (images.inspect(data)[0].width, images.inspect(data)[0].height) == (320, 200), path.name
    loaded = {path.name: images.load_image(path, 40, "gray").astype(int) for path in FILMS.iterdir()}
    assert max(np.abs(loaded[name] - loaded["film.png"]).max() for name in loaded) <= 3


@pytest.mark.parametrize("kind", ["PNG", "TIFF", "JPEG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_in_every_container(kind: str, orientation: int) -> None:
    stored = np.kron(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20, np.ones((8, 8), np.uint8))
    stream = io.BytesIO()
    if kind == "TIFF":
        Image.fromarray(stored).save(stream, kind, tiffinfo={0x0112: orientation})
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(stored).save(stream, kind, exif=exif.tobytes(), quality=95)
    exif_image = Image.fromarray(stored)
    exif_image.getexif()[0x0112] = orientation
    expected = np.asarray(ImageOps.exif_transpose(exif_image)).astype(int)
    decoded, info = images.decode(stream.getvalue())
    assert decoded.shape == expected.shape and (info.height, info.width) == expected.shape
    assert np.abs(decoded.astype(int) - expected).max() <= 3
    assert images.load_image(stream.getvalue(), 24, "gray").shape == (24, 24, 1)


# ---------------------------------------------------------------- JPEG variants


def test_12_bit_jpeg_is_refused_naming_its_precision() -> None:
    data = (JPEGS / "extended_12bit.jpg").read_bytes()
    assert images.jpeg_frame(data)[:2] == (0xC1, 12)
    reason = "12-bit JPEG: not supported by the installed decoder; convert it to a 16-bit PNG or TIFF"
    for read in (images.decode, images.inspect, lambda d: images.load_image(d, 16, "gray")):
        with pytest.raises(ImageReadError) as caught:
            read(data)
        assert str(caught.value) == reason


def test_lossless_jpeg_reads_its_exact_colours() -> None:
    decoded, info = images.decode((JPEGS / "lossless_rgb.jpg").read_bytes())
    assert images.jpeg_frame((JPEGS / "lossless_rgb.jpg").read_bytes())[0] == 0xC3
    assert (info.width, info.height, info.channels) == (100, 100, 3)
    bands = [tuple(int(v) for v in decoded[row, 50]) for row in (0, 20, 40, 60, 80)]
    assert bands == [(255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0), (192, 192, 192)]


def test_cmyk_and_progressive_jpegs_read_with_the_same_colours() -> None:
    cmyk_data = (JPEGS / "cmyk.jpg").read_bytes()
    assert images.jpeg_frame(cmyk_data)[4] == 4  # four components, Adobe-inverted as Photoshop writes them
    cmyk, cmyk_info = images.decode(cmyk_data)
    progressive, progressive_info = images.decode((JPEGS / "progressive.jpg").read_bytes())
    assert cmyk_info.channels == progressive_info.channels == 3 and cmyk.shape == progressive.shape == (120, 160, 3)
    reference = np.asarray(Image.open(JPEGS / "cmyk.jpg").convert("RGB")).astype(int)  # Pillow's CMYK → RGB
    assert np.abs(cmyk.astype(int) - reference).mean() < 2  # not inverted: an inverted image is ~100 off
    assert np.abs(cmyk.astype(int) - progressive).mean() < 2
    for path in (JPEGS / "cmyk.jpg", JPEGS / "progressive.jpg"):
        assert images.inspect(path.read_bytes())[0].channels == 3
        assert images.load_image(path, 32, "rgb").shape == (32, 32, 3)


def test_a_truncated_dicom_says_truncated_and_warns_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    import warnings

    data = (CASES / "dicom-j2k-ybr-rct" / "malignant" / "us_doppler_j2k.dcm").read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning pydicom let through would fail here
        with pytest.raises(ImageReadError, match=r"^truncated DICOM: the file ends before its pixel data is complete"):
            images.decode(data[: len(data) // 2])
    assert capsys.readouterr().err == ""


def test_the_scan_lists_float_pixel_data_as_float() -> None:
    from medimg.datasets import scanning

    report = scanning.scan(CASES / "dicom-odd-headers")
    assert report.modes["dicom gray 32-bit float"] == 1
    assert report.unreadable == []
