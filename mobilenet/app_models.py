"""The model a visitor chose and what answers for it: the models here, a Classifier on the engine the sidebar chose
(int8 or fp32), the explorer's tables, and evaluations.

Resources cached with st.cache_resource are shared by every session and never mutated after they are
built: a Classifier (thread-safe, see mobilenet.infer) and evaluation results (frozen, tensors only read).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

from . import catalog, checkpoint, data, engines, evalsets, explore, settings
from .app_views import for_visitors, link_note, visible_folder
from .catalog import Catalog, ModelEntry, Version
from .data import DataError, ImageSet
from .device import device_name, pick_device
from .evalsets import EvalSource
from .evaluate import Evaluation, score
from .infer import Classifier
from .memo import Memo
from .checkpoint import CheckpointError, ModelCard
from .shipping import int8_model

if TYPE_CHECKING:
    from .onnx_export import Quantization  # imports onnx, which a torch-only install lacks

MODEL_KEY = "model"  # the sidebar's model choice in st.session_state and in the URL


@st.cache_resource(show_spinner=False)
def device_label() -> str:
    return device_name(pick_device())


def models() -> Catalog:
    return catalog.list_models()


def selected_model() -> ModelEntry | None:
    return models().get(st.session_state.get(MODEL_KEY))


def no_model_message() -> str:
    """How to get a model, naming the folders this server is configured with, as visitors may see them."""
    return (f"No model yet. Train one (`python -m mobilenet train --out {visible_folder(settings.runs_dir())}/NAME`; "
            f"a finished run appears here by itself) or copy checkpoint files into "
            f"`{visible_folder(settings.checkpoint_dir())}/`.")


def require_model() -> ModelEntry:
    """The model chosen in the sidebar; without one, a message saying how to get one, and the page stops."""
    entry = selected_model()
    if entry is None:
        st.info(no_model_message())
        st.stop()
    return entry


def model_link_note(catalog: Catalog) -> str | None:
    return link_note(MODEL_KEY, "model", catalog.keys, catalog.default.key if catalog.default else None)


def model_in_use(entry: ModelEntry | None) -> str:
    return no_model_message() if entry is None else f"Model in use: **{entry.key}** ({entry.describe()})."


@st.cache_data(max_entries=16, show_spinner=False)
def _accuracy_points(versions: tuple[tuple[str, Version], ...]) -> pd.DataFrame:  # versions: cache key only
    return explore.accuracy_against_cost([(m.key, m.card) for m in models().models])


def accuracy_points() -> pd.DataFrame:
    """Every model here with a validation accuracy, and the paper's networks: accuracy against cost."""
    return _accuracy_points(tuple((m.key, m.version) for m in models().models))


@st.cache_data(max_entries=16, show_spinner="Timing each model on this machine…")
def _latency_points(points: pd.DataFrame, chosen: tuple[tuple[str, Path, Version, str], ...]) -> pd.DataFrame:
    classifiers: dict[str, Classifier] = {}
    for key, path, version, engine in chosen:
        try:
            classifiers[key] = _serving(path, version, engine)[0]
        except CheckpointError:
            continue
    return explore.with_latency(points, classifiers)


def latency_points(points: pd.DataFrame) -> pd.DataFrame:
    """Our models among points, each timed as it answers here on the engine the sidebar chose for it (int8 on the
    CPU where its file is there), once per set of model versions and engines: the models load only to be timed. A
    model whose engine refuses to load is left out (its pages say why)."""
    shown = set(points["model"])
    return _latency_points(points, tuple((entry.key, entry.path, entry.version, engine_for(entry))
                                         for entry in models().models if entry.key in shown))


# A few models on their engines: each holds its weights (up to ~15 MB at α = 1) and its caches of class maps.
@st.cache_resource(max_entries=8, show_spinner="Loading the model…")
def _classifier(path: Path, version: Version, engine: str) -> Classifier:  # version: cache key only
    return Classifier.load(path, device="auto", engine=engine)


def classifier(entry: ModelEntry) -> Classifier:
    """The model on the engine the sidebar chose, or on PyTorch when that engine cannot serve it here (an int8 file
    ONNX Runtime refuses, made from other weights, …), which the page says; a model file that is refused stops the
    page with the reason."""
    try:
        clf, why = _serving(entry.path, entry.version, _fastest_engine(entry, st.session_state.get(PRECISION_KEY)))
    except CheckpointError as e:
        st.error(for_visitors(str(e)))
        st.stop()
    if why:
        st.warning(f"{for_visitors(why)}. PyTorch answers instead.", icon=":material/warning:")
    return clf


def _serving(path: Path, version: Version, engine: str) -> tuple[Classifier, str | None]:
    """The model on an engine, or on PyTorch when that engine cannot serve it here: (classifier, why not)."""
    if engine != "torch" and _refusal(path, version, engine) is None:
        try:
            return _classifier(path, version, engine), None
        except CheckpointError as e:
            _refuse(path, version, engine, str(e))
    return _classifier(path, version, "torch"), _refusal(path, version, engine)


# Engines that could not serve a model version here, and why: tried once per server, not on every page run of every
# visitor (a failed load is not cached by st.cache_resource); the sidebar then names the engine that answers.
_refusals: Memo[str] = Memo(size=64)


def _refusal(path: Path, version: Version, engine: str) -> str | None:
    return _refusals.get((path, version, engine))


def _refuse(path: Path, version: Version, engine: str, why: str) -> None:
    _refusals.put((path, version, engine), why)


# ---- engines ------------------------------------------------------------------------------------

PRECISION_KEY = "precision"  # the sidebar's choice, where the model has an int8 version: "int8" or "fp32"
PRECISIONS = ("int8", "fp32")


def has_int8(entry: ModelEntry) -> bool:
    """Whether the model answers in int8 here (its int8 file, checked, onnxruntime and the CPU), so fp32 is an
    option."""
    return engine_for(entry, "int8") == "int8" and _quantization(entry.path, entry.version) is not None


def _fastest_engine(entry: ModelEntry, precision: str | None) -> str:
    if precision == "fp32":
        return engines.fp32_choice(entry.path, pick_device())
    return engines.choose("auto", entry.path, pick_device())


def engine_for(entry: ModelEntry, precision: str | None = None) -> str:
    """The engine that answers for the model: the fastest it has here, or an fp32 one when asked for; PyTorch
    where that engine was tried and could not serve the model."""
    wanted = _fastest_engine(entry, precision or st.session_state.get(PRECISION_KEY))
    return "torch" if _refusal(entry.path, entry.version, wanted) else wanted


@st.cache_resource(max_entries=16, show_spinner=False)
def _quantization(path: Path, version: Version) -> Quantization | None:  # version: cache key only
    try:
        model = int8_model(path, checkpoint.read(path))
    except CheckpointError as e:
        _refuse(path, version, "int8", str(e))  # then no page offers int8 for it; loading it would say the same
        return None
    return model.quantization if model else None


def engine_caption(entry: ModelEntry) -> str:
    """For the sidebar: which engine and precision answer, and what int8 costs in accuracy."""
    q = _quantization(entry.path, entry.version) if has_int8(entry) else None
    text = f":material/speed: Answers with {engines.describe(engine_for(entry))}"
    if q is not None:
        where = "Validation accuracy" if q.held_out else f"On {q.images:,} of the images it trained on"
        text += f". {where}: int8 {q.int8_accuracy:.2%}, fp32 {q.fp32_accuracy:.2%}"
    return text


def engine_note(entry: ModelEntry) -> str | None:
    """The one-line note that the faster engine needs onnxruntime, when it is what is missing."""
    return engines.fallback_note(entry.path, pick_device())


# ---- explorer -----------------------------------------------------------------------------------


@st.cache_data(max_entries=64, show_spinner="Counting parameters and mult-adds over α…")
def alpha_sweep(stem: str, resolution: int) -> pd.DataFrame:
    return explore.alpha_sweep(stem, resolution)


@st.cache_data(show_spinner=False)
def paper_comparison() -> pd.DataFrame:
    return explore.paper_comparison()


# ---- evaluation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationRun:
    result: Evaluation
    engine: str
    seconds: float  # for the forward passes, the images already decoded


# One evaluation at a time per server: each takes all of a small box's CPU (or GPU memory for 4,096 views a pass)
# for seconds to a minute; visitors who ask for others meanwhile wait their turn instead of dividing it.
_evaluating = threading.Lock()


# The decoded images (30 MB per 10,000 at 32×32) are kept for the last two evaluations, shared by their engines;
# results (a few hundred KB) for the last eight. Images evicted meanwhile come back from the data cache on disk.
@st.cache_resource(max_entries=2, show_spinner=False)
def _evaluation_images(path: Path, version: Version, source: EvalSource, data_version: str | None,
                       root: Path, limit: int | None, _card: ModelCard) -> ImageSet:  # the card is path's
    decoded = source, data_version, root, limit
    # The first decode of a version follows the click that took its fingerprint; a later one (after eviction) may
    # be for a result shown from data since replaced, so that one looks at the data again.
    if _decoded.get(decoded) and data.fingerprint(source.source) != data_version:
        raise DataError(f"{source.label} changed since it was evaluated: evaluate it again")
    images = evalsets.load(_card, source, root, limit=limit)
    _decoded.put(decoded, True)
    return images


_decoded: Memo[bool] = Memo(size=64)


@st.cache_resource(max_entries=8, show_spinner=False)
def _evaluation(path: Path, version: Version, source: EvalSource, data_version: str | None, root: Path,
                limit: int | None, engine: str) -> EvaluationRun:  # version, data_version: cache key only
    clf = _serving(path, version, engine)[0]
    with _evaluating:
        images = _evaluation_images(path, version, source, data_version, root, limit, clf.card)
        start = time.perf_counter()
        probs = clf.probabilities(images.images)
        return EvaluationRun(score(probs, images), clf.engine, time.perf_counter() - start)


# The Evaluation page's choices, by widget key: kept when the visitor opens another page (app_views.keep_choices).
EVALUATION_SOURCE, EVALUATION_LIMIT, EVALUATION_COMPARE = "evaluation_source", "evaluation_limit", "evaluation_compare"
EVALUATION_CHOICES = (EVALUATION_SOURCE, EVALUATION_LIMIT, EVALUATION_COMPARE)


def forget_unlisted_source(sources: list[EvalSource]) -> None:
    """The Data choice made earlier, unless its source has gone from the list (the first is then chosen)."""
    if st.session_state.get(EVALUATION_SOURCE) not in sources:
        st.session_state.pop(EVALUATION_SOURCE, None)


def data_version(source: EvalSource) -> str | None:
    """The source's images as they are now (a folder or .zip replaced in the data root, or images overwritten in
    place, are evaluated afresh): taken when a visitor asks for an evaluation, not on each page run (for a folder
    it looks at every image)."""
    return data.fingerprint(source.source, thorough=True)


def evaluation_run(entry: ModelEntry, source: EvalSource, limit: int | None, version: str | None,
                   precision: str | None = None) -> EvaluationRun:
    """A model's results on a source at a data version, on the sidebar's engine; computed once per model version,
    data version and engine, shared."""
    return _evaluation(entry.path, entry.version, source, version, settings.data_root(), limit,
                       engine_for(entry, precision))


def evaluation(entry: ModelEntry, source: EvalSource, limit: int | None, version: str | None
               ) -> tuple[Evaluation, ImageSet]:
    run = evaluation_run(entry, source, limit, version)
    with _evaluating:  # a decode again (the images evicted, the result kept) takes its turn as evaluations do
        images = _evaluation_images(entry.path, entry.version, source, version, settings.data_root(), limit,
                                    entry.card)
    if len(images) != run.result.n:  # decoded again from files changed in place since (their folders' times kept)
        raise DataError(f"{source.label} changed since it was evaluated: evaluate it again")
    return run.result, images


def precision_comparison(entry: ModelEntry, source: EvalSource, limit: int | None, version: str | None
                         ) -> tuple[pd.DataFrame, int]:
    """int8 beside fp32 on the same images: accuracy and images per second of each, and how many answers differ."""
    runs = [evaluation_run(entry, source, limit, version, precision) for precision in PRECISIONS]
    if runs[0].engine != "int8":
        raise engines.EngineError(f"the int8 model of {entry.key} could not run here, so there is no int8 to compare "
                                  f"with: {engines.describe(runs[0].engine)} answered instead")
    table = pd.DataFrame([{"engine": engines.describe(run.engine), "accuracy": f"{run.result.accuracy:.2%}",
                           "images per second": round(run.result.n / max(run.seconds, 1e-9))} for run in runs])
    differ = int((runs[0].result.probs.argmax(1) != runs[1].result.probs.argmax(1)).sum())
    return table, differ
