"""Untrusted bytes, files and file objects → a safe RGB image → the model's uint8 input.

Every image the project reads, from a training folder or a stranger's upload, goes through
`decode`: an allow-list of formats, byte and pixel limits checked before any pixel is decoded,
EXIF orientation, transparency on white, and the odd modes (CMYK, 16-bit, palette) made RGB.
"""

from __future__ import annotations

import io
import math
import os
import re
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import BinaryIO, Union

import numpy as np
import torch
from PIL import Image, ImageOps

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
MAX_BYTES = 25 * 1024 * 1024
MAX_PIXELS = 60_000_000  # phone photos of up to about 50 megapixels pass
# Decoding takes 4 bytes a pixel, and twice that with transparency: up to about 0.5 GB at MAX_PIXELS (0.7 GB for a
# 32-bit or float TIFF). Images over LARGE_PIXELS (as they decode: a JPEG at its reduced scale) decode at most two at
# a time in a process, so that a crowd of large uploads waits its turn instead of adding up.
LARGE_PIXELS = 4_000_000
# A photo is one scan, a progressive JPEG about ten; each scan walks the whole image again (58 ms at MAX_PIXELS),
# and a repeated scan costs 112 bytes: a 1 MB file of them would take minutes to decode.
MAX_JPEG_SCANS = 64
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # not a stuffed 0xFF 0x00, a restart marker nor fill
# Pillow opens a file by reading its blocks (JPEG segments, PNG chunks, GIF extensions and their sub-blocks) in
# Python, keeping some of each: a photo has tens of them, a GIF with an XMP packet a few thousand, and 25 MB of empty
# ones took 6 to 19 s of CPU and up to 0.9 GB to open. They are counted, cheaply, before anything is opened.
MAX_BLOCKS = 10_000
# Pillow decodes a run-length-compressed BMP in Python, pixel by pixel: 0.2-0.5 s a megapixel, from a file of a few
# kilobytes. Real ones are small (icons, old screenshots).
MAX_RLE_PIXELS = 1_000_000
_large_decodes = threading.BoundedSemaphore(2)


def _fresh_turns() -> None:
    """In a forked process (data's decode workers): the places the parent's threads held were copied taken, and
    no thread there will give them back."""
    global _large_decodes
    _large_decodes = threading.BoundedSemaphore(2)


os.register_at_fork(after_in_child=_fresh_turns)
ORIENTATION = 0x0112  # the EXIF tag

ImageSource = Union[bytes, bytearray, str, os.PathLike, BinaryIO, Image.Image]


class ImageError(ValueError):
    """An image that cannot be used, with a message fit to show to the person who sent it."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int = MAX_BYTES
    max_pixels: int = MAX_PIXELS


def read_source(source: ImageSource, limits: Limits = Limits()) -> bytes | Image.Image:
    """Bytes of a path or file object (at most max_bytes), or the PIL image itself."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as f:
                data = f.read(limits.max_bytes + 1)
        except OSError as e:
            raise ImageError(f"cannot read {os.fspath(source)}: {e.strerror or e}") from None
    elif hasattr(source, "read"):
        data = source.read(limits.max_bytes + 1)
    else:
        raise ImageError(f"unsupported image source of type {type(source).__name__}")
    if len(data) > limits.max_bytes:
        raise ImageError(f"file is too large: more than {limits.max_bytes // (1024 * 1024)} MB")
    if not data:
        raise ImageError("file is empty")
    return data


def _check_size(size: tuple[int, int], limits: Limits) -> None:
    width, height = size
    if width < 1 or height < 1 or width * height > limits.max_pixels:
        raise ImageError(
            f"image is {width}×{height} pixels; at most {limits.max_pixels / 1e6:.0f} megapixels are accepted"
        )


def _open(data: bytes, limits: Limits) -> Image.Image:
    """Identify the format and read the header only: nothing is decoded before the size is checked."""
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.UnidentifiedImageError:
        raise ImageError("not a supported image: use JPEG, PNG, WebP, BMP, GIF or TIFF") from None
    except Image.DecompressionBombError:
        raise ImageError(f"image dimensions are too large: at most {limits.max_pixels / 1e6:.0f} megapixels are "
                         f"accepted") from None
    _check_size(img.size, limits)
    if img.format == "BMP" and img.tile and img.tile[0][0] == "bmp_rle" and img.width * img.height > MAX_RLE_PIXELS:
        raise ImageError(f"run-length-compressed BMPs of over {MAX_RLE_PIXELS / 1e6:.0f} megapixel are not accepted "
                         f"(they take seconds to decode): save it as PNG or JPEG")
    return img


_SIXTEEN_TO_EIGHT = np.floor(np.arange(65536) * (255 / 65535) + 0.5).astype(np.uint8)


def _to_8bit(img: Image.Image) -> Image.Image:
    """16- and 32-bit grayscale → L, scaled rather than clipped: 16-bit from its full range, 32-bit and float from
    their own finite range (NaN and infinities at its ends, a flat image mid-grey). The pixels of a transparency key
    (a 16-bit PNG's tRNS) become white. 16-bit goes by a table, in 8 and 16 bits; 32-bit makes one full-size
    copy in 32 bits at a time."""
    key = img.info.get("transparency")
    if img.mode.startswith("I;16"):
        out = Image.fromarray(_SIXTEEN_TO_EIGHT[np.asarray(img)], "L")
    else:
        lo, hi = img.getextrema()
        if not (math.isfinite(lo) and math.isfinite(hi)):  # a NaN or infinite pixel among them
            values = np.array(img, dtype=np.float32)
            values[~np.isfinite(values)] = np.nan
            lo, hi = (float(np.nanmin(values)), float(np.nanmax(values))) if not np.isnan(values).all() else (0, 0)
            del values
        if hi > lo:
            scale = 255 / (hi - lo)  # point() then clips: NaN and -inf to 0, +inf to 255
            out = img.point(lambda v: v * scale + (0.5 - lo * scale)).convert("L")
        else:
            out = Image.new("L", img.size, 128)
    if isinstance(key, (int, float)):  # its pixels on white, as _to_rgb puts every transparent image
        grey = np.array(out)
        grey[np.asarray(img) == key] = 255
        out = Image.fromarray(grey, "L")
    return out


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        img = _to_8bit(img)
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba)  # on white, as alpha_composite would, without its three more full-size copies
        return rgb
    return img if img.mode == "RGB" else img.convert("RGB")


def decodes_smaller(data: bytes) -> bool:
    """Whether decode's draft_side can make these bytes decode at a reduced scale: a JPEG (the signature PIL's
    JPEG plugin accepts), the one format whose decode depends on the size asked for."""
    return data[:3] == b"\xff\xd8\xff"


def jpeg_layout(data: bytes) -> tuple[int, int]:
    """(blocks, scans) of a JPEG's bytes, counted up to MAX_BLOCKS + 1 and MAX_JPEG_SCANS + 1, walked as the readers
    walk them: up to its first scan as Pillow does, in Python (each marker, fill and stray byte a block; segments
    skipped whole: an EXIF thumbnail has a scan of its own), then from marker to marker as libjpeg does, to its end."""
    blocks, scans, i = 0, 0, 2
    while i + 1 < len(data) and blocks <= MAX_BLOCKS and scans <= MAX_JPEG_SCANS:
        blocks += 1
        marker = data[i + 1]
        if data[i] != 0xFF:  # a stray byte: Pillow steps over it, libjpeg over all of them to the next marker
            found = _JPEG_MARKER.search(data, i) if scans else None
            if scans and found is None:
                break
            i = found.start() if found else i + 1
        elif marker == 0xFF:  # fill
            i += 1
        elif scans and marker == 0xD9:  # the end of the image (before its first scan, Pillow reads on)
            break
        elif not scans and 0x01 <= marker < 0xC0:  # a marker Pillow refuses
            break
        elif marker in (0x00, 0x01, 0xC8) or 0xD0 <= marker <= 0xD9 or (not scans and 0xF0 <= marker <= 0xFD):
            i += 2  # a marker without a length
        else:
            i += 2 + max(2, int.from_bytes(data[i + 2:i + 4], "big"))  # a length below 2 is read as none
            if marker == 0xDA:  # a scan: its header, then its data up to the next marker
                scans += 1
                found = _JPEG_MARKER.search(data, i)
                if found is None:
                    break
                i = found.start()
    return blocks, scans


def _png_blocks(data: bytes) -> int:
    """A PNG's chunks up to its end, counted up to MAX_BLOCKS + 1: Pillow reads each in Python, those after the image
    data too (a real 25 MB PNG, in libpng's 8 KB chunks, has about 3,200)."""
    blocks, i = 0, 8
    while i + 8 <= len(data) and blocks <= MAX_BLOCKS:
        blocks += 1
        if data[i + 4:i + 8] == b"IEND":
            break
        i += 12 + int.from_bytes(data[i:i + 4], "big")  # length, type, data, CRC
    return blocks


def _gif_blocks(data: bytes) -> int:
    """The extensions, their sub-blocks and stray bytes before a GIF's first image (Pillow skips a stray byte and
    reads on), counted up to MAX_BLOCKS + 1."""
    if len(data) < 13:
        return 0
    blocks, i = 0, 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)  # after the global colour table
    while i < len(data) and blocks <= MAX_BLOCKS and data[i] not in (0x2C, 0x3B):  # not an image, not the end
        if data[i] == 0x21:  # an extension: introducer, label, then its sub-blocks up to an empty one
            i += 2
            while i < len(data) and data[i] and blocks <= MAX_BLOCKS:
                blocks += 1
                i += 1 + data[i]
        blocks += 1
        i += 1
    return blocks


def layout(data: bytes) -> tuple[int, int]:
    """(blocks, scans): the blocks Pillow reads in Python to open these bytes, counted up to MAX_BLOCKS + 1 (none
    for formats it opens in C or by a fixed header), and a JPEG's scans (jpeg_layout; 0 for the other formats)."""
    if decodes_smaller(data):
        return jpeg_layout(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_blocks(data), 0
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif_blocks(data), 0
    return 0, 0


def _turn(size: tuple[int, int]) -> threading.BoundedSemaphore | nullcontext:
    """Held while an image of this size decodes: one of the two places for large images, or none."""
    return _large_decodes if size[0] * size[1] > LARGE_PIXELS else nullcontext()


def decode(source: ImageSource, draft_side: int | None = None, limits: Limits = Limits()) -> Image.Image:
    """A safe, upright RGB image, first frame of an animation.

    draft_side lets a JPEG decode at a reduced scale (1/2 to 1/8) whose sides stay at least draft_side:
    a 12-megapixel photo needed at 32×32 decodes as 0.2 megapixels.
    """
    data = read_source(source, limits)
    try:
        if isinstance(data, Image.Image):
            _check_size(data.size, limits)
            if data.mode == "RGB" and "transparency" not in data.info and data.getexif().get(ORIENTATION, 1) == 1:
                return data  # already upright RGB (one decode made it): a full-size copy would only cost memory
            with _turn(data.size):
                return _to_rgb(ImageOps.exif_transpose(data))  # a copy: the caller's image is left as it was
        blocks, scans = layout(data)
        if blocks > MAX_BLOCKS:
            raise ImageError(f"the file holds more than {MAX_BLOCKS:,} blocks of metadata (a photo has tens), which "
                             f"would take seconds and much memory to read: it is not opened")
        img = _open(data, limits)
        if scans > MAX_JPEG_SCANS:
            raise ImageError(f"the JPEG has more than {MAX_JPEG_SCANS} scans (a photo has one, a progressive one "
                             f"about ten), which would take minutes to decode")
        # A JPEG of several scans (progressive, or its colours one after another) keeps all its coefficients at
        # full size however small it is drafted (345 MB for a 0.7 MB file of 7,700×7,700): it counts at full size.
        counted = img.size if scans > 1 else None
        if draft_side and decodes_smaller(data):
            img.draft("RGB", (draft_side, draft_side))
        with _turn(counted or img.size):
            ImageOps.exif_transpose(img, in_place=True)  # decodes (the first frame) and turns it upright
            return _to_rgb(img)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError("the server has not enough memory free to decode this image now; try a smaller one") from None
    except Exception as e:  # PIL raises many types for malformed or truncated data
        if "truncated" in str(e):
            raise ImageError("the image file is truncated: it ends before the picture does (an interrupted "
                             "download or copy?)") from None
        raise ImageError("the image is corrupt: its data cannot be decoded") from None


def fit_square(img: Image.Image, side: int) -> Image.Image:
    """Centre-crop to a square and resize to side×side: the one resize used in training and inference."""
    width, height = img.size
    crop = min(width, height)
    left, top = (width - crop) // 2, (height - crop) // 2
    if crop == side and img.size == (side, side):
        return img
    box = (left, top, left + crop, top + crop)
    return img.resize((side, side), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)


def to_uint8_array(img: Image.Image) -> np.ndarray:
    """3×H×W uint8 array of an RGB image (numpy only: safe in forked decode workers)."""
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def load_model_array(source: ImageSource, side: int, limits: Limits = Limits()) -> np.ndarray:
    """Untrusted source → 3×side×side uint8 array, exactly as training data is prepared."""
    return to_uint8_array(fit_square(decode(source, draft_side=side, limits=limits), side))


def load_model_input(source: ImageSource, side: int, limits: Limits = Limits()) -> torch.Tensor:
    """Untrusted source → 3×side×side uint8 tensor, exactly as training data is prepared."""
    return torch.from_numpy(load_model_array(source, side, limits))
