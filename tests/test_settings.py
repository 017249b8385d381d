from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mobilenet import settings


@pytest.mark.parametrize("value,used", [("3", 3), (" 3 ", 3), ("", 10), ("-5", 10), ("25", 10), ("high", 10),
                                        ("²", 10)])
def test_a_whole_number_setting_is_used_only_when_it_is_one_in_range(monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture,
                                                                     value: str, used: int) -> None:
    monkeypatch.setenv("MOBILENET_JOB_NICE", value)
    with caplog.at_level(logging.WARNING, logger="mobilenet.settings"):
        assert settings.job_nice() == used
    named = [r.getMessage() for r in caplog.records if "MOBILENET_JOB_NICE" in r.getMessage()]
    assert bool(named) == (value.strip() not in ("", str(used)))  # a value not used is named in the server log


def test_a_folder_set_empty_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOBILENET_RUNS", "")
    monkeypatch.setenv("MOBILENET_DATA", "  ")
    assert settings.runs_dir() == Path("runs") and settings.data_root() == Path("data")
