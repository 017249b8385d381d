"""A training run's folder: its files, its state, its name, and reading what the trainer wrote.

    config.json    the TrainConfig (mobilenet.config)
    metrics.jsonl  one MetricsRow per line: "step" rows about once a second, an "epoch" row per epoch
    status.json    RunStatus: state, pid of the writer, epoch, epochs, error
    last.pt        the latest state, for resuming; best.pt the best model so far
    report.json    RunReport, at the end: the best model's validation, and under LAST_EPOCH the last epoch's
    train.log      the output of a job the app started (mobilenet.jobs)
    .writer.lock   flock'd by the one process writing the run (the trainer, from the CLI or an app job)

Readers never trust these files: a malformed one reads as missing (or a row is skipped), or, where what it
holds is asked for by name (config, report), as a ValueError that names it; never a crash.
"A live process writes this run" is exactly "its writer lock is held": the kernel releases it when the
writer ends, even on kill -9, and no child process of the writer ever holds it (see keep_from_children).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from .config import TrainConfig
from .evaluate import Evaluation
from .locks import is_locked, keep_from_children, release_kept, try_lock
from .memo import Memo
from .values import is_finite, is_int, is_number

LAST_EPOCH = "last_epoch"  # report.json: the last epoch's validation, whichever epoch was best


JOB_LOCK_FD_ENV = "MOBILENET_JOB_LOCK_FD"  # an app job's slot lock (mobilenet.jobs), inherited by the trainer


class RunBusy(OSError):
    """Another live process is writing this run."""


class DiskFull(OSError):
    """The disk filled up while writing a run; what was there before is kept."""


def disk_full(error: BaseException) -> bool:
    """ENOSPC, also as torch's zip writer reports it ("unexpected pos" once the disk refused a write)."""
    return isinstance(error, DiskFull) or (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) \
        or "unexpected pos" in str(error)


class RunState(str, Enum):
    LOADING = "loading"
    RUNNING = "running"
    STOPPED = "stopped"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # said to be loading or running, but no process writes it any more

    @property
    def live(self) -> bool:
        return self in (RunState.LOADING, RunState.RUNNING)


@dataclass(frozen=True)
class MetricsRow:
    kind: str  # "step" or "epoch"
    epoch: int  # 1-based: the epoch this row belongs to
    step: int  # optimizer steps done so far
    train_loss: float
    train_acc: float
    lr: float
    img_per_s: float
    elapsed_s: float
    eta_s: float | None
    val_loss: float | None = None
    val_acc: float | None = None
    total_steps: int | None = None  # the whole run's (None in rows written before it was recorded)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def epochs_done(self, epochs: int) -> float:
        """Where in the run this row stands, in epochs (1.5: half-way through the second epoch)."""
        if self.kind == "epoch":
            return float(self.epoch)
        if self.total_steps:
            done = epochs * self.step / self.total_steps
        elif self.eta_s is not None and self.elapsed_s + self.eta_s > 0:  # earlier rows: their ETA was proportional
            done = epochs * self.elapsed_s / (self.elapsed_s + self.eta_s)  # to the steps left
        else:
            return float(self.epoch)
        return min(max(done, self.epoch - 1.0), float(self.epoch))

    @classmethod
    def from_dict(cls, values: Any) -> MetricsRow:
        """ValueError for anything that is not a well-formed row."""
        if not isinstance(values, dict) or values.get("kind") not in ("step", "epoch"):
            raise ValueError("not a metrics row")
        row = {}
        for f in fields(cls):
            value, whole = values.get(f.name), str(f.type).startswith("int")
            if f.name == "kind":
                row[f.name] = value
            elif value is None and "None" in str(f.type):
                row[f.name] = None
            elif whole and is_int(value):
                row[f.name] = value
            elif not whole and is_finite(value) and abs(value) <= sys.float_info.max:  # a huge int is no float
                row[f.name] = float(value)
            else:
                raise ValueError(f"metrics row field {f.name} is {value!r}")
        return cls(**row)


@dataclass(frozen=True)
class RunStatus:
    state: RunState
    pid: int | None = None
    updated: float = 0.0
    epoch: int = 0
    epochs: int = 0
    error: str | None = None

    @classmethod
    def from_dict(cls, values: Any) -> RunStatus:
        """ValueError for anything that is not a status."""
        if not isinstance(values, dict):
            raise ValueError("not a status object")
        state = RunState(values.get("state"))
        pid, updated = values.get("pid"), values.get("updated", 0.0)
        epoch, epochs, error = values.get("epoch", 0), values.get("epochs", 0), values.get("error")
        counts = (epoch, epochs)  # true or -2 read "epoch True/True", "5/-2"
        if not (pid is None or is_int(pid)) or not is_number(updated) \
                or not all(is_int(n) and n >= 0 for n in counts) or not (error is None or isinstance(error, str)):
            raise ValueError("malformed status")
        try:
            return cls(state, pid, float(updated), epoch, epochs, error)
        except OverflowError:  # a time of 400 digits
            raise ValueError("malformed status") from None

    def to_dict(self) -> dict:
        values = {"state": self.state.value, "pid": self.pid, "updated": self.updated, "epoch": self.epoch,
                  "epochs": self.epochs}
        return values | ({"error": self.error} if self.error else {})


@dataclass(frozen=True)
class RunReport:
    """How a finished run ended. validation: its best model on the held-out split; last_epoch: its last epoch's
    model there, which is what vouches for a full-data run trained with its settings (None in reports written
    before it was kept). Both None for a run that held out no images; the measures of one process (rank 0) only."""
    epochs: int
    best_val_acc: float | None
    train_time_s: float | None = None
    device: str | None = None
    validation: Evaluation | None = None
    last_epoch: Evaluation | None = None

    @classmethod
    def from_dict(cls, values: Any) -> RunReport:
        """ValueError for anything that is not a finished run's report."""
        if not isinstance(values, dict) or values.get("status") != RunState.FINISHED.value:
            raise ValueError("unreadable, or not a finished run's report")
        epochs, best, seconds, device = (values.get(k) for k in ("epochs", "best_val_acc", "train_time_s", "device"))
        if not (is_int(epochs) and epochs > 0) or not (best is None or is_finite(best)) \
                or not (seconds is None or is_finite(seconds)) or not (device is None or isinstance(device, str)):
            raise ValueError("malformed report")
        last = values.get(LAST_EPOCH)
        try:
            measured = any(key in values for key in ("accuracy", "n", "classes", "per_class", "confusion"))
            validation = Evaluation.from_report(values) if measured else None
            last_epoch = Evaluation.from_report(last) if last is not None else None
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError, OverflowError) as e:
            raise ValueError(f"malformed validation ({e})") from None
        if validation is not None and not validation.n:  # reports before 1bce45e scored 0 of 0 held-out images
            validation = last_epoch = None
        if last_epoch is not None and validation is None:
            raise ValueError("malformed report: a last epoch's validation but none of the best model")
        return cls(epochs, best, seconds, device, validation, last_epoch)

    def to_dict(self) -> dict:
        values = {"status": RunState.FINISHED.value, "epochs": self.epochs, "best_val_acc": self.best_val_acc,
                  "train_time_s": self.train_time_s, "device": self.device}
        values |= self.validation.to_dict() if self.validation else {}
        return values | ({LAST_EPOCH: self.last_epoch.to_dict()} if self.last_epoch else {})


def run_name(cfg: TrainConfig) -> str:
    """A new run's folder name: when it started, α and the recipe."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-a{cfg.alpha:g}-{cfg.recipe}"


class RunFolder:
    """The files of one run; only the writing process (rank 0) writes them."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.metrics = self.path / "metrics.jsonl"
        self.status = self.path / "status.json"
        self.report = self.path / "report.json"
        self.last = self.path / "last.pt"
        self.best = self.path / "best.pt"
        self.log = self.path / "train.log"
        self.lock = self.path / ".writer.lock"

    @property
    def name(self) -> str:
        return self.path.name

    # ---- writing -------------------------------------------------------------------------------

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the run's writer lock (RunBusy when a live process holds it), after clearing a dead writer's debris.

        A trainer started by the app also keeps the app's job lock, which it inherited, from its children.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        fd = try_lock(self.lock)
        if fd is None:
            raise RunBusy(f"{self.name} is being written by another live process")
        inherited = os.environ.pop(JOB_LOCK_FD_ENV, "")
        if inherited.isdigit():
            try:
                keep_from_children(int(inherited))
            except OSError:  # not open in this process after all
                pass
        for debris in self.path.glob(".*.tmp"):  # temporary files of saves a kill interrupted
            debris.unlink(missing_ok=True)
        try:
            yield
        finally:
            release_kept(fd)

    def mark_failed(self, error: str) -> None:
        """Record that a run (or its start) failed, keeping the epochs its last state holds; written under the writer
        lock, so never over the status of another live process that writes the run meanwhile."""
        try:
            with self.writing():
                saved = self.read_status() or RunStatus(RunState.FAILED)
                self.set_status(RunState.FAILED, saved.epoch, saved.epochs, error=error[:500])
        except RunBusy:
            pass  # the run is that process's now

    @property
    def writer_alive(self) -> bool:
        """A live process holds the writer lock (readers never create or write anything)."""
        return is_locked(self.lock)

    def write_json(self, path: Path, obj: Any) -> None:
        """Atomically, or not at all: on failure (a full disk) the old file stays and no temporary is left. Each
        writer has a temporary of its own (two Stop clicks at once write the job file twice)."""
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        try:
            tmp.chmod(0o644)  # mkstemp's 0600 would hide the file from a web server's user
            tmp.write_text(json.dumps(obj, indent=2))
            os.replace(tmp, path)
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            if disk_full(e):
                raise DiskFull(f"disk full while writing {self.name}/{path.name}") from None
            raise

    def write_config(self, cfg: TrainConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_json(self.config, cfg.to_dict())

    def set_status(self, state: RunState, epoch: int = 0, epochs: int = 0, error: str | None = None) -> None:
        self.write_json(self.status, RunStatus(state, os.getpid(), time.time(), epoch, epochs, error).to_dict())

    def clear(self) -> None:
        """Remove what a previous run left (only ever asked for explicitly: see train's overwrite)."""
        for path in (self.metrics, self.last, self.best, self.report, self.status, *self.path.glob("best*.onnx")):
            path.unlink(missing_ok=True)

    def append_metrics(self, row: MetricsRow) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(row.to_dict()) + "\n")
            f.flush()

    def truncate_metrics(self, step: int, epoch: int) -> None:
        """Keep the rows up to the saved state, so a resumed run never repeats or skips an epoch.

        A half-written last line (a kill mid-write) is dropped, as the readers skip it.
        """
        if not self.metrics.exists():
            return
        keep = [r for r in self.read_metrics() if (r.epoch <= epoch if r.kind == "epoch" else r.step <= step)]
        tmp = self.metrics.with_name(f".{self.metrics.name}.tmp")
        try:
            tmp.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in keep))
            os.replace(tmp, self.metrics)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # ---- reading -------------------------------------------------------------------------------

    def _json(self, path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
            return None

    def read_config(self) -> TrainConfig:
        """The run's TrainConfig; ValueError when the folder has none or it is malformed."""
        if not self.config.exists():
            raise ValueError(f"{self.name} is not a run folder: it has no config.json")
        values = self._json(self.config)
        try:
            return TrainConfig.from_dict(values)
        except ValueError as e:
            raise ValueError(f"{self.name}/config.json: {e}") from None

    def read_status(self) -> RunStatus | None:
        """The status the writer left, or None when there is none or it is malformed."""
        try:
            return RunStatus.from_dict(self._json(self.status))
        except ValueError:
            return None

    def read_report(self) -> RunReport | None:
        """The finished run's report; None when it has none (yet); ValueError naming it when it is malformed."""
        if not self.report.exists():
            return None
        try:
            return RunReport.from_dict(self._json(self.report))
        except ValueError as e:
            raise ValueError(f"{self.name}/report.json: {e}") from None

    def read_metrics(self) -> list[MetricsRow]:
        """metrics.jsonl rows, skipping malformed ones (a partly written last line among them).

        Read incrementally: only the bytes appended since the last read, in any thread of this process.
        """
        return _metrics_logs.read(self.metrics)

    def metrics_summary(self) -> MetricsSummary:
        """The epochs metrics.jsonl records and the best validation accuracy among them, once per version of the
        file: a listing of many finished runs reads none of them again (the rows of at most 64 files are kept)."""
        try:
            stat = self.metrics.stat()
        except OSError:
            return MetricsSummary(0, None)
        key = (self.metrics, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if (summary := _summaries.get(key)) is not None:
            return summary
        epochs = [r for r in self.read_metrics() if r.kind == "epoch"]
        accs = [r.val_acc for r in epochs if r.val_acc is not None]
        summary = MetricsSummary(len(epochs), max(accs) if accs else None)
        _summaries.put(key, summary)
        return summary

    @property
    def resumable(self) -> bool:
        """Has what resuming needs (whether it should be resumed is its state's business)."""
        return self.config.is_file() and self.last.is_file()

    @property
    def started(self) -> bool:
        """Training has written into this folder (a folder with only config.json has not started)."""
        return any(p.exists() for p in (self.metrics, self.last, self.best, self.report))


@dataclass(frozen=True)
class MetricsSummary:
    epochs: int  # epoch rows
    best_val_acc: float | None


_summaries: Memo[MetricsSummary] = Memo(size=4096)


def metrics_csv(rows: list[MetricsRow]) -> str:
    """Rows as CSV text under a header naming the MetricsRow fields; a value the row lacks is an empty cell."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=[f.name for f in fields(MetricsRow)], lineterminator="\n")
    writer.writeheader()
    writer.writerows(row.to_dict() for row in rows)
    return text.getvalue()


def thinned(rows: list[MetricsRow], steps: int) -> list[MetricsRow]:
    """Every epoch row and at most about `steps` step rows, evenly spaced, the last one kept."""
    step_rows = [r for r in rows if r.kind == "step"]
    stride = -(-len(step_rows) // steps) if steps > 0 else 1
    keep = {id(r) for r in step_rows[::-stride]} if stride > 1 else {id(r) for r in step_rows}
    return [r for r in rows if r.kind == "epoch" or id(r) in keep]


def _parse_rows(text: bytes) -> list[MetricsRow]:
    rows = []
    for line in text.splitlines():
        try:
            rows.append(MetricsRow.from_dict(json.loads(line)))
        except (ValueError, RecursionError):  # UnicodeDecodeError, JSONDecodeError, a malformed row, deep nesting
            continue
    return rows


def _holds(f: BinaryIO, at: int, expected: bytes) -> bool:
    f.seek(at)
    return f.read(len(expected)) == expected


class _MetricsLogs:
    """The rows of recently read metrics files and how far each was read, shared by the threads of a process.

    A file is re-read from the start when it was replaced (a new inode: a resume truncates it), shrank, or no longer
    holds the line read last where it was (a new file on a freed inode: a deleted run's name used again).
    Only whole lines are kept; a last line without its newline is parsed on each read until it has one.
    """

    def __init__(self, files: int = 64) -> None:
        self._lock = threading.Lock()
        self._files: OrderedDict[Path, tuple[tuple[int, int], int, bytes, tuple[MetricsRow, ...]]] = OrderedDict()
        self._max = files

    def read(self, path: Path) -> list[MetricsRow]:
        try:
            with open(path, "rb") as f:
                stat = os.fstat(f.fileno())
                identity, size = (stat.st_dev, stat.st_ino), stat.st_size
                with self._lock:
                    known, offset, last, rows = self._files.get(path, (identity, 0, b"", ()))
                    if known != identity or size < offset or not _holds(f, offset - len(last), last):
                        offset, last, rows = 0, b"", ()
                    f.seek(offset)
                    new = f.read(size - offset)
                    whole = new.rfind(b"\n") + 1
                    rows += tuple(_parse_rows(new[:whole]))
                    last = new[max(0, new.rfind(b"\n", 0, whole - 1) + 1):whole] if whole else last
                    self._files[path] = (identity, offset + whole, last, rows)
                    self._files.move_to_end(path)
                    while len(self._files) > self._max:
                        self._files.popitem(last=False)
        except OSError:
            return []
        return [*rows, *_parse_rows(new[whole:])]


_metrics_logs = _MetricsLogs()
