"""bench/shrink.py: a checkpoint's trip to a lent GPU and back is lossless."""

from __future__ import annotations

import importlib.util
import lzma
from pathlib import Path

from helpers import save_model

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "shrink.py"


def load_script():
    spec = importlib.util.spec_from_file_location("shrink", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_a_checkpoint_comes_back_byte_for_byte_and_smaller_than_xz_makes_it(tmp_path: Path) -> None:
    shrink = load_script()
    model = tmp_path / "last.pt"
    save_model(model, alpha=0.5)
    shrink.pack(model, tmp_path / "last.pt.sxz")
    shrink.unpack(tmp_path / "last.pt.sxz", tmp_path / "back.pt")
    assert (tmp_path / "back.pt").read_bytes() == model.read_bytes()
    assert (tmp_path / "last.pt.sxz").stat().st_size < len(lzma.compress(model.read_bytes(), preset=6))


def test_a_file_whose_length_is_not_a_multiple_of_four_keeps_its_length(tmp_path: Path) -> None:
    shrink = load_script()
    (tmp_path / "odd").write_bytes(b"\x00\x01\x02\x03\x04\x05\x06")
    shrink.pack(tmp_path / "odd", tmp_path / "odd.sxz")
    shrink.unpack(tmp_path / "odd.sxz", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == b"\x00\x01\x02\x03\x04\x05\x06"
