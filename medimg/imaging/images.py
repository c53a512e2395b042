"""Read one image file of any supported kind into a uint8 array with a fixed channel mode.

Decoding goes through OpenCV (PNG, JPEG, BMP, TIFF) or pydicom (DICOM). The format is decided from the
file's first bytes, never from its extension, and OpenCV's pixel-count limit is set before its first import
so that a decompression bomb is refused by the decoder instead of filling memory.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import random
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medimg.errors import ImageReadError, first_line
from medimg.imaging import dicom
from medimg.imaging.formats import MAX_IMAGE_PIXELS, ImageInfo

MAX_FILE_BYTES = 512 * 1024 * 1024
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
# Refusals are reported per file by medimg; OpenCV's own warnings would only repeat them on stderr.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
IGNORED_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db"})


def is_ignored(name: str) -> bool:
    """Hidden and operating-system files that are never images (`.DS_Store`, `Thumbs.db`, `._x`)."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def sniff_format(head: bytes) -> str:
    """The image format from a file's first 132 bytes: png, jpeg, bmp, tiff, dicom, or '' if none of them."""
    # DICOM first: its 128-byte preamble may legally hold another format's header (often TIFF's "II*\0").
    if head[128:132] == b"DICM" or head.startswith(b"DICM"):  # with or without the 128-byte preamble
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head.startswith(b"GIF8"):
        return "gif"
    return ""


def is_dicom(data: bytes) -> bool:
    """Whether bytes hold DICOM, with or without the 128-byte preamble (the test `decode` uses)."""
    kind = sniff_format(data[:132])
    return kind == "dicom" or (not kind and dicom.looks_like_bare_dataset(data))


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes, with the reasons a file cannot be read phrased for people."""
    return read_file(path)[0]


# Non-blocking: a FIFO opens at once (and is refused as empty) instead of waiting for a writer.
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)


def read_file(path: str | Path) -> tuple[bytes, os.stat_result]:
    """The file's bytes and its status as read (size, mtime): one `fstat`, for callers that cache by them."""
    try:
        handle = os.open(path, _READ_FLAGS)
    except IsADirectoryError as error:
        raise ImageReadError("is a folder, not a file") from error
    except PermissionError as error:
        raise ImageReadError("permission denied") from error
    except OSError as error:
        raise ImageReadError(f"cannot read file: {error.strerror or error}") from error
    try:
        status = os.fstat(handle)
        if stat.S_ISDIR(status.st_mode):
            raise ImageReadError("is a folder, not a file")
        if status.st_size == 0:
            raise ImageReadError("empty file (0 bytes)")
        if status.st_size > MAX_FILE_BYTES:
            size = status.st_size / 2**20
            raise ImageReadError(f"file is {size:.0f} MB, over the {MAX_FILE_BYTES // 2**20} MB limit")
        data = os.read(handle, status.st_size + 1)  # one call; a byte more shows whether the file grew meanwhile
        if len(data) > status.st_size:
            data += b"".join(iter(lambda: os.read(handle, 1 << 20), b""))
        return data, status
    except OSError as error:
        raise ImageReadError(f"cannot read file: {error.strerror or error}") from error
    finally:
        os.close(handle)


def decode(data: bytes, *, frame: int = 0, window: dicom.DicomWindow | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Decode image bytes to the stored pixels (H×W or H×W×C, uint8/uint16/float) and what they were.

    Colour images come back in RGB/RGBA order (OpenCV's BGR is converted here, once). `frame` and `window` apply to
    DICOM only: the frame of a multi-frame file, and a window replacing the header's (monochrome images).
    """
    if not data:
        raise ImageReadError("empty file (0 bytes)")
    kind = sniff_format(data[:132])
    if not kind and dicom.looks_like_bare_dataset(data):
        kind = "dicom"
    if kind == "gif":
        raise ImageReadError("GIF is not a supported image format; export the image as PNG")
    if not kind:
        raise ImageReadError("not an image: the content is not PNG, JPEG, BMP, TIFF or DICOM")
    with _library_errors_as_reasons(kind):
        if kind == "dicom":
            return dicom.decode_dicom(data, frame, window)
        return _decode_opencv(data, kind)


@contextlib.contextmanager
def _library_errors_as_reasons(kind: str) -> Iterator[None]:
    """Any exception a decoding library raises becomes an ImageReadError naming its type and first line: callers
    (scan, training, prediction) handle one error class, and a bad file is never a traceback."""
    try:
        yield
    except ImageReadError:
        raise
    except Exception as error:
        raise ImageReadError(f"the {kind.upper()} decoder failed ({first_line(error)})") from error


def _decode_opencv(data: bytes, kind: str) -> tuple[np.ndarray, ImageInfo]:
    import cv2

    header_size = _png_size(data) if kind == "png" else None
    if header_size:
        # Checked before decoding: OpenCV fixes its own limit when cv2 is first imported, maybe before this module.
        _check_pixel_limit(*header_size, kind)
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        # IMREAD_UNCHANGED keeps 16-bit depth and alpha; the EXIF orientation is applied below on our own.
        pixels = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    except cv2.error as error:
        raise ImageReadError(f"corrupt or unsupported {kind.upper()}: {str(error).strip().splitlines()[-1]}") from error
    if pixels is None or pixels.size == 0:
        raise ImageReadError(_refusal_reason(data, kind))
    _check_pixel_limit(pixels.shape[1], pixels.shape[0], kind)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 3 and pixels.shape[2] in (3, 4):
        code = cv2.COLOR_BGR2RGB if pixels.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
        pixels = cv2.cvtColor(pixels, code)
    if kind in _ORIENTED_KINDS and not _opencv_applies_orientation(kind):
        pixels = _rotate_to_orientation(pixels, _orientation(data, kind))
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    info = ImageInfo(kind, pixels.shape[1], pixels.shape[0], channels, pixels.dtype.itemsize * 8)
    return pixels, info


def _check_pixel_limit(width: int, height: int, kind: str) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageReadError(
            f"{kind.upper()} image of {width}x{height} pixels is over the {MAX_IMAGE_PIXELS // 2**20} megapixel limit"
        )


def _refusal_reason(data: bytes, kind: str) -> str:
    """Why OpenCV returned no image: a JPEG kind its libjpeg cannot decode is named, since the file is valid."""
    frame = jpeg_frame(data) if kind == "jpeg" else None
    if frame is not None and frame[1] != 8:  # a valid header: the precision, not the file, is the cause
        return f"{frame[1]}-bit JPEG: not supported by the installed decoder; convert it to a 16-bit PNG or TIFF"
    size = (frame[3], frame[2]) if frame else _png_size(data) if kind == "png" else None
    if size is not None and size[0] * size[1] <= MAX_IMAGE_PIXELS:  # its header says it is not too large
        return (
            f"corrupt or truncated {kind.upper()}: the header promises {size[0]}x{size[1]} pixels (within the size "
            "limit), the decoder refused the data"
        )
    return (
        f"corrupt, truncated or too large {kind.upper()} (the decoder refused it; the limit is "
        f"{MAX_IMAGE_PIXELS // 2**20} megapixels)"
    )


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, the first after the signature (PNG spec, section 11.2.2); None if
    the header is cut short or not there."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


# Formats that can carry an EXIF orientation (tag 274): JPEG in APP1, PNG in an eXIf chunk, TIFF in its IFD.
_ORIENTED_KINDS = ("jpeg", "png", "tiff")


@functools.cache
def _opencv_applies_orientation(kind: str) -> bool:
    """Whether OpenCV's decode (as `_decode_opencv` calls it) already turned the image upright. OpenCV 5 does so for
    TIFF (through libtiff) but not for JPEG or PNG under IMREAD_UNCHANGED, and this has changed between releases:
    a 2×1 image tagged orientation 6 (turn 90° clockwise) is decoded once to find out."""
    import cv2
    from PIL import Image

    probe = Image.new("L", (2, 1))
    stream = io.BytesIO()
    try:
        if kind == "tiff":
            probe.save(stream, "TIFF", tiffinfo={0x0112: 6})
        else:
            exif = Image.Exif()
            exif[0x0112] = 6
            probe.save(stream, kind.upper(), exif=exif.tobytes())
    except (OSError, KeyError, ValueError):  # this Pillow cannot write it: orient ourselves
        return False
    decoded = cv2.imdecode(np.frombuffer(stream.getvalue(), np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    return decoded is not None and decoded.shape[:2] == (2, 1)


def _orientation(data: bytes, kind: str) -> int:
    """The EXIF orientation (1..8) of JPEG, PNG or TIFF bytes; 1 when there is none or it cannot be read."""
    if kind == "jpeg":
        return _exif_orientation(data)
    try:
        from PIL import Image

        if kind == "png":
            payload = _png_chunk(data, b"eXIf")
            if payload is None:
                return 1
            exif = Image.Exif()
            exif.load(payload)
        else:
            exif = Image.open(io.BytesIO(data)).getexif()  # reads the first IFD's tags, not the pixels
        orientation = exif.get(0x0112, 1)
    except Exception:  # an unreadable tag leaves the image as stored, like a viewer does
        return 1
    return orientation if orientation in range(1, 9) else 1


def _png_chunk(data: bytes, wanted: bytes) -> bytes | None:
    """The payload of a PNG's first chunk of type `wanted`, walking the chunk lengths (not searching the bytes,
    which compressed image data could imitate); None if there is none."""
    position = 8
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        if kind == wanted:
            return data[position + 8 : position + 8 + length]
        if kind == b"IEND":
            return None
        position += 12 + length
    return None


def _exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag of JPEG bytes (1..8), 1 when there is none or it cannot be read."""
    if data.find(b"Exif", 0, 65536) < 0:  # `in data[:65536]` without copying the slice
        return 1
    try:
        from PIL import Image

        orientation = Image.open(io.BytesIO(data)).getexif().get(0x0112, 1)
    except Exception:
        return 1
    return orientation if orientation in range(1, 9) else 1


def _apply_exif_orientation(pixels: np.ndarray, data: bytes) -> np.ndarray:
    # OpenCV ignores EXIF orientation with IMREAD_UNCHANGED; a phone photo of a film would come out rotated.
    return _rotate_to_orientation(pixels, _exif_orientation(data))


def _rotate_to_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels turned (and mirrored) upright for an EXIF orientation 1..8 (TIFF 6.0 tag 274)."""
    turns = {3: 2, 6: 3, 8: 1}.get(orientation, 0)
    pixels = np.rot90(pixels, turns) if turns else pixels
    if orientation in (2, 4, 5, 7):
        pixels = np.fliplr(np.rot90(pixels, {2: 0, 4: 2, 5: 3, 7: 1}[orientation]))
    return np.ascontiguousarray(pixels)


def pixel_digest(pixels: np.ndarray) -> str:
    """A hash of decoded pixels with their shape and type: equal digests mean identical images."""
    digest = hashlib.sha1(np.ascontiguousarray(pixels), usedforsecurity=False)  # hashed in place, no copy
    digest.update(f"{pixels.shape}{pixels.dtype.str}".encode())
    return digest.hexdigest()


def inspect(data: bytes) -> tuple[ImageInfo, str]:
    """What `decode` reports about image bytes, and a pixel key for finding duplicates, for less work than `decode`.

    An 8-bit baseline or progressive JPEG is checked from its frame header and a 1/8-scale grayscale decode:
    libjpeg still entropy-decodes the whole stream (so a file `decode` refuses is refused here too) but computes
    only the mean of each 8×8 block. Its key, 'candidate:...', hashes that small image: the same DCT coefficients
    give the same candidate, and files whose candidates meet need `pixel_digest` of a full `decode` to be called
    identical. Every other file is decoded fully and its key is 'exact:' + `pixel_digest`. Raises ImageReadError
    with `decode`'s reasons.
    """
    with _library_errors_as_reasons("jpeg"):
        quick = _inspect_jpeg(data)
    if quick is not None:
        return quick
    pixels, info = decode(data)
    return info, "exact:" + pixel_digest(pixels)


# Huffman-coded sequential and progressive frames; the rarer kinds (lossless, arithmetic) take the full decode.
_JPEG_FAST_FRAMES = (0xC0, 0xC1, 0xC2)
_JPEG_OTHER_FRAMES = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_frame(data: bytes) -> tuple[int, int, int, int, int, bool] | None:
    """(frame marker, precision, height, width, components, whether an APP1 segment came) from a JPEG's segments
    before its first scan, as decoders read them; None if they are not a plain chain of segments with a frame."""
    position, frame, app1 = 2, None, False
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            position += 2
            continue
        if marker == 0xDA:  # start of scan: the header is complete
            return (*frame, app1) if frame else None
        if marker == 0xD9:  # end of image before any scan
            return None
        if frame is None and (marker in _JPEG_FAST_FRAMES or marker in _JPEG_OTHER_FRAMES):
            if position + 10 > len(data):
                return None
            frame = (marker, *struct.unpack(">BHHB", data[position + 4 : position + 10]))
        app1 = app1 or marker == 0xE1  # where EXIF and XMP live
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return None


def _plain_jpeg(data: bytes) -> tuple[int, int, int, bool] | None:
    """(height, width, components, APP1 present) of an 8-bit Huffman-coded gray or YCbCr JPEG, checked against the
    pixel limit before any decoding (a reduced decode would pass OpenCV's own limit); None for other files and JPEG
    kinds, which take the full `decode`."""
    frame = jpeg_frame(data) if sniff_format(data[:132]) == "jpeg" else None
    if frame is None or frame[0] not in _JPEG_FAST_FRAMES or frame[1] != 8 or frame[4] not in (1, 3):
        return None
    _, _, height, width, components, app1 = frame
    _check_pixel_limit(width, height, "jpeg")
    return height, width, components, app1


def _inspect_jpeg(data: bytes) -> tuple[ImageInfo, str] | None:
    """`inspect` of a plain JPEG; None when the full decode must decide (other frames, or the decoder refused)."""
    import cv2

    plain = _plain_jpeg(data)
    if plain is None:
        return None
    height, width, components, app1 = plain
    try:
        reduced = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    except cv2.error:
        return None
    if reduced is None or reduced.shape != ((height + 7) // 8, (width + 7) // 8):
        return None
    # The turns of `_apply_exif_orientation` that swap the sides; without an APP1 segment there is no orientation.
    if app1 and _exif_orientation(data) in (5, 6, 7, 8):
        width, height = height, width
    digest = hashlib.sha1(reduced, usedforsecurity=False).hexdigest()  # its shape follows from the frame header
    return ImageInfo("jpeg", width, height, components, 8), f"candidate:{width}x{height}x{components}:{digest}"


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Scale any depth to uint8: 8-bit is kept as is, higher depths and floats are min-max stretched."""
    if pixels.dtype == np.uint8:
        return pixels
    values = pixels.astype(np.float32)
    finite = np.isfinite(values)
    if not finite.all():
        values = np.where(finite, values, 0.0)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def convert_channels(pixels: np.ndarray, color: str) -> np.ndarray:
    """The tutorial's channel rules: gray → RGB when RGB is wanted, RGBA → RGB, more than 4 channels → first 3.

    Always returns H×W×C with C = 1 for gray and 3 for rgb.
    """
    import cv2

    if pixels.ndim == 3 and pixels.shape[2] > 4:
        pixels = pixels[:, :, :3]
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGBA2RGB)
    if pixels.ndim == 3 and pixels.shape[2] == 2:  # gray + alpha
        pixels = pixels[:, :, 0]
    if color == "gray":
        if pixels.ndim == 3:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
        return pixels[:, :, np.newaxis]
    if pixels.ndim == 2:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    return pixels


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize H×W×C to size×size×C (area interpolation when shrinking, which avoids aliasing)."""
    import cv2

    height, width = pixels.shape[:2]
    if (height, width) == (size, size):
        return pixels
    interpolation = cv2.INTER_AREA if height >= size and width >= size else cv2.INTER_LINEAR
    resized = cv2.resize(pixels, (size, size), interpolation=interpolation)
    return resized[:, :, np.newaxis] if resized.ndim == 2 else resized


def prepare(pixels: np.ndarray, size: int, color: str) -> np.ndarray:
    """Stored pixels → the model's input: uint8, size×size×(1|3)."""
    return resize(convert_channels(to_uint8(pixels), color), size)


def load_image(
    source: str | Path | bytes, size: int, color: str, *, frame: int = 0, window: dicom.DicomWindow | None = None
) -> np.ndarray:
    """Read a file (or its bytes) into a size×size×C uint8 array. Raises ImageReadError with the reason.

    `frame` and `window` apply to DICOM (see `decode`); the header's window is used when `window` is None.
    Training, evaluation and prediction all load through here, so they see the same pixels.
    """
    data = source if isinstance(source, bytes) else read_bytes(source)
    with _library_errors_as_reasons("jpeg"):
        scaled = _load_jpeg_scaled(data, size, color)
    if scaled is not None:
        return scaled
    pixels, _ = decode(data, frame=frame, window=window)
    with _library_errors_as_reasons(sniff_format(data[:132]) or "image"):
        return prepare(pixels, size, color)


def _load_jpeg_scaled(data: bytes, size: int, color: str) -> np.ndarray | None:
    """An 8-bit JPEG decoded straight into the wanted channels, at a reduced DCT scale (1/2, 1/4, 1/8) when the
    shorter side keeps at least twice `size` pixels, then area-resized: libjpeg skips most of the inverse DCT and,
    for gray, the colour conversion. The scaled IDCT is itself an anti-aliased shrink: on the demo X-rays the result
    is within about half a grey level of `prepare(decode(...))` on average (tested). A scale is used only when it
    divides both sides; otherwise libjpeg's last row and column stand for a partial strip and the resize would
    misplace them. None when the full decode must decide (other JPEG kinds, or the decoder refused it: `decode`
    then gives the reason)."""
    import cv2

    plain = _plain_jpeg(data)
    if plain is None:
        return None
    height, width, _, app1 = plain
    factor = next((f for f in (8, 4, 2) if height % f == width % f == 0 and min(height, width) >= 2 * size * f), 1)
    modes = (
        {
            1: cv2.IMREAD_GRAYSCALE,
            2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
            4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
            8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
        }
        if color == "gray"
        else {
            1: cv2.IMREAD_COLOR,
            2: cv2.IMREAD_REDUCED_COLOR_2,
            4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8,
        }
    )
    flag = modes[factor] | cv2.IMREAD_IGNORE_ORIENTATION  # EXIF orientation is applied below, as `decode` does
    try:
        pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    except cv2.error:
        return None
    if pixels is None or pixels.size == 0:
        return None
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    if app1:  # where EXIF lives; without it there is no orientation to apply
        pixels = _apply_exif_orientation(pixels, data)
    return resize(pixels[:, :, np.newaxis] if pixels.ndim == 2 else pixels, size)


# Mean |R - G| + |G - B| (0-255 levels) above which an image carries colour; JPEG noise on a gray picture stored as
# RGB stays below 1, a colour Doppler or a photograph is far above (measured on the demo X-rays and the field cases).
COLOUR_LEVELS = 3.0


COLOUR_SAMPLE = 48  # files looked at to judge a dataset's colour: enough for a majority, a second or two to read


def count_colour(paths: list[str | Path], sample: int, seed: int) -> tuple[int, int]:
    """(files that carry colour, files read) in a seeded sample of at most `sample` of `paths`
    (`carries_colour`); an unreadable file is skipped, not counted."""
    chosen = random.Random(seed).sample(list(paths), min(sample, len(paths)))
    colour = read = 0
    for path in chosen:
        try:
            colour += carries_colour(path)
        except Exception:  # an unreadable file is the scan's business; it just does not vote
            continue
        read += 1
    return colour, read


def carries_colour(source: str | Path | bytes) -> bool:
    """Whether an image file (or its bytes) shows colour, not gray copied into three channels: judged on a 32 px RGB
    version (`load_image`). Raises ImageReadError as `load_image`."""
    pixels = load_image(source, 32, "rgb").astype(np.float32)
    spread = np.abs(pixels[..., 0] - pixels[..., 1]).mean() + np.abs(pixels[..., 1] - pixels[..., 2]).mean()
    return bool(spread > COLOUR_LEVELS)
