"""A corpus of bad, odd and hostile inputs, written into a dataset folder next to real images.

Each `Case` says where the file goes and what medimg must do with it: read it (`readable=True`), or skip it and
list it with a reason containing `reason`. Hidden and OS files must not be listed at all (`listed=False`).
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from hypothesis import strategies as st
from PIL import Image


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    path: str  # relative to the dataset root: <class>/<file>
    readable: bool
    reason: str = ""
    listed: bool = True


def _png(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return data.tobytes()


def _jpeg(pixels: np.ndarray, **pil_options: object) -> bytes:
    stream = io.BytesIO()
    Image.fromarray(pixels).save(stream, format="JPEG", **pil_options)
    return stream.getvalue()


def _pil(image: Image.Image, fmt: str, **options: object) -> bytes:
    stream = io.BytesIO()
    image.save(stream, format=fmt, **options)
    return stream.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def huge_png(width: int = 50000, height: int = 50000) -> bytes:
    """A valid PNG header declaring width×height pixels, with a tiny (incomplete) image stream."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + _chunk(b"IEND", b"")
    )


def _dicom(
    pixels: np.ndarray,
    *,
    preamble: bool = True,
    photometric: str = "MONOCHROME2",
    frames: int = 1,
    pixel_data: bool = True,
    syntax: str = "1.2.840.10008.1.2.1",
) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality = "OT"
    dataset.Rows, dataset.Columns = pixels.shape[-2:]
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        dataset.NumberOfFrames = frames
    if pixel_data:
        dataset.PixelData = pixels.astype(np.uint16).tobytes()
    if syntax != ExplicitVRLittleEndian:  # a compressed syntax: encapsulate junk so decoding needs a plugin
        from pydicom.encaps import encapsulate

        dataset.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + b"\x00" * 64])
        dataset["PixelData"].VR = "OB"
    stream = io.BytesIO()
    dataset.save_as(stream, enforce_file_format=True)
    data = stream.getvalue()
    return data[132:] if not preamble else data  # neither the 128-byte preamble nor the "DICM" marker


def write_corpus(root: Path, real_image: Path) -> list[Case]:
    """Write every case under `root` (class folders `bad/` and `odd/`) and return what is expected of each."""
    rng = np.random.default_rng(0)
    real = cv2.imread(str(real_image), cv2.IMREAD_GRAYSCALE)
    small = cv2.resize(real, (32, 32), interpolation=cv2.INTER_AREA)
    real_png, real_jpeg = _png(small), _jpeg(small)
    ramp16 = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).astype(np.uint16)
    cases: list[Case] = []

    def add(
        path: str,
        data: bytes | None,
        readable: bool,
        reason: str = "",
        listed: bool = True,
        make: Callable[[Path], None] | None = None,
    ) -> None:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if make is not None:
            make(target)
        elif data is not None:
            target.write_bytes(data)
        cases.append(Case(path, path, readable, reason, listed))

    # Not images at all, or broken ones: skipped with a reason.
    add("bad/zero.png", b"", False, "empty file")
    add("bad/zero.dcm", b"", False, "empty file")
    add("bad/truncated.png", real_png[: len(real_png) // 2], False, "PNG")
    add("bad/truncated.jpg", real_jpeg[:200], False, "JPEG")
    add("bad/notes.png", b"patient list, do not share\n" * 20, False, "not an image")
    add("bad/notes.jpg", b"just text" * 50, False, "not an image")
    add("bad/notes.dcm", b"not a dicom file at all" * 20, False, "not an image")
    add("bad/program.png", b"\x7fELF\x02\x01\x01" + bytes(200), False, "not an image")
    add("bad/script.jpg", b"#!/bin/sh\nrm -rf /\n", False, "not an image")
    add("bad/page.jpeg", b"<html><body><img src=x onerror=alert(1)></body></html>", False, "not an image")
    add("bad/archive.png", b"PK\x03\x04" + bytes(100), False, "not an image")
    add("bad/document.png", b"%PDF-1.7\n" + bytes(100), False, "not an image")
    add("bad/data.png", b'{"pixels": [1, 2, 3]}', False, "not an image")
    add("bad/bomb.png", huge_png(), False, "megapixel limit")
    add("bad/wide.png", huge_png(200000, 1000), False, "megapixel limit")
    frames = [Image.fromarray(small), Image.fromarray(255 - small)]
    add("bad/animated.gif", _pil(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0), False, "GIF")
    add("bad/no_pixels.dcm", _dicom(ramp16, pixel_data=False), False, "no pixel data")
    add("bad/jpeg_lossless.dcm", _dicom(ramp16, syntax="1.2.840.10008.1.2.4.70"), False, "pylibjpeg")
    add("bad/dicm_junk.dcm", bytes(128) + b"DICM" + os.urandom(64), False, "DICOM")
    add("bad/folder.png", None, False, "", listed=False, make=lambda p: p.mkdir())
    # Odd but valid: read, converted to the model's channel mode.
    add("odd/sixteen_bit.png", _png(ramp16), True)
    rgba = np.dstack([np.stack([small] * 3, axis=-1), np.full_like(small, 128)])
    add("odd/rgba.png", _png(rgba), True)
    add("odd/palette.png", _pil(Image.fromarray(small).convert("P"), "PNG"), True)
    add("odd/cmyk.jpg", _pil(Image.fromarray(np.stack([small] * 3, axis=-1)).convert("CMYK"), "JPEG"), True)
    exif = Image.Exif()
    exif[0x0112] = 6
    add("odd/exif_rotated.jpg", _pil(Image.fromarray(small[:, :20]), "JPEG", exif=exif.tobytes()), True)
    add("odd/multipage.tif", _pil(frames[0], "TIFF", save_all=True, append_images=frames[1:]), True)
    add("odd/sixteen_bit.tif", _pil(Image.fromarray(ramp16), "TIFF"), True)
    add("odd/float.tif", _pil(Image.fromarray(ramp16.astype(np.float32) / 7.0), "TIFF"), True)
    add("odd/bitmap.bmp", _pil(Image.fromarray(small), "BMP"), True)
    add("odd/no_preamble.dcm", _dicom(ramp16, preamble=False), True)
    add("odd/monochrome1.dcm", _dicom(ramp16, photometric="MONOCHROME1"), True)
    add("odd/multiframe.dcm", _dicom(np.stack([ramp16, ramp16[::-1]]), frames=2), True)
    add("odd/X 光片 é ü.png", real_png, True)
    add("odd/deep/nested/further/image.png", real_png, True)
    add("odd/png_named.jpg", real_png, True)
    add("odd/no_extension", real_png, True)
    add("odd/trailing_garbage.jpg", real_jpeg + os.urandom(300), True)
    add("odd/noise.png", _png(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)), True)
    add("odd/tiny.png", _png(small[:2, :3]), True)
    # Never listed: hidden and operating-system files.
    add("odd/.DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(100), False, listed=False)
    add("odd/Thumbs.db", bytes(512), False, listed=False)
    add("odd/._image.png", b"\x00\x05\x16\x07" + bytes(80), False, listed=False)
    add("odd/.hidden.png", real_png, False, listed=False)
    # Links: a loop and one pointing outside the dataset are refused, not followed.
    add(
        "bad/loop.png",
        None,
        False,
        "symbolic link",
        make=lambda p: (os.symlink(p.with_name("loop2.png"), p), os.symlink(p, p.with_name("loop2.png"))),
    )
    cases.append(Case("bad/loop2.png", "bad/loop2.png", False, "symbolic link"))
    outside = root.parent / f"{root.name}-outside.png"
    outside.write_bytes(real_png)
    add("bad/outside.png", None, False, "outside the dataset", make=lambda p: os.symlink(outside, p))
    return cases


def byte_edits(max_size: int) -> st.SearchStrategy[list[tuple[int, int, str]]]:
    """Hypothesis edits for `mutate`: (position, value, kind) with kind set, insert, delete or cut."""
    edit = st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.sampled_from(["set", "insert", "delete", "cut"]))
    return st.lists(edit, min_size=1, max_size=max_size)


def mutate(data: bytes, edits: list[tuple[int, int, str]]) -> bytes:
    """`data` with bytes set, inserted or deleted, or cut short, in the order of `edits`."""
    mutated = bytearray(data)
    for position, value, kind in edits:
        if not mutated:
            break
        index = position % len(mutated)
        if kind == "set":
            mutated[index] = value
        elif kind == "insert":
            mutated[index:index] = bytes([value]) * (1 + value % 16)
        elif kind == "delete":
            del mutated[index : index + 1 + value % 64]
        else:
            del mutated[index:]
    return bytes(mutated)
