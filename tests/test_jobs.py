from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import CIFAR10

from mobilenet.config import RECIPES, TrainConfig
from mobilenet.data import DataError
from mobilenet import catalog, jobs
from mobilenet.jobs import NOT_SAVED, Job, JobError, JobManager
from mobilenet.locks import release_kept, try_lock
from mobilenet.runs import RunFolder, RunState
from mobilenet.train import train

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
    try:
        return [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir() if fd.exists()]
    except OSError:  # the process has ended
        return []


def held_locks(pid: int) -> list[str]:
    return [f for f in open_files(pid) if f.endswith(".lock")]


def decoding_job(manager: JobManager, slow_folder: Path, tmp_path: Path) -> tuple[Path, int, list[int]]:
    """A job started on the slow folder, caught while its two workers decode."""
    run = manager.start(tiny(slow_folder, tmp_path, 1), name="loading")
    wait_for(lambda: manager.active() and manager.active().pid)
    pid = manager.active().pid
    wait_for(lambda: len(children(pid)) >= 2)
    workers = children(pid)
    # They hold neither the job's lock nor the run's: each closes them as its first act after the fork, which a
    # busy machine may not have scheduled yet when the test looks.
    wait_for(lambda: not any(held_locks(worker) for worker in workers), timeout=10)
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
    assert second.active().run.endswith("long")
    wait_for(lambda: second.run_info(run).state == "running" and RunFolder(run).read_metrics())
    assert second.stop()
    wait_for(lambda: first.active() is None)
    info = first.run_info(run)
    assert info.state == "stopped" and info.resumable
    assert not (tmp_path / "runs" / "other").exists()


def test_killed_job_shows_interrupted_and_resumes(folder: Path, tmp_path: Path) -> None:
    manager = JobManager(tmp_path / "runs")
    run = manager.start(tiny(folder, tmp_path, 3), name="victim")
    wait_for(lambda: (run / "last.pt").exists())  # the first epoch's state is saved
    os.kill(manager.active().pid, signal.SIGKILL)
    wait_for(lambda: manager.active() is None)
    info = manager.run_info(run)
    assert info.state == "interrupted" and info.resumable
    manager.resume(run)
    wait_for(lambda: manager.active() is None, timeout=300)
    info = manager.run_info(run)
    assert info.state == "finished" and info.epoch == 3
    assert [r.epoch for r in RunFolder(run).read_metrics() if r.kind == "epoch"] == [1, 2, 3]
    assert [r.name for r in manager.runs()] == ["victim"]


def test_failed_job_reports_its_error(tmp_path: Path) -> None:
    manager = JobManager(tmp_path / "runs")
    run = manager.start(TrainConfig(data=str(tmp_path / "missing"), device="cpu", data_root=str(tmp_path)), name="bad")
    wait_for(lambda: manager.active() is None)
    assert "not found" in (run / "train.log").read_text()
    info = manager.run_info(run)
    assert info.state == "failed" and not info.resumable


def a_run(runs: Path, name: str, epochs: int = 2) -> Path:
    folder = RunFolder(runs / name)
    folder.write_config(TrainConfig(data="cifar10", alpha=0.25, epochs=epochs))
    folder.best.write_bytes(b"weights")
    folder.set_status(RunState.FINISHED, epoch=epochs, epochs=epochs)
    return folder.path


def a_job(runs: Path, run: str, pid: int) -> int:
    """The job slot held (by this process) and the job's record naming the run: a job as every page sees it."""
    manager = JobManager(runs)
    fd = try_lock(manager.lock_path)
    manager.job_path.write_text(json.dumps(Job(run, pid, 0).to_dict()))
    return fd


def test_delete_removes_a_run_and_its_checkpoints(tmp_path: Path) -> None:
    manager = JobManager(tmp_path / "runs")
    run = a_run(tmp_path / "runs", "done")
    kept = a_run(tmp_path / "runs", "kept")
    manager.delete(run)
    assert not run.exists() and kept.exists()
    assert [r.name for r in manager.runs()] == ["kept"]


def test_a_delete_that_fails_part_way_leaves_no_half_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that cannot be removed (another process's, a disk error) stopped the removal after config.json had gone:
    the run vanished from every list while the page said it was not deleted, its checkpoint out of the app's reach."""
    runs = tmp_path / "runs"
    manager = JobManager(runs)
    run, kept = a_run(runs, "done"), a_run(runs, "kept")
    remove = shutil.rmtree

    def stuck(path: Path) -> None:
        (Path(path) / "config.json").unlink()
        raise PermissionError(1, "Operation not permitted", str(Path(path) / "best.pt"))

    monkeypatch.setattr(shutil, "rmtree", stuck)
    manager.delete(run)  # gone for the app: the leftovers are the host's, in the server log
    assert not run.exists() and [r.name for r in manager.runs()] == ["kept"] and manager.scan()[1] == []
    leftovers = list(runs.glob(f"{jobs.DELETING}done-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "best.pt").exists()
    assert [run.path.name for run in catalog.finished_runs(runs)] == ["kept"]  # nor is it among the models
    monkeypatch.setattr(shutil, "rmtree", remove)
    manager.delete(kept)  # the next delete removes them
    assert sorted(p.name for p in runs.iterdir() if not p.name.startswith(".job")) == []


def test_a_run_that_cannot_be_moved_aside_is_not_deleted_at_all(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs"
    run = a_run(runs, "done")
    monkeypatch.setattr(Path, "rename", lambda self, target: (_ for _ in ()).throw(PermissionError(13, "denied")))
    with pytest.raises(JobError, match="done could not be deleted; see the server log"):
        JobManager(runs).delete(run)
    assert (run / "config.json").exists() and [r.name for r in JobManager(runs).runs()] == ["done"]


def test_delete_refuses_anything_but_a_run_in_the_runs_folder(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    manager = JobManager(runs)
    elsewhere = a_run(tmp_path, "elsewhere")
    runs.mkdir()
    (runs / "link").symlink_to(elsewhere, target_is_directory=True)
    inside = a_run(runs, "inside")
    (runs / "alias").symlink_to(inside, target_is_directory=True)  # resolves into the runs folder: still a link
    (runs / "no-run").mkdir()
    for target in (elsewhere, runs / "link", runs / "alias", runs / ".." / "elsewhere", runs / "no-run", runs,
                   tmp_path):
        with pytest.raises(JobError, match="is not a run in the runs folder"):
            manager.delete(target)
    assert (elsewhere / "best.pt").exists() and (inside / "best.pt").exists() and (runs / "no-run").is_dir()


def test_delete_refuses_the_run_a_job_trains_or_a_process_writes(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    manager = JobManager(runs)
    trained, written, other = a_run(runs, "trained"), a_run(runs, "written"), a_run(runs, "other")
    fd = a_job(runs, str(trained.resolve()), 4194305)
    try:
        with pytest.raises(JobError, match="trained is being trained; stop it first"):
            manager.delete(trained)
        writer = try_lock(RunFolder(written).lock)  # a trainer from the command line
        try:
            with pytest.raises(JobError, match="being trained by another process"):
                manager.delete(written)
        finally:
            release_kept(writer)
        manager.job_path.unlink()  # a job that is being started: which run it trains is not known yet
        with pytest.raises(JobError, match="starting"):
            manager.delete(other)
    finally:
        release_kept(fd)
    assert trained.exists() and written.exists() and other.exists()
    manager.delete(written)
    assert not written.exists()


def test_a_starting_job_is_never_taken_for_the_last_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs"
    old = a_run(runs, "old")
    fd = a_job(runs, str(old.resolve()), 4194305)  # the last job's record stays behind when it ends
    release_kept(fd)
    manager = JobManager(runs)
    seen = []

    def spawn(folder: RunFolder, args: list, cfg: TrainConfig | None, fd: int) -> subprocess.Popen:
        seen.append(manager.active())  # another visitor's page, while the trainer is being started
        with pytest.raises(JobError, match="a training job is starting"):
            manager.delete(old)
        assert not manager.stop()  # no process to signal yet (the old number may be anyone's now)
        return subprocess.Popen(["true"])

    monkeypatch.setattr(manager, "_spawn", spawn)
    manager.start(TrainConfig(data="cifar10", alpha=0.25, epochs=1), name="new")
    assert seen == [Job()] and seen[0].starting
    assert Job.read(manager.job_path).run == str((runs / "new").resolve())


def test_a_job_whose_record_cannot_be_written_is_not_left_running(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Without its record a job shows as "starting" with no Stop button for its whole life: it is ended at once."""
    runs, started = tmp_path / "runs", []
    manager = JobManager(runs)
    write_json = RunFolder.write_json

    def job_file_fails(self: RunFolder, path: Path, obj: object) -> None:
        if path == manager.job_path:
            raise OSError(28, "No space left on device")
        write_json(self, path, obj)

    def spawn(folder: RunFolder, args: list, cfg: TrainConfig | None, fd: int) -> subprocess.Popen:
        if cfg is not None:
            folder.write_config(cfg)
        started.append(subprocess.Popen(["sleep", "60"], pass_fds=(fd,), start_new_session=True))
        return started[-1]

    monkeypatch.setattr(RunFolder, "write_json", job_file_fails)
    monkeypatch.setattr(manager, "_spawn", spawn)
    with pytest.raises(JobError, match="cannot be written"):
        manager.start(TrainConfig(data="cifar10", alpha=0.25, epochs=1), name="new")
    assert started[0].poll() == -signal.SIGKILL
    assert manager.active() is None and not (runs / "new").exists()
    kept = a_run(runs, "kept")
    (kept / "last.pt").write_bytes(b"state")
    monkeypatch.setattr(RunFolder, "resumable", True)
    with pytest.raises(JobError, match="cannot be written"):
        manager.resume(kept)
    assert started[1].poll() == -signal.SIGKILL and manager.active() is None
    assert (kept / "last.pt").read_bytes() == b"state"


def test_a_process_forked_while_a_job_starts_does_not_keep_its_slot(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Another visitor's evaluation forks its decode workers as the job starts: they must not inherit the slot's
    lock, or the slot reads as taken after the job has ended, for as long as they live."""
    import multiprocessing
    import time

    manager, forked = JobManager(tmp_path / "runs"), []

    def spawn(folder: RunFolder, args: list, cfg: TrainConfig | None, fd: int) -> subprocess.Popen:
        worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
        worker.start()
        forked.append(worker)
        return subprocess.Popen(["true"], pass_fds=(fd,))  # a job that ends at once

    monkeypatch.setattr(manager, "_spawn", spawn)
    try:
        manager.start(TrainConfig(data="cifar10", alpha=0.25, epochs=1), name="new")
        wait_for(lambda: forked and not manager.active(), timeout=10)
        assert forked[0].is_alive()
    finally:
        for worker in forked:
            worker.kill()


def test_stop_is_recorded_with_the_job_for_every_watcher(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    run = a_run(runs, "slow")
    job = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a job: the leader of its own process group
    fd = a_job(runs, str(run.resolve()), job.pid)
    try:
        assert not JobManager(runs).active().stopping
        assert JobManager(runs).stop()
        assert job.wait(timeout=10) == -signal.SIGTERM
        assert JobManager(runs).active().stopping is True  # another server's manager, another visitor's page
    finally:
        job.kill()
        release_kept(fd)
    assert JobManager(runs).active() is None


def test_a_stop_drawn_for_a_job_that_ended_does_not_stop_the_next(tmp_path: Path) -> None:
    """A page a refresh behind still shows the last job's Stop: clicked after another job started, it used to stop
    that one."""
    runs = tmp_path / "runs"
    run = a_run(runs, "next")
    seen = Job(str(run.resolve()), 4194305, 1.0)  # the job the button was drawn for
    job = subprocess.Popen(["sleep", "60"], start_new_session=True)
    fd = a_job(runs, str(run.resolve()), job.pid)
    try:
        with pytest.raises(JobError, match="another has started since: it was not stopped"):
            JobManager(runs).stop(seen=seen)
        assert job.poll() is None and not JobManager(runs).active().stopping
        assert JobManager(runs).stop(seen=JobManager(runs).active())
        assert job.wait(timeout=10) == -signal.SIGTERM
    finally:
        job.kill()
        release_kept(fd)


def test_a_run_that_failed_as_it_began_counts_its_configured_epochs(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "runs" / "early")
    folder.write_config(TrainConfig(data="cifar10", recipe="seed"))
    folder.set_status(RunState.FAILED, error="it could not start")
    info = JobManager(tmp_path / "runs").run_info(folder.path)
    assert (info.epoch, info.epochs, info.error) == (0, RECIPES["seed"].epochs, "it could not start")


def test_cifar10_offline_fails_in_words_for_the_app_and_for_the_command_line(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self) -> None:
        raise URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(CIFAR10, "download", offline)
    cfg = TrainConfig(data="cifar10", alpha=0.25, epochs=1, device="cpu", data_root=str(tmp_path / "data"))
    folder = RunFolder(tmp_path / "runs" / "offline")
    folder.write_config(cfg)  # as JobManager.start leaves it
    with pytest.raises(DataError, match="--data PATH"):  # the command line's words
        train(cfg, folder.path)
    error = JobManager(tmp_path / "runs").run_info(folder.path).error
    assert error.startswith("CIFAR-10 could not be downloaded: this server has no internet access. Choose an image "
                            f"folder or .zip in {tmp_path / 'data'} instead")
    assert "--" not in error


def test_a_run_or_job_this_server_may_not_touch_is_refused_in_words(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from mobilenet import jobs

    runs = tmp_path / "runs"
    manager = JobManager(runs)
    run = a_run(runs, "read-only")
    monkeypatch.setattr(jobs, "try_lock", lambda path: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only")))
    with pytest.raises(JobError, match="read-only could not be deleted; see the server log"):
        manager.delete(run)
    monkeypatch.undo()
    fd = a_job(runs, str(run.resolve()), 4194305)
    try:
        monkeypatch.setattr(os, "killpg", lambda pid, sig: (_ for _ in ()).throw(PermissionError(errno.EPERM, "no")))
        with pytest.raises(JobError, match="belongs to another user"):
            manager.stop()
    finally:
        release_kept(fd)
    assert run.exists()


def test_a_watchers_probe_at_that_instant_does_not_make_a_free_lock_look_held(tmp_path: Path) -> None:
    import fcntl
    import threading
    import time

    from mobilenet.locks import is_locked

    lock = tmp_path / ".job.lock"
    lock.touch()
    probing, probe = threading.Event(), os.open(lock, os.O_RDONLY)

    def watcher() -> None:  # is_locked's shared probe, held a little longer than a real one
        fcntl.flock(probe, fcntl.LOCK_SH)
        probing.set()
        time.sleep(0.02)
        fcntl.flock(probe, fcntl.LOCK_UN)

    thread = threading.Thread(target=watcher)
    thread.start()
    probing.wait()
    fd = try_lock(lock)
    thread.join()
    os.close(probe)
    assert fd is not None and is_locked(lock)
    release_kept(fd)
    assert not is_locked(lock)


def test_no_lock_is_held_by_a_child_forked_while_a_delete_or_a_sign_in_has_it(tmp_path: Path) -> None:
    """A page's decode workers forked while a delete or a sign-in held a lock (or a page probed one) kept that lock
    for as long as they lived: a run read as being written, a sign-in waited."""
    import multiprocessing

    from mobilenet import locks

    def fork() -> None:
        context = multiprocessing.get_context("fork")
        running = context.Event()
        child = context.Process(target=lambda: running.set() or time.sleep(30))
        child.start()
        children.append(child)
        assert running.wait(timeout=10)  # past the fork's own clean-up, in its work

    lock, children, held = tmp_path / ".writer.lock", [], []
    try:
        fd = locks.try_lock(lock)  # a delete's
        fork()
        locks.release_kept(fd)
        held.append(locks.is_locked(lock))
        with locks.waiting_lock(lock):  # a sign-in's
            fork()
        held.append(locks.is_locked(lock))
    finally:
        for child in children:
            child.kill()
            child.join()
    assert held == [False, False]


@pytest.mark.parametrize("record", ["", "[1]", '{"run": 3, "pid": 7}', '{"run": "/r", "pid": true}',
                                    '{"run": "/r"}', '{"run": "/r", "pid": "7"}',
                                    '{"run": "/r", "pid": 0}', '{"run": "/r", "pid": -1}'])  # killpg(0): the server
def test_a_job_record_that_is_not_one_reads_as_a_job_starting(tmp_path: Path, record: str) -> None:
    (tmp_path / "job.json").write_text(record)
    assert Job.read(tmp_path / "job.json") == Job() and Job().starting


def test_a_job_record_reads_back_as_written(tmp_path: Path) -> None:
    written = Job(str(tmp_path.resolve()), 4194305, 12.5, stopping=True)
    (tmp_path / "job.json").write_text(json.dumps(written.to_dict()))
    assert Job.read(tmp_path / "job.json") == written and written.trains(tmp_path) and not written.starting
    (tmp_path / "job.json").write_text(json.dumps({"run": "/r", "pid": 7, "started": "noon", "stopping": "yes"}))
    assert Job.read(tmp_path / "job.json") == Job("/r", 7)  # an odd time or flag is no time, and not stopping
