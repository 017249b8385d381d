"""The training page through AppTest: a real background job on generated data, started, watched and stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import shutil
import time
from pathlib import Path

import pytest
import torch
from helpers import FakeClock, isolate_app, save_model, write_folder, write_report, zip_folder
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from mobilenet import admin, app_models, app_runs, catalog, settings
from mobilenet.app_runs import RunsSnapshot
from mobilenet.config import RECIPES, TrainConfig
from mobilenet.data import CIFAR10_FOLDER
from mobilenet.evalsets import TrainingSource
from mobilenet.jobs import Job, JobManager
from mobilenet.locks import release_kept, try_lock
from mobilenet.runs import RunFolder, RunState

PAGE = Path(__file__).resolve().parent.parent / "app_pages" / "training.py"


@pytest.fixture(autouse=True)
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("MOBILENET_ADMIN_PASSWORD", raising=False)
    yield isolate_app(tmp_path, monkeypatch)
    JobManager(tmp_path / "runs").stop()  # never leave a job behind


def open_page() -> AppTest:
    """A new visitor, after the runs folder changed (the page's shared snapshot lives a refresh)."""
    app_runs._runs_snapshot.clear()
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def choose_data(at: AppTest, data: Path) -> None:
    """A folder in the data root by its name; any other path typed in, as only an admin may."""
    listed = TrainingSource(data.name, str(data))
    if data.exists() and data.parent.resolve() == settings.data_root().resolve():
        data_box(at).select(listed).run()
    else:
        data_box(at).select(app_runs.OTHER_DATA).run()
        data_folder(at)[0].input(str(data))


def data_box(at: AppTest):
    return next(s for s in at.selectbox if s.label == "Data")


def data_folder(at: AppTest) -> list:
    return [t for t in at.text_input if t.label == "Data folder"]


def fill_form(at: AppTest, folder: Path, epochs: int) -> None:
    choose_data(at, folder)
    at.slider[0].set_value(0.25)
    at.number_input[0].set_value(8)  # batch size
    at.number_input[1].set_value(epochs)


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def rerun_until(at: AppTest, predicate, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while True:
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        if predicate(at):
            return
        assert time.time() < deadline, "timed out"
        time.sleep(0.5)


def test_start_watch_refuse_a_second_job_and_stop(places: Path) -> None:
    folder = write_folder(places / "data" / "images", per_class=40)
    at = open_page()
    assert "No training job is running." in [c.value for c in at.caption]
    fill_form(at, folder, epochs=100)
    button(at, "Start").click().run()
    assert not at.error and at.success[0].value.startswith("Started ")
    rerun_until(at, lambda a: any("img/s" in (getattr(p, "text", "") or "") for p in a.get("progress")))
    assert at.get("vega_lite_chart")  # the live curves

    other = open_page()  # a second visitor
    fill_form(other, folder, epochs=1)
    button(other, "Start").click().run()
    assert "already running" in other.error[0].value

    button(at, "Stop").click().run()
    manager = JobManager(places / "runs")
    deadline = time.time() + 60
    while manager.active() and time.time() < deadline:
        time.sleep(0.2)
    assert manager.active() is None
    rerun_until(at, lambda a: "No training job is running." in [c.value for c in a.caption])
    assert manager.runs()[0].state == "stopped"
    assert button(at, "Resume")  # a stopped run can be resumed


def test_a_finished_run_shows_its_report_and_reaches_the_model_list(places: Path) -> None:
    folder = write_folder(places / "data" / "images", per_class=20)
    at = open_page()
    fill_form(at, folder, epochs=1)
    button(at, "Start").click().run()
    rerun_until(at, lambda a: any("validation accuracy" in m.value for m in a.markdown), timeout=180)
    assert len(at.get("vega_lite_chart")) >= 2  # per-class accuracy and confusion matrix
    assert any(k.startswith("runs/") for k in catalog.list_models().keys)


def test_a_missing_folder_is_a_message(places: Path) -> None:
    at = open_page()
    fill_form(at, places / "nowhere", epochs=1)
    button(at, "Start").click().run()
    assert not at.exception and "not found" in at.error[0].value
    assert JobManager(places / "runs").runs() == []


def test_admin_gate(places: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOBILENET_ADMIN_PASSWORD", "s3cret")
    clock = FakeClock()
    gate = admin.GuessGate(clock)
    monkeypatch.setattr(admin, "guess_gate", lambda: gate)
    at = open_page()
    assert button(at, "Start").disabled
    at.text_input[0].input("guess").run()
    assert at.error[0].value == "Wrong password: try again in 1 s." and button(at, "Start").disabled
    clock.advance(1)
    at.text_input[0].input("s3cret").run()
    assert not button(at, "Start").disabled


def test_without_a_password_the_page_is_open(places: Path) -> None:
    at = open_page()
    assert not button(at, "Start").disabled
    assert not [t for t in at.text_input if t.label == "Admin password"]


def finished_run(runs: Path, name: str, updated: float) -> RunFolder:
    """A finished run as the trainer leaves it, with a loadable best.pt and a report."""
    folder = RunFolder(runs / name)
    folder.write_config(TrainConfig(data="cifar10", alpha=0.25, epochs=1))
    save_model(folder.best, alpha=0.25)
    folder.metrics.write_text(json.dumps({"kind": "epoch", "epoch": 1, "step": 5, "train_loss": 1.0, "train_acc": 0.5,
                                          "lr": 0.1, "img_per_s": 9.0, "elapsed_s": 1.0, "eta_s": 0.0,
                                          "val_loss": 1.0, "val_acc": 0.5}) + "\n")
    write_report(folder, epochs=1)
    folder.status.write_text(json.dumps({"state": "finished", "pid": 1, "updated": updated, "epoch": 1, "epochs": 1}))
    return folder


MALFORMED = {  # run folder → {file: content}
    "status-list": {"status.json": "[]"},
    "status-updated": {"status.json": '{"state": "finished", "updated": "yesterday"}'},
    "config-list": {"config.json": "[1, 2]"},
    "config-null": {"config.json": "null"},
    "metrics-junk": {"metrics.jsonl": '1\n[]\n{"kind": "epoch", "val_acc": "high"}\n'},
    "report-empty": {"report.json": "{}"},
    "report-fields": {"report.json": '{"status": "finished", "accuracy": 0.5}'},
    "report-no-best": {"best.pt": None},
}


def test_malformed_run_files_never_break_the_page(places: Path) -> None:
    runs = places / "runs"
    for i, (name, files) in enumerate(MALFORMED.items()):
        folder = finished_run(runs, name, updated=1000.0 + i)
        for file, content in files.items():
            (folder.path / file).unlink() if content is None else (folder.path / file).write_text(content)
    at = open_page()
    warnings = [w.value for w in at.warning]
    assert warnings == [f"{name} is left out: it holds no readable run." for name in ("config-list", "config-null")]
    shown = set(at.dataframe[0].value["run"])
    assert shown == set(MALFORMED) - {"config-list", "config-null"}
    assert not [b for b in at.get("download_button")]  # the newest run has no best.pt to offer


def test_a_run_on_a_hundred_classes_is_shown_and_can_be_deleted(places: Path) -> None:
    """Its 10,000-cell confusion matrix was refused by Altair (over 5,000 rows): the page failed for every visitor
    while it was the newest run, before drawing its Delete button."""
    folder = finished_run(places / "runs", "hundred", updated=1000.0)
    write_report(folder, epochs=1, classes=tuple(f"class{i:03d}" for i in range(100)),
                 confusion=torch.eye(100, dtype=torch.int64) * 10)
    at = open_page()
    assert len(at.get("vega_lite_chart")) >= 2  # per-class accuracy and confusion matrix
    button(at, "Delete")


def test_only_a_checkpoint_that_loads_is_offered_for_download(places: Path) -> None:
    folder = finished_run(places / "runs", "good", updated=time.time())
    at = open_page()
    assert len(at.get("download_button")) == 1
    torch.save({"model": torch.nn.Linear(2, 2)}, folder.best)  # pickled code: the loader refuses it
    at = open_page()
    assert not at.get("download_button")
    assert [m.value for m in at.markdown if "validation accuracy" in m.value]  # the report is still shown


def test_an_admin_password_written_as_a_number_switches_training_off_in_words(places: Path) -> None:
    """admin_password = 1234 in secrets.toml is a TOML number: every sign-in failed with an AttributeError."""
    app_runs._runs_snapshot.clear()
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.secrets["admin_password"] = 1234
    at.run()
    assert not at.exception
    assert at.warning[0].value == ("Training is switched off: the admin password in the server's secrets file is not "
                                   "text. The host writes it in quotes (admin_password = \"…\") to switch it on.")
    assert button(at, "Start").disabled
    assert not [t for t in at.text_input if t.label == "Admin password"]
    at.secrets["admin_password"] = "1234"
    at.run()
    at.text_input[0].input("1234").run()
    assert not at.exception and not button(at, "Start").disabled


def test_no_password_beyond_loopback_switches_training_off(places: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    address = st_config.get_option("server.address")
    st_config.set_option("server.address", "0.0.0.0")
    try:
        at = open_page()
    finally:
        st_config.set_option("server.address", address)
    assert "Training is switched off" in at.warning[0].value
    assert button(at, "Start").disabled
    assert not [t for t in at.text_input if t.label == "Admin password"]


def test_no_password_behind_a_proxy_switches_training_off_for_its_visitors(places: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "local_visitor", lambda: False)  # the server on loopback, the visitor through nginx
    at = open_page()
    assert "Training is switched off for visitors from other machines" in at.warning[0].value
    assert button(at, "Start").disabled
    monkeypatch.setattr(admin, "local_visitor", lambda: True)
    assert not button(open_page(), "Start").disabled


def test_messages_name_the_configured_folders_not_server_paths(places: Path) -> None:
    at = open_page()
    fill_form(at, (places / "data" / "nowhere").resolve(), epochs=1)
    button(at, "Start").click().run()
    assert str(places) not in at.error[0].value and "data/nowhere" in at.error[0].value
    folder = finished_run(places / "runs", "broken", updated=time.time())
    folder.status.write_text(json.dumps({"state": "failed", "updated": time.time(),
                                         "error": f"{(places / 'data' / 'x').resolve()} not found"}))
    folder.report.unlink()
    at = open_page()
    assert [e.value for e in at.error] == ["broken failed: data/x not found"]


def test_an_unwritable_runs_folder_is_a_message(places: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = places / "not-a-folder"
    blocker.write_text("a file where the runs folder should be")
    monkeypatch.setenv("MOBILENET_RUNS", str(blocker / "runs"))
    folder = write_folder(places / "images", per_class=4)
    at = open_page()
    assert "No training job is running." in [c.value for c in at.caption]
    fill_form(at, folder, epochs=1)
    button(at, "Start").click().run()
    assert not at.exception and at.error[0].value == "the runs folder cannot be written to; see the server log"


def test_the_recipe_sets_defaults_and_only_overrides_are_sent(places: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[TrainConfig] = []
    monkeypatch.setattr(JobManager, "start", lambda self, cfg: sent.append(cfg) or places / "runs" / "recorded")
    folder = write_folder(places / "images", per_class=4)
    at = open_page()
    choose_data(at, folder)
    next(s for s in at.selectbox if s.label == "Recipe").select("seed").run()
    seed = RECIPES["seed"]
    assert [n.value for n in at.number_input] == [seed.batch_size, seed.epochs, seed.lr]
    assert not [c.value for c in at.caption if c.value.startswith("overrides")]
    at.number_input[1].set_value(seed.epochs + 10).run()
    assert f"overrides: epochs {seed.epochs + 10} (recipe: {seed.epochs})" in [c.value for c in at.caption]
    button(at, "Start").click().run()
    assert not at.error and at.success[0].value == "Started recorded."
    (cfg,) = sent
    assert (cfg.recipe, cfg.epochs, cfg.batch_size, cfg.lr) == ("seed", seed.epochs + 10, None, None)


def test_the_admin_sees_who_they_are_and_can_sign_out(places: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOBILENET_ADMIN_PASSWORD", "s3cret")
    at = open_page()
    hint = "sign in as admin to start, stop or resume training"
    assert any(hint in c.value for c in at.caption) and hint in button(at, "Start").help.lower()
    at.text_input[0].input("s3cret").run()
    assert not [t for t in at.text_input if t.label == "Admin password"]
    assert any("Signed in as admin" in c.value for c in at.caption)
    assert not button(at, "Start").disabled and not button(at, "Start").help
    button(at, "Sign out").click().run()
    assert [t.value for t in at.text_input if t.label == "Admin password"] == [""]
    assert button(at, "Start").disabled and not any("Signed in" in c.value for c in at.caption)


def live_run(runs: Path, name: str, pid: int = 4194305) -> tuple[RunFolder, int]:
    """A run that a job trains, as the page sees it: the job slot held (by this process) and .job.json naming it and
    the job's process (by default none)."""
    folder = RunFolder(runs / name)
    folder.write_config(TrainConfig(data="cifar10", alpha=0.25, epochs=10))
    folder.last.write_bytes(b"saved state")
    folder.metrics.write_text(json.dumps({"kind": "epoch", "epoch": 1, "step": 5, "train_loss": 1.0, "train_acc": 0.5,
                                          "lr": 0.1, "img_per_s": 9.0, "elapsed_s": 10.0, "eta_s": 90.0,
                                          "val_loss": 1.0, "val_acc": 0.5}) + "\n")
    set_state(folder, "running")
    manager = JobManager(runs)
    fd = try_lock(manager.lock_path)
    manager.job_path.write_text(json.dumps(Job(str(folder.path.resolve()), pid, 0).to_dict()))
    return folder, fd


def set_state(folder: RunFolder, state: str) -> None:
    folder.status.write_text(json.dumps({"state": state, "updated": time.time(), "epoch": 1, "epochs": 10}))
    app_runs._runs_snapshot.clear()


def progress(at: AppTest) -> str:
    return at.get("progress")[0].proto.text


def test_stop_and_resume_say_stopping_and_starting_until_the_job_has(places: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    job = subprocess.Popen(["sleep", "60"], start_new_session=True)  # the job's process: it ends on Stop
    folder, fd = live_run(places / "runs", "slow", job.pid)  # the job slot stays held: the job takes its time
    at, other = open_page(), open_page()  # the visitor who stops it, and another one
    assert "img/s" in progress(at) and "img/s" in progress(other)
    button(at, "Stop").click().run()
    assert job.wait(timeout=10) == -signal.SIGTERM
    for visitor in (at, other.run(), open_page()):  # until the job has saved and ended, for everyone
        assert "stopping…" in progress(visitor) and not [b for b in visitor.button if b.label == "Stop"]
    release_kept(fd)
    set_state(folder, "stopped")
    at.run()
    assert "No training job is running." in [c.value for c in at.caption]

    def resume(self: JobManager, run: Path) -> Path:  # the job starts, and loads its data for a while
        nonlocal fd
        _, fd = live_run(places / "runs", "slow")
        set_state(folder, "stopped")
        return run

    monkeypatch.setattr(JobManager, "resume", resume)
    try:
        button(at, "Resume").click().run()
        assert "starting…" in progress(at)
        set_state(folder, "running")
        at.run()
        assert "img/s" in progress(at)
    finally:
        release_kept(fd)


def test_a_run_offers_resume_as_soon_as_its_job_has_stopped(places: Path) -> None:
    """Within the shared snapshot's lifetime: the job's end is seen at once, and with it the run's new state."""
    folder, fd = live_run(places / "runs", "slow")
    at = open_page()
    assert "img/s" in progress(at)
    release_kept(fd)
    folder.status.write_text(json.dumps({"state": "stopped", "updated": time.time(), "epoch": 1, "epochs": 10}))
    at.run()  # no cache cleared here: the snapshot drawn a moment ago still says "running"
    assert "No training job is running." in [c.value for c in at.caption]
    assert button(at, "Resume")


def test_a_finished_run_is_said_to_be_in_the_model_selector_only_when_it_is(places: Path) -> None:
    folder = finished_run(places / "runs", "done", updated=time.time())
    at = open_page()
    assert app_models.models().get("runs/done")
    assert any("it is in the model selector now" in m.value for m in at.markdown)
    folder.best.write_bytes(b"not a checkpoint")
    at = open_page()
    assert app_models.models().get("runs/done") is None
    said = [m.value for m in at.markdown if "validation accuracy" in m.value]
    assert len(said) == 1 and said[0].endswith("; its checkpoint does not load, so it is not in the model selector.")


def test_a_run_killed_while_finishing_is_not_shown_as_finished(places: Path) -> None:
    """It wrote its report, then was killed before its status said finished: the page gave its accuracy and said its
    checkpoint did not load (it loads; the run is not finished)."""
    folder = finished_run(places / "runs", "killed", updated=time.time())
    folder.last.write_bytes(folder.best.read_bytes())  # (the last epoch's state, as resume reads it, in a real run)
    folder.status.write_text(json.dumps({"state": "running", "updated": time.time(), "epoch": 1, "epochs": 1}))
    at = open_page()
    assert at.dataframe[0].value["state"].tolist() == ["interrupted"]
    assert not [m.value for m in at.markdown if "validation accuracy" in m.value]


def test_a_run_that_finishes_while_the_page_is_open_reruns_the_whole_app(places: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The run finishes between the page's draw (its model selector without the run) and the live view's refresh:
    the whole app reruns, so that the selector lists it."""
    app_runs._runs_snapshot.clear()
    before = app_runs.runs_snapshot()  # no runs yet
    finished_run(places / "runs", "done", updated=time.time())
    app_runs._runs_snapshot.clear()
    after = app_runs.runs_snapshot()
    seen: list[RunsSnapshot] = []
    monkeypatch.setattr(app_runs, "runs_snapshot", lambda: seen.append(after if seen else before) or seen[-1])
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert len(seen) == 4  # the page and its live view, then both again: the app reran once, and once only
    assert any("it is in the model selector now" in m.value for m in at.markdown)


def visitor_page() -> AppTest:
    """The page as a visitor who may not train sees it (here: a server beyond loopback without a password)."""
    address = st_config.get_option("server.address")
    st_config.set_option("server.address", "0.0.0.0")
    try:
        return open_page()
    finally:
        st_config.set_option("server.address", address)


def test_the_data_choices_are_what_the_data_root_holds(places: Path) -> None:
    root = places / "data"
    write_folder(root / "shapes", per_class=2)
    zip_folder(write_folder(places / "zipped", per_class=2, splits=("",)), root / "more.zip")
    write_folder(root / "only-tests", per_class=2, splits=("test",))  # nothing to train on
    (root / "cache").mkdir()  # the decode cache
    download = "CIFAR-10 (downloads about 170 MB when the job starts)"
    at = open_page()
    assert data_box(at).options == ["more.zip", "shapes", download, app_runs.OTHER_DATA.label]
    assert data_box(at).value.label == "more.zip" and not data_folder(at)  # something that is there
    visitor = visitor_page()
    assert data_box(visitor).options == ["more.zip", "shapes", download]  # no server paths for visitors
    assert not data_folder(visitor)

    (root / CIFAR10_FOLDER).mkdir()
    at = open_page()
    assert data_box(at).options[:3] == ["CIFAR-10 (downloaded)", "more.zip", "shapes"]
    assert data_box(at).value.source == "cifar10"


def test_a_failed_run_says_why_in_the_table(places: Path) -> None:
    finished_run(places / "runs", "good", updated=time.time() - 60)
    folder = RunFolder(places / "runs" / "offline")
    folder.write_config(TrainConfig(data="cifar10", alpha=0.25, epochs=3, data_root=str(places / "data")))
    folder.set_status(RunState.FAILED, error=f"CIFAR-10 could not be downloaded: this server has no internet access. "
                                             f"Choose an image folder or .zip in {(places / 'data').resolve()} instead")
    table = open_page().dataframe[0].value.set_index("run")
    assert table.loc["offline", "why it failed"] == ("CIFAR-10 could not be downloaded: this server has no internet "
                                                     "access. Choose an image folder or .zip in data instead")
    assert table.loc["offline", "epochs"] == "0/3" and table.loc["good", "why it failed"] == ""


def test_a_failure_names_a_typed_data_path_outside_the_data_root_by_its_last_part(places: Path) -> None:
    typed = places / "elsewhere" / "private-photos"
    folder = RunFolder(places / "runs" / "typed")
    folder.write_config(TrainConfig(data=str(typed), alpha=0.25, epochs=3))
    folder.set_status(RunState.FAILED, error=f"data folder {typed} not found")
    at = open_page()
    said = [at.dataframe[0].value.set_index("run").loc["typed", "why it failed"], at.error[0].value]
    assert said == ["data folder private-photos not found", "typed failed: data folder private-photos not found"]


def test_an_admin_deletes_a_run_after_confirming(places: Path) -> None:
    finished_run(places / "runs", "old", updated=time.time() - 60)
    finished_run(places / "runs", "new", updated=time.time())
    at = open_page()
    next(s for s in at.selectbox if s.label == "Run to delete").select("old").run()
    button(at, "Delete").click().run()
    assert [w.value for w in at.warning] == ["Delete run old and its checkpoint? This cannot be undone."]
    button(at, "Cancel").click().run()
    assert not at.warning and (places / "runs" / "old").is_dir()

    next(s for s in at.selectbox if s.label == "Run to delete").select("old").run()
    button(at, "Delete").click().run()
    button(at, "Confirm").click().run()
    assert not at.exception and not (places / "runs" / "old").exists()
    assert list(at.dataframe[0].value["run"]) == ["new"]
    assert app_models.models().get("runs/old") is None and app_models.models().get("runs/new")


def test_a_visitor_cannot_delete_and_the_running_run_is_not_offered(places: Path) -> None:
    finished_run(places / "runs", "done", updated=time.time() - 60)
    _, fd = live_run(places / "runs", "slow")
    try:
        at = visitor_page()
    finally:
        release_kept(fd)
    assert next(s for s in at.selectbox if s.label == "Run to delete").options == ["done"]
    assert button(at, "Delete").disabled


def test_a_finished_runs_curves_stay_with_its_report(places: Path) -> None:
    finished_run(places / "runs", "done", updated=time.time())
    charts = [json.loads(c.proto.spec) for c in open_page().get("vega_lite_chart")]
    titles = [c.get("title") for c in charts]
    assert titles[:3] == ["loss", "accuracy", "learning rate"] and len(charts) == 5  # then per class, confusion
    assert all(c["width"] == "container" for c in charts[:3])  # they fit a phone


def test_a_delete_asked_for_a_run_that_went_away_is_not_asked_again_when_it_is_back(places: Path) -> None:
    finished_run(places / "runs", "old", updated=time.time() - 60)
    finished_run(places / "runs", "new", updated=time.time())
    at = open_page()
    next(s for s in at.selectbox if s.label == "Run to delete").select("old").run()
    button(at, "Delete").click().run()
    shutil.move(places / "runs" / "old", places / "away")  # moved away: no longer to delete
    app_runs._runs_snapshot.clear()
    at.run()
    assert not at.warning
    shutil.move(places / "away", places / "runs" / "old")
    app_runs._runs_snapshot.clear()
    at.run()
    assert not at.warning and not [b for b in at.button if b.label == "Confirm"]


def test_a_job_whose_run_folder_was_moved_can_still_be_stopped(places: Path) -> None:
    job = subprocess.Popen(["sleep", "60"], start_new_session=True)
    folder, fd = live_run(places / "runs", "moved", job.pid)
    try:
        shutil.move(folder.path, places / "elsewhere")
        app_runs._runs_snapshot.clear()
        at = open_page()
        assert "no longer in the runs folder" in " ".join(c.value for c in at.caption)
        button(at, "Stop").click().run()
        assert job.wait(timeout=10) == -signal.SIGTERM
    finally:
        job.kill()
        release_kept(fd)
