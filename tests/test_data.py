from __future__ import annotations

import hashlib
import http.server
import os
import threading
import time
import types
import zipfile
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest
import torch
from torchvision.datasets import CIFAR10

from mobilenet import data
from mobilenet.data import DataError, stratified_split
from mobilenet.tta import SEED_NORMALIZATION

from helpers import CLASSES, image_bytes, write_cifar_archive, write_folder, zip_folder


def check_imageset(images: data.ImageSet, n: int, side: int = 32, classes=CLASSES) -> None:
    assert images.images.dtype == torch.uint8 and images.images.shape == (n, 3, side, side)
    assert images.labels.dtype == torch.int64 and images.labels.shape == (n,)
    assert images.classes == classes


def test_folder_with_splits(image_folder: Path, tmp_path: Path) -> None:
    train = data.load(str(image_folder), "train", root=tmp_path / "root")
    check_imageset(train, 36)
    assert train.labels.bincount().tolist() == [12, 12, 12]
    check_imageset(data.load(str(image_folder), "test", root=tmp_path / "root"), 36)
    assert data.available_splits(str(image_folder)) == ["train", "test"]


def test_bare_class_folder_has_only_train(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "bare", per_class=4, splits=("",))
    check_imageset(data.load(str(folder), "train", root=tmp_path), 12)
    with pytest.raises(DataError, match="no test images"):
        data.load(str(folder), "test", root=tmp_path)


def test_a_class_named_like_a_split_is_a_class(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "bare", per_class=4, splits=("",))
    (folder / "cat").rename(folder / "train")
    loaded = data.load(str(folder), "train", root=tmp_path)
    check_imageset(loaded, 12, classes=("dog", "ship", "train"))
    assert data.available_splits(str(folder)) == ["train"]


@pytest.mark.parametrize("top", ["", "wrapped/"])
def test_zip_of_either_layout(image_folder: Path, tmp_path: Path, top: str) -> None:
    archive = zip_folder(image_folder, tmp_path / "images.zip", top)
    train = data.load(str(archive), "train", root=tmp_path)
    check_imageset(train, 36)
    folder_train = data.load(str(image_folder), "train", root=tmp_path)
    assert torch.equal(train.images, folder_train.images)


def test_any_size_and_mode_is_resized_to_rgb(tmp_path: Path) -> None:
    from PIL import Image

    for i, (mode, size) in enumerate([("L", (50, 40)), ("RGBA", (64, 64)), ("P", (20, 33)), ("CMYK", (32, 32))]):
        folder = tmp_path / "odd" / CLASSES[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.new(mode, size).save(folder / f"{i}.{'jpg' if mode == 'CMYK' else 'png'}")
    loaded = data.load(str(tmp_path / "odd"), "train", resolution=24, root=tmp_path)
    assert loaded.images.shape == (4, 3, 24, 24)


def test_unreadable_images_are_skipped_with_a_warning(image_folder: Path, tmp_path: Path, capsys) -> None:
    (image_folder / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    loaded = data.load(str(image_folder), "train", root=tmp_path)
    assert len(loaded) == 36
    assert "skipped 1 unreadable" in capsys.readouterr().err  # stdout may be a command's --json


def test_damaged_and_encrypted_zip_members_are_skipped_as_unreadable(image_folder: Path, tmp_path: Path,
                                                                     capsys) -> None:
    archive = zip_folder(image_folder, tmp_path / "images.zip")  # stored: each file's bytes appear as they are
    with zipfile.ZipFile(archive) as z:
        damaged, encrypted = [i for i in z.infolist() if i.filename.startswith("train/")][:2]
    blob = bytearray(archive.read_bytes())
    blob[blob.find((image_folder / damaged.filename).read_bytes()) + 40] ^= 0xFF  # its CRC no longer matches
    central = blob.find(b"PK\x01\x02")  # the central directory's entries, to the one of this member
    while blob[central + 46:central + 46 + len(encrypted.filename)] != encrypted.filename.encode():
        central = blob.find(b"PK\x01\x02", central + 4)
    blob[encrypted.header_offset + 6] |= 0x1  # both its headers say it is encrypted: zipfile wants a password
    blob[central + 8] |= 0x1
    archive.write_bytes(bytes(blob))
    loaded = data.load(str(archive), "train", root=tmp_path)
    assert len(loaded) == 36 - 2
    assert "skipped 2 unreadable" in capsys.readouterr().err


def test_cache_is_used_and_invalidated(image_folder: Path, tmp_path: Path, monkeypatch) -> None:
    first = data.load(str(image_folder), "train", root=tmp_path)
    assert list((tmp_path / "cache").glob("*.pt"))
    monkeypatch.setattr(data, "_load_folder", lambda *a: pytest.fail("decoded again despite the cache"))
    assert torch.equal(data.load(str(image_folder), "train", root=tmp_path).images, first.images)
    monkeypatch.undo()
    write_folder(image_folder, per_class=13, splits=("train",))  # adds one image per class
    assert len(data.load(str(image_folder), "train", root=tmp_path)) == 39


def test_damaged_cache_is_rebuilt(image_folder: Path, tmp_path: Path) -> None:
    data.load(str(image_folder), "train", root=tmp_path)
    for f in (tmp_path / "cache").glob("*.pt"):
        f.write_bytes(b"not a tensor file")
    assert len(data.load(str(image_folder), "train", root=tmp_path)) == 36


def test_a_data_root_that_cannot_hold_the_cache_still_loads(image_folder: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    """A shared read-only copy of the data: the cache only saves decoding again, so it is warned of, not fatal."""
    (tmp_path / "cache").write_text("a file where the cache folder would be")
    assert len(data.load(str(image_folder), "train", root=tmp_path)) == 36
    assert "warning: the decoded images are not cached" in capsys.readouterr().err


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        data.load(str(tmp_path / "nope"), root=tmp_path)


@pytest.mark.parametrize("n,val_size", [(1000, 100), (997, 50), (30, 7)])
def test_stratified_split(n: int, val_size: int) -> None:
    labels = torch.arange(n) % 10
    train_idx, val_idx = stratified_split(labels, val_size, seed=3)
    assert len(val_idx) == val_size and len(train_idx) == n - val_size
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    counts = labels[val_idx].bincount(minlength=10)
    assert counts.max() - counts.min() <= 1  # every class keeps its share
    again = stratified_split(labels, val_size, seed=3)[1]
    assert torch.equal(val_idx, again)
    assert not torch.equal(val_idx, stratified_split(labels, val_size, seed=4)[1])


@pytest.fixture
def cifar_server(tmp_path: Path, monkeypatch):
    """A loopback HTTP server offering a generated cifar-10-python.tar.gz, with torchvision pointed at it."""
    serve = tmp_path / "serve"
    serve.mkdir()
    archive = serve / "cifar-10-python.tar.gz"
    md5 = write_cifar_archive(archive)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(serve))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(CIFAR10, "url", f"http://127.0.0.1:{server.server_port}/cifar-10-python.tar.gz")
    monkeypatch.setattr(CIFAR10, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": md5["batches.meta"]})
    yield server
    server.shutdown()


def test_cifar10_download_and_load(cifar_server, tmp_path: Path) -> None:
    root = tmp_path / "root"
    train = data.load("cifar10", "train", root=root, download=True)
    check_imageset(train, 100, classes=data.CIFAR10_CLASSES)
    assert (root / "cifar-10-batches-py" / "data_batch_1").exists()
    check_imageset(data.load("cifar10", "test", root=root, download=False), 20, classes=data.CIFAR10_CLASSES)
    resized = data.load("cifar10", "test", resolution=40, root=root, cache=False)
    assert resized.images.shape == (20, 3, 40, 40)


def test_cifar10_offline_error_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        data.load("cifar10", root=tmp_path, download=False)


def test_cifar10_failed_download_says_what_to_do(cifar_server, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(CIFAR10, "url", "http://127.0.0.1:1/cifar-10-python.tar.gz")  # nothing listens there
    with pytest.raises(DataError, match="copy cifar-10-python.tar.gz"):
        data.load("cifar10", root=tmp_path, download=True)


def test_normalization_constants_are_metadata() -> None:
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = SEED_NORMALIZATION.apply(x)
    assert torch.allclose(out, torch.ones_like(out))


def test_parallel_decode_after_torch_has_run_parallel_code(tmp_path: Path) -> None:
    """Forked decode workers must not touch torch's OpenMP pool, which the parent has already started."""
    import subprocess
    import sys

    write_folder(tmp_path / "many", per_class=200, splits=("train",))  # 600 images: two chunks, two workers
    script = (
        "import os, torch; from mobilenet import data\n"
        "os.cpu_count = lambda: 2  # fork two workers even on a one-core machine\n"
        "torch.nn.functional.conv2d(torch.randn(64, 64, 64, 64), torch.randn(64, 64, 3, 3))\n"
        f"print(len(data.load({str(tmp_path / 'many')!r}, root={str(tmp_path / 'root')!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "600", result.stderr[-500:]


def test_a_folders_fingerprint_follows_images_added_or_removed_in_its_class_folders(image_folder: Path,
                                                                                     tmp_path: Path) -> None:
    before = data.fingerprint(str(image_folder))
    added = image_folder / "train" / "cat" / "extra.png"
    added.write_bytes((image_folder / "train" / "dog").iterdir().__next__().read_bytes())
    with_one_more = data.fingerprint(str(image_folder))
    added.unlink()
    assert with_one_more != before and data.fingerprint(str(image_folder)) == before
    assert data.fingerprint(str(tmp_path / "nowhere")) is None


def test_a_model_is_measured_on_its_held_out_split_or_else_on_a_sample_of_its_training_images() -> None:
    full = data.ImageSet(torch.arange(100, dtype=torch.uint8).reshape(100, 1, 1, 1).expand(100, 3, 2, 2).clone(),
                         torch.arange(100) % 2, ("a", "b"))
    train, measured, held_out = data.measurement_split(full, 10, 0)
    expected = data.split_train_val(full, 10, 0)
    assert held_out and torch.equal(train.images, expected[0].images) and torch.equal(measured.images,
                                                                                     expected[1].images)
    train, measured, held_out = data.measurement_split(full, 0, 0)  # it trained on all 100
    seen = {int(v) for v in measured.images[:, 0, 0, 0]}
    assert not held_out and len(measured) == 20  # at most a fifth, as any split
    assert seen.isdisjoint(int(v) for v in train.images[:, 0, 0, 0]) and len(train) + len(measured) == 100


def test_visitors_asking_at_once_for_a_fingerprint_hash_the_source_once(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """After a restart every visitor's first page run asks for the same sources' fingerprints at once."""
    source = tmp_path / "set.zip"
    source.write_bytes(b"images")
    hashes, sha256 = [], hashlib.sha256

    def slow_sha256() -> object:  # a large source: long enough for all four to ask before the first is done
        hashes.append(1)
        time.sleep(0.5)
        return sha256()

    monkeypatch.setattr(data, "hashlib", types.SimpleNamespace(sha256=slow_sha256))
    start = threading.Barrier(4)

    def visitor(_: int) -> str | None:
        start.wait()
        return data.fingerprint(str(source))

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(visitor, range(4)))
    assert len(set(answers)) == 1 and answers[0] and len(hashes) == 1


def test_the_fingerprints_of_a_large_data_root_are_each_read_once(tmp_path: Path) -> None:
    """40 sources, each asked for twice (two page runs): more than a small cache holds, each read once all the same."""
    sources = []
    for i in range(40):
        source = tmp_path / f"set-{i}.zip"
        source.write_bytes(f"images {i}".encode())
        sources.append(str(source))
    data._fingerprint.cache_clear()
    first = [data.fingerprint(source) for source in sources]
    assert [data.fingerprint(source) for source in sources] == first and len(set(first)) == 40
    assert data._fingerprint.cache_info().misses == 40


def test_an_image_whose_name_is_not_utf8_is_loaded_and_fingerprinted(tmp_path: Path) -> None:
    """A café.png copied from a Latin-1 system: its name's bytes are not UTF-8, and they used to stop loading with a
    codec error."""
    folder = write_folder(tmp_path / "images", per_class=4, splits=("train",))
    os.rename(folder / "train" / "cat" / "0000.png", os.fsencode(folder / "train" / "cat") + b"/caf\xe9.png")
    assert len(data.load(str(folder), "train", root=tmp_path / "root")) == 12
    assert data.fingerprint(str(folder)) not in (None, data.fingerprint(str(write_folder(tmp_path / "other", 4))))


def test_a_folder_is_fingerprinted_by_its_images_only(tmp_path: Path) -> None:
    """A README or .DS_Store beside the images made the model's own training data count as data it never saw."""
    folder = write_folder(tmp_path / "images", per_class=4, splits=("",))
    before = data.fingerprint(str(folder))
    (folder / "README.txt").write_text("where the photos come from")
    (folder / "cat" / ".DS_Store").write_bytes(b"\0")
    assert data.fingerprint(str(folder)) == before
    (folder / "cat" / "0000.png").rename(folder / "cat" / "renamed.png")
    assert data.fingerprint(str(folder)) != before


def test_a_zip_made_on_windows_with_backslashes_is_read(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "images", per_class=4, splits=("train",))
    with zipfile.ZipFile(tmp_path / "windows.zip", "w") as z:  # PowerShell 5's Compress-Archive writes these names
        for path in sorted(folder.rglob("*.png")):
            z.write(path, str(path.relative_to(folder)).replace("/", "\\"))
    images = data.load(str(tmp_path / "windows.zip"), "train", root=tmp_path / "root")
    same = data.load(str(folder), "train", root=tmp_path / "root")
    assert images.classes == same.classes and images.images.equal(same.images) and not images.skipped


def test_a_class_folder_whose_name_is_not_text_is_refused_in_words(tmp_path: Path) -> None:
    """Its name becomes a class name on cards and pages, which cannot show it."""
    folder = write_folder(tmp_path / "images", per_class=2, splits=("train",))
    os.rename(folder / "train" / "cat", os.fsencode(folder / "train") + b"/caf\xe9")
    with pytest.raises(DataError, match=r"these are not text: caf\?\. Rename them"):
        data.load(str(folder), "train", root=tmp_path / "root")


def _image_zip(target: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(target, "w") as z:
        for i, name in enumerate(names):
            z.writestr(name, image_bytes(seed=i, size=(8, 8)))
    return target


def test_zip_member_names_are_read_as_a_folders(tmp_path: Path) -> None:
    """"./cat/1.png" and "dog//1.png" (tools that keep a leading ./) ended in a KeyError traceback; Info-ZIP (zip on
    Linux and macOS) stores UTF-8 names without saying so, which made "café" a class named "caf├⌐"."""
    odd = _image_zip(tmp_path / "odd.zip", ["./cat/1.png", "./cat/2.png", "dog//1.png", "dog//2.png"])
    loaded = data.load(str(odd), "train", root=tmp_path / "root")
    assert loaded.classes == ("cat", "dog") and len(loaded.labels) == 4
    info_zip = tmp_path / "info-zip.zip"
    blob = _image_zip(tmp_path / "plain.zip", ["cafXY/1.png", "dog/1.png"]).read_bytes()
    assert b"cafXY" in blob and zipfile.ZipFile(tmp_path / "plain.zip").infolist()[0].flag_bits & 0x800 == 0
    info_zip.write_bytes(blob.replace(b"cafXY", "café".encode()))  # UTF-8 bytes, no UTF-8 flag
    assert data.load(str(info_zip), "train", root=tmp_path / "root").classes == ("café", "dog")


def test_a_loose_file_beside_a_zips_wrapper_folder_is_looked_past(tmp_path: Path) -> None:
    names = [f"mydata/{split}/{c}/{i}.png" for split in ("train", "test") for c in ("cat", "dog") for i in range(2)]
    wrapped = _image_zip(tmp_path / "stray.zip", [*names, "mydata/preview.png"])
    assert data.available_splits(str(wrapped)) == ["train", "test"]
    assert data.load(str(wrapped), "test", root=tmp_path / "root").classes == ("cat", "dog")


def test_a_member_too_large_to_be_an_image_is_skipped_unread(tmp_path: Path) -> None:
    """A 1 MB zip can hold a gigabyte of zeros: it was read whole into memory before intake refused it."""
    bomb = _image_zip(tmp_path / "bomb.zip", ["cat/1.png", "dog/1.png", "dog/2.png"])
    with zipfile.ZipFile(bomb, "a", zipfile.ZIP_DEFLATED) as z:
        z.writestr("cat/big.png", bytes(data.MAX_BYTES + 1))
    read = []
    real = zipfile.ZipFile.read
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zipfile.ZipFile, "read", lambda self, member, *a: read.append(member) or real(self, member, *a))
        loaded = data.load(str(bomb), "train", root=tmp_path / "root")
    assert loaded.skipped == ("cat/big.png",) and len(loaded.labels) == 3
    assert all(member.filename != "cat/big.png" for member in read)


def test_a_folder_with_a_long_name_is_cached_under_a_shorter_one(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / ("d" * 240), per_class=2, splits=("",))
    assert len(data.load(str(folder), "train", root=tmp_path / "root").labels) == 6
    assert len(list((tmp_path / "root" / data.CACHE_FOLDER).glob("d*-train-32-*.pt"))) == 1


def test_an_edited_folders_older_cache_goes(tmp_path: Path) -> None:
    """Each edit left another full copy of the decoded images: 150 MB a time for CIFAR-10's training images."""
    folder, other = (write_folder(tmp_path / name / "data", per_class=2, splits=("",)) for name in ("a", "b"))
    root = tmp_path / "root"
    for source in (folder, other):  # two sources of one name: each its own cache
        data.load(str(source), "train", root=root)
    data.load(str(folder), "train", resolution=16, root=root)
    (folder / "cat" / "0000.png").write_bytes((folder / "cat" / "0001.png").read_bytes())
    os.utime(folder / "cat" / "0000.png", ns=(1, 1))
    edited = data.load(str(folder), "train", root=root)
    assert len(list((root / data.CACHE_FOLDER).glob("data-*.pt"))) == 3  # a's edited, b's, a's at 16×16
    assert torch.equal(edited.images[0], edited.images[1])


def test_a_pipe_named_like_a_zip_is_refused_not_waited_on(tmp_path: Path) -> None:
    pipe = tmp_path / "data.zip"
    os.mkfifo(pipe)
    with pytest.raises(DataError, match="neither a folder nor a .zip file"):
        data.available_splits(str(pipe))


def test_a_linked_class_folder_is_read_and_a_loop_of_links_ends(tmp_path: Path) -> None:
    """A class folder linked in from elsewhere was left out without a word: a model of the other classes only."""
    images = write_folder(tmp_path / "elsewhere", per_class=2, splits=("",))
    folder = tmp_path / "linked"
    folder.mkdir()
    for name in CLASSES[1:]:
        (folder / name).symlink_to(images / name)
    (folder / CLASSES[0]).symlink_to(images / CLASSES[0])
    (images / CLASSES[0] / "loop").symlink_to(folder)  # back up to the folder being read: not read again
    loaded = data.load(str(folder), "train", root=tmp_path / "root")
    assert loaded.classes == CLASSES and len(loaded.labels) == 6
    assert data.fingerprint(str(folder), thorough=True) is not None
