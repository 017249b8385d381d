"""Shipping a trained model: a finished run's best weights as a checkpoint with its card, and the cards in
checkpoints/README.md."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import checkpoint, data
from .catalog import shipped_order
from .checkpoint import CheckpointError, ModelCard, TrainingData
from .data import DataError
from .engines import int8_file
from .runs import RunFolder
from .stats import model_stats

if TYPE_CHECKING:
    from .onnx_export import OnnxModel

TTA_WORDS = {"none": "", "flip": " with flip TTA", "flip-translate": " with flip and translation TTA"}


def export(run: Path, out: Path, data_description: str | None = None) -> ModelCard:
    """A finished run's best weights as a shipped checkpoint: weights only, its card completed with the
    model's size and cost and a description of the data in words rather than a local path."""
    folder = RunFolder(run)
    report = folder.read_report()
    if report is None:
        raise CheckpointError(f"{folder.name} is not a finished run: it has no report.json")
    model, card = checkpoint.load(folder.best)
    stats = model_stats(card.alpha, resolution=card.resolution, stem=card.stem, num_classes=card.num_classes)
    training = card.training | {
        "data": data_description or card.training.get("data"), "val_acc": report["accuracy"], "val_n": report["n"],
        "per_class": report["per_class"], "params": stats.params, "mult_adds": stats.mult_adds,
    }
    # The source by its file name, not this machine's path; its fingerprint finds it on any other.
    data = card.data and replace(card.data, source=Path(card.data.source).name)
    shipped = replace(card, data=data, training=training)
    checkpoint.save(out, model, shipped)
    return shipped


def record_data(path: Path, source: str) -> ModelCard:
    """Record in a shipped model's card which data it was trained on: the source by its file name and its
    fingerprint, with the split the card already records. Only the card changes; the weights and their digest
    stay, so the int8 model made from them still matches."""
    card = ModelCard.from_dict(checkpoint.read(path)["card"])
    found = data.fingerprint(source)
    if found is None:
        raise DataError(f"{source} does not exist")
    split = card.data or TrainingData(source, None)
    if split.fingerprint and split.fingerprint != found:
        raise DataError(f"{source} is not the data {path.name} was trained on (fingerprint {found}, its card says "
                        f"{split.fingerprint})")
    name = source if source == "cifar10" else Path(source).name
    recorded = replace(card, data=replace(split, source=name, fingerprint=found))
    checkpoint.replace_card(path, recorded)
    return recorded


CARDS_START, CARDS_END = "<!-- cards: written by python -m mobilenet export -->", "<!-- /cards -->"


def write_cards(folder: Path) -> None:
    """Rewrite the cards section of folder/README.md from the checkpoints in the folder."""
    readme = folder / "README.md"
    text = readme.read_text() if readme.exists() else f"# Shipped models\n\n{CARDS_START}\n{CARDS_END}\n"
    head, rest = text.split(CARDS_START, 1)
    tail = rest.split(CARDS_END, 1)[1]
    shipped = [(p.name, ModelCard.from_dict(payload["card"]), int8_model(p, payload))
               for p in folder.glob("*.pt") for payload in [checkpoint.read(p)]]
    shipped.sort(key=lambda item: shipped_order(item[0], item[1]))
    overview = ["| model | α | parameters | mult-adds per image | validation accuracy | int8 (ONNX Runtime) |",
                "|---|---:|---:|---:|---:|---:|"]
    for name, card, int8 in shipped:
        t = card.training
        quantized = "–" if int8 is None else f"{int8.quantization.int8_accuracy:.2%}"
        overview.append(f"| `{name}` | {card.alpha:g} | {t.get('params', 0):,} | {t.get('mult_adds', 0) / 1e6:.2f} M "
                        f"| {t.get('val_acc', 0):.2%} | {quantized} |")
    sections = ["\n".join(overview)] + [card_markdown(name, card, int8) for name, card, int8 in shipped]
    readme.write_text(f"{head}{CARDS_START}\n\n" + "\n\n".join(sections) + f"\n\n{CARDS_END}{tail}")


def int8_model(path: Path, payload: dict) -> OnnxModel | None:
    """The checked int8 model beside a checkpoint (payload: the checkpoint's, as read), if there is one."""
    if not int8_file(path).is_file():
        return None
    from .onnx_export import read

    return read(int8_file(path), ModelCard.from_dict(payload["card"]), payload["digest"])


def int8_markdown(model: OnnxModel) -> str:
    q = model.quantization
    return (f"| int8 model | `{model.path.name}` ({len(model.model) / 1e6:.1f} MB, ONNX Runtime): "
            f"{q.int8_accuracy:.2%} validation accuracy on the same {q.images} images, against {q.fp32_accuracy:.2%} "
            f"for the same graph in fp32 ({-q.loss * 100:+.2f} points); {q.method}; calibrated on "
            f"{q.calibration_images} training images (seed {q.calibration_seed}), never validation ones |")


def card_markdown(name: str, card: ModelCard, int8: OnnxModel | None = None) -> str:
    """A model card for checkpoints/README.md, from the metadata stored in the checkpoint (and its int8 model)."""
    t = card.training
    per_class = " · ".join(f"{c} {a:.1%}" for c, a in t.get("per_class", {}).items())
    minutes = t.get("train_time_s", 0) / 60
    fingerprint = f"; fingerprint `{card.data.fingerprint}`" if card.data and card.data.fingerprint else ""
    return "\n".join([
        f"### `{name}`",
        "",
        "| | |", "|---|---|",
        f"| architecture | MobileNet v1, α = {card.alpha:g}, {card.stem} stem, "
        f"{card.resolution}×{card.resolution} input, "
        f"{card.num_classes} classes |",
        f"| size and cost | {t.get('params', 0):,} parameters, "
        f"{t.get('mult_adds', 0) / 1e6:.2f} M mult-adds per image |",
        f"| data | {t.get('data')}{fingerprint} |",
        f"| validation accuracy | {t.get('val_acc', 0):.2%} on {t.get('val_n', '?')} held-out images "
        f"(seeded, stratified; seed {t.get('seed')}){TTA_WORDS[card.tta]} |",
        f"| per-class accuracy | {per_class} |",
        f"| training | {t.get('epochs')} epochs, recipe `{t.get('recipe')}` (batch {t.get('batch_size')}, peak lr "
        f"{t.get('lr')}), {minutes:.0f} min on {t.get('device')} |",
        f"| normalisation | mean {card.mean}, std {card.std} |",
        *([int8_markdown(int8)] if int8 else []),
    ])
