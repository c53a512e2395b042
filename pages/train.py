"""Train: the final model with the best parameters of a search (or your own), with live curves and Stop."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from medimg import workflows
from medimg.config import ModelParams, RunSpec, TrainConfig, describe_augment, describe_params
from medimg.errors import MedimgError
from medimg.model import backbones
from medimg.store import runs
from pages import common

st.title("Train")
train: TrainConfig = common.get("final")  # the Tune page's "train" is its per-trial fit
params: ModelParams = common.get("params")
attached = common.attached_run("train")
busy = attached is not None and attached.status in runs.ACTIVE_STATUSES
searches = [r for r in common.readable_runs("tune") if r.record.get("best_params")]
if busy:  # show the settings of the run in progress (after a refresh the session has none of its own)
    train, params = attached.spec.train, attached.spec.params
    # Which way it was started decides the view; the session's own choice may be another run's, or none at all
    # after a page switch (seen: a Manual training shown under "Best of a search" with a search's settings).
    from_search = attached.record.get("from_search")
    st.session_state["train_source"] = "Best of a search" if from_search in [r.id for r in searches] else "Manual"
elif "train_source" not in st.session_state:  # set here, not by `index`: Streamlit warns when both are given
    st.session_state["train_source"] = "Best of a search" if searches else "Manual"
source = st.radio("Hyperparameters", ["Best of a search", "Manual"], horizontal=True, disabled=busy, key="train_source")
dataset_config = common.get("dataset")
augment = common.get("augment")
if busy:
    dataset_config, augment = attached.spec.dataset, attached.spec.augment
base: RunSpec | None = None  # the final training of a search, as `workflows.train_spec_from_search` makes it
schedule = train
if source == "Best of a search":
    if not searches:
        st.info("No finished search yet. Run one on the Tune page, or choose Manual.")
        st.stop()
    ids = [r.id for r in searches]
    # The search to train from is in the URL (?from=ID) too, so a reload or a second tab names the same one.
    preferred = (
        attached.record.get("from_search")
        if busy
        else st.session_state.get("train_from_run") or st.query_params.get("from")
    )
    fallback = common.default_index(searches)
    chosen = st.selectbox(
        "Search run",
        ids,
        index=ids.index(preferred) if preferred in ids else fallback,
        disabled=busy,
        format_func=lambda i: common.run_label(searches[ids.index(i)]),
    )
    if preferred and preferred not in ids and chosen == ids[fallback]:  # a link to a deleted or unfinished search
        reason = common.unavailable_reason(preferred, "tune", "model.keras")
        st.warning(f"{reason}; showing {common.run_label(searches[fallback])} instead.", icon=":material/link_off:")
    if chosen and st.query_params.get("from") != chosen:
        st.query_params["from"] = chosen
    search = searches[ids.index(chosen)]
    base = workflows.train_spec_from_search(search)  # the same final training as `train --from-run`
    params, dataset_config, augment = base.params, base.dataset, base.augment
    schedule = attached.spec.train if busy else base.train
    st.caption(
        f"Dataset and augmentation of {search.id}: {dataset_config.path}, {dataset_config.image_size} px "
        f"{dataset_config.color}."
    )
    st.caption(
        f"Final-fit schedule: up to {base.train.epochs} epochs, early stopping on {base.train.monitor} after "
        f"{base.train.early_stopping_patience} epochs without progress (the best epoch's weights kept), the "
        "learning rate halved on plateaus."
    )
    st.table(pd.DataFrame(describe_params(params, base.train), columns=["Setting", "Value"]).set_index("Setting"))
else:
    b1, b2, b3 = st.columns(3)
    network = b1.selectbox(
        "Network",
        ["cnn", *backbones.BACKBONE_NAMES],
        format_func=lambda name: "configurable CNN (below)" if name == "cnn" else name,
        **common.kept("tr_backbone", params.backbone, busy),
        disabled=busy,
        help="A keras.applications network with a new head, or medimg's CNN trained from scratch.",
    )
    found = network == "cnn" or next(r for r in backbones.weights_status() if r["backbone"] == network)["found"]
    start_from = b2.selectbox(
        "Starting weights",
        ["imagenet", "none"],
        format_func={
            "imagenet": "ImageNet" if found else "ImageNet (not found offline)",
            "none": "none (random)",
        }.__getitem__,
        **common.kept(
            "tr_start_weights", params.weights if params.weights in ("imagenet", "none") else "imagenet", busy
        ),
        disabled=busy or network == "cnn",
    )
    fine_tune_blocks = b3.number_input(
        "Top blocks fine-tuned in stage 2",
        0,
        100,
        **common.kept("tr_ft_blocks", params.fine_tune_blocks, busy),
        disabled=busy or network == "cnn" or start_from == "none",
        help="Stage 1 trains the head on the frozen backbone; stage 2 unfreezes this many top blocks at a low rate.",
    )
    if network != "cnn":
        if start_from == "imagenet" and not found:
            st.warning(backbones.missing_weights_message(backbones.get_backbone(network)), icon=":material/warning:")
        st.caption(
            f"{network}: ImageNet weights suit {backbones.get_backbone(network).size} px inputs "
            "(the dataset's image size is used); the filter, kernel, batch-norm and head settings below are the CNN's "
            "and are not used."
        )
    c1, c2, c3, c4 = st.columns(4)
    filters_text = c1.text_input(
        "Filters per block",
        **common.kept("tr_filters", ", ".join(map(str, params.filters)), busy),
        disabled=busy,
        help="Comma-separated, one number per conv block.",
    )
    learning_rate = c2.number_input(
        "Learning rate", 1e-6, 0.5, format="%.5f", **common.kept("tr_lr", params.learning_rate, busy), disabled=busy
    )
    if not busy:
        common.start_targets("tr_soft_labels", "params", dataset_config, multiple=False)
    chosen = common.value_widgets(params, [c3, c4], busy)
    if not busy:
        common.targets_note(dataset_config, [chosen["soft_labels"]])
    try:
        filters = tuple(int(x) for x in filters_text.replace(" ", "").split(",") if x)
        params = params.replace(
            **chosen,
            filters=filters,
            learning_rate=float(learning_rate),
            backbone=network,
            weights=start_from if network != "cnn" else "imagenet",
            fine_tune_blocks=int(fine_tune_blocks) if network != "cnn" else 0,
        )
        common.put("params", params)
    except ValueError as error:
        common.show_error(
            error
            if isinstance(error, MedimgError)
            else MedimgError(f"filters must be whole numbers separated by commas, e.g. 32, 64 ({error}).")
        )
        st.stop()
    # What Start will train on: the Dataset and Augment pages' choices, said before the run, as Tune does.
    st.caption(
        f"Dataset: {dataset_config.path} · {dataset_config.image_size} px {dataset_config.color} · augmentation: "
        f"{describe_augment(augment.scaled(params.augment_strength))}"
    )

# A search's schedule is seeded per search run; the manual one is the page's own kept choice.
prefix = f"tr_{search.id}_" if base else "tr_"
t1, t2, t3 = st.columns(3)
epochs = t1.number_input("Epochs", 1, 1000, **common.kept(f"{prefix}epochs", schedule.epochs, busy), disabled=busy)
patience = t2.number_input(
    "Early-stopping patience (0 = off)",
    0,
    100,
    **common.kept(f"{prefix}patience", schedule.early_stopping_patience, busy),
    disabled=busy,
)
weights = t3.selectbox(
    "Class weights",
    ["auto", "balanced", "none"],
    disabled=busy,
    **common.kept(f"{prefix}weights", schedule.class_weights, busy),
    help=(
        "auto: balanced weights when the classes differ by more than 1.5×. Weights change what the network learns; "
        "the saved model's outputs are shifted back to the training class frequencies, so its probabilities mean "
        "what an unweighted model's do (choose the operating point to favour a class)."
    ),
)
schedule = schedule.replace(epochs=int(epochs), early_stopping_patience=int(patience), class_weights=weights)
if base is None:
    common.put("final", schedule)

if st.button("Start training", type="primary", disabled=busy):
    spec = (
        base.replace(train=schedule)
        if base
        else RunSpec(kind="train", dataset=dataset_config, augment=augment, train=schedule, params=params)
    )
    common.launch(spec, extra={"from_search": search.id if base else None})

run = common.pick_run("Training run", kind="train", key="train_run")
if run is None:
    st.info("No training run yet: press Start training.")
    st.stop()


def show_run(run: runs.Run) -> None:
    common.live_run_header(run, "Stop requested: training ends at the next batch and saves the model it has.")
    common.epoch_curves(run, "train")
    common.show_test_metrics(run)


common.follow_live(run, show_run)
