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


def test_an_admin_password_of_spaces_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """A line `MOBILENET_ADMIN_PASSWORD=  ` in an env file is no password (so a public server does not train),
    not a two-space password anyone can guess."""
    from mobilenet import admin

    monkeypatch.setattr(admin, "_secret", lambda: None)
    monkeypatch.setenv(settings.ADMIN_PASSWORD_ENV, "  ")
    assert admin.admin_password() is None
    monkeypatch.setenv(settings.ADMIN_PASSWORD_ENV, " s3cret\n")
    assert admin.admin_password() == "s3cret"
    monkeypatch.setattr(admin, "_secret", lambda: " ")
    monkeypatch.delenv(settings.ADMIN_PASSWORD_ENV)
    assert admin.admin_password() is None


@pytest.mark.parametrize("value,allowed", [("1", True), (" yes ", True), ("TRUE", True), ("  ", False), ("0", False)])
def test_private_urls_are_allowed_only_when_asked(monkeypatch: pytest.MonkeyPatch, value: str, allowed: bool) -> None:
    monkeypatch.setenv(settings.ALLOW_PRIVATE_URLS_ENV, value)
    assert settings.private_urls_allowed() is allowed
