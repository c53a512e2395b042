"""medimg dashboard: `streamlit run app.py`. Pages live in pages/ and are registered here explicitly."""

from __future__ import annotations

import os

import streamlit as st

# The dashboard never acts as a KerasTuner distributed worker, whatever the server's environment says.
for variable in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
    os.environ.pop(variable, None)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

st.set_page_config(page_title="medimg", page_icon="🩻", layout="wide")
pages = [
    st.Page("pages/dataset.py", title="Dataset", icon=":material/folder_open:", default=True),
    st.Page("pages/augment.py", title="Augment", icon=":material/auto_fix_high:"),
    st.Page("pages/tune.py", title="Tune", icon=":material/tune:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/analytics:"),
    st.Page("pages/predict.py", title="Predict", icon=":material/image_search:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/history:"),
]
navigation = st.navigation(pages)
st.sidebar.caption("medimg · research tool, not for clinical use")
navigation.run()
