"""Predict: upload PNG / JPEG / DICOM images, get class probabilities, a Grad-CAM overlay and a CSV."""

from __future__ import annotations

import streamlit as st

from medimg import charts
from medimg.errors import MedimgError
from pages import common

MAX_FILES = 50

st.title("Predict")
run = common.pick_run("Model (run)", needs="model.keras", key="predict_run")
if run is None:
    st.info("No trained model yet: train one on the Train page first.")
    st.stop()


@st.cache_resource(max_entries=2, show_spinner="Loading the model…")
def load_predictor(run_path: str, model_hash: str):
    from medimg.predict import Predictor
    from medimg.runs import Run

    return Predictor(Run(run_path))


try:
    predictor = load_predictor(str(run.path), run.record.get("model_sha256", ""))
except MedimgError as error:
    common.show_error(error)
    st.stop()
st.caption(
    f"Input contract: {predictor.size} px, {predictor.color}; classes: {', '.join(predictor.class_names)}. "
    "Not for clinical use."
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

from medimg.explain import overlay  # noqa: E402 - TensorFlow-backed, needed only once there is something to predict
from medimg.predict import predictions_csv  # noqa: E402

with st.spinner("Predicting…"):
    results = predictor.predict([(upload.name, upload.getvalue()) for upload in uploads])
st.download_button(
    "Download all predictions (CSV)",
    predictions_csv(results, predictor.class_names),
    file_name=f"predictions-{run.id}.csv",
    mime="text/csv",
)
show_cam = st.toggle("Grad-CAM overlay", value=True)
for index, result in enumerate(results):
    st.markdown(f"#### {result.name}")
    if result.error:
        st.error(f"Skipped: {result.error}")
        continue
    left, middle, right = st.columns([1, 1, 2])
    left.image(result.image, caption="model input", width="stretch", clamp=True)
    if show_cam:
        try:
            heatmap = predictor.gradcam(result.image)
            middle.image(overlay(result.image, heatmap), caption=f"Grad-CAM for {result.predicted}", width="stretch")
        except MedimgError as error:
            middle.caption(str(error))
    right.plotly_chart(charts.probabilities_figure(result.probabilities), key=f"probs_{index}_{result.name}")
