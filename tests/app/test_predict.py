"""Predict page: pick a trained run, upload images, get probabilities, Grad-CAM and a CSV; bad files are skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import DEMO, FinishedRuns, by_label, charts, no_exception, open_page, values

UPLOADER = "Images (PNG, JPEG, BMP, TIFF, DICOM)"
XRAY = sorted((DEMO / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
OTHER_XRAY = sorted((DEMO / "test" / "NORMAL").glob("*.jpeg"))[0]


def upload(at, *files: tuple[str, bytes, str]) -> None:
    by_label(at.file_uploader, UPLOADER).set_value(list(files)).run()


def jpeg(path: Path, name: str | None = None) -> tuple[str, bytes, str]:
    return (name or path.name, path.read_bytes(), "image/jpeg")


def test_empty_runs_folder_asks_for_a_trained_model(runs_dir: Path) -> None:
    at = open_page("predict")
    no_exception(at)
    assert values(at.info) == ["No trained model yet: train one on the Train page first."]
    assert not at.file_uploader


def test_a_trained_run_states_its_input_contract_and_asks_for_images(finished_runs: FinishedRuns) -> None:
    at = open_page("predict")
    no_exception(at)
    model = at.selectbox(key="predict_run")
    assert {option.split(" · ")[0] for option in model.options} == {finished_runs.train_id, finished_runs.tune_id}
    assert values(at.caption)[0] == ("Input contract: 16 px, gray; classes: NORMAL, PNEUMONIA. Not for clinical use.")
    uploader = by_label(at.file_uploader, UPLOADER)
    assert uploader.accept_multiple_files
    assert {".png", ".jpeg", ".dcm"} <= set(uploader.allowed_type)
    assert values(at.info) == ["Upload one or more images."]


def test_a_real_xray_gets_a_probability_chart_gradcam_and_csv(finished_runs: FinishedRuns) -> None:
    at = open_page("predict")
    at.selectbox(key="predict_run").set_value(finished_runs.train_id).run()
    upload(at, jpeg(XRAY))
    no_exception(at)
    assert not at.error
    assert f"#### {XRAY.name}" in values(at.markdown)
    figure = charts(at)[f"probs_0_{XRAY.name}"]
    bars = figure["data"][0]
    assert bars["type"] == "bar" and sorted(bars["y"]) == ["NORMAL", "PNEUMONIA"]
    assert sum(bars["x"]) == pytest.approx(1.0, abs=1e-4)
    predicted = bars["y"][-1]  # bars are sorted by probability, the top class last
    assert [image.captions for image in at.image] == [["model input"], [f"Grad-CAM for {predicted}"]]

    download = by_label(at.download_button, "Download all predictions (CSV)")
    assert not download.disabled

    by_label(at.toggle, "Grad-CAM overlay").set_value(False).run()
    no_exception(at)
    assert [image.captions for image in at.image] == [["model input"]]
    assert f"probs_0_{XRAY.name}" in charts(at)


def test_a_non_image_upload_is_skipped_with_its_reason_and_the_rest_is_predicted(finished_runs: FinishedRuns) -> None:
    at = open_page("predict")
    upload(at, ("notes.png", b"meeting notes, not an image", "image/png"), jpeg(OTHER_XRAY))
    no_exception(at)
    errors = values(at.error)
    assert len(errors) == 1 and errors[0].startswith("Skipped: ")
    assert "not an image" in errors[0]
    assert list(charts(at)) == [f"probs_1_{OTHER_XRAY.name}"]  # the second upload


def test_more_than_fifty_files_are_cut_to_the_first_fifty(finished_runs: FinishedRuns) -> None:
    at = open_page("predict")
    upload(at, *[(f"note{i:02d}.png", b"not an image", "image/png") for i in range(51)])
    no_exception(at)
    assert values(at.warning) == ["51 files uploaded; only the first 50 are predicted."]
    assert len(at.error) == 50 and "#### note50.png" not in values(at.markdown)


def test_a_changed_model_file_is_refused(finished_runs: FinishedRuns) -> None:
    model = finished_runs.root / finished_runs.train_id / "model.keras"
    model.write_bytes(model.read_bytes() + b"tampered")
    at = open_page("predict")
    at.selectbox(key="predict_run").set_value(finished_runs.train_id).run()
    no_exception(at)
    assert values(at.error) == [
        f"run {finished_runs.train_id}: model.keras does not match the hash recorded when it was saved; "
        "it was changed outside medimg and will not be loaded."
    ]
    assert not at.file_uploader


def test_two_uploads_with_the_same_name_are_both_predicted(finished_runs: FinishedRuns) -> None:
    # Two files called image.jpeg from two folders: browsers allow it, and scanners name files alike.
    at = open_page("predict")
    upload(at, jpeg(XRAY, "image.jpeg"), jpeg(OTHER_XRAY, "image.jpeg"))
    no_exception(at)
    assert len(at.get("plotly_chart")) == 2
