"""The training configuration: recipes, and the one TrainConfig that the CLI, the app's jobs and run folders share.

TrainConfig's fields are the single source of the `train` command's options (`add_arguments`), of a run
folder's config.json and of what the app's job manager launches.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .data import CIFAR10
from .model import STEMS, check_alpha, check_stem, input_resolution
from .settings import data_root
from .tta import CIFAR10_NORMALIZATION, SEED_NORMALIZATION, TTA_MODES, InferenceRecipe, Normalization
from .values import is_int, is_of_type


@dataclass(frozen=True)
class Recipe:
    batch_size: int
    lr: float
    epochs: int
    # "plateau": ReduceLROnPlateau on the training loss; "onecycle": linear warm-up then linear decay to 0
    schedule: str
    weight_decay: float
    decay_norm_and_bias: bool
    nesterov: bool
    label_smoothing: float
    normalization: Normalization
    tta: str  # test-time augmentation of validation and of the shipped model (see mobilenet.tta)
    warmup_epochs: float = 0.0
    momentum: float = 0.9
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: none); validated and shipped
    cutout: int = 0  # side of a square erased from each training image (0: none)

    @property
    def inference(self) -> InferenceRecipe:
        """How its models are fed when validated and served."""
        return InferenceRecipe(self.normalization, self.tta)


RECIPES = {
    # The seed blog post, exactly.
    "seed": Recipe(
        batch_size=64, lr=0.1, epochs=20, schedule="plateau", weight_decay=5e-4, decay_norm_and_bias=True,
        nesterov=False, label_smoothing=0.0, normalization=SEED_NORMALIZATION, tta="none",
    ),
    # Chosen by measurement, see BENCHMARKS.md.
    "fast": Recipe(
        batch_size=128, lr=0.2, epochs=30, schedule="onecycle", weight_decay=5e-4, decay_norm_and_bias=False,
        nesterov=True, label_smoothing=0.1, normalization=CIFAR10_NORMALIZATION, tta="flip", warmup_epochs=2,
    ),
}
DEFAULT_RECIPE = "fast"
# TrainConfig fields that override the recipe's value when set (None: the recipe's)
OVERRIDES = ("epochs", "batch_size", "lr", "label_smoothing", "weight_decay", "ema", "cutout", "tta")
_WORDS = {"ema": "EMA", "cutout": "Cutout", "tta": "test-time augmentation"}


def setting_words(name: str, value: object) -> str:
    """A recipe setting and its value as people read them: "label smoothing 0.2", "EMA 0.999", "epochs 30"."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"{_WORDS.get(name, name.replace('_', ' '))} {value:g}" if number else f"{_WORDS.get(name, name)} {value}"


def _option(default: Any, help: str, **argparse: Any) -> Any:
    return field(default=default, metadata={"help": help, **argparse})


# Settings that do not change what a run trains: where it runs and how fast, how often it validates, its data
# (compared by fingerprint where it matters) and its validation split (what a shipped model and its validating
# twin differ in).
NOT_TRAINING = ("val_size", "val_every", "device", "data_root", "compile", "download", "data")
# A resumed run keeps its other settings. Its data may move (a run started on a GPU machine goes on here): the
# images are checked against the digest the run saved, so other images are refused.
RESUMABLE_CHANGES = ("data", "device", "data_root", "val_every", "download")


_TYPE_WORDS = {"str": "text", "int": "a whole number", "float": "a number", "bool": "true or false"}


@dataclass
class TrainConfig:
    data: str = _option(CIFAR10, "'cifar10' or an image folder / .zip with train/<class>/ or <class>/ "
                                   "(default cifar10)")
    recipe: str = _option(DEFAULT_RECIPE, "training recipe (default fast)", choices=tuple(RECIPES))
    epochs: int | None = _option(None, "default: the recipe's")
    batch_size: int | None = _option(None, "default: the recipe's")
    lr: float | None = _option(None, "peak learning rate; default: the recipe's")
    label_smoothing: float | None = _option(None, "default: the recipe's")
    weight_decay: float | None = _option(None, "default: the recipe's")
    ema: float | None = _option(None, "decay of a moving average of the weights, e.g. 0.999; default: the recipe's")
    cutout: int | None = _option(None, "side of the square Cutout erases, e.g. 8; default: the recipe's")
    tta: str | None = _option(None, "test-time augmentation for validation and the model; default: the recipe's",
                              choices=TTA_MODES)
    teacher: str = _option("", "trained checkpoint(s) to distil from, comma-separated for an ensemble: their "
                               "averaged predictions on each training image join the labels as targets")
    distill: float = _option(0.5, "weight of the teachers' targets against the labels (with --teacher; default "
                                  "0.5, above 0, at most 1)")
    alpha: float = _option(1.0, "width multiplier α (default 1.0)")
    beta: float = _option(1.0, "resolution multiplier β (default 1.0)")
    stem: str = _option("cifar", "cifar: the seed's network; imagenet: the paper's", choices=STEMS)
    seed: int = _option(0, "seed of the validation split, the initialisation and the augmentation")
    val_size: int = _option(5000, "held-out validation images (default 5000; at most 20%% of the data; 0: none)")
    val_every: int = _option(1, "validate every N epochs, and always after the last (on a CPU, validating with "
                                "flip-translate TTA costs about a third of an epoch)")
    subset: int | None = _option(None, "use only N images, a seeded class-balanced sample, the validation split "
                                       "among them (smoke runs)")
    device: str = _option("auto", "auto (the GPU when there is one), cpu, cuda or cuda:N")
    compile: bool = _option(False, "torch.compile the model")
    data_root: str = _option("", "where CIFAR-10 and the decode cache live (default: MOBILENET_DATA or data)")
    download: bool = _option(True, "download CIFAR-10 when it is missing")

    def __post_init__(self) -> None:
        for f in fields(self):  # a hand-edited config.json may hold anything
            value, kind = getattr(self, f.name), f.type.removesuffix(" | None")
            if value is None and f.type.endswith(" | None"):
                continue
            if not is_of_type(value, kind):
                raise ValueError(f"{f.name.replace('_', '-')} must be {_TYPE_WORDS[kind]}, got {value!r}")
            if value not in f.metadata.get("choices", (value,)):
                raise ValueError(f"{f.name.replace('_', '-')} must be one of {', '.join(f.metadata['choices'])}, "
                                 f"got {value!r}")
        if not self.data_root:
            self.data_root = str(data_root())
        check_alpha(self.alpha)
        check_stem(self.stem)
        input_resolution(self.stem, self.beta)
        for name in ("epochs", "batch_size", "subset", "val_every"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                raise ValueError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.lr is not None and not 0 < self.lr < 100:
            raise ValueError(f"lr must be above 0 and below 100, got {self.lr!r}")
        for name in ("label_smoothing", "weight_decay", "ema"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 0 and below 1, got {value!r}")
        if self.cutout is not None and not 0 <= self.cutout < self.resolution:
            raise ValueError(f"cutout must be 0 or more and below the input side, {self.resolution}, got "
                             f"{self.cutout!r}")
        if self.teacher.strip() and not self.teachers:
            raise ValueError(f"teacher names no checkpoint: {self.teacher!r}")
        if not 0 < self.distill <= 1:
            raise ValueError(f"distill must be above 0 and at most 1, got {self.distill!r}")
        if self.val_size < 0:
            raise ValueError(f"val-size must be 0 or more, got {self.val_size}")
        if self.device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    @property
    def effective(self) -> Recipe:
        """The recipe with this run's overrides applied."""
        overrides = {name: getattr(self, name) for name in OVERRIDES}
        return replace(RECIPES[self.recipe], **{k: v for k, v in overrides.items() if v is not None})

    def training_settings(self) -> dict[str, Any]:
        """What decides how this run trains, besides its data and split: the settings with the recipe's overrides
        resolved (epochs unset and epochs=30 are the same `fast` run)."""
        resolved = {name: getattr(self.effective, name) for name in OVERRIDES}
        return {k: v for k, v in (self.to_dict() | resolved).items() if k not in NOT_TRAINING}

    def setting_differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """The training settings in which two configs differ (data and split aside): name → (self's, other's)."""
        mine, theirs = self.training_settings(), other.training_settings()
        return {name: (mine[name], theirs[name]) for name in mine if mine[name] != theirs[name]}

    def anchored(self) -> TrainConfig:
        """The config with its data, data root and teachers as absolute paths, as a run records it: resumed from
        another working directory, or by the app, it finds them."""
        def absolute(path: str) -> str:
            return str(Path(path).resolve())

        return replace(self, data=self.data if self.data == CIFAR10 else absolute(self.data),
                       data_root=absolute(self.data_root), teacher=",".join(map(absolute, self.teachers)))

    @property
    def teachers(self) -> list[str]:
        return [path.strip() for path in self.teacher.split(",") if path.strip()]

    @property
    def resolution(self) -> int:
        return input_resolution(self.stem, self.beta)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def read(cls, path: Path) -> TrainConfig:
        """A config from a JSON file; ValueError, naming the file, for one that cannot be read or is no config."""
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except OSError as e:
            raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
        except ValueError as e:  # not JSON, or not a config
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_dict(cls, values: Any) -> TrainConfig:
        """A config from JSON (config.json); ValueError for anything that is not one."""
        if not isinstance(values, dict):
            raise ValueError(f"a training config is a JSON object, not {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        try:
            return cls(**values)
        except TypeError as e:
            raise ValueError(f"malformed training config ({e})") from None


TRAIN_OPTIONS = tuple(f.name for f in fields(TrainConfig))


def flag(name: str) -> str:
    """The command-line option of a TrainConfig field: --no-NAME for a setting that is on unless turned off."""
    switched_off = next(f for f in fields(TrainConfig) if f.name == name).default is True
    return f"--{'no-' * switched_off}{name.replace('_', '-')}"


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, defaults: bool = True) -> None:
    """One --option per TrainConfig field, with its help; without defaults, only the options given are set."""
    for f in fields(TrainConfig):
        meta = dict(f.metadata)
        if f.type in ("bool", bool):
            parser.add_argument(flag(f.name), dest=f.name, action="store_false" if f.default else "store_true",
                                default=f.default if defaults else argparse.SUPPRESS,
                                help=f"do not {meta['help']}" if f.default else meta["help"])
            continue
        kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(str(f.type), str)
        parser.add_argument(flag(f.name), type=kind, default=f.default if defaults else argparse.SUPPRESS, **meta)
