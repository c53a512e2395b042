"""Plotly figure builders, checked through fig.data and fig.layout."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

from medimg.results import charts


def test_class_counts_flat() -> None:
    fig = charts.class_counts_figure({"NORMAL": 70, "PNEUMONIA": 30})
    assert isinstance(fig, go.Figure)
    (bar,) = fig.data
    assert bar.type == "bar"
    assert list(bar.x) == ["NORMAL", "PNEUMONIA"] and list(bar.y) == [70, 30]
    assert list(bar.text) == ["70", "30"]  # plotly keeps bar labels as text
    assert fig.layout.title.text == "Images per class" and fig.layout.yaxis.title.text == "images"


def test_class_counts_grouped_by_split() -> None:
    counts = {"train": {"a": 40, "b": 10}, "val": {"a": 5, "b": 5}, "test": {"a": 6, "b": 4}}
    fig = charts.class_counts_figure(counts, title="Splits")
    assert [trace.name for trace in fig.data] == ["train", "val", "test"]
    assert [list(trace.y) for trace in fig.data] == [[40, 10], [5, 5], [6, 4]]
    assert all(list(trace.x) == ["a", "b"] for trace in fig.data)
    assert fig.layout.barmode == "group" and fig.layout.title.text == "Splits"


def test_class_counts_empty() -> None:
    fig = charts.class_counts_figure({})
    assert len(fig.data) == 1 and list(fig.data[0].x) == []


def test_history_train_and_validation_curves() -> None:
    history = {"epoch": [1, 2, 3], "loss": [0.9, 0.7, 0.6], "val_loss": [1.0, 0.8, 0.75], "auc": [0.6, 0.7, 0.8]}
    fig = charts.history_figure(history, "loss")
    assert [trace.name for trace in fig.data] == ["train", "validation"]
    assert list(fig.data[0].x) == [1, 2, 3] and list(fig.data[0].y) == [0.9, 0.7, 0.6]
    assert list(fig.data[1].y) == [1.0, 0.8, 0.75] and fig.data[1].line.dash == "dash"
    assert fig.layout.xaxis.title.text == "epoch" and fig.layout.yaxis.title.text == "loss"
    only_train = charts.history_figure(history, "auc")
    assert [trace.name for trace in only_train.data] == ["train"]  # no val_auc in this history


def test_history_without_epoch_numbers_counts_from_one() -> None:
    fig = charts.history_figure({"accuracy": [0.5, 0.6], "val_accuracy": [0.4, 0.5]}, "accuracy", title="Accuracy")
    assert [list(trace.x) for trace in fig.data] == [[1, 2], [1, 2]]
    assert fig.layout.title.text == "Accuracy"


def test_history_with_only_validation_values_still_has_epochs() -> None:
    fig = charts.history_figure({"val_accuracy": [0.5, 0.6]}, "accuracy")
    assert list(fig.data[0].x) == [1, 2]


def test_trials_best_so_far_when_maximising_and_minimising() -> None:
    trials = [
        {"trial": 4, "score": 0.7},  # out of order: drawn by number
        {"trial": 1, "score": 0.6},
        {"trial": 2, "score": 0.8},
        {"trial": 3, "score": None},  # failed: not plotted
    ]
    fig = charts.trials_figure(trials, "val_auc")
    dots, best = fig.data
    assert list(dots.x) == [1, 2, 4] and list(dots.y) == [0.6, 0.8, 0.7]
    assert list(best.y) == [0.6, 0.8, 0.8] and best.name == "best so far"
    losses = charts.trials_figure(
        [{"trial": 1, "score": 0.5}, {"trial": 2, "score": 0.7}, {"trial": 3, "score": 0.3}], "val_loss"
    )
    assert list(losses.data[1].y) == [0.5, 0.5, 0.3]
    assert losses.layout.title.text == "val_loss by trial"


def test_trials_that_score_alike_are_not_drawn_far_apart() -> None:
    # Seen on the Tune page: 0.9911111 and 0.99111116 drawn at the top and bottom of an axis 1e-7 tall.
    alike = [{"trial": 1, "score": 0.9911111, "hyperparameters": {"dropout": 0.0}}]
    alike.append({"trial": 2, "score": 0.99111116, "hyperparameters": {"dropout": 0.3}})
    low, high = charts.trials_figure(alike, "val_auc").layout.yaxis.range
    assert high - low == pytest.approx(charts.MIN_SCORE_SPAN) and low < 0.9911111 < 0.99111116 < high
    objective = charts.parallel_coordinates_figure(alike, "val_auc").data[0].dimensions[-1]
    assert objective.label == "val_auc" and objective.range[1] - objective.range[0] == pytest.approx(0.02)
    # Scores that do differ keep Plotly's own fit.
    apart = [{**alike[0], "score": 0.7}, {**alike[1], "score": 0.9}]
    assert charts.trials_figure(apart, "val_auc").layout.yaxis.range is None
    assert charts.parallel_coordinates_figure(apart, "val_auc").data[0].dimensions[-1].range is None


def test_an_auc_axis_stays_inside_zero_to_one_and_a_loss_axis_does_not_need_to() -> None:
    # Seen on the demo: every trial at validation AUC 1.0, drawn on an axis ticked at 1.002 and 1.004.
    perfect = [{"trial": 1, "score": 1.0}, {"trial": 2, "score": 1.0}]
    figure = charts.trials_figure(perfect, "val_auc")
    assert list(figure.layout.yaxis.range) == [pytest.approx(1 - charts.MIN_SCORE_SPAN), 1.0]
    assert figure.layout.yaxis.autorangeoptions.maxallowed == 1.0
    curves = charts.history_figure({"auc": [0.9, 1.0], "val_auc": [0.95, 1.0]}, "auc")
    assert curves.layout.yaxis.autorangeoptions.maxallowed == 1.0
    losses = charts.trials_figure([{"trial": 1, "score": 0.001}, {"trial": 2, "score": 0.001}], "val_loss")
    assert losses.layout.yaxis.range[0] < 0 and losses.layout.yaxis.autorangeoptions.maxallowed is None


def test_trial_curves_overlay_every_trial_and_mark_the_best() -> None:
    histories = {
        1: {"epoch": [1, 2, 3], "val_auc": [0.6, 0.7, 0.72]},
        2: {"epoch": [1, 2], "val_auc": [0.65, 0.8]},
        3: {"epoch": [1], "loss": [0.7]},  # no validation value yet: no line
    }
    fig = charts.trial_curves_figure(histories, "val_auc", best=2)
    assert [trace.name for trace in fig.data] == ["trial 1", "trial 2 (best)"]
    assert list(fig.data[0].x) == [1, 2, 3] and list(fig.data[1].y) == [0.65, 0.8]
    assert fig.data[1].line.width > fig.data[0].line.width


def test_importance_bars_largest_on_top() -> None:
    fig = charts.importance_figure([("learning_rate", 0.7), ("dropout", 0.2), ("activation", 0.1)], "val_auc")
    (bars,) = fig.data
    assert list(bars.y) == ["activation", "dropout", "learning_rate"] and list(bars.text) == ["10%", "20%", "70%"]


def test_parallel_coordinates_numbers_categories_and_fixed_values() -> None:
    trials = [
        {
            "trial_id": "0",
            "score": 0.7,
            "hyperparameters": {
                "learning_rate": 0.01,
                "activation": "relu",
                "batch_norm": True,
                "filters_0": 32,
                "dense_units": 64,
                "tuner/epochs": 2,
            },
        },
        {
            "trial_id": "1",
            "score": 0.9,
            "hyperparameters": {
                "learning_rate": 0.001,
                "activation": "tanh",
                "batch_norm": False,
                "filters_0": 16,
                "dense_units": 64,
            },
        },
        {"trial_id": "2", "score": None, "hyperparameters": {"learning_rate": 0.1, "activation": "gelu"}},
    ]
    fig = charts.parallel_coordinates_figure(trials, "val_auc")
    (trace,) = fig.data
    assert trace.type == "parcoords"
    dimensions = {d.label: d for d in trace.dimensions}
    # tuner/* bookkeeping and dense_units (the same in every trial) add no information: no axis for them.
    assert list(dimensions) == ["activation", "batch_norm", "filters_0", "learning rate", "val_auc"]
    trials[1]["hyperparameters"]["soft_labels"] = "none"  # declared after trial 0 ran: one value, no axis
    assert [d.label for d in charts.parallel_coordinates_figure(trials, "val_auc").data[0].dimensions] == list(
        dimensions
    )
    rate = dimensions["learning rate"]
    assert list(rate.values) == pytest.approx([-2.0, -3.0])  # log scale, labelled as rates
    assert list(rate.ticktext) == ["1e-3", "1e-2"] and list(rate.tickvals) == [-3, -2]
    assert list(dimensions["filters_0"].values) == [32, 16]
    assert list(dimensions["activation"].ticktext) == ["relu", "tanh"]  # the failed trial's gelu is not shown
    assert list(dimensions["activation"].values) == [0, 1]
    assert list(dimensions["batch_norm"].ticktext) == ["False", "True"]  # booleans are categories, not numbers
    assert list(dimensions["batch_norm"].values) == [1, 0]
    assert list(dimensions["val_auc"].values) == [0.7, 0.9]
    assert list(trace.line.color) == [0.7, 0.9]


def test_a_block_width_a_trial_did_not_have_is_not_drawn_as_a_width() -> None:
    def trial(score: float, **widths: int) -> dict:
        return {"score": score, "hyperparameters": {"conv_blocks": len(widths), **widths}}

    trials = [trial(0.7, filters_0=32), trial(0.8, filters_0=32, filters_1=128), trial(0.9, filters_0=16, filters_1=64)]
    dimensions = {d.label: d for d in charts.parallel_coordinates_figure(trials, "val_auc").data[0].dimensions}
    second = dimensions["filters_1"]
    assert list(second.ticktext) == [charts.UNUSED, "64", "128"]  # numbers in their order, not as text
    assert list(second.values) == [0, 2, 1]
    assert list(dimensions["filters_0"].values) == [32, 32, 16]  # every trial has it: a number axis


def test_parallel_coordinates_single_trial_keeps_every_axis() -> None:
    trials = [{"trial_id": "0", "score": 0.5, "hyperparameters": {"dense_units": 64, "activation": "relu"}}]
    fig = charts.parallel_coordinates_figure(trials, "val_loss")
    assert [d.label for d in fig.data[0].dimensions] == ["activation", "dense_units", "val_loss"]


def test_parallel_coordinates_without_completed_trials() -> None:
    fig = charts.parallel_coordinates_figure([{"trial_id": "0", "score": None, "hyperparameters": {}}], "val_auc")
    assert len(fig.data) == 0 and "no completed trial yet" in fig.layout.title.text


def test_confusion_matrix_counts_and_row_shares() -> None:
    fig = charts.confusion_matrix_figure([[8, 2], [1, 9]], ["NORMAL", "PNEUMONIA"])
    (heatmap,) = fig.data
    assert heatmap.type == "heatmap"
    assert [list(row) for row in heatmap.z] == [[0.8, 0.2], [0.1, 0.9]]
    assert heatmap.text[0][1] == "2<br>(20%)" and heatmap.text[1][1] == "9<br>(90%)"
    assert list(heatmap.x) == ["NORMAL", "PNEUMONIA"] and list(heatmap.y) == ["NORMAL", "PNEUMONIA"]
    assert fig.layout.yaxis.title.text == "true class" and fig.layout.xaxis.title.text == "predicted class"
    assert fig.layout.yaxis.autorange == "reversed"  # first class on top, as the matrix is written


def test_confusion_matrix_with_an_empty_row() -> None:
    fig = charts.confusion_matrix_figure([[0, 0], [3, 1]], ["a", "b"])
    assert [list(row) for row in fig.data[0].z] == [[0.0, 0.0], [0.75, 0.25]]


def test_roc_curves_with_auc_in_the_names_and_the_chance_line() -> None:
    curves = {"PNEUMONIA": {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.9, 1.0], "auc": 0.7}}
    fig = charts.roc_figure(curves)
    assert [trace.name for trace in fig.data] == ["PNEUMONIA (AUC 0.700)", "chance"]
    assert list(fig.data[0].x) == [0.0, 0.5, 1.0] and list(fig.data[0].y) == [0.0, 0.9, 1.0]
    assert list(fig.data[1].x) == [0, 1] and list(fig.data[1].y) == [0, 1]
    assert list(fig.layout.xaxis.range) == [0, 1]


def test_probabilities_top_k_sorted_with_the_largest_on_top() -> None:
    fig = charts.probabilities_figure({"a": 0.1, "b": 0.6, "c": 0.05, "d": 0.25}, top_k=3)
    (bar,) = fig.data
    assert bar.orientation == "h"
    assert list(bar.y) == ["a", "d", "b"]  # plotly draws the last bar at the top
    assert list(bar.x) == [0.1, 0.25, 0.6]
    assert list(bar.text) == ["10.0%", "25.0%", "60.0%"]
    assert fig.layout.height == 80 + 40 * 3


def test_runs_comparison_prefers_validation_curves() -> None:
    histories = {
        "run-a": {"epoch": [1, 2], "auc": [0.6, 0.7], "val_auc": [0.55, 0.65]},
        "run-b": {"auc": [0.5, 0.6, 0.7]},
        "run-c": {"loss": [1.0]},
    }
    fig = charts.runs_comparison_figure(histories, "auc")
    assert [trace.name for trace in fig.data] == ["run-a", "run-b"]
    assert list(fig.data[0].y) == [0.55, 0.65]
    assert list(fig.data[1].x) == [1, 2, 3] and list(fig.data[1].y) == [0.5, 0.6, 0.7]
    assert fig.layout.title.text == "validation auc by run"


@pytest.mark.parametrize(
    "fig",
    [
        charts.class_counts_figure({"a": 1}),
        charts.history_figure({"loss": [1.0]}, "loss"),
        charts.roc_figure({}),
    ],
)
def test_figures_serialise_to_json(fig: go.Figure) -> None:
    assert fig.to_json().startswith("{")
    assert fig.layout.template.layout.paper_bgcolor is not None  # plotly_white applied


def test_score_histogram_overlays_each_true_class_and_marks_the_threshold() -> None:
    fig = charts.score_histogram_figure({"benign": [0.1, 0.2, 0.3], "malignant": [0.7, 0.9]}, 0.42, "malignant")
    assert [trace.name for trace in fig.data] == ["true benign (3)", "true malignant (2)"]
    assert list(fig.data[1].x) == [0.7, 0.9] and fig.data[0].xbins.size == pytest.approx(1 / 40)
    (line,) = fig.layout.shapes
    assert line.x0 == line.x1 == 0.42
    assert fig.layout.xaxis.title.text == "p(malignant)" and fig.layout.barmode == "overlay"


def test_a_few_classes_keep_their_own_order_on_every_image() -> None:
    # Seen on Predict with five grades: bars re-sorted per image (3, 2, 0, 1, 4 then 3, 2, 4, 1, 0).
    grades = {"0_no_dr": 0.1, "1_mild": 0.05, "2_moderate": 0.3, "3_severe": 0.5, "4_proliferative": 0.05}
    (bar,) = charts.probabilities_figure(grades).data
    assert list(bar.y) == list(grades)[::-1]  # 0_no_dr on top, the grades downwards
    assert list(bar.x) == list(grades.values())[::-1]


def test_a_class_has_one_colour_in_the_roc_and_precision_recall_charts(never_calling_run) -> None:
    from medimg.metrics import clinical
    from medimg.results import evaluation

    curves = clinical.curves(evaluation.load_scored(never_calling_run)["test"])
    roc, pr = charts.roc_figure(curves["roc"]), charts.precision_recall_figure(curves["pr"])
    roc_colours = {trace.name.split(" (")[0]: trace.line.color for trace in roc.data if trace.name != "chance"}
    pr_colours = {trace.name.split(" (")[0]: trace.line.color for trace in pr.data if " (AP " in trace.name}
    assert list(roc_colours) == ["BACTERIA", "NORMAL", "VIRUS"]
    assert roc_colours == pr_colours and len(set(roc_colours.values())) == 3


def test_trial_axes_tick_whole_trials_and_scores_to_four_decimals() -> None:
    two = [{"trial": 1, "score": 0.99, "hyperparameters": {"dropout": 0.0}}, {"trial": 2, "score": 0.9767}]
    two[1]["hyperparameters"] = {"dropout": 0.5}
    assert charts.trials_figure(two, "val_auc").layout.xaxis.dtick == 1  # not 1, 1.5, 2
    many = [{"trial": n, "score": 0.5} for n in range(1, 26)]
    assert charts.trials_figure(many, "val_auc").layout.xaxis.dtick == 3
    sparse = [{"trial": n, "score": 0.5} for n in (1, 10, 20, 30, 40)]  # five scored of forty
    assert charts.trials_figure(sparse, "val_auc").layout.xaxis.dtick == 4
    objective = charts.parallel_coordinates_figure(two, "val_auc").data[0].dimensions[-1]
    assert objective.label == "val_auc" and objective.tickformat == ".4f"
