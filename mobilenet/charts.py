"""Altair charts for the app, built from the frames of `mobilenet.explore` and evaluation results."""

from __future__ import annotations

import altair as alt
import pandas as pd

from .evaluate import Evaluation
from .stats import LAYER_TYPES, ModelStats

_TYPE_COLOURS = alt.Scale(domain=list(LAYER_TYPES), scheme="tableau10")


def alpha_sweep(sweep: pd.DataFrame, stats: ModelStats) -> alt.HConcatChart:
    """Parameters and mult-adds against α, with the current configuration marked in red."""
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
        charts.append(layers.properties(title=f"{measure} against α", width=260))
    return alt.hconcat(*charts)


def layer_costs(costs: pd.DataFrame) -> alt.Chart:
    return alt.Chart(costs).mark_bar().encode(
        x=alt.X("layer:N", sort=alt.SortField("order"), title=None, axis=alt.Axis(labelAngle=-60)),
        y=alt.Y("mult-adds:Q", axis=alt.Axis(format="~s")),
        color=alt.Color("type:N", scale=_TYPE_COLOURS),
        tooltip=["layer:N", "type:N", alt.Tooltip("mult-adds:Q", format=",")],
    ).properties(title="mult-adds per layer")


def separable_savings(savings: pd.DataFrame) -> alt.Chart:
    """Per block: depthwise separable against standard convolution mult-adds, side by side."""
    long = savings.melt(id_vars=["block", "saving"], var_name="convolution", value_name="mult-adds")
    return alt.Chart(long).mark_bar().encode(
        x=alt.X("block:N", sort=None, title=None, axis=alt.Axis(labelAngle=-60)),
        xOffset="convolution:N",
        y=alt.Y("mult-adds:Q", axis=alt.Axis(format="~s")),
        color=alt.Color("convolution:N", legend=alt.Legend(orient="top", title=None)),
        tooltip=["block:N", "convolution:N", alt.Tooltip("mult-adds:Q", format=","),
                 alt.Tooltip("saving:Q", format=".2f", title="saving ×")],
    ).properties(title="each block: depthwise separable against standard 3×3 convolution")


def paper_mult_adds(comparison: pd.DataFrame) -> alt.Chart:
    long = comparison.melt(id_vars=["table", "model"], value_vars=["mult-adds M (paper)", "mult-adds M (ours)"],
                           var_name="source", value_name="million mult-adds")
    return alt.Chart(long).mark_bar().encode(
        x=alt.X("model:N", sort=None, title=None),
        xOffset="source:N",
        y="million mult-adds:Q",
        color=alt.Color("source:N", legend=alt.Legend(orient="top", title=None)),
        column=alt.Column("table:N", title=None),
        tooltip=["model:N", "source:N", "million mult-adds:Q"],
    ).resolve_scale(x="independent")


def top_k(top: list[tuple[str, float]]) -> alt.Chart:
    frame = pd.DataFrame(top, columns=["class", "probability"])
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        y=alt.Y("class:N", sort="-x", title=None),
        tooltip=["class:N", alt.Tooltip("probability:Q", format=".1%")],
    ).properties(height=alt.Step(28))  # a row per class: no label is dropped for lack of room


def per_class(result: Evaluation) -> alt.Chart:
    """Accuracy of the classes that had images: a class absent from the data has no accuracy, not 0%."""
    present = (result.confusion.sum(1) > 0).tolist()
    frame = pd.DataFrame([item for item, shown in zip(result.per_class.items(), present) if shown],
                         columns=["class", "accuracy"])
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("class:N", sort=None, title=None),
        y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        tooltip=["class:N", alt.Tooltip("accuracy:Q", format=".1%")],
    ).properties(title="accuracy per class")


def confusion(result: Evaluation) -> alt.LayerChart:
    classes = list(result.classes)
    frame = pd.DataFrame([{"truth": t, "prediction": p, "images": int(result.confusion[i, j])}
                          for i, t in enumerate(classes) for j, p in enumerate(classes)])
    base = alt.Chart(frame).encode(x=alt.X("prediction:N", sort=classes), y=alt.Y("truth:N", sort=classes))
    cells = base.mark_rect().encode(color=alt.Color("images:Q", scale=alt.Scale(scheme="blues")),
                                    tooltip=["truth:N", "prediction:N", "images:Q"])
    # Write the counts in white on dark cells, black on light ones.
    threshold = max(1, int(frame["images"].max())) / 2
    labels = base.mark_text().encode(
        text="images:Q",
        color=alt.condition(alt.datum.images > threshold, alt.value("white"), alt.value("black")),
    )
    return (cells + labels).properties(title="confusion matrix (rows: truth, columns: prediction)", height=400)


def training_curves(rows: list[dict]) -> alt.HConcatChart:
    """Loss, accuracy and learning rate against the step: steps as thin lines, epochs as points."""
    long = []
    for row in rows:
        kind = row["kind"]
        for measure, split in (("loss", "train"), ("loss", "val"), ("accuracy", "train"), ("accuracy", "val")):
            value = row.get(f"{split}_{'acc' if measure == 'accuracy' else 'loss'}")
            if value is not None and (kind == "epoch" or split == "train"):
                long.append({"step": row["step"], "epoch": row["epoch"], "measure": measure, "value": value,
                             "series": f"{split} ({'epochs' if kind == 'epoch' else 'steps'})"})
        long.append({"step": row["step"], "epoch": row["epoch"], "measure": "learning rate", "value": row["lr"],
                     "series": "lr"})
    frame = pd.DataFrame(long)
    charts = []
    for measure in ("loss", "accuracy", "learning rate"):
        part = alt.Chart(frame[frame["measure"] == measure]).encode(
            x=alt.X("step:Q"),
            y=alt.Y("value:Q", title=measure, axis=alt.Axis(format="%" if measure == "accuracy" else "~g")),
            color=alt.Color("series:N", legend=alt.Legend(orient="bottom", title=None)),
            tooltip=["epoch:Q", "step:Q", "series:N", alt.Tooltip("value:Q", format=".4g")],
        )
        lines = part.transform_filter(alt.datum.series != "train (epochs)").transform_filter(
            alt.datum.series != "val (epochs)").mark_line(strokeWidth=1)
        points = part.transform_filter("indexof(datum.series, 'epochs') >= 0").mark_line(point=True)
        charts.append((lines + points).properties(title=measure, width=240, height=200))
    return alt.hconcat(*charts)
