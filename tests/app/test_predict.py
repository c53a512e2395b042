"""Predict page: pick a trained run, upload images, get probabilities, Grad-CAM and a CSV; bad files are skipped.
DICOM: the header's window by default, CT presets and a custom window, a chosen frame of a multi-frame file, and no
patient identifier anywhere on the page."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medimg.imaging import dicom
from medimg.store import runs
from tests.dicom_files import new_dicom

from .conftest import DEMO, FinishedRuns, by_label, charts, no_exception, open_page, run_picker, values

UPLOADER = "Images (PNG, JPEG, BMP, TIFF, DICOM)"
XRAY = sorted((DEMO / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
OTHER_XRAY = sorted((DEMO / "test" / "NORMAL").glob("*.jpeg"))[0]
IDENTIFIERS = {
    "PatientName": "Quixotic^Zebulon",
    "PatientID": "MRN-PHI-77310",
    "PatientBirthDate": "19310415",
    "OtherPatientIDs": "OTHERID-PHI-5512",
    "AccessionNumber": "ACC99120PHI",
    "InstitutionName": "Saint Quetzalcoatl Infirmary",
    "ReferringPhysicianName": "Rutherford^Phineas",
}


def upload(at, *files: tuple[str, bytes, str]) -> None:
    by_label(at.file_uploader, UPLOADER).set_value(list(files)).run()


def jpeg(path: Path, name: str | None = None) -> tuple[str, bytes, str]:
    return (name or path.name, path.read_bytes(), "image/jpeg")


def test_empty_runs_folder_asks_for_a_trained_model(runs_dir: Path) -> None:
    at = open_page("predict")
    no_exception(at)
    assert values(at.info) == [
        "No trained model yet: find one with the Tune page's Automatic mode, or train one on the Train page."
    ]
    assert not at.file_uploader


def test_a_trained_run_states_its_input_contract_and_asks_for_images(finished_runs: FinishedRuns) -> None:
    at = open_page("predict")
    no_exception(at)
    model = run_picker(at, "predict_run")
    assert {option.split(" · ")[0] for option in model.options} == {finished_runs.train_id, finished_runs.tune_id}
    run = runs.Run(finished_runs.root / model.value)
    point = run.record["metrics"]["operating_point"]  # chosen on validation when the run was evaluated
    assert point["chosen_on"] == "val" and point["positive_class"] == "PNEUMONIA"
    assert values(at.caption)[0] == (
        "Input contract: 16 px, gray; classes: NORMAL, PNEUMONIA. Calls PNEUMONIA when p(PNEUMONIA) ≥ "
        f"{point['threshold']:.3f} (the operating point chosen on validation). Not for clinical use."
    )
    uploader = by_label(at.file_uploader, UPLOADER)
    assert uploader.accept_multiple_files
    assert {".png", ".jpeg", ".dcm"} <= set(uploader.allowed_type)
    assert values(at.info) == ["Upload one or more images."]


def test_a_real_xray_gets_a_probability_chart_gradcam_and_csv(finished_runs: FinishedRuns) -> None:
    at = open_page("predict")
    run_picker(at, "predict_run").set_value(finished_runs.train_id).run()
    upload(at, jpeg(XRAY))
    no_exception(at)
    assert not at.error
    assert f"#### {XRAY.name}" in values(at.markdown)
    figure = charts(at)[f"probs_0_{XRAY.name}"]
    bars = figure["data"][0]
    assert bars["type"] == "bar" and sorted(bars["y"]) == ["NORMAL", "PNEUMONIA"]
    assert sum(bars["x"]) == pytest.approx(1.0, abs=1e-4)
    # The called class is the one at the run's operating point (chosen on validation), not the arg-max.
    threshold = runs.Run(finished_runs.root / finished_runs.train_id).record["metrics"]["operating_point"]["threshold"]
    p_pneumonia = bars["x"][bars["y"].index("PNEUMONIA")]
    called = "PNEUMONIA" if p_pneumonia >= threshold else "NORMAL"
    assert values(at.success) == ["1 predicted, 0 skipped."]
    assert f"Called **{called}**" in values(at.markdown)
    assert [image.captions for image in at.image] == [["model input"], [f"Grad-CAM for {called}"]]

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
    assert values(at.warning) == ["1 predicted, 1 skipped: notes.png (reasons below)."]  # the summary comes first
    assert len(errors) == 1 and errors[0].startswith("Skipped: ")
    assert "not an image" in errors[0]
    assert list(charts(at)) == [f"probs_1_{OTHER_XRAY.name}"]  # the second upload


def test_more_than_fifty_files_are_cut_to_the_first_fifty(finished_runs: FinishedRuns) -> None:
    at = open_page("predict")
    upload(at, *[(f"note{i:02d}.png", b"not an image", "image/png") for i in range(51)])
    no_exception(at)
    assert values(at.warning)[0] == "51 files uploaded; only the first 50 are predicted."
    assert values(at.warning)[1].startswith("0 predicted, 50 skipped: note00.png, note01.png")
    assert len(at.error) == 50 and "#### note50.png" not in values(at.markdown)


def test_a_changed_model_file_is_refused(finished_runs: FinishedRuns) -> None:
    model = finished_runs.root / finished_runs.train_id / "model.keras"
    model.write_bytes(model.read_bytes() + b"tampered")
    at = open_page("predict")
    run_picker(at, "predict_run").set_value(finished_runs.train_id).run()
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


# ---------------------------------------------------------------------------------------------------------- DICOM
def dicom_bytes(dataset: pydicom.Dataset) -> bytes:
    stream = io.BytesIO()
    dataset.save_as(stream, enforce_file_format=True)
    return stream.getvalue()


def ct_with_identifiers() -> bytes:
    """pydicom's own CT_small.dcm (128×128 CT, rescale, no window) with identifiers written into it."""
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for keyword, value in IDENTIFIERS.items():
        setattr(dataset, keyword, value)
    return dicom_bytes(dataset)


def multi_frame_dicom() -> bytes:
    """Three 24×24 frames of different brightness (dark, middle, bright), MONOCHROME2, 8-bit."""
    dataset = new_dicom()
    dataset.PatientName = IDENTIFIERS["PatientName"]
    rng = np.random.default_rng(0)
    frames = np.stack([rng.integers(40 * k, 40 * k + 60, (24, 24)) for k in (0, 2, 4)]).astype(np.uint8)
    dataset.set_pixel_data(frames, photometric_interpretation="MONOCHROME2", bits_stored=8)
    return dicom_bytes(dataset)


def probabilities_shown(at, index: int, name: str) -> dict[str, float]:
    bars = charts(at)[f"probs_{index}_{name}"]["data"][0]
    return dict(zip(bars["y"], bars["x"], strict=True))


def expected_probabilities(run_path: Path, data: bytes, **options) -> dict[str, float]:
    from medimg.results.predict import Predictor

    [result] = Predictor(runs.Run(run_path)).predict([("x", data)], **options)
    return result.probabilities


def page_text(at) -> str:
    """Every element the page drew, as its protobuf text (labels, values, captions, markdown, chart JSON)."""
    parts = []

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            parts.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(parts)


def test_dicom_upload_defaults_to_the_header_window_and_takes_ct_presets(finished_runs: FinishedRuns) -> None:
    run_path = finished_runs.root / finished_runs.train_id
    data = ct_with_identifiers()
    at = open_page("predict", run=finished_runs.train_id)
    upload(at, ("scan.dcm", data, "application/dicom"))
    no_exception(at)
    window = by_label(at.selectbox, "Window (monochrome DICOM)")
    assert window.value == "As in training"  # this run trained on each file's header window
    assert window.options == ["As in training", "Lung", "Mediastinum", "Bone", "Brain", "Custom"]
    assert window.help.startswith("'As in training' applies the window the model was trained with: each file's own")
    assert (
        "scan.dcm: DICOM CT · 128×128 · MONOCHROME2 · 16-bit signed · no VOI LUT or window in the header: stretched "
        "from the image's own minimum to maximum"
    ) in values(at.caption)
    header = probabilities_shown(at, 0, "scan.dcm")
    assert header == pytest.approx(expected_probabilities(run_path, data), abs=1e-5)

    window.set_value("Lung").run()
    no_exception(at)
    lung = probabilities_shown(at, 0, "scan.dcm")
    assert lung == pytest.approx(expected_probabilities(run_path, data, window=dicom.CT_WINDOWS["lung"]), abs=1e-5)
    assert lung != pytest.approx(header, abs=1e-4)  # the window changed what the model saw
    assert "scan.dcm: DICOM CT · 128×128 · MONOCHROME2 · 16-bit signed · window centre -600 / width 1500 applied" in (
        values(at.caption)
    )

    by_label(at.selectbox, "Window (monochrome DICOM)").set_value("Custom").run()
    by_label(at.number_input, "Window centre").set_value(400.0).run()
    by_label(at.number_input, "Window width").set_value(1800.0).run()
    no_exception(at)
    bone = expected_probabilities(run_path, data, window=dicom.CT_WINDOWS["bone"])
    assert probabilities_shown(at, 0, "scan.dcm") == pytest.approx(bone, abs=1e-5)  # custom 400 / 1800 = bone


def test_a_multi_frame_dicom_takes_the_chosen_frame_with_a_notice(finished_runs: FinishedRuns) -> None:
    run_path = finished_runs.root / finished_runs.train_id
    data = multi_frame_dicom()
    at = open_page("predict", run=finished_runs.train_id)
    upload(at, jpeg(XRAY), ("cine.dcm", data, "application/dicom"))
    no_exception(at)
    frame = by_label(at.number_input, "Frame of cine.dcm (0–2)")
    assert (frame.value, frame.min, frame.max) == (0, 0, 2)
    assert values(at.info) == [
        "cine.dcm is a multi-frame DICOM (3 frames): only frame 0 is predicted; choose another frame above."
    ]
    assert probabilities_shown(at, 1, "cine.dcm") == pytest.approx(
        expected_probabilities(run_path, data, frames={0: 0}), abs=1e-5
    )
    frame.set_value(2).run()
    no_exception(at)
    assert values(at.info)[0].endswith("only frame 2 is predicted; choose another frame above.")
    assert probabilities_shown(at, 1, "cine.dcm") == pytest.approx(
        expected_probabilities(run_path, data, frames={0: 2}), abs=1e-5
    )
    assert f"probs_0_{XRAY.name}" in charts(at)  # the JPEG beside it is predicted as before


def test_patient_identifiers_never_reach_the_page(finished_runs: FinishedRuns) -> None:
    at = open_page("predict", run=finished_runs.train_id)
    upload(at, ("scan.dcm", ct_with_identifiers(), "application/dicom"), ("cine.dcm", multi_frame_dicom(), "x"))
    no_exception(at)
    assert len(charts(at)) == 2 and not at.error  # both predicted, so the page did show their results
    text = page_text(at).lower()
    assert "scan.dcm" in text and "dicom ct · 128×128" in text  # the text of the page was read
    # pydicom's CT_small.dcm carries its own identifiers too: its patient name is CompressedSamples^CT1.
    for value in [*IDENTIFIERS.values(), "Quixotic", "Zebulon", "CompressedSamples"]:
        assert value.lower() not in text, value


CASES = Path(__file__).parents[1] / "data" / "cases"


@pytest.mark.parametrize("kind", ["train", "tune"])
def test_images_unlike_the_training_ones_are_cautioned_and_xrays_are_not(
    finished_runs: FinishedRuns, kind: str
) -> None:
    # Both runs (a train run and a search's kept model) profiled their training X-rays when they were evaluated.
    at = open_page("predict", run=finished_runs.train_id if kind == "train" else finished_runs.tune_id)
    mr = (CASES / "dicom-odd-headers" / "mr" / "float_pixels.dcm").read_bytes()
    upload(at, jpeg(XRAY), ("float_pixels.dcm", mr, "application/dicom"))
    no_exception(at)
    # One caution, for the MR image; the X-ray from the same dataset's test split gets none.
    (warning,) = [text for text in values(at.warning) if text.startswith("Outside what the model was trained on")]
    assert warning.startswith("Outside what the model was trained on: unlike the training images (distance ")
    assert warning.endswith("for the validation images): the call may mean nothing.")
    assert any(": DICOM MR · 64×64 · MONOCHROME2 · 32-bit float · " in text for text in values(at.caption))


def test_a_newer_stopped_run_is_offered_but_the_newest_completed_one_is_shown(finished_runs: FinishedRuns) -> None:
    """Seen: Predict opened on a training stopped after 10 of 30 epochs and called a pneumonia X-ray NORMAL."""
    newest = max(finished_runs.train_id, finished_runs.tune_id, key=lambda i: i.split("-", 1)[1])
    stopped_id = "train-29991231-235959-stop"
    shutil.copytree(finished_runs.root / finished_runs.train_id, finished_runs.root / stopped_id)
    stopped = runs.Run(finished_runs.root / stopped_id)
    stopped.set_status("stopped")
    for page, key in (("predict", "predict_run"), ("evaluate", "evaluate_run")):
        at = open_page(page)
        no_exception(at)
        picker = run_picker(at, key)
        assert picker.options[0].startswith(stopped_id) and picker.value == newest, page
    # A link to the stopped run still opens it.
    at = open_page("predict", run=stopped_id)
    assert run_picker(at, "predict_run").value == stopped_id
