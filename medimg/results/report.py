"""A finished run's report: one self-contained HTML file, a model card (the model bundle is in `bundle.py`).

It opens offline: plotly.js is embedded once, inline, and every image is a base64 data URI. It holds the
intended use and the not-for-clinical-use notice, the dataset and its splits, the leakage check, the training
setup, metrics with bootstrap intervals at the chosen operating point, curves, calibration, example Grad-CAMs
and the software versions.
"""

from __future__ import annotations

import datetime
import html
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from medimg import __version__
from medimg.config import ModelParams, describe_run_augment
from medimg.metrics import clinical, ordinal, subgroups
from medimg.metrics.calibration import ERROR_TOLERANCE, CalibrationSummary
from medimg.model.models import load_run_model
from medimg.results import charts, evaluation, htmldoc, tables
from medimg.store.runs import Run, trial_number

NOT_FOR_CLINICAL_USE = (
    "Not for clinical use. This model and report come from a research and teaching tool. They are not a medical "
    "device, have not been validated for diagnosis, triage, screening or treatment decisions, and must not be used "
    "for patient care."
)
PACKAGES = (
    "tensorflow",
    "keras",
    "numpy",
    "scikit-learn",
    "scipy",
    "pandas",
    "plotly",
    "pydicom",
    "opencv-python-headless",
    "pillow",
    "keras-tuner",
    "streamlit",
)


def ensure_evaluated(run: Run) -> dict[str, Any]:
    """The run's metrics.json, re-evaluating first when it predates val predictions and the leakage check (version
    2). Later versions only add figures the report derives from the saved predictions itself (the classes never
    called), so a run whose dataset has since moved still gets its report."""
    metrics = run.read_json("metrics.json") or {}
    current = metrics.get("evaluation_version", 0) >= evaluation.VALIDATION_SCORED_VERSION
    if not current or not evaluation.read_predictions(run, "val"):
        metrics = evaluation.evaluate_run(run)
    if "never_predicted" not in metrics:  # evaluated at version 2: the same list from the same predictions
        metrics = {**metrics, "never_predicted": evaluation.never_predicted(evaluation.load_scored(run)["test"])}
    return metrics


def software_versions() -> dict[str, str]:
    """Python, platform, medimg and the installed versions of the packages the engine relies on."""
    versions = {"python": platform.python_version(), "platform": platform.platform(), "medimg": __version__}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


# ------------------------------------------------------------------------------------------------------- report
def write_report(
    run: Run,
    path: str | Path,
    threshold: float | None = None,
    positive: str | int | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    preset: str | None = None,
    target: float = evaluation.DEFAULT_TARGET,
) -> Path:
    """Write the run's report to `path` (one HTML file) and return the path. `threshold`, `preset`, `target`: as
    `build_report`."""
    path = Path(path)
    text = build_report(run, threshold, positive, n_resamples, seed, preset, target)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
    return path


def build_report(
    run: Run,
    threshold: float | None = None,
    positive: str | int | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    preset: str | None = None,
    target: float = evaluation.DEFAULT_TARGET,
) -> str:
    """The report as one self-contained HTML document, at `threshold` for two classes: by default the operating
    point chosen on validation (`evaluation.default_threshold`: Youden's J, else 0.5), the one Predict calls at.
    `preset`: the preset rule that chose `threshold` ('youden', 'sensitivity', 'specificity', 'default'), when
    known: the card names it (see `evaluation.threshold_origin`); the target presets are chosen at `target` (the
    Evaluate page's "Target"; 0.95 by default), so a threshold one of them chose is named, not "set by hand"."""
    metrics = ensure_evaluated(run)
    scored = evaluation.load_scored(run)
    if threshold is None:  # several classes: the arg-max, and the threshold is not used
        binary = scored["test"].binary
        threshold = evaluation.default_threshold(scored["test"], scored.get("val"), positive) if binary else 0.5
        preset = preset or ("youden" if binary else None)  # what `default_threshold` starts from
    summary = evaluation.clinical_summary(
        scored["test"], scored.get("val"), threshold, positive, n_resamples, seed, target
    )
    record = run.record
    parts = [
        _header(run, summary, metrics, preset),
        htmldoc.section("Intended use", _intended_use(record)),
        htmldoc.section("Dataset and splits", _dataset(record)),
        htmldoc.section("Leakage check", _leakage(metrics.get("leakage") or {})),
        htmldoc.section("Training setup", _training(run, record)),
        htmldoc.section("Performance on the test split", _performance(summary, metrics.get("per_class") or {})),
    ]
    if ordinal.numbered_grades(list(scored["test"].class_names)):
        by_split = {split: ordinal.ordinal_summary(s.labels, s.probs) for split, s in scored.items() if len(s)}
        parts.append(htmldoc.section("Graded classes", [htmldoc.paragraph(ordinal.describe(by_split))]))
    parts.append(htmldoc.section("Calibration", _calibration(summary["calibration"])))
    by_subgroup = _subgroups(run, scored["test"], summary)
    if by_subgroup:
        parts.append(htmldoc.section("Subgroups", by_subgroup))
    parts += [
        htmldoc.section("Example Grad-CAMs", _gradcams(run, scored["test"], summary)),
        htmldoc.section("Limitations", _limitations(summary, metrics, record)),
        htmldoc.section("Software", htmldoc.table(["component", "version"], list(software_versions().items()))),
    ]
    return htmldoc.document(f"medimg report · {run.id}", "\n".join(htmldoc.embed_figures(parts)), NOT_FOR_CLINICAL_USE)


def _header(
    run: Run, summary: evaluation.ClinicalSummary, metrics: dict[str, Any] | None = None, preset: str | None = None
) -> str:
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    point = (
        f"operating point: p({summary['positive_class']}) ≥ {summary['threshold']:.3f} ("
        + evaluation.threshold_origin(summary["threshold"], summary["presets"], summary["presets_split"], preset)[0]
        + ")"
        if summary["positive_class"]
        else "multi-class, arg-max decision"
    )
    return (
        f"<h1>Model card and evaluation report</h1><p class='meta'>run {html.escape(run.id)} · generated {stamp} · "
        f"medimg {__version__} · {html.escape(point)}</p>"
        f"<div class='warning'><strong>{html.escape(NOT_FOR_CLINICAL_USE)}</strong></div>"
        + "".join(
            f"<div class='warning'><strong>{html.escape(text)}</strong></div>"
            for text in (
                f"Degenerate model: {(metrics or {}).get('one_class')}." if (metrics or {}).get("one_class") else "",
                _never_predicted(summary, metrics or {}) or "",
                evaluation.one_class_at_threshold(summary) or "",
            )
            if text
        )
    )


def _never_predicted(summary: evaluation.ClinicalSummary, metrics: dict[str, Any]) -> str | None:
    return evaluation.never_predicted_warning(metrics.get("never_predicted") or [], len(summary["class_names"]))


def _intended_use(record: dict[str, Any]) -> list[str]:
    names = ", ".join(record.get("class_names", []))
    return [
        htmldoc.paragraph(
            f"Research and education only: a convolutional classifier of {names} trained with medimg, and an "
            "evaluation of it on a held-out test split drawn from the same source as its training data."
        ),
        htmldoc.paragraph(
            "Out of scope: any clinical decision; images from other sites, devices, protocols or populations than "
            "the training data (performance there is unknown); use without a qualified reader."
        ),
    ]


def _dataset(record: dict[str, Any]) -> list[Any]:
    data, spec = record.get("data", {}), record.get("spec", {}).get("dataset", {})
    counts = data.get("split_counts", {})
    names = data.get("class_names", record.get("class_names", []))
    rows = [[split, *[per.get(c, 0) for c in names], sum(per.values())] for split, per in counts.items()]
    totals = [sum(per.get(c, 0) for per in counts.values()) for c in names]
    rows.append(["all", *totals, sum(totals)])
    parts: list[Any] = [
        htmldoc.paragraph(
            f"Source: {spec.get('path', '?')} · split: {data.get('split_source', '?')} (seed {spec.get('seed')}) · "
            f"model input: {spec.get('image_size')} px, {spec.get('color')} · unreadable files skipped: "
            f"{len(data.get('unreadable', []))}."
        ),
        htmldoc.table(["split", *names, "total"], rows),
    ]
    if counts:
        parts.append(htmldoc.Figure(charts.class_counts_figure(counts, "Images per class and split")))
    return parts


def _leakage(leakage: dict[str, Any]) -> list[str]:
    if not leakage:
        return [htmldoc.paragraph("No leakage check was recorded.")]
    passed, verdict = tables.leakage_verdict(leakage)
    lines = [
        f"<p class='{'ok' if passed else 'bad'}'><strong>{html.escape(verdict)}</strong> "
        f"Method: {html.escape(leakage['method'])}.</p>",
        htmldoc.paragraph(
            f"Identical images in more than one split: {len(leakage['cross_split_duplicates'])} group(s). "
            f"Duplicate groups within one split: {leakage['within_split_duplicate_groups']}. "
            f"Duplicate groups whose copies have different labels: {leakage.get('conflicting_label_groups', 0)}."
        ),
    ]
    if leakage["cross_split_duplicates"]:
        lines.append(
            htmldoc.table(
                ["identical images (split:path)"], [[" = ".join(g)] for g in leakage["cross_split_duplicates"][:20]]
            )
        )
    if leakage.get("groups_known"):
        overlap = leakage.get("group_overlap") or []
        shown = f"Patients (groups) in more than one split: {len(overlap)} {overlap[:20] or ''}"
        lines.append(htmldoc.paragraph(shown))
    else:
        lines.append(
            htmldoc.paragraph(
                "The dataset gives no patient (group) identifiers, so images of one patient in two splits cannot be "
                "ruled out; only exact duplicates were checked."
            )
        )
    return lines


def _training(run: Run, record: dict[str, Any]) -> list[Any]:
    spec = record.get("spec", {})
    train = spec.get("train", {})
    search = spec.get("kind") == "tune"
    # A search's model is its best trial (or the mean of its best trials): its settings and curves, not the spec's
    # default parameters and an empty final-fit history.
    params = dict(record.get("best_params") or {}) if search else dict(spec.get("params", {}))
    # The augmentation as the Tune page words it: scaled by the strength trained with (the spec's own settings are
    # strength 1; a best trial at strength 0 flipped only).
    best = ModelParams.from_dict(record["best_params"]) if search and record.get("best_params") else None
    augmentation = describe_run_augment(run.spec, best)
    if params.get("backbone", "cnn") == "cnn":  # backbone settings mean nothing for the configurable CNN
        for name in ("backbone", "weights", "fine_tune_blocks", "fine_tune_learning_rate"):
            params.pop(name, None)
    best = record.get("best_trial")
    history = run.epoch_history(trial=best) if search and best else run.read_json("history.json") or run.epoch_history()
    epochs = len(history.get("loss", []))
    monitor = record.get("objective") or record.get("monitor") or train.get("monitor")
    ensemble = record.get("ensemble") or {}
    members = ensemble.get("members") or []
    if search and len(members) > 1:
        model = (
            f"The model is the mean of {len(members)} trials' models (trials "
            f"{', '.join(str(trial_number(m)) for m in members)} of {record.get('trials_completed', '?')} completed, "
            f"the best by validation {ensemble.get('objective', monitor)}); the settings below are the best trial's. "
        )
    elif search and best:
        model = f"The model is the search's best trial (trial {trial_number(best)}, by validation {monitor}). "
    else:
        model = ""
    if search and ensemble.get("note"):
        model += f"The final model is {ensemble['note']}. "
    retrained = (ensemble.get("refit") or {}).get("members") or []
    if search and retrained:
        model += (
            f"The configurations of trials {', '.join(str(trial_number(m)) for m in retrained)} were also retrained "
            f"on train + val ({ensemble['refit'].get('images', 0):,} images) and joined the mean; validation figures, "
            "the temperature and the operating point come from the searched members, which never saw validation. "
        )
    parts: list[Any] = [
        htmldoc.paragraph(
            f"{model}Epochs run{' by the best trial' if search else ''}: {epochs} of {train.get('epochs')} "
            f"(early-stopping patience {train.get('early_stopping_patience')}, "
            f"monitor {monitor}); class weights: {train.get('class_weights')}; seed {train.get('seed')}; "
            f"augmentation: {augmentation}; "
            f"distribution: {spec.get('distribution', 'none')}; model SHA-256 {record.get('model_sha256', '?')}."
        ),
        htmldoc.table(["hyperparameter", "value"], [[k, v] for k, v in params.items()]),
    ]
    for weights in record.get("weights") or []:  # a pretrained backbone: which file it started from
        parts.append(
            htmldoc.paragraph(
                f"Backbone {weights['backbone']} started from {weights['weights']} weights: "
                f"{Path(weights['file']).name}, SHA-256 {weights['sha256']}."
            )
        )
    for metric in ("loss", "auc"):
        if history.get(metric):
            parts.append(htmldoc.Figure(charts.history_figure(history, metric, f"training {metric}")))
    return parts


def _performance(summary: evaluation.ClinicalSummary, per_class: dict[str, dict[str, float]]) -> list[Any]:
    """The test figures at the report's operating point with their intervals, the presets, then each class's
    figures at the arg-max (`evaluation.classification_metrics`, as the Evaluate page and `medimg evaluate` list
    them; an undefined precision is the 0 its warning names), the confusion matrix and the curves."""
    intervals = summary["intervals"]
    parts: list[Any] = []
    decision = tables.decision_note(summary)
    if decision:
        parts.append(htmldoc.paragraph(decision))
    parts.append(htmldoc.paragraph(tables.intervals_note(intervals)))
    rows = tables.metric_rows(intervals)
    parts.append(htmldoc.table(list(rows[0]), [list(row.values()) for row in rows]))
    if summary["presets"]:
        parts.append(_presets(summary))
    names = summary["class_names"]
    if per_class:
        parts.append(htmldoc.paragraph("Each class at the arg-max (0.5 for two classes), one against the rest:"))
        header = ["class", "sensitivity", "specificity", "precision", "F1", "n"]
        figures = ("sensitivity", "specificity", "precision", "f1")
        rows = [[name, *(f"{row[k]:.3f}" for k in figures), row["support"]] for name, row in per_class.items()]
        parts.append(htmldoc.table(header, rows))
    parts.append(htmldoc.Figure(charts.confusion_matrix_figure(summary["confusion_matrix"], names)))
    point = summary["operating_point"]
    parts.append(htmldoc.Figure(charts.roc_figure(summary["curves"]["roc"], point)))
    parts.append(htmldoc.Figure(charts.precision_recall_figure(summary["curves"]["pr"], point)))
    return parts


def _presets(summary: evaluation.ClinicalSummary) -> str:
    labels = {
        "default": "default 0.5",
        "youden": "Youden's J",
        "sensitivity": f"sensitivity ≥ {summary['target']:g}",
        "specificity": f"specificity ≥ {summary['target']:g}",
    }
    rows = [
        [
            labels.get(name, name),
            *(tables.number(p[key]) for key in ("threshold", "sensitivity", "specificity", "ppv", "npv")),
        ]
        for name, p in summary["preset_points"].items()
    ]
    note = htmldoc.paragraph("Other operating points: thresholds chosen on the validation split, measured on test.")
    missed = [
        evaluation.missed_target(summary["preset_points"][name], name, summary["target"])
        for name in evaluation.TARGET_PRESETS
        if name in summary["preset_points"]
    ]
    notes = "".join(_warning(text) for text in missed if text)
    return note + htmldoc.table(["preset", "threshold", "sensitivity", "specificity", "PPV", "NPV"], rows) + notes


def _calibration(calibration: CalibrationSummary) -> list[Any]:
    text, warning = tables.calibration_note(calibration)
    rows = tables.calibration_rows(calibration)
    before = calibration["before"]
    # The warning as the page shows it, in a warning box: a reader of either sees the same verdict. The sentence
    # before it stays, as the card's record of the temperature fitted.
    return [
        htmldoc.paragraph(f"{before['kind']}, {before['bins']} equal-width bins. {text}"),
        *([_warning(warning)] if warning else []),
        htmldoc.table(list(rows[0]), [list(row.values()) for row in rows]),
        htmldoc.Figure(charts.reliability_figure(before, calibration["after"])),
    ]


def _subgroups(run: Run, test: clinical.Scored, summary: evaluation.ClinicalSummary) -> list[str]:
    attributes, proxies = subgroups.manifest_columns(run.spec.dataset.path)
    parts = []
    for column, values in attributes.items():
        rows = subgroups.subgroup_metrics(test, values, summary["threshold"] or 0.5, summary["positive_class"])
        shown = tables.subgroup_rows(rows, column)
        parts.append(f"<h3>by {html.escape(column)}</h3>")
        parts.append(htmldoc.table(list(shown[0]), [list(row.values()) for row in shown]))
    if proxies:
        parts.append(
            f"<p>Not analysed as subgroups: {html.escape(', '.join(proxies))} (one value per class: its subgroups "
            "would be the classes).</p>"
        )
    return parts


def _gradcams(run: Run, test: clinical.Scored, summary: evaluation.ClinicalSummary, per_cell: int = 2) -> list[str]:
    from medimg.model.explain import gradcam_caption, gradcam_heatmaps, overlay

    threshold, positive = summary["threshold"] or 0.5, summary["positive_class"]
    predicted = clinical.predicted_labels(test, threshold, positive)
    chosen = _examples(test, threshold, positive, per_cell)
    if not chosen:
        return [htmldoc.paragraph("No test images to show.")]
    loaded, skipped = run.input_contract.load_many(test.paths, chosen)
    if not loaded:
        return [htmldoc.paragraph("No test image could be read again: " + "; ".join(skipped))]
    chosen = [i for i, _ in loaded]
    pixels = np.stack([image for _, image in loaded])
    heatmaps, _ = gradcam_heatmaps(load_run_model(run), pixels, [int(predicted[i]) for i in chosen])
    names = test.class_names
    cards = []
    for k, i in enumerate(chosen):
        caption = (
            f"{_cell_name(summary, int(test.labels[i]), int(predicted[i]))}{Path(test.paths[i]).name}: "
            f"true {names[test.labels[i]]}, called {names[predicted[i]]} "
            f"({tables.call_probability(test, i, threshold, positive)}); Grad-CAM for {names[predicted[i]]}"
        )
        blended = overlay(pixels[k], heatmaps[k])
        images_html = f"<img src='{htmldoc.png_uri(pixels[k])}' alt='input'>"
        images_html += f"<img src='{htmldoc.png_uri(blended)}' alt='Grad-CAM'>"
        cards.append(f"<figure>{images_html}<figcaption>{html.escape(caption)}</figcaption></figure>")
    return [
        htmldoc.paragraph(
            "Up to two test images per confusion-matrix cell, most confident first, each beside its overlay. "
            + gradcam_caption(run.record)
        ),
        "<div class='gallery'>" + "".join(cards) + "</div>",
        *([htmldoc.paragraph("Not shown (could not be read again): " + "; ".join(skipped))] if skipped else []),
    ]


def _warning(text: str) -> str:
    return f"<div class='warning'><strong>{html.escape(text)}</strong></div>"


def _cell_name(summary: evaluation.ClinicalSummary, true: int, called: int) -> str:
    """'TP · ' style prefix for a binary task's cells, '' for multi-class."""
    if not summary["positive_class"]:
        return ""
    positive = summary["class_names"].index(summary["positive_class"])
    return {(True, True): "TP · ", (True, False): "FN · ", (False, True): "FP · ", (False, False): "TN · "}[
        (true == positive, called == positive)
    ]


def _examples(test: clinical.Scored, threshold: float, positive: str | None, per_cell: int) -> list[int]:
    chosen: list[int] = []
    for true in range(len(test.class_names)):
        for called in range(len(test.class_names)):
            chosen += clinical.cell_indices(test, true, called, threshold, positive)[:per_cell].tolist()
    return chosen


def _limitations(summary: evaluation.ClinicalSummary, metrics: dict[str, Any], record: dict[str, Any]) -> list[str]:
    notes = [
        "Internal validation only: the test split comes from the same source as the training data; performance on "
        "other sites, devices and populations is unknown."
    ]
    if summary["positive_class"]:
        positives = summary["operating_point"]["tp"] + summary["operating_point"]["fn"]
        if positives < 100:
            notes.append(
                f"Only {positives} positive test images: the intervals above are wide; read them, not the point."
            )
    leakage = metrics.get("leakage") or {}
    if leakage and not leakage.get("passed"):
        notes.append("The leakage check failed: the test metrics may be optimistic.")
    if leakage and not leakage.get("groups_known"):
        notes.append("No patient identifiers: patient-level leakage between splits could not be checked.")
    before, after = summary["calibration"]["before"]["ece"], summary["calibration"]["after"]
    if before > 0.05:
        if after is None:
            remedy = summary["calibration"].get("skipped") or "there are no validation predictions to recalibrate with"
        elif after["ece"] >= before - ERROR_TOLERANCE:
            remedy = f"temperature scaling does not lower it on test ({after['ece']:.3f} after; see Calibration)"
        elif summary["calibration"].get("warning"):
            remedy = "temperature scaling failed on it (see Calibration)"
        elif after["ece"] < before / 2:
            remedy = f"temperature scaling brings it to {after['ece']:.3f}"
        else:
            remedy = (
                f"temperature scaling does not fix it ({after['ece']:.3f} after); recalibrate (e.g. Platt or "
                "isotonic on validation) before reading them as such"
            )
        notes.append(f"Expected calibration error {before:.3f}: the probabilities are not risks; {remedy}.")
    weighting = record.get("spec", {}).get("train", {}).get("class_weights", "none")
    # Runs since 30 Nov 2026 record the weights undone in the kept model (`training.restore_class_prior`); the
    # shift this note explains remains only in a model saved before.
    undone = "class_weights_undone" in record or "class_weights_undone_in" in record
    if weighting != "none" and not undone and before > 0.05:
        notes.append(
            f"Trained with class weights ({weighting}): weighting shifts the probabilities towards the rarer class, "
            "a shift that temperature scaling (one scale factor) cannot remove."
        )
    never = _never_predicted(summary, metrics)
    if never:
        names = ", ".join(metrics["never_predicted"])
        notes.append(
            f"{never} The sensitivity and specificity intervals of {names} are degenerate (0 and 1 in every "
            "resample), not precise."
        )
    if summary.get("presets_reason"):
        notes.append(f"No operating point was chosen: {summary['presets_reason']}.")
    if summary["calibration"].get("skipped"):
        notes.append(f"Calibration: {summary['calibration']['skipped']}.")
    return ["<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"]
