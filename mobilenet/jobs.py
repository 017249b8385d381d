"""The app's background training job: at most one per runs folder, independent of any browser session.

A job is the trainer's CLI in its own process. Exclusivity is an flock on `<runs>/.job.lock`: the
manager takes it, the job process inherits it, and the kernel releases it when that process ends,
even on kill -9. So "a job is running" is exactly "the lock is held", across servers and restarts.
A run whose status says running while no job holds the lock was interrupted and can be resumed.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .catalog import RUNS_DIR
from .train import RunFolder, TrainConfig, read_metrics


class JobError(RuntimeError):
    """A refused job action, with a message for the user."""


@dataclass(frozen=True)
class RunInfo:
    name: str
    path: Path
    state: str  # loading, running, stopped, finished, failed, interrupted
    epoch: int
    epochs: int
    best_val_acc: float | None
    config: dict
    updated: float

    @property
    def report(self) -> dict | None:
        """The finished run's report.json (accuracy, per-class, confusion), if there is one."""
        try:
            return json.loads(RunFolder(self.path).report.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    @property
    def error(self) -> str | None:
        try:
            return json.loads(RunFolder(self.path).status.read_text()).get("error")
        except (OSError, json.JSONDecodeError):
            return None

    @property
    def resumable(self) -> bool:
        return self.state in ("stopped", "interrupted", "failed") and RunFolder(self.path).last.exists()


class JobManager:
    def __init__(self, runs_dir: Path | str = RUNS_DIR, python: str = sys.executable) -> None:
        self.runs_dir = Path(runs_dir)
        self.python = python
        self.lock_path = self.runs_dir / ".job.lock"
        self.job_path = self.runs_dir / ".job.json"

    # -- the one job ------------------------------------------------------------------------------

    def _try_lock(self) -> int | None:
        """An fd holding the exclusive lock, or None when a job holds it."""
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def active(self) -> dict | None:
        """{"run", "pid", "started"} of the running job, or None."""
        fd = self._try_lock()
        if fd is not None:
            os.close(fd)
            return None
        try:
            return json.loads(self.job_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {"run": "?", "pid": None, "started": None}  # being started right now

    def start(self, cfg: TrainConfig, name: str | None = None) -> Path:
        name = name or f"{time.strftime('%Y%m%d-%H%M%S')}-a{cfg.alpha:g}-{cfg.recipe}"
        run = (self.runs_dir / name).resolve()
        if run.exists():
            raise JobError(f"a run named {name} already exists")
        data = cfg.data if cfg.data == "cifar10" else str(Path(cfg.data).resolve())
        args = ["train", "--data", data, "--recipe", cfg.recipe, "--alpha", str(cfg.alpha), "--beta", str(cfg.beta),
                "--stem", cfg.stem, "--seed", str(cfg.seed), "--val-size", str(cfg.val_size), "--device", cfg.device,
                "--data-root", str(Path(cfg.data_root).resolve()), "--out", str(run)]
        for flag, value in (("--epochs", cfg.epochs), ("--batch-size", cfg.batch_size), ("--lr", cfg.lr),
                            ("--subset", cfg.subset)):
            if value is not None:
                args += [flag, str(value)]
        if not cfg.download:
            args.append("--no-download")
        return self._launch(run, args)

    def resume(self, run: Path | str) -> Path:
        run = Path(run)
        if not RunFolder(run).last.exists():
            raise JobError(f"{run.name} has no saved state to resume from")
        return self._launch(run, ["train", "--resume", str(run.resolve())])

    def _launch(self, run: Path, args: list[str]) -> Path:
        fd = self._try_lock()
        if fd is None:
            job = self.active() or {}
            raise JobError(f"a training job is already running ({Path(str(job.get('run', '?'))).name}); stop it first")
        try:
            run.mkdir(parents=True, exist_ok=True)
            log = open(run / "train.log", "ab")
            package_root = str(Path(__file__).resolve().parent.parent)
            python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
            env = os.environ | {"PYTHONUNBUFFERED": "1", "PYTHONPATH": python_path}
            process = subprocess.Popen(
                [self.python, "-m", "mobilenet", *args, "--json"], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, pass_fds=(fd,), start_new_session=True, env=env,
            )
            log.close()
            tmp = self.job_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"run": str(run.resolve()), "pid": process.pid, "started": time.time()}))
            os.replace(tmp, self.job_path)
        finally:
            os.close(fd)  # the job process keeps the lock until it ends
        return run

    def stop(self) -> bool:
        """Ask the running job to save and stop (SIGTERM); False when none runs."""
        job = self.active()
        if not job or not job.get("pid"):
            return False
        try:
            os.kill(int(job["pid"]), signal.SIGTERM)
        except ProcessLookupError:
            return False
        return True

    # -- runs --------------------------------------------------------------------------------------

    def run_info(self, run: Path | str) -> RunInfo:
        folder = RunFolder(run)
        try:
            status = json.loads(folder.status.read_text())
        except (OSError, json.JSONDecodeError):
            status = {"state": "loading", "updated": 0}
        try:
            config = json.loads(folder.config.read_text())
        except (OSError, json.JSONDecodeError):
            config = {}
        state = status.get("state", "loading")
        if state in ("loading", "running"):
            job = self.active()
            if not job or Path(str(job.get("run"))).resolve() != folder.path.resolve():
                state = "interrupted"
        epochs = [r for r in read_metrics(folder.path) if r.get("kind") == "epoch"]
        accs = [r["val_acc"] for r in epochs if r.get("val_acc") is not None]
        return RunInfo(folder.path.name, folder.path, state, status.get("epoch", len(epochs)), status.get("epochs", 0),
                       max(accs) if accs else None, config, status.get("updated", 0))

    def runs(self) -> list[RunInfo]:
        """All runs, newest first."""
        if not self.runs_dir.exists():
            return []
        folders = [p for p in self.runs_dir.iterdir() if p.is_dir() and RunFolder(p).config.exists()]
        return sorted((self.run_info(p) for p in folders), key=lambda r: r.updated, reverse=True)
