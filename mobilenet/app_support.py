"""What the Streamlit pages share: cached resources, the selected model, the session's uploads, evaluation requests.

Resources cached with st.cache_resource are shared by every session and never mutated after they are
built: a Classifier (thread-safe, see mobilenet.infer) and evaluation results (frozen, tensors only read).
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from . import catalog, charts, checkpoint, data, engines, evalsets, explore, ood, settings
from .catalog import Catalog, ModelEntry
from .data import IMAGE_SUFFIXES, DataError, ImageSet
from .device import device_name, pick_device
from .display import format_duration
from .evalsets import EvalSource, TrainingSource
from .evaluate import Evaluation, score
from .infer import Classifier
from .checkpoint import CheckpointError
from .answers import MAX_IMAGES, Upload
from .jobs import JobManager, RunInfo
from .shipping import int8_model
from .runs import MetricsRow, RunFolder, RunState, metrics_csv, thinned
from .config import OVERRIDES, RECIPES, TrainConfig

if TYPE_CHECKING:
    from .onnx_export import Quantization  # imports onnx, which a torch-only install lacks

MODEL_KEY = "model"  # the sidebar's model choice in st.session_state and in the URL
INTRO = (
    "**MobileNet v1 Studio**: MobileNet v1 (Howard et al. 2017), the network built from depthwise separable "
    "convolutions, on CIFAR-10: learn how it is built, try it on your images, and train your own. "
    "**Model explorer** (this page): its size and cost for any width α, resolution and stem, beside the paper's "
    "figures. **Inference**: classify your images, with a heatmap of what the network looked at. "
    "**Evaluation**: score a model on labelled images. **Training**: train a model and watch it learn. "
    "**Runs**: any run's report and curves, several runs' curves side by side, and its metrics as CSV."
)
UPLOAD_TYPES = sorted(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)
UPLOADER_KEY = "uploader"
# What the uploads a session keeps may weigh together: a dozen phone photos, not 16 files at the 25 MB limit.
MAX_KEPT_BYTES = 64 * 2**20


# ---- shared resources ---------------------------------------------------------------------------


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


def link_note(key: str, what: str, names: list[str], default: str | None) -> str | None:
    """A note when the page's link names a `what` (model, run) this server does not have: the page then shows
    `default`. Read before the selector is drawn, which drops such a value from the address."""
    asked = st.query_params.get(key)
    if asked is None or asked in names:
        return None
    instead = f"showing {default}" if default else f"there is no {what} here yet"
    return f"The link's {what} {asked!r} is not on this server: {instead}."


def model_link_note(catalog: Catalog) -> str | None:
    return link_note(MODEL_KEY, "model", catalog.keys, catalog.default.key if catalog.default else None)


def model_in_use(entry: ModelEntry | None) -> str:
    return no_model_message() if entry is None else f"Model in use: **{entry.key}** ({entry.describe()})."


@st.cache_data(max_entries=16, show_spinner=False)
def _accuracy_points(versions: tuple[tuple[str, tuple[int, int]], ...]) -> pd.DataFrame:  # versions: cache key only
    return explore.accuracy_against_cost([(m.key, m.card) for m in models().models])


def accuracy_points() -> pd.DataFrame:
    """Every model here with a validation accuracy, and the paper's networks: accuracy against cost."""
    return _accuracy_points(tuple((m.key, m.version) for m in models().models))


@st.cache_data(max_entries=16, show_spinner="Timing each model on this machine…")
def _latency_points(points: pd.DataFrame, chosen: tuple[tuple[str, tuple[int, int], str], ...],
                    _classifiers: dict[str, Classifier]) -> pd.DataFrame:  # chosen: cache key only
    return explore.with_latency(points, _classifiers)


def latency_points(points: pd.DataFrame) -> pd.DataFrame:
    """Our models among points, each timed as it answers here on the engine the sidebar chose for it (int8 on the
    CPU where its file is there); a model whose engine refuses to load is left out (its pages say why)."""
    classifiers: dict[str, Classifier] = {}
    for entry in models().models:
        if entry.key in set(points["model"]):
            try:
                classifiers[entry.key] = _classifier(entry.path, entry.version, engine_for(entry))
            except CheckpointError:
                continue
    chosen = tuple((entry.key, entry.version, classifiers[entry.key].engine) for entry in models().models
                   if entry.key in classifiers)
    return _latency_points(points, chosen, classifiers)


@st.cache_resource(max_entries=6, show_spinner="Loading the model…")
def _classifier(path: Path, version: tuple[int, int], engine: str) -> Classifier:  # version: cache key only
    return Classifier.load(path, device="auto", engine=engine)


def classifier(entry: ModelEntry) -> Classifier:
    """The model on the engine the sidebar chose; a model file that is refused stops the page with the reason."""
    try:
        return _classifier(entry.path, entry.version, engine_for(entry))
    except CheckpointError as e:
        st.error(str(e))
        st.stop()


# ---- engines ------------------------------------------------------------------------------------

PRECISION_KEY = "precision"  # the sidebar's choice, where the model has an int8 version: "int8" or "fp32"
PRECISIONS = ("int8", "fp32")


def has_int8(entry: ModelEntry) -> bool:
    """Whether the model answers in int8 here (its int8 file, onnxruntime and the CPU), so fp32 is an option."""
    return engines.choose("auto", entry.path, pick_device()) == "int8"


def engine_for(entry: ModelEntry, precision: str | None = None) -> str:
    """The engine that answers for the model: the fastest it has here, or an fp32 one when asked for."""
    precision = precision or st.session_state.get(PRECISION_KEY, "int8")
    if precision == "fp32":
        return engines.fp32_choice(entry.path, pick_device())
    return engines.choose("auto", entry.path, pick_device())


@st.cache_resource(max_entries=16, show_spinner=False)
def _quantization(path: Path, version: tuple[int, int]) -> Quantization | None:  # version: cache key only
    try:
        model = int8_model(path, checkpoint.read(path))
    except CheckpointError:
        return None  # loading the int8 engine says why
    return model.quantization if model else None


def engine_caption(entry: ModelEntry) -> str:
    """For the sidebar: which engine and precision answer, and what int8 costs in accuracy."""
    text = f":material/speed: Answers with {engines.describe(engine_for(entry))}"
    q = _quantization(entry.path, entry.version) if has_int8(entry) else None
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


# ---- inference ----------------------------------------------------------------------------------


def keep_uploads(files: list, returning: bool, photo: object | None = None) -> tuple[list[Upload], list[str]]:
    """The uploader's first files, at most MAX_IMAGES of them and MAX_KEPT_BYTES together, remembered in the
    session, and the names of the ones beyond them.

    Streamlit forgets a page's uploader when the visitor opens another page, so on returning the images of the
    last visit stand in until replaced or removed. Files beyond the first are never read nor kept, and every file
    of the session but those and the camera's photo leaves the server's memory.
    """
    state = st.session_state
    kept, left_out = state.get("kept_uploads", []), state.get("left_out_uploads", [])
    held = _first_that_fit(files)
    if files:
        held_ids = [f.file_id for f in held]
        if held_ids != state.get("kept_file_ids"):
            kept = [Upload(f.name, f.getvalue()) for f in held]
            left_out = [f.name for f in files[len(held):]]
            state.kept_file_ids = held_ids
    elif not returning and state.get("uploader_had_files"):
        kept, left_out, state.kept_file_ids = [], [], None  # the visitor removed them
    state.kept_uploads, state.left_out_uploads, state.uploader_had_files = kept, left_out, bool(files)
    _keep_only_held_uploads([*held, *([photo] if photo else [])])
    return kept, left_out


def _first_that_fit(files: list) -> list:
    held, weight = [], 0
    for f in files[:MAX_IMAGES]:
        weight += f.size
        if weight > MAX_KEPT_BYTES:
            break
        held.append(f)
    return held


def left_out_note(left_out: list[str]) -> str:
    return (f"At most {MAX_IMAGES} uploaded images, {MAX_KEPT_BYTES / 2**20:.0f} MB together, are kept and "
            f"classified; left out: {', '.join(left_out)}.")


def forget_uploads() -> None:
    """Forget the images kept from an earlier visit (the visitor cleared them)."""
    state = st.session_state
    state.kept_uploads, state.left_out_uploads, state.kept_file_ids = [], [], None


def drop_files_no_widget_holds(manager: object, session_id: str, held: set[str]) -> int:
    """Remove a session's uploaded files that no widget holds any more; returns how many went.

    Streamlit keeps every file a session uploads until the browser sends a delete or the session ends. A client
    that never deletes (a script; a page that lost the delete) could then fill the server's memory with one long
    session (the load benchmark grew it by 0.9 MB per upload). Managers without per-session storage are left
    alone."""
    storage = getattr(manager, "file_storage", {}).get(session_id, {})
    gone = [file_id for file_id in list(storage) if file_id not in held]
    for file_id in gone:
        manager.remove_file(session_id, file_id)
    return len(gone)


def _keep_only_held_uploads(held: list) -> None:
    """On the page with the session's only upload widgets, given the files they hold: drop the session's others."""
    ctx = get_script_run_ctx()
    if ctx is None or ctx.uploaded_file_mgr is None:
        return
    drop_files_no_widget_holds(ctx.uploaded_file_mgr, ctx.session_id, {f.file_id for f in held})


def ood_threshold(entry: ModelEntry) -> float | None:
    return ood.threshold(entry.path)


# ---- evaluation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationRun:
    result: Evaluation
    images: ImageSet
    engine: str
    seconds: float  # for the forward passes, the images already decoded


@st.cache_resource(max_entries=8, show_spinner=False)
def _evaluation(path: Path, version: tuple[int, int], source: EvalSource, root: Path, limit: int | None,
                engine: str) -> EvaluationRun:
    clf = _classifier(path, version, engine)
    images = evalsets.load(clf.card, source, root, limit=limit)
    start = time.perf_counter()
    probs = clf.probabilities(images.images)
    return EvaluationRun(score(probs, images), images, engine, time.perf_counter() - start)


def evaluation_run(entry: ModelEntry, source: EvalSource, limit: int | None, precision: str | None = None
                   ) -> EvaluationRun:
    """A model's results on a source, on the sidebar's engine; computed once per model version and engine, shared."""
    return _evaluation(entry.path, entry.version, source, settings.data_root(), limit, engine_for(entry, precision))


def evaluation(entry: ModelEntry, source: EvalSource, limit: int | None) -> tuple[Evaluation, ImageSet]:
    run = evaluation_run(entry, source, limit)
    return run.result, run.images


def precision_comparison(entry: ModelEntry, source: EvalSource, limit: int | None) -> tuple[pd.DataFrame, int]:
    """int8 beside fp32 on the same images: accuracy and images per second of each, and how many answers differ."""
    runs = [evaluation_run(entry, source, limit, precision) for precision in PRECISIONS]
    table = pd.DataFrame([{"engine": engines.describe(run.engine), "accuracy": f"{run.result.accuracy:.2%}",
                           "images per second": round(run.result.n / max(run.seconds, 1e-9))} for run in runs])
    differ = int((runs[0].result.probs.argmax(1) != runs[1].result.probs.argmax(1)).sum())
    return table, differ


# ---- the server's heap ---------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def freeze_startup_heap() -> None:
    """Once per server: move what the imports and first page built out of the garbage collector's sight.

    Streamlit collects garbage after every script run (runner.postScriptGC), fragment refreshes included;
    a full collection over the ~300,000 objects of torch, pandas, Altair and Streamlit took most of the
    server's time with a dozen watchers (BENCHMARKS.md). Frozen, they are never scanned again; what sessions
    make afterwards is still collected, so memory stays bounded.
    """
    gc.collect()
    gc.freeze()


# ---- the live views' look ------------------------------------------------------------------------

LIVE_VIEW_KEY = "live-view"  # a container whose key starts so redraws without fading: st.container(key=LIVE_VIEW_KEY)
# While a rerun has not yet redrawn an element, Streamlit marks it data-stale and fades it to a third (after 0.5 s,
# over 1 s); a view that refreshes itself every few seconds then looks stale, and its refresh flickers. Inside a live
# view nothing fades. The header's running indicator with its own Stop (which stops a visitor's page run, never the
# training) goes on a page with a live view; the header still shows a lost or restored connection.
STEADY_CSS = f"""<style>
[class*="st-key-{LIVE_VIEW_KEY}"] [data-stale="true"] {{ opacity: 1 !important; transition: none !important; }}
[data-testid="stApp"]:has([class*="st-key-{LIVE_VIEW_KEY}"])
  [data-testid="stStatusWidget"]:not(:has([data-testid="stConnectionStatus"])) {{ display: none; }}
</style>"""


def steady_live_views() -> None:
    """On every run of the app: the CSS above (style only, so it takes no room on the page)."""
    st.html(STEADY_CSS)


# ---- training -----------------------------------------------------------------------------------

MAX_EPOCHS = 200
REFRESH_S = 2.0  # the live view's refresh while a job runs: see BENCHMARKS.md, "Watching, uploading and training"
IDLE_REFRESH_S = 10.0  # without a job, only to notice one that another visitor starts
CHART_STEPS = 400  # step rows drawn at most: the curves look the same, and a refresh stays small
log = logging.getLogger(__name__)


def job_manager() -> JobManager:
    return JobManager(settings.runs_dir())


@dataclass(frozen=True)
class RunsSnapshot:
    job: dict | None
    runs: tuple[RunInfo, ...]
    skipped: tuple[str, ...]  # folders that hold no readable run


@st.cache_resource(ttl=REFRESH_S, max_entries=4, show_spinner=False)
def _runs_snapshot(runs: Path) -> RunsSnapshot:
    manager = JobManager(runs)
    job = manager.active()
    found, skipped = manager.scan()
    return RunsSnapshot(job, tuple(found), tuple(skipped))


def runs_snapshot() -> RunsSnapshot:
    """The job and the runs, read once per refresh for all watchers together, and again at once when the job
    starts or ends: a run's state must never lag its job (a stopped run offers Resume as soon as it stopped)."""
    runs = settings.runs_dir()
    snapshot = _runs_snapshot(runs)
    if snapshot.job != JobManager(runs).active():
        _runs_snapshot.clear()
        snapshot = _runs_snapshot(runs)
    return snapshot


def finished_runs(snapshot: RunsSnapshot) -> frozenset[str]:
    """The runs a snapshot shows finished: when they change, the model selector the page was drawn with is out
    of date, and the whole app reruns to list them."""
    return frozenset(r.name for r in snapshot.runs if r.state is RunState.FINISHED)


def in_model_selector(run: RunInfo) -> bool:
    """Whether a run is among the models (a finished run whose best.pt loads)."""
    return models().get(f"{catalog.RUN_PREFIX}{run.name}") is not None


def job_progress(run: RunInfo, rows: list[MetricsRow], stopping: bool) -> tuple[float, str]:
    """The running job's progress bar (fraction done, text): "starting…" until it trains (a resumed run too,
    whose old rows are there from the start), "stopping…" from Stop until it has saved and ended."""
    last = rows[-1] if rows else None
    done = min(1.0, last.epochs_done(run.epochs) / max(run.epochs, 1)) if last else 0.0
    if stopping:
        return done, f"{run.name}: stopping… it saves its state, then ends"
    if last is None or run.state is not RunState.RUNNING:
        return done, f"{run.name}: starting… loading data"
    return done, (f"{run.name}: epoch {last.epoch}/{run.epochs}, {last.img_per_s:.0f} img/s, "
                  f"ETA {format_duration(last.eta_s)}")


def _identity(path: Path) -> tuple[int, int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (0, 0, 0)
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


@st.cache_resource(max_entries=64, show_spinner=False)
def _loads(path: Path, identity: tuple[int, int, int]) -> bool:  # identity: part of the cache key only
    try:
        checkpoint.read(path)
    except CheckpointError as e:
        log.warning("not offering %s for download: %s", path, e)
        return False
    return True


def downloadable(path: Path) -> bool:
    """Whether a checkpoint loads, checked once per version of the file (a refused one is never served)."""
    return _loads(path, _identity(path))


def report_of(run: RunInfo) -> Evaluation | None:
    """A finished run's results, or None when its report.json is missing or malformed."""
    report = run.report
    try:
        return Evaluation.from_report(report) if report else None
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        log.warning("run %s has a malformed report.json: %s", run.path, e)
        return None


def show_report_charts(result: Evaluation) -> None:
    """Accuracy per class and the confusion matrix, side by side (stacked on a phone)."""
    per_class, confusion = st.columns(2)
    per_class.altair_chart(charts.per_class(result), width="stretch")
    confusion.altair_chart(charts.confusion(result), width="stretch")


def recipe_overrides(recipe: str, **chosen) -> dict:
    """The training form's values (epochs, batch_size, lr) as TrainConfig overrides: None where a value is the
    recipe's own, so that a run records only what the visitor changed."""
    own = RECIPES[recipe]
    return {name: None if value == getattr(own, name) else value for name, value in chosen.items()}


def overrides_note(recipe: str, overrides: dict) -> str | None:
    """"overrides: epochs 30 (recipe: 20), …", or None when every value is the recipe's."""
    own = RECIPES[recipe]
    changed = [f"{name.replace('_', ' ')} {value:g} (recipe: {getattr(own, name):g})"
               for name, value in overrides.items() if value is not None]
    return "overrides: " + ", ".join(changed) if changed else None


def new_run_config(**values) -> TrainConfig:
    """A training configuration with the app's data root (raises ValueError for bad settings)."""
    return TrainConfig(**values)


def visible_folder(path: Path) -> str:
    """A configured folder as a visitor may see it: relative to where the server runs, or else by its name alone,
    never as an absolute server path."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.name


def for_visitors(message: str) -> str:
    """A message with the server's configured folders named as visitors may see them (runs/…, data/…)."""
    folders = (settings.runs_dir(), settings.data_root(), settings.checkpoint_dir())
    named = sorted(((str(path.resolve()), visible_folder(path)) for path in folders), key=lambda p: -len(p[0]))
    for path, name in named:
        message = message.replace(path, name)
    return message


def data_problem(source: str) -> str | None:
    """Why a training source cannot be used, said for people, or None. CIFAR-10 is checked by the job itself."""
    if source == "cifar10":
        return None
    if not source:
        return "Enter the path of an image folder or .zip on the server."
    try:
        splits = data.available_splits(source)
    except (DataError, OSError) as e:
        log.info("training data %s refused: %s", source, e)
        return for_visitors(str(e))
    if "train" not in splits:
        return (f"{for_visitors(source)} has no training images: expected train/<class>/<image> (and optionally "
                f"test/<class>/<image>), or <class>/<image>.")
    return None


def failure_reason(run: RunInfo) -> str:
    """Why a run failed, as visitors may read it: the configured folders by their names, and a data path an admin
    typed outside them by its last part only."""
    if not run.error:
        return ""
    reason = for_visitors(run.error)
    data = str(run.config.get("data", ""))
    return reason.replace(data, Path(data).name) if Path(data).is_absolute() else reason


def runs_table(runs: list[RunInfo] | tuple[RunInfo, ...]) -> pd.DataFrame:
    """Past runs for people, newest first; a failed one says why."""
    return pd.DataFrame([{
        "run": r.name, "state": r.state.value, "epochs": f"{r.epoch}/{r.epochs}",
        "best validation accuracy": r.best_val_acc, "α": r.config.get("alpha"), "recipe": r.config.get("recipe"),
        "data": Path(str(r.config.get("data", ""))).name or r.config.get("data"),
        "why it failed": failure_reason(r) if r.state is RunState.FAILED else "",
    } for r in runs])


def delete_run(run: RunInfo) -> None:
    """Delete a run and its checkpoints (JobError says why not); every visitor's page lists the runs without it at
    once."""
    job_manager().delete(run.path)
    _runs_snapshot.clear()


OTHER_DATA = TrainingSource("Another folder or .zip on the server: type its path", "")


def training_data(admin: bool) -> list[TrainingSource]:
    """The training form's data choices: what the data root holds, and CIFAR-10. An admin may also type a path on the
    server; nobody else ever learns whether one exists."""
    return evalsets.sources_to_train_on() + ([OTHER_DATA] if admin else [])


# ---- runs ---------------------------------------------------------------------------------------

RUN_KEY = "run"  # the Runs page's run, in st.session_state and in the URL
COMPARE_KEY = "compare"  # the runs it overlays, in st.session_state and in the URL


def run_link_note(names: list[str]) -> str | None:
    return link_note(RUN_KEY, "run", names, names[0] if names else None)


def run_settings(run: RunInfo) -> str:
    """A run's recipe, α, β and epochs, and the recipe's values it overrode, for people."""
    cfg = run.config
    said = f"recipe {cfg.get('recipe')}, α = {cfg.get('alpha'):g}, β = {cfg.get('beta'):g}, {run.epochs} epochs"
    changed = [f"{name.replace('_', ' ')} {value:g}" if isinstance(value, (int, float)) else f"{name} {value}"
               for name in OVERRIDES if (value := cfg.get(name)) is not None]
    return said + ("; overrides: " + ", ".join(changed) if changed else "; no overrides")


@st.cache_data(max_entries=32, show_spinner=False)
def _run_curves(metrics: Path, identity: tuple[int, int, int], epochs: int) -> list[dict]:  # identity: cache key
    rows = thinned(RunFolder(metrics.parent).read_metrics(), CHART_STEPS)
    return [chart.to_dict() for chart in charts.run_curves(rows, epochs)] if rows else []


def run_curves(run: RunInfo) -> list[dict]:
    """A run's loss, accuracy and learning-rate specs (none before its first metrics), built once per change of its
    metrics file for all visitors."""
    return _run_curves(run.folder.metrics, _identity(run.folder.metrics), run.epochs)


def show_run_curves(run: RunInfo) -> bool:
    """Draw a run's curves side by side (stacked on a phone); False before its first metrics."""
    curves = run_curves(run)
    for column, spec in zip(st.columns(len(curves)) if curves else (), curves):
        column.vega_lite_chart(spec, width="stretch")
    return bool(curves)


@st.cache_data(max_entries=16, show_spinner=False)
def _overlay(metrics: tuple[tuple[str, Path, tuple[int, int, int], int], ...]) -> list[dict]:  # identity: cache key
    runs = {name: (thinned(RunFolder(path.parent).read_metrics(), CHART_STEPS), epochs)
            for name, path, _, epochs in metrics}
    return [chart.to_dict() for chart in charts.overlay(runs)]


def overlay(runs: list[RunInfo]) -> list[dict]:
    """The runs' curves on shared axes, built once per change of any of their metrics files."""
    return _overlay(tuple((r.name, r.folder.metrics, _identity(r.folder.metrics), r.epochs) for r in runs))


@st.cache_resource(max_entries=8, show_spinner=False)
def _metrics_csv(metrics: Path, identity: tuple[int, int, int]) -> str:  # identity: part of the cache key only
    return metrics_csv(RunFolder(metrics.parent).read_metrics())


def run_metrics_csv(run: RunInfo) -> str:
    """A run's metrics as CSV, built when a visitor asks and once per version of the file for all of them."""
    return _metrics_csv(run.folder.metrics, _identity(run.folder.metrics))
