"""Predict: upload PNG / JPEG / DICOM images, get class probabilities, a Grad-CAM overlay and a CSV."""

from __future__ import annotations

import streamlit as st

from medimg.errors import MedimgError
from medimg.results import charts
from pages import common

MAX_FILES = 50

st.title("Predict")
run = common.pick_run("Model (run)", needs="model.keras", key="predict_run", prefer_completed=True)
if run is None:
    st.info("No trained model yet: find one with the Tune page's Automatic mode, or train one on the Train page.")
    st.stop()


@st.cache_resource(max_entries=2, show_spinner="Loading the model…")
def load_predictor(run_path: str, model_hash: str):
    from medimg.results.predict import Predictor
    from medimg.store.runs import Run

    return Predictor(Run(run_path))


try:
    predictor = load_predictor(str(run.path), run.record.get("model_sha256", ""))
except MedimgError as error:
    common.show_error(error)
    st.stop()
st.caption(
    f"Input contract: {predictor.size} px, {predictor.color}; classes: {', '.join(predictor.class_names)}. "
    f"Calls {predictor.decision}. Not for clinical use."
)
uploads = st.file_uploader(
    "Images (PNG, JPEG, BMP, TIFF, DICOM)",
    accept_multiple_files=True,
    type=["png", "jpg", "jpeg", "bmp", "tif", "tiff", "dcm", "dicom"],
)
if not uploads:
    st.info("Upload one or more images.")
    st.stop()
if len(uploads) > MAX_FILES:
    st.warning(f"{len(uploads)} files uploaded; only the first {MAX_FILES} are predicted.")
    uploads = uploads[:MAX_FILES]

from medimg.imaging import dicom  # noqa: E402
from medimg.model.explain import gradcam_caption, heatmap_caption, overlay  # noqa: E402 - TensorFlow-backed, needed only once there is something to predict
from medimg.results.predict import dicom_summary, predictions_csv, summary_line  # noqa: E402

WINDOW_CHOICES = ["As in training", "Lung", "Mediastinum", "Bone", "Brain", "Custom"]


def describe(data: bytes) -> dicom.DicomSummary | None:
    try:
        return dicom_summary(data)
    except MedimgError:
        return None  # unreadable: the prediction below reports why


def window_inputs() -> dicom.DicomWindow | None:
    """The window for every DICOM upload: None keeps each file's own header window."""
    choice = st.selectbox(
        "Window (monochrome DICOM)",
        WINDOW_CHOICES,
        key="predict_window",
        help="'As in training' applies the window the model was trained with"
        + (
            f" (centre {predictor.window.center:g} / width {predictor.window.width:g})."
            if predictor.window
            else ": each file's own header window (the first, or the VOI LUT)."
        )
        + " CT presets in Hounsfield units (centre / width): lung -600 / 1500, mediastinum 50 / 350, "
        "bone 400 / 1800, brain 40 / 80.",
    )
    if choice == "As in training":
        return None
    if choice != "Custom":
        return dicom.CT_WINDOWS[choice.lower()]
    left, right = st.columns(2)
    center = left.number_input("Window centre", value=40.0, step=10.0, key="predict_window_center")
    width = right.number_input("Window width", min_value=2.0, value=400.0, step=10.0, key="predict_window_width")
    return dicom.DicomWindow(center, width)


sources = [(upload.name, upload.getvalue()) for upload in uploads]
dicoms = {index: describe(data) for index, (_, data) in enumerate(sources)}
dicoms = {index: summary for index, summary in dicoms.items() if summary is not None}
window, frames = None, {}
if dicoms:
    with st.expander(f"DICOM display ({len(dicoms)} file(s))", expanded=True):
        window = window_inputs()
        for index, summary in dicoms.items():
            name = sources[index][0]
            # What is applied instead of the header's VOI: the window chosen above, else the one training used.
            st.caption(f"{name}: {summary.caption(window or predictor.window)}")
            if summary.frames > 1:
                frames[index] = st.number_input(
                    f"Frame of {name} (0–{summary.frames - 1})",
                    min_value=0,
                    max_value=summary.frames - 1,
                    value=0,
                    key=f"predict_frame_{index}_{name}",
                )
                st.info(
                    f"{name} is a multi-frame DICOM ({summary.frames} frames): only frame {frames[index]} is "
                    "predicted; choose another frame above."
                )

with st.spinner("Predicting…"):
    results = predictor.predict(sources, window=window, frames=frames)
skipped = [result for result in results if result.error]
(st.warning if skipped else st.success)(
    summary_line(results) + (f": {', '.join(result.name for result in skipped)} (reasons below)." if skipped else ".")
)
st.download_button(
    "Download all predictions (CSV)",
    predictions_csv(results, predictor.class_names),
    file_name=f"predictions-{run.id}.csv",
    mime="text/csv",
)
show_cam = st.toggle("Grad-CAM overlay", value=True)
if show_cam:
    st.caption(gradcam_caption(run.record))
for index, result in enumerate(results):
    st.markdown(f"#### {result.name}")
    if result.error:
        st.error(f"Skipped: {result.error}")
        continue
    left, middle, right = st.columns([1, 1, 2])
    left.image(result.image, caption="model input", width="stretch", clamp=True)
    if show_cam:
        try:
            heatmap = predictor.explain(result)  # of the class called, which the caption names
            caption = heatmap_caption(heatmap, result.predicted)
            middle.image(overlay(result.image, heatmap), caption=caption, width="stretch")
        except MedimgError as error:
            middle.caption(str(error))
    right.markdown(f"Called **{result.predicted}**")
    if result.note:  # a probability for an input unlike the training images is not to be read as one
        right.warning(f"Outside what the model was trained on: {result.note}.", icon=":material/warning:")
    right.plotly_chart(charts.probabilities_figure(result.probabilities), key=f"probs_{index}_{result.name}")
