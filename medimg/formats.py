"""Facts about image files that every decoder shares: what a file held (`ImageInfo`) and the pixel-count limit.

Below both `images` (the dispatcher) and `dicom` (one decoder), so neither imports the other for them.
"""

from __future__ import annotations

import dataclasses

# 64 megapixels: far above any radiograph we resize to <= 1024 px, far below a decompression bomb.
MAX_IMAGE_PIXELS = 1 << 26


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What a file held before conversion: shown in the scan report."""

    format: str
    width: int
    height: int
    channels: int
    bit_depth: int
    note: str = ""
