"""What every page shares: the choices kept across pages, run pickers and error display. Not a page itself."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import streamlit as st

from medimg import jobs
from medimg.config import (
    CHOICES,
    DEFAULT_PRESET,
    PRESETS,
    AugmentConfig,
    DatasetConfig,
    ModelParams,
    RunSpec,
    SearchSpace,
    TrainConfig,
    TuneConfig,
    describe_run_augment,
)
from medimg.datasets import sources
from medimg.errors import MedimgError, RunsBusyError
from medimg.results import charts
from medimg.store import choices, runs

log = logging.getLogger("medimg.app")


def route_through_app() -> None:
    """Run every page through app.py's navigation, even when a deep link is a fresh server's first request.

    Streamlit (1.67) serves a `pages/` folder in its old multipage mode until some run of the main script has
    called `st.navigation`: a first request for /evaluate ran pages/evaluate.py alone, the sidebar listed every file
    of pages/ (common included) and app.py's set-up never ran, for every session until someone opened /. Leaving
    that mode (the flag `st.navigation` itself clears, `streamlit.runtime.pages_manager.PagesManager`) and rerunning
    runs app.py, which opens the page the link asked for."""
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


route_through_app()  # on import: every page imports this module before drawing anything
# A live page redraws this often. Watching a 2-minute BreastMNIST search in Chromium, the Streamlit server and the
# browser together took 50 and 46 CPU seconds at 1.5 s, 35 and 28 at 3 s (bench/README.md, "Watching a live
# search"), on the 2 cores the search trains on. Kept at 1.5 s: at 3 s the browser journey's check of a run's own
# settings after a reload raced the run's end (a 3-epoch run finished before the page showed it running).
POLL_SECONDS = 1.5
FOLLOW_KEY = "follow_run"  # the run this session launched last, until a run picker has shown it


# Choices live in plain session-state keys (not widget keys), so they survive moving between pages, and in
# medimg.store.choices' file, so they survive a reload, a second tab and a second launch.
DEFAULTS: dict[str, Any] = {
    "dataset": DatasetConfig(path=str(sources.DEMO_DATASET), group_regex=sources.DEMO_GROUP_REGEX),
    "augment": AugmentConfig(),
    "search": PRESETS[DEFAULT_PRESET].search,
    "tune": TuneConfig(max_trials=PRESETS[DEFAULT_PRESET].max_trials),
    "train": TrainConfig(epochs=PRESETS[DEFAULT_PRESET].trial_epochs),
    "final": TrainConfig(epochs=PRESETS[DEFAULT_PRESET].train_epochs),
    "params": ModelParams(),
}


def get(name: str) -> Any:
    """A choice: this session's, else the one kept beside the runs (a reload, another tab), else the default."""
    if name not in st.session_state:
        st.session_state[name] = choices.load(runs_root()).get(name, DEFAULTS[name])
    return st.session_state[name]


def put(name: str, value: Any) -> None:
    """Make a choice this session's and keep it beside the runs for the next reload, tab or launch."""
    st.session_state[name] = value
    try:
        choices.save(name, value, runs_root())
    except OSError as error:  # a read-only runs folder still lets this session work
        log.warning("could not keep the %s choice: %s", name, error)


def runs_root() -> Path:
    return runs.runs_root()


def is_kept(name: str) -> bool:
    """Whether the user has made this choice (in this or an earlier session), as opposed to its default."""
    return name in choices.load(runs_root())


@st.cache_data(show_spinner=False, ttl=30)
def class_names(path: str, group_regex: str = "", merge_label_case: bool = False) -> list[str]:
    """The dataset's class names, sorted, from its listing (no pixel read); [] when it cannot be listed (the
    Dataset page says why)."""
    from medimg.datasets.dataset import list_files

    try:
        listing = list_files(path, group_regex, merge_label_case)
    except (MedimgError, OSError):
        return []
    return sorted({f.label for f in listing.files})


def start_targets(widget_key: str, kept_name: str, data: DatasetConfig, multiple: bool) -> None:
    """Before a training-targets widget is drawn: start it on what the automatic mode would choose for this
    dataset's classes (`auto.choose_targets`: soft ordinal labels for numbered grades) whenever the page meets a
    dataset it has not shown in this session. A new session keeps the targets kept from an earlier one
    (`kept_name`, "search" or "params"), where the note under the widget (`targets_note`) says when they differ.
    `multiple`: the widget holds a list (the Tune page's multiselect) rather than one value."""
    from medimg import auto

    marker = f"{widget_key}_dataset"
    previous = st.session_state.get(marker)
    st.session_state[marker] = data.path
    if previous == data.path or (previous is None and is_kept(kept_name)):
        return
    names = class_names(data.path, data.group_regex, data.merge_label_case)
    if names:
        wanted = auto.choose_targets(names)[0]
        st.session_state[widget_key] = [wanted] if multiple else wanted


def targets_note(data: DatasetConfig, chosen: tuple[str, ...] | list[str]) -> None:
    """Under hand-set training targets: a caption when they differ from what the automatic mode would choose for
    this dataset's classes (`auto.targets_note`)."""
    from medimg import auto

    note = auto.targets_note(class_names(data.path, data.group_regex, data.merge_label_case), chosen)
    if note:
        st.caption(f":material/info: {note}")


def allowed_roots() -> list[Path]:
    try:
        extra = list(st.secrets.get("data_roots", []))
    except (FileNotFoundError, KeyError, AttributeError, Exception):  # no secrets.toml is the common case
        extra = []
    return sources.data_roots(extra)


def show_error(error: Exception) -> None:
    """A friendly message for the user; a MedimgError is expected, anything else is logged with its traceback."""
    if isinstance(error, MedimgError):
        st.error(str(error), icon=":material/warning:")
    else:
        log.exception("unexpected error in a page")
        st.error("Something went wrong inside medimg; the details are in the server log.", icon=":material/error:")


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else (f"{seconds // 60}:{seconds % 60:02d}")
    )


def run_label(run: runs.Run) -> str:
    try:
        summary = run.summary()
    except MedimgError:
        return run.id
    # Validation, the split models are chosen on: labelling runs by test scores invites choosing on test.
    score, metric = summary.get("val_score"), str(summary.get("val_metric") or "")
    name = runs.METRIC_WORDS.get(metric, metric)
    name = name if metric.startswith("cv_") else f"val {name}"
    extra = f" · {name} {score:.3f}" if isinstance(score, float) else ""
    return f"{run.id} · {runs.shown_status(summary['status'])}{extra}"


def readable_runs(kind: str | None = None, needs: str | None = None) -> list[runs.Run]:
    """Runs (newest first) whose run.json can be read, of one kind and holding a given file if asked."""
    found = []
    for run in runs.list_runs(runs_root()):
        try:
            record = run.record
        except MedimgError:
            continue  # a damaged run is listed (and deletable) on the Runs page, not offered here
        if kind and record.get("spec", {}).get("kind") != kind:
            continue
        if needs and not (run.path / needs).exists():
            continue
        found.append(run)
    return found


def default_index(candidates: list[runs.Run]) -> int:
    """Which of `candidates` (newest first) a page that uses a model opens on: the newest completed run, since a
    newer stopped or failed one holds a half-trained model (seen: Predict calling a pneumonia X-ray NORMAL with a
    training stopped after 10 of 30 epochs, a finished search beside it); the newest when none completed."""
    return next((i for i, run in enumerate(candidates) if run.status == "completed"), 0)


def pick_run(
    label: str, *, kind: str | None = None, needs: str | None = None, key: str, prefer_completed: bool = False
) -> runs.Run | None:
    """A run selectbox kept in the URL (`?run=ID`), so a refresh or a second tab reattaches to the same run.
    Without one in the URL it starts on the newest run, or with `prefer_completed` (pages that use a run's model)
    on the newest completed one (`default_index`)."""
    candidates = readable_runs(kind, needs)
    if not candidates:
        return None
    ids = [run.id for run in candidates]
    labels = {run.id: run_label(run) for run in candidates}
    # The browser keeps a selectbox's first option labels for as long as the widget lives, so "· running" stayed
    # after the run ended and a new validation score never appeared. A widget per set of labels is drawn afresh
    # whenever a label changes; the URL (?run=) carries the choice across.
    widget_key = f"{key}-{hashlib.sha1('|'.join(labels.values()).encode()).hexdigest()[:10]}"
    wanted = st.query_params.get("run")
    fallback = default_index(candidates) if prefer_completed else 0
    index = ids.index(wanted) if wanted in ids else fallback
    notice_key = f"{key}-unavailable"
    if wanted and wanted not in ids:  # a link or bookmark to a deleted run must not silently show another
        st.session_state[notice_key] = (unavailable_reason(wanted, kind, needs), ids[fallback])
    # A run just launched from this session is shown at once: the picker's kept value would otherwise win over
    # `index` and keep showing the previous run.
    follow = st.session_state.get(FOLLOW_KEY)
    if follow in ids:
        st.session_state[widget_key] = follow
        del st.session_state[FOLLOW_KEY]
    chosen = st.selectbox(label, ids, index=index, key=widget_key, format_func=labels.__getitem__)
    notice = st.session_state.get(notice_key)
    if notice and notice[1] == chosen:  # said until the user picks another run
        st.warning(f"{notice[0]}; showing {labels[chosen]} instead.", icon=":material/link_off:")
    elif notice:
        del st.session_state[notice_key]
    if chosen and st.query_params.get("run") != chosen:
        st.query_params["run"] = chosen
    return candidates[ids.index(chosen)] if chosen else None


def unavailable_reason(run_id: str, kind: str | None = None, needs: str | None = None) -> str:
    """Why the run a link names (`?run=ID`) is not among a page's choices, in a sentence without a full stop."""
    path = runs_root() / run_id
    if not (path / "run.json").is_file():
        return f"Run {run_id} (from the link) no longer exists: it was deleted or is in another runs folder"
    if kind and not run_id.startswith(f"{kind}-"):
        return f"Run {run_id} (from the link) is not a {kind} run"
    if needs and not (path / needs).exists():
        return f"Run {run_id} (from the link) has no {needs} yet (not finished?)"
    return f"Run {run_id} (from the link) cannot be read"


def attached_run(kind: str) -> runs.Run | None:
    """The run this page shows: the one named in the URL, else the newest of this kind (what `pick_run` selects)."""
    candidates = readable_runs(kind)
    wanted = st.query_params.get("run")
    for run in candidates:
        if run.id == wanted:
            return run
    return candidates[0] if candidates else None


def progress_header(progress: runs.Progress, run_id: str = "") -> None:
    """Status line, progress bar (per trial or per epoch, with the batch inside the epoch) and timing. `run_id`
    names the run in a failure's message: a page opens on the newest run, which may be an old one."""
    status = progress["status"]
    cols = st.columns(4)
    cols[0].metric("Status", runs.shown_status(status))
    collapsed = f" ({progress['trials_collapsed']} collapsed)" if progress["trials_collapsed"] else ""
    other = collapsed + "".join(f", {count} {status}" for status, count in progress["trials_other"].items())
    if progress["kind"] == "tune" and progress["max_trials"] is None:  # the time budget ends this search
        cols[1].metric(
            "Trials", f"{progress['trials_done']} done{other}", help="Trials start until the time budget is spent."
        )
    elif progress["kind"] == "tune":
        cols[1].metric("Trials", f"{progress['trials_done']} of {progress['max_trials']}{other}")
    else:
        cols[1].metric(
            "Epoch",
            f"{(progress['epoch'] or 0) + 1 if progress['epoch'] is not None else 0} of {progress['epochs'] or '?'}",
        )
    cols[2].metric("Elapsed", format_seconds(progress["elapsed_s"]))
    cols[3].metric(
        "ETA",
        format_seconds(progress["eta_s"]),
        help="Counts every remaining epoch: early stopping may end the run sooner."
        if progress["kind"] != "tune"
        else None,
    )
    st.progress(progress["fraction"], text=f"{progress['fraction']:.0%} of the run")
    if status == "running" and progress.get("steps") and not progress.get("stage"):  # not the last trial's, stale
        batch, steps = progress.get("batch") or 0, progress["steps"]
        trial = f"trial {runs.trial_number(progress['trial'])} · " if progress.get("trial") else ""
        st.progress(
            min(1.0, batch / steps), text=f"{trial}epoch {(progress['epoch'] or 0) + 1}: batch {batch} of {steps}"
        )
    if status == "running" and progress.get("stage"):
        st.caption(progress["stage"])
    for warning in progress.get("warnings", []):
        st.warning(warning, icon=":material/warning:")
    if status == "failed" and progress.get("error"):
        st.error(f"Run {run_id} failed: {progress['error']}" if run_id else progress["error"])
    elif progress.get("message") and status in ("stopped", "completed"):
        st.info(progress["message"])


def launch(spec: RunSpec, extra: dict[str, Any] | None = None) -> None:
    """Start a run as its own process and attach this page to it (URL `?run=ID`), or say why it cannot start.

    `extra`: more fields for the run's first run.json (the automatic mode's choices)."""
    try:
        run = jobs.launch(spec, runs_root(), extra=extra)
    except RunsBusyError as error:
        show_error(error)
        # Show the run that blocked this one (its progress and Stop button), not whatever the page showed before.
        same_kind = [run_id for run_id in error.busy if run_id.startswith(f"{spec.kind}-")]  # ids: KIND-date-time-tag
        if same_kind:
            st.query_params["run"] = same_kind[0]
            st.session_state[FOLLOW_KEY] = same_kind[0]
        return
    except MedimgError as error:
        show_error(error)
        return
    st.query_params["run"] = run.id
    st.session_state[FOLLOW_KEY] = run.id
    st.toast(f"Started {run.id}; this page now follows it.")
    # The new process writes its first event a moment after launch; a short wait avoids an empty first frame.
    deadline = time.time() + 0.5
    while not (run.path / "events.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    st.rerun()


def kept(key: str, value: Any, from_run: bool = False) -> dict[str, Any]:
    """A widget's `key` and persistence: its starting value comes from the kept choices the first time it is drawn
    in this session, and Streamlit keeps it while the widget is not drawn (another dataset source, a page switch).

    Widgets then take only these keyword arguments (no `value=`), so changing a value never changes the widget's
    identity. Without `persist_state="session"` Streamlit drops a hidden widget's state at the end of the run and the
    widget comes back at its minimum (seen: seed 0, 16 px after a visit to another dataset source); Streamlit's
    docs, `st.number_input(persist_state=...)`.

    `from_run`: the page shows the settings of a run in progress (its widgets disabled): `value` is that run's,
    shown whatever this session chose before (a run started in another tab, or before a page switch).
    """
    if from_run or key not in st.session_state:
        st.session_state[key] = value
    return {"key": key, "persist_state": "session"}


SHOWN = {  # how `config.Choice.shown` asks a value to be written
    "": str,
    "rate": lambda v: f"{v:.0e}" if v else "none",
    "with": lambda on: "with" if on else "without",
    "momentum": lambda v: f"{v:g}" if v else "none",
}


def slots(columns: list, count: int, width: int) -> list:
    """`count` places for widgets: the free `columns` of a row already drawn, then new rows of `width` columns."""
    columns = list(columns)
    while len(columns) < count:
        columns += st.columns(width)
    return columns[:count]


def choice_widgets(space: SearchSpace, columns: list, busy: bool) -> dict[str, tuple]:
    """One multiselect per categorical hyperparameter (`config.CHOICES`), in `columns` then rows of three,
    starting from `space`; returns the chosen values as SearchSpace fields (the Tune page's ranges)."""
    chosen = {}
    for choice, column in zip(CHOICES, slots(columns, len(CHOICES), 3), strict=True):
        values = column.multiselect(
            choice.label,
            list(choice.offered),
            format_func=SHOWN[choice.shown],
            help=choice.help or None,
            disabled=busy,
            **kept(f"tn_{choice.name}", list(getattr(space, choice.space_field)), busy),
        )
        chosen[choice.space_field] = tuple(values)
    return chosen


def value_widgets(params: ModelParams, columns: list, busy: bool) -> dict[str, Any]:
    """One widget per categorical hyperparameter (`config.CHOICES`), in `columns` then rows of four, starting from
    `params`; returns the chosen values as ModelParams fields (the Train page's single model). A number is typed
    in (the values a search offers in its help; ModelParams checks it), a name or a yes / no is picked from the
    offered ones (a value outside them, a search's, is offered too)."""
    chosen = {}
    for choice, column in zip(CHOICES, slots(columns, len(CHOICES), 4), strict=True):
        current = getattr(params, choice.name)
        kind = type(choice.offered[0])
        if kind in (int, float) and not choice.picked:  # bool is its own type here
            offered = ", ".join(SHOWN[choice.shown](v) for v in choice.offered)
            smallest = min((v for v in choice.offered if v > 0), default=1)
            chosen[choice.name] = column.number_input(
                choice.label,
                min_value=kind(0),
                max_value=kind(10 * max(choice.offered)),  # a typo's extra zeros stop here; ModelParams checks the rest
                step=kind(1) if kind is int else float(smallest),
                format="%d" if kind is int else "%g",
                disabled=busy,
                help=" ".join(filter(None, (choice.help, f"A search offers {offered}."))),
                **kept(f"tr_{choice.name}", kind(current), busy),
            )
        else:
            options = list(choice.offered) + ([] if current in choice.offered else [current])
            chosen[choice.name] = column.selectbox(
                choice.label,
                options,
                format_func=SHOWN[choice.shown],
                help=choice.help or None,
                disabled=busy,
                **kept(f"tr_{choice.name}", current, busy),
            )
    return chosen


NEXT_STEPS = {  # the first-time path: dataset → (augmentation) → automatic search → evaluate → predict
    "dataset": ("pages/tune.py", "Next: find a good model on the Tune page (automatic mode: just a time budget)"),
    "augment": ("pages/tune.py", "Next: search with these augmentations on the Tune page (Advanced)"),
    "evaluate": ("pages/predict.py", "Next: predict new images with this model"),
}


def next_step(page: str, run_id: str | None = None) -> None:
    """The link to the next page of the first-time path; expert pages stay one click away in the sidebar. With
    `run_id` the next page opens on that run (`?run=`), not on the newest."""
    target, label = NEXT_STEPS[page]
    st.page_link(target, label=label, icon=":material/arrow_forward:", query_params={"run": run_id} if run_id else None)


def run_settings_caption(run: runs.Run) -> None:
    """What this run was given, from its own run.json (not from the current choices, which may have moved on)."""
    spec = run.spec
    data = spec.dataset
    best = run.record.get("best_params")
    augment = describe_run_augment(spec, ModelParams.from_dict(best) if best else None)
    st.caption(f"This run: {data.path} · {data.image_size} px {data.color} · augmentation: {augment}")


def show_test_metrics(run: runs.Run) -> None:
    """A finished run's test figures (arg-max, and at the operating point chosen on validation), a loud error when
    the model calls every test image one class, a warning naming the classes it never calls, and the link to the
    Evaluate page."""
    record = run.record
    metrics = record.get("metrics")
    if not metrics or run.status in runs.ACTIVE_STATUSES:
        return
    # Imported here: this function is the only part of the shared page helpers that needs them.
    from medimg.results import evaluation, tables

    if record.get("one_class"):
        st.error(f"Degenerate model: {record['one_class']}.", icon=":material/error:")
    class_count = len(record.get("class_names") or [])
    never = evaluation.never_predicted_warning(metrics.get("never_predicted") or [], class_count)
    if never:
        st.warning(never, icon=":material/warning:")
    m1, m2, m3 = st.columns(3)
    # Two classes: the operating point below is what Predict and Evaluate call at, so this figure says its threshold.
    label = "Test accuracy at 0.5" if class_count == 2 else "Test accuracy"
    m1.metric(label, f"{metrics['accuracy']:.3f}", help="At the arg-max (threshold 0.5 for two classes).")
    m2.metric("Test balanced accuracy", f"{metrics['balanced_accuracy']:.3f}")
    auc = "–" if metrics["auc"] is None else f"{metrics['auc']:.3f}"
    if class_count > 2:
        m3.metric("Test macro AUC", auc, help=f"{tables.MACRO_AUC_NOTE[0].upper()}{tables.MACRO_AUC_NOTE[1:]}.")
    else:
        m3.metric("Test AUC", auc)
    point = metrics.get("operating_point")
    if point:
        st.caption(
            f"At the operating point chosen on validation (Youden's J, threshold {point['threshold']:.3f}): "
            f"sensitivity {point['sensitivity']:.3f}, specificity {point['specificity']:.3f}, "
            f"accuracy {point['accuracy']:.3f} on test. Predict and Evaluate call at this threshold."
        )
    if metrics.get("ordinal"):  # numbered grades: how far the calls miss (medimg.metrics.ordinal)
        from medimg.metrics import ordinal

        st.caption(ordinal.describe(metrics["ordinal"]))
    st.page_link(
        "pages/evaluate.py", label="Evaluate this model", icon=":material/analytics:", query_params={"run": run.id}
    )


def live_run_header(run: runs.Run, stopping: str) -> runs.Progress:
    """The top of the live-run panel of Tune and Train: what the run was given, its progress, and Stop (then
    `stopping` says what happens). Returns the run's progress (`runs.progress`)."""
    progress = runs.progress(run)
    run_settings_caption(run)
    progress_header(progress, run.id)
    if progress["status"] in runs.ACTIVE_STATUSES and st.button("Stop", key=f"stop_{run.id}"):
        jobs.stop(run)
        st.toast(stopping)
    elif progress["status"] in ("stopped", "failed") and st.button(
        "Resume",
        key=f"resume_{run.id}",
        help="Go on from where it stopped (python -m medimg resume): a search keeps its completed trials and has "
        "the time its budget left; a training continues from its last epoch.",
    ):
        try:
            jobs.resume(run)
        except MedimgError as error:
            show_error(error)
        else:
            st.rerun()
    return progress


def epoch_curves(run: runs.Run, key: str, trial: str | None = None) -> None:
    """Loss, accuracy and AUC per epoch of a train run (or of one trial of a search), fine-tuning stages marked."""
    history = run.epoch_history(trial=trial)
    if not history.get("epoch"):
        return
    stage_starts = run.stage_starts(trial)
    for column, metric in zip(st.columns(3), ("loss", "accuracy", "auc"), strict=True):
        column.plotly_chart(
            charts.history_figure(history, metric, stage_starts=stage_starts), key=f"{key}_{run.id}_{metric}"
        )


def follow_live(run: runs.Run, body: Any) -> None:
    """Draw `body(run)` now and, while the run is active, again every POLL_SECONDS (a fragment, so the rest of the
    page stays put); a MedimgError is shown as its message; the page redraws once when the run ends (enabling the
    controls again) and once when it goes from queued to running (the run picker's label)."""
    drawn = run.status
    active = drawn in runs.ACTIVE_STATUSES

    @st.fragment(run_every=POLL_SECONDS if active else None)
    def live() -> None:
        try:
            body(run)
        except MedimgError as error:
            show_error(error)
        # Queued → running → ended: the run picker, outside this fragment, labels runs by status (it said
        # "· queued" while the run trained), and the controls follow the status too.
        if active and run.status != drawn:
            st.rerun()

    live()
