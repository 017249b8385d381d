"""The training page through AppTest: a real background job on generated data, started, watched and stopped."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from app_helpers import isolate_app
from conftest import write_folder
from streamlit.testing.v1 import AppTest

from mobilenet import catalog
from mobilenet.jobs import JobManager

PAGE = Path(__file__).resolve().parent.parent / "app_pages" / "training.py"


@pytest.fixture(autouse=True)
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("MOBILENET_ADMIN_PASSWORD", raising=False)
    yield isolate_app(tmp_path, monkeypatch)
    JobManager(tmp_path / "runs").stop()  # never leave a job behind


def open_page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def fill_form(at: AppTest, folder: Path, epochs: int) -> None:
    at.radio[0].set_value("Folder or zip on the server")
    at.text_input[0].input(str(folder))
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
    folder = write_folder(places / "images", per_class=40)
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
    folder = write_folder(places / "images", per_class=20)
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
    at = open_page()
    assert button(at, "Start").disabled
    at.text_input[0].input("guess").run()
    assert at.error[0].value == "Wrong password." and button(at, "Start").disabled
    at.text_input[0].input("s3cret").run()
    assert not button(at, "Start").disabled


def test_without_a_password_the_page_is_open(places: Path) -> None:
    at = open_page()
    assert not button(at, "Start").disabled
    assert not [t for t in at.text_input if t.label == "Admin password"]
