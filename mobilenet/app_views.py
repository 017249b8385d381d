"""What the pages show alike: the app's introduction, notes on links, the server's folders as visitors may see
them, a report's charts, the live views' look, and the server's heap."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Iterable

import streamlit as st
import torch

from . import charts, settings
from .checkpoint import CheckpointError
from .data import DataError
from .display import quoted
from .evaluate import Evaluation

INTRO = (
    "**MobileNet v1 Studio**: MobileNet v1 (Howard et al. 2017), the network built from depthwise separable "
    "convolutions, on CIFAR-10: learn how it is built, try it on your images, and train your own. "
    "**Model explorer** (this page): its size and cost for any width α, resolution and stem, beside the paper's "
    "figures. **Inference**: classify your images, with a heatmap of what the network looked at. "
    "**Evaluation**: score a model on labelled images. **Training**: train a model and watch it learn. "
    "**Runs**: any run's report and curves, several runs' curves side by side, and its metrics as CSV."
)


def link_note(key: str, what: str, names: list[str], default: str | None) -> str | None:
    """A note when the page's link names a `what` (model, run) this server does not have: the page then shows
    `default`. Read before the selector is drawn, which drops such a value from the address."""
    asked = st.query_params.get(key)
    if not asked or asked in names:  # ?model= with nothing after it names none, as the explorer reads its values
        return None
    instead = f"showing {default}" if default else f"there is no {what} here yet"
    return f"The link's {what} {quoted(asked)} is not on this server: {instead}."


def keep_choices(keys: Iterable[str]) -> None:
    """The entry script's part, on every page: the pages' choices (their widget keys) become the session's own
    values, which outlive a run that does not draw their widgets (Streamlit forgets those when the visitor opens
    another page)."""
    state = st.session_state
    for key in keys:
        if key in state:
            state[key] = state[key]


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


def show_problem(error: DataError | CheckpointError) -> None:
    """A data or checkpoint problem as an error box, in the words meant for the app."""
    st.error(for_visitors(error.in_app if isinstance(error, DataError) else str(error)))


def show_report_charts(result: Evaluation) -> None:
    """Accuracy per class and the confusion matrix, side by side (stacked on a phone)."""
    per_class, confusion = st.columns(2)
    per_class.altair_chart(charts.per_class(result), width="stretch")
    confusion.altair_chart(charts.confusion(result), width="stretch")


# ---- the server, once ----------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def torch_on_one_thread() -> None:
    """Once per server, before any page's torch work: one intra-op thread, as Classifier.load sets on a CPU.

    Many visitors' small tensors gain nothing from splitting across cores that their page runs share, and a
    thread that ran torch keeps the count it started with: set later, the first visitors' pages (the explorer's
    latency among them) would run, and be timed, on every core and the rest on one.
    """
    torch.set_num_threads(1)



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
