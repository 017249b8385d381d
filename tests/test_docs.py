"""The guides name what exists: files, modules and their names, and a layout row for every module."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDES = ["README.md", "DEPLOY.md", "DEVELOPERS.md", "checkpoints/README.md", "checkpoints/in-progress/README.md",
          ".streamlit/config.toml"]  # BENCHMARKS.md is a record: it may name the scripts of its time
MODULES = sorted(p.stem for p in (ROOT / "mobilenet").glob("*.py") if p.stem != "__init__")
FILE = re.compile(r"\b(?:mobilenet|app_pages|bench|tests)/[\w./-]+\.(?:py|sh)\b")
NAME = re.compile(r"\bmobilenet\.(\w+)\.(\w+)|`(\w+)\.(\w+)`")  # mobilenet.module.name, or `module.name`
SUFFIXES = {"py", "json", "jsonl", "pt", "onnx", "md", "toml"}  # `config.json` is a file


def _module(name: str) -> object:
    return importlib.import_module(f"mobilenet.{name}")


@pytest.mark.parametrize("guide", GUIDES)
def test_the_files_a_guide_names_exist(guide: str) -> None:
    text = (ROOT / guide).read_text()
    assert [name for name in FILE.findall(text) if not (ROOT / name).exists()] == []


@pytest.mark.parametrize("guide", GUIDES)
def test_the_module_names_a_guide_names_exist(guide: str) -> None:
    missing = []
    for match in NAME.finditer((ROOT / guide).read_text()):
        module, name = match[1] or match[3], match[2] or match[4]
        if match[1] and module not in MODULES:
            missing.append(f"mobilenet.{module}")
        elif module in MODULES and name not in SUFFIXES and not hasattr(_module(module), name):
            missing.append(f"{module}.{name}")
    assert missing == []


def test_the_layout_has_a_row_for_every_module() -> None:
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1]
    assert [m for m in MODULES if f"`mobilenet/{m}.py`" not in layout and f"`{m}.py`" not in layout] == []
