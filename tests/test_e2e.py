"""End to end: the app under `streamlit run` on a loopback port, driven in headless Chromium as a user would.

Needs Debian's Chromium at /usr/bin/chromium (`apt-get install chromium chromium-driver`) and Playwright for
Python (requirements-dev.txt), which drives that browser and downloads none. Without Chromium these tests are
skipped, except under CI (the CI variable set), where that is an error. The server gets its own folders: a
random-weight model, generated images, an empty runs folder. Screenshots of every page go to artifacts/e2e/.
"""

from __future__ import annotations

import http.server
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import CLASSES, image_bytes, make_run, save_model, write_folder
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from mobilenet import Classifier, explore
from mobilenet.app_runs import MAX_EPOCHS
from mobilenet.config import TrainConfig
from mobilenet.data import CIFAR10_CLASSES
from mobilenet.jobs import JobManager

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "artifacts" / "e2e"
TIMEOUT_MS = 60_000  # the machine may be busy: every wait is for a condition, this only bounds it
WINDOW = {"width": 1400, "height": 1000}
PHONE = {"width": 390, "height": 844}  # a phone held upright (iPhone 12 to 14)
# The app has finished its run: connected, and the script (or a fragment) is not running.
IDLE = "[data-testid='stApp'][data-test-connection-state='CONNECTED'][data-test-script-state='notRunning']"

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        pytest.fail(f"the end-to-end tests need Chromium at {CHROMIUM}; .ci/run installs it", pytrace=False)
    pytest.skip(f"the end-to-end tests need Chromium at {CHROMIUM}: apt-get install chromium chromium-driver",
                allow_module_level=True)

pytestmark = pytest.mark.e2e
expect.set_options(timeout=TIMEOUT_MS)


# ---- the server and the browser -----------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    url: str
    root: Path  # checkpoints/, runs/, data/ and the server's log
    password: str

    @property
    def model(self) -> Path:
        return self.root / "checkpoints" / "mobilenet_v1_a1.0.pt"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def images(self) -> Path:
        return self.root / "data" / "shapes"

    @property
    def log(self) -> Path:
        return self.root / "server.log"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never through a proxy
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"streamlit exited with {process.returncode}:\n{log.read_text()}")
        try:
            with opener.open(f"{url}/_stcore/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"streamlit was not healthy after {timeout:.0f} s:\n{log.read_text()}")
        time.sleep(0.2)  # nothing to wait on but the port


def stop_training(runs: Path, timeout: float = 60) -> None:
    """Stop any job a test started: ask it to save and stop, and kill it if it does not."""
    manager = JobManager(runs)
    manager.stop()
    deadline = time.monotonic() + timeout
    while (job := manager.active()) and time.monotonic() < deadline:
        time.sleep(0.2)
    if job and job.pid is not None:
        os.kill(job.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("e2e")
    served = Server(f"http://127.0.0.1:{free_port()}", root, secrets.token_urlsafe(12))
    save_model(served.model, alpha=1.0)  # random weights under the shipped default's name
    write_folder(served.images, per_class=40)  # cat, dog and ship; train/ and test/
    served.runs.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOBILENET_")} | {
        "MOBILENET_CHECKPOINTS": str(root / "checkpoints"), "MOBILENET_RUNS": str(served.runs),
        "MOBILENET_DATA": str(root / "data"), "MOBILENET_ADMIN_PASSWORD": served.password}
    port = served.url.rsplit(":", 1)[1]
    with open(served.log, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
             "--server.port", port, "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
             "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_healthy(served.url, process, served.log)
        yield served
    finally:
        stop_training(served.runs)
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser session: its own cookies, so its own Streamlit session."""
    context = browser.new_context(viewport=WINDOW)
    context.set_default_timeout(TIMEOUT_MS)
    yield context.new_page()
    context.close()


@pytest.fixture
def phone(browser: Browser) -> Iterator[Page]:
    """A fresh session on a phone's screen."""
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    context.set_default_timeout(TIMEOUT_MS)
    yield context.new_page()
    context.close()


@dataclass
class Canary:
    """An image server on loopback: what a URL to a private address would reach if the app fetched it."""
    port: int
    hits: list[str]  # the paths it was asked for


@pytest.fixture
def canary() -> Iterator[Canary]:
    image = image_bytes(size=(200, 150))
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server name)
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(image)))
            self.end_headers()
            self.wfile.write(image)

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield Canary(httpd.server_address[1], hits)
        httpd.shutdown()


# ---- what a user sees -----------------------------------------------------------------------------


def settle(page: Page) -> None:
    """Wait until the app has finished running the script."""
    page.wait_for_selector(IDLE)


def open_app(page: Page, server: Server, path: str = "") -> None:
    page.goto(f"{server.url}/{path}")
    settle(page)


def main(page: Page) -> Locator:
    """The page's own content (the header's running indicator has a Stop button too)."""
    return page.get_by_test_id("stMainBlockContainer")


def assert_no_error_box(page: Page, server: Server) -> None:
    boxes = page.locator("[data-testid='stException'], [data-testid='stAlertContentError']")
    assert boxes.count() == 0, f"error boxes: {boxes.all_inner_texts()}\nserver log:\n{server.log.read_text()[-4000:]}"


def readable_texts(chart: Locator) -> list[str]:
    """The texts a chart draws and does not hide (Vega hides overlapping axis labels with opacity 0)."""
    chart.locator("svg").wait_for()
    return chart.evaluate(
        "c => [...c.querySelectorAll('text')].filter(t => getComputedStyle(t).opacity !== '0').map(t => t.textContent)")


def screenshot(page: Page, name: str, window: dict[str, int] = WINDOW) -> None:
    """The whole page: Streamlit scrolls inside its main area, so the window is made as tall as the page."""
    scroller = page.get_by_test_id("stMain")

    def fit_window() -> None:
        page.set_viewport_size({"width": window["width"], "height": max(window["height"],
                                                                        scroller.evaluate("m => m.scrollHeight"))})

    fit_window()
    page.wait_for_function("""() => [...document.images].every(i => i.complete)
        && [...document.querySelectorAll('[data-testid=stVegaLiteChart]')].every(c => c.querySelector('svg'))""")
    fit_window()  # loaded images may have made the page taller
    path = ARTIFACTS / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=path)
    page.set_viewport_size(window)


# Whatever a chart draws (titles, legends, labels, marks) that reaches beyond the screen's width, or is cut off by
# its own picture (an svg shows nothing outside its box): "what (left..right)".
BEYOND = """(charts, width) => charts.flatMap(chart => {
    const box = chart.querySelector('svg').getBoundingClientRect();
    return [...chart.querySelectorAll('svg text, svg path, svg rect')].filter(e => getComputedStyle(e).opacity !== '0')
        .map(e => [e, e.getBoundingClientRect()]).filter(([e, r]) => r.width > 0
            && (r.left < Math.max(0, box.left) - 1 || r.right > Math.min(width, box.right) + 1))
        .map(([e, r]) => `${e.tagName} ${(e.textContent || '').slice(0, 40)} `
                         + `(${r.left.toFixed(0)}..${r.right.toFixed(0)})`);
})"""


# ---- the tests ------------------------------------------------------------------------------------

# Title and link of every page; the explorer, the default, is at the root. It comes last: opening it runs the
# entry script, so the deep links before it are the first visits of a freshly started server.
PAGES = {"Inference": "inference", "Evaluation": "evaluation", "Training": "training", "Runs": "runs",
         "Model explorer": ""}
NAV_ORDER = ["Model explorer", "Inference", "Evaluation", "Training", "Runs"]  # as the sidebar lists them


@pytest.mark.parametrize("title", PAGES)
def test_every_page_opens_from_its_link_without_an_error(page: Page, server: Server, title: str) -> None:
    open_app(page, server, PAGES[title])
    expect(page.locator("h1")).to_have_text(title)
    assert_no_error_box(page, server)
    # The whole app around it: its navigation and the sidebar's model choice.
    links = page.get_by_test_id("stSidebarNav").get_by_role("link")
    expect(links).to_have_text([re.compile(f"{re.escape(t)}$") for t in NAV_ORDER])  # after each icon's name
    expect(page.get_by_test_id("stSidebar").get_by_role("combobox", name="Model")).to_have_value("mobilenet_v1_a1.0")
    screenshot(page, PAGES[title] or "explorer")


def test_the_sidebar_leads_to_every_page(page: Page, server: Server) -> None:
    open_app(page, server)
    for title in NAV_ORDER:
        page.get_by_test_id("stSidebarNav").get_by_role("link", name=title).click()
        expect(page.locator("h1")).to_have_text(title)
        settle(page)
        assert_no_error_box(page, server)


def test_the_alpha_slider_changes_the_parameter_total(page: Page, server: Server) -> None:
    open_app(page, server)
    total = page.get_by_test_id("stMetric").filter(has_text="parameters").get_by_test_id("stMetricValue")
    expect(total).to_have_text(f"{explore.stats_for(1.0, 'cifar', 32).params:,}")
    page.get_by_role("slider", name="Width multiplier α").focus()
    page.keyboard.press("ArrowLeft")  # one step down
    expect(total).to_have_text(f"{explore.stats_for(0.95, 'cifar', 32).params:,}")
    expect(page).to_have_url(re.compile(r"[?&]alpha=0\.95(&|$)"))  # the view can be shared as a link
    settle(page)
    assert_no_error_box(page, server)


def test_an_uploaded_image_gets_a_label_and_a_probability_chart(page: Page, server: Server, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes(size=(200, 150)))
    expected = Classifier.load(server.model, device="cpu", threads=None).predict(photo.read_bytes(), topk=5)
    open_app(page, server, "inference")
    expect(page.get_by_role("button", name="truck_2")).to_be_in_viewport()  # every example can be seen
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(photo)
    answer = main(page).get_by_test_id("stMarkdown").filter(has_text="photo.png:")
    expect(answer).to_have_text(f"photo.png: {expected.label} ({expected.prob:.0%})")
    settle(page)
    assert_no_error_box(page, server)
    charts = main(page).get_by_test_id("stVegaLiteChart")
    expect(charts).to_have_count(1)
    shown = readable_texts(charts)
    assert [label for label, _ in expected.top if label not in shown] == []  # every bar is named
    # the examples' thumbnails (one element), the photo, what the network saw, Grad-CAM
    expect(main(page).get_by_test_id("stImage")).to_have_count(4)
    screenshot(page, "inference-prediction")


def test_a_url_to_a_private_address_is_refused(page: Page, server: Server, canary: Canary) -> None:
    open_app(page, server, "inference")
    box = page.get_by_role("textbox", name="Or paste an image URL")
    for url in (f"http://127.0.0.1:{canary.port}/cat.png", f"http://localhost:{canary.port}/cat.png"):
        box.fill(url)
        box.press("Enter")
        error = main(page).get_by_test_id("stAlertContentError")
        expect(error).to_contain_text(url)
        expect(error).to_contain_text("is not a public internet address; such URLs are refused")
        settle(page)
        expect(main(page).get_by_test_id("stVegaLiteChart")).to_have_count(0)  # no prediction
        expect(main(page).get_by_test_id("stImage")).to_have_count(1)  # the examples' thumbnails only
    assert canary.hits == []  # the app never connected to it
    screenshot(page, "inference-refused-url")


def test_evaluation_shows_accuracy_for_the_classes_in_the_data(page: Page, server: Server) -> None:
    open_app(page, server, "evaluation")
    main(page).get_by_role("button", name="Evaluate").click()
    images = page.get_by_test_id("stMetric").filter(has_text="images").get_by_test_id("stMetricValue")
    expect(images).to_have_text(str(40 * len(CLASSES)))
    settle(page)
    assert_no_error_box(page, server)
    per_class = main(page).get_by_test_id("stVegaLiteChart").first
    assert set(readable_texts(per_class)) & set(CIFAR10_CLASSES) == set(CLASSES)  # the others had no images
    screenshot(page, "evaluation-results")


# The live chart's drawn shapes, from its element: they change exactly when its data does.
SHAPES = "c => [...c.querySelectorAll('path')].map(p => p.getAttribute('d')).join('|')"
LIVE_CHART = "[data-testid=stMainBlockContainer] [data-testid=stVegaLiteChart]"


def test_training_starts_behind_the_password_updates_live_and_stops(page: Page, server: Server) -> None:
    manager = JobManager(server.runs)
    open_app(page, server, "training")
    start = main(page).get_by_role("button", name="Start")
    expect(start).to_be_disabled()
    password = page.get_by_label("Admin password", exact=True)
    password.fill(server.password)
    password.press("Enter")
    expect(start).to_be_enabled()

    expect(main(page).get_by_role("combobox", name="Data")).to_have_value("shapes")  # the data root's, by name
    page.get_by_role("slider", name="α").focus()
    page.keyboard.press("Home")  # the smallest α, 0.25
    page.get_by_label("Batch size", exact=True).fill("8")
    page.get_by_label("Epochs", exact=True).fill(str(MAX_EPOCHS))  # still running when Stop is pressed
    start.click()
    expect(main(page).get_by_test_id("stAlertContentSuccess")).to_contain_text("Started ")

    progress = main(page).get_by_test_id("stProgress")
    expect(progress).to_contain_text("img/s", timeout=2 * TIMEOUT_MS)  # the job has read the data and trains
    [run] = manager.runs()
    assert (run.config.alpha, run.config.batch_size, run.config.epochs) == (0.25, 8, MAX_EPOCHS)
    assert Path(run.config.data).resolve() == server.images.resolve()
    before = page.locator(LIVE_CHART).first.evaluate(SHAPES)  # the loss curve, as querySelector finds it
    page.wait_for_function(f"before => {{ const c = document.querySelector('{LIVE_CHART}'); "
                           f"return c !== null && ({SHAPES})(c) !== before; }}", arg=before)  # redrawn with new rows
    screenshot(page, "training-running")

    main(page).get_by_role("button", name="Stop", exact=True).click()
    expect(main(page).get_by_text("No training job is running.")).to_be_visible()
    [run] = manager.runs()
    assert run.state == "stopped" and run.epoch < run.epochs
    expect(main(page).get_by_role("button", name="Resume")).to_be_visible()
    settle(page)
    assert_no_error_box(page, server)
    screenshot(page, "training-stopped")


# For a few seconds: the least opacity, as drawn (the element's and its ancestors' together), of what the live view
# shows; how many runs (the live view's refreshes) ended meanwhile; whether the header showed its running indicator.
LIVE_OPACITY = """async seconds => {
    const shown = e => { let o = 1; for (; e; e = e.parentElement) o *= +getComputedStyle(e).opacity; return o; };
    const parts = {progress: '[data-testid=stProgress]', chart: '[data-testid=stVegaLiteChart]',
                   runs: '[data-testid=stDataFrame]', stop: 'button'};
    const least = Object.fromEntries(Object.keys(parts).map(k => [k, 1]));
    let refreshes = 0, header = false;
    const app = document.querySelector('[data-testid=stApp]');
    const ended = changes => changes.filter(c => c.oldValue === 'running').length;
    const runs = new MutationObserver(changes => { refreshes += ended(changes); });
    runs.observe(app, {attributeFilter: ['data-test-script-state'], attributeOldValue: true});
    const main = document.querySelector('[data-testid=stMainBlockContainer]');
    for (const end = Date.now() + seconds * 1000; Date.now() < end; await new Promise(r => setTimeout(r, 50))) {
        for (const [part, selector] of Object.entries(parts)) {
            for (const e of main.querySelectorAll(selector)) {
                if (part !== 'stop' || e.innerText.trim() === 'Stop') least[part] = Math.min(least[part], shown(e));
            }
        }
        const widget = document.querySelector('[data-testid=stStatusWidget]');
        header ||= widget !== null && widget.getClientRects().length > 0
                   && !widget.querySelector('[data-testid=stConnectionStatus]');
    }
    runs.disconnect();
    return {least, refreshes, header};
}"""


def test_a_reload_keeps_the_admin_signed_in_and_the_live_view_never_fades(page: Page, server: Server) -> None:
    open_app(page, server, "training")
    start = main(page).get_by_role("button", name="Start")
    password = page.get_by_label("Admin password", exact=True)
    password.fill(server.password)
    password.press("Enter")
    expect(start).to_be_enabled()
    [cookie] = [c for c in page.context.cookies() if c["name"] == "mobilenet_admin"]
    assert cookie["sameSite"] == "Strict" and cookie["path"] == "/" and cookie["value"] not in page.url
    screenshot(page, "training-signed-in")
    page.reload()
    settle(page)
    expect(main(page).get_by_text("Signed in as admin")).to_be_visible()
    expect(start).to_be_enabled()

    JobManager(server.runs).start(TrainConfig(data=str(server.images), alpha=0.25, batch_size=8, epochs=MAX_EPOCHS))
    try:
        expect(main(page).get_by_test_id("stProgress")).to_contain_text("img/s", timeout=2 * TIMEOUT_MS)
        expect(main(page).get_by_test_id("stVegaLiteChart")).to_have_count(3)  # loss, accuracy, learning rate
        seen = page.evaluate(LIVE_OPACITY, 8)
        assert seen["refreshes"] >= 2, seen  # the live view refreshed while it was watched
        assert seen["least"] == {"progress": 1, "chart": 1, "runs": 1, "stop": 1}, seen
        assert not seen["header"], seen  # the header's own running indicator and Stop stayed away
    finally:
        stop_training(server.runs)

    main(page).get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Admin password", exact=True)).to_be_visible()
    page.reload()
    settle(page)
    expect(page.get_by_label("Admin password", exact=True)).to_be_visible()  # signed out for good
    expect(main(page).get_by_role("button", name="Start")).to_be_disabled()
    assert [c for c in page.context.cookies() if c["name"] == "mobilenet_admin"] == []
    assert_no_error_box(page, server)


def test_on_a_phone_every_chart_fits_the_screen_and_sample_titles_keep_their_size(phone: Page, server: Server) -> None:
    open_app(phone, server, "?stem=imagenet&resolution=224")  # every chart of the explorer, the paper's included
    charts = main(phone).get_by_test_id("stVegaLiteChart")
    expect(charts).to_have_count(6)  # α sweep ×2, per layer, savings, the paper's, accuracy against mult-adds
    phone.wait_for_function("""() => [...document.querySelectorAll('[data-testid=stVegaLiteChart]')]
        .every(c => c.querySelector('svg'))""")
    assert charts.evaluate_all(BEYOND, PHONE["width"]) == []
    assert main(phone).evaluate("m => m.scrollWidth") <= PHONE["width"]  # nothing to scroll sideways to
    screenshot(phone, "phone-explorer", PHONE)

    open_app(phone, server, "evaluation")
    main(phone).get_by_role("button", name="Evaluate").click()
    expect(phone.get_by_test_id("stMetric").filter(has_text="images")).to_be_visible()
    settle(phone)
    assert_no_error_box(phone, server)
    tiles = main(phone).get_by_test_id("stImage").locator("img")
    expect(tiles.first).to_be_visible()
    phone.wait_for_function("() => [...document.images].every(i => i.complete)")
    sizes = tiles.evaluate_all("ts => ts.map(t => [t.naturalWidth, t.getBoundingClientRect().width, "
                               "t.getBoundingClientRect().right])")
    assert len(sizes) >= 2 * len(CLASSES)
    shrunk = [s for s in sizes if s[1] < s[0] - 1 or s[2] > PHONE["width"]]
    assert shrunk == [], f"tiles scaled down or beyond the screen (natural, shown, right): {shrunk}"
    assert charts.evaluate_all(BEYOND, PHONE["width"]) == []  # per class and the confusion matrix
    screenshot(phone, "phone-evaluation", PHONE)


def test_on_a_phone_a_runs_curves_and_report_fit_the_screen(phone: Page, server: Server) -> None:
    folder = make_run(server.runs, "phone-check", epochs=3)
    save_model(folder.best, alpha=0.25)
    try:
        for path, shown in (("training", "training-phone"), ("runs?run=phone-check", "runs-phone")):
            open_app(phone, server, path)
            charts = main(phone).get_by_test_id("stVegaLiteChart")
            expect(charts).to_have_count(5)  # loss, accuracy, learning rate; per class, confusion
            phone.wait_for_function("""() => [...document.querySelectorAll('[data-testid=stVegaLiteChart]')]
                .every(c => c.querySelector('svg'))""")
            assert charts.evaluate_all(BEYOND, PHONE["width"]) == [], path
            assert main(phone).evaluate("m => m.scrollWidth") <= PHONE["width"], path
            assert_no_error_box(phone, server)
            screenshot(phone, shown, PHONE)
    finally:
        shutil.rmtree(folder.path)


def test_the_papers_table_shows_its_last_column_on_a_desktop(page: Page, server: Server) -> None:
    open_app(page, server, "?stem=imagenet")
    grid = main(page).get_by_test_id("stDataFrame").last  # after the layer table
    grid.locator(".dvn-scroller").wait_for()
    overflow = grid.locator(".dvn-scroller").evaluate("s => s.scrollWidth - s.clientWidth")
    assert overflow <= 1, f"the table needs {overflow} px more than it has"
