"""The models there are to serve: shipped checkpoints and finished training runs, each with its card.

A model's key is stable and safe to put in a URL: a shipped checkpoint's file stem
(`mobilenet_v1_a1.0`) or `runs/<folder>` for a run. Cards are read through `mobilenet.checkpoint`
(digest checked, no code executed) and remembered per file version, so listing stays cheap.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from . import checkpoint, infer
from .checkpoint import CheckpointError, ModelCard

RUNS_DIR = Path(os.environ.get("MOBILENET_RUNS", "runs"))
RUN_PREFIX = "runs/"


@dataclass(frozen=True)
class ModelEntry:
    key: str
    path: Path
    card: ModelCard
    version: tuple[int, int]  # the file's (mtime_ns, size): a retrained best.pt is a new version

    def describe(self) -> str:
        """One line for people: architecture, input, classes, training and accuracy."""
        card, info = self.card, self.card.training
        parts = [f"α={card.alpha:g}", f"{card.stem} stem", f"{card.resolution}×{card.resolution} input",
                 f"{card.num_classes} classes"]
        if info.get("epochs"):
            epochs = info["epochs"]
            parts.append(f"trained {epochs} epoch{'' if epochs == 1 else 's'} ({info.get('recipe', '?')} recipe)")
        if info.get("val_acc") is not None:
            parts.append(f"validation accuracy {info['val_acc']:.1%}")
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
        default_key = Path(infer.DEFAULT_CHECKPOINT_NAME).stem
        return self.get(default_key) or (self.models[0] if self.models else None)


def finished_runs(runs_dir: Path) -> list[Path]:
    """Run folders whose training finished and left a best.pt, sorted by name."""
    if not runs_dir.is_dir():
        return []
    runs = []
    for folder in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        try:
            state = json.loads((folder / "status.json").read_text()).get("state")
        except (OSError, ValueError, AttributeError):
            continue
        if state == "finished" and (folder / "best.pt").is_file():
            runs.append(folder)
    return runs


@lru_cache(maxsize=128)
def _card(path: Path, version: tuple[int, int]) -> ModelCard:  # version: part of the cache key only
    return ModelCard.from_dict(checkpoint.read(path)["card"])


def shipped_order(name: str, card: ModelCard) -> tuple:
    """How shipped models are listed, in the app and in checkpoints/README.md: the default, then the widest."""
    return name != infer.DEFAULT_CHECKPOINT_NAME, -card.alpha, name


def list_models() -> Catalog:
    """Shipped checkpoints (the default first, then the widest) then finished runs under RUNS_DIR."""
    candidates = [(p.stem, p) for p in infer.shipped_checkpoints()]
    candidates += [(f"{RUN_PREFIX}{run.name}", run / "best.pt") for run in finished_runs(RUNS_DIR)]
    models, problems = [], []
    for key, path in candidates:
        try:
            stat = path.stat()
            version = (stat.st_mtime_ns, stat.st_size)
            models.append(ModelEntry(key, path, _card(path, version), version))
        except (OSError, CheckpointError) as e:
            problems.append(f"{key}: {e}")
    shipped = [m for m in models if not m.key.startswith(RUN_PREFIX)]
    shipped.sort(key=lambda m: shipped_order(m.path.name, m.card))
    return Catalog(tuple(shipped + models[len(shipped):]), tuple(problems))


# ---- shipping a trained model --------------------------------------------------------------------


def export(run: Path, out: Path, data_description: str | None = None) -> ModelCard:
    """A finished run's best weights as a shipped checkpoint: weights only, its card completed with the
    model's size and cost and a description of the data in words rather than a local path."""
    from .stats import model_stats

    if not (Path(run) / "report.json").exists():
        raise CheckpointError(f"{run} is not a finished run: it has no report.json")
    model, card = checkpoint.load(Path(run) / "best.pt")
    stats = model_stats(card.alpha, resolution=card.resolution, stem=card.stem, num_classes=card.num_classes)
    report = json.loads((Path(run) / "report.json").read_text())
    training = card.training | {
        "data": data_description or card.training.get("data"), "val_acc": report["accuracy"], "val_n": report["n"],
        "per_class": report["per_class"], "params": stats.params, "mult_adds": stats.mult_adds,
    }
    shipped = ModelCard(card.alpha, card.stem, card.resolution, card.classes, card.mean, card.std, training)
    checkpoint.save(out, model, shipped)
    return shipped


CARDS_START, CARDS_END = "<!-- cards: written by python -m mobilenet export -->", "<!-- /cards -->"


def write_cards(folder: Path) -> None:
    """Rewrite the cards section of folder/README.md from the checkpoints in the folder."""
    readme = folder / "README.md"
    text = readme.read_text() if readme.exists() else f"# Shipped models\n\n{CARDS_START}\n{CARDS_END}\n"
    head, rest = text.split(CARDS_START, 1)
    tail = rest.split(CARDS_END, 1)[1]
    shipped = [(p.name, ModelCard.from_dict(checkpoint.read(p)["card"])) for p in folder.glob("*.pt")]
    shipped.sort(key=lambda item: shipped_order(*item))
    overview = ["| model | α | parameters | mult-adds per image | validation accuracy |", "|---|---:|---:|---:|---:|"]
    for name, card in shipped:
        t = card.training
        overview.append(f"| `{name}` | {card.alpha:g} | {t.get('params', 0):,} | {t.get('mult_adds', 0) / 1e6:.2f} M "
                        f"| {t.get('val_acc', 0):.2%} |")
    sections = ["\n".join(overview)] + [card_markdown(name, card) for name, card in shipped]
    readme.write_text(f"{head}{CARDS_START}\n\n" + "\n\n".join(sections) + f"\n\n{CARDS_END}{tail}")


def card_markdown(name: str, card: ModelCard) -> str:
    """A model card for checkpoints/README.md, from the metadata stored in the checkpoint."""
    t = card.training
    per_class = " · ".join(f"{c} {a:.1%}" for c, a in t.get("per_class", {}).items())
    minutes = t.get("train_time_s", 0) / 60
    return "\n".join([
        f"### `{name}`",
        "",
        "| | |", "|---|---|",
        f"| architecture | MobileNet v1, α = {card.alpha:g}, {card.stem} stem, "
        f"{card.resolution}×{card.resolution} input, "
        f"{card.num_classes} classes |",
        f"| size and cost | {t.get('params', 0):,} parameters, "
        f"{t.get('mult_adds', 0) / 1e6:.2f} M mult-adds per image |",
        f"| data | {t.get('data')} |",
        f"| validation accuracy | {t.get('val_acc', 0):.2%} on {t.get('val_n', '?')} held-out images "
        f"(seeded, stratified; seed {t.get('seed')}){' with flip TTA' if t.get('flip_tta') else ''} |",
        f"| per-class accuracy | {per_class} |",
        f"| training | {t.get('epochs')} epochs, recipe `{t.get('recipe')}` (batch {t.get('batch_size')}, peak lr "
        f"{t.get('lr')}), {minutes:.0f} min on {t.get('device')} |",
        f"| normalisation | mean {card.mean}, std {card.std} |",
    ])
