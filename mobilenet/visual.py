"""Pictures for people: enlarged model inputs, Grad-CAM over a photo, and labelled grids of samples and mistakes."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .data import ImageSet
from .evaluate import Evaluation
from .intake import fit_square

CORRECT, WRONG = (0, 128, 0), (200, 0, 0)  # the seed's green and red titles
# A perceptually ordered dark-blue → red → yellow colour map (anchors of matplotlib's "inferno").
_INFERNO = np.array([(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21),
                     (250, 193, 39), (252, 255, 164)], dtype=np.float32)


def enlarge(image: Image.Image, side: int = 160) -> Image.Image:
    """A small model input scaled up with visible pixels, as the network sees it."""
    return image.resize((side, side), Image.Resampling.NEAREST)


def _interpolated(values: np.ndarray) -> np.ndarray:
    position = np.clip(values, 0, 1) * (len(_INFERNO) - 1)
    low = np.floor(position).astype(int).clip(max=len(_INFERNO) - 2)
    weight = (position - low)[..., None]
    return ((1 - weight) * _INFERNO[low] + weight * _INFERNO[low + 1]).round().astype(np.uint8)


_LEVELS = _interpolated(np.linspace(0, 1, 256))  # the map at every 8-bit level: a lookup per pixel, not arithmetic


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in 0..1 (any shape) → uint8 RGB of that shape plus a channel axis, at 256 levels."""
    return _LEVELS[(np.clip(values, 0, 1) * 255).round().astype(np.uint8)]


OVERLAY_SIDE = 256  # a class map's overlay, in pixels a side


def heatmap_overlay(photo: Image.Image, cam: torch.Tensor, side: int = OVERLAY_SIDE, opacity: float = 0.5
                    ) -> Image.Image:
    """A class activation map (R×R, 0..1) over the photo's centre square, the part the network saw.

    The colours cover the photo in proportion to the map, up to `opacity` where it peaks: where the map is
    zero the photo shows unchanged rather than darkened.
    """
    square = fit_square(photo, side)
    heat = F.interpolate(cam[None, None].float(), size=(side, side), mode="bilinear", align_corners=False)[0, 0]
    colours = Image.fromarray(colormap(heat.numpy()))
    cover = Image.fromarray((heat.clamp(0, 1).numpy() * opacity * 255).round().astype(np.uint8), "L")
    return Image.composite(colours, square, cover)


PHONE_WIDTH = 358  # the content width of a 390 px phone screen: two tiles side by side must fit


def labelled_tiles(images: torch.Tensor, titles: list[str], colours: list[tuple[int, int, int]], side: int = 96,
                   title_height: int = 18) -> list[Image.Image]:
    """Images (N×3×H×W uint8), each a tile under its title in its colour, on white, all of one size.

    Tiles rather than one grid picture: the page lays them out in rows that wrap, as many as the screen
    holds, each at its own size, so the titles stay readable on a phone instead of shrinking with the grid.
    """
    font = ImageFont.load_default(size=12)
    width = max([side + 8] + [int(font.getlength(t)) + 8 for t in titles])
    tiles = []
    for image, title, colour in zip(images, titles, colours):
        tile = Image.new("RGB", (width, side + title_height + 6), "white")
        ImageDraw.Draw(tile).text(((width - font.getlength(title)) / 2, 2), title, fill=colour, font=font)
        picture = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((side, side), Image.Resampling.NEAREST)
        tile.paste(picture, ((width - side) // 2, title_height))
        tiles.append(tile)
    return tiles


def sample_tiles(result: Evaluation, images: ImageSet, count: int = 64, seed: int = 0) -> list[Image.Image]:
    """The seed's picture: a seeded sample titled "prediction (truth)", green when right, red when wrong."""
    index = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count]
    predicted, truth = result.probs[index].argmax(1).tolist(), images.labels[index].tolist()
    titles = [f"{images.classes[p]} ({images.classes[t]})" for p, t in zip(predicted, truth)]
    return labelled_tiles(images.images[index], titles,
                          [CORRECT if p == t else WRONG for p, t in zip(predicted, truth)])


def mistakes_tiles(result: Evaluation, images: ImageSet, count: int = 16) -> list[Image.Image]:
    """The most confident mistakes, titled "prediction (truth) confidence"; none when there are none."""
    mistakes = result.mistakes(count)
    if not mistakes:
        return []
    titles = [f"{images.classes[p]} ({images.classes[t]}) {c:.0%}" for _, t, p, c in mistakes]
    index = torch.tensor([i for i, *_ in mistakes])
    return labelled_tiles(images.images[index], titles, [WRONG] * len(mistakes))
