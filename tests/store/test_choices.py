"""The workbench's choices kept beside the runs: what one session saves, the next reads back."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from medimg.config import AugmentConfig, DatasetConfig, SearchSpace
from medimg.store import choices


def test_saved_choices_come_back_as_the_same_configurations(tmp_path: Path) -> None:
    augment = AugmentConfig(flip_horizontal=True, rotation=0.05)
    dataset = DatasetConfig(path="/data/xrays", image_size=32, seed=7)
    choices.save("augment", augment, tmp_path)
    choices.save("dataset", dataset, tmp_path)
    assert choices.load(tmp_path) == {"augment": augment, "dataset": dataset}
    choices.save("augment", AugmentConfig(), tmp_path)  # one choice changes, the other stays
    assert choices.load(tmp_path) == {"augment": AugmentConfig(), "dataset": dataset}


def test_nothing_kept_yet_is_no_choice(tmp_path: Path) -> None:
    assert choices.load(tmp_path / "not-yet") == {}


def test_a_damaged_or_outdated_entry_is_dropped_and_the_rest_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    search = SearchSpace.quick()
    kept = {"search": search.to_dict(), "augment": {"rotation": 9.0}, "unknown": {"a": 1}, "dataset": "text"}
    choices.choices_path(tmp_path).write_text(json.dumps(kept))
    with caplog.at_level(logging.WARNING, logger="medimg.store.choices"):
        assert choices.load(tmp_path) == {"search": search}
    assert "ignoring the kept augment choice" in caplog.text
    choices.choices_path(tmp_path).write_text('{"search": ')
    assert choices.load(tmp_path) == {}


def test_a_choice_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="the augment choice must be AugmentConfig, not DatasetConfig"):
        choices.save("augment", DatasetConfig(path="x"), tmp_path)
    with pytest.raises(KeyError):
        choices.save("colour", AugmentConfig(), tmp_path)
