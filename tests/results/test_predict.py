"""Prediction through a trained run's input contract: paths and bytes, unreadable files, CSV, Grad-CAM."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medimg.config import RunSpec
from medimg.errors import RunError
from medimg.results import evaluation
from medimg.results.predict import Prediction, Predictor, decision_threshold, predictions_csv, summary_line, top_k
from medimg.store import runs
from tests.conftest import DEMO, train_demo_run

TEST_IMAGES = (
    sorted((DEMO / "test" / "NORMAL").glob("*.jpeg"))[:3] + sorted((DEMO / "test" / "PNEUMONIA").glob("*.jpeg"))[:3]
)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> runs.Run:
    return train_demo_run(tmp_path_factory.mktemp("runs"), {"filters": (4, 8), "batch_size": 16})


@pytest.fixture(scope="module")
def predictor(trained_run: runs.Run) -> Predictor:
    return Predictor(trained_run)


def test_predictor_takes_the_runs_input_contract(predictor: Predictor) -> None:
    assert (predictor.size, predictor.color) == (16, "gray")
    assert predictor.class_names == ["NORMAL", "PNEUMONIA"]
    assert predictor.prepare(TEST_IMAGES[0]).shape == (16, 16, 1)


def called_at_operating_point(run: runs.Run, probabilities: dict[str, float]) -> str:
    point = run.record["metrics"]["operating_point"]
    assert point["chosen_on"] == "val" and point["positive_class"] == "PNEUMONIA"
    return "PNEUMONIA" if probabilities["PNEUMONIA"] >= point["threshold"] else "NORMAL"


def test_paths_and_bytes_give_the_same_answer(trained_run: runs.Run, predictor: Predictor) -> None:
    sources = [(p.name, p) for p in TEST_IMAGES] + [(f"bytes:{p.name}", p.read_bytes()) for p in TEST_IMAGES]
    results = predictor.predict(sources)
    assert [r.name for r in results] == [name for name, _ in sources]
    for by_path, by_bytes in zip(results[:6], results[6:], strict=True):
        assert by_path.error == "" and by_path.probabilities == pytest.approx(by_bytes.probabilities)
        assert sum(by_path.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert by_path.predicted == called_at_operating_point(trained_run, by_path.probabilities)
        assert by_path.image.shape == (16, 16, 1)


def test_prediction_agrees_with_the_runs_own_test_evaluation(trained_run: runs.Run, predictor: Predictor) -> None:
    # evaluate_run scored the cached test split; a fresh decode through the Predictor must give the same numbers.
    rows = {row["path"]: row for row in evaluation.read_predictions(trained_run)}
    assert len(rows) == 30
    results = predictor.predict([(str(p), p) for p in TEST_IMAGES])
    for result in results:
        row = rows[result.name]
        assert result.probabilities["PNEUMONIA"] == pytest.approx(float(row["p_PNEUMONIA"]), abs=1e-5)
        assert max(result.probabilities, key=result.probabilities.get) == row["predicted"]  # the arg-max there


def test_unreadable_entries_come_back_with_their_reason(predictor: Predictor, tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    gif = b"GIF89a" + b"\x00" * 40
    results = predictor.predict(
        [("notes.png", text), ("ok.jpeg", TEST_IMAGES[0]), ("empty", b""), ("anim.gif", gif), ("gone", tmp_path / "x")]
    )
    assert [bool(r.error) for r in results] == [True, False, True, True, True]
    assert results[0].error.startswith("not an image")
    assert results[2].error == "empty file (0 bytes)"
    assert "GIF is not a supported image format" in results[3].error
    assert "cannot read file" in results[4].error
    assert results[1].predicted in ("NORMAL", "PNEUMONIA")
    assert all(r.probabilities == {} and r.predicted == "" for r in results if r.error)


def test_nothing_readable_gives_only_errors(predictor: Predictor) -> None:
    results = predictor.predict([("a", b"plain text"), ("b", b"")])
    assert all(r.error for r in results)


def test_dicom_goes_through_the_same_contract(predictor: Predictor) -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (result,) = predictor.predict([("CT_small.dcm", data)])
    assert result.error == "" and result.image.shape == (16, 16, 1)
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_predictions_csv_columns_and_rows(predictor: Predictor) -> None:
    results = predictor.predict([("a.jpeg", TEST_IMAGES[0]), ("bad.png", b"oops")])
    text = predictions_csv(results, predictor.class_names)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["file", "predicted", "p_NORMAL", "p_PNEUMONIA", "error", "note"]
    assert rows[0]["file"] == "a.jpeg" and rows[0]["error"] == ""
    assert float(rows[0]["p_NORMAL"]) == pytest.approx(results[0].probabilities["NORMAL"], abs=1e-6)
    assert rows[1] == {
        "file": "bad.png",
        "predicted": "",
        "p_NORMAL": "",
        "p_PNEUMONIA": "",
        "error": results[1].error,
        "note": "",
    }


def test_two_class_runs_call_at_their_validation_operating_point() -> None:
    names = ["benign", "malignant"]
    point = {"threshold": 0.31, "chosen_on": "val", "positive_class": "malignant"}
    assert decision_threshold({"class_names": names, "metrics": {"operating_point": point}}) == ("malignant", 0.31)
    # Chosen on test (no validation predictions) is not a threshold to predict with: back to 0.5.
    on_test = {**point, "chosen_on": "test"}
    assert decision_threshold({"class_names": names, "metrics": {"operating_point": on_test}}) == ("malignant", 0.5)
    assert decision_threshold({"class_names": names, "metrics": {}}) == ("malignant", 0.5)
    assert decision_threshold({"class_names": ["a", "b", "c"], "metrics": {"operating_point": point}}) == (None, 0.5)


def test_the_summary_line_counts_predicted_and_skipped() -> None:
    results = [Prediction("a", {"x": 1.0}, "x"), Prediction("b", {}, error="empty file"), Prediction("c", {"x": 1.0})]
    assert summary_line(results) == "2 predicted, 1 skipped"


def test_gradcam_through_the_predictor(predictor: Predictor) -> None:
    pixels = predictor.prepare(TEST_IMAGES[-1])
    heatmap = predictor.gradcam(pixels)
    assert heatmap.shape == (16, 16) and heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0


def test_the_map_shown_is_of_the_class_called_not_the_arg_max(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review's case: at an operating point below 0.5 the page said "Grad-CAM for malignant" over the map of
    normal_benign, the arg-max, for an image called malignant at p = 0.433."""
    (first,) = predictor.predict([("x", TEST_IMAGES[-1])])
    p = first.probabilities["PNEUMONIA"]
    # A threshold on the other side of p from 0.5: the class called is then not the arg-max.
    monkeypatch.setattr(predictor, "threshold", p / 2 if p < 0.5 else (1 + p) / 2)
    (result,) = predictor.predict([("x", TEST_IMAGES[-1])])
    argmax = int(np.argmax([result.probabilities[name] for name in predictor.class_names]))
    called = predictor.class_names.index(result.predicted)
    assert called != argmax
    shown = predictor.explain(result)
    np.testing.assert_array_equal(shown, predictor.gradcam(result.image, called))
    assert not np.array_equal(shown, predictor.gradcam(result.image, argmax))
    with pytest.raises(RunError, match="was not predicted"):
        predictor.explain(Prediction("broken.png", {}, error="not an image"))


def test_top_k_orders_by_probability() -> None:
    prediction = Prediction("x", {"a": 0.2, "b": 0.5, "c": 0.05, "d": 0.25})
    assert top_k(prediction, 2) == [("b", 0.5), ("d", 0.25)]
    assert [name for name, _ in top_k(prediction)] == ["b", "d", "a"]


def test_a_run_without_a_trained_model_cannot_predict(tmp_path: Path) -> None:
    run = runs.create_run(RunSpec(), tmp_path)
    with pytest.raises(RunError, match=f"run {run.id} has no input contract yet; it has not trained a model"):
        Predictor(run)
    run.update(input={"image_size": 16, "color": "gray", "channels": 1}, class_names=["a", "b"])
    with pytest.raises(RunError, match="has no model yet"):
        Predictor(run)


def test_a_batch_with_undecodable_dicoms_gets_a_row_per_file(predictor: Predictor, tmp_path: Path) -> None:
    """The field report: one DICOM that could not be decoded printed a traceback and no CSV for the others."""
    case = Path(__file__).parents[1] / "data" / "cases" / "dicom-j2k-ybr-rct"
    ultrasound = case / "malignant" / "us_doppler_j2k.dcm"
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(ultrasound.read_bytes()[:50_000])
    files = [*sorted(case.glob("*/*.png"))[:2], ultrasound, truncated, TEST_IMAGES[0]]
    results = predictor.predict([(str(f), f) for f in files])
    rows = list(csv.DictReader(io.StringIO(predictions_csv(results, predictor.class_names))))
    assert [row["file"] for row in rows] == [str(f) for f in files]
    assert [bool(row["error"]) for row in rows] == [False, False, False, True, False]
    assert rows[3]["error"].startswith("truncated DICOM: the file ends before its pixel data is complete")
    assert all(row["predicted"] in predictor.class_names for row in rows if not row["error"])


def test_a_colour_image_given_to_a_gray_model_is_predicted_with_a_note(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = Path(__file__).parents[1] / "data" / "cases"
    colour = [
        cases / "dicom-j2k-ybr-rct" / "malignant" / "us_doppler_j2k.dcm",
        cases / "jpeg-variants" / "imgs" / "cmyk.jpg",
    ]
    gray_as_rgb = TEST_IMAGES[0]  # an X-ray JPEG stored with three equal channels: gray, no note
    files = [(str(f), f) for f in [*colour, gray_as_rgb]]
    results = predictor.predict(files)
    assert predictor.color == "gray" and all(r.predicted for r in results)
    # The demo's training X-rays are JPEGs with three equal channels: none of the sampled files carries colour, so
    # a colour picture is named unlike them (seen: a colour fundus photo called "malignant" by a breast ultrasound
    # model with only the conversion note).
    assert predictor.profile.colour_files == (0, 48)
    note = (
        "unlike the training images (a colour image; none of 48 sampled training files carries colour): the model "
        "sees it converted to gray, and the call may mean nothing"
    )
    # The ultrasound is also unlike the training X-rays by the image profile's distance; both notes, joined, the
    # call's caution said once.
    assert results[0].note.startswith(f"{note.removesuffix(', and the call may mean nothing')}; unlike the training")
    assert results[0].note.count("the call may mean nothing") == 1
    assert [r.note for r in results[1:]] == [note, ""]
    rows = list(csv.DictReader(io.StringIO(predictions_csv(results, predictor.class_names))))
    assert [row["note"] for row in rows] == [results[0].note, note, ""]
    # Where some training files carried colour too (or a profile did not count them), only the conversion is said.
    for counted in [(3, 48), None]:
        monkeypatch.setattr(predictor, "profile", dataclasses.replace(predictor.profile, colour_files=counted))
        plain = "a colour image, and this model was trained on gray images: it sees it converted to gray"
        assert [r.note for r in predictor.predict(files[1:])] == [plain, ""]


CASES = Path(__file__).parents[1] / "data" / "cases"
MR_FLOAT = CASES / "dicom-odd-headers" / "mr" / "float_pixels.dcm"
TEST_PATTERN = CASES / "dicom-odd-headers" / "mr" / "deflated.dcm"


def test_a_trained_run_keeps_a_profile_of_its_training_images(trained_run: runs.Run, predictor: Predictor) -> None:
    from medimg.datasets import novelty
    from medimg.datasets.prepared import prepare_data

    assert (trained_run.path / novelty.PROFILE_FILE).is_file() and predictor.profile is not None
    data = prepare_data(trained_run.spec.dataset)  # the cached arrays the run trained on
    validation = predictor.profile.distances(data.arrays["val"].images)
    assert predictor.profile.validation_max == pytest.approx(float(validation.max()))  # set on validation
    assert predictor.profile.counts == {"train": 80, "val": 30}


def test_uploads_unlike_the_training_images_get_a_note_in_the_csv(predictor: Predictor) -> None:
    results = predictor.predict([(p.name, p) for p in TEST_IMAGES] + [("mr.dcm", MR_FLOAT), ("pattern", TEST_PATTERN)])
    assert [r.note for r in results[:6]] == [""] * 6  # held-out X-rays of the training dataset
    for result in results[6:]:
        assert result.predicted and result.note.startswith("unlike the training images (distance ")
        assert result.note.endswith("for the validation images): the call may mean nothing")
    rows = list(csv.DictReader(io.StringIO(predictions_csv(results, predictor.class_names))))
    assert [row["note"] for row in rows] == [r.note for r in results]


def test_a_run_saved_before_profiles_gets_no_such_note(trained_run: runs.Run, tmp_path: Path) -> None:
    import shutil

    from medimg.datasets import novelty

    copy = tmp_path / trained_run.path.name
    shutil.copytree(trained_run.path, copy)
    (copy / novelty.PROFILE_FILE).unlink()
    older = Predictor(runs.Run(copy))
    assert older.profile is None
    (result,) = older.predict([("mr.dcm", MR_FLOAT)])
    assert result.error == "" and result.note == ""
