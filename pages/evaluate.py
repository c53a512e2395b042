"""Evaluate: confusion matrix, ROC, per-class sensitivity/specificity/precision/F1, misclassified test images."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from medimg import charts, evaluation, images
from medimg.errors import MedimgError
from pages import common

st.title("Evaluate")
run = common.pick_run("Run", needs="metrics.json", key="evaluate_run")
if run is None:
    st.info("No evaluated run yet: train a model on the Train page (or finish a search) first.")
    st.stop()
metrics = run.read_json("metrics.json")
if not metrics:
    st.error(f"{run.id}: metrics.json is missing or damaged; run `python -m medimg evaluate {run.id}`.")
    st.stop()

cols = st.columns(4)
cols[0].metric("Accuracy", f"{metrics['accuracy']:.3f}")
cols[1].metric("Balanced accuracy", f"{metrics['balanced_accuracy']:.3f}")
cols[2].metric("ROC AUC", "–" if metrics["auc"] is None else f"{metrics['auc']:.3f}")
cols[3].metric("Test images", metrics["count"])
st.caption("Test split only. Not for clinical use.")

left, right = st.columns(2)
left.plotly_chart(charts.confusion_matrix_figure(metrics["confusion_matrix"], metrics["class_names"]), key="confusion")
if metrics.get("roc"):
    right.plotly_chart(charts.roc_figure(metrics["roc"]), key="roc")
table = pd.DataFrame(metrics["per_class"]).T
table.index.name = "class"
st.dataframe(table.style.format({c: "{:.3f}" for c in ("sensitivity", "specificity", "precision", "f1")}))

st.subheader("Misclassified test images")
wrong = [row for row in evaluation.read_predictions(run) if row["true"] != row["predicted"]]
if not wrong:
    st.success("Every test image is classified correctly.")
    st.stop()
shown = 1 if len(wrong) == 1 else st.slider("How many", 1, min(48, len(wrong)), min(12, len(wrong)))
grid = st.columns(6)
for index, row in enumerate(wrong[:shown]):
    probability = float(row[f"p_{row['predicted']}"])
    with grid[index % 6]:
        try:
            st.image(
                images.load_image(row["path"], 128, "rgb"),
                caption=f"true {row['true']} → {row['predicted']} ({probability:.0%})",
            )
        except MedimgError as error:
            st.caption(f"{row['path']}: {error}")
