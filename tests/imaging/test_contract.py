"""The input contract: one frozen record of how a file becomes a run's model input, kept in run.json."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from medimg.config import DatasetConfig
from medimg.errors import RunError
from medimg.imaging import dicom, images
from medimg.imaging.contract import InputContract
from tests.conftest import DEMO

XRAY = sorted((DEMO / "test" / "PNEUMONIA").glob("*.jpeg"))[0]


def test_the_contract_is_the_run_json_input_record_and_back() -> None:
    config = DatasetConfig(image_size=48, color="rgb", window_center=-600, window_width=1500)
    contract = InputContract.from_config(config)
    assert contract.to_json() == {"image_size": 48, "color": "rgb", "channels": 3, "dicom_window": [-600.0, 1500.0]}
    assert InputContract.from_record({"input": contract.to_json()}) == contract
    assert contract.window == dicom.DicomWindow(-600.0, 1500.0)
    assert InputContract.from_config(DatasetConfig()).window is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        contract.image_size = 64  # type: ignore[misc]


def test_a_record_without_a_model_and_a_wrong_colour_are_refused() -> None:
    with pytest.raises(RunError, match="run r1 has no input contract yet"):
        InputContract.from_record({"status": "queued"}, "r1")
    with pytest.raises(ValueError, match="color must be 'gray' or 'rgb'"):
        InputContract(32, "RGB")


def test_load_gives_the_contracts_shape_from_a_path_or_bytes_and_names_a_bad_file(tmp_path) -> None:
    gray, rgb = InputContract(24, "gray"), InputContract(24, "rgb")
    assert gray.load(XRAY).shape == (24, 24, 1) and gray.load(XRAY).dtype == np.uint8
    np.testing.assert_array_equal(rgb.load(XRAY.read_bytes()), images.load_image(XRAY, 24, "rgb"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    loaded, failures = gray.load_many([str(XRAY), str(broken)], [1, 0])
    assert [i for i, _ in loaded] == [0] and len(failures) == 1 and failures[0].startswith("broken.png: ")
