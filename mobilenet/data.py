"""Data sources → one uint8 tensor N×3×H×W, int64 labels and class names, cached on disk.

Sources: "cifar10" (torchvision, under a data root), an image folder, or a .zip of one. A folder holds
`train/` and optionally `test/`, each with one subfolder per class, or is itself a folder of class
subfolders (then it only has a train split).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import sys
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Iterator
from urllib.error import HTTPError, URLError

import numpy as np
import torch
from PIL import Image

from .checkpoint import atomic_torch_save
from .settings import data_root
from .intake import MAX_BYTES, ImageError, fit_square, load_model_array, read_source, to_uint8_array
from .memo import KeyLocks

CACHE_VERSION = 2  # bump when decoding or resizing changes, so old caches are rebuilt
CACHE_FOLDER = "cache"  # under the data root: decoded images, teachers' answers (mobilenet.distill)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
CIFAR10 = "cifar10"  # the source that names torchvision's CIFAR-10 under a data root (any other is a folder or .zip)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
LAYOUT = "train/<class>/<image> (and optionally test/<class>/<image>), or <class>/<image>"  # of a folder or .zip




class DataError(RuntimeError):
    """A data source that cannot be used; the message says what to do on the command line, `in_app` what the app's
    visitors read in its place (a failed run's status): the same words unless the failure needs the app's own."""

    def __init__(self, message: str, in_app: str | None = None) -> None:
        super().__init__(message)
        self.in_app = in_app or message


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor  # uint8, N×3×H×W
    labels: torch.Tensor  # int64, N
    classes: tuple[str, ...]
    skipped: tuple[str, ...] = ()  # files of its source that could not be read as images, left out

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor | slice) -> ImageSet:
        return replace(self, images=self.images[index], labels=self.labels[index])


def stratified_split(labels: torch.Tensor, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split keeping each class's share: (train indices, validation indices), both sorted."""
    if not 0 <= val_size < len(labels):
        raise DataError(f"validation size {val_size} must be between 0 and {len(labels) - 1}")
    generator = torch.Generator().manual_seed(seed % 2**64)  # any whole seed, as the training streams
    classes, counts = labels.unique(return_counts=True)
    quotas = (counts.double() * val_size / len(labels)).floor().long()
    # Hand the rounding remainder to the classes with the largest fractional parts, in order.
    remainder = val_size - int(quotas.sum())
    fractions = counts.double() * val_size / len(labels) - quotas
    quotas[fractions.argsort(descending=True, stable=True)[:remainder]] += 1
    val = []
    for cls, quota in zip(classes, quotas):
        members = (labels == cls).nonzero().flatten()
        val.append(members[torch.randperm(len(members), generator=generator)[:quota]])
    val_index = torch.cat(val).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[val_index] = False
    return mask.nonzero().flatten(), val_index


def balanced_sample(labels: torch.Tensor, size: int) -> torch.Tensor:
    """The indices of a seeded class-balanced sample of size labels, sorted."""
    return stratified_split(labels, size, seed=0)[1]


# ---- image folders and zips -------------------------------------------------------------------


class _Tree:
    """Image files of a folder or zip, as relative POSIX paths, readable as bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            raise DataError(f"{path} not found: give an existing image folder or .zip file")
        if not (path.is_dir() or path.is_file()):  # a pipe or a device would block the reads below
            raise DataError(f"{path} is neither a folder nor a .zip file")
        try:
            self.zip = zipfile.ZipFile(path) if zipfile.is_zipfile(path) else None
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError):  # its end record intact, its directory not
            raise DataError(f"{path} is a damaged .zip file: its list of files cannot be read") from None
        if self.zip is not None:
            self.members = {_member_name(m): m for m in self.zip.infolist() if not m.filename.endswith(("/", "\\"))}
            names = list(self.members)
        elif path.is_dir():
            names = [Path(parent, name).relative_to(path).as_posix() for parent, files in _walk(path)
                     for name in files if os.path.isfile(os.path.join(parent, name))]
        else:
            raise DataError(f"{path} is neither a folder nor a .zip file")
        self.files = [name for name in map(PurePosixPath, names) if name.suffix.lower() in IMAGE_SUFFIXES
                      and not any(part.startswith((".", "__MACOSX")) for part in name.parts)]
        # A zip often wraps everything in one top folder: look through it (past loose files beside the folder).
        self.top = PurePosixPath()
        while True:
            depth = len(self.top.parts)
            folders = {f.parts[depth] for f in self.files if len(f.parts) > depth + 1}
            if len(folders) != 1 or folders & set(SPLITS) or not any(len(f.parts) > depth + 2 for f in self.files):
                break  # several folders, or a split, or one class folder of images
            self.top /= folders.pop()
        # train/<class>/<image>; a class folder that happens to be named train holds its images directly.
        self.has_splits = any(len(f.parts) == len(self.top.parts) + 3 and f.parts[len(self.top.parts)] in SPLITS
                              for f in self.files)

    def read(self, name: PurePosixPath) -> bytes:
        """A file's bytes; none for one that cannot be read (a damaged or encrypted member, a compression zipfile
        lacks, a file gone), which then counts as an unreadable image."""
        try:
            if self.zip is None:
                return read_source(self.path / name)  # (at most MAX_BYTES of it: intake refuses more)
            member = self.members[str(name)]
            return self.zip.read(member) if member.file_size <= MAX_BYTES else b""
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError, zlib.error, EOFError, OSError, ImageError):
            return b""

    def split_files(self, split: str) -> list[tuple[PurePosixPath, str]]:
        """(file, class name) pairs of a split, sorted; a folder without train/ and test/ is all train."""
        depth = len(self.top.parts)
        if self.has_splits:
            pairs = [(f, f.parts[depth + 1]) for f in self.files
                     if len(f.parts) == depth + 3 and f.parts[depth] == split]
        elif split == "train":
            pairs = [(f, f.parts[depth]) for f in self.files if len(f.parts) == depth + 2]
        else:
            pairs = []
        return sorted(pairs)

    def splits(self) -> list[str]:
        return [s for s in SPLITS if self.split_files(s)]


def _member_name(member: zipfile.ZipInfo) -> str:
    """A zip member's path as a folder's would read: "./cat//1.png" and Windows' "cat\\1.png" (PowerShell 5's
    Compress-Archive) as "cat/1.png", and UTF-8 names that Info-ZIP (zip on Linux and macOS) stored without saying
    so, which zipfile then reads as cp437, as UTF-8."""
    name = member.filename
    if not member.flag_bits & 0x800:
        try:
            name = name.encode("cp437").decode("utf-8")
        except UnicodeError:  # cp437 indeed
            pass
    return str(PurePosixPath(name.replace("\\", "/")))


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> None:
    """Decode-worker initializer: the worker is killed when the process that forked it ends, however it ends."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a Stop to the job's process group ends its workers too
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it ended before the line above could take effect
        os._exit(1)


def _decode_chunk(args: tuple[list[bytes], int]) -> tuple[np.ndarray, list[int]]:
    # numpy and PIL only: a forked worker that ran torch's OpenMP code after its parent had could deadlock.
    blobs, side = args
    images, bad = [], []
    for i, blob in enumerate(blobs):
        try:
            images.append(load_model_array(blob, side))
        except ImageError:
            bad.append(i)
    stacked = np.stack(images) if images else np.empty((0, 3, side, side), dtype=np.uint8)
    return stacked, bad


def _decode_all(blobs: list[bytes], side: int, label: str) -> tuple[torch.Tensor, list[int]]:
    """Decode in parallel on all cores with a progress bar; returns images and indices that failed."""
    from tqdm import tqdm

    chunk = 512
    jobs = [(blobs[i:i + chunk], side) for i in range(0, len(blobs), chunk)]
    workers = min(os.cpu_count() or 1, len(jobs)) or 1
    parts, bad = [], []
    with tqdm(total=len(blobs), desc=f"decoding {label}", unit="img", disable=len(blobs) < 2000) as bar:
        if workers == 1:
            results = map(_decode_chunk, jobs)
            pool = None
        else:
            pool = ProcessPoolExecutor(workers, initializer=_die_with_parent, initargs=(os.getpid(),))
            results = pool.map(_decode_chunk, jobs)
        try:
            for j, (images, failed) in enumerate(results):
                parts.append(torch.from_numpy(images))
                bad += [j * chunk + i for i in failed]
                bar.update(len(jobs[j][0]))
        finally:
            if pool is not None:
                pool.shutdown()
    return torch.cat(parts), bad


def _is_utf8(name: str) -> bool:
    try:
        name.encode()
    except UnicodeEncodeError:  # a name whose bytes are not UTF-8, kept by Python as surrogates
        return False
    return True


def _classes(pairs: list[tuple[PurePosixPath, str]]) -> tuple[str, ...]:
    """The class names of a split's (file, class) pairs, in the order of the model's outputs."""
    return tuple(sorted({name for _, name in pairs}))


def training_classes(source: str) -> tuple[str, ...]:
    """The classes a model trained on this source answers with, in order."""
    return CIFAR10_CLASSES if source == CIFAR10 else _classes(_Tree(Path(source)).split_files("train"))


def _load_folder(path: Path, split: str, side: int, sample: int | None = None) -> ImageSet:
    tree = _Tree(path)
    pairs = tree.split_files(split)
    if not pairs:
        found = ", ".join(tree.splits()) or "none"
        raise DataError(
            f"{path} has no {split} images (splits found: {found}). Expected {LAYOUT}.")
    classes = _classes(pairs)
    if unreadable := [name for name in classes if not name.isprintable() or not _is_utf8(name)]:
        names = ", ".join(name.encode("utf-8", "replace").decode().encode("unicode_escape").decode()
                          for name in unreadable)
        raise DataError(f"{path}: class folder names become the model's class names, and these are not text: {names}. "
                        f"Rename them (UTF-8, no control characters)")
    labels = torch.tensor([classes.index(name) for _, name in pairs], dtype=torch.long)
    if sample is not None and sample < len(pairs):  # chosen by the files' names: only the sample is decoded
        index = balanced_sample(labels, sample)
        pairs, labels = [pairs[i] for i in index], labels[index]
    images, bad = _decode_all([tree.read(f) for f, _ in pairs], side, f"{path.name}/{split}")
    if bad:
        keep = torch.ones(len(pairs), dtype=torch.bool)
        keep[bad] = False
        labels = labels[keep]
        names = ", ".join(str(pairs[i][0]) for i in bad[:3])
        print(f"warning: skipped {len(bad)} unreadable image(s) in {path}: {names}{' …' if len(bad) > 3 else ''}",
              file=sys.stderr)  # stdout may be --json
    if len(labels) == 0:
        raise DataError(f"no readable images in {path} ({split})")
    return ImageSet(images, labels, classes, tuple(str(pairs[i][0]) for i in bad))


# ---- CIFAR-10 through torchvision -------------------------------------------------------------


def _load_cifar10(root: Path, split: str, side: int, download: bool) -> ImageSet:
    from torchvision import datasets

    try:
        dataset = datasets.CIFAR10(str(root), train=split == "train", download=download)
    except RuntimeError as e:
        raise DataError(
            f"CIFAR-10 was not found in {root / CIFAR10_FOLDER} ({e}). Allow the download "
            f"(drop --no-download) on a machine with internet, or copy {CIFAR10_ARCHIVE} from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html into {root} and extract it there.",
            in_app=f"CIFAR-10 in {root} is missing or damaged ({e}). Choose an image folder or .zip in {root} "
                   f"instead, or ask the host to put a complete copy of CIFAR-10 there."
        ) from None
    except OSError as e:
        raise DataError(
            f"CIFAR-10 could not be downloaded into {root} ({e}). Without internet, copy "
            f"{CIFAR10_ARCHIVE} from https://www.cs.toronto.edu/~kriz/cifar.html into {root} "
            f"and extract it there, or train on an image folder or zip with --data PATH.",
            in_app=f"CIFAR-10 could not be downloaded: {_download_failure(e)}. Choose an image folder or .zip in "
                   f"{root} instead, or ask the host to put CIFAR-10 there ({CIFAR10_ARCHIVE}, extracted)."
        ) from None
    if side == dataset.data.shape[1]:
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    else:  # the same PIL resize as every other image, in training and inference
        resized = [to_uint8_array(fit_square(Image.fromarray(a), side)) for a in dataset.data]
        images = torch.from_numpy(np.stack(resized))
    return ImageSet(images, torch.tensor(dataset.targets, dtype=torch.long), tuple(dataset.classes))


def _download_failure(error: OSError) -> str:
    """Why a download failed, for people."""
    if isinstance(error, HTTPError):
        return f"its server answered {error.code} {error.reason}"
    if isinstance(error, (URLError, ConnectionError, TimeoutError)):
        return "this server has no internet access"
    return error.strerror or str(error)  # the disk: full, or not writable


# ---- the one entry point ----------------------------------------------------------------------


def _cache_key(source: str, split: str, side: int, sample: int | None) -> str:
    """The decoded images' file name: the source's place, split and size, then (after the last "-") its version,
    so that a source edited since leaves a cache that _drop_older_caches can tell."""
    split = split if sample is None else f"{split}-sample{sample}"
    if source == CIFAR10:
        return f"cifar10-{split}-{side}-v{CACHE_VERSION}"
    path = Path(source).resolve()
    stat = path.stat()
    identity = f"{CACHE_VERSION}|{stat.st_size}|{stat.st_mtime_ns}"
    if path.is_dir():  # a folder's own mtime misses edits inside its class folders
        identity += "".join(f"|{file}:{size}:{mtime}" for file, size, mtime in files_version(path))
    place, version = (hashlib.sha256(os.fsencode(text)).hexdigest()[:16] for text in (str(path), identity))
    return f"{path.stem[:64]}-{place}-{split}-{side}-{version}"  # (os.fsencode: a name that is not UTF-8 as bytes)


def _drop_older_caches(cache_file: Path) -> None:
    """Remove the caches of earlier versions of the same source, split and size: each edit of a folder would
    otherwise leave another full copy of its decoded images (150 MB for CIFAR-10's training images at 32×32)."""
    same = cache_file.name.rsplit("-", 1)[0]
    for old in cache_file.parent.iterdir():
        if old != cache_file and old.suffix == ".pt" and old.name.rsplit("-", 1)[0] == same:
            old.unlink(missing_ok=True)


def load(
    source: str,
    split: str = "train",
    resolution: int = 32,
    root: Path | str | None = None,
    download: bool = False,
    cache: bool = True,
    sample: int | None = None,
) -> ImageSet:
    """Images of one split of a source at resolution×resolution, decoded once then cached.

    With sample, a seeded class-balanced sample of that many of them, chosen before decoding: of a folder of
    50,000 photos, the 1,000 asked for are all that is decoded.
    """
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    root = data_root() if root is None else Path(root)
    check_source(source, root, download)
    if source == CIFAR10 and sample is not None:  # its images are arrays already: nothing to spare
        full = load(source, split, resolution, root, download, cache)
        return full.subset(balanced_sample(full.labels, sample)) if sample < len(full) else full
    cache_file = root / CACHE_FOLDER / f"{_cache_key(source, split, resolution, sample)}.pt"
    if cache and cache_file.exists():
        try:
            saved = torch.load(cache_file, weights_only=True)
            return ImageSet(saved["images"], saved["labels"], tuple(saved["classes"]), tuple(saved.get("skipped", ())))
        except Exception:
            cache_file.unlink(missing_ok=True)  # a stale or damaged cache is rebuilt, never trusted
    if source == CIFAR10:
        data = _load_cifar10(root, split, resolution, download)
    else:
        data = _load_folder(Path(source), split, resolution, sample)
    if cache:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_torch_save({"images": data.images, "labels": data.labels, "classes": list(data.classes),
                               "skipped": list(data.skipped)}, cache_file)
            _drop_older_caches(cache_file)
        except OSError as e:  # a shared read-only data root, a full disk: the cache only saves the next decode
            print(f"warning: the decoded images are not cached ({e.filename}: {e.strerror}); give a writable "
                  f"--data-root (MOBILENET_DATA) to decode them once only", file=sys.stderr)
    return data


CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"  # what torchvision downloads (about 170 MB) and extracts into CIFAR10_FOLDER


def cifar10_here(root: Path | str | None = None) -> bool:
    """Whether CIFAR-10 is in the data root, extracted or as its archive: training it needs no download."""
    root = data_root() if root is None else Path(root)
    return (root / CIFAR10_FOLDER).is_dir() or (root / CIFAR10_ARCHIVE).is_file()


def check_source(source: str, root: Path | str | None = None, download: bool = False) -> None:
    """DataError unless the source can be read now (or, for CIFAR-10, downloaded when allowed)."""
    root = data_root() if root is None else Path(root)
    if source == CIFAR10:
        if not download and not cifar10_here(root):
            raise DataError(
                f"CIFAR-10 was not found in {root / CIFAR10_FOLDER} and downloading it is turned off. Allow the "
                f"download on a machine with internet, or copy {CIFAR10_ARCHIVE} from "
                f"https://www.cs.toronto.edu/~kriz/cifar.html into {root} and extract it there.")
    elif not Path(source).exists():
        raise DataError(f"data source {source!r} not found: give 'cifar10' or an existing folder or .zip",
                        in_app=f"{source} not found: choose an image folder or .zip that is there")


def available_splits(source: str) -> list[str]:
    if source == CIFAR10:
        return list(SPLITS)
    return _Tree(Path(source)).splits()


def check_trainable(source: str) -> None:
    """DataError (or OSError) unless the source holds training images; CIFAR-10 always does."""
    if "train" not in available_splits(source):
        raise DataError(f"{source} has no training images: expected {LAYOUT}.")


def split_train_val(full: ImageSet, val_size: int, seed: int, subset: int | None = None) -> tuple[ImageSet, ImageSet]:
    """The training images and the seeded validation split held out of them (at most 20% of the images).

    With subset, only that many images are used: a seeded, class-balanced sample, since image folders
    are sorted by class.
    """
    if subset and subset < len(full):
        full = full.subset(stratified_split(full.labels, subset, seed + 1)[1])
    val_size = min(val_size, len(full) // 5)
    train_idx, val_idx = stratified_split(full.labels, val_size, seed)
    return full.subset(train_idx), full.subset(val_idx)


MEASURED_TRAINING_IMAGES = 5000  # a model that held none out is measured on a seeded sample of this many


def measurement_split(full: ImageSet, val_size: int, seed: int,
                      subset: int | None = None) -> tuple[ImageSet, ImageSet, bool]:
    """(the training part, the images a model's figures are measured on, whether those were held out of its
    training): its validation split (as split_train_val); for a model that held none out (val_size 0), a seeded
    sample of its training images, where figures measure agreement (int8 against fp32), not accuracy on new images."""
    train, measured = split_train_val(full, val_size, seed, subset)
    if len(measured):
        return train, measured, True
    train, measured = split_train_val(train, MEASURED_TRAINING_IMAGES, seed)
    return train, measured, False


def fingerprint(source: str, version: tuple | None = None, thorough: bool = False) -> str | None:
    """A short content hash that names a data source wherever it lies: a .zip's bytes, a folder's files.

    "cifar10" is the fixed torchvision archive, so its name is its fingerprint; None when the source is missing.
    `version`: the source's source_version when the caller has just read it; thorough: look at each file of a
    folder (files_version), so that an image overwritten in place is seen.
    """
    if source == CIFAR10:
        return CIFAR10
    path = Path(source)
    try:
        if version is None:
            version = files_version(path) if thorough and path.is_dir() else source_version(path)
        path = path.resolve()
        with _hashing(path):  # the first views after a start ask at once: one hash, the others find it cached
            return _fingerprint(path, version)
    except OSError:
        return None


def files_version(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when any file of a folder does, an image overwritten in place included: each file's path, size
    and time, at a stat of each (source_version is the cheap one)."""
    version = []
    for parent, names in _walk(folder):
        for name in names:
            try:
                st = os.stat(os.path.join(parent, name))
            except OSError:  # gone since the walk, or a link to nothing: no image to decode either
                continue
            version.append((f"{parent}/{name}", st.st_size, st.st_mtime_ns))
    return tuple(version)


def source_version(path: Path) -> tuple:
    """What changes when a source's images do, cheaply: a file's size and time; for a folder, the time of every
    folder in it (adding, removing or renaming an image changes its folder's), without a stat of each image."""
    stat = path.stat()
    if not path.is_dir():
        return stat.st_size, stat.st_mtime_ns
    return tuple((folder, os.stat(folder).st_mtime_ns) for folder, _ in _walk(path))


def _walk(folder: Path) -> Iterator[tuple[str, list[str]]]:
    """(folder, its file names) for a folder and every folder in it, sorted, linked ones too (a class folder linked
    in from elsewhere), each real folder once (a link to a folder above would loop)."""
    seen = set()
    for parent, folders, names in os.walk(folder, followlinks=True):
        st = os.stat(parent)
        if (st.st_dev, st.st_ino) in seen:
            folders[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        folders.sort()
        yield parent, sorted(names)


_hashing = KeyLocks()


# Room for every source of a large data root: the Evaluation page asks for each one's on every page run (by
# `evalsets.trained_on`), so a cache smaller than the root would read all of them each time.
@lru_cache(maxsize=512)
def _fingerprint(path: Path, version: tuple) -> str:  # version: part of the cache key only
    if not path.exists():  # gone since its version was read: raise, so that no hash of nothing is cached
        raise FileNotFoundError(path)
    h = hashlib.sha256()
    # A folder by the images the loader reads: a README or .DS_Store put beside them leaves it the same data.
    files = [path] if path.is_file() else [path / name for name in sorted(_Tree(path).files)]
    for file in files:
        if file != path:
            h.update(os.fsencode(file.relative_to(path).as_posix()))
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def match_classes(dataset: ImageSet, classes: tuple[str, ...]) -> ImageSet:
    """Relabel a dataset's classes to the checkpoint's order, by name."""
    unknown = sorted(set(dataset.classes) - set(classes))
    if unknown:
        raise DataError(
            f"the data has classes the model does not know: {', '.join(unknown)} "
            f"(the model knows: {', '.join(classes)})"
        )
    mapping = torch.tensor([classes.index(c) for c in dataset.classes])
    return ImageSet(dataset.images, mapping[dataset.labels], classes, dataset.skipped)
