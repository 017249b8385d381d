"""The one checkpoint format: weights + metadata in a torch zip file, read with weights_only=True.

Loading never executes code: a pickled whole model (the seed's `torch.save(net)`) is refused, and
so is a file whose weights no longer hash to the digest stored beside them or do not fit the
architecture its metadata describes. Writes are atomic, so a crash never leaves half a file.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import math
import os
import pickle
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from .model import MobileNetV1, check_alpha, input_resolution
from .tta import SEED_NORMALIZATION, InferenceRecipe, Normalization
from .values import is_finite, is_int, is_number

FORMAT = "mobilenet-v1-checkpoint"
FORMAT_VERSION = 1
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64)  # int64: BN's step count
# A card is a hundred-odd values (a few per class). Pickle stores a repeated object once, so a small file can hold
# a list of itself nested 30 deep: 2**30 values to hash. They are counted, repeats too, up to this many.
MAX_CARD_VALUES = 100_000


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why."""


@dataclass(frozen=True)
class TrainingData:
    """Which images a model was trained on: the source, a fingerprint of it, and the validation split held out."""

    source: str  # "cifar10", or the folder / .zip it was trained from
    fingerprint: str | None  # mobilenet.data.fingerprint of the source; None when unknown
    val_size: int = 5000
    seed: int = 0
    subset: int | None = None

    def __post_init__(self) -> None:  # read from a file, which a hand may have edited
        if not (isinstance(self.source, str) and (self.fingerprint is None or isinstance(self.fingerprint, str))
                and is_int(self.val_size) and self.val_size >= 0 and is_int(self.seed)
                and (self.subset is None or is_int(self.subset) and self.subset > 0)):
            raise ValueError(f"the card's training data is malformed: {self}")

    @property
    def holds_out(self) -> bool:
        """Whether training held a validation split out of the source (val_size 0: it trained on all of it)."""
        return self.val_size > 0


# The numbers in a card's `training` that pages and the cards README format (the rest is shown as text).
NUMBERS_FOR_PEOPLE = ("epochs", "val_acc", "val_n", "params", "mult_adds", "train_time_s")


def _number_or_none(value: object) -> bool:
    return value is None or is_number(value)


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to rebuild, feed and describe a model, kept with its weights."""

    alpha: float
    stem: str
    resolution: int
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    training: dict[str, Any] = field(default_factory=dict)  # epochs, recipe, accuracy, time, …: see NUMBERS_FOR_PEOPLE
    tta: str = "none"  # test-time augmentation the model is scored and served with (mobilenet.tta)
    data: TrainingData | None = None

    def __post_init__(self) -> None:
        # Cards written before `data` was a field kept it in `training`.
        t = self.training
        if self.data is None and t.get("data"):
            object.__setattr__(self, "data", TrainingData(str(t["data"]), None, int(t.get("val_size", 5000)),
                                                          int(t.get("seed", 0)), t.get("subset")))
        InferenceRecipe(SEED_NORMALIZATION, self.tta)  # a ValueError for an unknown mode
        check_alpha(self.alpha)
        input_resolution(self.stem, resolution=self.resolution)  # a known stem, a side it can take
        if not self.classes or len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("a card needs class names and three channel means and deviations")
        if len(set(self.classes)) != len(self.classes) or not all(self.classes):
            raise ValueError("a card's class names must be distinct and not empty")
        if not all(math.isfinite(v) for v in self.mean) or not all(math.isfinite(v) and v > 0 for v in self.std):
            raise ValueError("a card's channel means must be finite and its deviations positive")
        for key in NUMBERS_FOR_PEOPLE:
            if not _number_or_none(t.get(key)):
                raise ValueError(f"the card's {key} is not a number: {t.get(key)!r}")
        devices = t.get("devices", [])
        if not isinstance(devices, list) or not all(
                isinstance(d, list) and len(d) == 3 and isinstance(d[0], str) and is_int(d[1]) and d[1] >= 0
                and is_finite(d[2]) and d[2] >= 0 for d in devices):
            raise ValueError("the card's devices are malformed: a list of [device, epochs, seconds]")
        teachers = t.get("teachers")
        if not isinstance(t.get("recipe"), (str, type(None))) or not (
                teachers is None or isinstance(teachers, list) and all(isinstance(n, str) for n in teachers)):
            raise ValueError("the card's recipe must be a name and its teachers a list of names")
        per_class = t.get("per_class", {})
        if not isinstance(per_class, dict) or not all(isinstance(c, str) and _number_or_none(a)
                                                      for c, a in per_class.items()):
            raise ValueError("the card's per-class accuracies are malformed")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def val_acc(self) -> float | None:
        """Its validation accuracy, or its validating twin's for a model trained on all its images; None: never
        validated (a run's best.pt copied elsewhere, an old card)."""
        return self.training.get("val_acc")

    @property
    def held_out(self) -> bool:
        """Whether its training held a validation split out (a model without a record of its data may have)."""
        return self.data is None or self.data.holds_out

    @property
    def inference(self) -> InferenceRecipe:
        """How to feed this model: its normalisation and test-time augmentation."""
        return InferenceRecipe(Normalization(self.mean, self.std), self.tta)

    def build(self) -> MobileNetV1:
        return MobileNetV1(self.num_classes, self.alpha, self.stem)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"classes": list(self.classes), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        try:
            given = data.get("data")
            return cls(
                alpha=float(data["alpha"]),
                stem=str(data["stem"]),
                resolution=int(data["resolution"]),
                classes=tuple(str(c) for c in _listed(data["classes"])),
                mean=tuple(float(v) for v in _listed(data["mean"])),
                std=tuple(float(v) for v in _listed(data["std"])),
                training=dict(data.get("training", {})),
                # Cards written before `tta` was a field said "flip_tta" in `training`.
                tta=str(data.get("tta") or ("flip" if data.get("training", {}).get("flip_tta") else "none")),
                data=None if given is None else TrainingData(**given),
            )
        except (ArithmeticError, AttributeError, KeyError, TypeError, ValueError) as e:  # Arithmetic: inf, 10**400
            raise CheckpointError(f"checkpoint metadata is incomplete or malformed ({e})") from None


def card_digest(card: dict[str, Any]) -> str:
    """sha256 of a card as canonical JSON: torch.load checks no checksum, so a damaged byte would change a class
    name unseen."""
    try:
        text = json.dumps(card, sort_keys=True)
    except (TypeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"checkpoint metadata is incomplete or malformed ({e})") from None
    return hashlib.sha256(text.encode()).hexdigest()


def _listed(value: Any) -> list:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous().reshape(-1)
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


def refuse_to_replace(path: Path, overwrite: bool) -> None:
    """FileExistsError for a file that is there, unless the user asked to replace it."""
    if not overwrite and path.exists() and not path.is_dir():  # a folder is refused as it is written, in words
        raise FileExistsError(errno.EEXIST, "is there already; give --overwrite to replace it", str(path))


DEBRIS_AGE_S = 3600  # a temporary file this old is no write in progress (a checkpoint's takes seconds)


def _sweep_debris(path: Path) -> None:
    """Remove the temporary files of earlier writes to path that a kill -9 or a power cut left behind."""
    for debris in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if time.time() - debris.stat().st_mtime > DEBRIS_AGE_S:
                debris.unlink()
        except OSError:  # gone meanwhile, or not ours to remove
            pass


def atomic_write(path: Path | str, write: Callable[[BinaryIO], None]) -> None:
    """write(file) into a temporary file in path's folder, fsync, then rename over path: the old file or the new
    one, never half of one. OSError naming path (not the temporary file) for a folder or a missing parent."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder: give a file name", str(path))
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such folder", str(path.parent))
    _sweep_debris(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # its folder refuses new files
        raise type(e)(e.errno, f"cannot be written ({e.strerror})", str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide the file from a web server's user
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_torch_save(obj: Any, path: Path | str) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def save(path: Path | str, model: torch.nn.Module, card: ModelCard, train_state: dict | None = None) -> None:
    """Write weights (float32, on CPU) + card; train_state (optimizer, scheduler, RNG…) only for resuming."""
    state = {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}
    described = card.to_dict()
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "card": described,
        "card_digest": card_digest(described),
        "state_dict": state,
        "digest": weights_digest(state),
    }
    if train_state is not None:
        payload["train_state"] = train_state
    atomic_torch_save(payload, path)


def replace_card(path: Path | str, card: ModelCard) -> None:
    """Write a new card into a checkpoint, keeping its weights and their digest as they are."""
    payload = read(path)
    payload["card"] = card.to_dict()
    payload["card_digest"] = card_digest(payload["card"])
    atomic_torch_save(payload, path)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP or torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def _stored_plainly(path: Path) -> bool:
    """Whether every entry of the zip is stored as it is, as torch.save writes them: torch.load would also inflate
    compressed ones, at any ratio."""
    try:
        with zipfile.ZipFile(path) as archive:
            return all(entry.compress_type == zipfile.ZIP_STORED for entry in archive.infolist())
    except Exception:  # zipfile raises BadZipFile, UnicodeDecodeError, NotImplementedError… for a damaged index
        raise CheckpointError(f"{path.name} is damaged: its index of contents cannot be read") from None


def _values_within(value: Any, limit: int) -> bool:
    """Whether a card of dicts and lists holds at most limit values, counting each repeat of an object."""
    stack, count = [value], 0
    while stack:
        count += 1
        if count > limit:
            return False
        value = stack.pop()
        if isinstance(value, dict):
            stack += [*value.keys(), *value.values()]
        elif isinstance(value, (list, tuple)):
            stack += value
    return True


def _unpickler_reason(e: pickle.UnpicklingError) -> str:
    """What torch's refusal found (its "Unsupported global: …" line), without its advice on loading the file anyway
    and its terminal escapes."""
    lines = str(e).splitlines()
    line = next((line for line in lines if "WeightsUnpickler error:" in line), lines[0] if lines else "")
    reason = line.split("WeightsUnpickler error:", 1)[-1].split(". Please use", 1)[0].strip()
    return "".join(c for c in reason if c.isprintable())[:160]


def read(path: Path | str) -> dict[str, Any]:
    """The checked payload of a checkpoint file, loaded without executing code."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; anything else is not ours
        raise CheckpointError(f"{path.name} is not a checkpoint file")
    if not _stored_plainly(path):
        raise CheckpointError(f"{path.name} is refused: its contents are compressed, which torch.save never does "
                              f"(a small file could unpack to gigabytes)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path.name} is refused: it contains pickled Python objects, not just weights "
            f"(for example a whole model saved with torch.save(net)); loading it could run code. "
            f"({_unpickler_reason(e)})"
        ) from None
    except Exception as e:
        raise CheckpointError(f"{path.name} is not a readable checkpoint ({type(e).__name__}: {e})"[:400]) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path.name} is not a MobileNet v1 checkpoint of this project")
    if payload.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path.name} has format version {payload.get('version')}; this program reads {FORMAT_VERSION}")
    if not isinstance(payload.get("card"), dict):
        raise CheckpointError(f"{path.name} holds no model card")
    if not _values_within(payload["card"], MAX_CARD_VALUES):
        raise CheckpointError(f"{path.name} is refused: its card holds more than {MAX_CARD_VALUES:,} values")
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) and _plain(v) for k, v in state.items()):
        raise CheckpointError(f"{path.name} holds no weights")
    odd = sorted({str(t.dtype).removeprefix("torch.") for t in state.values() if t.dtype not in WEIGHT_DTYPES})
    if odd:
        raise CheckpointError(f"{path.name} holds weights of a type this network does not use ({', '.join(odd)})")
    if sum(t.numel() * t.element_size() for t in state.values()) > path.stat().st_size:
        raise CheckpointError(f"{path.name} is refused: its weights share their storage (torch.save of a model "
                              f"stores each of them once)")
    if weights_digest(state) != payload.get("digest"):
        raise CheckpointError(f"{path.name} is damaged or was modified: its weights do not match their digest")
    if not all_finite(state):
        raise CheckpointError(f"{path.name} holds weights that are not numbers (NaN or infinite): the training that "
                              f"wrote it diverged")
    if "card_digest" in payload and card_digest(payload["card"]) != payload["card_digest"]:  # files before had none
        raise CheckpointError(f"{path.name} is damaged or was modified: its card does not match its digest")
    return payload


def read_card(path: Path | str) -> ModelCard:
    """A checkpoint's card, checked, without building its model."""
    return ModelCard.from_dict(read(path)["card"])


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    """Whether every weight and statistic is a number: a training that diverged leaves NaN or infinities."""
    return all(bool(t.isfinite().all()) for t in state.values())


def _plain(tensor: object) -> bool:
    """A dense tensor with data (not on the meta device, which map_location leaves there) whose elements all have
    storage of their own: a view that repeats a few stored values (expand) would stand for terabytes once the
    digest made it contiguous."""
    return (isinstance(tensor, torch.Tensor) and tensor.layout == torch.strided and tensor.device.type == "cpu"
            and tensor.numel() * tensor.element_size() <= tensor.untyped_storage().nbytes())


def load(path: Path | str) -> tuple[MobileNetV1, ModelCard]:
    """The model (eval mode, CPU) and its card."""
    return restore(read(path), Path(path).name)


def restore(payload: dict[str, Any], name: str) -> tuple[MobileNetV1, ModelCard]:
    """The model (eval mode, CPU) and card of a payload from read; name names its file in errors."""
    card = ModelCard.from_dict(payload["card"])
    try:
        model = card.build()
        model.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"{name}: the weights do not match the architecture in its metadata "
            f"(α={card.alpha}, stem={card.stem}, {card.num_classes} classes): {str(e).splitlines()[0][:200]}"
        ) from None
    return model.eval(), card
