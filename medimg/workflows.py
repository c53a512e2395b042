"""Workflows: a train or tune run from fit to evaluation, and the final training after a search.

The layer above both `training`/`tuning` (which fit and save a model) and `evaluation` (which tests it): the
stages of a run meet here, so neither of them imports the other.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from medimg.config import AugmentConfig, DatasetConfig, ModelParams, RunSpec, TrainConfig
from medimg.errors import RunError
from medimg.store.runs import Run

if TYPE_CHECKING:
    from medimg.datasets.prepared import PreparedData
    from medimg.model.training import Fitted

Echo = Callable[[str], None]


def execute_train(run: Run, echo: Echo | None = None) -> dict[str, Any]:
    """Carry out a train run from its record: prepare, fit (resumable), save, evaluate. Returns the test metrics.

    Raises what fitting raises (`errors.MedimgError` with a one-line reason); a loss that became NaN after a
    good epoch raises once that epoch's model is saved and evaluated."""
    from medimg.model import training

    return evaluate_fitted(run, training.fit_train_run(run, echo))


def execute_tune(run: Run, echo: Echo | None = None) -> dict[str, Any]:
    """Carry out a tune run from its record: search, save the best model, evaluate. Returns the test metrics ({} on
    a distributed worker)."""
    from medimg.model import tuning

    fitted = tuning.search_run(run, echo)
    return {} if fitted is None else evaluate_fitted(run, fitted)


def evaluate_fitted(run: Run, fitted: Fitted) -> dict[str, Any]:
    """Profile the training images (`save_image_profile`), test a run's saved model (`evaluation.evaluate_run`),
    then end as fitting said: stopped with its message, the deferred error raised, or the resume backup removed."""
    from medimg.results import evaluation

    save_image_profile(run, fitted.data)
    metrics = evaluation.evaluate_run(run, fitted.data, fitted.model)
    if fitted.error is not None:
        raise fitted.error
    if fitted.stopped:
        run.set_status("stopped", message=fitted.stopped)
    elif fitted.backup is not None:
        shutil.rmtree(fitted.backup, ignore_errors=True)
    return metrics


def save_image_profile(run: Run, data: PreparedData) -> None:
    """Write `novelty.PROFILE_FILE` in the run: the training split's image profile, its threshold set on the
    validation split, which Predict uses to say an upload is unlike the training images. Every run that keeps a
    model passes here (train, tune and automatic runs, a resumed one), so the profile is there with model.keras;
    runs saved before it have none and get no such note. Takes a second or two (thumbnails of the cached arrays)."""
    from medimg.datasets import novelty
    from medimg.errors import ConfigError
    from medimg.imaging import images

    train, seed = data.arrays["train"], run.spec.dataset.seed
    colour = images.count_colour(list(train.paths), images.COLOUR_SAMPLE, seed)  # (0, 0) when none is readable
    try:
        profile = novelty.fit_profile(train.images, data.arrays["val"].images, seed, colour if colour[1] else None)
    except ConfigError as error:  # too few images to profile: the model is still kept, only the caution is missing
        run.append_event("warning", message=f"no image profile for Predict's caution: {error}")
        return
    run.write_json(novelty.PROFILE_FILE, profile.to_dict())


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

    Raises RunError when the search has no best hyperparameters (not finished, or every trial failed).
    """
    record = search.record
    if not record.get("best_params"):
        raise RunError(
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
