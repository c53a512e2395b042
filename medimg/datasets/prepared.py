"""A run's data, prepared: listed, split and decoded once (cached), with the contract prediction must follow.

Below both `training` and `evaluation`, which each start from it, so neither imports the other for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from medimg.config import DatasetConfig
from medimg.datasets import cache, datachecks, dataset, scanning
from medimg.datasets.cache import CachedArrays
from medimg.errors import DatasetError
from medimg.imaging.contract import InputContract


@dataclasses.dataclass
class PreparedData:
    """Decoded arrays per split, the class names they index, and what could not be read."""

    class_names: list[str]
    arrays: dict[str, CachedArrays]
    splits: dataset.Splits
    unreadable: list[dict[str, str]]
    contract: InputContract  # how every array above was decoded
    warnings: list[str] = dataclasses.field(default_factory=list)  # said at the start of a run (datachecks)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.arrays["train"].images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def val_one_class(self) -> bool:
        """Whether the validation split's images are all of one class (`datachecks.one_class_reason`)."""
        return len(np.unique(self.arrays["val"].labels)) < 2

    @property
    def undefined_metrics(self) -> tuple[str, ...]:
        """Validation metrics that mean nothing here: AUC needs both classes in the validation split."""
        return ("val_auc",) if self.val_one_class else ()

    def usable_objective(self, objective: str) -> str:
        """The objective a search or early stopping can follow on this data: validation loss when the validation
        split has one class (AUC is undefined there, and accuracy rewards calling everything that class)."""
        return "val_loss" if self.val_one_class and not objective.endswith("loss") else objective

    def groups(self, split: str) -> list[str] | None:
        """The group (patient) of each decoded image of `split`, in array order; None when the dataset names none."""
        files = dict(self.splits.items())[split]
        if not any(f.group for f in files):
            return None
        group_of = {f.path: f.group or f.path for f in files}
        return [group_of.get(path, path) for path in self.arrays[split].paths]

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
            "warnings": self.warnings,
        }


def prepare_data(config: DatasetConfig, on_progress: Callable[[int, int, str], None] | None = None) -> PreparedData:
    """Scan, split and decode (once, cached) the dataset a run uses.

    The split is made from the files the scan could read (`scanning.scan`, cached by path, size and modification
    time, so a dataset the Dataset page already showed is not read again): exactly the split that page previews,
    and the scan's warnings (classes left out, manifest labels) are said before any decoding. An unreadable file
    used to be split with the rest and only dropped at decoding, which shifted every split away from the preview.
    """
    report = scanning.scan(config.path, config.group_regex, on_progress, merge_label_case=config.merge_label_case)
    splits = dataset.make_splits(report.files, config.val_fraction, config.test_fraction, config.seed)
    arrays = {}
    contract = InputContract.from_config(config)
    unreadable = list(report.unreadable)
    scanned_splits = datachecks.split_warnings(report.splits)  # recounted below on what was decoded
    warnings = [w for w in report.warnings if w not in scanned_splits]
    for name, files in splits.items():
        arrays[name] = cache.load_arrays(
            [f.path for f in files],
            splits.labels(name),
            contract,
            on_progress,
        )
        unreadable += arrays[name].failures
    class_names, arrays, changed = _leave_out_unusable_classes(splits, arrays)
    warnings += changed
    if len(class_names) < 2:
        raise DatasetError(
            f"only {len(class_names)} class has readable images; a classifier needs two. " + " ".join(warnings)
        )
    for name in ("train", "val"):
        present = set(np.unique(arrays[name].labels).tolist())
        if name == "train" and len(present) < len(class_names):
            missing = [c for i, c in enumerate(class_names) if i not in present]
            raise DatasetError(
                f"no readable training images for class {', '.join(missing)}; "
                f"{len(unreadable)} file{'s were' if len(unreadable) != 1 else ' was'} unreadable (see the scan "
                "report)."
            )
        if len(arrays[name]) == 0:
            raise DatasetError(f"no readable images in the {name} split; check the scan report.")
    if len(arrays["test"]) == 0:  # found before training, not after it when the evaluation needs it
        raise DatasetError(
            "the test split is empty, so the model could not be evaluated; use a test fraction above 0 or add a "
            "test/ folder."
        )
    counts = {name: {c: int(np.sum(a.labels == i)) for i, c in enumerate(class_names)} for name, a in arrays.items()}
    warnings += datachecks.split_warnings(counts)
    return PreparedData(class_names, arrays, splits, unreadable, contract, warnings)


def _leave_out_unusable_classes(
    splits: dataset.Splits, arrays: dict[str, CachedArrays]
) -> tuple[list[str], dict[str, CachedArrays], list[str]]:
    """Class names, arrays relabelled to them, and warnings, once classes that no longer have a readable image are
    left out (the scan read them; every one of their files changed or went since). Their files all failed, so no
    array row belongs to them and relabelling only closes the gaps in the label numbers."""
    listed = {c: sum(f.label == c for _, files in splits.items() for f in files) for c in splits.class_names}
    readable = {c: sum(int(np.sum(a.labels == i)) for a in arrays.values()) for i, c in enumerate(splits.class_names)}
    warnings = datachecks.class_warnings(listed, readable)
    left_out = set(datachecks.unusable_classes(listed, readable))
    if not left_out:
        return list(splits.class_names), arrays, warnings
    kept = [c for c in splits.class_names if c not in left_out]
    new_label = np.array([kept.index(c) if c in kept else -1 for c in splits.class_names])
    relabelled = {
        name: dataclasses.replace(a, labels=new_label[np.asarray(a.labels, int)].astype(a.labels.dtype))
        for name, a in arrays.items()
    }
    return kept, relabelled, warnings
