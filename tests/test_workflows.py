"""Training after a search: the search's best point, dataset and augmentation, and the final-fit schedule."""

from __future__ import annotations

from pathlib import Path

import pytest

from medimg import workflows
from medimg.config import AugmentConfig, DatasetConfig, ModelParams, RunSpec, SearchSpace, TrainConfig, TuneConfig
from medimg.errors import MedimgError
from medimg.store import runs
from tests.conftest import DEMO


def finished_search(root: Path) -> runs.Run:
    """A search's record with a best point, written here: planning the training that follows reads only the record."""
    spec = RunSpec(
        kind="tune",
        dataset=DatasetConfig(path=str(DEMO), image_size=24, color="gray", seed=5),
        augment=AugmentConfig(flip_horizontal=True),
        train=TrainConfig(epochs=12, early_stopping_patience=3, reduce_lr_patience=0),
        search=SearchSpace.quick(),
        tune=TuneConfig(objective="val_loss"),
    )
    run = runs.create_run(spec, root)
    run.update(best_params=ModelParams(filters=(16, 32), dropout=0.25).to_dict())
    return run


def test_the_final_fit_trains_longer_than_a_trial_and_keeps_the_best_epoch(tmp_path: Path) -> None:
    search = finished_search(tmp_path)
    spec = workflows.train_spec_from_search(search)
    assert spec.kind == "train" and spec.params == ModelParams(filters=(16, 32), dropout=0.25)
    assert spec.dataset == search.spec.dataset and spec.augment == search.spec.augment
    assert spec.train.epochs == 50 and spec.train.early_stopping_patience == 10
    assert spec.train.monitor == "val_loss" and spec.train.reduce_lr_patience == 4
    assert workflows.train_spec_from_search(search, epochs=7).train.epochs == 7
    given = TrainConfig(epochs=3)
    assert workflows.train_spec_from_search(search, train=given).train == given


def test_a_search_without_a_best_point_is_refused(tmp_path: Path) -> None:
    run = runs.create_run(RunSpec(kind="tune", dataset=DatasetConfig(path=str(DEMO))), tmp_path)
    with pytest.raises(MedimgError, match="has no best hyperparameters"):
        workflows.train_spec_from_search(run)
