"""One file → uint8 array: formats decided by content, channel rules, depth scaling, DICOM, size limits."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from medimg.errors import ImageReadError
from medimg.imaging import images
from tests.conftest import DEMO, PROJECT
from tests.corpus import byte_edits, mutate
from tests.dicom_files import new_dicom


def encode(extension: str, pixels: np.ndarray) -> bytes:
    """Bytes of `pixels` (OpenCV order: BGR/BGRA) written by OpenCV's own encoder."""
    ok, buffer = cv2.imencode(extension, pixels)
    assert ok
    return buffer.tobytes()


def pil_bytes(image: Image.Image, kind: str, **options) -> bytes:
    stream = io.BytesIO()
    image.save(stream, kind, **options)
    return stream.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def gray_png(width: int, height: int, idat: bytes) -> bytes:
    """A PNG assembled by hand: signature, IHDR (8-bit grayscale), one IDAT, IEND, every CRC valid."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


@pytest.fixture()
def demo_jpeg() -> Path:
    return sorted((DEMO / "train" / "NORMAL").glob("*.jpeg"))[0]


# ---------------------------------------------------------------- format sniffing


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "png"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 20, "jpeg"),
        (b"BM" + b"\x00" * 20, "bmp"),
        (b"II*\x00" + b"\x00" * 20, "tiff"),
        (b"MM\x00*" + b"\x00" * 20, "tiff"),
        (b"GIF89a" + b"\x00" * 20, "gif"),
        (b"\x00" * 128 + b"DICM", "dicom"),
        (b"hello, world", ""),
    ],
)
def test_sniff_format_reads_magic_bytes(head: bytes, kind: str) -> None:
    assert images.sniff_format(head) == kind


def test_dicom_preamble_holding_a_tiff_header_is_still_dicom() -> None:
    # The 128-byte preamble is free for other uses; pydicom's own CT_small.dcm carries a TIFF header there.
    head = Path(get_testdata_file("CT_small.dcm")).read_bytes()[:132]
    assert head.startswith(b"II*\x00")
    assert images.sniff_format(head) == "dicom"


def test_extension_is_ignored_content_decides(tmp_path: Path) -> None:
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    disguised = tmp_path / "scan.jpg"  # a PNG under a JPEG name
    disguised.write_bytes(encode(".png", pixels))
    decoded, info = images.decode(images.read_bytes(disguised))
    assert info.format == "png"
    np.testing.assert_array_equal(decoded, pixels)


# ---------------------------------------------------------------- formats and depths


def test_png_8bit_gray_is_exact() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (7, 9), dtype=np.uint8)
    decoded, info = images.decode(encode(".png", pixels))
    np.testing.assert_array_equal(decoded, pixels)
    assert (info.format, info.width, info.height, info.channels, info.bit_depth) == ("png", 9, 7, 1, 8)


def test_png_16bit_keeps_depth_then_min_max_stretches_to_uint8() -> None:
    pixels = np.array([[1000, 2000, 3000]], dtype=np.uint16)
    decoded, info = images.decode(encode(".png", pixels))
    assert decoded.dtype == np.uint16 and info.bit_depth == 16
    np.testing.assert_array_equal(decoded, pixels)
    # 1000 → 0, 3000 → 255, 2000 → 127.5 rounded half to even → 128.
    np.testing.assert_array_equal(images.to_uint8(decoded), [[0, 128, 255]])


def test_8bit_values_are_not_stretched() -> None:
    pixels = np.array([[10, 15, 20], [12, 14, 16], [11, 13, 19]], dtype=np.uint8)
    np.testing.assert_array_equal(images.load_image(encode(".png", pixels), 3, "gray")[..., 0], pixels)


def test_to_uint8_flat_and_non_finite() -> None:
    np.testing.assert_array_equal(images.to_uint8(np.full((2, 2), 700, np.uint16)), np.zeros((2, 2), np.uint8))
    values = np.array([[0.0, np.nan, 1.0, np.inf]], dtype=np.float32)
    np.testing.assert_array_equal(images.to_uint8(values), [[0, 0, 255, 0]])


def test_pure_red_written_by_opencv_comes_back_red_in_rgb_order() -> None:
    bgr_red = np.zeros((4, 5, 3), np.uint8)
    bgr_red[..., 2] = 255  # OpenCV stores red as the third (BGR) channel
    for extension in (".png", ".bmp", ".tiff"):
        rgb = images.load_image(encode(extension, bgr_red), 4, "rgb")
        assert rgb.shape == (4, 4, 3)
        assert (rgb[..., 0] == 255).all() and (rgb[..., 1:] == 0).all(), extension
    # Gray uses the RGB luma weights: red alone gives round(0.299 × 255) = 76 (BGR confusion would give 29).
    gray = images.load_image(encode(".png", bgr_red), 4, "gray")
    assert gray.shape == (4, 4, 1)
    assert np.all(np.abs(gray.astype(int) - 76) <= 1)


def test_bmp_and_tiff_colour_round_trip() -> None:
    bgr = np.random.default_rng(1).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    for extension, kind in ((".bmp", "bmp"), (".tiff", "tiff")):
        decoded, info = images.decode(encode(extension, bgr))
        assert info.format == kind and info.channels == 3
        np.testing.assert_array_equal(decoded, bgr[..., ::-1])


def test_real_chest_xray_jpeg(demo_jpeg: Path) -> None:
    decoded, info = images.decode(images.read_bytes(demo_jpeg))
    assert (info.format, info.width, info.height, info.channels) == ("jpeg", 224, 224, 3)
    # The demo's X-rays are grayscale stored as RGB: the three channels are (almost) the same.
    assert np.abs(decoded[..., 0].astype(int) - decoded[..., 2].astype(int)).max() <= 3
    loaded = images.load_image(demo_jpeg, 32, "gray")
    assert loaded.shape == (32, 32, 1) and loaded.dtype == np.uint8
    assert loaded.std() > 10  # real content survived, not a flat image


def test_gray_becomes_rgb_with_three_equal_channels() -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (8, 8), dtype=np.uint8)
    rgb = images.load_image(encode(".png", pixels), 8, "rgb")
    assert rgb.shape == (8, 8, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], pixels)


def test_rgba_drops_alpha_without_premultiplying() -> None:
    bgra = np.zeros((3, 3, 4), np.uint8)
    bgra[..., 0] = 200  # blue
    bgra[..., 3] = 0  # fully transparent: values must still be the stored colour
    _, info = images.decode(encode(".png", bgra))
    assert info.channels == 4
    rgb = images.load_image(encode(".png", bgra), 3, "rgb")
    assert rgb.shape == (3, 3, 3)
    assert (rgb[..., 2] == 200).all() and (rgb[..., :2] == 0).all()


def test_gray_alpha_png_becomes_plain_gray() -> None:
    data = pil_bytes(Image.fromarray(np.full((4, 4, 2), (90, 255), np.uint8), mode="LA"), "PNG")
    gray = images.load_image(data, 4, "gray")
    assert (gray == 90).all()


def test_palette_png_is_expanded_to_its_colours() -> None:
    indices = np.array([[0, 1], [2, 1]], np.uint8)
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    decoded, info = images.decode(pil_bytes(palette, "PNG"))
    assert info.channels == 3 and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(decoded[0, 1], [0, 255, 0])
    np.testing.assert_array_equal(decoded[1, 0], [0, 0, 255])


def test_more_than_four_channels_keeps_the_first_three() -> None:
    five = np.arange(2 * 2 * 5, dtype=np.uint8).reshape(2, 2, 5)
    rgb = images.convert_channels(five, "rgb")
    np.testing.assert_array_equal(rgb, five[..., :3])


def test_resize_shrinks_and_enlarges_to_a_square() -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    assert images.resize(pixels, 16).shape == (16, 16, 3)
    assert images.resize(pixels[..., :1], 100).shape == (100, 100, 1)
    assert images.resize(pixels, 40) is not pixels  # not square: resized
    square = pixels[:16, :16]
    assert images.resize(square, 16) is square  # already the right size: untouched


def test_exif_orientation_6_is_applied_to_jpeg() -> None:
    # Stored 20 rows × 40 columns, left quarter white; orientation 6 means "rotate 90° clockwise to display".
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    data = pil_bytes(Image.fromarray(stored), "JPEG", exif=exif.tobytes(), quality=95)
    decoded, info = images.decode(data)
    assert decoded.shape[:2] == (40, 20)  # transposed
    assert (info.width, info.height) == (20, 40)
    # Clockwise rotation moves the stored left edge to the top.
    assert decoded[:8].mean() > 240 and decoded[-20:].mean() < 15


# ---------------------------------------------------------------- unreadable files


def test_zero_byte_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.touch()
    with pytest.raises(ImageReadError, match=r"empty file \(0 bytes\)"):
        images.load_image(empty, 16, "gray")
    with pytest.raises(ImageReadError, match="empty file"):
        images.decode(b"")


def test_folder_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="is a folder, not a file"):
        images.read_bytes(tmp_path)
    with pytest.raises(ImageReadError, match="cannot read file"):
        images.read_bytes(tmp_path / "gone.png")


def test_text_file_renamed_png(tmp_path: Path) -> None:
    notes = tmp_path / "notes.png"
    notes.write_text("patient list, do not share\n")
    with pytest.raises(ImageReadError, match="not an image: the content is not PNG, JPEG, BMP, TIFF or DICOM"):
        images.load_image(notes, 16, "gray")


def test_gif_is_refused_with_advice() -> None:
    data = pil_bytes(Image.fromarray(np.zeros((4, 4), np.uint8)), "GIF")
    with pytest.raises(ImageReadError, match="GIF is not a supported image format; export the image as PNG"):
        images.decode(data)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.95])
def test_truncated_png(fraction: float) -> None:
    data = encode(".png", np.random.default_rng(4).integers(0, 256, (32, 32), dtype=np.uint8))
    # Its header survives the cut: the size limit is not the cause, so it is not named (seen on a 3 KB file).
    with pytest.raises(ImageReadError, match=r"corrupt or truncated PNG: the header promises 32x32 pixels") as error:
        images.decode(data[: int(len(data) * fraction)])
    assert "megapixels" not in str(error.value)
    with pytest.raises(ImageReadError, match="corrupt, truncated or too large PNG"):  # no header left to read
        images.decode(data[:20])


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_real_jpeg(demo_jpeg: Path, fraction: float) -> None:
    data = demo_jpeg.read_bytes()
    with pytest.raises(ImageReadError, match="JPEG"):
        images.decode(data[: int(len(data) * fraction)])


def test_png_declaring_50000_squared_pixels_is_refused_from_its_header() -> None:
    bomb = gray_png(50000, 50000, zlib.compress(b"\x00" * 50001))
    with pytest.raises(ImageReadError, match=r"50000x50000 pixels is over the 64 megapixel limit"):
        images.decode(bomb)


def test_pixel_limit_holds_without_allocating_even_when_cv2_was_imported_first() -> None:
    # OpenCV reads its own pixel limit once, when cv2 is first imported; an app that imports cv2 before medimg
    # must still be protected. 12000² = 144 megapixels of zeros compress to 140 KB but would take 144 MB to decode.
    code = (
        "import cv2, resource, struct, zlib\n"
        "from medimg.imaging import images\n"
        "from tests.imaging.test_images import gray_png\n"
        "side = 12000\n"
        "data = gray_png(side, side, zlib.compress(b'\\x00' * ((side + 1) * side), 1))\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    images.decode(data)\n"
        "    print('decoded')\n"
        "except images.ImageReadError as error:\n"
        "    print('refused:', error)\n"
        "print('grew_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    # Without the variable that importing medimg.imaging.images put into this process's environment.
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, env=env, capture_output=True, text=True, check=True, timeout=120
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "refused: PNG image of 12000x12000 pixels is over the 64 megapixel limit"
    assert int(lines[1].split()[1]) < 50 * 1024  # far below the 140 MB a decode would have touched


def test_file_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 3 * 2**20)
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 2 * 2**20)
    with pytest.raises(ImageReadError, match="file is 3 MB, over the 2 MB limit"):
        images.read_bytes(big)


def test_ignored_names() -> None:
    assert images.is_ignored(".DS_Store")
    assert images.is_ignored("._IM-0001.jpeg")  # macOS resource fork
    assert images.is_ignored("Thumbs.db") and images.is_ignored("desktop.ini")
    assert not images.is_ignored("IM-0001.jpeg")


# ---------------------------------------------------------------- DICOM


def dicom_bytes(dataset: pydicom.Dataset) -> bytes:
    stream = io.BytesIO()
    dataset.save_as(stream, enforce_file_format=True)
    return stream.getvalue()


def test_ct_dicom_rescale_is_applied() -> None:
    path = get_testdata_file("CT_small.dcm")
    dataset = pydicom.dcmread(path)
    assert "WindowCenter" not in dataset  # this file has a rescale but no window
    expected = dataset.pixel_array.astype(np.float64) * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    decoded, info = images.decode(Path(path).read_bytes())
    assert (info.format, info.width, info.height, info.channels, info.bit_depth) == ("dicom", 128, 128, 1, 16)
    np.testing.assert_allclose(decoded, expected)
    assert decoded.min() < 0  # Hounsfield units below water (intercept -1024)
    # Without a window, the full range is stretched: lowest HU → 0, highest → 255.
    loaded = images.load_image(path, 128, "gray")[..., 0]
    assert loaded.shape == (128, 128)
    assert loaded[expected == expected.min()].max() == 0 and loaded[expected == expected.max()].min() == 255


def test_mr_dicom_window_maps_the_window_not_the_image_range_to_0_255() -> None:
    path = get_testdata_file("MR_small.dcm")
    dataset = pydicom.dcmread(path)
    center, width = float(dataset.WindowCenter), float(dataset.WindowWidth)
    raw = dataset.pixel_array.astype(np.float64)  # no rescale in this file
    assert "RescaleSlope" not in dataset
    # DICOM PS3.3 C.11.2.1.2.1, linear window, expressed on 0..255.
    expected = np.clip((raw - (center - 0.5)) / (width - 1) + 0.5, 0, 1) * 255
    decoded, _ = images.decode(Path(path).read_bytes())
    assert decoded.dtype == np.uint8
    assert np.abs(decoded.astype(float) - expected).max() <= 1.0
    # The darkest tissue is well above the window's lower edge: it must not be stretched to black.
    assert decoded.min() > 40


def test_monochrome1_is_the_inverse_of_monochrome2() -> None:
    for name in ("CT_small.dcm", "MR_small.dcm"):
        dataset = pydicom.dcmread(get_testdata_file(name))
        normal = images.load_image(dicom_bytes(dataset), 64, "gray").astype(int)
        dataset.PhotometricInterpretation = "MONOCHROME1"
        inverted = images.load_image(dicom_bytes(dataset), 64, "gray").astype(int)
        assert np.abs(inverted - (255 - normal)).max() <= 1, name
        assert np.corrcoef(normal.ravel(), inverted.ravel())[0, 1] < -0.99


def test_dicom_without_pixel_data() -> None:
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del dataset.PixelData
    with pytest.raises(ImageReadError, match="DICOM file has no pixel data"):
        images.decode(dicom_bytes(dataset))


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_dicom_without_preamble(name: str) -> None:
    data = Path(get_testdata_file(name)).read_bytes()
    assert data[128:132] == b"DICM"
    with_preamble, _ = images.decode(data)
    without, info = images.decode(data[132:])  # no preamble, no "DICM": starts with the (0002,0000) group length
    assert info.format == "dicom"
    np.testing.assert_array_equal(without, with_preamble)


def test_bare_dicom_dataset_without_file_meta() -> None:
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    stream = io.BytesIO()
    bare = Dataset()
    bare.update(dataset)  # the data elements only: no preamble, no file meta group
    pydicom.dcmwrite(stream, bare, implicit_vr=False, little_endian=True)
    data = stream.getvalue()
    assert data[:2] == b"\x08\x00"  # starts with a group 0008 element
    decoded, _ = images.decode(data)
    expected, _ = images.decode(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    np.testing.assert_array_equal(decoded, expected)


def multi_frame_dicom(frames: np.ndarray) -> bytes:
    dataset = new_dicom()
    dataset.set_pixel_data(frames, photometric_interpretation="MONOCHROME2", bits_stored=8)
    return dicom_bytes(dataset)


def test_multi_frame_dicom_frame_selection_and_range() -> None:
    frames = np.stack([np.full((6, 5), 40 * (i + 1), np.uint8) for i in range(3)])
    data = multi_frame_dicom(frames)
    for index in range(3):
        decoded, info = images.decode(data, frame=index)
        np.testing.assert_array_equal(decoded, frames[index])
        assert info.note == f"multi-frame DICOM (3 frames): frame {index} used"
    assert (images.load_image(data, 5, "gray", frame=2) == 120).all()
    with pytest.raises(ImageReadError, match=r"frame 3 does not exist; this DICOM has 3 frames \(0..2\)"):
        images.decode(data, frame=3)
    with pytest.raises(ImageReadError, match="frame -1 does not exist"):
        images.decode(data, frame=-1)


def test_truncated_dicom_is_an_image_read_error() -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    with pytest.raises(ImageReadError, match="DICOM"):
        images.decode(data[: len(data) // 2])


def test_dicom_with_a_meta_group_length_of_the_wrong_size_is_an_image_read_error() -> None:
    # Found by the fuzz in test_robustness: without its preamble, byte 21 is inside the (0002,0000) group length;
    # pydicom raised BytesLengthException, which is not one of its InvalidDicomError family.
    data = bytearray(Path(get_testdata_file("CT_small.dcm")).read_bytes()[128:])
    data[21] = 0
    with pytest.raises(ImageReadError, match="corrupt DICOM"):
        images.decode(bytes(data))


def test_load_image_accepts_bytes_and_paths_alike(demo_jpeg: Path) -> None:
    from_path = images.load_image(demo_jpeg, 24, "rgb")
    from_bytes = images.load_image(demo_jpeg.read_bytes(), 24, "rgb")
    np.testing.assert_array_equal(from_path, from_bytes)


# ---------------------------------------------------------------- inspection for the scan


def exif_jpeg(pixels: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return pil_bytes(Image.fromarray(pixels), "JPEG", exif=exif.tobytes(), quality=95)


def inspection_cases() -> dict[str, bytes]:
    """Files of every kind `images.inspect` treats apart, built from a real X-ray."""
    gray = images.load_image(sorted((DEMO / "train" / "NORMAL").glob("*.jpeg"))[0], 48, "gray")[:, :, 0]
    odd = np.ascontiguousarray(gray[:37, :45])  # sides that are not multiples of 8: the 1/8-scale decode rounds up
    colour = np.dstack([gray, 255 - gray, gray // 2])
    return {
        "png 8-bit gray": encode(".png", gray),
        "png 16-bit gray": encode(".png", gray.astype(np.uint16) * 257),
        "png RGB": encode(".png", colour),
        "png RGBA": encode(".png", np.dstack([colour, gray])),
        "jpeg gray": pil_bytes(Image.fromarray(odd), "JPEG"),
        "jpeg RGB 4:2:0": pil_bytes(Image.fromarray(np.dstack([odd, odd, odd])), "JPEG", subsampling=2),
        "jpeg progressive": pil_bytes(Image.fromarray(odd), "JPEG", progressive=True),
        "jpeg CMYK (full decode)": pil_bytes(Image.fromarray(colour).convert("CMYK"), "JPEG"),
        **{f"jpeg EXIF orientation {o}": exif_jpeg(odd, o) for o in (2, 3, 5, 6, 8)},
        "bmp": pil_bytes(Image.fromarray(colour), "BMP"),
        "tiff 16-bit": pil_bytes(Image.fromarray(gray.astype(np.uint16) * 257), "TIFF"),
        "dicom": Path(get_testdata_file("CT_small.dcm")).read_bytes(),
    }


@pytest.mark.parametrize("name", list(inspection_cases()))
def test_inspect_reports_what_decode_reports(name: str) -> None:
    data = inspection_cases()[name]
    pixels, info = images.decode(data)
    found, key = images.inspect(data)
    assert found == info
    if key.startswith("candidate:"):
        assert name.startswith("jpeg") and "full decode" not in name
    else:
        assert key == "exact:" + images.pixel_digest(pixels)


def test_inspect_agrees_with_decode_on_every_demo_image() -> None:
    files = sorted(DEMO.rglob("*.jpeg"))
    assert len(files) == 140
    keys = set()
    for path in files:
        data = path.read_bytes()
        info, key = images.inspect(data)
        assert info == images.decode(data)[1], path
        keys.add(key)
    assert len(keys) == 140 and all(key.startswith("candidate:") for key in keys)


def test_inspect_gives_decodes_reasons_for_broken_jpegs(demo_jpeg: Path) -> None:
    data = demo_jpeg.read_bytes()
    # Cut in the headers, cut in the entropy-coded data (libjpeg still reads all of it at half scale), no header.
    for broken in (data[:200], data[: len(data) // 3], data[: len(data) - 10], b"\xff\xd8\xff" + bytes(300)):
        with pytest.raises(ImageReadError) as from_decode:
            images.decode(broken)
        with pytest.raises(ImageReadError) as from_inspect:
            images.inspect(broken)
        assert str(from_inspect.value) == str(from_decode.value)


def test_inspect_refuses_a_jpeg_over_the_pixel_limit_from_its_frame_header() -> None:
    data = bytearray(pil_bytes(Image.fromarray(np.zeros((16, 16), np.uint8)), "JPEG"))
    frame = data.index(b"\xff\xc0")
    data[frame + 5 : frame + 9] = struct.pack(">HH", 12000, 12000)
    assert images.jpeg_frame(bytes(data)) == (0xC0, 8, 12000, 12000, 1, False)
    with pytest.raises(ImageReadError, match=r"JPEG image of 12000x12000 pixels is over the 64 megapixel limit"):
        images.inspect(bytes(data))


JPEG_SEEDS = [
    (DEMO / "train" / "NORMAL").glob("*.jpeg").__next__().read_bytes(),
    exif_jpeg(np.random.default_rng(2).integers(0, 256, (20, 30), dtype=np.uint8), 6),
    pil_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 33), dtype=np.uint8)), "JPEG"),
    pil_bytes(
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 31, 3), dtype=np.uint8)),
        "JPEG",
        progressive=True,
    ),
]


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's, from reading a mutated EXIF segment
@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(range(len(JPEG_SEEDS))),
    edits=byte_edits(max_size=6),
)
def test_fuzzed_jpegs_get_the_same_verdict_from_inspect_and_decode(seed: int, edits: list) -> None:
    data = mutate(JPEG_SEEDS[seed], edits)

    def verdict(function) -> object:
        try:
            result = function(data)
        except ImageReadError as error:
            return str(error)
        return result[1] if function is images.decode else result[0]

    assert verdict(images.inspect) == verdict(images.decode)


def test_read_file_returns_the_status_it_checked(tmp_path: Path, demo_jpeg: Path) -> None:
    data, status = images.read_file(demo_jpeg)
    assert data == demo_jpeg.read_bytes() and status.st_size == len(data)
    assert status.st_mtime_ns == demo_jpeg.stat().st_mtime_ns
    with pytest.raises(ImageReadError, match="is a folder, not a file"):
        images.read_file(tmp_path)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageReadError, match=r"empty file \(0 bytes\)"):  # refused at once, not waiting for a writer
        images.read_file(fifo)


# ---------------------------------------------------------------- JPEG loading at a reduced DCT scale


@pytest.mark.parametrize(("size", "color"), [(28, "gray"), (56, "rgb"), (64, "gray"), (100, "gray"), (224, "rgb")])
def test_load_image_of_real_jpegs_matches_the_full_decode(size: int, color: str) -> None:
    # `load_image` decodes JPEGs at 1/2, 1/4 or 1/8 scale when the target is small enough (224 → 28 and 56 use 1/4
    # and 1/2); the shrink differs from a full decode + area resize only in rounding and at sharp edges.
    paths = sorted(DEMO.rglob("*.jpeg"))[::7]
    errors = []
    for path in paths:
        data = path.read_bytes()
        scaled = images.load_image(data, size, color)
        full = images.prepare(images.decode(data)[0], size, color)
        assert scaled.shape == full.shape == (size, size, 1 if color == "gray" else 3)
        errors.append(np.abs(scaled.astype(int) - full.astype(int)))
    mean_error = float(np.mean([e.mean() for e in errors]))
    assert mean_error < 0.5, mean_error  # grey levels out of 255
    assert float(np.mean([np.percentile(e, 99) for e in errors])) < 4


@pytest.mark.parametrize("orientation", [2, 3, 5, 6, 8])
def test_load_image_applies_exif_orientation_like_decode(orientation: int) -> None:
    gray = images.load_image(sorted((DEMO / "train" / "NORMAL").glob("*.jpeg"))[0], 96, "gray")[:, :, 0]
    stored = np.ascontiguousarray(gray[:64, :80])  # not square: a missed turn changes the picture
    data = exif_jpeg(stored, orientation)
    scaled = images.load_image(data, 16, "gray").astype(int)
    full = images.prepare(images.decode(data)[0], 16, "gray").astype(int)
    unturned = images.prepare(stored, 16, "gray").astype(int)
    assert np.abs(scaled - full).mean() < 1
    assert np.abs(scaled - unturned).mean() > 10  # the orientation was applied, not ignored


@pytest.mark.parametrize("name", ["jpeg CMYK (full decode)", "jpeg gray", "jpeg progressive", "jpeg RGB 4:2:0"])
def test_load_image_of_other_jpeg_kinds_matches_the_full_decode(name: str) -> None:
    data = inspection_cases()[name]
    for size in (8, 16, 40):
        for color in ("gray", "rgb"):
            scaled = images.load_image(data, size, color).astype(int)
            full = images.prepare(images.decode(data)[0], size, color).astype(int)
            assert np.abs(scaled - full).mean() < 1, (size, color)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_load_image_of_a_truncated_jpeg_gives_decodes_reason(demo_jpeg: Path, fraction: float) -> None:
    data = demo_jpeg.read_bytes()[: int(demo_jpeg.stat().st_size * fraction)]
    with pytest.raises(ImageReadError) as from_decode:
        images.decode(data)
    with pytest.raises(ImageReadError) as from_load:
        images.load_image(data, 28, "gray")
    assert str(from_load.value) == str(from_decode.value)


def test_load_image_refuses_a_jpeg_over_the_pixel_limit_before_decoding() -> None:
    data = bytearray(inspection_cases()["jpeg gray"])
    start = data.index(b"\xff\xc0")
    data[start + 5 : start + 9] = struct.pack(">HH", 12000, 12000)  # the frame header claims 12000 × 12000
    with pytest.raises(ImageReadError, match="over the 64 megapixel limit"):
        images.load_image(bytes(data), 64, "gray")


def test_load_image_picks_the_smallest_exact_dct_scale(demo_jpeg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = demo_jpeg.read_bytes()  # 224 × 224
    odd = inspection_cases()["jpeg gray"]  # 45 × 37: no scale divides both sides
    modes = []
    real_imdecode = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda buffer, flags: modes.append(flags) or real_imdecode(buffer, flags))
    cases = [(data, 28, "gray"), (data, 56, "gray"), (data, 64, "gray"), (data, 24, "rgb"), (odd, 8, "gray")]
    for source, size, color in cases:
        images.load_image(source, size, color)
    ignore = cv2.IMREAD_IGNORE_ORIENTATION
    assert modes == [
        cv2.IMREAD_REDUCED_GRAYSCALE_4 | ignore,  # 56 px left, twice the 28 asked
        cv2.IMREAD_REDUCED_GRAYSCALE_2 | ignore,
        cv2.IMREAD_GRAYSCALE | ignore,  # 112 would be under twice 64
        cv2.IMREAD_REDUCED_COLOR_4 | ignore,
        cv2.IMREAD_GRAYSCALE | ignore,
    ]
