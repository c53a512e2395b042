"""Dataset: pick a dataset, see what is in it, choose splits, image size and channel mode."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from medimg import auto
from medimg.config import DatasetConfig
from medimg.datasets import datachecks, dataset, scanning, sources
from medimg.errors import ConfigError, MedimgError
from medimg.imaging import dicom, images
from medimg.results import charts
from pages import common

st.title("Dataset")
SIZES = (16, 28, 32, 48, 64, 96, 128, 160, 224, 256)  # the image sizes offered, pixels
config: DatasetConfig = common.get("dataset")


@st.cache_data(show_spinner="Scanning images…", max_entries=8, ttl=600)
def scan_cached(path: str, group_regex: str, merge_label_case: bool = False) -> scanning.ScanReport:
    return scanning.scan(path, group_regex, merge_label_case=merge_label_case)


@st.cache_data(show_spinner=False, max_entries=8, ttl=600)
def suggest_cached(path: str, group_regex: str, merge_label_case: bool, seed: int) -> auto.InputSuggestion:
    """`auto.suggest_input` once per dataset: its colour check opens up to 48 files, not on every click."""
    return auto.suggest_input(scan_cached(path, group_regex, merge_label_case), SIZES, seed)


@st.cache_data(max_entries=256)
def thumbnail(path: str) -> bytes | None:
    import cv2

    try:
        pixels = images.load_image(path, 128, "rgb")
    except Exception:  # the scan report already lists why; a thumbnail is just left out
        return None
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    return encoded.tobytes() if ok else None


@st.cache_data(max_entries=64, ttl=600, show_spinner=False)
def brought_group_regex(path: str) -> str:
    return sources.default_group_regex(path)


def group_widget(path: str) -> str:
    """The patient-ID pattern of the dataset at `path`; drawn on every run, as the settings below (an empty pattern
    would mix patients). One field per dataset, starting from the pattern kept for it or the one it brings (the
    demo's, or a known naming convention's), so switching datasets neither carries a pattern over nor shows an
    example that is not applied."""
    # The pattern kept for this dataset, even an emptied one; a dataset chosen anew starts from the one it brings.
    start = config.group_regex if config.path == path else brought_group_regex(path)
    return st.text_input(
        "Patient ID pattern (optional regex with one group, over file names)",
        **common.kept(f"ds_group:{path}", start),
        placeholder="empty: each image counts as its own patient",
        help="Images with the same patient ID are kept in the same split, and the leakage check looks for a patient "
        r"in two splits. Example: ^(person\d+)_ for person1_virus_6.jpeg.",
    )


def split_and_input_widgets(split_folders: bool = False, test_folder: bool = False) -> tuple:
    """The splits and model-input settings (validation and test fractions, seed, image size, channel mode), drawn on
    every run of the page, whichever source is chosen: a widget Streamlit does not draw on a run can come back at
    its minimum (seen in the browser test: seed 0 after a visit to another source), so these never go away.
    `split_folders` / `test_folder`: the dataset brings its own split folders, so the fractions do not apply."""
    st.subheader("Splits and model input")
    c1, c2, c3 = st.columns(3)
    sizes = list(SIZES)
    val_fraction = c1.slider(
        "Validation fraction",
        0.05,
        0.4,
        step=0.05,
        disabled=split_folders,
        **common.kept("ds_val", float(config.val_fraction)),
    )
    test_fraction = c2.slider(
        "Test fraction",
        0.0,
        0.4,
        step=0.05,
        disabled=test_folder,
        **common.kept("ds_test", float(config.test_fraction)),
    )
    seed = c3.number_input("Seed", 0, 2**31 - 1, **common.kept("ds_seed", int(config.seed)))
    c4, c5 = st.columns(2)
    image_size = c4.select_slider(
        "Image size (pixels, square)",
        sizes,
        **common.kept("ds_size", config.image_size if config.image_size in sizes else 64),
        help="Small sizes train fast on a CPU: 64 px is a good start for X-rays; above the images' own size "
        "nothing is gained.",
    )
    color = c5.radio("Channel mode", ["gray", "rgb"], horizontal=True, **common.kept("ds_color", config.color))
    return val_fraction, test_fraction, seed, image_size, color


def stop_keeping_settings(group_drawn: bool = False) -> None:
    """End this run of the page (no dataset to show yet, or an error said above) with the settings still drawn."""
    if not group_drawn:
        group_widget(path)
    split_and_input_widgets()
    st.stop()


uploaded = sources.is_kept_upload(config.path, common.runs_root())
source = st.radio(
    "Source",
    ["Bundled demo", "Folder on the server", "Upload a zip"],
    horizontal=True,
    index=0 if config.path == str(sources.DEMO_DATASET) else 2 if uploaded else 1,
    key="dataset_source",
)
path = config.path
if source == "Bundled demo":
    path = str(sources.DEMO_DATASET)
    st.caption(
        "140 paediatric chest X-rays (NORMAL / PNEUMONIA), patient-disjoint train/val/test. CC BY 4.0, "
        "Kermany et al. 2018. Not for clinical use."
    )
elif source == "Folder on the server":
    roots = common.allowed_roots()
    if not roots:
        st.info(
            "No data roots are configured. Set `MEDIMG_DATA_ROOTS` (folders separated by `:`) or `data_roots` "
            "in `.streamlit/secrets.toml`; only folders inside them can be opened. Until then runs use the "
            f"current dataset, `{config.path}`."
        )
        stop_keeping_settings()
    folders = [str(p) for p in sources.list_dataset_folders(roots)]
    # A key, not `index=`: an index that follows the chosen dataset would change the widget's identity on the run
    # after a choice, so a second choice in a row was dropped and the first one came back.
    typed = st.selectbox(
        "Folder",
        folders,
        placeholder="Choose a folder under the data roots",
        accept_new_options=True,
        **common.kept("ds_folder", path if path in folders else None),
    )
    if not typed:
        stop_keeping_settings()
    try:
        path = str(sources.resolve_in_roots(typed, roots))
    except MedimgError as error:
        common.show_error(error)
        stop_keeping_settings()
else:
    upload = st.file_uploader("Zip of class folders (or train/val/test folders)", type=["zip"])
    if uploaded and "uploaded_dataset" not in st.session_state:
        st.session_state["uploaded_dataset"] = config.path  # kept from an earlier visit, tab or launch
    if upload is None and not st.session_state.get("uploaded_dataset"):
        st.info(f"Upload a zip to continue. Until then runs use the current dataset, `{config.path}`.")
        stop_keeping_settings()
    if upload is not None and st.session_state.get("uploaded_name") != upload.file_id:
        try:
            kept = sources.keep_upload(upload.getvalue(), upload.name, common.runs_root())
            st.session_state["uploaded_dataset"] = str(kept)
            st.session_state["uploaded_name"] = upload.file_id
        except MedimgError as error:
            common.show_error(error)
            stop_keeping_settings()
    path = st.session_state["uploaded_dataset"]
    st.caption(f"Uploaded dataset kept at `{path}` (beside the runs, so runs trained on it can be re-evaluated).")

group_regex = group_widget(path)
if st.button("Rescan", help="Read the folder again (after adding or changing files)."):
    scan_cached.clear()
try:
    merge_label_case = (
        st.checkbox(
            "Merge labels that differ only in case",
            **common.kept("ds_merge_case", config.merge_label_case),
            help="For a CSV manifest: 'Normal', 'normal ' and 'NORMAL' become one class (spaces are always trimmed).",
        )
        if path.lower().endswith(".csv")
        else False
    )
    DatasetConfig(path=path, group_regex=group_regex)
    report = scan_cached(path, group_regex, merge_label_case)
except MedimgError as error:
    common.show_error(error)
    stop_keeping_settings(group_drawn=True)

cols = st.columns(4)
cols[0].metric("Readable images", report.image_count)
cols[1].metric("Classes", len(report.classes))
cols[2].metric("Unreadable / skipped", len(report.unreadable))
cols[3].metric("Layout", report.layout.replace("_", " "))
if report.leakage:
    st.warning(
        f"Leakage: {len(report.leakage)} identical image(s) appear in more than one split. "
        "Test metrics will be optimistic until they are removed.",
        icon=":material/warning:",
    )
for warning in report.warnings:  # what training will do about classes and splits: the scan says it first
    st.warning(warning, icon=":material/warning:")
left, right = st.columns(2)
left.plotly_chart(charts.class_counts_figure(report.splits or report.classes), key="class_counts")
with right:
    st.markdown("**Image sizes** (width × height)")
    st.dataframe(pd.DataFrame(list(report.sizes.items()), columns=["size", "images"]), hide_index=True)
    st.markdown("**Formats and channel modes**")
    st.dataframe(pd.DataFrame(list(report.modes.items()), columns=["format", "images"]), hide_index=True)

st.subheader("Samples")
for name in report.class_names:
    # Training images first: the split a model learns from (a folder's listing put test_*.png first).
    files = sorted((f for f in report.files if f.label == name), key=lambda f: f.split != "train")[:8]
    st.markdown(f"**{name}** ({report.classes[name]} images)")
    thumbs = st.columns(8)
    for column, file in zip(thumbs, files, strict=False):
        data = thumbnail(file.path)
        if data:
            column.image(data, caption=file.path.rsplit("/", 1)[-1][:22], width="stretch")

if report.unreadable:
    with st.expander(f"Unreadable or skipped files ({len(report.unreadable)})", expanded=len(report.unreadable) < 20):
        st.dataframe(pd.DataFrame(report.unreadable), hide_index=True)
if report.notes:
    st.info(
        f"{len(report.notes)} file(s) read with a caveat (a multi-frame DICOM is trained on its first frame; "
        "the Predict page lets you choose the frame of an uploaded file)."
    )
    with st.expander(f"Files read with a caveat ({len(report.notes)})"):
        st.dataframe(pd.DataFrame(report.notes), hide_index=True)
if report.duplicates:
    with st.expander(f"Exact duplicates ({len(report.duplicates)} groups)"):
        st.dataframe(pd.DataFrame({"identical files": [" == ".join(g) for g in report.duplicates]}), hide_index=True)

has_split_folders = bool(report.splits) and set(report.splits) >= {"train", "val"}
suggested = suggest_cached(path, group_regex, merge_label_case, int(config.seed))
if path != config.path:  # a dataset chosen just now starts from what its images suggest, not the last one's
    st.session_state["ds_size"], st.session_state["ds_color"] = suggested.image_size, suggested.color
split_settings = split_and_input_widgets(has_split_folders, has_split_folders and "test" in report.splits)
val_fraction, test_fraction, seed, image_size, color = split_settings
if image_size > suggested.native:
    fitting = [size for size in SIZES if size <= suggested.native]
    st.warning(
        f"The images are {suggested.native} px: {image_size} px enlarges them {image_size / suggested.native:.1f}× "
        "(no detail is added, training is slower)"
        + (f"; {max(fitting)} px is the largest size offered that does not." if fitting else "."),
        icon=":material/warning:",
    )
if color != suggested.color:
    st.warning(
        f"Channel mode {color}, but the images suggest {suggested.color} ({suggested.color_reason})"
        + ("; gray drops the colour." if color == "gray" else "; rgb triples the input without adding anything."),
        icon=":material/warning:",
    )
window_center, window_width = 0.0, 0.0
if any(mode.startswith("dicom") for mode in report.modes):
    presets = {"each file's own (header)": None, **{name: (w.center, w.width) for name, w in dicom.CT_WINDOWS.items()}}
    current = next((name for name, values in presets.items() if values == config.window), "custom")
    w1, w2, w3 = st.columns(3)
    choice = w1.selectbox(
        "DICOM window",
        [*presets, "custom"],
        **common.kept("ds_window", current),
        help="Training and prediction both use it; CT presets are in Hounsfield units.",
    )
    if choice == "custom":
        window_center = w2.number_input(
            "Window centre", -5000.0, 50000.0, **common.kept("ds_wc", float(config.window_center or 40.0))
        )
        window_width = w3.number_input(
            "Window width", 2.0, 100000.0, **common.kept("ds_ww", float(config.window_width or 400.0))
        )
    elif presets[choice]:
        window_center, window_width = presets[choice]
try:
    new_config = DatasetConfig(
        path=path,
        image_size=int(image_size),
        color=color,
        val_fraction=float(val_fraction),
        test_fraction=float(test_fraction),
        seed=int(seed),
        group_regex=group_regex,
        merge_label_case=merge_label_case,
        window_center=float(window_center),
        window_width=float(window_width),
    )
    splits = dataset.make_splits(report.files, new_config.val_fraction, new_config.test_fraction, new_config.seed)
except (ConfigError, MedimgError) as error:
    common.show_error(error)
    st.stop()
common.put("dataset", new_config)
if has_split_folders:
    st.caption(f"Split: the dataset's own folders ({splits.source}).")
else:
    st.caption(f"Split: {splits.source}, seed {new_config.seed}.")
table = pd.DataFrame(splits.counts()).T
table["total"] = table.sum(axis=1)
st.dataframe(table)
empty = [name for name, files in splits.items() if not files]
if empty:
    st.error(
        f"The {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty: runs on this dataset would "
        "fail before training (no validation to choose on, or no test to evaluate on). Raise the fractions or add "
        "the split folders.",
        icon=":material/error:",
    )
# The split just drawn, as training will see it (a carved split can miss a class of one or two images).
for warning in datachecks.split_warnings(splits.counts()):
    if warning not in report.warnings:
        st.warning(warning, icon=":material/warning:")
overlap = splits.group_overlap()
if overlap:
    st.warning(f"{len(overlap)} patient(s) appear in more than one split: {', '.join(sorted(overlap)[:10])}")
window_text = f", DICOM window {window_center:g}/{window_width:g}" if new_config.window else ""
st.success(f"Runs will use {new_config.path} at {new_config.image_size} px, {new_config.color}{window_text}.")
# Seen: "at 32 px" here, then an automatic run at 40 px, the images' own size: the automatic mode chooses its own.
st.caption(
    "Tune's Automatic mode chooses the image size and colour itself, from the images and the time budget, and says "
    "why; the size and colour here are for Advanced searches and Train."
)
if not empty:
    common.next_step("dataset")
