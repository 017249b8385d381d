"""The Training and Runs pages' view of the runs folder: the job and the runs, read once per refresh for every
watcher; starting, deleting and describing runs; a run's curves and metrics, built once per change of its files."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from . import catalog, charts, checkpoint, data, evalsets, settings
from .app_models import models
from .app_views import for_visitors, link_note
from .checkpoint import CheckpointError
from .config import OVERRIDES, RECIPES, setting_words
from .data import DataError
from .display import format_duration, quoted
from .evalsets import TrainingSource
from .evaluate import Evaluation
from .jobs import Job, JobManager, RunInfo
from .runs import MetricsRow, RunFolder, RunState, RunStatus, metrics_csv, thinned

# ---- training -----------------------------------------------------------------------------------

# The training form's bounds (a job's cost on a shared server); α's are the explorer's.
MAX_EPOCHS = 200
MAX_BATCH_SIZE = 2048
BETA_MIN, BETA_MAX, BETA_STEP = 0.5, 2.0, 0.125
REFRESH_S = 2.0  # the live view's refresh while a job runs: see BENCHMARKS.md, "Watching, uploading and training"
IDLE_REFRESH_S = 10.0  # without a job, only to notice one that another visitor starts
CHART_STEPS = 400  # step rows drawn at most: the curves look the same, and a refresh stays small
log = logging.getLogger(__name__)


def job_manager() -> JobManager:
    return JobManager(settings.runs_dir())


@dataclass(frozen=True)
class RunsSnapshot:
    job: Job | None
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


def finished_names(snapshot: RunsSnapshot) -> frozenset[str]:
    """The runs a snapshot shows finished: when they change, the model selector the page was drawn with is out
    of date, and the whole app reruns to list them."""
    return frozenset(r.name for r in snapshot.runs if r.state is RunState.FINISHED)


def in_model_selector(run: RunInfo) -> bool:
    """Whether a run is among the models (a finished run whose best.pt loads)."""
    return models().get(f"{catalog.RUN_PREFIX}{run.name}") is not None


def job_progress(run: RunInfo, rows: list[MetricsRow], status: RunStatus | None, stopping: bool
                 ) -> tuple[float, str]:
    """The running job's progress bar (fraction done, text): "starting…" until it trains (a resumed run too,
    whose old rows are there from the start), "stopping…" from Stop until it has saved and ended. status: the
    run's, read with its rows (the runs snapshot's may be seconds old)."""
    last = rows[-1] if rows else None
    done = min(1.0, last.epochs_done(run.epochs) / max(run.epochs, 1)) if last else 0.0
    if stopping:
        return done, f"{run.name}: stopping… it saves its state, then ends"
    if last is None or status is None or status.state not in (RunState.RUNNING, RunState.FINISHED):
        return done, f"{run.name}: starting… loading data"
    return done, (f"{run.name}: {done * run.epochs:.1f}/{run.epochs} epochs, {last.img_per_s:.0f} img/s, "
                  f"ETA {format_duration(last.eta_s)}")  # the runs table's count too: epochs done


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
    """A finished run's results, or None when it has not finished (a run killed while finishing may have written its
    report), its report.json is missing or malformed, or it validated nothing; read once per version of the file for
    all visitors."""
    if run.state is not RunState.FINISHED:
        return None
    return _report(run.folder.report, _identity(run.folder.report))


@st.cache_resource(max_entries=64, show_spinner=False)
def _report(path: Path, identity: tuple[int, int, int]) -> Evaluation | None:  # identity: cache key only
    try:
        report = RunFolder(path.parent).read_report()
    except ValueError as e:
        log.warning("%s", e)
        return None
    return report.validation if report else None


@st.cache_data(max_entries=64, show_spinner=False)
def _report_charts(path: Path, identity: tuple[int, int, int]) -> list[dict]:  # identity: cache key only
    result = _report(path, identity)
    return [charts.per_class(result).to_dict(), charts.confusion(result).to_dict()] if result else []


def show_run_report_charts(run: RunInfo) -> None:
    """A finished run's accuracy per class and confusion matrix, side by side (stacked on a phone), built once per
    version of its report for all visitors (every watcher's refresh drew them anew)."""
    specs = _report_charts(run.folder.report, _identity(run.folder.report))
    for column, spec in zip(st.columns(len(specs)) if specs else (), specs):
        column.vega_lite_chart(spec, width="stretch")


def recipe_overrides(recipe: str, **chosen) -> dict:
    """The training form's values (epochs, batch_size, lr) as TrainConfig overrides: None where a value is the
    recipe's own, so that a run records only what the visitor changed."""
    own = RECIPES[recipe]
    return {name: None if value == getattr(own, name) else value for name, value in chosen.items()}


def overrides_note(recipe: str, overrides: dict) -> str | None:
    """"overrides: epochs 30 (recipe: 20), …", or None when every value is the recipe's."""
    own = RECIPES[recipe]
    changed = [f"{setting_words(name, value)} (recipe: {getattr(own, name):g})"
               for name, value in overrides.items() if value is not None]
    return "overrides: " + ", ".join(changed) if changed else None


def data_problem(source: str) -> str | None:
    """Why a training source cannot be used, said for people, or None. CIFAR-10 is checked by the job itself."""
    if not source:
        return "Enter the path of an image folder or .zip on the server."
    try:
        data.check_trainable(source)
    except (DataError, OSError) as e:
        log.info("training data %s refused: %s", source, e)
        return for_visitors(str(e))
    return None


def show_skipped(snapshot: RunsSnapshot) -> None:
    for name in snapshot.skipped:
        st.warning(f"{name} is left out: it holds no readable run.")


def show_failure(run: RunInfo) -> None:
    if run.error:
        st.error(f"{run.name} failed: {failure_reason(run)}")


def failure_reason(run: RunInfo) -> str:
    """Why a run failed, as visitors may read it: the configured folders by their names, and a data path an admin
    typed outside them by its last part only."""
    if not run.error:
        return ""
    reason = for_visitors(run.error)
    data = run.config.data
    return reason.replace(data, Path(data).name) if Path(data).is_absolute() else reason


def runs_table(runs: list[RunInfo] | tuple[RunInfo, ...]) -> pd.DataFrame:
    """Past runs for people, newest first; a failed one says why."""
    return pd.DataFrame([{
        "run": r.name, "state": r.state.value, "epochs": f"{r.epoch}/{r.epochs}",
        "best validation accuracy": r.best_val_acc, "α": r.config.alpha, "recipe": r.config.recipe,
        "data": Path(r.config.data).name or r.config.data,
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
    """Notes on the link's run and its runs to overlay that this server does not have (the selectors drop them)."""
    notes = [link_note(RUN_KEY, "run", names, names[0] if names else None)]
    unknown = [name for name in st.query_params.get_all(COMPARE_KEY) if name not in names]
    if unknown:
        notes.append(f"Left out of the overlay, not on this server: {', '.join(map(quoted, unknown))}.")
    return " ".join(note for note in notes if note) or None


def run_settings(run: RunInfo) -> str:
    """A run's recipe, α, β, stem and epochs, the recipe's values it overrode and its teachers, for people."""
    cfg = run.config
    said = f"recipe {cfg.recipe}, α = {cfg.alpha:g}, β = {cfg.beta:g}, {run.epochs} epochs"
    if cfg.stem != "cifar":
        said += f", the {cfg.stem} stem"
    changed = [setting_words(name, value) for name in OVERRIDES if (value := getattr(cfg, name)) is not None]
    if cfg.teachers:
        names = ", ".join(Path(t).name for t in cfg.teachers)
        changed.append(f"distilled from {names} (weight {cfg.distill:g})")
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
