"""Evaluate: operating point with intervals, ROC / PR, calibration, a clickable confusion matrix with Grad-CAMs,
subgroups, the leakage check, and the report and model exports."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from medimg.errors import MedimgError
from medimg.metrics import clinical, ordinal, subgroups
from medimg.model.models import load_run_model
from medimg.results import charts, evaluation, tables
from pages import common

RESAMPLES = 2000
MAX_CELL_IMAGES = 48
PRESET_LABELS = {
    "default": "0.5",
    "youden": "Youden's J",
    "sensitivity": "Sens ≥ target",
    "specificity": "Spec ≥ target",
}


@st.cache_data(max_entries=8, show_spinner=False)
def load_scored(run_path: str, stamp: float) -> dict[str, clinical.Scored]:
    from medimg.store.runs import Run

    return evaluation.load_scored(Run(run_path))


@st.cache_data(max_entries=32, show_spinner="Bootstrapping intervals…")
def summarize(run_path: str, stamp: float, threshold: float, positive: str | None, target: float) -> dict:
    scored = load_scored(run_path, stamp)
    return evaluation.clinical_summary(scored["test"], scored.get("val"), threshold, positive, RESAMPLES, target=target)


@st.cache_data(max_entries=8, show_spinner=False)
def presets(run_path: str, stamp: float, positive: str, target: float) -> tuple[dict, str | None]:
    scored = load_scored(run_path, stamp)
    return evaluation.preset_thresholds(scored["test"], scored.get("val"), positive, target, target)


@st.cache_resource(max_entries=2, show_spinner="Loading the model…")
def load_model(run_path: str, model_hash: str):
    from medimg.store.runs import Run

    return load_run_model(Run(run_path))


def set_threshold(key: str, value: float, preset: str) -> None:
    st.session_state[key] = round(float(value), 3)
    # The preset pressed, kept: two rules often give one threshold, and the value alone cannot say which was meant.
    st.session_state[f"{key}_preset"] = preset


def forget_preset(key: str) -> None:
    st.session_state.pop(f"{key}_preset", None)


st.title("Evaluate")
run = common.pick_run("Run", needs="metrics.json", key="evaluate_run", prefer_completed=True)
if run is None:
    st.info("No evaluated run yet: find a model with the Tune page's Automatic mode, or train one on the Train page.")
    st.stop()
metrics = run.read_json("metrics.json")
if not metrics:
    st.error(f"{run.id}: metrics.json is missing or damaged; run `python -m medimg evaluate {run.id}`.")
    st.stop()
stamp = (run.path / "predictions.csv").stat().st_mtime if (run.path / "predictions.csv").exists() else 0.0
try:
    scored = load_scored(str(run.path), stamp)
except MedimgError as error:
    common.show_error(error)
    st.stop()
test = scored["test"]
names = test.class_names
if metrics.get("one_class"):
    st.error(f"Degenerate model: {metrics['one_class']}.", icon=":material/error:")

if "val" not in scored or metrics.get("evaluation_version", 0) < evaluation.VALIDATION_SCORED_VERSION:
    st.info(
        "This run was evaluated by an older medimg: without validation predictions there is no temperature scaling "
        "and no operating point chosen on validation. Re-evaluating keeps the model and rescores both splits."
    )
    if st.button("Re-evaluate this run"):
        try:
            with st.spinner("Scoring the validation and test splits…"):
                evaluation.evaluate_run(run)
            st.rerun()  # predictions.csv changed, so every cached result keyed on its time is recomputed
        except MedimgError as error:
            common.show_error(error)

# ------------------------------------------------------------------------------------------- operating point
threshold, positive, preset, target = 0.5, None, None, evaluation.DEFAULT_TARGET
if test.binary:
    left, middle, right = st.columns([2, 1, 3])
    positive = left.selectbox(
        "Positive class",
        names,
        index=clinical.default_positive(names),
        key=f"evaluate_positive_{run.id}",
        help="The finding the test is looking for: sensitivity is measured on it.",
    )
    target = middle.number_input("Target", 0.5, 0.999, 0.95, 0.01, format="%.2f", help="For the two target presets.")
    choices, chosen_on = presets(str(run.path), stamp, positive, target)
    unavailable = evaluation.presets_unavailable(scored.get("val"), names)
    if unavailable:
        right.warning(f"No operating-point presets: {unavailable}.", icon=":material/warning:")
    else:
        right.caption(
            "Operating-point presets, chosen on the validation split and measured on test. A preset moves the slider."
        )
    buttons = right.columns(len(PRESET_LABELS))
    # One slider per run and positive class, starting at the operating point chosen on validation: a threshold
    # carried over from another run, or 0.5 left standing, is a threshold nobody chose for this model.
    threshold_key = f"evaluate_threshold_{run.id}_{positive}"
    start = evaluation.default_threshold(test, scored.get("val"), positive)
    if threshold_key not in st.session_state and chosen_on == "val":
        st.session_state[f"{threshold_key}_preset"] = "youden"  # what `default_threshold` starts from
    for column, (name, label) in zip(buttons, PRESET_LABELS.items(), strict=True):
        value = choices.get(name)
        column.button(
            label,
            key=f"preset_{name}",
            on_click=set_threshold,
            args=(threshold_key, value, name),
            disabled=value is None,
            help=None if value is None else f"threshold {value:.3f}",
            width="stretch",
        )
    threshold = st.slider(
        f"Threshold: call {positive} when p({positive}) ≥",
        0.0,
        1.0,
        step=0.001,
        format="%.3f",
        on_change=forget_preset,
        args=(threshold_key,),
        **common.kept(threshold_key, start),
    )
    preset = st.session_state.get(f"{threshold_key}_preset")
    origin, chosen_on_data = evaluation.threshold_origin(float(threshold), choices, chosen_on, preset)
    (st.caption if chosen_on_data else st.warning)(
        f"Threshold {float(threshold):.3f}: {origin}."
        + ("" if chosen_on_data else " Pick a preset to use an operating point chosen on validation.")
    )
    positive_index = names.index(positive)
    st.plotly_chart(
        charts.score_histogram_figure(
            {name: test.probs[test.labels == i, positive_index].tolist() for i, name in enumerate(names)},
            float(threshold),
            positive,
        ),
        key="score_histogram",
    )
summary = summarize(str(run.path), stamp, float(threshold), positive, float(target))
called_one_class = evaluation.one_class_at_threshold(summary)
if called_one_class:
    st.warning(called_one_class, icon=":material/warning:")
if test.binary:
    for rule in evaluation.answering_presets(float(threshold), choices, preset):
        missed = evaluation.missed_target(summary["operating_point"], rule, target)
        if missed:
            st.warning(missed, icon=":material/warning:")

tiles = tables.headline(summary)
cols = st.columns(len(tiles) + 1)
for column, (label, estimate, interval) in zip(cols, tiles, strict=False):
    column.metric(label, estimate, help=interval)
cols[-1].metric("Test images", summary["count"])
st.table(pd.DataFrame(tables.metric_rows(summary["intervals"])).set_index("metric"))
st.caption(f"Test split only. {tables.intervals_note(summary['intervals'])} Not for clinical use.")

# ------------------------------------------------------------------------------------------------------ charts
cell_key = f"evaluate_cell_{run.id}"
cells = [(i, j) for i in range(len(names)) for j in range(len(names))]
matrix = summary["confusion_matrix"]


def take_clicked_cell() -> None:
    event = st.session_state.get("confusion") or {}
    cell = charts.selected_cell((event.get("selection") or {}).get("points", []), names)
    if cell is not None:
        st.session_state[cell_key] = f"{cell[0]},{cell[1]}"


options = [f"{i},{j}" for i, j in cells]
if st.session_state.get(cell_key) not in options:
    wrong = [(i, j) for i, j in cells if i != j and matrix[i][j]]
    if test.binary:  # false negatives first: the misses a reviewer asks about before anything else
        missed = names.index(positive)
        wrong.sort(key=lambda cell: cell != (missed, 1 - missed))
    first = (wrong or [(0, 0)])[0]
    st.session_state[cell_key] = f"{first[0]},{first[1]}"
chosen = tuple(int(v) for v in st.session_state[cell_key].split(","))

# Several classes need the full width: in half a page the matrix squeezed and its labels rotated.
left, right = st.columns(2) if test.binary else (st.container(), st.container())
left.plotly_chart(
    charts.confusion_matrix_figure(matrix, names, clickable=True, selected=chosen),
    key="confusion",
    on_select=take_clicked_cell,
    selection_mode="points",
)
right.plotly_chart(charts.roc_figure(summary["curves"]["roc"], summary["operating_point"]), key="roc")
left, right = st.columns(2)
left.plotly_chart(charts.precision_recall_figure(summary["curves"]["pr"], summary["operating_point"]), key="pr")
calibration = summary["calibration"]
right.plotly_chart(charts.reliability_figure(calibration["before"], calibration["after"]), key="calibration")
calibration_text, calibration_warning = tables.calibration_note(calibration)
if calibration_warning:
    right.warning(calibration_warning, icon=":material/warning:")
else:
    right.caption(calibration_text)

if not test.binary:
    per_class = pd.DataFrame(metrics["per_class"]).T
    per_class.index.name = "class"
    per_class["support"] = per_class["support"].astype(int)
    per_class = per_class.rename(columns={"f1": "F1", "support": "test images"})
    st.caption("Per class, one-vs-rest at the arg-max prediction (intervals for sensitivity and specificity above).")
    st.dataframe(
        per_class.style.format({c: "{:.3f}" for c in ("sensitivity", "specificity", "precision", "F1")}),
        key="per_class",
    )
    # metrics.json's list, the one the Tune and Train summaries, the report and the CLI read; an evaluation from
    # before it was stored is read from the same predictions.
    if ordinal.numbered_grades(names):  # from the predictions shown, so an older evaluation gets them too
        by_split = {split: ordinal.ordinal_summary(s.labels, s.probs) for split, s in scored.items() if len(s)}
        st.markdown(ordinal.describe(by_split))
        st.caption(
            "For ordered grades a near miss is not a distant one: quadratic weighted kappa (Cohen 1968; 1 = every "
            "call right, 0 = no better than chance, distant misses cost more), the mean distance of a call from the "
            "true grade, and the share of calls at most one grade off."
        )
    never = metrics.get("never_predicted", evaluation.never_predicted(test))
    never_warning = evaluation.never_predicted_warning(never, len(names))
    if never_warning:
        st.warning(never_warning, icon=":material/warning:")

# ---------------------------------------------------------------------------------------- subgroups, leakage
attributes, proxies = subgroups.manifest_columns(run.spec.dataset.path)
if attributes:
    st.subheader("Subgroups")
    column = st.selectbox("Manifest column", list(attributes), key="evaluate_subgroup")
    rows = subgroups.subgroup_metrics(test, attributes[column], float(threshold), positive)
    st.dataframe(pd.DataFrame(tables.subgroup_rows(rows, column)).set_index(column), key="subgroups")
    if any((row.get("auc") or {}).get("estimate") is None for row in rows):
        st.caption("AUC –: that subgroup's test images are all of one class, so no ranking can be scored.")
if proxies:
    st.caption(
        f"Not offered as subgroups: {', '.join(proxies)} (one value per class: its subgroups would be the classes)."
    )

leakage = metrics.get("leakage")
if leakage:
    passed, verdict = tables.leakage_verdict(leakage)
    (st.success if passed else st.warning)(verdict)
    if leakage["cross_split_duplicates"]:
        with st.expander("Identical images across splits"):
            st.write("\n".join(f"- {' = '.join(group)}" for group in leakage["cross_split_duplicates"][:50]))

# ------------------------------------------------------------------------------------------ cell drill-down
st.subheader("Images in a confusion-matrix cell")


def cell_label(option: str) -> str:
    # No count in the label: the browser keeps an option's first label while the threshold moves the counts.
    i, j = (int(v) for v in option.split(","))
    return f"true {names[i]} → called {names[j]}"


st.selectbox("Cell (or click one in the confusion matrix)", options, key=cell_key, format_func=cell_label)
true, called = chosen
members = clinical.cell_indices(test, true, called, float(threshold), positive)
st.caption(tables.cell_note(names, called, len(members), float(threshold), positive))
if len(members) == 0:
    st.info("No test images in this cell.")
else:
    count = min(MAX_CELL_IMAGES, len(members))
    shown_count = 1 if count == 1 else st.slider("How many", 1, count, min(12, count))
    show_cam = st.toggle("Grad-CAM overlay", value=True)
    # The run's own size, colour and DICOM window: the images as the model was tested on them.
    loaded, failures = run.input_contract.load_many(test.paths, list(members[:shown_count]))
    heatmaps = None
    if show_cam and loaded:
        from medimg.model.explain import gradcam_caption, gradcam_heatmaps

        try:
            model = load_model(str(run.path), run.record.get("model_sha256", ""))
            heatmaps, _ = gradcam_heatmaps(model, [pixels for _, pixels in loaded], [called] * len(loaded))
            st.caption(gradcam_caption(run.record))
        except MedimgError as error:
            common.show_error(error)
    from medimg.model.explain import for_display, heatmap_caption, side_by_side

    grid = st.columns(3)
    for position, (i, pixels) in enumerate(loaded):
        caption = f"{Path(test.paths[i]).name}: {tables.call_probability(test, i, float(threshold), positive)}"
        with grid[position % 3]:
            if heatmaps is not None:
                shown = heatmap_caption(heatmaps[position], names[called])
                st.image(side_by_side(pixels, heatmaps[position]), caption=f"{caption} · {shown}")
            else:
                st.image(for_display(pixels), caption=caption)
    for failure in failures:
        st.caption(failure)

# --------------------------------------------------------------------------------------------------- exports
st.subheader("Export")
exports_ready = True
export_threshold = float(threshold)
if test.binary:
    export_threshold = evaluation.exact_threshold(float(threshold), choices, preset)
    origin, chosen_on_data = evaluation.threshold_origin(float(threshold), choices, chosen_on, preset)
    st.markdown(
        f"The report and the model bundle embed the decision rule **call {positive} when p({positive}) ≥ "
        f"{export_threshold:.4f}** ({origin})."
    )
    if not chosen_on_data:
        exports_ready = st.checkbox(
            f"Export with threshold {float(threshold):.3f}, which was not chosen on validation",
            key=f"evaluate_confirm_{run.id}_{float(threshold):.3f}",
        )
left, right = st.columns(2)


def report_bytes() -> bytes:
    from medimg.results import report

    return report.build_report(run, export_threshold, positive, preset=preset, target=float(target)).encode("utf-8")


def bundle_bytes() -> bytes:
    from medimg.results import bundle

    return bundle.model_bundle(run, export_threshold, positive, preset=preset, target=float(target))


left.download_button(
    "Export report (HTML)",
    report_bytes,
    file_name=f"report-{run.id}.html",
    mime="text/html",
    on_click="ignore",
    disabled=not exports_ready,
    help="One self-contained file (opens offline): model card, metrics with intervals at this operating point, "
    "curves, calibration, Grad-CAM examples.",
)
right.download_button(
    "Download model + preprocessing contract (zip)",
    bundle_bytes,
    file_name=f"model-{run.id}.zip",
    mime="application/zip",
    on_click="ignore",
    disabled=not exports_ready,
    help="model.keras with contract.json: image size, channel mode, class names, positive class and threshold.",
)
if (run.path / "predictions.csv").is_file():
    st.download_button(
        "Download predictions (CSV)",
        (run.path / "predictions.csv").read_bytes(),
        file_name=f"predictions-{run.id}.csv",
        mime="text/csv",
        on_click="ignore",
        help="One row per validation and test image: its path, true and called class, each class's probability "
        "and its split (the model's own outputs, before any threshold chosen here).",
    )

EXPORT_CHOICES = {
    "ONNX (onnxruntime)": ("onnx", None),
    "LiteRT / TFLite": ("litert", None),
    "LiteRT, float16 weights": ("litert", "float16"),
    "LiteRT, int8 (calibrated on training images)": ("litert", "int8"),
    "TensorFlow SavedModel (TF Serving)": ("saved_model", None),
    "Keras (.keras)": ("keras", None),
}
choice_column, button_column = st.columns([3, 1], vertical_alignment="bottom")
choice = choice_column.selectbox(
    "Export for deployment",
    list(EXPORT_CHOICES),
    key="evaluate_export_format",
    help="The model in another format, with contract.json and a reference script predict_<format>.py. The export "
    "is run in its own runtime on up to 32 test images and must match the Keras model's probabilities.",
)
if button_column.button("Export and check", disabled=not exports_ready, key="evaluate_export"):
    from medimg import export

    fmt, quantize = EXPORT_CHOICES[choice]
    try:
        with st.spinner(f"Exporting to {fmt} and checking it against the Keras model…"):
            result = export.export_run(
                run, fmt, run.path / "exports", quantize, threshold=export_threshold, positive=positive
            )
        st.session_state["evaluate_export_result"] = (run.id, result, export.export_zip(result))
    except MedimgError as error:
        st.error(str(error))
exported = st.session_state.get("evaluate_export_result")
if exported and exported[0] == run.id:
    _, result, archive = exported
    st.success(
        f"{result.model_file.name}: {result.size_bytes / 1024:.0f} KB; largest probability difference to the Keras "
        f"model on {result.sample_size} test images {result.max_abs_diff:.1e} (tolerance {result.tolerance:g})."
    )
    st.download_button(
        f"Download {result.path.name}.zip",
        archive,
        file_name=f"{result.path.name}.zip",
        mime="application/zip",
        on_click="ignore",
        key="evaluate_export_download",
    )
common.next_step("evaluate", run.id)
