"""A visitor's images → answers for people: top-k, the "not sure" verdict, class maps over the photo, downloads.

Nothing here knows Streamlit; the inference page is a thin shell over it.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image

from . import ood
from .data import IMAGE_SUFFIXES
from .infer import Classifier, Prediction
from .intake import ImageError, decode, decodes_smaller, fit_square
from .settings import PACKAGE_ROOT
from .visual import OVERLAY_SIDE, enlarge, heatmap_overlay

EXAMPLES_DIR = PACKAGE_ROOT / "assets" / "examples"
MAX_IMAGES = 16  # per request: more are dropped with a warning
PHOTO_SIDE = 384  # display size of an uploaded photo


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


@dataclass(frozen=True)
class Result:
    upload: Upload
    photo: Image.Image  # the decoded photo at display size
    # The centre square the network saw, for class maps: cut from the full photo, not from the display copy (a
    # 4000×300 panorama's is 29 pixels a side).
    square: Image.Image
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


@functools.cache
def example_thumbnails(paths: tuple[Path, ...], side: int = 96) -> tuple[bytes, ...]:
    """The examples enlarged with visible pixels (at 32×32, a smooth enlargement would only show blur), as PNG files.

    Built once per server: every rerun of the page shows them. PNG bytes, so that Streamlit shows them as they
    are (with output_format="PNG") instead of encoding them again, and their pixels stay sharp.
    """
    return tuple(_png(enlarge(decode(path), side)) for path in paths)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def fetch(url: str, visitor: str | None = None) -> Upload:
    """An image from the web, through the project's guarded fetcher, for a visitor (their address: one name lookup
    at a time each); raises ImageError."""
    from .urlfetch import fetch_url

    return Upload(url.rsplit("/", 1)[-1][:80] or url[:80], fetch_url(url, owner=visitor))


def first_images(uploads: list[Upload]) -> tuple[list[Upload], str | None]:
    """At most MAX_IMAGES uploads, and a message naming the ones left out, if any."""
    if len(uploads) <= MAX_IMAGES:
        return uploads, None
    dropped = ", ".join(u.name for u in uploads[MAX_IMAGES:])
    return uploads[:MAX_IMAGES], (f"Only the first {MAX_IMAGES} of {len(uploads)} images are classified; "
                                  f"left out: {dropped}.")


def _display_copy(image: Image.Image) -> Image.Image:
    scale = PHOTO_SIDE / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.BICUBIC, reducing_gap=3.0)  # 0.15 s, not 0.84 s, at 60 megapixels


def _predict_and_photo(clf: Classifier, data: bytes, topk: int) -> tuple[Prediction, Image.Image]:
    """The prediction, exactly as `predict` makes it from the bytes, and the decoded photo at full size.

    One decode serves both unless the image is a JPEG: only a JPEG decodes at a reduced scale for the model's
    small input (mobilenet.intake.decode's draft_side), so only a JPEG is decoded twice.
    """
    if decodes_smaller(data):
        prediction = clf.predict(data, topk)
        return prediction, decode(data, draft_side=PHOTO_SIDE, limits=clf.limits)
    start = time.perf_counter()
    photo = decode(data, limits=clf.limits)
    decoded_ms = (time.perf_counter() - start) * 1000
    prediction = clf.predict(photo, topk)
    return dataclasses.replace(prediction, ms=decoded_ms + prediction.ms), photo  # timed from the bytes, as predict


def classify(clf: Classifier, uploads: list[Upload], topk: int = 5, threshold: float | None = None
             ) -> list[Result | Failure]:
    """Top-k for every upload, each timed on its own; an unusable one gives a Failure with a message for people."""
    results: list[Result | Failure] = []
    for upload in uploads:
        try:
            prediction, photo = _predict_and_photo(clf, upload.data, topk)
        except ImageError as e:
            results.append(Failure(upload.name, str(e)))
            continue
        foreign = None if threshold is None else ood.looks_foreign(prediction.prob, threshold)
        results.append(Result(upload, _display_copy(photo), fit_square(photo, OVERLAY_SIDE), prediction, foreign))
    return results


def top_k(result: Result | Failure, k: int) -> Result | Failure:
    """An answer with its k most likely classes (of the ones it has)."""
    if isinstance(result, Failure):
        return result
    return dataclasses.replace(result, prediction=dataclasses.replace(result.prediction, top=result.prediction.top[:k]))


def heatmap(clf: Classifier, result: Result, label: str, opacity: float) -> Image.Image | None:
    """The class activation map of `label` over the photo; None when nothing in the image speaks for it.

    The map is of the input the prediction already made (no decode of the upload again), and the classifier
    keeps it: a rerun that changes only the opacity or another image reuses it.
    """
    cam = clf.class_map(clf.prepare(result.prediction.image), clf.classes.index(label))
    return heatmap_overlay(result.square, cam, opacity=opacity) if float(cam.max()) > 0 else None


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
        {**r.prediction.to_record(r.name), "looks_foreign": r.foreign}
        for r in results], indent=2)
