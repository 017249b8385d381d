"""The Runs page through AppTest, on generated run folders: any run's report and curves, overlays, the CSV download,
deep links, malformed folders and a live run's curves."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from urllib.parse import parse_qs

import pyarrow as pa
import pytest
from helpers import isolate_app, make_run, metrics
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

from mobilenet import app_runs, charts
from mobilenet.config import TrainConfig
from mobilenet.jobs import Job, JobManager, RunInfo
from mobilenet.locks import release_kept, try_lock
from mobilenet.runs import MetricsRow, RunState, RunStatus

PAGE = Path(__file__).resolve().parent.parent / "app_pages" / "runs.py"


@pytest.fixture(autouse=True)
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return isolate_app(tmp_path, monkeypatch) / "runs"


def open_page(run: str | None = None, compare: list[str] | None = None) -> AppTest:
    """A new visitor, by a link naming a run and runs to overlay (the page's shared snapshot lives a refresh)."""
    app_runs._runs_snapshot.clear()
    at = AppTest.from_file(PAGE, default_timeout=60)
    if run is not None:
        at.query_params[app_runs.RUN_KEY] = run
    if compare is not None:
        at.query_params[app_runs.COMPARE_KEY] = compare
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def titled(at: AppTest, title: str | list[str]) -> list[list[dict]]:
    """The rows of each chart on the page with this title (Streamlit sends a chart's data apart, in Arrow)."""
    charts = [c.proto for c in at.get("vega_lite_chart") if json.loads(c.proto.spec).get("title") == title]
    return [[row for dataset in chart.datasets for row in pa.ipc.open_stream(dataset.data.data).read_all().to_pylist()]
            for chart in charts]


def test_any_run_opens_with_its_settings_report_and_curves(runs: Path) -> None:
    make_run(runs, "older", epochs=2, updated=1000.0, cutout=8, teacher="/srv/t/a.pt, /srv/t/b.pt", stem="imagenet",
             beta=0.25)
    make_run(runs, "newer", epochs=3, updated=2000.0)
    at = open_page()
    assert at.selectbox[0].value == "newer" and at.selectbox[0].options == ["newer", "older"]
    at = open_page(run="older")
    assert at.selectbox[0].value == "older" and not at.warning
    assert at.markdown[0].value == "**older**: finished, epoch 2/2"
    assert ("recipe fast, α = 0.25, β = 0.25, 2 epochs, the imagenet stem; overrides: epochs 2, Cutout 8, distilled "
            "from a.pt, b.pt (weight 0.5)") in [c.value for c in at.caption]
    assert "Validation accuracy 100.00%" in [m.value for m in at.markdown]  # its confusion matrix: all right
    assert titled(at, "accuracy per class") and titled(at, ["confusion matrix", "rows: truth, columns: prediction"])
    (loss,) = titled(at, "loss")
    val = [(v["epochs"], v["value"]) for v in loss if v["measure"] == "loss" and v["series"] == "val (epochs)"]
    assert val == [(1.0, 1.5), (2.0, 0.75)]  # the older run's validation loss, against the epoch
    steps = [v["epochs"] for v in loss if v["series"] == "train (steps)"]
    assert steps == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]  # each step at its place within its epoch
    assert titled(at, "accuracy") and titled(at, "learning rate")
    at.selectbox[0].select("newer").run()
    assert at.markdown[0].value == "**newer**: finished, epoch 3/3"


def test_a_runs_report_is_drawn_from_specs_built_once_for_every_visitor(runs: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    make_run(runs, "done")
    built = []
    per_class = charts.per_class
    monkeypatch.setattr(charts, "per_class", lambda result: built.append(result.n) or per_class(result))
    for _ in range(3):  # visitors, or one visitor's refreshes
        at = open_page(run="done")
        assert titled(at, "accuracy per class")
    assert len(built) == 1


def test_the_link_to_a_run_names_it_even_when_it_is_the_newest(runs: Path) -> None:
    make_run(runs, "older", updated=1000.0)
    make_run(runs, "newer", updated=2000.0)
    at = open_page()  # the address names no run: it shows the newest, which a later run would replace

    def linked() -> dict[str, list[str]]:
        (link,) = at.get("page_link")
        assert link.proto.label == "Link to this run"
        return parse_qs(link.proto.query_string)

    assert linked() == {app_runs.RUN_KEY: ["newer"]}
    at.selectbox[0].select("older").run()
    assert linked() == {app_runs.RUN_KEY: ["older"]}


def test_the_overlay_draws_a_line_per_run(runs: Path) -> None:
    for i, name in enumerate(("a", "b", "c")):
        make_run(runs, name, epochs=2 + i, updated=1000.0 + i)
    at = open_page(compare=["a"])
    assert not titled(at, "validation accuracy")
    assert any(c.value.startswith("Choose two or more runs") for c in at.caption)
    at.multiselect[0].select("c").run()
    for page in (at, open_page(compare=["a", "c"])):  # chosen here, or by a link
        lines = {measure: {run: [row["epoch"] for row in rows if row["run"] == run] for run in ("a", "b", "c")}
                 for measure in ("validation accuracy", "training loss") for rows in titled(page, measure)}
        assert lines["validation accuracy"] == {"a": [1, 2], "b": [], "c": [1, 2, 3, 4]}
        assert lines["training loss"] == {"a": [0.25 * s for s in range(1, 9)], "b": [],  # the step rows
                                          "c": [0.25 * s for s in range(1, 17)]}


def test_the_csv_download_is_the_runs_metrics_built_only_when_asked(runs: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_run(runs, "done", epochs=2)
    make_run(runs, "other", epochs=1, updated=1.0)
    deferred: list = []
    monkeypatch.setattr(MediaFileManager, "add_deferred", lambda self, data, *args, **kwargs: deferred.append(
        (data, kwargs.get("file_name"))) or "deferred-id")
    built: list[int] = []
    real = app_runs.metrics_csv
    monkeypatch.setattr(app_runs, "metrics_csv", lambda rows: built.append(len(rows)) or real(rows))
    at = open_page(run="done")
    (button,) = at.get("download_button")
    assert button.label == "Download its metrics (CSV)"
    (make, file_name), = deferred
    assert file_name == "done-metrics.csv" and built == []  # nothing built until a visitor asks
    table = list(csv.DictReader(io.StringIO(make())))
    rows = folder.read_metrics()
    assert len(table) == len(rows) == 10
    assert [{k: v for k, v in r.to_dict().items()} for r in rows] == [
        {k: (None if v == "" else type(getattr(r, k))(v)) for k, v in t.items()} for r, t in zip(rows, table)]
    make()
    assert built == [10]  # asked again, the same file: built once


def test_a_link_to_a_missing_run_says_so(runs: Path) -> None:
    make_run(runs, "real")
    at = open_page(run="gone")
    assert [w.value for w in at.warning] == ["The link's run `gone` is not on this server: showing real."]
    assert at.selectbox[0].value == "real" and at.markdown[0].value.startswith("**real**")


def test_a_link_to_runs_to_overlay_that_are_missing_says_so(runs: Path) -> None:
    make_run(runs, "real")
    make_run(runs, "other")
    at = open_page(compare=["real", "gone"])
    assert [w.value for w in at.warning] == ["Left out of the overlay, not on this server: `gone`."]
    assert at.multiselect[0].value == ["real"]


def test_a_malformed_run_folder_is_skipped_with_a_warning(runs: Path) -> None:
    make_run(runs, "good")
    (make_run(runs, "broken").config).write_text("[1, 2]")
    at = open_page()
    assert [w.value for w in at.warning] == ["broken is left out: it holds no readable run."]
    assert at.selectbox[0].options == ["good"]


@pytest.mark.parametrize("confusion", [[[1, 0], [0, 1]], [], [[1.5, 0, 0], [0, 1, 0], [0, 0, 1]],
                                       [[-1, 0, 0], [0, 1, 0], [0, 0, 1]]])
def test_a_damaged_report_shows_the_run_without_results(runs: Path, confusion: list) -> None:
    folder = make_run(runs, "damaged")
    report = json.loads(folder.report.read_text())
    folder.report.write_text(json.dumps(report | {"classes": ["cat", "dog", "ship"], "confusion": confusion}))
    at = open_page(run="damaged")
    assert at.markdown[0].value.startswith("**damaged**: finished")
    assert not [m.value for m in at.markdown if m.value.startswith("Validation accuracy")]


def test_without_runs_the_page_says_where_they_come_from(runs: Path) -> None:
    at = open_page(run="anything")
    assert "there is no run here yet" in at.warning[0].value
    assert "the Training page starts one" in at.info[0].value


def test_a_running_runs_curves_follow_its_metrics_and_stay_when_it_ends(runs: Path) -> None:
    folder = make_run(runs, "live", epochs=1, state="running")
    manager = JobManager(runs)
    fd = try_lock(manager.lock_path)  # a job trains it: the slot held and its record naming it
    manager.job_path.write_text(json.dumps(Job(str(folder.path.resolve()), 4194305, 0).to_dict()))
    try:
        at = open_page()
        assert at.markdown[0].value == "**live**: running, epoch 1/1"
        for row in metrics(2, 2, accuracy=0.2):
            folder.append_metrics(row)
        at.run()  # the fragment's refresh
        (accuracy,) = titled(at, "accuracy")
        assert [v["epoch"] for v in accuracy if v["series"] == "val (epochs)"] == [1, 2]
    finally:
        release_kept(fd)
    folder.status.write_text(json.dumps({"state": "stopped", "updated": time.time(), "epoch": 2, "epochs": 2}))
    folder.last.write_bytes(b"saved state")
    app_runs._runs_snapshot.clear()
    at.run()
    assert at.markdown[0].value == "**live**: stopped, epoch 2/2" and len(titled(at, "accuracy")) == 1


def test_the_training_page_links_here(runs: Path) -> None:
    app = AppTest.from_file(PAGE.parent.parent / "streamlit_app.py", default_timeout=60).run()
    alone = AppTest.from_file(PAGE.with_name("training.py"), default_timeout=60)
    for at in (app.switch_page("app_pages/training.py"), alone):  # in the app, and as the training tests open it
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert [link.proto.page for link in at.get("page_link")] == ["runs"]


def test_the_progress_bar_counts_epochs_done_as_the_runs_table_does(tmp_path: Path) -> None:
    info = RunInfo("live", tmp_path, RunState.RUNNING, epoch=2, epochs=4, best_val_acc=None, config=TrainConfig(),
                   updated=0.0)
    row = MetricsRow("step", epoch=3, step=250, train_loss=1.0, train_acc=0.5, lr=0.1, img_per_s=170.0,
                     elapsed_s=60.0, eta_s=30.0, total_steps=400)  # half-way through the third of four epochs
    done, text = app_runs.job_progress(info, [row], RunStatus(RunState.RUNNING), stopping=False)
    assert done == 0.625 and text.startswith("live: 2.5/4 epochs, 170 img/s, ETA ")


def test_the_progress_bar_follows_the_runs_own_status_not_the_snapshots(tmp_path: Path) -> None:
    """The runs snapshot may be seconds old: read with it, a run training (or done, its process ending) still
    said "starting… loading data"."""
    info = RunInfo("live", tmp_path, RunState.LOADING, epoch=0, epochs=4, best_val_acc=None, config=TrainConfig(),
                   updated=0.0)
    row = MetricsRow("epoch", epoch=4, step=400, train_loss=1.0, train_acc=0.5, lr=0.0, img_per_s=170.0,
                     elapsed_s=60.0, eta_s=0.0, total_steps=400)
    for state, words in [(RunState.RUNNING, "live: 4.0/4 epochs"), (RunState.FINISHED, "live: 4.0/4 epochs"),
                         (RunState.LOADING, "live: starting… loading data")]:  # a resumed run's old rows
        assert app_runs.job_progress(info, [row], RunStatus(state), stopping=False)[1].startswith(words)
