"""A dataset-wide DICOM window: chosen once, used by the decode cache, training, the run's contract and prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from medimg import jobs
from medimg.config import DatasetConfig, ModelParams, RunSpec, TrainConfig
from medimg.datasets import cache
from medimg.errors import ConfigError
from medimg.imaging import dicom, images
from medimg.imaging.contract import InputContract
from medimg.results import evaluation
from medimg.results.predict import Predictor
from medimg.store import runs
from tests.app.conftest import open_page
from tests.conftest import PROJECT
from tests.test_phi import ct_dicom, ct_image

LUNG = dicom.CT_WINDOWS["lung"]


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ct") / "data"
    rng = np.random.default_rng(1)
    for label, lesion in (("clear", False), ("lesion", True)):
        (root / label).mkdir(parents=True)
        for i in range(12):
            (root / label / f"{i:02d}.dcm").write_bytes(ct_dicom(ct_image(rng, lesion)))
    return root


def test_the_window_is_validated_and_optional() -> None:
    assert DatasetConfig().window is None
    assert DatasetConfig(window_center=-600, window_width=1500).window == (-600, 1500)
    with pytest.raises(ConfigError, match=r"DICOM window width 1 must be above 1"):
        DatasetConfig(window_center=40, window_width=1)


def test_the_cache_keeps_one_entry_per_window(ct_folder: Path, tmp_path: Path) -> None:
    paths = [str(p) for p in sorted(ct_folder.glob("*/*.dcm"))]
    labels = [0] * len(paths)
    header = cache.load_arrays(paths, labels, InputContract(16, "gray"), directory=tmp_path)
    lung = cache.load_arrays(paths, labels, InputContract(16, "gray", (LUNG.center, LUNG.width)), directory=tmp_path)
    assert cache.cache_key(paths, InputContract(16, "gray")) != cache.cache_key(
        paths, InputContract(16, "gray", (LUNG.center, LUNG.width))
    )
    assert not np.array_equal(np.asarray(header.images), np.asarray(lung.images))
    expected = images.load_image(paths[0], 16, "gray", window=LUNG)
    np.testing.assert_array_equal(np.asarray(lung.images[0]), expected)


@pytest.mark.slow
def test_training_records_the_window_and_prediction_and_the_evaluate_page_apply_it(
    ct_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = RunSpec(
        kind="train",
        dataset=DatasetConfig(path=str(ct_folder), image_size=16, window_center=LUNG.center, window_width=LUNG.width),
        train=TrainConfig(epochs=1),
        params=ModelParams(filters=(8,), dense_units=8),
    )
    run = runs.create_run(spec, tmp_path)
    jobs.execute(run)
    assert run.record["input"]["dicom_window"] == [LUNG.center, LUNG.width]
    predictor = Predictor(run)
    file = next(ct_folder.glob("lesion/*.dcm"))
    np.testing.assert_array_equal(predictor.prepare(file), images.load_image(file, 16, "gray", window=LUNG))
    assert not np.array_equal(predictor.prepare(file), images.load_image(file, 16, "gray"))  # not the header's

    # The Evaluate page's confusion-cell gallery and Grad-CAMs decode the test images as the model was tested on
    # them: every test file it reads goes through the run's window (it once used each file's header window).
    monkeypatch.setenv("MEDIMG_RUNS_DIR", str(tmp_path))
    test_paths = set(evaluation.load_scored(run)["test"].paths)
    windows: list[tuple[str, object]] = []
    real = images.load_image

    def recording(source, *args, **kwargs):
        windows.append((str(source), kwargs.get("window")))
        return real(source, *args, **kwargs)

    monkeypatch.setattr(images, "load_image", recording)
    at = open_page("evaluate", run=run.id)
    assert not at.exception
    gallery = [window for source, window in windows if source in test_paths]
    assert gallery and all(window == LUNG for window in gallery)
    loaded, failures = run.input_contract.load_many(sorted(test_paths), [0])
    assert not failures
    np.testing.assert_array_equal(loaded[0][1], real(sorted(test_paths)[0], 16, "gray", window=LUNG))


def test_the_dataset_page_offers_windows_for_dicom_data(ct_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIMG_DATA_ROOTS", str(ct_folder.parent))
    at = AppTest.from_file(str(PROJECT / "app.py"), default_timeout=60)
    at.run()
    at.radio(key="dataset_source").set_value("Folder on the server").run()
    next(s for s in at.selectbox if s.label == "Folder").set_value(str(ct_folder)).run()
    window = next(s for s in at.selectbox if s.label == "DICOM window")
    assert window.value == "each file's own (header)" and "lung" in window.options
    window.set_value("lung").run()
    assert not at.exception
    assert at.session_state["dataset"].window == (LUNG.center, LUNG.width)
    assert "DICOM window -600/1500" in at.success[0].value
