"""The app's background training job: at most one per runs folder, independent of any browser session.

A job is the trainer's CLI in its own process group, with the cores the server leaves free (settings.job_threads,
settings.job_nice: visitors come first). Two locks, both flocks the kernel releases when their
holder ends, even on kill -9:

- the job slot, `<runs>/.job.lock`: the manager takes it and the job process inherits it, so "the app's
  job is running" is exactly "the slot is held", across servers and restarts;
- the run's writer lock (mobilenet.runs), taken by every trainer, from the app or the command line: a
  run whose status says loading or running while nobody holds it was interrupted and can be resumed, and
  a run whose writer is alive is never resumed or overwritten by a second writer.

Neither is ever held by the job's own children (its data-decode workers), which die with it.

The job's record, `<runs>/.job.json`, names its run and process, and says when it was asked to stop: every
visitor sees "stopping…" until it has ended.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .config import TrainConfig
from .locks import is_locked, release_kept, try_lock
from .runs import JOB_LOCK_FD_ENV, DiskFull, RunFolder, RunState, RunStatus, disk_full, run_name
from .settings import PACKAGE_ROOT, job_nice, job_threads, runs_dir
from .values import is_int, is_number

log = logging.getLogger(__name__)
NOT_SAVED = "it ended before its first epoch was saved; start it again"
# A run being deleted is first renamed to this, so that one that cannot be removed whole (a file another process
# holds, a disk error) leaves no half run in the list, only leftovers the next delete tries again.
DELETING = ".deleting-"


class JobError(RuntimeError):
    """A refused job action, with a message for the user."""


@dataclass(frozen=True)
class Job:
    """The running job, as its record says; a job whose record is not (yet, or readably) written is starting."""
    run: str | None = None  # the resolved path of the run it trains; None: starting
    pid: int | None = None  # its process, the leader of its process group
    started: float | None = None
    stopping: bool = False  # asked to stop: every visitor sees it until the job has ended

    @property
    def starting(self) -> bool:
        return self.run is None

    def trains(self, run: Path) -> bool:
        return self.run == str(run.resolve())

    @classmethod
    def read(cls, path: Path) -> Job:
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        if not isinstance(values, dict) or not isinstance(values.get("run"), str):
            return cls()
        pid = values.get("pid")
        if not (is_int(pid) and pid > 0):  # 0 or -1 would signal the server's own process group, or every process
            return cls()
        started = values.get("started")
        return cls(values["run"], pid, float(started) if is_number(started) else None,
                   values.get("stopping") is True)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunInfo:
    name: str
    path: Path
    state: RunState
    epoch: int
    epochs: int
    best_val_acc: float | None
    config: TrainConfig
    updated: float
    error: str | None = None

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.path)

    @property
    def resumable(self) -> bool:
        return self.state in (RunState.STOPPED, RunState.INTERRUPTED, RunState.FAILED) and self.folder.resumable


class JobManager:
    def __init__(self, folder: Path | str | None = None, python: str = sys.executable) -> None:
        self.runs_dir = runs_dir() if folder is None else Path(folder)
        self.python = python
        self.lock_path = self.runs_dir / ".job.lock"
        self.job_path = self.runs_dir / ".job.json"

    # -- the one job ------------------------------------------------------------------------------

    def _try_lock(self) -> int | None:
        """An fd holding the exclusive lock, or None when a job holds it."""
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        return try_lock(self.lock_path)

    def active(self) -> Job | None:
        """The running job, or None."""
        return Job.read(self.job_path) if is_locked(self.lock_path) else None

    def start(self, cfg: TrainConfig, name: str | None = None) -> Path:
        """Write the run's config.json, then launch the trainer on exactly that config."""
        name = name or run_name(cfg)
        folder = RunFolder((self.runs_dir / name).resolve())
        if folder.path.exists():
            raise JobError(f"a run named {name} already exists")
        return self._launch(folder, ["train", "--config", str(folder.config), "--out", str(folder.path)],
                            cfg.anchored())

    def resume(self, run: Path | str) -> Path:
        folder = RunFolder(run)
        if folder.writer_alive:
            raise JobError(f"{folder.name} is being trained by another process")
        if not folder.resumable:
            raise JobError(f"{folder.name} has no saved state to resume from")
        return self._launch(folder, ["train", "--resume", str(folder.path.resolve())])

    def _launch(self, folder: RunFolder, args: list[str], cfg: TrainConfig | None = None) -> Path:
        run = folder.path
        try:
            fd = self._try_lock()
        except OSError as e:
            log.error("cannot take the job lock %s: %s", self.lock_path, e)
            raise JobError("the runs folder cannot be written to; see the server log") from None
        if fd is None:
            job = self.active()
            named = f" ({Path(job.run).name})" if job and job.run else ""
            raise JobError(f"a training job is already running{named}; stop it first")
        try:
            self._forget_last_job()  # until this job's record is written, it shows as starting
            process = self._spawn(folder, args, cfg, fd)
            if not self._record(Job(str(run.resolve()), process.pid, time.time())):
                self._abandon(process, folder, new=cfg is not None)
                raise JobError("the runs folder cannot be written to; see the server log")
        finally:
            release_kept(fd)  # the job process keeps the lock until it ends; try_lock kept it from forked children
        return run

    def _forget_last_job(self) -> None:
        """Remove the ended job's record: read while the next one starts, it would name the old run and process (a
        stop would signal whatever process has that number now, a delete would not see the new run as busy)."""
        try:
            self.job_path.unlink(missing_ok=True)
        except OSError as e:
            log.error("cannot remove the last job's record %s: %s", self.job_path, e)
            raise JobError("the runs folder cannot be written to; see the server log") from None

    def _record(self, job: Job) -> bool:
        """Write the job's record; False when it cannot be written."""
        try:
            RunFolder(self.runs_dir).write_json(self.job_path, job.to_dict())
        except OSError as e:
            log.error("cannot record the job in %s: %s", self.job_path, e)
            return False
        return True

    @staticmethod
    def _abandon(process: subprocess.Popen, folder: RunFolder, new: bool) -> None:
        """End a job whose record could not be written: every page would show it as starting, with no Stop, for
        its whole life. A new run goes with it unless it has saved something; a resumed one keeps its state."""
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the job leads its own process group: its workers too
        except ProcessLookupError:
            pass
        process.wait()
        if new and not folder.started:
            shutil.rmtree(folder.path, ignore_errors=True)

    def _spawn(self, folder: RunFolder, args: list[str], cfg: TrainConfig | None, fd: int) -> subprocess.Popen:
        """The job's process, handed the slot lock; a new run that cannot be written leaves nothing behind."""
        try:
            if cfg is not None:
                folder.write_config(cfg)
            with open(folder.log, "ab") as output:
                package_root = str(PACKAGE_ROOT)
                python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
                env = os.environ | {"PYTHONUNBUFFERED": "1", "PYTHONPATH": python_path, JOB_LOCK_FD_ENV: str(fd),
                                    "OMP_NUM_THREADS": str(job_threads())}
                nice = ["nice", "-n", str(job_nice())] if job_nice() and shutil.which("nice") else []
                return subprocess.Popen(
                    [*nice, self.python, "-m", "mobilenet", *args, "--json"], stdout=output, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, pass_fds=(fd,), start_new_session=True, env=env,
                )
        except OSError as e:
            log.error("cannot start a job in %s: %s", folder.path, e)
            if cfg is not None and not folder.started:
                shutil.rmtree(folder.path, ignore_errors=True)
            raise JobError("the disk is full" if isinstance(e, DiskFull) or disk_full(e)
                           else "the run could not be written; see the server log") from None

    def stop(self, seen: Job | None = None) -> bool:
        """Ask the running job to save and stop: SIGTERM to its whole process group; False when none runs.

        seen: the job record the visitor's Stop button was drawn for; JobError when another job has started since
        (a page a refresh behind would stop it). The trainer saves and exits; while it loads data, it and its decode
        workers simply end. The request is recorded with the job, so that whoever watches sees it is stopping until
        it has ended: after the signal, which finds no process once the job has ended, so that a record written for
        it never lands on the record of a job started since.
        """
        job = self.active()
        if not job or job.pid is None:
            return False
        if seen is not None and (seen.pid, seen.started) != (job.pid, job.started):
            raise JobError("the job this Stop was for has ended, and another has started since: it was not stopped")
        try:
            os.killpg(job.pid, signal.SIGTERM)  # the job leads its own session and process group
        except ProcessLookupError:
            return False
        except PermissionError:  # started by another user (a server under another account, sudo)
            log.error("cannot stop the job %s: it belongs to another user", job)
            raise JobError("the job belongs to another user of this machine: stop it there") from None
        if not job.stopping:
            self._record(replace(job, stopping=True))
        return True

    def delete(self, run: Path | str) -> None:
        """Delete a run folder with everything in it, its checkpoints too. JobError for anything but a run folder
        directly in the runs folder, for the run a job is training or starting, and for a run a process writes."""
        folder = RunFolder(run)
        path = folder.path.resolve()
        if folder.path.is_symlink() or path.parent != self.runs_dir.resolve() or not folder.config.is_file():
            raise JobError(f"{folder.name} is not a run in the runs folder")
        job = self.active()
        if job is not None and job.starting:
            raise JobError("a training job is starting; try again in a moment")
        if job is not None and job.trains(path):
            raise JobError(f"{folder.name} is being trained; stop it first")
        try:
            fd = try_lock(folder.lock)  # held while deleting: a trainer that starts on the run meanwhile finds it busy
        except OSError as e:  # a read-only disk, a folder of another user's
            log.error("cannot delete the run %s: %s", path, e)
            raise JobError(f"{folder.name} could not be deleted; see the server log") from None
        if fd is None:
            raise JobError(f"{folder.name} is being trained by another process")
        try:
            path.rename(path.with_name(f"{DELETING}{path.name}-{secrets.token_hex(4)}"))
        except OSError as e:
            log.error("cannot delete the run %s: %s", path, e)
            raise JobError(f"{folder.name} could not be deleted; see the server log") from None
        finally:
            release_kept(fd)
        self._remove_deleted()

    def _remove_deleted(self) -> None:
        for leftover in self.runs_dir.glob(f"{DELETING}*"):
            try:
                shutil.rmtree(leftover)
            except OSError as e:
                log.error("a deleted run's files could not all be removed (%s); the next delete tries again", e)

    # -- runs --------------------------------------------------------------------------------------

    def run_info(self, run: Path | str, job: Job | None = None) -> RunInfo:
        """What a run folder says, checked against who writes it; ValueError for a folder that is no run."""
        folder = RunFolder(run)
        status = folder.read_status() or RunStatus(RunState.LOADING)
        config = folder.read_config()
        state, error = status.state, status.error
        if state.live and not folder.writer_alive:
            job = job if job is not None else self.active()
            starting = job is not None and (job.starting or job.trains(folder.path))
            state = state if starting else RunState.INTERRUPTED
        if state in (RunState.INTERRUPTED, RunState.STOPPED) and not folder.resumable:
            state, error = RunState.FAILED, NOT_SAVED
        summary = folder.metrics_summary()
        return RunInfo(folder.name, folder.path, state, status.epoch or summary.epochs,
                       status.epochs or config.effective.epochs,  # a run that failed as it began says none
                       summary.best_val_acc, config, status.updated, error)

    def runs(self) -> list[RunInfo]:
        """All readable runs, newest first."""
        return self.scan()[0]

    def scan(self) -> tuple[list[RunInfo], list[str]]:
        """All readable runs, newest first, and the names of folders skipped because they hold no readable run."""
        try:
            entries = sorted(self.runs_dir.iterdir())
        except OSError:
            return [], []
        job = self.active()
        runs, skipped = [], []
        for path in entries:
            try:
                if path.name.startswith(DELETING) or not (path.is_dir() and RunFolder(path).config.exists()):
                    continue
            except OSError:  # a folder this server may not read (lost+found on a disk of its own): no run of ours
                continue
            try:
                runs.append(self.run_info(path, job))
            except (ValueError, OSError) as e:
                log.warning("skipping run folder %s: %s", path, e)
                skipped.append(path.name)
        return sorted(runs, key=lambda r: r.updated, reverse=True), skipped
