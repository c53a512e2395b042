"""Bad input gets a clear reason and the rest goes on: the corpus of tests/corpus.py through scan, training and
prediction, plus a bounded mutation fuzz of the image reader."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medimg import jobs
from medimg.config import DatasetConfig, ModelParams, RunSpec, TrainConfig
from medimg.datasets import scanning
from medimg.errors import ImageReadError
from medimg.imaging import images
from medimg.results.predict import Predictor
from medimg.store import runs
from tests.conftest import DEMO, PROJECT
from tests.corpus import Case, byte_edits, mutate, write_corpus

REAL = sorted((DEMO / "train" / "NORMAL").glob("*.jpeg"))[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Case]]:
    root = tmp_path_factory.mktemp("corpus") / "data"
    cases = write_corpus(root, REAL)
    # Real images next to the bad ones, so the dataset is still trainable: "bad" and "odd" become two classes.
    for label, source in (("bad", "NORMAL"), ("odd", "PNEUMONIA")):
        for image in sorted((DEMO / "train" / source).glob("*.jpeg"))[:12]:
            shutil.copy(image, root / label / image.name)
    return root, cases


def outcome_table(root: Path, cases: list[Case], report: scanning.ScanReport) -> list[tuple[str, str, str]]:
    unreadable = {os.path.relpath(item["path"], root): item["reason"] for item in report.unreadable}
    readable = {os.path.relpath(file.path, root) for file in report.files}
    rows = []
    for case in cases:
        outcome = "read" if case.path in readable else "skipped" if case.path in unreadable else "not listed"
        rows.append((case.path, outcome, unreadable.get(case.path, "")))
    return rows


def test_corpus_is_large_enough(corpus: tuple[Path, list[Case]]) -> None:
    _, cases = corpus
    assert len(cases) >= 40
    assert sum(not case.readable and case.listed for case in cases) >= 20


def test_scan_reads_the_odd_files_and_lists_each_bad_one_with_its_reason(corpus: tuple[Path, list[Case]]) -> None:
    root, cases = corpus
    report = scanning.scan(root)
    rows = outcome_table(root, cases, report)
    lines = ["| file | expected | outcome | reason |", "|---|---|---|---|"]
    lines += [
        f"| `{path}` | {'read' if case.readable else 'skipped' if case.listed else 'not listed'} | {outcome} "
        f"| {reason} |"
        for (path, outcome, reason), case in zip(rows, cases, strict=True)
    ]
    (PROJECT / "test-output").mkdir(exist_ok=True)
    (PROJECT / "test-output" / "corpus-outcomes.md").write_text("\n".join(lines) + "\n")
    for (path, outcome, reason), case in zip(rows, cases, strict=True):
        expected = "read" if case.readable else "skipped" if case.listed else "not listed"
        assert outcome == expected, f"{path}: expected {expected}, got {outcome} ({reason})"
        assert case.reason.lower() in reason.lower(), f"{path}: reason '{reason}' lacks '{case.reason}'"
        assert "Traceback" not in reason and "cv2.error" not in reason
    assert report.classes == {"bad": 12, "odd": 12 + sum(case.readable for case in cases)}
    # Readable with a caveat the user should see: which frame of a multi-frame DICOM is used.
    assert [(os.path.relpath(n["path"], root), n["note"]) for n in report.notes] == [
        ("odd/multiframe.dcm", "multi-frame DICOM (2 frames): frame 0 used")
    ]


def test_odd_files_become_model_inputs_of_the_right_shape(corpus: tuple[Path, list[Case]]) -> None:
    root, cases = corpus
    for case in (c for c in cases if c.readable):
        for color, channels in (("gray", 1), ("rgb", 3)):
            pixels = images.load_image(root / case.path, 24, color)
            assert pixels.shape == (24, 24, channels) and pixels.dtype == np.uint8, case.path
    rotated = images.load_image(root / "odd" / "exif_rotated.jpg", 64, "gray")
    raw, _ = images.decode((root / "odd" / "exif_rotated.jpg").read_bytes())
    assert raw.shape[:2] == (20, 32)  # stored 32 high × 20 wide, orientation 6: shown 20 high × 32 wide
    assert rotated.shape == (64, 64, 1)


@pytest.mark.slow
def test_training_and_prediction_go_on_past_every_bad_file(corpus: tuple[Path, list[Case]], tmp_path: Path) -> None:
    root, cases = corpus
    spec = RunSpec(
        kind="train",
        dataset=DatasetConfig(path=str(root), image_size=16, val_fraction=0.25, test_fraction=0.25),
        train=TrainConfig(epochs=1),
        params=ModelParams(filters=(8,), dense_units=8),
    )
    run = runs.create_run(spec, tmp_path)
    jobs.execute(run)
    assert run.status == "completed"
    skipped = {os.path.relpath(item["path"], root) for item in run.record["data"]["unreadable"]}
    expected = {case.path for case in cases if not case.readable and case.listed}
    assert expected <= skipped

    predictor = Predictor(run)
    files = [case for case in cases if (root / case.path).is_file() and not (root / case.path).is_symlink()]
    results = predictor.predict([(case.path, root / case.path) for case in files])
    for case, result in zip(files, results, strict=True):
        if case.readable:
            assert result.error == "" and abs(sum(result.probabilities.values()) - 1) < 1e-4, case.path
        elif case.listed:
            assert result.error and not result.probabilities, case.path
            assert case.reason.lower() in result.error.lower(), (case.path, result.error)


def _seed_files() -> list[bytes]:
    """Valid files of each decoder path to mutate: a real JPEG, PNG (8- and 16-bit) and DICOM."""
    import cv2
    from pydicom.data import get_testdata_file

    gray = images.load_image(REAL, 32, "gray")
    png8 = cv2.imencode(".png", gray)[1].tobytes()
    png16 = cv2.imencode(".png", gray.astype(np.uint16) * 257)[1].tobytes()
    dicom = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    return [REAL.read_bytes(), png8, png16, dicom, dicom[128:]]


SEEDS = _seed_files()


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's and Pillow's remarks on the mutated headers
@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(range(len(SEEDS))),
    edits=byte_edits(max_size=8),
)
def test_fuzzed_files_raise_only_medimg_errors(seed: int, edits: list[tuple[int, int, str]]) -> None:
    data = mutate(SEEDS[seed], edits)
    try:
        pixels = images.load_image(data, 16, "gray")
    except ImageReadError:
        return
    assert pixels.shape == (16, 16, 1) and pixels.dtype == np.uint8
