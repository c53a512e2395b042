"""A run's data, prepared: listed, split and decoded once (cached), with the contract prediction must follow.

Below both `training` and `evaluation`, which each start from it, so neither imports the other for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from medimg import cache, dataset
from medimg.cache import CachedArrays
from medimg.config import DatasetConfig
from medimg.errors import DatasetError


@dataclasses.dataclass
class PreparedData:
    """Decoded arrays per split, the class names they index, and what could not be read."""

    class_names: list[str]
    arrays: dict[str, CachedArrays]
    splits: dataset.Splits
    unreadable: list[dict[str, str]]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.arrays["train"].images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> dict[str, Any]:
        counts = {
            name: {c: int(np.sum(a.labels == i)) for i, c in enumerate(self.class_names)}
            for name, a in self.arrays.items()
        }
        return {
            "class_names": self.class_names,
            "split_counts": counts,
            "split_source": self.splits.source,
            "unreadable": self.unreadable,
            "group_overlap": sorted(self.splits.group_overlap()),
        }


def prepare_data(config: DatasetConfig, on_progress: Callable[[int, int, str], None] | None = None) -> PreparedData:
    """List, split and decode (once, cached) the dataset a run uses."""
    listing = dataset.list_files(config.path, config.group_regex)
    splits = dataset.make_splits(listing.files, config.val_fraction, config.test_fraction, config.seed)
    arrays = {}
    unreadable = [{"path": p.path, "reason": p.reason} for p in listing.problems]
    for name, files in splits.items():
        arrays[name] = cache.load_arrays(
            [f.path for f in files],
            splits.labels(name),
            config.image_size,
            config.color,
            on_progress,
            window=dicom_window(config),
        )
        unreadable += arrays[name].failures
    for name in ("train", "val"):
        present = set(np.unique(arrays[name].labels).tolist())
        if name == "train" and len(present) < len(splits.class_names):
            missing = [c for i, c in enumerate(splits.class_names) if i not in present]
            raise DatasetError(
                f"no readable training images for class {', '.join(missing)}; "
                f"{len(unreadable)} files were unreadable (see the scan report)."
            )
        if len(arrays[name]) == 0:
            raise DatasetError(f"no readable images in the {name} split; check the scan report.")
    if len(arrays["test"]) == 0:  # found before training, not after it when the evaluation needs it
        raise DatasetError(
            "the test split is empty, so the model could not be evaluated; use a test fraction above 0 or add a "
            "test/ folder."
        )
    return PreparedData(splits.class_names, arrays, splits, unreadable)


def input_contract(config: DatasetConfig) -> dict[str, Any]:
    """What prediction must do to a file to feed this run's model: size, channel mode, DICOM window."""
    return {
        "image_size": config.image_size,
        "color": config.color,
        "channels": config.channels,
        "dicom_window": list(config.window) if config.window else None,
    }


def dicom_window(config: DatasetConfig) -> Any:
    from medimg.dicom import DicomWindow

    return DicomWindow(*config.window) if config.window else None
