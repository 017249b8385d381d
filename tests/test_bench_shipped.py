"""bench/shipped.py: when the ladder skips a width and carry.sh stops carrying a run (its model has shipped)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from helpers import save_model

from mobilenet.shipping import ALL_IMAGES, TWIN

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "shipped.py"


def test_a_run_has_shipped_when_a_checkpoint_holds_its_weights_or_names_it_as_its_twin(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("shipped", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    shipped = tmp_path / "checkpoints"
    monkeypatch.setenv("MOBILENET_CHECKPOINTS", str(shipped))
    twin = {"run": "twin-a0.25", "val_size": 5000, "seed": 0, "this_model": ALL_IMAGES}
    save_model(shipped / "mobilenet_v1_a0.25.pt", training={"epochs": 1, "recipe": "fast", "val_acc": 0.5, TWIN: twin})
    (shipped / "broken.pt").write_bytes(b"not a checkpoint")  # skipped, not fatal
    assert script.shipped(tmp_path / "runs" / "twin-a0.25")  # by name: the folder need not exist
    assert not script.shipped(tmp_path / "runs" / "twin-a0.5")
    save_model(tmp_path / "runs" / "full-a0.25" / "best.pt")  # the same seeded weights as the shipped model
    save_model(tmp_path / "runs" / "full-a0.5" / "best.pt", alpha=0.5)
    assert script.shipped(tmp_path / "runs" / "full-a0.25") and not script.shipped(tmp_path / "runs" / "full-a0.5")
    (tmp_path / "runs" / "full-a0.5" / "best.pt").write_bytes(b"torn")  # unreadable: not shipped, no crash
    assert not script.shipped(tmp_path / "runs" / "full-a0.5")
