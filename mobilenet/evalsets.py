"""Evaluation sets: which there are under the data root, which of them hold a model's training images, and one
loaded for a model; and what a model can be trained on here.

A model can be evaluated on the CIFAR-10 test split, on the validation split held out of its own training data
(same seed, size and subset as in training), or on an image folder or .zip in the data root: its test split when
it has one, else all its images. A source is the model's training data when its fingerprint is the one the card
records (by file name only for cards without a fingerprint): wherever it lies and whatever it is called.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from . import data, settings
from .checkpoint import ModelCard, TrainingData
from .data import CIFAR10, DataError, ImageSet
from .memo import Memo

VAL = "val"  # the validation split held out in training, beside data.SPLITS
ALL = "train"  # a folder without a test split: all its images
SEEN_NOTE = "includes training images"


@dataclass(frozen=True)
class EvalSource:
    label: str
    source: str  # "cifar10" or a folder / .zip path
    split: str  # "test", ALL or VAL
    seen: bool = False  # holds images the model was trained on: its accuracy there says little


def missing_data_message(root: Path) -> str:
    return (
        f"No evaluation data found in `{root}/`. Download CIFAR-10 into it on a machine with internet "
        f"(`python -c \"from torchvision.datasets import CIFAR10; CIFAR10('{root}', train=False, download=True)\"`, "
        f"or extract {data.CIFAR10_ARCHIVE} there), or put an image folder or .zip in it laid out as "
        f"`test/<class>/<image>` or `<class>/<image>`."
    )


def _cifar_present(root: Path) -> bool:
    return (root / data.CIFAR10_FOLDER).is_dir()


@lru_cache(maxsize=64)
def _splits(path: Path, version: tuple) -> tuple[str, ...]:  # version: part of the cache key only
    try:
        return tuple(data.available_splits(str(path)))
    except (DataError, OSError, zipfile.BadZipFile):
        return ()


# A page run asks after each source several times (its splits, whether the model trained on it) and a visitor's
# clicks rerun the page: a folder's version walks every image's name (~50 ms for 12,000), so it is read again
# only when this old.
_versions: Memo[tuple] = Memo(size=64, max_age_s=2.0)


def _version(path: Path) -> tuple:
    """data.source_version, as of the last two seconds; OSError when the source is gone."""
    version = _versions.get(path)
    if version is None:
        version = data.source_version(path)
        _versions.put(path, version)
    return version


def _splits_now(path: Path) -> tuple[str, ...]:
    """The splits a folder or .zip holds as it is now; none when it is gone or unreadable."""
    try:
        version = _version(path)  # up to two seconds old: a source gone since must not cache "no splits" under it
        return _splits(path, version) if path.exists() else ()
    except OSError:
        return ()


def evaluation_split(source: str) -> str | None:
    """The one rule, for the app and the command line alike: a source's test split when it has one, else all its
    images (a folder of train/<class>/ or <class>/ only); None when it holds no images."""
    if source == CIFAR10:
        return "test"
    splits = _splits_now(Path(source))
    return "test" if "test" in splits else (ALL if splits else None)


def trained_on(card: ModelCard, source: str) -> bool:
    """Whether a source is the data the model was trained on: by fingerprint, or by name for a card without one."""
    trained = card.data
    if trained is None:
        return False
    if trained.fingerprint:
        if source == CIFAR10:
            return trained.fingerprint == CIFAR10
        try:
            return data.fingerprint(source, _version(Path(source))) == trained.fingerprint
        except OSError:
            return False
    return source == trained.source or Path(source).name == Path(trained.source).name


def _candidates(root: Path) -> list[Path]:
    """The image folders and .zip files in the data root (not the decode cache nor torchvision's CIFAR-10)."""
    if not root.is_dir():
        return []
    skipped = (data.CACHE_FOLDER, data.CIFAR10_FOLDER)
    return [p for p in sorted(root.iterdir()) if not p.name.startswith(".") and p.name not in skipped
            and (p.is_dir() or p.suffix.lower() == ".zip" and p.is_file())]


@dataclass(frozen=True)
class TrainingSource:
    label: str  # as visitors see it: a name in the data root, never a server path
    source: str  # "cifar10" or a folder / .zip path, as TrainConfig.data takes it


def sources_to_train_on(root: Path | None = None) -> list[TrainingSource]:
    """What a model can be trained on here, what is already there first: CIFAR-10 when it is in the data root, the
    data root's image folders and .zip files that hold training images, then CIFAR-10 to download when it is not."""
    root = settings.data_root() if root is None else root
    here = data.cifar10_here(root)
    cifar = TrainingSource("CIFAR-10 (downloaded)" if here else "CIFAR-10 (downloads about 170 MB when the job starts)",
                           CIFAR10)
    found = [TrainingSource(path.name, str(path)) for path in _candidates(root) if "train" in _splits_now(path)]
    return [cifar, *found] if here else [*found, cifar]


def training_source(card: ModelCard, root: Path | None = None) -> str | None:
    """Where the model's training data is on this machine: its recorded path, or the data root's source with its
    fingerprint; None when it is not here."""
    root = settings.data_root() if root is None else root
    trained = card.data
    if trained is None:
        return None
    if trained.source == CIFAR10:
        return CIFAR10 if _cifar_present(root) else None
    here = [trained.source] if Path(trained.source).exists() else []
    return next((s for s in here + [str(p) for p in _candidates(root)] if trained_on(card, s)), None)


def describe_source(source: str) -> str:
    return "CIFAR-10" if source == CIFAR10 else Path(source).name


def training_note(card: ModelCard) -> str:
    """Which images the model trained on, for people, and how the sources are ordered because of it."""
    trained = card.data
    if trained is None:
        return "This model does not record its training data: any of these sources may include its training images."
    subset = f"a sample of {trained.subset:,} images of " if trained.subset else ""
    held = (f"holding {trained.val_size:,} images out for validation (seed {trained.seed})" if trained.holds_out
            else "holding none out for validation")
    return (f"This model trained on {subset}{describe_source(trained.source)}, {held}. Data it never saw comes first; "
            f"\"{SEEN_NOTE}\" marks the rest.")


def sources(card: ModelCard, root: Path | None = None) -> list[EvalSource]:
    """What this model can be evaluated on: data it never saw first, anything holding its training images last."""
    root = settings.data_root() if root is None else root
    unseen, seen = [], []
    if _cifar_present(root):
        # CIFAR-10's test split is never trained on: the trainer holds its validation split out of train.
        unseen.append(EvalSource("CIFAR-10 test set", CIFAR10, "test"))
    if card.held_out and (trained := training_source(card, root)) is not None:
        unseen.append(EvalSource(f"validation split held out in training ({describe_source(trained)})", trained, VAL))
    for path in _candidates(root):
        split = evaluation_split(str(path))
        if split == "test":
            unseen.append(EvalSource(f"{path.name}: test split", str(path), "test"))
        elif split == ALL:
            if trained_on(card, str(path)):
                seen.append(EvalSource(f"{path.name}: all images ({SEEN_NOTE})", str(path), ALL, seen=True))
            else:
                unseen.append(EvalSource(f"{path.name}: all images", str(path), ALL))
    return unseen + seen


def named(card: ModelCard, source: str, split: str, root: Path | None = None) -> EvalSource:
    """The command line's --data and --split as a source, by the app's rule: "val" is the held-out validation
    split; otherwise the test split, or all the images of a folder that has none."""
    if source != CIFAR10:  # CIFAR-10 is checked as it loads: it may be downloaded
        data.check_source(source, root)
        data.available_splits(source)  # a damaged .zip, or a file that is none, says so (not "holds no images")
    if split == VAL:
        if not card.held_out:
            raise DataError("this model held no validation split out of its training data: every image of it was "
                            "trained on")
        if card.data is not None and card.data.fingerprint and not trained_on(card, source):
            raise DataError(f"{describe_source(source)} is not the data this model was trained on "
                            f"({describe_source(card.data.source)}): its validation split is not in it")
        return EvalSource(f"validation split held out in training ({describe_source(source)})", source, VAL)
    chosen = evaluation_split(source)
    if chosen is None:
        raise DataError(f"{source} holds no images: expected test/<class>/<image>, train/<class>/<image> "
                        f"or <class>/<image>")
    if chosen == "test":
        return EvalSource(f"{describe_source(source)}: test split", source, "test")
    seen = trained_on(card, source)
    return EvalSource(f"{describe_source(source)}: all images" + (f" ({SEEN_NOTE})" if seen else ""), source, ALL,
                      seen)


def load(card: ModelCard, source: EvalSource, root: Path | None = None, download: bool = False,
         limit: int | None = None) -> ImageSet:
    """The images of a source at the model's resolution, labelled in the model's class order.

    With limit, a seeded class-balanced sample of that many images: of a test split or a folder, only the sample is
    decoded; the validation split is the one training decoded (and cached), where the whole source was needed to
    find it.
    """
    root = settings.data_root() if root is None else root
    if source.split == VAL:
        split = card.data or TrainingData(source.source, None)
        full = data.load(source.source, "train", card.resolution, root=root, download=download)
        _, images = data.split_train_val(full, split.val_size, split.seed, split.subset)
        if limit is not None and limit < len(images):
            images = images.subset(data.balanced_sample(images.labels, limit))
    else:
        images = data.load(source.source, source.split, card.resolution, root=root, download=download, sample=limit)
    images = data.match_classes(images, card.classes)
    if not len(images):
        raise DataError(f"{source.label} holds no images to evaluate on")
    return images
