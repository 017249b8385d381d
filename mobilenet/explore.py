"""The model explorer's numbers: layer tables, totals against α = 1 and β = 1, sweeps over α, what each
depthwise-separable block saves, the paper's Tables 6 and 7 beside our counts, and measured latency."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pandas as pd
import torch

from .device import device_name, pick_device
from .checkpoint import ModelCard
from .data import CIFAR10_CLASSES
from .display import quoted
from .engines import MAX_INT8_LOSS, describe, precision
from .infer import Classifier, fold_batchnorm
from .model import BASE_RESOLUTION, NUM_CLASSES, STEMS, MobileNetV1
from .stats import ModelStats, model_stats

ALPHA_MIN, ALPHA_MAX, ALPHA_STEP = 0.25, 2.0, 0.05
# The explorer's link parameters, which are also its widgets' keys.
ALPHA_PARAM, STEM_PARAM, RESOLUTION_PARAM = "alpha", "stem", "resolution"
SWEEP_ALPHAS = tuple(0.25 + 0.125 * i for i in range(15))  # 0.25 … 2.0
# Input sides offered per stem: β from 0.25 to 2 for CIFAR, and steps of 16 that hold the paper's 128…224.
RESOLUTIONS = {"cifar": tuple(range(8, 65, 4)), "imagenet": tuple(range(64, 449, 16))}

# Howard et al. 2017: (α, resolution, ImageNet top-1 %, million mult-adds, million parameters).
PAPER_TABLE6 = ((1.0, 224, 70.6, 569, 4.2), (0.75, 224, 68.4, 325, 2.6), (0.5, 224, 63.7, 149, 1.3),
                (0.25, 224, 50.6, 41, 0.5))
PAPER_TABLE7 = ((1.0, 224, 70.6, 569, 4.2), (1.0, 192, 69.1, 418, 4.2), (1.0, 160, 67.2, 290, 4.2),
                (1.0, 128, 64.4, 186, 4.2))


# A pure function of the settings, each ~0.1 s to count. The sliders offer about 1,500; bounded all the same, as a
# link may ask for any α in range (about 2.5 KB an entry).
@functools.lru_cache(maxsize=2048)
def stats_for(alpha: float, stem: str, resolution: int) -> ModelStats:
    """The explorer's network: the seed's 10-class head on the CIFAR stem, the paper's 1000 on ImageNet's."""
    return model_stats(alpha, resolution=resolution, stem=stem)


def link_problems(params: Mapping[str, list[str]]) -> list[str]:
    """What a shared link asks of the explorer that it cannot show, said for people: the sliders silently fall
    back to their defaults on such values, so this is read before they are drawn. `params`: each key's values in
    the link's order (a key given twice reaches a slider as a range, which it drops too; the stem takes the last).
    Empty values count for nothing, as the sliders drop them; the stem's radio takes its last value even when empty,
    and shows its default for it."""
    stem = (params.get(STEM_PARAM) or [STEMS[0]])[-1] or STEMS[0]
    params = {key: [value for value in values if value] for key, values in params.items()}
    problems = []
    if stem not in STEMS:
        problems.append(f"The link's stem {quoted(stem)} is not one of {', '.join(STEMS)}: showing {STEMS[0]}.")
        stem = STEMS[0]
    for key, name, default in ((ALPHA_PARAM, "α", "α = 1"),
                               (RESOLUTION_PARAM, "resolution", str(BASE_RESOLUTION[stem]))):
        if len(params.get(key, [])) > 1:
            problems.append(f"The link gives {name} more than once ({', '.join(map(quoted, params[key]))}): "
                            f"showing {default}.")
    alpha = params.get(ALPHA_PARAM, [])
    if len(alpha) == 1:
        try:
            value = float(alpha[0])
        except ValueError:
            value = float("nan")
        if not ALPHA_MIN <= value <= ALPHA_MAX:
            problems.append(f"The link's α = {quoted(alpha[0])} is outside {ALPHA_MIN:g} to {ALPHA_MAX:g}: "
                            f"showing α = 1.")
    resolution = params.get(RESOLUTION_PARAM, [])
    if len(resolution) == 1 and resolution[0] not in map(str, RESOLUTIONS[stem]):
        sides = RESOLUTIONS[stem]
        problems.append(f"The link's resolution {quoted(resolution[0])} is not offered for the {stem} stem "
                        f"({sides[0]} to {sides[-1]} in steps of {sides[1] - sides[0]}): showing "
                        f"{BASE_RESOLUTION[stem]}.")
    return problems


def beta(stem: str, resolution: int) -> float:
    return resolution / BASE_RESOLUTION[stem]


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape))


def layer_table(stats: ModelStats) -> pd.DataFrame:
    rows = []
    for row in stats.layers:
        conv = f"{row.kernel}×{row.kernel}, stride {row.stride}" + (", depthwise" if row.type == "depthwise" else "")
        rows.append({
            "layer": row.name, "type": row.type, "conv": conv if row.kernel else "",
            "input": _shape(row.input_shape), "output": _shape(row.output_shape),
            "params": row.params, "mult-adds": row.mult_adds, "share of mult-adds": row.mult_adds / stats.mult_adds,
        })
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Total:
    label: str
    value: str
    delta: str | None  # relative change against the baseline, e.g. "-75.3%"; None when equal


def totals(stats: ModelStats, baseline: ModelStats) -> list[Total]:
    """Parameters, mult-adds and weight size, each against the baseline network."""
    def change(now: float, then: float) -> str | None:
        return None if now == then else f"{now / then - 1:+.1%}"

    return [
        Total("parameters", f"{stats.params:,}", change(stats.params, baseline.params)),
        Total("mult-adds per image", f"{stats.mult_adds / 1e6:,.2f} M", change(stats.mult_adds, baseline.mult_adds)),
        Total("weights (float32)", f"{stats.weight_mb:.2f} MB", change(stats.weight_mb, baseline.weight_mb)),
    ]


def alpha_sweep(stem: str, resolution: int) -> pd.DataFrame:
    rows = []
    for alpha in SWEEP_ALPHAS:
        stats = stats_for(alpha, stem, resolution)
        rows.append({"alpha": alpha, "params": stats.params, "mult-adds": stats.mult_adds})
    return pd.DataFrame(rows)


def layer_costs(stats: ModelStats) -> pd.DataFrame:
    """Mult-adds per layer in network order, for a bar chart coloured by layer type."""
    return pd.DataFrame([{"order": i, "layer": row.name, "type": row.type, "mult-adds": row.mult_adds}
                         for i, row in enumerate(stats.layers)])


def savings_table(stats: ModelStats) -> pd.DataFrame:
    """Per block: the depthwise-separable pair against the standard 3×3 conv it replaces."""
    return pd.DataFrame([{"block": s.block, "depthwise separable": s.separable_mult_adds,
                          "standard convolution": s.standard_mult_adds, "saving": s.ratio}
                         for s in stats.separable_savings()])


def paper_comparison() -> pd.DataFrame:
    """The paper's Tables 6 (α) and 7 (resolution) with our counts for the same ImageNet networks."""
    rows = []
    for table, entries in (("Table 6", PAPER_TABLE6), ("Table 7", PAPER_TABLE7)):
        for alpha, resolution, accuracy, mult_adds, params in entries:
            ours = stats_for(alpha, "imagenet", resolution)
            rows.append({
                "table": table, "model": f"{alpha:g} MobileNet-{resolution}", "alpha": alpha, "resolution": resolution,
                "ImageNet top-1 % (paper)": accuracy,
                "mult-adds M (paper)": mult_adds, "mult-adds M (ours)": round(ours.mult_adds / 1e6, 1),
                "params M (paper)": params, "params M (ours)": round(ours.params / 1e6, 2),
            })
    return pd.DataFrame(rows)


OURS, PAPERS = "CIFAR-10 validation (ours)", "ImageNet top-1 (the paper)"


def accuracy_against_cost(models: list[tuple[str, ModelCard]]) -> pd.DataFrame:
    """Each CIFAR-10 model with a validation accuracy (name, card) beside the paper's ImageNet networks: accuracy
    against mult-adds and parameters, the picture MobileNet is about. Different tasks: compare the shapes. Models
    of other classes (a run on a folder of the host's) are left out: their accuracies measure other tasks."""
    rows = []
    for name, card in models:
        accuracy = card.val_acc
        if accuracy is None or card.classes != CIFAR10_CLASSES:
            continue
        stats = model_stats(card.alpha, resolution=card.resolution, stem=card.stem, num_classes=card.num_classes)
        rows.append({"model": name, "label": f"α {card.alpha:g}", "data": OURS, "alpha": card.alpha, "stem": card.stem,
                     "resolution": card.resolution, "accuracy": float(accuracy),
                     "mult-adds M": stats.mult_adds / 1e6, "params M": stats.params / 1e6})
    paper = dict.fromkeys(PAPER_TABLE6 + PAPER_TABLE7)  # α = 1 at 224 is in both tables
    for alpha, resolution, accuracy, mult_adds, params in paper:
        rows.append({"model": f"{alpha:g} MobileNet-{resolution}", "label": f"{alpha:g}/{resolution}", "data": PAPERS,
                     "alpha": alpha, "stem": "imagenet", "resolution": resolution, "accuracy": accuracy / 100,
                     "mult-adds M": float(mult_adds), "params M": params})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Latency:
    median_ms: float
    best_ms: float
    runs: int
    device: str  # with the thread count on the CPU
    engine: str  # engines.describe of what ran: "PyTorch, fp32", "ONNX Runtime, int8"


def _timed(run: Callable[[], object], budget_s: float, max_runs: int) -> list[float]:
    """ms per call of run (which returns once the device has finished), after a warm-up call, within about budget_s."""
    def once() -> float:
        start = time.perf_counter()
        run()
        return (time.perf_counter() - start) * 1000

    once()  # warm-up: allocator, kernel selection
    deadline = time.perf_counter() + budget_s
    times = [once()]
    while len(times) < max_runs and (len(times) < 3 or time.perf_counter() < deadline):
        times.append(once())
    return times


def _where(dev: torch.device, threads: int | None) -> str:
    """The device for people, with the thread count on the CPU (None: the runtime's default)."""
    if dev.type != "cpu":
        return device_name(dev)
    count = "default threads" if threads is None else f"{threads} thread{'' if threads == 1 else 's'}"
    return f"{device_name(dev)}, {count}"


@torch.inference_mode()
def measure_latency(alpha: float, stem: str, resolution: int, device: str = "auto", budget_s: float = 2.0,
                    max_runs: int = 100) -> Latency:
    """Time one image through a random-weight network (BatchNorm folded, as served) within about budget_s.

    Always PyTorch: the explorer offers shapes no trained model has, and an int8 twin of a random network
    would first need quantizing, 3 to 23 s of calibration on a 2-core CPU for each shape asked."""
    dev = pick_device(device)
    model = fold_batchnorm(MobileNetV1(NUM_CLASSES[stem], alpha, stem)).to(dev, memory_format=torch.channels_last)
    x = torch.randn(1, 3, resolution, resolution, device=dev).contiguous(memory_format=torch.channels_last)

    def run() -> None:
        model(x)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    times = _timed(run, budget_s, max_runs)
    threads = torch.get_num_threads()  # the app's Classifier may have set it to 1 for the whole process
    return Latency(statistics.median(times), min(times), len(times), _where(dev, threads), describe("torch"))


def classifier_latency(clf: Classifier, budget_s: float = 0.5, max_runs: int = 100) -> Latency:
    """Time one image as the classifier answers it, on its engine: normalisation, the card's test-time
    augmentation views, the network and softmax (decoding aside, which depends on the file)."""
    side = clf.card.resolution
    image = torch.zeros(1, 3, side, side, dtype=torch.uint8)  # the time does not depend on the pixels
    times = _timed(lambda: clf.probabilities(image), budget_s, max_runs)  # returns on the CPU: the device is done
    return Latency(statistics.median(times), min(times), len(times), _where(clf.device, clf.threads),
                   describe(clf.engine))


def with_latency(points: pd.DataFrame, classifiers: Mapping[str, Classifier], budget_s: float = 0.5) -> pd.DataFrame:
    """Our models' rows of accuracy_against_cost that have a classifier (by model name), each timed as it answers
    (batch of 1) on its engine; the label names the precision it ran in, and engine and device are columns."""
    ours = points[(points["data"] == OURS) & points["model"].isin(list(classifiers))].copy()
    timed = [classifier_latency(classifiers[name], budget_s) for name in ours["model"]]
    ours["latency ms"] = [t.median_ms for t in timed]
    ours["engine"] = [t.engine for t in timed]
    ours["device"] = [t.device for t in timed]
    ours["label"] = [f"{label} {precision(classifiers[name].engine)}"
                     for label, name in zip(ours["label"], ours["model"])]
    return ours


def latency_caption(timed: pd.DataFrame) -> str:
    """Where and on what with_latency's rows were timed, for the caption under their chart."""
    by_engine: dict[str, list[str]] = {}
    for name, engine in zip(timed["model"], timed["engine"]):
        by_engine.setdefault(engine, []).append(name)
    engines = "; ".join(f"{', '.join(names)} on {engine}" for engine, names in by_engine.items())
    return (f"Timed here on {', '.join(dict.fromkeys(timed['device']))}: one image per call as each model answers "
            f"on the engine the sidebar chose (its test-time augmentation included, decoding aside): {engines}. "
            f"Accuracy is each card's fp32 validation accuracy (its validating twin's for a model trained on all "
            f"the images); an int8 model is shipped only within "
            f"{MAX_INT8_LOSS * 100:.1f} points of it.")
