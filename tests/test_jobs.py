from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from mobilenet.jobs import JobError, JobManager
from mobilenet.train import TrainConfig, read_metrics

from conftest import write_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("data") / "images", per_class=40)


def tiny(folder: Path, tmp_path: Path, epochs: int) -> TrainConfig:
    return TrainConfig(data=str(folder), alpha=0.25, epochs=epochs, batch_size=8, val_size=24, device="cpu",
                       data_root=str(tmp_path / "root"))


def wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def test_one_job_across_managers_then_stop(folder: Path, tmp_path: Path) -> None:
    first, second = JobManager(tmp_path / "runs"), JobManager(tmp_path / "runs")
    run = first.start(tiny(folder, tmp_path, 50), name="long")
    with pytest.raises(JobError, match="already running.*long"):
        second.start(tiny(folder, tmp_path, 1), name="other")
    assert second.active()["run"].endswith("long")
    wait_for(lambda: second.run_info(run).state == "running" and read_metrics(run))
    assert second.stop()
    wait_for(lambda: first.active() is None)
    info = first.run_info(run)
    assert info.state == "stopped" and info.resumable
    assert not (tmp_path / "runs" / "other").exists()


def test_killed_job_shows_interrupted_and_resumes(folder: Path, tmp_path: Path) -> None:
    manager = JobManager(tmp_path / "runs")
    run = manager.start(tiny(folder, tmp_path, 3), name="victim")
    wait_for(lambda: (run / "last.pt").exists())  # the first epoch's state is saved
    os.kill(manager.active()["pid"], signal.SIGKILL)
    wait_for(lambda: manager.active() is None)
    info = manager.run_info(run)
    assert info.state == "interrupted" and info.resumable
    manager.resume(run)
    wait_for(lambda: manager.active() is None, timeout=300)
    info = manager.run_info(run)
    assert info.state == "finished" and info.epoch == 3
    assert [r["epoch"] for r in read_metrics(run) if r["kind"] == "epoch"] == [1, 2, 3]
    assert [r.name for r in manager.runs()] == ["victim"]


def test_failed_job_reports_its_error(tmp_path: Path) -> None:
    manager = JobManager(tmp_path / "runs")
    run = manager.start(TrainConfig(data=str(tmp_path / "missing"), device="cpu", data_root=str(tmp_path)), name="bad")
    wait_for(lambda: manager.active() is None)
    assert "not found" in (run / "train.log").read_text()
    info = manager.run_info(run)
    assert info.state == "failed" and not info.resumable
