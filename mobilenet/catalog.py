"""The models there are to serve: shipped checkpoints and finished training runs, each with its card.

A model's key is stable and safe to put in a URL: a shipped checkpoint's file stem
(`mobilenet_v1_a1.0`) or `runs/<folder>` for a run. Cards are read through `mobilenet.checkpoint`
(digest checked, no code executed) and remembered per file version, so listing stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from . import checkpoint
from .checkpoint import CheckpointError, ModelCard
from .engines import int8_file
from .memo import Memo
from .runs import RunFolder, RunState
from .settings import checkpoint_dir, runs_dir

RUN_PREFIX = "runs/"
DEFAULT_CHECKPOINT_NAME = "mobilenet_v1_a1.0.pt"


def shipped_checkpoints() -> list[Path]:
    return sorted(checkpoint_dir().glob("*.pt"))


def default_checkpoint() -> Path:
    path = checkpoint_dir() / DEFAULT_CHECKPOINT_NAME
    if not path.exists():
        raise CheckpointError(f"the default model {path.name} is missing from the checkpoint folder {path.parent} "
                              f"(MOBILENET_CHECKPOINTS); pass --checkpoint FILE or a run folder")
    return path


def resolve_checkpoint(path: str | Path | None) -> Path:
    """A checkpoint file, a run folder (its best.pt) or, with None, the shipped default model."""
    if path is None:
        return default_checkpoint()
    p = Path(path)
    if not p.is_dir():
        return p
    if RunFolder(p).best.is_file():
        return RunFolder(p).best
    files = sorted(p.glob("*.pt"))
    hint = f"; pass a checkpoint file instead, e.g. {files[0]}" if files else ""
    raise CheckpointError(f"{p} is a folder but not a training run with a best model (it has no best.pt){hint}")


# A model's files as they are now: the checkpoint's (mtime_ns, size), then its int8 file's where it has one.
Version = tuple[int, ...]


def model_version(path: Path) -> Version:
    """Raises OSError when the checkpoint is not there."""
    stat = path.stat()
    try:
        int8 = int8_file(path).stat()
    except OSError:
        return stat.st_mtime_ns, stat.st_size
    return stat.st_mtime_ns, stat.st_size, int8.st_mtime_ns, int8.st_size


@dataclass(frozen=True)
class ModelEntry:
    key: str
    path: Path
    card: ModelCard
    version: Version  # a retrained best.pt, or an int8 file exported again, is a new version

    def describe(self) -> str:
        """One line for people: architecture, input, classes, training and accuracy."""
        card, info = self.card, self.card.training
        parts = [f"α={card.alpha:g}", f"{card.stem} stem", f"{card.resolution}×{card.resolution} input",
                 f"{card.num_classes} classes"]
        if info.get("epochs"):
            epochs = info["epochs"]
            parts.append(f"trained {epochs} epoch{'' if epochs == 1 else 's'} ({info.get('recipe', '?')} recipe)")
        if card.val_acc is not None and card.held_out:
            parts.append(f"validation accuracy {card.val_acc:.1%}")
        elif card.val_acc is not None:
            parts.append(f"trained on all its images; {card.val_acc:.1%} on held-out images with the same recipe")
        return ", ".join(parts)


@dataclass(frozen=True)
class Catalog:
    models: tuple[ModelEntry, ...]
    problems: tuple[str, ...]  # files that look like models but cannot be used, with the reason

    @property
    def keys(self) -> list[str]:
        return [m.key for m in self.models]

    def get(self, key: str | None) -> ModelEntry | None:
        return next((m for m in self.models if m.key == key), None)

    @property
    def default(self) -> ModelEntry | None:
        """The shipped default model when there is one, else the first listed."""
        default_key = Path(DEFAULT_CHECKPOINT_NAME).stem
        return self.get(default_key) or (self.models[0] if self.models else None)


def finished_runs(folder: Path) -> list[RunFolder]:
    """Runs whose training finished and left a best.pt, sorted by name (not hidden folders: a run being deleted is
    renamed to one first)."""
    if not folder.is_dir():
        return []
    runs = [RunFolder(p) for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    return [run for run in runs if (status := run.read_status()) and status.state is RunState.FINISHED
            and run.best.is_file()]


@lru_cache(maxsize=128)
def _card(path: Path, version: Version) -> ModelCard:  # version: part of the cache key only
    return checkpoint.read_card(path)


# Files refused lately, and why: a damaged file is read and hashed once a minute, not on every page run of every
# visitor; after a minute it is tried again (a refusal may have passed: memory, a file's mode fixed by chmod).
_refused: Memo[str] = Memo(size=128, max_age_s=60.0)


def _card_or_problem(path: Path, version: Version) -> ModelCard | str:
    if (refused := _refused.get((path, version))) is not None:
        return refused
    try:
        return _card(path, version)
    except CheckpointError as e:
        _refused.put((path, version), str(e))
        return str(e)


def shipped_order(name: str, card: ModelCard) -> tuple:
    """How shipped models are listed, in the app and in checkpoints/README.md: the default, then the widest."""
    return name != DEFAULT_CHECKPOINT_NAME, -card.alpha, name


def list_models() -> Catalog:
    """Shipped checkpoints (the default first, then the widest) then finished runs in the runs folder."""
    candidates = [(p.stem, p) for p in shipped_checkpoints()]
    candidates += [(f"{RUN_PREFIX}{run.name}", run.best) for run in finished_runs(runs_dir())]
    models, problems = [], []
    for key, path in candidates:
        try:
            version = model_version(path)
            card = _card_or_problem(path, version)
        except OSError as e:
            card = str(e)
        if isinstance(card, str):
            problems.append(f"{key}: {card}")
        else:
            models.append(ModelEntry(key, path, card, version))
    shipped = [m for m in models if not m.key.startswith(RUN_PREFIX)]
    shipped.sort(key=lambda m: shipped_order(m.path.name, m.card))
    return Catalog(tuple(shipped + models[len(shipped):]), tuple(problems))
