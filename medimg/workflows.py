"""Workflows that join several runs: today, the final training after a search."""

from __future__ import annotations

from medimg.config import AugmentConfig, DatasetConfig, ModelParams, RunSpec, TrainConfig
from medimg.errors import MedimgError
from medimg.runs import Run


def train_spec_from_search(
    search: Run,
    *,
    dataset: DatasetConfig | None = None,
    augment: AugmentConfig | None = None,
    train: TrainConfig | None = None,
    epochs: int | None = None,
) -> RunSpec:
    """The spec of the final training after a search: the search's best hyperparameters, its dataset and
    augmentation unless given, and the final-fit schedule (`TrainConfig.final_fit`: more epochs, longer patience,
    the best epoch restored) unless a training config is given. `epochs` overrides the number of epochs last.

    Raises MedimgError when the search has no best hyperparameters (not finished, or every trial failed).
    """
    record = search.record
    if not record.get("best_params"):
        raise MedimgError(
            f"run {search.id} has no best hyperparameters (status: {search.status}); pick a completed tune run."
        )
    source = search.spec
    train = train or source.train.final_fit(source.tune.objective)
    if epochs:
        train = train.replace(epochs=epochs)
    return RunSpec(
        kind="train",
        dataset=dataset or source.dataset,
        augment=augment or source.augment,
        train=train,
        params=ModelParams.from_dict(record["best_params"]),
        distribution=source.distribution,
    )
