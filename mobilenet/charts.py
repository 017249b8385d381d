"""Altair charts for the app, built from the frames of `mobilenet.explore` and evaluation results.

Every chart of the explorer and the evaluation is one plain or layered chart as wide as its container (no
concatenation or facets, which keep their own width): on a phone it shrinks to the screen. Where two views
belong side by side, they are two charts that the page puts in columns, which stack on a narrow screen.
"""

from __future__ import annotations

import copy
import functools

import altair as alt
import pandas as pd
import torch

from .runs import MetricsRow
from .evaluate import Evaluation
from .explore import OURS, PAPERS
from .stats import LAYER_TYPES, ModelStats

_TYPE_COLOURS = alt.Scale(domain=list(LAYER_TYPES), scheme="tableau10")
FIT = "container"  # every chart's width: its container's
# Room on the left for the rotated axis title, which Vega otherwise draws a few pixels outside the picture.
PADDING = {"left": 8, "top": 5, "right": 5, "bottom": 5}
# A confusion matrix beyond this many classes is unreadable (and its cells grow as their square): the most confused.
CONFUSION_CLASSES = 30


def _rows(frame: pd.DataFrame) -> dict:
    """A frame as the chart's inline rows. Altair refuses frames of more than 5,000 rows when a chart is turned into
    its spec (a guard for notebooks): a run's curves, an overlay of a dozen runs or a 71-class confusion matrix have
    more, and every page that showed them failed. What is drawn is bounded where it is made (thinned curves,
    CONFUSION_CLASSES)."""
    return alt.to_values(frame)


def alpha_sweep(sweep: pd.DataFrame, stats: ModelStats) -> list[alt.LayerChart]:
    """Parameters, and mult-adds, against α with the current configuration marked in red: two charts, for two
    columns that stack on a phone."""
    charts = []
    for measure, value in (("params", stats.params), ("mult-adds", stats.mult_adds)):
        base = alt.Chart(sweep).encode(
            x=alt.X("alpha:Q", title="width multiplier α"),
            y=alt.Y(f"{measure}:Q", title=measure, axis=alt.Axis(format="~s")),
            tooltip=["alpha:Q", alt.Tooltip(f"{measure}:Q", format=",")],
        )
        point = alt.Chart(pd.DataFrame([{"alpha": stats.alpha, measure: value}])).mark_point(
            color="red", size=120, filled=True).encode(x="alpha:Q", y=f"{measure}:Q",
                                                      tooltip=["alpha:Q", alt.Tooltip(f"{measure}:Q", format=",")])
        layers = base.mark_line() + base.mark_circle() + point
        charts.append(layers.properties(title=f"{measure} against α", width=FIT, padding=PADDING))
    return charts


def layer_costs(costs: pd.DataFrame) -> alt.Chart:
    return alt.Chart(costs).mark_bar().encode(
        x=alt.X("layer:N", sort=alt.SortField("order"), title=None, axis=alt.Axis(labelAngle=-60)),
        y=alt.Y("mult-adds:Q", axis=alt.Axis(format="~s")),
        color=alt.Color("type:N", scale=_TYPE_COLOURS),
        tooltip=["layer:N", "type:N", alt.Tooltip("mult-adds:Q", format=",")],
    ).properties(title="mult-adds per layer", width=FIT, padding=PADDING)


def separable_savings(savings: pd.DataFrame) -> alt.Chart:
    """Per block: depthwise separable against standard convolution mult-adds, side by side."""
    long = savings.melt(id_vars=["block", "saving"], var_name="convolution", value_name="mult-adds")
    return alt.Chart(long).mark_bar().encode(
        x=alt.X("block:N", sort=None, title=None, axis=alt.Axis(labelAngle=-60)),
        xOffset="convolution:N",
        y=alt.Y("mult-adds:Q", axis=alt.Axis(format="~s")),
        # One entry per line: side by side, the two names need more than a phone's width.
        color=alt.Color("convolution:N", legend=alt.Legend(orient="top", title=None, direction="vertical")),
        tooltip=["block:N", "convolution:N", alt.Tooltip("mult-adds:Q", format=","),
                 alt.Tooltip("saving:Q", format=".2f", title="saving ×")],
    ).properties(title=["each block: depthwise separable", "against standard 3×3 convolution"], width=FIT,
                 padding=PADDING)


def paper_mult_adds(comparison: pd.DataFrame) -> alt.Chart:
    """The paper's mult-adds beside ours, a row per network: names on the side stay readable on a phone."""
    long = comparison.assign(network=comparison["table"] + ": " + comparison["model"]).melt(
        id_vars=["network"], value_vars=["mult-adds M (paper)", "mult-adds M (ours)"], var_name="source",
        value_name="million mult-adds")
    return alt.Chart(long).mark_bar().encode(
        y=alt.Y("network:N", sort=None, title=None),
        yOffset="source:N",
        x="million mult-adds:Q",
        color=alt.Color("source:N", legend=alt.Legend(orient="top", title=None, direction="vertical")),
        tooltip=["network:N", "source:N", "million mult-adds:Q"],
    ).properties(width=FIT, padding=PADDING)


def accuracy_cost(points: pd.DataFrame, cost: str = "mult-adds M") -> alt.LayerChart:
    """Accuracy against a cost (log scale), a point per model under a short label (α, or α/resolution for the
    paper's); ours and the paper's told apart by colour and shape (they are scored on different tasks)."""
    title = {"mult-adds M": "million mult-adds per image (log scale)",
             "latency ms": "latency per image, ms, measured here (log scale)"}[cost]
    base = alt.Chart(points).encode(
        x=alt.X(f"{cost}:Q", scale=alt.Scale(type="log"), title=title),
        y=alt.Y("accuracy:Q", axis=alt.Axis(format="%"), scale=alt.Scale(zero=False), title="accuracy"),
    )
    marks = base.mark_point(size=90, filled=True).encode(
        color=alt.Color("data:N", scale=alt.Scale(domain=[OURS, PAPERS]),
                        legend=alt.Legend(orient="top", title=None, direction="vertical")),
        shape=alt.Shape("data:N", scale=alt.Scale(domain=[OURS, PAPERS]), legend=None),
        tooltip=["model:N", "data:N", alt.Tooltip("accuracy:Q", format=".1%"), alt.Tooltip(f"{cost}:Q", format=".3g"),
                 alt.Tooltip("params M:Q", format=".2f")],
    )
    names = base.mark_text(dy=-11, fontSize=10).encode(text="label:N")
    return (marks + names).properties(width=FIT, padding=PADDING)


def top_k(top: list[tuple[str, float]]) -> dict:
    """The top classes as bars: a Vega-Lite spec, the Altair chart built once and only its values filled in per
    answer (building and validating an Altair chart took a tenth of an upload's server time)."""
    spec = copy.deepcopy(_top_k_template())
    spec["data"] = {"values": [{"class": label, "probability": prob} for label, prob in top]}
    return spec


@functools.cache
def _top_k_template() -> dict:
    spec = alt.Chart(pd.DataFrame({"class": ["a"], "probability": [0.5]})).mark_bar().encode(
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        y=alt.Y("class:N", sort="-x", title=None),
        tooltip=["class:N", alt.Tooltip("probability:Q", format=".1%")],
    ).properties(height=alt.Step(28)).to_dict()  # a row per class: no label is dropped for lack of room
    spec.pop("datasets", None)
    return spec


def per_class(result: Evaluation) -> alt.Chart:
    """Accuracy of the classes that had images: a class absent from the data has no accuracy, not 0%."""
    frame = pd.DataFrame([(c, acc) for c, acc in result.per_class.items() if acc is not None],
                         columns=["class", "accuracy"])
    return alt.Chart(_rows(frame)).mark_bar().encode(
        x=alt.X("class:N", sort=None, title=None),
        y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        tooltip=["class:N", alt.Tooltip("accuracy:Q", format=".1%")],
    ).properties(title="accuracy per class", width=FIT, padding=PADDING)


def confusion(result: Evaluation) -> alt.LayerChart:
    """Counts of each true class (rows) against each prediction (columns); beyond CONFUSION_CLASSES classes, those
    of the classes most often mistaken, for others or others for them."""
    shown = sorted(_most_confused(result.confusion, CONFUSION_CLASSES))
    classes = [result.classes[i] for i in shown]
    frame = pd.DataFrame([{"truth": result.classes[i], "prediction": result.classes[j],
                           "images": int(result.confusion[i, j])} for i in shown for j in shown])
    base = alt.Chart(_rows(frame)).encode(x=alt.X("prediction:N", sort=classes), y=alt.Y("truth:N", sort=classes))
    cells = base.mark_rect().encode(color=alt.Color("images:Q", scale=alt.Scale(scheme="blues")),
                                    tooltip=["truth:N", "prediction:N", "images:Q"])
    # Write the counts in white on dark cells, black on light ones.
    threshold = max(1, int(frame["images"].max())) / 2
    labels = base.mark_text().encode(
        text="images:Q",
        color=alt.condition(alt.datum.images > threshold, alt.value("white"), alt.value("black")),
    )
    title = ("confusion matrix" if len(shown) == len(result.classes) else
             f"confusion matrix of the {len(shown)} most confused of {len(result.classes)} classes")
    return (cells + labels).properties(title=[title, "rows: truth, columns: prediction"], height=400,
                                       width=FIT, padding=PADDING)


def _most_confused(confusion: torch.Tensor, n: int) -> list[int]:
    """The indices of the n classes with the most mistakes, as the truth or as the prediction."""
    mistakes = confusion.sum(0) + confusion.sum(1) - 2 * confusion.diag()
    return sorted(range(len(mistakes)), key=lambda i: -int(mistakes[i]))[:n]


CURVES = ("loss", "accuracy", "learning rate")
# Heights of a run's and an overlay's charts: the plot with its axes and title, and above it a row per entry of the
# legend, which Vega fits into the chart's height.
PLOT_HEIGHT, LEGEND_ROW = 320, 30


def _curves_frame(rows: list[MetricsRow], epochs: int) -> pd.DataFrame:
    """The rows in long form: a row per measure and series, at its step and its place in epochs."""
    long = []
    for row in rows:
        at = {"step": row.step, "epoch": row.epoch, "epochs": row.epochs_done(epochs)}
        values = {("loss", "train"): row.train_loss, ("loss", "val"): row.val_loss,
                  ("accuracy", "train"): row.train_acc, ("accuracy", "val"): row.val_acc}
        for (measure, split), value in values.items():
            if value is not None and (row.kind == "epoch" or split == "train"):
                long.append(at | {"measure": measure, "value": value,
                                  "series": f"{split} ({'epochs' if row.kind == 'epoch' else 'steps'})"})
        long.append(at | {"measure": "learning rate", "value": row.lr, "series": "lr"})
    return pd.DataFrame(long, columns=["step", "epoch", "epochs", "measure", "value", "series"])


def _curve(frame: pd.DataFrame, measure: str, x: alt.X, legend: alt.Legend) -> alt.LayerChart:
    """One measure: steps as thin lines, epochs as lines with points."""
    part = alt.Chart(_rows(frame[frame["measure"] == measure])).encode(
        x=x,
        y=alt.Y("value:Q", title=measure, axis=alt.Axis(format="%" if measure == "accuracy" else "~g")),
        color=alt.Color("series:N", legend=legend),
        tooltip=["epoch:Q", "step:Q", "series:N", alt.Tooltip("value:Q", format=".4g")],
    )
    lines = part.transform_filter(alt.datum.series != "train (epochs)").transform_filter(
        alt.datum.series != "val (epochs)").mark_line(strokeWidth=1)
    points = part.transform_filter("indexof(datum.series, 'epochs') >= 0").mark_line(point=True)
    return lines + points


def run_curves(rows: list[MetricsRow], epochs: int) -> list[alt.LayerChart]:
    """A run's loss, accuracy and learning rate against the epoch, each step row at its place within its epoch:
    three charts as wide as their container, for columns that stack on a phone."""
    frame = _curves_frame(rows, epochs)
    x = alt.X("epochs:Q", title="epoch", scale=alt.Scale(domainMin=0))
    legend = alt.Legend(orient="top", title=None, direction="vertical")  # side by side, the names need more room
    return [_curve(frame, measure, x, legend).properties(title=measure, width=FIT, height=LEGEND_ROW * 3 + PLOT_HEIGHT,
                                                         padding=PADDING)
            for measure in CURVES]


OVERLAID = {"validation accuracy": "val_acc", "training loss": "train_loss"}  # measure: its MetricsRow field


def overlay(runs: dict[str, tuple[list[MetricsRow], int]]) -> list[alt.Chart]:
    """Several runs (name: their rows and epochs) on shared axes, a colour per run, against the epoch: validation
    accuracy at each epoch's end, and training loss as the step rows log it, each at its place within its epoch (as
    in TensorBoard; a run in its first epoch has a line already). Two charts as wide as their container."""
    colours = alt.Color("run:N", sort=list(runs), legend=alt.Legend(orient="top", title=None, direction="vertical"))
    specs = []
    for measure, name in OVERLAID.items():
        per_epoch = name.startswith("val")
        frame = pd.DataFrame([{"run": run, "epoch": row.epochs_done(epochs), measure: getattr(row, name)}
                              for run, (rows, epochs) in runs.items() for row in rows
                              if (row.kind == "epoch") == per_epoch], columns=["run", "epoch", measure])
        specs.append(alt.Chart(_rows(frame)).mark_line(point=per_epoch).encode(
            x=alt.X("epoch:Q", scale=alt.Scale(domainMin=0)),
            y=alt.Y(f"{measure}:Q", axis=alt.Axis(format="%" if per_epoch else "~g"), scale=alt.Scale(zero=False)),
            color=colours,
            tooltip=["run:N", alt.Tooltip("epoch:Q", format=".2f"), alt.Tooltip(f"{measure}:Q", format=".4g")],
        ).properties(title=measure, width=FIT, height=LEGEND_ROW * len(runs) + PLOT_HEIGHT, padding=PADDING))
    return specs
