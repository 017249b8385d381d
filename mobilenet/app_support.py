"""What the Streamlit pages share: cached resources, the selected model, inference and evaluation requests.

Resources cached with st.cache_resource are shared by every session and never mutated after they are
built: a Classifier (thread-safe, see mobilenet.infer) and evaluation results (frozen, tensors only read).
"""

from __future__ import annotations

import hmac
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st
from PIL import Image

from . import catalog, checkpoint, data, evalsets, explore, ood
from .catalog import Catalog, ModelEntry
from .data import IMAGE_SUFFIXES, DataError, ImageSet, Normalization
from .device import device_name, pick_device
from .evalsets import EvalSource
from .evaluate import Evaluation, evaluate
from .infer import Classifier, Prediction
from .intake import ImageError, decode
from .jobs import JobManager
from .stats import ModelStats
from .train import TrainConfig
from .visual import enlarge, heatmap_overlay

MODEL_KEY = "model"  # the sidebar's model choice in st.session_state and in the URL
NO_MODEL = (
    "No model yet. Train one (`python -m mobilenet train --out runs/NAME`; a finished run appears here by itself) "
    "or copy checkpoint files into `checkpoints/`."
)
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"
UPLOAD_TYPES = sorted(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)
MAX_IMAGES = 16  # per request: more are dropped with a warning
PHOTO_SIDE = 384  # display size of an uploaded photo
UPLOADER_KEY = "uploader"


# ---- shared resources ---------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def device_label() -> str:
    return device_name(pick_device())


def models() -> Catalog:
    return catalog.list_models()


def selected_model() -> ModelEntry | None:
    return models().get(st.session_state.get(MODEL_KEY))


def require_model() -> ModelEntry:
    """The model chosen in the sidebar; without one, a message saying how to get one, and the page stops."""
    entry = selected_model()
    if entry is None:
        st.info(NO_MODEL)
        st.stop()
    return entry


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def _classifier(path: Path, version: tuple[int, int]) -> Classifier:  # version: part of the cache key only
    return Classifier.load(path, device="auto")


def classifier(entry: ModelEntry) -> Classifier:
    return _classifier(entry.path, entry.version)


# ---- explorer -----------------------------------------------------------------------------------


@st.cache_data(max_entries=256, show_spinner=False)
def stats(alpha: float, stem: str, resolution: int) -> ModelStats:
    return explore.stats_for(alpha, stem, resolution)


@st.cache_data(max_entries=64, show_spinner="Counting parameters and mult-adds over α…")
def alpha_sweep(stem: str, resolution: int) -> pd.DataFrame:
    return explore.alpha_sweep(stem, resolution)


@st.cache_data(show_spinner=False)
def paper_comparison() -> pd.DataFrame:
    return explore.paper_comparison()


# ---- inference ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


@dataclass(frozen=True)
class Result:
    upload: Upload
    photo: Image.Image  # the decoded photo at display size
    prediction: Prediction
    foreign: bool | None  # below the model's out-of-distribution threshold; None: the model has no threshold

    @property
    def name(self) -> str:
        return self.upload.name


@dataclass(frozen=True)
class Failure:
    name: str
    message: str


def examples() -> list[Path]:
    return sorted(p for p in EXAMPLES_DIR.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def example_thumbnails(paths: list[Path], side: int = 96) -> list[Image.Image]:
    """The examples enlarged with visible pixels: at 32×32, a smooth enlargement would only show blur."""
    return [enlarge(decode(path), side) for path in paths]


def fetch(url: str) -> Upload:
    """An image from the web, through the project's guarded fetcher (raises ImageError)."""
    from .urlfetch import fetch_url

    return Upload(url.rsplit("/", 1)[-1][:80] or url[:80], fetch_url(url))


def keep_uploads(files: list, returning: bool) -> list[Upload]:
    """The uploader's files, remembered in the session: Streamlit forgets a page's uploader when the
    visitor opens another page, so on returning the images of the last visit stand in until replaced or removed.
    """
    state = st.session_state
    kept = state.get("kept_uploads", [])
    if files:
        kept = [Upload(f.name, f.getvalue()) for f in files]
    elif not returning and state.get("uploader_had_files"):
        kept = []  # the visitor removed them
    state.kept_uploads, state.uploader_had_files = kept, bool(files)
    return kept


def first_images(uploads: list[Upload]) -> tuple[list[Upload], str | None]:
    """At most MAX_IMAGES uploads, and a message naming the ones left out, if any."""
    if len(uploads) <= MAX_IMAGES:
        return uploads, None
    dropped = ", ".join(u.name for u in uploads[MAX_IMAGES:])
    return uploads[:MAX_IMAGES], f"Only the first {MAX_IMAGES} of {len(uploads)} images are classified; left out: {dropped}."


def _display_copy(image: Image.Image) -> Image.Image:
    scale = PHOTO_SIDE / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.BICUBIC)


def ood_threshold(entry: ModelEntry) -> float | None:
    return ood.threshold(entry.path)


def classify(clf: Classifier, uploads: list[Upload], topk: int = 5, threshold: float | None = None
             ) -> list[Result | Failure]:
    """Top-k for every upload, each timed on its own; an unusable one gives a Failure with a message for people."""
    results: list[Result | Failure] = []
    for upload in uploads:
        try:
            prediction = clf.predict(upload.data, topk)
        except ImageError as e:
            results.append(Failure(upload.name, str(e)))
            continue
        photo = _display_copy(decode(upload.data, draft_side=PHOTO_SIDE, limits=clf.limits))
        foreign = None if threshold is None else ood.looks_foreign(prediction.prob, threshold)
        results.append(Result(upload, photo, prediction, foreign))
    return results


def heatmap(clf: Classifier, result: Result, label: str, opacity: float) -> Image.Image | None:
    """The class activation map of `label` over the photo; None when nothing in the image speaks for it."""
    cam, _ = clf.gradcam(result.upload.data, clf.classes.index(label))
    return heatmap_overlay(result.photo, cam, opacity=opacity) if float(cam.max()) > 0 else None


def predictions_table(results: list[Result | Failure]) -> pd.DataFrame:
    """One row per image and class shown, or per refused image with its reason: what the downloads hold."""
    rows = []
    for result in results:
        if isinstance(result, Failure):
            rows.append({"image": result.name, "error": result.message})
            continue
        for rank, (label, prob) in enumerate(result.prediction.top, 1):
            rows.append({"image": result.name, "rank": rank, "class": label, "probability": round(prob, 6),
                         "ms": round(result.prediction.ms, 2), "looks_foreign": result.foreign})
    return pd.DataFrame(rows)


def predictions_json(results: list[Result | Failure]) -> str:
    """The command line's `predict --json` format, plus the out-of-distribution verdict."""
    return json.dumps([
        {"source": r.name, "error": r.message} if isinstance(r, Failure) else
        {"source": r.name, "top": [{"label": label, "prob": prob} for label, prob in r.prediction.top],
         "ms": r.prediction.ms, "looks_foreign": r.foreign}
        for r in results], indent=2)


# ---- evaluation ---------------------------------------------------------------------------------


@st.cache_resource(max_entries=8, show_spinner=False)
def _evaluation(path: Path, version: tuple[int, int], source: EvalSource, root: Path,
                limit: int | None) -> tuple[Evaluation, ImageSet]:
    model, card = checkpoint.load(path)
    images = evalsets.load(card, source, root, limit=limit)
    result = evaluate(model.to(pick_device()), images, Normalization(card.mean, card.std),
                      flip_tta=card.training.get("flip_tta", False))
    return result, images


def evaluation(entry: ModelEntry, source: EvalSource, limit: int | None) -> tuple[Evaluation, ImageSet]:
    """A model's results on a source and the images behind them; computed once per model version, shared."""
    return _evaluation(entry.path, entry.version, source, data.DATA_ROOT, limit)


# ---- training -----------------------------------------------------------------------------------

MAX_EPOCHS = 200
ADMIN_ENV = "MOBILENET_ADMIN_PASSWORD"


def job_manager() -> JobManager:
    return JobManager(catalog.RUNS_DIR)


def new_run_config(**settings) -> TrainConfig:
    """A training configuration with the app's data root (raises ValueError for bad settings)."""
    return TrainConfig(data_root=str(data.DATA_ROOT), **settings)


def admin_password() -> str | None:
    """The configured admin password (environment first, then the Streamlit secret), or None for local use."""
    if os.environ.get(ADMIN_ENV):
        return os.environ[ADMIN_ENV]
    try:
        return st.secrets.get("admin_password") or None
    except FileNotFoundError:  # no secrets file at all
        return None


def is_admin(given: str) -> bool:
    """Constant-time check; a wrong guess costs a second, so guessing through the page is slow."""
    expected = admin_password()
    if expected is None:
        return True
    if hmac.compare_digest(given.encode(), expected.encode()):
        return True
    time.sleep(1.0)
    return False


def data_problem(source: str) -> str | None:
    """Why a training source cannot be used, said for people, or None. CIFAR-10 is checked by the job itself."""
    if source == "cifar10":
        return None
    if not source:
        return "Enter the path of an image folder or .zip on the server."
    try:
        splits = data.available_splits(source)
    except (DataError, OSError) as e:
        return str(e)
    if "train" not in splits:
        return (f"{source} has no training images: expected train/<class>/<image> (and optionally "
                f"test/<class>/<image>), or <class>/<image>.")
    return None


def runs_table(runs: list) -> pd.DataFrame:
    """Past runs for people, newest first."""
    return pd.DataFrame([{
        "run": r.name, "state": r.state, "epochs": f"{r.epoch}/{r.epochs}",
        "best validation accuracy": r.best_val_acc, "α": r.config.get("alpha"), "recipe": r.config.get("recipe"),
        "data": Path(str(r.config.get("data", ""))).name or r.config.get("data"),
    } for r in runs])
