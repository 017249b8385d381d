from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import pytest
import torch

from mobilenet import checkpoint
from mobilenet.checkpoint import CheckpointError, ModelCard
from mobilenet.model import MobileNetV1

CARD = ModelCard(alpha=0.5, stem="cifar", resolution=32, classes=("a", "b", "c"), mean=(0.5, 0.5, 0.5),
                 std=(0.25, 0.25, 0.25), training={"epochs": 3, "recipe": "fast", "val_acc": 0.5})


def saved(tmp_path: Path) -> tuple[Path, MobileNetV1]:
    torch.manual_seed(0)
    model = MobileNetV1(3, 0.5)
    path = tmp_path / "model.pt"
    checkpoint.save(path, model, CARD)
    return path, model


def test_round_trip(tmp_path: Path) -> None:
    path, model = saved(tmp_path)
    loaded, card = checkpoint.load(path)
    assert card == CARD
    assert not loaded.training
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model.eval()(x))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert path.stat().st_mode & 0o777 == 0o644  # readable by a server running as another user


def test_pickled_whole_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "seed.pt"
    torch.save(MobileNetV1(), path)  # what the seed did
    with pytest.raises(CheckpointError, match="pickled") as refused:
        checkpoint.load(path)
    message = str(refused.value)
    assert "Unsupported global" in message and "MobileNetV1" in message  # what it holds, in one line
    assert "can still be loaded" not in message and message.isprintable()  # not torch's way around the refusal


class Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_code_in_a_checkpoint_never_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({"format": checkpoint.FORMAT, "payload": Boom()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        checkpoint.load(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_modified_weights_are_refused(tmp_path: Path) -> None:
    path, _ = saved(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["classifier.bias"] += 1.0
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="digest"):
        checkpoint.load(path)


def test_flipped_bytes_are_refused(tmp_path: Path) -> None:
    path, _ = saved(tmp_path)
    with zipfile.ZipFile(path) as z:
        member = max(z.infolist(), key=lambda i: i.file_size)
        offset = member.header_offset + 30 + len(member.filename) + len(member.extra) + member.file_size // 2
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError):
        checkpoint.load(path)


def test_a_file_that_cannot_be_written_is_named_not_its_temporary_file(tmp_path: Path) -> None:
    target = Path("/proc/model.pt")  # a folder where no file can be made
    with pytest.raises(OSError) as refused:
        checkpoint.atomic_write(target, lambda f: f.write(b"x"))
    assert refused.value.filename == str(target) and "cannot be written" in refused.value.strerror


def test_compressed_contents_are_refused(tmp_path: Path) -> None:
    """torch.load inflates a deflated entry too: a 1.2 MB file can hold a 400 MB tensor of zeros."""
    path, _ = saved(tmp_path)
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as target:
        for entry in source.infolist():
            target.writestr(entry.filename, source.read(entry))
    assert torch.load(deflated, weights_only=True)["digest"] == checkpoint.read(path)["digest"]  # torch reads it
    with pytest.raises(CheckpointError, match="compressed"):
        checkpoint.read(deflated)


def test_a_changed_card_is_refused_and_a_card_written_again_is_read(tmp_path: Path) -> None:
    path, _ = saved(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["card"]["classes"] = ["b", "a", "c"]  # a damaged byte, or a hand, changed it; the weights are intact
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="its card does not match its digest"):
        checkpoint.load(path)
    payload.pop("card_digest")  # files written before cards had a digest are read as they are
    torch.save(payload, path)
    assert checkpoint.load(path)[1].classes == ("b", "a", "c")
    checkpoint.replace_card(path, CARD)
    assert checkpoint.load(path)[1] == CARD


def test_weights_that_do_not_fit_the_metadata_are_refused(tmp_path: Path) -> None:
    path, _ = saved(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["card"]["alpha"] = 1.0
    payload["card_digest"] = checkpoint.card_digest(payload["card"])
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not match the architecture"):
        checkpoint.load(path)


@pytest.mark.parametrize("content", [b"", b"hello", b"PK\x03\x04broken zip"])
def test_garbage_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        checkpoint.load(path)


def crafted(tmp_path: Path, change) -> Path:
    """A checkpoint of this project whose payload was changed by hand (digest made to match)."""
    path, _ = saved(tmp_path)
    payload = torch.load(path, weights_only=True)
    change(payload)
    if all(isinstance(k, str) and t.layout == torch.strided and t.stride()[-1:] != (0,) and not t.is_meta
           for k, t in payload["state_dict"].items()):
        payload["digest"] = checkpoint.weights_digest(payload["state_dict"])
    if isinstance(payload.get("card"), dict):
        payload["card_digest"] = checkpoint.card_digest(payload["card"])
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("change,words", [
    (lambda p: p.pop("card"), "holds no model card"),
    (lambda p: p.update(card="oops"), "holds no model card"),
    (lambda p: p["card"].update(training=[], tta=None), "metadata is incomplete or malformed"),
    (lambda p: p["card"].update(resolution=10**6), "metadata is incomplete or malformed"),
    (lambda p: p["card"].update(alpha=1e9), "metadata is incomplete or malformed"),
    (lambda p: p["card"].update(classes=[]), "metadata is incomplete or malformed"),
    (lambda p: p["card"].update(stem="mystery"), "metadata is incomplete or malformed"),
    # 4 bytes stored, a terabyte once made contiguous for the digest
    (lambda p: p["state_dict"].update({"classifier.bias": torch.zeros(1).expand(2**38)}), "holds no weights"),
    (lambda p: p["state_dict"].update({"classifier.bias": torch.zeros(3).to_sparse()}), "holds no weights"),
    (lambda p: p["state_dict"].update({1: torch.zeros(1)}), "holds no weights"),
    (lambda p: p["card"].update(classes="abc"), "metadata is incomplete or malformed"),
    (lambda p: p["card"].update(classes=["a", "a", "b"]), "metadata is incomplete or malformed"),
    (lambda p: p["card"].update(std=[0, 0, 0]), "metadata is incomplete or malformed"),  # answers NaN
    (lambda p: p["card"].update(data={"source": "x.zip", "fingerprint": None, "val_size": "5000"}),
     "metadata is incomplete or malformed"),
    (lambda p: p["card"]["training"].update(per_class=[0.5]), "metadata is incomplete or malformed"),
    (lambda p: p["card"]["training"].update(devices=[["cpu", "2", 1.0]]), "metadata is incomplete or malformed"),
    (lambda p: p["card"]["training"].update(devices=[["cpu", 2, float("nan")]]), "metadata is incomplete or malformed"),
    (lambda p: p["card"]["training"].update(devices=[["cpu", -2, 1.0]]), "metadata is incomplete or malformed"),
    (lambda p: p["card"]["training"].update(val_acc="high"), "metadata is incomplete or malformed"),
    (lambda p: p["card"]["training"].update(teachers=[1, 2]), "metadata is incomplete or malformed"),
    (lambda p: p["card"]["training"].update(recipe=["fast"]), "metadata is incomplete or malformed"),
    (lambda p: p["state_dict"].pop("classifier.bias") is None, "do not match the architecture"),  # random otherwise
    (lambda p: p.update(version=2), "format version 2"),
    (lambda p: p["card"].update(resolution=float("inf")), "metadata is incomplete or malformed"),
    (lambda p: p["card"].update(mean=[10**400, 0, 0]), "metadata is incomplete or malformed"),
    (lambda p: p["card"].update(data={"source": "x.zip", "fingerprint": None, "val_size": float("inf")}),
     "metadata is incomplete or malformed"),
    (lambda p: p["state_dict"].update({"classifier.bias": torch.zeros(10, device="meta")}), "holds no weights"),
    (lambda p: p["state_dict"]["classifier.bias"].copy_(torch.tensor(float("nan"))) is None, "not numbers .NaN"),
    (lambda p: p["state_dict"]["stem.1.running_var"].copy_(torch.tensor(float("inf"))) is None, "not numbers .NaN"),
    (lambda p: p["state_dict"].update({"classifier.bias": p["state_dict"]["classifier.bias"].to(torch.float8_e4m3fn)}),
     "a type this network does not use .float8_e4m3fn."),  # (isfinite cannot read it)
    # a megabyte stored once, hashed once a name: 200 names were 11 s of reading
    (lambda p: p["state_dict"].update({f"again.{i}": max(p["state_dict"].values(), key=torch.Tensor.numel)
                                       for i in range(20)}), "share their storage"),
])
@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
def test_crafted_checkpoints_are_refused_in_words(tmp_path: Path, change, words: str) -> None:
    path = crafted(tmp_path, lambda payload: change(payload) and None)
    with pytest.raises(CheckpointError, match=words):
        checkpoint.load(path)


def test_a_card_of_nested_repeats_is_refused_before_it_is_walked(tmp_path: Path) -> None:
    """Pickle stores a repeated object once: 30 levels of [x, x] are 2**30 values to hash, in a file of a few
    hundred bytes more."""
    path, _ = saved(tmp_path)
    payload = torch.load(path, weights_only=True)
    repeats: list = []
    for _ in range(30):
        repeats = [repeats, repeats]
    payload["card"]["training"]["notes"] = repeats
    torch.save(payload, path)
    start = time.process_time()
    with pytest.raises(CheckpointError, match="more than 100,000 values"):
        checkpoint.read(path)
    assert time.process_time() - start < 1


@pytest.mark.parametrize("damage", ["version", "name"])
def test_a_damaged_index_of_contents_is_refused_in_words(tmp_path: Path, damage: str) -> None:
    """zipfile raised NotImplementedError for a version field it does not know and UnicodeDecodeError for a name that
    is not UTF-8: not CheckpointError, so one damaged byte in a checkpoint folder broke every page of the app."""
    path, _ = saved(tmp_path)
    blob = bytearray(path.read_bytes())
    entry = blob.find(b"PK\x01\x02")  # the first entry of the central directory
    if damage == "version":
        blob[entry + 6] = 255  # version needed to extract: "25.5"
    else:
        blob[entry + 9] |= 0x08  # flags: bit 11, the name is UTF-8
        blob[entry + 46] = 0x9B  # its first byte: not UTF-8
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="damaged: its index of contents cannot be read"):
        checkpoint.read(path)


def test_other_torch_files_are_refused(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a MobileNet"):
        checkpoint.load(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "missing.pt")


def test_crash_mid_write_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path, model = saved(tmp_path)
    before = path.read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, MobileNetV1(3, 0.5), CARD)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left behind
    checkpoint.load(path)


def test_a_kills_debris_goes_with_the_next_write_of_its_file(tmp_path: Path) -> None:
    """A kill -9 mid-save leaves its temporary file: in checkpoints/ nothing else would ever remove it."""
    path, _ = saved(tmp_path)
    old, fresh, other = (tmp_path / name for name in (".model.pt.k1ll.tmp", ".model.pt.n0w.tmp", ".other.pt.k1ll.tmp"))
    for debris in (old, fresh, other):
        debris.write_bytes(b"half a checkpoint")
    long_ago = time.time() - checkpoint.DEBRIS_AGE_S - 60
    os.utime(old, (long_ago, long_ago))
    os.utime(other, (long_ago, long_ago))
    checkpoint.save(path, MobileNetV1(3, 0.5), CARD)
    assert not old.exists() and fresh.exists() and other.exists()  # a write in progress, another file's


def test_train_state_is_kept_for_resuming(tmp_path: Path) -> None:
    model = MobileNetV1(3, 0.25)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    checkpoint.save(tmp_path / "last.pt", model, CARD.__class__(**{**CARD.__dict__, "alpha": 0.25}),
                    {"optimizer": optimizer.state_dict(), "loop": {"epoch": 2}})
    payload = checkpoint.read(tmp_path / "last.pt")
    restored = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    restored.load_state_dict(payload["train_state"]["optimizer"])
    assert payload["train_state"]["loop"]["epoch"] == 2


def test_a_folder_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        checkpoint.load(tmp_path)
