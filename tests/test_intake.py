"""Image intake: odd and hostile images, generated here, are made usable or refused with a clear message."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from helpers import png
from PIL import Image

from mobilenet.intake import ImageError, Limits, decode, load_model_input

ROOT = Path(__file__).resolve().parent.parent

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def solid(color: tuple, size: tuple[int, int] = (8, 8), mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, color)


def animated(fmt: str, **options) -> bytes:
    return encode(solid(RED, (16, 16)), fmt, save_all=True, append_images=[solid(BLUE, (16, 16))], duration=100,
                  **options)


def palette_with_transparency(fmt: str) -> bytes:
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (4, 0, 8, 8))  # right half red, left half index 0, which is transparent
    return encode(img, fmt, transparency=0)


def jpeg_with_size(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims width×height."""
    data = bytearray(encode(solid(RED, (16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_with_size(width: int, height: int) -> bytes:
    data = bytearray(encode(solid(RED, (16, 16)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # logical screen
    descriptor = data.index(b"\x2c")
    data[descriptor + 5:descriptor + 9] = struct.pack("<HH", width, height)  # the first frame
    return bytes(data)


def bmp_with_size(width: int, height: int) -> bytes:
    data = bytearray(encode(solid(RED, (16, 16)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def gray16(fmt: str) -> bytes:
    return encode(Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16)), fmt)


def gray16_keyed() -> bytes:
    """0, 40000 (the tRNS key: transparent) and 65535."""
    image = Image.fromarray(np.array([[0, 40000, 65535]], dtype=np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=40000)
    return buffer.getvalue()


def rgb16_png(alpha: bool) -> bytes:
    pixel = (0x8000, 0xFFFF, 0x0000) + ((0,) if alpha else ())
    return png(1, 1, 16, 6 if alpha else 2, b"\0" + struct.pack(f">{len(pixel)}H", *pixel))


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def corrupt_png() -> bytes:
    data = bytearray(encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)), "PNG"))
    data[60:80] = bytes(20)
    return bytes(data)


def cmyk(fmt: str) -> bytes:
    return encode(solid((0, 255, 255, 0), (16, 16), "CMYK"), fmt)  # no cyan, full magenta and yellow: red


def noise_jpeg(size: tuple[int, int]) -> bytes:
    return encode(Image.fromarray(np.random.default_rng(1).integers(0, 255, (size[1], size[0], 3), np.uint8)), "JPEG")


def pixels(img: Image.Image) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in p) for p in np.asarray(img).reshape(-1, 3)]


def close(a: tuple, b: tuple, tolerance: int = 2) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b))


def all_close(color: tuple, tolerance: int = 2) -> Callable[[Image.Image], bool]:
    return lambda img: all(close(p, color, tolerance) for p in pixels(img))


# (name, bytes, check on the decoded RGB image)
ACCEPTED = [
    ("1x1 png", lambda: encode(solid(RED, (1, 1)), "PNG"), all_close(RED, 0)),
    ("1x1 jpeg", lambda: encode(solid(RED, (1, 1)), "JPEG"), all_close(RED, 4)),
    ("1x1 gif", lambda: encode(solid(RED, (1, 1)), "GIF"), all_close(RED, 0)),
    ("bmp", lambda: encode(solid(BLUE), "BMP"), all_close(BLUE, 0)),
    ("webp", lambda: encode(solid(GREEN), "WEBP", lossless=True), all_close(GREEN, 0)),
    ("tiff", lambda: encode(solid(GREEN), "TIFF"), all_close(GREEN, 0)),
    ("wide 10000x1", lambda: encode(solid(RED, (10000, 1)), "PNG"), lambda img: img.size == (10000, 1)),
    ("tall 1x10000", lambda: encode(solid(RED, (1, 10000)), "PNG"), lambda img: img.size == (1, 10000)),
    ("wide jpeg 4000x8", lambda: encode(solid(RED, (4000, 8)), "JPEG"), lambda img: img.height == 8),
    ("rgba half transparent", lambda: encode(solid((255, 0, 0, 128), mode="RGBA"), "PNG"),
     all_close((255, 127, 127), 1)),
    ("rgba fully transparent black", lambda: encode(solid((0, 0, 0, 0), mode="RGBA"), "PNG"), all_close(WHITE, 0)),
    ("rgba webp", lambda: encode(solid((0, 0, 0, 0), mode="RGBA"), "WEBP", lossless=True), all_close(WHITE, 0)),
    ("LA transparent", lambda: encode(solid((0, 0), mode="LA"), "PNG"), all_close(WHITE, 0)),
    ("LA opaque", lambda: encode(solid((0, 255), mode="LA"), "PNG"), all_close(BLACK, 0)),
    ("palette png with transparency", lambda: palette_with_transparency("PNG"),
     lambda img: img.getpixel((1, 1)) == WHITE and img.getpixel((6, 1)) == RED),
    ("palette gif with transparency", lambda: palette_with_transparency("GIF"),
     lambda img: img.getpixel((1, 1)) == WHITE and img.getpixel((6, 1)) == RED),
    ("animated gif", lambda: animated("GIF"), all_close(RED, 0)),
    ("animated png", lambda: animated("PNG"), all_close(RED, 0)),
    ("animated webp", lambda: animated("WEBP", lossless=True), all_close(RED, 0)),
    ("cmyk jpeg", lambda: cmyk("JPEG"), all_close(RED, 6)),
    ("cmyk tiff", lambda: cmyk("TIFF"), all_close(RED, 0)),
    ("16-bit gray png", lambda: gray16("PNG"), lambda img: pixels(img) == [(0, 0, 0), (100, 100, 100), WHITE]),
    ("16-bit gray tiff", lambda: gray16("TIFF"), lambda img: pixels(img) == [(0, 0, 0), (100, 100, 100), WHITE]),
    ("16-bit rgb png", lambda: rgb16_png(alpha=False), lambda img: pixels(img) == [(128, 255, 0)]),
    ("16-bit rgba png transparent", lambda: rgb16_png(alpha=True), all_close(WHITE, 0)),
    ("32-bit float tiff", lambda: encode(Image.fromarray(np.array([[-1.0, 0.0, 1.0]], np.float32)), "TIFF"),
     lambda img: pixels(img) == [(0, 0, 0), (128, 128, 128), WHITE]),
    ("float tiff with nan and inf", lambda: encode(Image.fromarray(np.array([[np.nan, 0.2, 1.0, np.inf]], np.float32)),
                                                    "TIFF"),
     lambda img: pixels(img) == [(0, 0, 0), (0, 0, 0), WHITE, WHITE]),
    ("flat float tiff", lambda: encode(Image.fromarray(np.full((2, 2), 3.0, np.float32)), "TIFF"),
     all_close((128, 128, 128), 0)),
    ("16-bit gray png with a transparency key", gray16_keyed, lambda img: pixels(img) == [(0, 0, 0), WHITE, WHITE]),
    ("grayscale jpeg", lambda: encode(solid(90, mode="L"), "JPEG"), all_close((90, 90, 90), 1)),
    ("1-bit png", lambda: encode(Image.new("1", (8, 8), 1), "PNG"), all_close(WHITE, 0)),
]

# (name, bytes, words the message must contain)
REFUSED = [
    ("empty", lambda: b"", "empty"),
    ("text", lambda: b"just some words\n", "not a supported image"),
    ("html", lambda: b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>", "not a supported image"),
    ("svg", lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10"/></svg>',
     "not a supported image"),
    ("pdf", lambda: b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "not a supported image"),
    ("eps", lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "not a supported image"),
    ("ico", lambda: encode(solid(RED, (16, 16)), "ICO"), "not a supported image"),
    ("random bytes", lambda: np.random.default_rng(2).integers(0, 255, 4096, np.uint8).tobytes(),
     "not a supported image"),
    ("truncated jpeg", lambda: truncated(noise_jpeg((64, 64))), "truncated"),
    ("truncated png", lambda: truncated(encode(solid(RED, (64, 64)), "PNG")), "truncated"),
    ("png signature only", lambda: b"\x89PNG\r\n\x1a\n", "not a supported image"),
    ("corrupt png", corrupt_png, "corrupt"),
    ("png bomb 9000x9000", lambda: png(9000, 9000), "megapixels"),
    ("png bomb 10000x10000", lambda: png(10000, 10000), "megapixels"),
    ("png bomb 100000x100000", lambda: png(100_000, 100_000), "too large: at most 60 megapixels"),
    ("jpeg claiming 65000x65000", lambda: jpeg_with_size(65000, 65000), "too large: at most 60 megapixels"),
    ("jpeg claiming 9000x9000", lambda: jpeg_with_size(9000, 9000), "megapixels"),
    ("gif claiming 65535x65535", lambda: gif_with_size(65535, 65535), "too large: at most 60 megapixels"),
    ("bmp claiming 30000x30000", lambda: bmp_with_size(30000, 30000), "too large: at most 60 megapixels"),
]


@pytest.mark.parametrize("name,make,check", ACCEPTED, ids=[case[0] for case in ACCEPTED])
def test_odd_images_are_made_rgb(name: str, make: Callable[[], bytes], check: Callable[[Image.Image], bool]) -> None:
    img = decode(make())
    assert img.mode == "RGB"
    assert check(img), pixels(img)[:8]
    assert load_model_input(make(), 32).shape == (3, 32, 32)


@pytest.mark.parametrize("name,make,words", REFUSED, ids=[case[0] for case in REFUSED])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_hostile_images_are_refused_clearly(name: str, make: Callable[[], bytes], words: str) -> None:
    data = make()
    with pytest.raises(ImageError, match=words) as refused:
        load_model_input(data, 32)
    assert "Error" not in str(refused.value) and "bytes not processed" not in str(refused.value)  # said for people


def quadrants(size: tuple[int, int] = (64, 48)) -> Image.Image:
    img = Image.new("RGB", size)
    w, h = size
    for (x, y), color in zip([(0, 0), (1, 0), (0, 1), (1, 1)], [RED, GREEN, BLUE, WHITE]):
        img.paste(color, (x * w // 2, y * h // 2, (x + 1) * w // 2, (y + 1) * h // 2))
    return img


# EXIF orientation → where a displayed pixel (x, y) comes from in the stored w×h image, per the EXIF spec.
STORED_POSITION = {
    1: lambda x, y, w, h: (x, y),
    2: lambda x, y, w, h: (w - 1 - x, y),
    3: lambda x, y, w, h: (w - 1 - x, h - 1 - y),
    4: lambda x, y, w, h: (x, h - 1 - y),
    5: lambda x, y, w, h: (y, x),
    6: lambda x, y, w, h: (y, h - 1 - x),
    7: lambda x, y, w, h: (w - 1 - y, h - 1 - x),
    8: lambda x, y, w, h: (w - 1 - y, x),
}


@pytest.mark.parametrize("orientation", sorted(STORED_POSITION))
def test_exif_orientation_is_applied(orientation: int) -> None:
    stored = quadrants()
    exif = Image.Exif()
    exif[0x0112] = orientation
    shown = decode(encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
    w, h = stored.size
    assert shown.size == ((h, w) if orientation >= 5 else (w, h))
    for x in (shown.width // 4, shown.width * 3 // 4):
        for y in (shown.height // 4, shown.height * 3 // 4):
            expected = stored.getpixel(STORED_POSITION[orientation](x, y, w, h))
            assert close(shown.getpixel((x, y)), expected, 12), (orientation, x, y)


def test_every_kind_of_source_gives_the_same_input(tmp_path: Path) -> None:
    data = encode(quadrants(), "PNG")
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    expected = load_model_input(data, 32)
    for source in (bytearray(data), memoryview(data), path, str(path), io.BytesIO(data), Image.open(io.BytesIO(data))):
        assert load_model_input(source, 32).equal(expected)


def test_an_rgb_image_with_a_transparency_key_gives_the_same_input_as_an_image_or_as_bytes() -> None:
    """An RGB PNG's keyed colour opens as plain RGB with the key in its info: given as a PIL image it was taken as
    it was (transparent pixels black), given as bytes they went to white."""
    keyed = solid((0, 0, 0), (16, 16))
    keyed.paste(RED, (4, 4, 12, 12))
    data = encode(keyed, "PNG", transparency=(0, 0, 0))
    expected = load_model_input(data, 16)
    assert expected[:, 0, 0].tolist() == [255, 255, 255] and expected[:, 8, 8].tolist() == list(RED)
    assert load_model_input(Image.open(io.BytesIO(data)), 16).equal(expected)


def test_a_pil_image_is_not_modified() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    img = Image.open(io.BytesIO(encode(quadrants(), "JPEG", exif=exif.tobytes())))
    assert decode(img).size == (48, 64)
    assert img.size == (64, 48) and img.getexif()[0x0112] == 6


def test_the_centre_square_is_what_the_model_sees() -> None:
    img = Image.new("RGB", (96, 32), RED)
    img.paste(GREEN, (32, 0, 64, 32))
    x = load_model_input(encode(img, "PNG"), 32)
    assert x.shape == (3, 32, 32) and x.dtype.is_floating_point is False
    assert (x[1] == 255).all() and (x[0] == 0).all()


def test_a_phone_photo_is_accepted_and_decoded_small() -> None:
    data = encode(solid((10, 120, 200), (8000, 6000)), "JPEG", quality=80)  # 48 megapixels
    img = decode(data, draft_side=32)
    assert img.size == (1000, 750)  # 1/8 scale in the DCT: never 48 megapixels in memory
    assert close(img.getpixel((500, 375)), (10, 120, 200), 4)
    assert decode(data).size == (8000, 6000)


@pytest.mark.parametrize("source,words", [
    (b"x" * 2000, "too large"),
    ("/nonexistent/photo.jpg", "cannot read"),
    (42, "unsupported image source"),
])
def test_unreadable_sources(source, words: str, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=words):
        decode(source, limits=Limits(max_bytes=1000))


def test_a_folder_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read"):
        decode(tmp_path)


def test_pixel_limit_applies_to_pil_images_too() -> None:
    with pytest.raises(ImageError, match="megapixels"):
        decode(solid(RED, (100, 100)), limits=Limits(max_pixels=5000))


def test_a_transparent_image_decodes_in_two_copies_of_its_pixels(tmp_path: Path) -> None:
    path = tmp_path / "big.png"  # 16 megapixels, 70 KB: one RGBA copy is 64 MB
    Image.new("RGBA", (4000, 4000), (255, 0, 0, 128)).save(path)
    script = ("import resource, sys\nfrom mobilenet import intake\ndata = open(sys.argv[1], 'rb').read()\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\nimage = intake.decode(data)\n"
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, image.mode, *image.getpixel((0, 0)))")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True,
                          cwd=ROOT)
    grown_kb, *image = done.stdout.split()
    assert image == ["RGB", "255", "127", "127"]  # half-transparent red on white
    assert int(grown_kb) < 3 * 64 * 1024  # the RGBA image and the RGB result (measured 123 MB; 306 MB composited)


def test_large_images_decode_two_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from mobilenet import intake

    inside, most, lock = [0], [0], threading.Lock()
    pairs = threading.Barrier(2, timeout=10)  # two large decodes at once must be possible
    real = intake._to_rgb

    def converting(img: Image.Image) -> Image.Image:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        pairs.wait()
        time.sleep(0.2)  # a third decode, were it let in, would arrive meanwhile
        with lock:
            inside[0] -= 1
        return real(img)

    monkeypatch.setattr(intake, "_to_rgb", converting)
    monkeypatch.setattr(intake, "LARGE_PIXELS", 20 * 20 - 1)
    data = encode(solid(RED, size=(20, 20)), "PNG")
    threads = [threading.Thread(target=decode, args=(data,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 2 and not pairs.broken


def test_an_upright_rgb_image_is_taken_as_it_is_and_any_other_copied() -> None:
    upright = solid(RED, size=(40, 30))
    assert decode(upright) is upright  # nothing to do: no full-size copy of a photo decoded once already
    turned = solid(RED, size=(40, 30))
    exif = turned.getexif()
    exif[0x0112] = 6
    turned = Image.open(io.BytesIO(encode(turned, "PNG", exif=exif)))
    upright_again = decode(turned)
    assert upright_again.size == (30, 40) and turned.size == (40, 30)  # turned, and the caller's left as it was
    rgba = solid((255, 0, 0, 255), size=(4, 4), mode="RGBA")
    assert decode(rgba) is not rgba and decode(rgba).mode == "RGB" and rgba.mode == "RGBA"


def test_a_forked_decode_worker_has_both_large_places_free() -> None:
    """Visitors' large decodes hold the two places when an evaluation forks its decode workers: a worker that
    inherited them taken would wait forever on its first large image, and the evaluation with it."""
    import multiprocessing

    from mobilenet import intake

    def acquire_both(results) -> None:
        results.put(all(intake._large_decodes.acquire(timeout=5) for _ in range(2)))

    with intake._large_decodes, intake._large_decodes:
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        child = context.Process(target=acquire_both, args=(results,))
        child.start()
        child.join(30)
    assert results.get(timeout=5) is True


def test_a_jpeg_of_several_scans_counts_at_its_full_size_however_small_it_is_drafted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mobilenet import intake

    counted = []
    real = intake._turn
    monkeypatch.setattr(intake, "_turn", lambda size: counted.append(size) or real(size))
    baseline = encode(solid(RED, size=(640, 480)), "JPEG")
    head, (scan,) = _scans(baseline)
    for data in (baseline, encode(solid(RED, size=(640, 480)), "JPEG", progressive=True),
                 _colours_one_after_another(head, scan)):
        assert decode(data, draft_side=32).size == (80, 60)  # drafted to 1/8 each
    assert counted == [(80, 60), (640, 480), (640, 480)]


def _colours_one_after_another(head: bytes, scan: bytes) -> bytes:
    """A baseline JPEG of flat grey whose three colour components come in three scans (legal, and buffered at full
    size by libjpeg like a progressive one), from an interleaved one's headers."""
    frame = head.index(b"\xff\xc0")
    side = int.from_bytes(head[frame + 5:frame + 7], "big"), int.from_bytes(head[frame + 7:frame + 9], "big")
    head = head[:frame + 10] + b"".join(bytes([c, 0x11, 0]) for c in (1, 2, 3)) + head[frame + 19:]  # no subsampling
    one_code = b"\x01" + b"\x00" * 15 + b"\x00"  # one Huffman code, "0", for symbol 0: a zero DC change, the end
    tables = _segment(0xC4, b"\x00" + one_code) + _segment(0xC4, b"\x10" + one_code)
    blocks = ((side[0] + 7) // 8) * ((side[1] + 7) // 8)
    scans = b"".join(_segment(0xDA, bytes([1, c, 0x00, 0, 63, 0])) + b"\x00" * (blocks * 2 // 8) for c in (1, 2, 3))
    return head + tables + scans + b"\xff\xd9"


def test_a_16_bit_image_with_a_transparency_key_decodes_in_few_copies_of_its_pixels(tmp_path: Path) -> None:
    path = tmp_path / "keyed16.png"  # 16 megapixels: the RGB result is 48 MB, the 16-bit image 32 MB
    values = np.zeros((4000, 4000), dtype=np.uint16)
    values[:, 2000:] = 40000
    Image.fromarray(values).save(path, transparency=40000)
    script = ("import resource, sys\nfrom mobilenet import intake\ndata = open(sys.argv[1], 'rb').read()\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\nimage = intake.decode(data)\n"
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, image.mode, "
              "*image.getpixel((0, 0)), *image.getpixel((3999, 0)))")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True,
                          cwd=ROOT)
    grown_kb, *image = done.stdout.split()
    assert image == ["RGB", "0", "0", "0", "255", "255", "255"]  # black, and the keyed half white
    assert int(grown_kb) < 170 * 1024  # measured 125 MB (245 MB through 32 bits and an alpha channel)


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body


def _scans(data: bytes) -> tuple[bytes, list[bytes]]:
    """A JPEG's bytes before its first scan, and each scan (its header and data, and the tables after it)."""
    first = data.index(b"\xff\xda")  # a marker only: in a scan's data a 0xFF byte is followed by 0x00
    return data[:first], [b"\xff\xda" + scan for scan in data[first + 2:].removesuffix(b"\xff\xd9").split(b"\xff\xda")]


def test_a_jpeg_of_too_many_scans_is_refused_before_decoding() -> None:
    """A progressive JPEG whose last scan repeats: each copy walks the whole image again, for a few bytes (a 1 MB
    file of 7,680×7,680 took minutes of CPU). Real ones have about ten scans, and pass."""
    from mobilenet.intake import MAX_JPEG_SCANS, jpeg_layout

    real = encode(solid(RED, (64, 48)), "JPEG", progressive=True)
    head, scans = _scans(real)
    assert jpeg_layout(real)[1] == len(scans) > 1 and decode(real).size == (64, 48)
    repeated = head + b"".join(scans) + scans[-1] * MAX_JPEG_SCANS + b"\xff\xd9"
    after_app0 = 4 + int.from_bytes(head[4:6], "big")
    stray_byte = repeated[:after_app0] + b"\x00" + repeated[after_app0:]  # a count that stopped there let it in
    for data in (repeated, stray_byte):
        with pytest.raises(ImageError, match=f"more than {MAX_JPEG_SCANS} scans"):
            decode(data)


def test_a_jpeg_counts_the_scans_of_its_image_not_of_its_thumbnail() -> None:
    from mobilenet.intake import jpeg_layout

    photo = encode(solid(RED, (64, 48)), "JPEG")
    thumbnail = encode(solid(BLUE, (8, 8)), "JPEG")
    with_thumbnail = photo[:2] + _segment(0xEF, thumbnail) + photo[2:]  # an APP15 segment holding a whole JPEG
    assert jpeg_layout(photo)[1] == jpeg_layout(with_thumbnail)[1] == 1
    assert decode(with_thumbnail).getpixel((0, 0)) == decode(photo).getpixel((0, 0))


def _padded(kind: str, size: int = 4 * 1024 * 1024) -> bytes:
    """A tiny image of `kind` padded to `size` bytes with empty metadata blocks (or, for -stray-byte, bytes of no
    block; -length-0, a segment whose length is 0; -end-first, an end-of-image marker) before its picture, or for
    PNG's -after-image and -empty-image-data, empty chunks or empty image-data chunks after it."""
    if kind.startswith("jpeg"):
        real = encode(solid(RED, (64, 64)), "JPEG")
        after_app0 = 4 + int.from_bytes(real[4:6], "big")
        first = {"jpeg": b"", "jpeg-stray-byte": b"\x00", "jpeg-length-0": b"\xff\xe2\x00\x00",
                 "jpeg-end-first": b"\xff\xd9"}[kind]
        stray = kind == "jpeg-stray-byte"
        return (real[:after_app0] + first + (b"\x00" * size if stray else b"\xff\xfe\x00\x02" * (size // 4))
                + real[after_app0:])  # empty COM segments
    if kind.startswith("png"):
        real = encode(solid(RED, (64, 64)), "PNG")
        name = b"IDAT" if kind == "png-empty-image-data" else b"prIv"
        chunks = (struct.pack(">I", 0) + name + struct.pack(">I", zlib.crc32(name))) * (size // 12)
        return real[:33] + chunks + real[33:] if kind == "png" else real[:-12] + chunks + real[-12:]  # (IEND)
    real = encode(solid(RED, (64, 64)).convert("P"), "GIF")
    head = 13 + 3 * 2 ** ((real[10] & 7) + 1)
    if kind == "gif":
        return real[:head] + b"\x21\xfe\x01X\x00" * (size // 5) + real[head:]  # one-byte comment extensions
    if kind == "gif-stray-byte":
        return real[:head] + b"\x00" * size + real[head:]
    return real[:head] + b"\x21\xfe" + b"\x01X" * (size // 2) + b"\x00" + real[head:]  # one comment of them all


@pytest.mark.parametrize("kind", ["jpeg", "jpeg-stray-byte", "jpeg-length-0", "jpeg-end-first", "png",
                                  "png-after-image", "png-empty-image-data", "gif", "gif-comment", "gif-stray-byte"])
def test_a_small_image_padded_with_empty_metadata_is_refused_before_it_is_opened(kind: str) -> None:
    """Pillow reads each block in Python, and steps over a byte it does not expect: 24 MB of empty blocks or stray
    bytes took 5 to 31 s of CPU and up to 0.9 GB to open, and a count that stopped at such a byte let them through."""
    padded = _padded(kind)
    start = time.process_time()
    with pytest.raises(ImageError, match="more than 10,000 blocks of metadata"):
        decode(padded)
    assert time.process_time() - start < 0.5


def test_metadata_blocks_of_real_files_pass() -> None:
    """A GIF with an XMP packet (its text read as sub-blocks: thousands), a PNG with text chunks, a progressive
    JPEG."""
    gif = encode(solid(RED, (64, 64)).convert("P"), "GIF")
    head = 13 + 3 * 2 ** ((gif[10] & 7) + 1)
    xmp = b"\x21\xffXMP DataXMP" + b"\x02<x" * 4000 + b"\x00"
    assert decode(gif[:head] + xmp + gif[head:]).getpixel((0, 0)) == RED
    text = b"".join(struct.pack(">I", 4) + b"tEXt" + b"a\x00bc" + struct.pack(">I", zlib.crc32(b"tEXta\x00bc"))
                    for _ in range(100))
    png_file = encode(solid(RED, (64, 64)), "PNG")
    assert decode(png_file[:33] + text + png_file[33:]).getpixel((0, 0)) == RED
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    png_file = encode(noise, "PNG")
    image_data = png_file[41:-16]  # one IDAT chunk: after IHDR and its own length and type, before its CRC and IEND
    assert png_file[37:41] == b"IDAT" and 3000 < len(image_data) // 4 < 10_000
    chunks = b"".join(struct.pack(">I", len(part)) + b"IDAT" + part + struct.pack(">I", zlib.crc32(b"IDAT" + part))
                      for part in (image_data[i:i + 4] for i in range(0, len(image_data), 4)))
    assert np.array_equal(np.asarray(decode(png_file[:33] + chunks + png_file[-12:])), np.asarray(noise))
    assert decode(encode(solid(RED, (64, 48)), "JPEG", progressive=True)).size == (64, 48)


def _run_length_bmp(width: int, height: int) -> bytes:
    """An 8-bit run-length-compressed BMP: each row one run of palette colour 1 (red), then an end-of-line code."""
    rows = bytearray()
    for _ in range(height):
        for left in range(width, 0, -255):
            rows += bytes([min(255, left), 1])
        rows += b"\0\0"
    rows += b"\0\1"  # the end of the bitmap
    palette = bytes([0, 0, 0, 0]) + bytes([0, 0, 255, 0]) + bytes(4 * 254)  # BGRx: black, red, then black
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rows), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + info + palette + bytes(rows)


def test_a_run_length_compressed_bmp_decodes_when_small_and_is_refused_when_large() -> None:
    """Pillow decodes them in Python, pixel by pixel: 60 megapixels from a 32 KB file took 29 s of CPU."""
    from mobilenet.intake import MAX_RLE_PIXELS

    small = decode(_run_length_bmp(64, 48))
    assert small.size == (64, 48) and small.getpixel((10, 10)) == RED
    start = time.process_time()
    with pytest.raises(ImageError, match="run-length-compressed BMPs of over 1 megapixel"):
        decode(_run_length_bmp(MAX_RLE_PIXELS // 1000 + 1, 1000))
    assert time.process_time() - start < 0.5
