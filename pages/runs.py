"""Runs: every run with kind, status, dataset, headline metrics and duration; compare; delete."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from medimg.errors import MedimgError
from medimg.results import charts
from medimg.store import runs
from pages import common

st.title("Runs")
all_runs = runs.list_runs(common.runs_root())
if not all_runs:
    st.info(f"No runs yet under {common.runs_root()}. Start a search on the Tune page or training on the Train page.")
    st.stop()
rows = []
for run in all_runs:
    try:
        rows.append(run.table_row())
    except MedimgError:
        rows.append({"run": run.id, "status": "damaged"})
table = pd.DataFrame(rows).fillna("–")
st.dataframe(
    table,
    hide_index=True,
    column_config={
        "dataset": st.column_config.TextColumn(width="medium"),
        "validation": st.column_config.TextColumn(help="Models are chosen on validation; test is kept for the end."),
        "test AUC": st.column_config.TextColumn(
            help="Two classes: the ROC AUC of the positive class. More: the mean of the one-vs-rest AUCs (macro)."
        ),
        "duration": st.column_config.TextColumn(help="minutes:seconds"),
    },
)
st.caption(
    "Each run's TensorBoard logs are in its folder under `logs/`: `tensorboard --logdir "
    f"{common.runs_root()}/<run>/logs`."
)

st.subheader("Compare")
ids = [run.id for run in all_runs]
with_curves = [
    run.id for run in all_runs if (run.path / "history.json").is_file() or (run.path / "trials.json").is_file()
]
chosen = st.multiselect("Runs to compare", ids, default=(with_curves or ids)[:2])
if chosen:
    selected = [all_runs[ids.index(run_id)] for run_id in chosen]
    metric = st.radio("Metric", ["auc", "accuracy", "loss"], horizontal=True)
    histories = dict(run.comparison_curve() for run in selected)
    if any(history["epoch"] for history in histories.values()):
        st.plotly_chart(charts.runs_comparison_figure(histories, metric), key="compare")
        st.caption(
            "A search is drawn by its best trial's curve (the best finished so far while it runs): its final model is "
            "its trials', not a fit of its own."
        )
    else:
        st.info("None of these runs has finished an epoch yet, so there is no curve to compare.")
    st.dataframe(pd.DataFrame([row for row in rows if row["run"] in chosen]).set_index("run"))

st.subheader("Delete")
doomed = st.selectbox("Run to delete", ids, index=None, placeholder="Choose a run")
confirm = st.checkbox("Yes, delete this run folder and everything in it")
if st.button("Delete", disabled=not (doomed and confirm)):
    try:
        runs.delete_run(all_runs[ids.index(doomed)])
        st.toast(f"Deleted {doomed}.")
        st.rerun()
    except MedimgError as error:
        common.show_error(error)
