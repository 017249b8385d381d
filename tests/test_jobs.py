from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilenet.config import TrainConfig
from mobilenet.jobs import NOT_SAVED, JobError, JobManager
from mobilenet.runs import RunState, read_metrics

from helpers import CLASSES, class_image, wait_for, write_folder

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("data") / "images", per_class=40)


@pytest.fixture(scope="module")
def slow_folder(tmp_path_factory) -> Path:
    """Enough large photos that decoding them takes the job's two decode workers a while."""
    root = tmp_path_factory.mktemp("slow") / "images"
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (root / "train" / name).mkdir(parents=True)
        first = root / "train" / name / "0000.jpg"
        Image.fromarray(class_image(label, rng, size=768)).save(first, quality=95)
        for i in range(1, 600):
            shutil.copyfile(first, first.with_name(f"{i:04d}.jpg"))
    return root


def tiny(folder: Path, tmp_path: Path, epochs: int) -> TrainConfig:
    return TrainConfig(data=str(folder), alpha=0.25, epochs=epochs, batch_size=8, val_size=24, device="cpu",
                       data_root=str(tmp_path / "root"))


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def open_files(pid: int) -> list[str]:
    folder = Path(f"/proc/{pid}/fd")
    return [os.readlink(fd) for fd in folder.iterdir() if fd.exists()]


def decoding_job(manager: JobManager, slow_folder: Path, tmp_path: Path) -> tuple[Path, int, list[int]]:
    """A job started on the slow folder, caught while its two workers decode."""
    run = manager.start(tiny(slow_folder, tmp_path, 1), name="loading")
    wait_for(lambda: (manager.active() or {}).get("pid"))
    pid = manager.active()["pid"]
    wait_for(lambda: len(children(pid)) >= 2)
    workers = children(pid)
    for worker in workers:  # they hold neither the job's lock nor the run's
        assert not [f for f in open_files(worker) if f.endswith(".lock")]
    assert [f for f in open_files(pid) if f.endswith(".job.lock")] and RunState(manager.run_info(run).state).live
    return run, pid, workers


def test_kill_9_while_decoding_ends_the_workers_and_frees_the_slot(slow_folder: Path, tmp_path: Path) -> None:
    manager = JobManager(tmp_path / "runs")
    run, pid, workers = decoding_job(manager, slow_folder, tmp_path)
    os.kill(pid, signal.SIGKILL)  # the job only: its workers must follow by themselves
    wait_for(lambda: not any(alive(w) for w in workers), timeout=20)
    wait_for(lambda: manager.active() is None, timeout=10)
    info = manager.run_info(run)
    assert (info.state, info.error, info.resumable) == (RunState.FAILED, NOT_SAVED, False)


def test_stop_while_decoding_ends_the_whole_job(slow_folder: Path, tmp_path: Path) -> None:
    manager = JobManager(tmp_path / "runs")
    run, pid, workers = decoding_job(manager, slow_folder, tmp_path)
    assert manager.stop()
    wait_for(lambda: not alive(pid) and not any(alive(w) for w in workers), timeout=20)
    wait_for(lambda: manager.active() is None, timeout=10)
    assert manager.run_info(run).state == RunState.FAILED
    manager.start(tiny(slow_folder, tmp_path, 1), name="next")  # the slot is free again
    assert manager.stop()
    wait_for(lambda: manager.active() is None, timeout=60)


def test_a_command_line_run_is_running_and_never_gets_a_second_writer(folder: Path, tmp_path: Path) -> None:
    manager = JobManager(tmp_path / "runs")
    run = tmp_path / "runs" / "cli"
    options = ["--data", str(folder), "--alpha", "0.25", "--epochs", "50", "--batch-size", "8", "--val-size", "24",
               "--device", "cpu", "--data-root", str(tmp_path / "root")]
    trainer = subprocess.Popen([sys.executable, "-m", "mobilenet", "train", *options, "--out", str(run), "--json"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (run / "last.pt").exists())
        info = manager.run_info(run)
        assert info.state == RunState.RUNNING and not info.resumable
        with pytest.raises(JobError, match="another process"):
            manager.resume(run)
        second = subprocess.run([sys.executable, "-m", "mobilenet", "train", "--resume", str(run)], cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and "another live process" in second.stderr
    finally:
        trainer.kill()
        trainer.wait()
    info = manager.run_info(run)
    assert info.state == RunState.INTERRUPTED and info.resumable


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
    assert [r.epoch for r in read_metrics(run) if r.kind == "epoch"] == [1, 2, 3]
    assert [r.name for r in manager.runs()] == ["victim"]


def test_failed_job_reports_its_error(tmp_path: Path) -> None:
    manager = JobManager(tmp_path / "runs")
    run = manager.start(TrainConfig(data=str(tmp_path / "missing"), device="cpu", data_root=str(tmp_path)), name="bad")
    wait_for(lambda: manager.active() is None)
    assert "not found" in (run / "train.log").read_text()
    info = manager.run_info(run)
    assert info.state == "failed" and not info.resumable
