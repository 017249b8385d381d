"""The run folder: incremental metrics, the writer lock, debris, a full disk, refusing to overwrite a run."""

from __future__ import annotations

import errno
import json
import threading
import os
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from mobilenet import checkpoint, jobs
from mobilenet.config import TrainConfig
from mobilenet.jobs import JobError, JobManager
from mobilenet.runs import (LAST_EPOCH, DiskFull, MetricsRow, RunBusy, RunFolder, RunReport, RunState, metrics_csv,
                            thinned)
from mobilenet.train import train

from helpers import make_run, run_cli, write_folder


def row(step: int, kind: str = "step", epoch: int = 1) -> MetricsRow:
    return MetricsRow(kind, epoch, step, 1.0, 0.5, 0.1, 100.0, float(step), 10.0,
                      *((0.9, 0.6) if kind == "epoch" else ()))


def line(r: MetricsRow) -> str:
    return json.dumps(r.to_dict()) + "\n"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("data") / "images", per_class=20)


def tiny(images: Path, tmp_path: Path, epochs: int = 1) -> TrainConfig:
    return TrainConfig(data=str(images), alpha=0.25, epochs=epochs, batch_size=8, val_size=12, device="cpu",
                       data_root=str(tmp_path / "root"))


def test_metrics_are_read_incrementally_whole_lines_only(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    text = line(row(1)) + "1\n[]\n" + json.dumps(row(2).to_dict() | {"val_acc": "high"}) + "\n" + line(row(3))
    folder.metrics.write_text(text)
    assert [r.step for r in folder.read_metrics()] == [1, 3]  # the malformed rows are skipped
    half = line(row(4, "epoch"))
    with open(folder.metrics, "a") as f:
        f.write(half[:20])  # a writer in the middle of a line
    assert [r.step for r in folder.read_metrics()] == [1, 3]
    with open(folder.metrics, "a") as f:
        f.write(half[20:])
    assert [(r.kind, r.step) for r in folder.read_metrics()] == [("step", 1), ("step", 3), ("epoch", 4)]
    folder.truncate_metrics(step=1, epoch=0)  # a resume replaces the file: it is read again from the start
    assert [r.step for r in folder.read_metrics()] == [1]
    # A new file at the same place and as long, on the same inode (a deleted run's name used again): read afresh.
    with open(folder.metrics, "r+") as f:
        f.write(line(row(7)))
    assert [r.step for r in folder.read_metrics()] == [7]


def test_a_metrics_file_read_while_it_is_empty_again_is_read_when_it_fills(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.metrics.write_text(line(row(1)) + line(row(2)))
    assert len(folder.read_metrics()) == 2
    folder.metrics.unlink()
    with open(folder.metrics, "a") as f:  # a run of the same name, read before its first line
        assert folder.read_metrics() == []
        f.write(line(row(5)))
    assert [r.step for r in folder.read_metrics()] == [5]


def test_a_listing_reads_a_runs_metrics_once_per_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_run(tmp_path / "runs", "done", epochs=3)
    reads = []
    read = RunFolder.read_metrics
    monkeypatch.setattr(RunFolder, "read_metrics", lambda self: reads.append(self.name) or read(self))
    manager = JobManager(tmp_path / "runs")
    assert [r.epoch for r in manager.runs()] == [3] and len(reads) == 1
    assert [r.epoch for r in manager.runs()] == [3] and len(reads) == 1  # unchanged: not read again
    with open(folder.metrics, "a") as f:
        f.write(line(row(99, "epoch", epoch=4)))
    assert folder.metrics_summary().epochs == 4 and len(reads) == 2


def test_thinned_keeps_every_epoch_and_the_last_step() -> None:
    rows = [row(i, "epoch" if i % 100 == 99 else "step", epoch=1 + i // 100) for i in range(1000)]
    kept = thinned(rows, 50)
    assert [r.step for r in kept if r.kind == "epoch"] == list(range(99, 1000, 100))
    steps = [r.step for r in kept if r.kind == "step"]
    assert 40 <= len(steps) <= 50 and steps[-1] == 998 and steps == sorted(steps)
    assert thinned(rows[:10], 50) == rows[:10]


def test_metrics_csv_is_the_rows_under_a_header_naming_their_fields() -> None:
    rows = [row(1), row(2, "epoch")]
    text = metrics_csv(rows)
    header, *lines = text.splitlines()
    assert header == "kind,epoch,step,train_loss,train_acc,lr,img_per_s,elapsed_s,eta_s,val_loss,val_acc,total_steps"
    assert lines == ["step,1,1,1.0,0.5,0.1,100.0,1.0,10.0,,,", "epoch,1,2,1.0,0.5,0.1,100.0,2.0,10.0,0.9,0.6,"]
    assert metrics_csv([]) == header + "\n"


def test_a_row_with_a_number_too_large_for_its_field_is_malformed() -> None:
    row = asdict(MetricsRow("epoch", 3, 30, 0.5, 0.9, 0.1, 100.0, 60.0, 0.0, None, None, 40))
    assert MetricsRow.from_dict(row | {"step": 10**400}).step == 10**400  # an int field holds any int
    for field, value in (("train_loss", 10**400), ("step", 1.5), ("lr", float("nan")), ("epoch", True)):
        with pytest.raises(ValueError, match=field):
            MetricsRow.from_dict(row | {field: value})


def test_a_rows_place_in_the_run_in_epochs() -> None:
    """A step row stands at its steps done / the run's steps, whatever its ETA."""
    step = MetricsRow("step", 2, 15, 1.0, 0.5, 0.1, 100.0, elapsed_s=30.0, eta_s=99.0, total_steps=20)
    assert step.epochs_done(epochs=2) == 1.5
    assert step.epochs_done(epochs=20) == 2.0  # never outside its own epoch
    assert row(4, "epoch", epoch=3).epochs_done(epochs=5) == 3.0
    # Rows written before the run's steps were recorded: their ETA was proportional to the steps left.
    assert MetricsRow("step", 2, 15, 1.0, 0.5, 0.1, 100.0, elapsed_s=30.0, eta_s=10.0).epochs_done(epochs=2) == 1.5
    assert MetricsRow("step", 1, 1, 1.0, 0.5, 0.1, 1.0, 0.0, None).epochs_done(epochs=2) == 1.0  # no ETA: its epoch


def test_truncate_drops_a_half_written_last_line(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.metrics.write_text(line(row(1)) + line(row(2, "epoch")) + '{"kind": "step", "epo')
    folder.truncate_metrics(step=2, epoch=1)
    assert folder.metrics.read_text() == line(row(1)) + line(row(2, "epoch"))


def test_a_half_written_last_line_never_blocks_resume(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny(images, tmp_path, epochs=2), out)
    folder = RunFolder(out)
    with open(folder.metrics, "a") as f:
        f.write('{"kind": "step", "epoch": 3, "step": 9')  # killed mid-write
    report = train(tiny(images, tmp_path, epochs=2), out, resume=True)
    assert report is not None and report.epochs == 2
    lines = folder.metrics.read_text().splitlines()
    assert all(json.loads(text) for text in lines)
    assert [r.epoch for r in folder.read_metrics() if r.kind == "epoch"] == [1, 2]


def test_one_writer_at_a_time_and_a_dead_writers_debris_is_cleared(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    debris = folder.path / ".last.pt.x1y2z3.tmp"
    debris.write_bytes(b"half a checkpoint")
    assert not folder.writer_alive
    with folder.writing():
        assert folder.writer_alive and not debris.exists()
        with pytest.raises(RunBusy, match="another live process"):
            with RunFolder(folder.path).writing():
                pass
    assert not folder.writer_alive


def test_a_failure_is_recorded_under_the_writer_lock_and_never_over_a_live_writers_status(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.set_status(RunState.STOPPED, 3, 10)
    with folder.writing():  # another live trainer started meanwhile
        folder.set_status(RunState.LOADING, 3, 10)
        folder.mark_failed("its data moved")
    assert folder.read_status().state is RunState.LOADING
    locked_while_written = []
    set_status = RunFolder.set_status
    monkeypatch.setattr(RunFolder, "set_status", lambda self, *a, **k: (
        locked_while_written.append(RunFolder(self.path).writer_alive), set_status(self, *a, **k)))
    folder.mark_failed("its data moved")  # nobody writes it: the run says it failed, with the epochs it keeps
    status = folder.read_status()
    assert locked_while_written == [True] and (status.state, status.epoch, status.error) == (
        RunState.FAILED, 3, "its data moved")


def test_forked_children_never_hold_the_writer_lock(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    with folder.writing():
        child = os.fork()
        if child == 0:  # a decode worker, say, that outlives the writer
            time.sleep(10)
            os._exit(0)
    try:
        deadline = time.time() + 5  # the child closes its copy as soon as it first runs
        while folder.writer_alive and time.time() < deadline:
            time.sleep(0.05)
        assert not folder.writer_alive
        assert os.waitpid(child, os.WNOHANG) == (0, 0)  # the child still lives, without the lock
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)


def test_a_full_disk_keeps_the_old_file_and_leaves_no_debris(tmp_path: Path, monkeypatch) -> None:
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.write_json(folder.status, {"state": "running"})

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(DiskFull, match="disk full"):
        folder.write_json(folder.status, {"state": "failed"})
    monkeypatch.undo()
    assert json.loads(folder.status.read_text()) == {"state": "running"}
    assert sorted(p.name for p in folder.path.iterdir()) == ["status.json"]


def test_starting_a_job_on_a_full_disk_says_so_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_space)
    manager = JobManager(tmp_path / "runs")
    with pytest.raises(JobError, match="disk is full"):
        manager.start(TrainConfig(data="cifar10", device="cpu", data_root=str(tmp_path)), name="full")
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [".job.lock"]
    assert manager.active() is None


def test_a_full_disk_mid_run_says_so_and_keeps_the_last_saved_state(images: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out, saved = tmp_path / "run", []
    real_save = checkpoint.save

    def save(path, *args, **kwargs) -> None:
        if Path(path).name == "last.pt":
            if saved:  # the second epoch's state meets a full disk
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 354112 vs 354008")
            saved.append(path)
        real_save(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", save)
    with pytest.raises(DiskFull, match="disk full"):
        train(tiny(images, tmp_path, epochs=3), out)
    status = RunFolder(out).read_status()
    assert status.state == "failed" and status.error.startswith("disk full")
    assert checkpoint.read(RunFolder(out).last)["train_state"]["loop"]["epoch"] == 1
    info = JobManager(tmp_path).run_info(out)
    assert info.resumable and (info.epoch, info.epochs) == (1, 3)  # what its saved state holds: epoch 2 is lost


def test_cli_refuses_a_finished_run_unless_told_to_overwrite(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "done"
    train(tiny(images, tmp_path), out)
    best = RunFolder(out).best.read_bytes()
    options = ["--data", str(images), "--alpha", "0.25", "--epochs", "1", "--batch-size", "8", "--val-size", "12",
               "--device", "cpu", "--data-root", str(tmp_path / "root"), "--seed", "1"]
    refused = run_cli("train", *options, "--out", str(out))
    assert refused.returncode == 2 and "already holds a run" in refused.stderr
    assert RunFolder(out).best.read_bytes() == best and RunFolder(out).report.exists()
    done = run_cli("train", *options, "--out", str(out), "--overwrite", "--json")
    assert done.returncode == 0, done.stderr
    assert RunFolder(out).best.read_bytes() != best  # another seed's model
    assert jobs.JobManager(tmp_path).run_info(out).state == "finished"


def test_malformed_run_files_leave_that_run_out_and_the_others_shown(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs"
    for name in ("huge-time", "deep-report", "bad-metrics", "good"):
        make_run(runs, name, epochs=2, updated=1.0)
    (runs / "huge-time" / "status.json").write_text('{"state": "finished", "updated": 1' + "0" * 400 + "}")
    (runs / "deep-report" / "report.json").write_text("[" * 100_000 + "]" * 100_000)
    with open(runs / "bad-metrics" / "metrics.jsonl", "a") as f:
        f.write('{"kind": "epoch", "epoch": 3, "step": 1' + "0" * 400 + "}\n" + "[" * 100_000 + "\n")
    real_is_dir = Path.is_dir
    monkeypatch.setattr(Path, "is_dir", lambda self: (_ for _ in ()).throw(PermissionError(13, "denied"))
                        if self.name == "lost+found" else real_is_dir(self))
    (runs / "lost+found").mkdir()  # a folder this server may not read
    found, skipped = JobManager(runs).scan()
    assert sorted(r.name for r in found) == ["bad-metrics", "deep-report", "good", "huge-time"] and skipped == []
    assert len(RunFolder(runs / "bad-metrics").read_metrics()) == 2 * 5
    with pytest.raises(ValueError, match="deep-report/report.json: unreadable, or not a finished"):
        RunFolder(runs / "deep-report").read_report()


def test_two_writers_of_one_json_file_at_once_leave_it_whole(tmp_path: Path) -> None:
    """Two Stop clicks at the same instant write the job file twice: with one shared temporary file, one writer
    moved the other's half-written file into place, and the other's rename then failed."""
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    target, errors = folder.path / ".job.json", []

    def write(who: int) -> None:
        try:
            for i in range(300):
                folder.write_json(target, {"who": who, "i": i, "pad": "x" * 4000})
        except OSError as e:
            errors.append(e)

    writers = [threading.Thread(target=write, args=(who,)) for who in (1, 2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert errors == [] and json.loads(target.read_text())["i"] == 299
    assert [p.name for p in folder.path.iterdir()] == [".job.json"]


def test_a_status_counts_epochs_in_whole_numbers_from_zero(tmp_path: Path) -> None:
    """A hand-edited or damaged status.json read "epoch True/True" or "epoch 5/-2" on the pages."""
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    for counts in ({"epoch": True, "epochs": True}, {"epoch": 5, "epochs": -2}, {"epoch": 1.5, "epochs": 3}):
        folder.status.write_text(json.dumps({"state": "stopped", "updated": 1.0} | counts))
        assert folder.read_status() is None, counts
    folder.status.write_text(json.dumps({"state": "stopped", "updated": 1.0, "epoch": 0, "epochs": 3}))
    assert (folder.read_status().epoch, folder.read_status().epochs) == (0, 3)


def test_a_report_reads_back_as_written_and_anything_else_is_refused_by_name(tmp_path: Path) -> None:
    measured = {"accuracy": 0.75, "n": 4, "classes": ["cat", "dog"], "per_class": {"cat": 1.0, "dog": 0.5},
                "confusion": [[2, 0], [1, 1]]}
    written = {"status": "finished", "epochs": 3, "best_val_acc": 0.75, "train_time_s": 12.5, "device": "CPU"}
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.write_json(folder.report, written | measured | {LAST_EPOCH: measured})
    report = folder.read_report()
    assert (report.epochs, report.best_val_acc, report.validation.accuracy, report.last_epoch.n) == (3, 0.75, 0.75, 4)
    assert report.to_dict() == written | measured | {LAST_EPOCH: measured}
    assert RunReport.from_dict(written).validation is None  # a run that held out no images
    assert RunReport.from_dict(written | measured).last_epoch is None  # written before the last epoch was kept
    none_held_out = measured | {"n": 0, "per_class": {"cat": None, "dog": None}, "confusion": [[0, 0], [0, 0]]}
    assert RunReport.from_dict(written | none_held_out).validation is None  # as reports before 1bce45e said it
    for malformed in (written | {"status": "stopped"}, written | {"epochs": 0}, written | {"epochs": True},
                      written | {"best_val_acc": "high"}, written | {"device": 3}, written | {LAST_EPOCH: measured},
                      written | measured | {"confusion": [[2, 0]]}, written | {"accuracy": 0.75, "n": 4},
                      written | measured | {LAST_EPOCH: {"n": 4}}, [written]):
        folder.write_json(folder.report, malformed)
        with pytest.raises(ValueError, match="run/report.json: "):
            folder.read_report()
    folder.report.unlink()
    assert folder.read_report() is None  # not finished (yet)
