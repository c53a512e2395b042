"""Shared fixtures: real data paths, an isolated cache and runs folder per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PROJECT = Path(__file__).resolve().parents[1]
DEMO = PROJECT / "medimg" / "demo" / "chest_xray_mini"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session decodes into its own cache, so no test passes thanks to a stale entry."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["MEDIMG_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(autouse=True)
def isolated_runs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test starts with its own empty runs folder (a test may point it elsewhere), so no test writes the
    project's ./runs or reads choices another test kept there (runs/choices.json is read when a page starts)."""
    path = tmp_path_factory.mktemp("runs")
    monkeypatch.setenv("MEDIMG_RUNS_DIR", str(path))
    # Nor do weight files on this machine decide a test: an empty Keras home, no weights folder, no downloads.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))
    monkeypatch.delenv("MEDIMG_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("MEDIMG_ALLOW_DOWNLOADS", raising=False)
    return path


@pytest.fixture(scope="module")
def eager_functions() -> Iterator[None]:
    """TensorFlow functions run eagerly for one test module (`pytestmark = pytest.mark.usefixtures(...)`): the same
    fit and Grad-CAM code, without tracing graphs that take longer to build than tiny test models take to train."""
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


@pytest.fixture()
def demo_dir() -> Path:
    return DEMO


# A copy of the shared BreastMNIST export (780 PNGs, 0.5 MB of pixels, CC BY 4.0; provenance and attribution in its
# README), so a fresh clone passes its own tests; ../shared/datasets serves bench/.
BREASTMNIST = PROJECT / "tests" / "data" / "breastmnist"


@pytest.fixture()
def breastmnist_dir() -> Path:
    return BREASTMNIST


def train_demo_run(folder: Path, params: dict | None = None, color: str = "gray", epochs: int = 2):
    """A completed train run on the bundled demo at 16 px (a small CNN; `params` override ModelParams fields),
    trained in this process through `jobs.execute`: the real path a run takes, kept small for the tests."""
    from medimg import jobs
    from medimg.config import DatasetConfig, ModelParams, RunSpec, TrainConfig
    from medimg.store import runs

    spec = RunSpec(
        kind="train",
        dataset=DatasetConfig(path=str(DEMO), image_size=16, color=color),
        params=ModelParams(**{"filters": (8,), "dense_units": 8, **(params or {})}),
        train=TrainConfig(epochs=epochs, early_stopping_patience=0, reduce_lr_patience=0),
    )
    run = runs.create_run(spec, folder)
    jobs.execute(run)
    assert run.record["status"] == "completed", (
        (run.path / "log.txt").read_text()[-2000:] if (run.path / "log.txt").exists() else run.record
    )
    return run


def three_class_manifest(folder: Path, numbered: bool = False) -> Path:
    """The demo's X-rays as three classes, NORMAL, BACTERIA and VIRUS (the pneumonia files name their cause), copied
    under `folder` with a manifest.csv (path, label, split) that keeps the demo's splits. Returns the manifest.
    `numbered`: labels 0_normal, 1_bacteria, 2_virus, named as graded labels are exported (not a clinical order:
    a stand-in that exercises the graded-class path on real images)."""
    import csv
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "manifest.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "label", "split"])
        for path in sorted(DEMO.rglob("*.jpeg")):
            label = "NORMAL" if path.parent.name == "NORMAL" else path.name.split("_")[1].upper()
            if numbered:
                label = f"{('NORMAL', 'BACTERIA', 'VIRUS').index(label)}_{label.lower()}"
            writer.writerow([str(path.relative_to(DEMO)), label, path.parts[-3]])
            target = folder / path.relative_to(DEMO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    return folder / "manifest.csv"


def never_calling(run, class_name: str) -> dict:
    """Make `run`'s model never call `class_name` at the arg-max, and re-evaluate the run; returns the evaluation.

    The output bias of `class_name` is lowered by 50 and the two other classes' biases are evened so that the test
    images split between them (the median of their log-probability difference moves to 0): the arg-max then calls
    two classes, never the third, whatever one epoch of training learnt. The shift is `models.undo_class_weights`'
    (b_k -= log w_k); the model is kept with `Run.save_model`, so its hash is recorded and it loads as any other."""
    import numpy as np

    from medimg.model import models
    from medimg.results import evaluation

    scored = evaluation.load_scored(run)["test"]
    silenced = scored.class_names.index(class_name)
    first, second = [k for k in range(len(scored.class_names)) if k != silenced]
    log_probs = np.log(np.clip(scored.probs, 1e-12, None))
    shifts = {k: 0.0 for k in range(len(scored.class_names))}
    shifts[silenced] = 50.0
    shifts[first] = float(np.median(log_probs[:, first] - log_probs[:, second]))
    model = models.load_run_model(run)
    models.undo_class_weights(model, {k: float(np.exp(shift)) for k, shift in shifts.items()})
    run.save_model(model)
    return evaluation.evaluate_run(run)


def three_class_run(tmp_path_factory: pytest.TempPathFactory, name: str, numbered: bool = False):
    """A completed train run on `three_class_manifest(numbered=...)`: 16 px, an 8-filter CNN, one epoch."""
    from medimg import jobs
    from medimg.config import DatasetConfig, ModelParams, RunSpec, TrainConfig
    from medimg.store import runs

    manifest = three_class_manifest(tmp_path_factory.mktemp(name), numbered=numbered)
    spec = RunSpec(
        kind="train",
        dataset=DatasetConfig(path=str(manifest), image_size=16),
        params=ModelParams(filters=(8,), dense_units=8),
        train=TrainConfig(epochs=1),
    )
    run = runs.create_run(spec, tmp_path_factory.mktemp(f"{name}-runs"))
    jobs.execute(run)
    return run


@pytest.fixture(scope="session")
def never_calling_run(tmp_path_factory: pytest.TempPathFactory, isolated_cache: Path):
    """A completed three-class train run (`three_class_run`) whose model never calls VIRUS on test and calls both
    other classes (`never_calling`): RetinaMNIST's runs never called grade 4 so."""
    run = three_class_run(tmp_path_factory, "three-classes")
    never_calling(run, "VIRUS")
    return run


@pytest.fixture(scope="session")
def graded_run(tmp_path_factory: pytest.TempPathFactory, isolated_cache: Path):
    """A completed three-class train run whose classes are named as grades (`three_class_run(numbered=True)`)."""
    return three_class_run(tmp_path_factory, "graded", numbered=True)
