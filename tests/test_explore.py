"""The explorer's numbers, the app's pictures and its inference requests, outside Streamlit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import image_bytes, save_model
from PIL import Image

from mobilenet import Classifier, answers, charts, explore, visual
from mobilenet.data import ImageSet
from mobilenet.evaluate import Evaluation


def test_totals_are_against_alpha_1_beta_1() -> None:
    baseline = explore.stats_for(1.0, "cifar", 32)
    same = explore.totals(baseline, baseline)
    assert [(t.value, t.delta) for t in same] == [("3,217,226", None), ("45.16 M", None), ("12.87 MB", None)]
    half = explore.totals(explore.stats_for(0.5, "cifar", 16), baseline)
    assert [t.delta for t in half] == ["-74.4%", "-93.6%", "-74.4%"]


def test_our_counts_match_the_papers_tables() -> None:
    table = explore.paper_comparison()
    assert len(table) == 8
    assert (abs(table["mult-adds M (ours)"] / table["mult-adds M (paper)"] - 1) < 0.01).all()
    assert (table["params M (ours)"].round(1) == table["params M (paper)"]).all()


def test_every_block_saves_8_to_9_times_at_the_papers_size() -> None:
    savings = explore.savings_table(explore.stats_for(1.0, "imagenet", 224))
    assert len(savings) == 13
    assert savings["saving"].between(7.8, 9).all() and savings["saving"].iloc[1:].min() > 8  # block 0: N = 64


def test_the_layer_table_follows_the_stats() -> None:
    stats = explore.stats_for(0.75, "cifar", 24)
    table = explore.layer_table(stats)
    assert table["params"].sum() == stats.params and table["mult-adds"].sum() == stats.mult_adds
    assert table.iloc[0].to_dict() | {"share of mult-adds": 0} == {
        "layer": "stem", "type": "stem", "conv": "3×3, stride 1", "input": "3×24×24", "output": "24×22×22",
        "params": 3 * 9 * 24 + 48, "mult-adds": stats.layers[0].mult_adds, "share of mult-adds": 0}


def test_alpha_sweep_spans_the_slider() -> None:
    sweep = explore.alpha_sweep("cifar", 32)
    assert sweep["alpha"].iloc[0] == explore.ALPHA_MIN and sweep["alpha"].iloc[-1] == explore.ALPHA_MAX
    assert sweep.loc[sweep["alpha"] == 1.0, "params"].item() == 3_217_226
    assert sweep["params"].is_monotonic_increasing and sweep["mult-adds"].is_monotonic_increasing


def test_latency_is_measured_within_its_budget() -> None:
    latency = explore.measure_latency(0.25, "cifar", 32, device="cpu", budget_s=0.2)
    assert latency.runs >= 3 and 0 < latency.best_ms <= latency.median_ms
    assert latency.device.startswith("CPU") and latency.device.endswith(
        f"{torch.get_num_threads()} thread{'' if torch.get_num_threads() == 1 else 's'}")


def test_heatmap_overlay_covers_the_centre_square_where_the_map_is_hot() -> None:
    photo = Image.new("RGB", (400, 200), "white")
    cold = visual.heatmap_overlay(photo, torch.zeros(8, 8), side=100)
    assert cold.getpixel((50, 50)) == (255, 255, 255)  # not darkened
    overlay = visual.heatmap_overlay(photo, torch.ones(8, 8), side=100, opacity=1.0)
    assert overlay.size == (100, 100)
    assert overlay.getpixel((50, 50)) == tuple(visual.colormap(np.array(1.0)).tolist())
    half = visual.heatmap_overlay(photo, torch.ones(8, 8), side=100, opacity=0.5).getpixel((50, 50))
    assert all(min(c, 255) <= h <= 255 for c, h in zip(overlay.getpixel((50, 50)), half))  # between the two


def test_colormap_runs_dark_to_light() -> None:
    colours = visual.colormap(np.linspace(0, 1, 5))
    assert colours.shape == (5, 3) and colours.dtype == np.uint8
    assert colours[0].tolist() == [0, 0, 4] and colours[-1].tolist() == [252, 255, 164]
    assert (colours.astype(int).sum(1)[1:] > colours.astype(int).sum(1)[:-1]).all()


def evaluation(truth: list[int], predicted: list[int],
               classes: tuple[str, ...] = ("cat", "dog")) -> tuple[Evaluation, ImageSet]:
    probs = torch.nn.functional.one_hot(torch.tensor(predicted), len(classes)).float() * 0.9 + 0.05
    labels = torch.tensor(truth)
    images = ImageSet(torch.zeros(len(truth), 3, 4, 4, dtype=torch.uint8), labels, classes)
    confusion = torch.bincount(labels * len(classes) + torch.tensor(predicted), minlength=len(classes) ** 2)
    return Evaluation(classes, confusion.view(len(classes), -1), probs, labels), images


def test_the_sample_tiles_title_right_in_green_and_wrong_in_red(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = {}
    real = visual.labelled_tiles

    def spy(images, titles, colours, **kwargs):
        drawn.update(titles=titles, colours=colours)
        return real(images, titles, colours, **kwargs)

    monkeypatch.setattr(visual, "labelled_tiles", spy)
    result, images = evaluation([0, 1, 1], [0, 1, 0])
    tiles = visual.sample_tiles(result, images)
    assert sorted(zip(drawn["titles"], drawn["colours"])) == [
        ("cat (cat)", visual.CORRECT), ("cat (dog)", visual.WRONG), ("dog (dog)", visual.CORRECT)]
    assert len(tiles) == 3 and {t.size for t in tiles} == {(96 + 8, 96 + 18 + 6)}
    visual.mistakes_tiles(result, images)
    assert drawn["titles"] == ["cat (dog) 95%"]
    assert visual.mistakes_tiles(*evaluation([0, 1], [0, 1])) == []


def test_two_tiles_with_the_longest_titles_fit_a_phone_side_by_side() -> None:
    """The old 8×8 grid was one picture over 1,000 px wide, scaled to a third on a phone: unreadable titles."""
    longest = "automobile (automobile) 100%"
    tiles = visual.labelled_tiles(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), [longest] * 2, [visual.WRONG] * 2)
    assert 2 * tiles[0].width <= visual.PHONE_WIDTH
    ink = np.asarray(tiles[0])[:18].min(2) < 128  # the title's dark pixels
    assert ink[:, 0].sum() == 0 and ink[:, -1].sum() == 0  # the whole title is on the tile


def test_classify_answers_every_upload(tmp_path: Path) -> None:
    save_model(tmp_path / "m.pt")
    clf = Classifier.load(tmp_path / "m.pt", device="cpu", threads=None)  # leave torch's threads alone
    uploads = [answers.Upload("a.png", image_bytes(size=(200, 150))), answers.Upload("b.txt", b"hello"),
               answers.Upload("wide.png", image_bytes(size=(640, 100)))]
    good, bad, wide = answers.classify(clf, uploads, topk=3)
    assert bad == answers.Failure("b.txt", "not a supported image: use JPEG, PNG, WebP, BMP, GIF or TIFF")
    expected = clf.predict(image_bytes(size=(200, 150)), 3).top
    assert [label for label, _ in good.prediction.top] == [label for label, _ in expected]
    assert [p for _, p in good.prediction.top] == pytest.approx([p for _, p in expected], abs=1e-5)
    assert max(good.photo.size) == max(wide.photo.size) == answers.PHOTO_SIDE
    assert good.prediction.image.size == (32, 32) and good.foreign is None  # no threshold given
    assert answers.heatmap(clf, good, "cat", 0.5).size == (256, 256)
    assert answers.classify(clf, uploads[:1], threshold=1.01)[0].foreign is True


def explorer_charts() -> dict[str, object]:

    stats = explore.stats_for(1.0, "imagenet", 224)
    points = explore.accuracy_against_cost([("mobilenet_v1_a1.0", save_card())])
    result, _ = evaluation([0, 1, 1], [0, 1, 0])
    found = {f"α sweep {i}": c for i, c in enumerate(charts.alpha_sweep(explore.alpha_sweep("imagenet", 224), stats))}
    return found | {
        "layer costs": charts.layer_costs(explore.layer_costs(stats)),
        "savings": charts.separable_savings(explore.savings_table(stats)),
        "paper": charts.paper_mult_adds(explore.paper_comparison()),
        "accuracy against mult-adds": charts.accuracy_cost(points),
        "accuracy against latency": charts.accuracy_cost(points.assign(**{"latency ms": 1.0}), "latency ms"),
        "per class": charts.per_class(result), "confusion": charts.confusion(result),
    }


def save_card():
    from mobilenet.checkpoint import ModelCard
    from mobilenet.data import CIFAR10_CLASSES

    return ModelCard(1.0, "cifar", 32, CIFAR10_CLASSES, (0.5,) * 3, (0.25,) * 3, {"val_acc": 0.9})


@pytest.mark.parametrize("name", ["α sweep 0", "α sweep 1", "layer costs", "savings", "paper",
                                  "accuracy against mult-adds", "accuracy against latency", "per class", "confusion"])
def test_every_chart_fits_its_container(name: str) -> None:
    """A concatenated or faceted chart keeps its parts' fixed widths: the α sweep was 688 px on a 390 px phone."""
    spec = explorer_charts()[name].to_dict()
    assert not {"hconcat", "vconcat", "concat", "facet"} & set(spec) and "column" not in str(spec.get("encoding"))
    assert spec["width"] == "container"
    title = spec.get("title", "")
    assert max(map(len, [title] if isinstance(title, str) else title)) <= 40  # a line fits a phone
    legends = [e["legend"] for e in spec.get("encoding", {}).values() if isinstance(e, dict) and e.get("legend")]
    assert all(legend.get("direction") == "vertical" for legend in legends if legend.get("orient") == "top")


def test_accuracy_against_cost_puts_our_models_beside_the_papers() -> None:
    card = save_card()
    no_accuracy = save_card().__class__(**{**card.__dict__, "training": {}})
    shapes = save_card().__class__(**{**card.__dict__, "classes": ("circle", "square")})  # another task
    points = explore.accuracy_against_cost([("ours", card), ("untrained", no_accuracy), ("shapes", shapes)])
    ours = points[points["data"] == explore.OURS]
    assert ours["model"].tolist() == ["ours"] and ours["accuracy"].item() == 0.9
    assert ours["mult-adds M"].item() == explore.stats_for(1.0, "cifar", 32).mult_adds / 1e6
    paper = points[points["data"] == explore.PAPERS]
    assert len(paper) == 7 and paper["mult-adds M"].max() == 569 and paper["accuracy"].max() == 0.706


SHIPPED_SMALL = Path(__file__).resolve().parent.parent / "checkpoints" / "mobilenet_v1_a0.25.pt"


@pytest.mark.parametrize("engine, described, label", [("int8", "ONNX Runtime, int8", "α 0.25 int8"),
                                                       ("torch", "PyTorch, fp32", "α 0.25 fp32")])
def test_each_model_is_timed_on_its_own_engine(engine: str, described: str, label: str) -> None:
    clf = Classifier.load(SHIPPED_SMALL, device="cpu", engine=engine)
    points = explore.accuracy_against_cost([("small", clf.card), ("no classifier here", save_card())])
    timed = explore.with_latency(points, {"small": clf}, budget_s=0.05)
    assert timed["model"].tolist() == ["small"] and (timed["latency ms"] > 0).all()
    assert timed["engine"].tolist() == [described] and timed["label"].tolist() == [label]
    assert timed["device"].item().startswith("CPU") and timed["device"].item().endswith(", 1 thread")
    assert f"small on {described}" in explore.latency_caption(timed)


def test_the_latency_caption_names_each_engine_once() -> None:
    timed = pd.DataFrame({"model": ["a", "b", "c"], "device": ["CPU, 1 thread"] * 3,
                          "engine": ["ONNX Runtime, int8", "PyTorch, fp32", "ONNX Runtime, int8"]})
    caption = explore.latency_caption(timed)
    assert ": a, c on ONNX Runtime, int8; b on PyTorch, fp32. " in caption
    # the int8 rows are timed in int8, not measured in it
    assert caption.endswith("Accuracy is each card's fp32 validation accuracy (its validating twin's for a model "
                            "trained on all the images); an int8 model is shipped only within 0.5 points of it.")
    assert explore.latency_caption(timed).startswith("Timed here on CPU, 1 thread: ")


def test_a_classifiers_latency_is_its_engines() -> None:
    class Counting:
        name, threads, calls = "int8", 1, 0

        def __call__(self, views: torch.Tensor) -> torch.Tensor:
            Counting.calls += 1
            return torch.zeros(len(views), 10)

    card = save_card()
    clf = Classifier(card.build(), card, "cpu", engine=Counting())
    latency = explore.classifier_latency(clf, budget_s=0.01, max_runs=7)
    assert Counting.calls == latency.runs + 1  # a warm-up call, then the timed ones: every one through the engine
    assert latency.engine == "ONNX Runtime, int8" and latency.device.endswith(", 1 thread")


def test_link_problems_name_what_the_widgets_would_drop() -> None:
    assert explore.link_problems({"alpha": ["0.5"], "stem": ["imagenet"], "resolution": ["128"], "model": ["x"]}) == []
    assert explore.link_problems({"alpha": ["2.5"]}) == ["The link's α = `2.5` is outside 0.25 to 2: showing α = 1."]
    assert len(explore.link_problems({"stem": ["x"], "resolution": ["224"]})) == 2  # 224 is not a cifar resolution
    assert explore.link_problems({"stem": ["x", "imagenet"], "resolution": ["224"]}) == []  # the stem's last counts
    assert explore.link_problems({"alpha": ["0.5", "0.75"], "stem": ["imagenet"], "resolution": ["128", "160"]}) == [
        "The link gives α more than once (`0.5`, `0.75`): showing α = 1.",
        "The link gives resolution more than once (`128`, `160`): showing 224."]
    assert explore.link_problems({"alpha": ["", "0.5"], "stem": ["", "imagenet"], "resolution": ["", "128"]}) == []
    # the stem's radio takes its last value, empty: cifar, where 128 is not offered
    assert explore.link_problems({"stem": ["imagenet", ""], "resolution": ["128"]}) == [
        "The link's resolution `128` is not offered for the cifar stem (8 to 64 in steps of 4): showing 32."]


def test_the_counts_kept_stay_bounded_whatever_links_ask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(explore, "model_stats", lambda alpha, resolution, stem: (alpha, resolution, stem))
    explore.stats_for.cache_clear()
    try:
        for i in range(3000):  # a crawler's links, each with an α of its own within range
            assert explore.stats_for(0.25 + i * 1e-4, "cifar", 32) == (0.25 + i * 1e-4, 32, "cifar")
        assert explore.stats_for.cache_info().currsize <= 2048
    finally:
        explore.stats_for.cache_clear()  # the other tests count for real


def test_the_report_gives_no_accuracy_to_a_class_without_images() -> None:
    from mobilenet.evaluate import format_report

    result, _ = evaluation([0, 0, 2], [0, 1, 2], classes=("cat", "dog", "ship"))
    lines = format_report(result).splitlines()
    assert "  cat   50.00%" in lines and "  dog      n/a (no images)" in lines and "  ship  100.00%" in lines
    assert json.loads(json.dumps(result.to_dict()))["per_class"] == {"cat": 0.5, "dog": None, "ship": 1.0}  # --json
