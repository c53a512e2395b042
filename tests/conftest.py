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
