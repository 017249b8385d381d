"""Shipping a trained model: a finished run's best weights as a checkpoint with its card, and the cards in
checkpoints/README.md.

A model trained on all the images (--val-size 0) has no validation accuracy of its own. It ships with its
validating twin's: a run with the identical settings that held a seeded split out, on which the recipe and
epoch count were chosen. The model itself is its run's last epoch, with no selection on any result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import checkpoint, data, settings
from .catalog import shipped_order
from .checkpoint import CheckpointError, ModelCard, TrainingData
from .config import RECIPES, setting_words
from .data import CIFAR10, DataError
from .evaluate import Evaluation
from .engines import int8_file
from .runs import RunFolder, RunReport
from .stats import ModelStats, model_stats

if TYPE_CHECKING:
    from .onnx_export import OnnxModel

TTA_WORDS = {"none": "", "flip": " with flip TTA", "flip-translate": " with flip and translation TTA"}


TWIN = "validated_by"  # the card's training entry of a model trained on all the images: its Twin
ALL_IMAGES = "trained on all the images, the held-out ones included; its last epoch, no selection"
TWIN_MARK = "†"  # beside an accuracy in the cards' overview: its validating twin's


@dataclass(frozen=True)
class Twin:
    """The validating twin of a model trained on all the images: its run's name and the split it held out."""

    run: str
    val_size: int
    seed: int
    this_model: str = ALL_IMAGES  # what the model that records this twin is

    @classmethod
    def of(cls, card: ModelCard) -> Twin | None:
        """The twin a card records, or None for a model validated on its own split."""
        given = card.training.get(TWIN)
        try:
            return cls(**given) if isinstance(given, dict) else None
        except TypeError:
            return None


def validating_twin(run: Path, twin: Path) -> tuple[Twin, Evaluation]:
    """`twin` as the validating twin of `run`, a finished run trained on all the images: the record for the card
    and the twin's validation at its last epoch (the model it vouches for is its run's last epoch: the twin's best
    epoch, chosen on its held-out images, would flatter it). The twin is a finished run that held out a validation
    split, trained on the same data (by fingerprint) with identical settings otherwise; CheckpointError naming
    what differs."""
    full, other = RunFolder(run), RunFolder(twin)
    report = _report(other)
    if report is None:
        raise CheckpointError(f"{other.name} cannot validate {full.name}: it is not a finished run (no report.json)")
    split = _card(other).data
    if split is None or not split.holds_out or report.validation is None:  # (a report of 0 images has none)
        raise CheckpointError(f"{other.name} cannot validate {full.name}: it held out no validation images either")
    mine, theirs = configs = full.read_config(), other.read_config()
    differences = [f"--{name.replace('_', '-')} {_value(a)} in {full.name}, {_value(b)} in {other.name}"
                   for name, (a, b) in mine.setting_differences(theirs).items()]
    # The same images however they are spelled: by fingerprint where both runs recorded one.
    fingerprints = [s.fingerprint for s in (_card(full).data, split) if s and s.fingerprint]
    sources = [f"fingerprint {f}" for f in fingerprints] if len(fingerprints) == 2 else [c.data for c in configs]
    if sources[0] != sources[1]:
        differences.insert(0, f"--data: {sources[0]} in {full.name}, {sources[1]} in {other.name}")
    if differences:
        raise CheckpointError(f"{other.name} is not the validating twin of {full.name}: besides --val-size, their "
                              f"training settings differ: {'; '.join(differences)}")
    return Twin(other.name, split.val_size, split.seed), _last_epoch(other, report)


def _last_epoch(twin: RunFolder, report: RunReport) -> Evaluation:
    """The twin's validation at its last epoch: recorded in its report, or, in a report from before that was,
    its best model's when the last epoch validated as high as the best one."""
    if report.last_epoch is not None:
        return report.last_epoch
    validated = [row for row in twin.read_metrics() if row.kind == "epoch" and row.val_acc is not None]
    best_model = report.validation  # a twin's report has one
    if validated and validated[-1].epoch == report.epochs and validated[-1].val_acc == best_model.accuracy:
        return best_model
    best = max(validated, key=lambda row: row.val_acc, default=None)
    raise CheckpointError(
        f"{twin.name}'s report gives its best validated epoch{f' ({best.epoch})' if best else ''}, not its last, and "
        f"predates reports that record the last one, whose accuracy is the one that vouches for a model that is its "
        f"run's last epoch: train the twin again with this version")


def _report(folder: RunFolder) -> RunReport | None:
    try:
        return folder.read_report()
    except ValueError as e:
        raise CheckpointError(f"cannot measure {folder.name}: {e}") from None


def _card(folder: RunFolder) -> ModelCard:
    return checkpoint.read_card(folder.best)


def _value(value: Any) -> str:
    return "none" if value in (None, "") else str(value)


def export(run: Path, out: Path, data_description: str | None = None, validated_by: Path | None = None,
           overwrite: bool = False) -> ModelCard:
    """A finished run's best weights as a shipped checkpoint: weights only, its card completed with the
    model's size and cost and a description of the data in words rather than a local path. An existing `out` is
    replaced only with overwrite.

    A run trained on all the images needs its validating twin (validated_by), whose validation accuracy the card
    gives and names; a run that held out its own split refuses one."""
    checkpoint.refuse_to_replace(out, overwrite)
    folder = RunFolder(run)
    report = _report(folder)
    if report is None:
        raise CheckpointError(f"{folder.name} is not a finished run: it has no report.json")
    model, card = checkpoint.load(folder.best)
    twin: dict[str, Any] = {}
    if not card.held_out:
        if validated_by is None:
            raise CheckpointError(f"{folder.name} trained on all the images and held none out, so it has no validation "
                                  f"accuracy of its own: give the run that validated its recipe with --validated-by "
                                  f"RUN (identical settings but a validation split, e.g. --val-size 5000)")
        record, measured = validating_twin(folder.path, Path(validated_by))
        twin = {TWIN: asdict(record)}
    elif validated_by is not None:
        raise CheckpointError(f"{folder.name} held out its own validation split and is measured on it: "
                              f"--validated-by is for a run trained on all the images (--val-size 0)")
    else:
        measured = report.validation
    if measured is None:
        raise CheckpointError(f"{folder.name} held out no images (too few for a validation split), so it has no "
                              f"validation accuracy to ship with")
    stats = _size(card)
    training = card.training | {
        "data": data_description or card.training.get("data"), "val_acc": measured.accuracy, "val_n": measured.n,
        "per_class": measured.per_class, "params": stats.params, "mult_adds": stats.mult_adds,
    } | twin
    # The source by its file name, not this machine's path; its fingerprint finds it on any other.
    data = card.data and replace(card.data, source=Path(card.data.source).name)
    shipped = replace(card, data=data, training=training)
    checkpoint.save(out, model, shipped)
    return shipped


def record_data(path: Path, source: str) -> ModelCard:
    """Record in a shipped model's card which data it was trained on: the source by its file name and its
    fingerprint, with the split the card already records. Only the card changes; the weights and their digest
    stay, so the int8 model made from them still matches."""
    card = checkpoint.read_card(path)
    found = data.fingerprint(source)
    if found is None:
        raise DataError(f"{source} does not exist")
    data.check_trainable(source)
    if (classes := data.training_classes(source)) != card.classes:
        raise DataError(f"{source} is not the data {path.name} was trained on: its classes are {', '.join(classes)}; "
                        f"the model's are {', '.join(card.classes)}")
    split = card.data or TrainingData(source, None)
    if split.fingerprint and split.fingerprint != found:
        raise DataError(f"{source} is not the data {path.name} was trained on (fingerprint {found}, its card says "
                        f"{split.fingerprint})")
    name = source if source == CIFAR10 else Path(source).resolve().name  # "." by its name
    recorded = replace(card, data=replace(split, source=name, fingerprint=found))
    checkpoint.replace_card(path, recorded)
    return recorded


CARDS_START, CARDS_END = "<!-- cards: written by python -m mobilenet export -->", "<!-- /cards -->"


def keeps_cards(folder: Path) -> bool:
    """Whether the commands that change a model rewrite folder/README.md's cards: the checkpoints folder the app
    serves, or a README that has a cards section already; never another project's README."""
    readme = folder / "README.md"
    if folder.resolve() == settings.checkpoint_dir().resolve():
        return True
    try:
        return CARDS_START in readme.read_text()
    except (OSError, UnicodeDecodeError):
        return False


def write_cards(folder: Path) -> list[str]:
    """Rewrite the cards section of folder/README.md from the checkpoints in the folder (a README without one gets
    one at its end); returns what was left out and why: .pt files that are no checkpoint, int8 files refused."""
    readme = folder / "README.md"
    text = readme.read_text() if readme.exists() else "# Shipped models\n"
    head, found, rest = text.partition(CARDS_START)
    if not found:
        head, rest = text.rstrip("\n") + "\n\n", CARDS_END + "\n"
    tail = rest.partition(CARDS_END)[2] if CARDS_END in rest else rest  # a lone start marker: nothing of it lost
    shipped, left_out = [], []
    for path in sorted(folder.glob("*.pt")):
        try:
            payload = checkpoint.read(path)
            card = ModelCard.from_dict(payload["card"])
        except CheckpointError as e:
            left_out.append(f"{path.name}: {e}")
            continue
        try:
            int8 = int8_model(path, payload)
        except CheckpointError as e:  # an OnnxError too
            int8 = None
            left_out.append(f"{int8_file(path).name}: {e}")
        shipped.append((path.name, card, int8))
    shipped.sort(key=lambda item: shipped_order(item[0], item[1]))
    overview = ["| model | α | parameters | mult-adds per image | validation accuracy | int8 (ONNX Runtime) |",
                "|---|---:|---:|---:|---:|---:|"]
    for name, card, int8 in shipped:
        size = _size(card)
        overview.append(f"| `{name}` | {card.alpha:g} | {size.params:,} | {size.mult_adds / 1e6:.2f} M "
                        f"| {_accuracy(card)}{TWIN_MARK if Twin.of(card) else ''} | {int8_cell(int8)} |")
    if any(Twin.of(card) for _, card, _ in shipped):
        overview += ["", f"{TWIN_MARK} Measured on its validating twin: the identical recipe with a seeded validation "
                         f"split held out. The model itself trained on all the images, those included, and is its "
                         f"last epoch, with no selection (its card names the twin)."]
    sections = ["\n".join(overview)] + [card_markdown(name, card, int8) for name, card, int8 in shipped]
    text = f"{head}{CARDS_START}\n\n" + "\n\n".join(sections) + f"\n\n{CARDS_END}{tail}"
    checkpoint.atomic_write(readme, lambda f: f.write(text.encode()))
    return left_out


def _size(card: ModelCard) -> ModelStats:
    """Its parameters and mult-adds, from its architecture (a card copied from a run does not record them)."""
    return model_stats(card.alpha, resolution=card.resolution, stem=card.stem, num_classes=card.num_classes)


def _accuracy(card: ModelCard) -> str:
    """Its validation accuracy, or a dash for a model that was never validated (a run's best.pt copied here)."""
    return "–" if card.val_acc is None else f"{card.val_acc:.2%}"


def int8_cell(model: OnnxModel | None) -> str:
    """The overview's int8 column: accuracy on held-out images, or, measured on training images, only the loss."""
    if model is None:
        return "–"
    q = model.quantization
    if q.held_out:
        return f"{q.int8_accuracy:.2%}"
    return f"{_points(q.loss)} points against fp32 on training images"


def _points(loss: float) -> str:
    """int8's change against fp32, signed, in points: none reads 0.00 (not -0.00)."""
    change = round(-loss * 100, 2)
    return f"{change:+.2f}" if change else "0.00"


def int8_model(path: Path, payload: dict) -> OnnxModel | None:
    """The checked int8 model beside a checkpoint (payload: the checkpoint's, as read), if there is one."""
    if not int8_file(path).is_file():
        return None
    try:
        from .onnx_export import read
    except ImportError:  # onnx and onnxruntime are optional
        raise CheckpointError(f"{int8_file(path).name} is not checked here: the onnx package is not installed "
                              f"(pip install onnx onnxruntime)") from None

    return read(int8_file(path), ModelCard.from_dict(payload["card"]), payload["digest"])


def int8_markdown(model: OnnxModel) -> str:
    q = model.quantization
    if q.held_out:
        measured, calibrated = f"validation accuracy on the same {q.images} images", "never validation ones"
    else:
        measured = (f"accuracy on {q.images} training images of this model (a seeded sample: it held none out, so "
                    f"this measures the rounding, not new images)")
        calibrated = "none of those measured on"
    return (f"| int8 model | `{model.path.name}` ({len(model.model) / 1e6:.1f} MB, ONNX Runtime): "
            f"{q.int8_accuracy:.2%} {measured}, against {q.fp32_accuracy:.2%} "
            f"for the same graph in fp32 ({_points(q.loss)} points); {q.method}; calibrated on "
            f"{q.calibration_images} training images (seed {q.calibration_seed}), {calibrated} |")


def _recipe_changes(training: dict) -> str:
    """What a run changed in its recipe or added to it, as the card's training line says it (nothing for a plain
    run; batch size, peak lr and epochs are on the line already)."""
    changes = []
    if training.get("teachers"):
        changes.append(f"distilled with weight {training.get('distill')} from {', '.join(training['teachers'])}")
    recipe = RECIPES.get(training.get("recipe"))
    for key in ("label_smoothing", "weight_decay", "cutout", "ema"):
        if recipe is not None and training.get(key) is not None and training[key] != getattr(recipe, key):
            changes.append(setting_words(key, training[key]))
    return "".join(f"; {change}" for change in changes)


def _where_trained(training: dict) -> str:
    """How long it trained and on what: each device in turn when a run moved (a GPU lease, then this CPU)."""
    minutes, devices = (training.get("train_time_s") or 0) / 60, training.get("devices", [])
    if len({name for name, _, _ in devices}) < 2:  # its one device (a run stopped on a new one trained none there)
        return f"{minutes:.0f} min on {devices[0][0] if devices else training.get('device')}"
    return f"{minutes:.0f} min: " + ", then ".join(
        f"{epochs} epoch{'s' * (epochs != 1)} on {name} ({seconds / 60:.0f} min)" for name, epochs, seconds in devices)


def card_markdown(name: str, card: ModelCard, int8: OnnxModel | None = None) -> str:
    """A model card for checkpoints/README.md, from the metadata stored in the checkpoint (and its int8 model)."""
    t, size = card.training, _size(card)
    per_class = " · ".join(f"{c} {a:.1%}" for c, a in t.get("per_class", {}).items() if a is not None)
    fingerprint = f"; fingerprint `{card.data.fingerprint}`" if card.data and card.data.fingerprint else ""
    twin = Twin.of(card)
    validated = "" if twin is None else (
        f", measured on run `{twin.run}` at its last epoch, the identical recipe with them held out; this model "
        f"trained on all the images, these included, and is its last epoch, with no selection")
    return "\n".join([
        f"### `{name}`",
        "",
        "| | |", "|---|---|",
        f"| architecture | MobileNet v1, α = {card.alpha:g}, {card.stem} stem, "
        f"{card.resolution}×{card.resolution} input, "
        f"{card.num_classes} classes |",
        f"| size and cost | {size.params:,} parameters, {size.mult_adds / 1e6:.2f} M mult-adds per image |",
        f"| data | {t.get('data')}{fingerprint} |",
        f"| validation accuracy | {_accuracy(card)} on {t.get('val_n', '?')} held-out images "
        f"(seeded, stratified; seed {t.get('seed')}){TTA_WORDS[card.tta]}{validated} |",
        f"| per-class accuracy | {per_class} |",
        f"| training | {t.get('epochs')} epochs, recipe `{t.get('recipe')}` (batch {t.get('batch_size')}, peak lr "
        f"{t.get('lr')}{_recipe_changes(t)}), {_where_trained(t)} |",
        f"| normalisation | mean {card.mean}, std {card.std} |",
        *([int8_markdown(int8)] if int8 else []),
    ])
