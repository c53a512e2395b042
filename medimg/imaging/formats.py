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
    sample_format: str = "uint"  # "uint", "int" or "float": how the stored samples are to be read

    @property
    def depth_name(self) -> str:
        """The stored depth as the scan report names it: "8-bit", "12-bit", or "32-bit float"."""
        return f"{self.bit_depth}-bit float" if self.sample_format == "float" else f"{self.bit_depth}-bit"
