"""Augment: choose training-time augmentations and see one image augmented many times by the code training uses."""

from __future__ import annotations

import streamlit as st

from medimg.config import AUGMENT_UNITS, AugmentConfig
from medimg.datasets import dataset
from medimg.errors import MedimgError, file_reason
from medimg.imaging.contract import InputContract
from pages import common

st.title("Augment")
config: AugmentConfig = common.get("augment")
data = common.get("dataset")

if st.button("Reset to none", help="Turn every augmentation off."):
    common.put("augment", AugmentConfig())
    for field in AugmentConfig.__dataclass_fields__:
        st.session_state.pop(f"aug_{field}", None)
    st.rerun()

left, right = st.columns([1, 2])
with left:
    st.caption(
        "Strengths in degrees and percent; 0 is off. Augmentation applies to the training split only, a new random "
        "draw every epoch."
    )
    values = {
        "flip_horizontal": st.checkbox("Horizontal flip", **common.kept("aug_flip_horizontal", config.flip_horizontal)),
        "flip_vertical": st.checkbox("Vertical flip", **common.kept("aug_flip_vertical", config.flip_vertical)),
    }
    for field, unit in AUGMENT_UNITS.items():
        shown = st.slider(
            unit.label,
            0.0,
            unit.maximum,
            step=unit.step,
            format=f"%g{unit.unit.replace('%', '%%')}",  # sprintf: a literal % must be doubled
            help=unit.help,
            **common.kept(f"aug_{field}", unit.shown(float(getattr(config, field)))),
        )
        values[field] = unit.stored(shown)
    try:
        config = AugmentConfig(**values)
        common.put("augment", config)
    except MedimgError as error:
        common.show_error(error)
        st.stop()
    copies = st.select_slider("Preview copies", [4, 8, 12, 16], value=12)


@st.cache_data(show_spinner=False, max_entries=4, ttl=600)
def listed_files(path: str, group_regex: str) -> list[dataset.ImageFile]:
    return dataset.list_files(path, group_regex).files


with right:
    try:
        files = listed_files(data.path, data.group_regex)
    except MedimgError as error:
        common.show_error(error)
        st.stop()
    try:  # augmentation applies to the training split only: preview the images it will change
        files = dataset.make_splits(files, data.val_fraction, data.test_fraction, data.seed).train
    except MedimgError:
        pass  # no usable split yet (e.g. one class): the Dataset page says why; preview any image meanwhile
    names = [f.path for f in files]
    chosen = st.selectbox(
        "Training image", names, format_func=lambda p: "/".join(p.rsplit("/", 3)[-3:]), key="aug_image"
    )
    try:
        image = InputContract.from_config(data).load(chosen)
    except Exception as error:
        st.error(f"{chosen}: {file_reason(error)}")
        st.stop()
    if config.is_identity:
        st.info("No augmentation is on: training sees the images as they are.")
    from medimg.datasets import augment

    previews = []  # nothing on: twelve copies of the original said nothing the note does not
    if not config.is_identity:
        with st.spinner("Augmenting…"):
            previews = augment.preview(image, config, n=copies, seed=int(st.session_state.get("aug_seed", 0)))
    st.image(
        [image, *previews],
        caption=["original", *[f"#{i + 1}" for i in range(len(previews))]],
        width=112,
        clamp=True,
    )
    if st.button("New random draw"):
        st.session_state["aug_seed"] = int(st.session_state.get("aug_seed", 0)) + 1
        st.rerun()
common.next_step("augment")
