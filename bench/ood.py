"""How well each shipped model's top-class probability tells CIFAR-10 images from foreign ones, and the
threshold the app uses for its "not sure" answer (mobilenet.ood).

    .venv/bin/python bench/ood.py [--data ../shared/data/cifar10-train-jpeg.zip] [--per-kind 100] [--write]
                                  [--twin runs/TWIN …] [--model checkpoints/NAME.pt …]

The validation split each model's run held out (seed 0, 5000 images, never trained on) is cut into two
seeded halves: the threshold keeps 95% of the first half; the second half and the foreign images measure
it (--model: only those models, the others' thresholds kept). A model trained on all the images held none out:
its validating twin (--twin, the run its card names) answers in its place on the twin's split
(mobilenet.ood.calibration), and the row says so; the foreign images flagged are the shipped model's own answers
under that threshold. Foreign images are generated
here (noise, blurred noise, flat colours, gradients, stripes, shapes, text, drawn faces) plus the three
real photos of tests/data/photos (a person, a coffee cup, a rocket). AUROC is given for the maximum
softmax probability (MSP, what the app uses) and the energy score (logsumexp of the logits). --write
stores the thresholds in checkpoints/ood.json.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mobilenet import checkpoint, data, ood
from mobilenet.catalog import shipped_checkpoints
from mobilenet.checkpoint import CheckpointError
from mobilenet.intake import load_model_input

PHOTOS = Path(__file__).resolve().parent.parent / "tests" / "data" / "photos"
FOREIGN_PHOTOS = ("person.jpg", "coffee.jpg", "rocket.jpg")
SIDE = 96  # generated at this size, then centre-cropped and resized to 32×32 as any upload is


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def noise(rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))


def blurred_noise(rng: np.random.Generator) -> Image.Image:
    return noise(rng).filter(ImageFilter.GaussianBlur(float(rng.uniform(2, 8))))


def flat(rng: np.random.Generator) -> Image.Image:
    return Image.new("RGB", (SIDE, SIDE), _colour(rng))


def gradient(rng: np.random.Generator) -> Image.Image:
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    t = (np.cos(angle) * x + np.sin(angle) * y)
    t = (t - t.min()) / (t.max() - t.min())
    a, b = np.array(_colour(rng)), np.array(_colour(rng))
    return Image.fromarray((a + (b - a) * t[..., None]).astype(np.uint8))


def stripes(rng: np.random.Generator) -> Image.Image:
    period, kind = int(rng.integers(4, 24)), int(rng.integers(3))
    y, x = np.mgrid[0:SIDE, 0:SIDE] // period
    mask = [x % 2, y % 2, (x + y) % 2][kind].astype(bool)  # vertical, horizontal, checkerboard
    image = np.where(mask[..., None], np.array(_colour(rng)), np.array(_colour(rng)))
    return Image.fromarray(image.astype(np.uint8))


def shapes(rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGB", (SIDE, SIDE), _colour(rng))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(1, 5)):
        box = sorted(rng.integers(0, SIDE, 2).tolist()), sorted(rng.integers(0, SIDE, 2).tolist())
        xy = (box[0][0], box[1][0], box[0][1] + 8, box[1][1] + 8)
        [draw.ellipse, draw.rectangle][int(rng.integers(2))](xy, fill=_colour(rng))
    return image


def text(rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGB", (SIDE, SIDE), _colour(rng))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=int(rng.integers(12, 30)))
    for row in range(0, SIDE, font.size + 4):
        word = "".join(rng.choice(list(string.ascii_letters), int(rng.integers(3, 9))))
        draw.text((int(rng.integers(0, 20)), row), word, fill=_colour(rng), font=font)
    return image


def face(rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGB", (SIDE, SIDE), _colour(rng))
    draw = ImageDraw.Draw(image)
    skin = tuple(int(v) for v in rng.integers([150, 100, 70], [255, 210, 180]))
    margin = int(rng.integers(4, 16))
    draw.ellipse((margin, margin, SIDE - margin, SIDE - margin), fill=skin, outline=(0, 0, 0), width=2)
    for eye_x in (0.35, 0.65):
        cx, cy = eye_x * SIDE, 0.42 * SIDE
        draw.ellipse((cx - 6, cy - 5, cx + 6, cy + 5), fill="white", outline="black")
        draw.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), fill="black")
    draw.arc((0.3 * SIDE, 0.5 * SIDE, 0.7 * SIDE, 0.75 * SIDE), 20, 160, fill=(120, 0, 0), width=3)
    return image


KINDS: dict[str, Callable[[np.random.Generator], Image.Image]] = {
    "noise": noise, "blurred noise": blurred_noise, "flat colour": flat, "gradient": gradient,
    "stripes": stripes, "shapes": shapes, "text": text, "drawn face": face,
}


def foreign_images(per_kind: int) -> dict[str, torch.Tensor]:
    """Each kind's images as the model sees them (N×3×32×32 uint8), generated from seed 0."""
    rng = np.random.default_rng(0)
    found = {name: torch.stack([load_model_input(make(rng), 32) for _ in range(per_kind)])
             for name, make in KINDS.items()}
    found["real photos"] = torch.stack([load_model_input(PHOTOS / name, 32) for name in FOREIGN_PHOTOS])
    return found


def auroc(inside: torch.Tensor, outside: torch.Tensor) -> float:
    """P(score of an in-distribution image > score of a foreign one), ties counting half."""
    greater = (inside[:, None] > outside[None, :]).double().mean()
    ties = (inside[:, None] == outside[None, :]).double().mean()
    return float(greater + ties / 2)


@torch.inference_mode()
def logits_of(model: torch.nn.Module, card: checkpoint.ModelCard, images: torch.Tensor) -> torch.Tensor:
    """The model's logits as it is served (its card's test-time augmentation), in passes sized for the CPU."""
    recipe = card.inference
    return torch.cat([recipe.logits(model.eval(), batch) for batch in recipe.batches(images, torch.device("cpu"))])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/data/cifar10-train-jpeg.zip")
    parser.add_argument("--per-kind", type=int, default=100)
    parser.add_argument("--write", action="store_true", help="store the thresholds in checkpoints/ood.json")
    parser.add_argument("--twin", action="append", type=Path, default=[], metavar="RUN",
                        help="the run folder of a validating twin that a model trained on all the images names")
    parser.add_argument("--model", action="append", type=Path, default=[], metavar="CHECKPOINT",
                        help="only this shipped model (repeatable); --write keeps the others' thresholds as they are")
    args = parser.parse_args()
    try:  # which model answers for each: itself, or the validating twin of one trained on all the images
        sources = {path: ood.calibration(path, args.twin) for path in args.model or shipped_checkpoints()}
    except CheckpointError as e:
        parser.error(str(e))
    torch.manual_seed(0)
    full = data.load(args.data, "train", 32)
    foreign = foreign_images(args.per_kind)
    everything_foreign = torch.cat(list(foreign.values()))
    thresholds = {}
    print(f"| model | threshold (MSP) | validation kept | AUROC MSP | AUROC energy | "
          f"{' | '.join(f'{k} flagged' for k in foreign)} |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(foreign))
    notes = []
    for path, source in sources.items():
        model, card = checkpoint.load(source.path)  # the shipped model, or its validating twin
        split = source.split or checkpoint.TrainingData(args.data, None)
        _, val = data.split_train_val(full, split.val_size, split.seed, split.subset)
        half = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))
        calibration, test = val.images[half[:len(val) // 2]], val.images[half[len(val) // 2:]]
        logits = {name: logits_of(model, card, images) for name, images in
                  (("calibration", calibration), ("test", test), ("foreign", everything_foreign))}
        if source.twin:  # the shipped model's own answers on the foreign images, under its twin's threshold
            shipped, shipped_card = checkpoint.load(path)
            logits["own foreign"] = logits_of(shipped, shipped_card, everything_foreign)
        msp = {name: values.softmax(1).amax(1) for name, values in logits.items()}
        energy = {name: values.logsumexp(1) for name, values in logits.items()}
        limit = ood.calibrate(msp["calibration"])
        thresholds[path.name] = {"threshold": round(limit, 4), **ood.identity(path)}
        if source.twin:
            thresholds[path.name]["calibrated_by"] = source.twin
            notes.append(f"`{path.name}` trained on all the images: its threshold, validation kept and AUROC are its "
                         f"validating twin's ({source.twin}) on the {len(val)} images the twin held out; the foreign "
                         f"images flagged are its own answers")
        kept = float((~ood.looks_foreign(msp["test"], limit)).float().mean())
        flagged, start = [], 0
        for images in foreign.values():
            scores = msp.get("own foreign", msp["foreign"])[start:start + len(images)]
            start += len(images)
            flagged.append(f"{float(ood.looks_foreign(scores, limit).float().mean()):.0%}")
        name = f"`{path.name}`" + (f" (twin `{source.twin}`)" if source.twin else "")
        print(f"| {name} | {limit:.3f} | {kept:.1%} | {auroc(msp['test'], msp['foreign']):.3f} | "
              f"{auroc(energy['test'], energy['foreign']):.3f} | {' | '.join(flagged)} |")
    for note in notes:
        print(f"\n{note}")
    if args.write:
        target = shipped_checkpoints()[0].parent / ood.CALIBRATION_FILE
        kept = json.loads(target.read_text()) if args.model and target.exists() else {}
        text = json.dumps(kept | thresholds, indent=2) + "\n"
        checkpoint.atomic_write(target, lambda f: f.write(text.encode()))  # a torn file would silence every model
        print(f"\nwrote {target}")


if __name__ == "__main__":
    main()
