"""The workbench's current choices (dataset, augmentation, search ranges, training and model settings), kept in
one JSON file beside the runs so that a reload, a second tab or a second launch of the app shows what was chosen.

The file holds each configuration's `to_dict()`; an entry that no longer parses (an older medimg, a hand edit) is
dropped with a log line and its default used, so a damaged file never stops the app.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from medimg.config import AugmentConfig, DatasetConfig, ModelParams, SearchSpace, TrainConfig, TuneConfig
from medimg.errors import MedimgError
from medimg.store.runs import runs_root, write_json_atomic

FILE_NAME = "choices.json"
KINDS: dict[str, type] = {
    "dataset": DatasetConfig,
    "augment": AugmentConfig,
    "search": SearchSpace,
    "tune": TuneConfig,
    "train": TrainConfig,  # a search's per-trial fit (the Tune page)
    "final": TrainConfig,  # a training set by hand (the Train page)
    "params": ModelParams,
}
log = logging.getLogger(__name__)


def choices_path(root: str | Path | None = None) -> Path:
    return runs_root(root) / FILE_NAME


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.warning("ignoring %s: %s", path, error)
        return {}
    return data if isinstance(data, dict) else {}


def load(root: str | Path | None = None) -> dict[str, Any]:
    """The kept choices under the runs `root`: name → configuration object, for the entries that parse."""
    found = {}
    for name, value in _read(choices_path(root)).items():
        kind = KINDS.get(name)
        if kind is None or not isinstance(value, dict):
            continue
        try:
            found[name] = kind.from_dict(value)
        except (MedimgError, TypeError, ValueError) as error:
            log.warning("ignoring the kept %s choice: %s", name, error)
    return found


def save(name: str, value: Any, root: str | Path | None = None) -> None:
    """Keep one choice (a configuration of `KINDS[name]`); the other kept choices stay as they are.

    Raises KeyError for a name outside `KINDS`, TypeError for a value of the wrong type."""
    kind = KINDS[name]
    if not isinstance(value, kind):
        raise TypeError(f"the {name} choice must be {kind.__name__}, not {type(value).__name__}")
    path = choices_path(root)
    current = _read(path)
    if current.get(name) == value.to_dict():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {**current, name: value.to_dict()})
