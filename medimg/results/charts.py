"""Pure Plotly figure builders: data in, `go.Figure` out. No Streamlit, no TensorFlow."""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _layout(fig: go.Figure, title: str, **extra: Any) -> go.Figure:
    fig.update_layout(
        title=title,
        margin={"l": 40, "r": 20, "t": 50, "b": 40},
        template="plotly_white",
        legend={"orientation": "h", "y": -0.2},
        **extra,
    )
    return fig


# Scores closer than this are drawn on an axis at least this tall: Plotly stretches any spread to the full height,
# so two trials that differ in the 8th decimal looked far apart.
MIN_SCORE_SPAN = 0.02


def score_range(values: list[float], min_span: float = MIN_SCORE_SPAN, fraction: bool = False) -> list[float] | None:
    """An axis range [low, high] of at least `min_span` centred on `values` when they span less, else None (let
    Plotly fit the axis). Scores are the objective's own units (AUC, accuracy: fractions; loss: nats); with
    `fraction` the range stays inside 0..1 (seen: an AUC axis ticked at 1.002 and 1.004 around a perfect score)."""
    if not values:
        return None
    low, high = min(values), max(values)
    if high - low >= min_span:
        return None
    middle = (low + high) / 2
    span = [middle - min_span / 2, middle + min_span / 2]
    if fraction and span[1] > 1:
        return [1 - min_span, 1.0]
    if fraction and span[0] < 0:
        return [0.0, min_span]
    return span


def class_counts_figure(
    counts: dict[str, int] | dict[str, dict[str, int]], title: str = "Images per class"
) -> go.Figure:
    """Bars per class; with split → class → count, grouped bars per split."""
    fig = go.Figure()
    if counts and isinstance(next(iter(counts.values())), dict):
        for split, per_class in counts.items():
            fig.add_bar(name=split, x=list(per_class), y=list(per_class.values()), text=list(per_class.values()))
        fig.update_layout(barmode="group")
    else:
        fig.add_bar(x=list(counts), y=list(counts.values()), text=list(counts.values()), marker_color=PALETTE[0])
    return _layout(fig, title, yaxis_title="images")


def history_figure(
    history: dict[str, list[float]], metric: str, title: str | None = None, stage_starts: list[int] | None = None
) -> go.Figure:
    """Train and validation curves of one metric by epoch (`loss`, `accuracy`, `auc`); a dotted line where each
    later fine-tuning stage began (`Run.stage_starts`: epochs from 1)."""
    fig = go.Figure()
    for epoch in stage_starts or []:
        fig.add_vline(x=epoch - 0.5, line_dash="dot", annotation_text="fine-tuning", annotation_position="top left")
    longest = max(len(history.get(metric) or []), len(history.get(f"val_{metric}") or []))
    epochs = history.get("epoch") or list(range(1, longest + 1))
    for name, dash in ((metric, "solid"), (f"val_{metric}", "dash")):
        if history.get(name):
            label = "validation" if name.startswith("val_") else "train"
            fig.add_scatter(x=epochs, y=history[name], mode="lines+markers", name=label, line={"dash": dash})
    return _capped(_layout(fig, title or metric.replace("_", " "), xaxis_title="epoch", yaxis_title=metric), metric)


def trials_figure(trials: list[dict[str, Any]], objective: str) -> go.Figure:
    """Objective by trial (dots) with the best-so-far line; `trials` carry their number ("trial", from 1)."""
    done = sorted((t for t in trials if t.get("score") is not None), key=lambda t: t["trial"])
    maximize = not objective.endswith("loss")
    xs = [t["trial"] for t in done]
    ys = [float(t["score"]) for t in done]
    best, best_line = None, []
    for y in ys:
        best = y if best is None else (max(best, y) if maximize else min(best, y))
        best_line.append(best)
    fig = go.Figure()
    fig.add_scatter(x=xs, y=ys, mode="markers", name="trial", marker={"size": 10})
    fig.add_scatter(x=xs, y=best_line, mode="lines", name="best so far", line={"shape": "hv"})
    fig = _layout(fig, f"{objective} by trial", xaxis_title="trial", yaxis_title=objective)
    # Whole trial numbers only (Plotly ticked 1, 1.5, 2 for two trials), about ten ticks at most.
    fig.update_xaxes(tick0=1, dtick=max(1, math.ceil((max(xs) - min(xs) + 1) / 10)) if xs else 1)
    span = score_range(ys, fraction=maximize)
    if span:
        fig.update_yaxes(range=span)
    return _capped(fig, objective)


def _capped(fig: go.Figure, metric: str) -> go.Figure:
    """An AUC or accuracy axis never reaches past 1 (or below 0), however Plotly pads its automatic range."""
    if not metric.endswith("loss"):
        fig.update_yaxes(autorangeoptions={"minallowed": 0.0, "maxallowed": 1.0})
    return fig


def trial_curves_figure(
    histories: dict[Any, dict[str, list[float]]], metric: str, best: Any = None, title: str | None = None
) -> go.Figure:
    """One line per trial of `metric` (e.g. `val_auc`) by epoch, overlaid, the `best` trial drawn thick: how fast
    trials learn, where they plateau, which were stopped early. `histories` maps a trial number to its history."""
    fig = go.Figure()
    for number, history in histories.items():
        values = history.get(metric) or []
        if not values:
            continue
        chosen = number == best
        fig.add_scatter(
            x=history.get("epoch") or list(range(1, len(values) + 1)),
            y=values,
            mode="lines",
            name=f"trial {number}" + (" (best)" if chosen else ""),
            line={"width": 4 if chosen else 1.5, "color": PALETTE[1] if chosen else None},
            opacity=1.0 if chosen else 0.6,
        )
    return _capped(
        _layout(
            fig, title or f"{metric.replace('_', ' ')} by epoch, every trial", xaxis_title="epoch", yaxis_title=metric
        ),
        metric,
    )


def importance_figure(importance: list[tuple[str, float]], objective: str) -> go.Figure:
    """Horizontal bars: each hyperparameter's share of the explained variation of `objective`, largest on top."""
    ordered = sorted(importance, key=lambda item: item[1])
    fig = go.Figure(
        go.Bar(
            x=[share for _, share in ordered],
            y=[name for name, _ in ordered],
            orientation="h",
            marker_color=PALETTE[0],
            text=[f"{share:.0%}" for _, share in ordered],
        )
    )
    fig.update_xaxes(range=[0, 1], tickformat=".0%", title=f"share of {objective} variation")
    return _layout(fig, "Hyperparameter importance")


UNUSED = "not used"


def parallel_coordinates_figure(trials: list[dict[str, Any]], objective: str) -> go.Figure:
    """Each completed trial as a line through its hyperparameters, coloured by the objective. A hyperparameter some
    trials did not use (`tuning.used_values` leaves it out of their rows) gets a level of its own, `UNUSED`."""
    done = [t for t in trials if t.get("score") is not None]
    fig = go.Figure()
    if not done:
        return _layout(fig, "hyperparameters vs objective (no completed trial yet)")
    names = sorted({k for t in done for k in t["hyperparameters"] if not k.startswith("tuner/")})
    dimensions = []
    for name in names:
        values = [t["hyperparameters"].get(name) for t in done]
        if len({str(v) for v in values if v is not None}) < 2 and len(done) > 1:
            continue  # a fixed parameter (or one some trials lack, as older trials a new one) adds one tick
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values if v is not None)
        if numeric and name == "learning_rate":
            exponents = [math.log10(v) for v in values]
            ticks = list(range(math.floor(min(exponents)), math.ceil(max(exponents)) + 1))
            dimensions.append(
                {
                    "label": "learning rate",
                    "values": exponents,
                    "tickvals": ticks,
                    "ticktext": [f"1e{t}" for t in ticks],
                }
            )
        elif numeric and None not in values:
            dimensions.append({"label": name, "values": values})
        else:
            # A trial without this name did not use it (a block it did not have): its own level, below the others,
            # not a value such as 0 that another trial might have drawn.
            present = {v for v in values if v is not None}
            ordered = sorted(present) if numeric else sorted(present, key=str)
            labels = [UNUSED] * (None in values) + [str(v) for v in ordered]
            dimensions.append(
                {
                    "label": name,
                    "values": [labels.index(UNUSED if v is None else str(v)) for v in values],
                    "tickvals": list(range(len(labels))),
                    "ticktext": labels,
                }
            )
    scores = [float(t["score"]) for t in done]
    span = score_range(scores, fraction=not objective.endswith("loss"))
    # Four decimals, as the trial table gives scores (Plotly's own ticks read 0.996667).
    dimensions.append({"label": objective, "values": scores, "tickformat": ".4f", **({"range": span} if span else {})})
    colour_span = {"cmin": span[0], "cmax": span[1]} if span else {}
    fig.add_trace(
        go.Parcoords(
            line={"color": scores, "colorscale": "Viridis", "showscale": True, **colour_span},
            dimensions=dimensions,
            labelangle=-25,  # level labels overlapped once a search varied more than five hyperparameters
            labelside="bottom",
        )
    )
    return _layout(fig, "hyperparameters vs objective")


def confusion_matrix_figure(
    matrix: list[list[int]],
    class_names: list[str],
    clickable: bool = False,
    selected: tuple[int, int] | None = None,
    title: str = "Confusion matrix",
) -> go.Figure:
    """Counts with row-normalised colour (rows: true class, columns: predicted).

    `clickable` adds one transparent marker per cell (customdata = [true index, predicted index]) so a click on a
    cell is a point selection; `selected` outlines one cell.
    """
    totals = [max(1, sum(row)) for row in matrix]
    share = [[value / totals[i] for value in row] for i, row in enumerate(matrix)]
    text = [[f"{value}<br>({share[i][j]:.0%})" for j, value in enumerate(row)] for i, row in enumerate(matrix)]
    fig = go.Figure(
        go.Heatmap(
            z=share,
            x=class_names,
            y=class_names,
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1,
            showscale=False,
        )
    )
    if clickable:
        cells = [(i, j) for i in range(len(class_names)) for j in range(len(class_names))]
        fig.add_scatter(
            x=[class_names[j] for _, j in cells],
            y=[class_names[i] for i, _ in cells],
            customdata=[[i, j] for i, j in cells],
            mode="markers",
            # Transparent but clickable; kept transparent when Plotly restyles selected and unselected points.
            marker={"size": 60, "color": "rgba(0,0,0,0)", "symbol": "square"},
            selected={"marker": {"opacity": 0}},
            unselected={"marker": {"opacity": 0}},
            hovertemplate="true %{y} → predicted %{x}<br>click to show these images<extra></extra>",
            name="cells",
            showlegend=False,
        )
        fig.update_layout(clickmode="event+select", dragmode=False)
    if selected is not None:
        i, j = selected
        fig.add_shape(
            type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5, line={"color": PALETTE[3], "width": 4}
        )
    fig.update_yaxes(autorange="reversed", title="true class")
    fig.update_xaxes(title="predicted class")
    return _layout(fig, title)


def score_histogram_figure(
    scores: dict[str, list[float]], threshold: float, positive: str, bins: int = 40
) -> go.Figure:
    """Overlaid histograms of p(`positive`) per true class on [0, 1] in `bins` equal-width bins, with the
    threshold as a vertical line: how far apart the classes' scores lie, and how many of each fall on either side.

    `scores` maps a true class name to its test images' p(positive)."""
    fig = go.Figure()
    for position, (name, values) in enumerate(scores.items()):
        fig.add_histogram(
            x=list(values),
            name=f"true {name} ({len(values)})",
            xbins={"start": 0.0, "end": 1.0, "size": 1.0 / bins},
            marker_color=PALETTE[position % len(PALETTE)],
            opacity=0.6,
        )
    fig.add_vline(x=threshold, line={"color": "black", "dash": "dash"}, annotation_text=f"threshold {threshold:.3f}")
    fig.update_layout(barmode="overlay", height=260)
    fig.update_xaxes(range=[0, 1], title=f"p({positive})")
    fig.update_yaxes(title="test images")
    return _layout(fig, f"Test scores by true class: p({positive})")


def selected_cell(points: list[dict[str, Any]], class_names: list[str]) -> tuple[int, int] | None:
    """The (true, predicted) cell of a Plotly click on `confusion_matrix_figure`, or None for no usable point."""
    for point in points:
        data = point.get("customdata")
        if isinstance(data, list | tuple) and len(data) == 2:
            return int(data[0]), int(data[1])
        if point.get("y") in class_names and point.get("x") in class_names:
            return class_names.index(point["y"]), class_names.index(point["x"])
    return None


def curve_color(index: int) -> str:
    """The colour of the `index`-th class of a curves dict (`clinical.curves`): its ROC and precision-recall dicts
    hold the same classes in the same order, so one class has one colour in both charts (ROC used Plotly's default
    colours, precision-recall this palette, and a class changed colour between them)."""
    return PALETTE[index % len(PALETTE)]


def roc_figure(
    curves: dict[str, dict[str, list]], operating_point: dict[str, Any] | None = None, title: str = "ROC curve"
) -> go.Figure:
    """ROC curve per class with its AUC, and the chance diagonal; `operating_point` (sensitivity, specificity,
    threshold) is marked on the curve. Colours: `curve_color`, as the precision-recall chart gives them."""
    fig = go.Figure()
    for index, (name, curve) in enumerate(curves.items()):
        fig.add_scatter(
            x=curve["fpr"],
            y=curve["tpr"],
            mode="lines",
            name=f"{name} (AUC {curve['auc']:.3f})",
            line={"color": curve_color(index)},
        )
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"dash": "dot", "color": "grey"})
    if (
        operating_point
        and operating_point.get("sensitivity") is not None
        and operating_point.get("specificity") is not None
    ):
        _mark_operating_point(fig, 1 - operating_point["specificity"], operating_point["sensitivity"], operating_point)
    return _layout(
        fig,
        title,
        xaxis_title="1 - specificity (false positive rate)",
        yaxis_title="sensitivity (true positive rate)",
        xaxis_range=[0, 1],
        yaxis_range=[0, 1.02],
    )


def _mark_operating_point(fig: go.Figure, x: float, y: float, point: dict[str, Any]) -> None:
    fig.add_scatter(
        x=[x],
        y=[y],
        mode="markers",
        name=f"operating point (threshold {point['threshold']:.3f})",
        marker={"size": 14, "color": PALETTE[1], "symbol": "x", "line": {"width": 1}},
        hovertemplate=(
            f"threshold {point['threshold']:.3f}<br>sensitivity {point['sensitivity']:.3f}<br>"
            f"specificity {_fmt(point.get('specificity'))}<br>PPV {_fmt(point.get('ppv'))}<extra></extra>"
        ),
    )


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def precision_recall_figure(
    curves: dict[str, dict[str, Any]], operating_point: dict[str, Any] | None = None
) -> go.Figure:
    """Precision-recall curve per class with its average precision and prevalence line; the operating point
    (sensitivity = recall, PPV = precision) marked. Colours: `curve_color`, as the ROC chart gives them."""
    fig = go.Figure()
    for index, (name, curve) in enumerate(curves.items()):
        color = curve_color(index)
        fig.add_scatter(
            x=curve["recall"],
            y=curve["precision"],
            mode="lines",
            name=f"{name} (AP {curve['average_precision']:.3f})",
            line={"shape": "hv", "color": color},
        )
        fig.add_scatter(
            x=[0, 1],
            y=[curve["prevalence"]] * 2,
            mode="lines",
            name=f"{name} prevalence {curve['prevalence']:.2f}",
            line={"dash": "dot", "color": color},
        )
    if operating_point and operating_point.get("sensitivity") is not None and operating_point.get("ppv") is not None:
        _mark_operating_point(fig, operating_point["sensitivity"], operating_point["ppv"], operating_point)
    return _layout(
        fig,
        "Precision-recall curve",
        xaxis_title="recall (sensitivity)",
        yaxis_title="precision (PPV)",
        xaxis_range=[0, 1],
        yaxis_range=[0, 1.02],
    )


def reliability_figure(before: dict[str, Any], after: dict[str, Any] | None = None) -> go.Figure:
    """Reliability diagram: observed frequency against mean confidence per bin (marker size ~ count), the
    diagonal of perfect calibration, and the temperature-scaled version when given; ECE in the legend."""
    fig = go.Figure()
    fig.add_scatter(
        x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated", line={"dash": "dot", "color": "grey"}
    )
    for label, data, color in (("before", before, PALETTE[0]), ("after temperature scaling", after, PALETTE[2])):
        if not data:
            continue
        largest = max(data["count"] or [1])
        fig.add_scatter(
            x=data["confidence"],
            y=data["frequency"],
            mode="lines+markers",
            name=f"{label} (ECE {data['ece']:.3f})",
            marker={"size": [8 + 16 * (c / largest) ** 0.5 for c in data["count"]], "color": color},
            line={"color": color},
            customdata=data["count"],
            hovertemplate="mean confidence %{x:.3f}<br>observed %{y:.3f}<br>%{customdata} images<extra></extra>",
        )
    return _layout(
        fig,
        f"Reliability ({before['kind']})",
        xaxis_title="mean predicted probability in bin",
        yaxis_title="observed frequency",
        xaxis_range=[0, 1],
        yaxis_range=[0, 1.02],
    )


def probabilities_figure(probabilities: dict[str, float], top_k: int = 5) -> go.Figure:
    """Horizontal bars of the class probabilities (fractions): every class in the model's class order, top to
    bottom, when there are at most `top_k` (the same place for each class on every image, and graded classes in
    grade order); else the `top_k` largest, largest on top."""
    if len(probabilities) <= top_k:
        ranked = list(probabilities.items())[::-1]  # Plotly draws the first bar at the bottom
    else:
        ranked = sorted(probabilities.items(), key=lambda item: item[1])[-top_k:]
    fig = go.Figure(
        go.Bar(
            x=[p for _, p in ranked],
            y=[c for c, _ in ranked],
            orientation="h",
            text=[f"{p:.1%}" for _, p in ranked],
            marker_color=PALETTE[0],
        )
    )
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    return _layout(fig, "Class probabilities", height=80 + 40 * len(ranked))


def runs_comparison_figure(histories: dict[str, dict[str, list[float]]], metric: str) -> go.Figure:
    """One validation curve per run, for comparing runs side by side."""
    fig = go.Figure()
    for run_id, history in histories.items():
        values = history.get(f"val_{metric}") or history.get(metric)
        if values:
            fig.add_scatter(
                x=history.get("epoch") or list(range(1, len(values) + 1)), y=values, mode="lines+markers", name=run_id
            )
    return _layout(fig, f"validation {metric} by run", xaxis_title="epoch", yaxis_title=metric)
