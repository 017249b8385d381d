"""Charts of runs: a run's curves against the epoch and several runs overlaid, each as wide as its container."""

from __future__ import annotations

import pytest
import torch

from mobilenet import charts
from mobilenet.evaluate import Evaluation
from mobilenet.runs import MetricsRow


def epoch_rows(epochs: int, accuracy: float) -> list[MetricsRow]:
    """Two step rows and the epoch row per epoch, 10 steps an epoch, as the trainer writes them."""
    rows = []
    for epoch in range(1, epochs + 1):
        for step in (10 * epoch - 5, 10 * epoch - 1):
            rows.append(MetricsRow("step", epoch, step, 2.0, accuracy, 0.1, 100.0, float(step),
                                   float(10 * epochs - step)))
        rows.append(MetricsRow("epoch", epoch, 10 * epoch, 1.5, accuracy, 0.1, 100.0, float(epoch),
                               float(epochs - epoch), val_loss=1.0, val_acc=accuracy * epoch))
    return rows


def data(spec: dict) -> list[dict]:
    return [row for dataset in spec["datasets"].values() for row in dataset]


def fits_a_phone(spec: dict) -> None:
    assert not {"hconcat", "vconcat", "concat", "facet"} & set(spec) and spec["width"] == "container"
    assert len(spec["title"]) <= 40


def test_overlay_draws_a_line_per_run_on_shared_axes() -> None:
    fast, seed = "20261128-101500-a0.25-fast", "20261128-121500-a1-seed"
    runs = {fast: (epoch_rows(3, 0.2), 3), seed: (epoch_rows(2, 0.3), 2)}
    overlaid = [chart.to_dict() for chart in charts.overlay(runs)]
    assert [spec["title"] for spec in overlaid] == ["validation accuracy", "training loss"]
    for spec in overlaid:
        fits_a_phone(spec)
        assert spec["mark"]["type"] == "line" and spec["encoding"]["x"]["field"] == "epoch"
        colour = spec["encoding"]["color"]
        assert colour["field"] == "run"  # one colour per run, named in a legend that fits a phone:
        assert colour["legend"] == {"direction": "vertical", "orient": "top", "title": None}
    accuracy, loss = ({name: [row["epoch"] for row in data(spec) if row["run"] == name] for name in runs}
                      for spec in overlaid)
    assert accuracy == {fast: [1, 2, 3], seed: [1, 2]}  # at each epoch's end, with points
    assert [row["validation accuracy"] for row in data(overlaid[0])] == pytest.approx([0.2, 0.4, 0.6, 0.3, 0.6])
    assert overlaid[0]["mark"]["point"] and not overlaid[1]["mark"].get("point")
    assert loss == {fast: pytest.approx([0.5, 0.9, 1.5, 1.9, 2.5, 2.9]),  # each step row at its place
                    seed: pytest.approx([0.5, 0.9, 1.5, 1.9])}


def test_a_run_in_its_first_epoch_has_a_training_loss_line_and_no_accuracy_yet() -> None:
    accuracy, loss = (chart.to_dict() for chart in charts.overlay({"new": (epoch_rows(1, 0.1)[:2], 1),
                                                                    "newer": ([], 1)}))
    assert data(accuracy) == []
    assert [(row["run"], row["epoch"]) for row in data(loss)] == [("new", 0.5), ("new", 0.9)]


def test_a_runs_curves_are_against_the_epoch_each_step_within_its_epoch() -> None:
    curves = [chart.to_dict() for chart in charts.run_curves(epoch_rows(2, 0.5), epochs=2)]
    assert [spec["title"] for spec in curves] == list(charts.CURVES)
    for spec in curves:
        fits_a_phone(spec)
        assert {layer["encoding"]["x"]["field"] for layer in spec["layer"]} == {"epochs"}
        legends = [layer["encoding"]["color"]["legend"] for layer in spec["layer"]]
        assert all(legend["orient"] == "top" and legend["direction"] == "vertical" for legend in legends)  # in a third
    loss = data(curves[0])
    assert [row["epochs"] for row in loss if row["series"] == "train (steps)"] == [0.5, 0.9, 1.5, 1.9]
    assert [row["epochs"] for row in loss if row["series"] == "val (epochs)"] == [1.0, 2.0]


def test_top_k_fills_its_values_into_one_spec_and_shares_nothing_between_answers() -> None:
    first = charts.top_k([("cat", 0.9), ("dog", 0.1)])
    first["encoding"]["x"]["scale"]["domain"] = [0, 2]  # a caller changing its copy
    second = charts.top_k([("ship", 0.6)])
    assert second["data"] == {"values": [{"class": "ship", "probability": 0.6}]}
    assert second["encoding"]["x"]["scale"]["domain"] == [0, 1] and second["encoding"]["y"]["sort"] == "-x"
    assert "datasets" not in second and second["mark"]["type"] == "bar"


def test_charts_of_more_than_five_thousand_rows_are_drawn() -> None:
    """Altair refuses to turn a frame of more than 5,000 rows into a spec: 13 overlaid runs of 400 step rows, or a
    run's long curves, failed the Runs and Training pages for every visitor."""
    long_run = [MetricsRow("step", 1 + step // 100, step, 2.0, 0.5, 0.1, 100.0, float(step), 0.0)
                for step in range(1, 401)]
    overlaid = charts.overlay({f"run{i:02d}": (long_run, 4) for i in range(13)})
    assert len(data(overlaid[1].to_dict())) == 13 * 400
    curves = charts.run_curves(long_run * 5, 20)
    assert len(data(curves[0].to_dict())) == 5 * 400


def test_a_confusion_matrix_of_many_classes_shows_the_most_confused() -> None:
    k = 100
    confusion = torch.eye(k, dtype=torch.long) * 10
    for i in range(40):  # class i taken for the next i times: 2i - 1 mistakes for 1-39 (with those received), 39 for 40
        confusion[i, i + 1] = i
    classes = tuple(f"class{i:03d}" for i in range(k))
    result = Evaluation(classes, confusion, torch.empty(0, k), torch.empty(0, dtype=torch.long))
    spec = charts.confusion(result).to_dict()
    assert spec["title"] == ["confusion matrix of the 30 most confused of 100 classes", "rows: truth, columns: "
                                                                                        "prediction"]
    cells = data(spec)
    assert len(cells) == 30 * 30
    assert [c["truth"] for c in cells[::30]] == [f"class{i:03d}" for i in range(11, 41)]  # in class order
    assert len(data(charts.per_class(result).to_dict())) == k
    few = charts.confusion(Evaluation(classes[:3], confusion[:3, :3], result.probs, result.labels)).to_dict()
    assert few["title"][0] == "confusion matrix" and len(data(few)) == 9
