"""The guides name what exists: files, modules and their names, and a layout row for every module."""

from __future__ import annotations

import importlib
import ipaddress
import random
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDES = ["README.md", "DEPLOY.md", "DEVELOPERS.md", "checkpoints/README.md", "checkpoints/in-progress/README.md",
          ".streamlit/config.toml"]  # BENCHMARKS.md is a record: it may name the scripts of its time
MODULES = sorted(p.stem for p in (ROOT / "mobilenet").glob("*.py") if p.stem != "__init__")
FILE = re.compile(r"\b(?:mobilenet|app_pages|bench|tests)/[\w./-]+\.(?:py|sh)\b")
NAME = re.compile(r"\bmobilenet\.(\w+)\.(\w+)|`(\w+)\.(\w+)`")  # mobilenet.module.name, or `module.name`
SUFFIXES = {"py", "json", "jsonl", "pt", "onnx", "md", "toml", "log"}  # `config.json` is a file


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


def _nginx_map(text: str, start: str) -> list[tuple[re.Pattern | None, str]]:
    """The entries of the nginx map block starting with `start`: (regex, or None for default; value)."""
    block = text[text.index(start) + len(start):]
    entries = []
    for line in block[:block.index("\n}")].strip().splitlines():
        key, value = line.strip().rsplit(None, 1)
        pattern = None if key == "default" else re.compile(key.strip('"')[1:].replace("(?<", "(?P<"))
        entries.append((pattern, value.rstrip(";")))
    return entries


def _nginx_value(entries: list[tuple[re.Pattern | None, str]], remote_addr: str) -> str:
    for pattern, value in entries:
        match = pattern.search(remote_addr) if pattern else True
        if match:
            names = {"remote_addr": remote_addr} | (match.groupdict() if pattern else {})
            return re.sub(r"\$\{?(\w+)\}?", lambda m: names[m[1]], value)
    raise AssertionError("no default")


def test_deploys_nginx_limits_count_an_ipv6_host_by_its_64() -> None:
    entries = _nginx_map((ROOT / "DEPLOY.md").read_text(), "map $remote_addr $client {")
    rng = random.Random(0)
    for _ in range(2000):  # zero groups often, so that nginx's :: falls anywhere
        groups = [rng.choice([0, 0, 0, 1, 0xdb8, 0xffff, rng.randrange(1 << 16)]) for _ in range(8)]
        address = ipaddress.IPv6Address(b"".join(g.to_bytes(2, "big") for g in groups))
        if address.ipv4_mapped:
            continue
        assert _nginx_value(entries, str(address)) == "".join(f"{g:x}:" for g in groups[:4]), address
    assert _nginx_value(entries, "203.0.113.7") == "203.0.113.7"
