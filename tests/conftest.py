"""Shared fixtures: real data paths, an isolated cache and runs folder per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PROJECT = Path(__file__).resolve().parents[1]
DEMO = PROJECT / "medimg" / "demo" / "chest_xray_mini"
SHARED_DATASETS = PROJECT.parent / "shared" / "datasets"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session decodes into its own cache, so no test passes thanks to a stale entry."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["MEDIMG_CACHE_DIR"] = str(path)
    return path


@pytest.fixture()
def demo_dir() -> Path:
    return DEMO


@pytest.fixture()
def breastmnist_dir() -> Path:
    path = SHARED_DATASETS / "breastmnist"
    if not path.is_dir():
        # The project's machines and CI always have shared/ beside the checkout: a missing dataset is a broken
        # setup, and skipping would let these tests pass without testing anything.
        pytest.fail(f"{path} is missing: these tests need the shared BreastMNIST export next to the checkout.")
    return path
