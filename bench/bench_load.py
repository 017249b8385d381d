"""Load on one app server: watchers of the Training page, a new visitor's first page, uploaders on Inference.

Visitors are protocol-level clients (Streamlit's websocket and upload endpoint, as the browser uses them),
so the server's work is measured without the cost of browsers. Loopback only, bounded in count and time:

    .venv/bin/python bench/bench_load.py --watchers 16 --uploaders 1 4 8 16 --seconds 20
    .venv/bin/python bench/bench_load.py --job   # with a training job running on generated data

The server runs with its own empty runs folder (a finished run with a long metrics file is put there to
watch) unless --runs is given, and the repository's .streamlit/config.toml plus any --server-option.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import requests
import websockets
from PIL import Image
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.Common_pb2 import FileURLsRequest, UploadedFileInfo
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 60  # a page that takes longer counts as never shown (inf)
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Visitor:
    """One browser tab: a websocket session that opens a page and answers auto-reruns as the frontend does."""

    def __init__(self, base: str, page: str) -> None:
        self.base, self.page = base, page
        self.page_hash = ""
        self.finished: asyncio.Queue[int] = asyncio.Queue()
        self.file_urls: dict[str, object] = {}
        self.uploader_id: str | None = None
        self.reruns = 0
        self.timers: dict[str, asyncio.Task] = {}  # one refresh timer per fragment, as in the frontend
        self.http = requests.Session()

    async def open(self, timeout: float = 120) -> float:
        """Connect and run the page; returns the seconds until the page's script finished (TimeoutError)."""
        began = time.perf_counter()
        self.http.get(f"{self.base}/", timeout=30)  # the page, as a browser gets it
        self.http.get(f"{self.base}/_stcore/health", timeout=30)  # and the xsrf cookie, from its health check
        xsrf = self.http.cookies.get("_streamlit_xsrf", "")
        url = self.base.replace("http", "ws") + "/_stcore/stream"
        self.ws = await websockets.connect(url, subprotocols=["streamlit", xsrf] if xsrf else ["streamlit"],
                                           origin=self.base, max_size=None,
                                           additional_headers={"Cookie": f"_streamlit_xsrf={xsrf}"})
        self.reader = asyncio.create_task(self.read())
        await self.rerun()
        await self.wait_finished(timeout)
        return time.perf_counter() - began

    async def rerun(self, widgets=None, fragment: str = "") -> None:
        msg = BackMsg()
        msg.rerun_script.page_name = self.page
        msg.rerun_script.page_script_hash = self.page_hash
        msg.rerun_script.fragment_id = fragment
        msg.rerun_script.is_auto_rerun = bool(fragment)
        if widgets:
            msg.rerun_script.widget_states.widgets.extend(widgets)
        await self.ws.send(msg.SerializeToString())

    async def wait_finished(self, timeout: float = 120) -> int:
        while True:
            status = await asyncio.wait_for(self.finished.get(), timeout)
            if status != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                return status

    async def read(self) -> None:
        async for data in self.ws:
            msg = ForwardMsg()
            msg.ParseFromString(data)
            kind = msg.WhichOneof("type")
            if kind == "navigation":  # the page that ran; new_session names the entry script, whose hash would
                self.page_hash = msg.navigation.page_script_hash  # rerun the default page (the explorer)
            elif kind == "script_finished":
                self.finished.put_nowait(msg.script_finished)
            elif kind == "auto_rerun" and msg.auto_rerun.fragment_id not in self.timers:
                self.timers[msg.auto_rerun.fragment_id] = asyncio.create_task(
                    self.auto_rerun(msg.auto_rerun.interval, msg.auto_rerun.fragment_id))
            elif kind == "file_urls_response":
                self.file_urls[msg.file_urls_response.response_id] = msg.file_urls_response
            elif kind == "delta" and msg.delta.new_element.WhichOneof("type") == "file_uploader":
                self.uploader_id = msg.delta.new_element.file_uploader.id

    async def auto_rerun(self, interval: float, fragment: str) -> None:
        try:
            while True:
                await asyncio.sleep(interval)
                await self.rerun(fragment=fragment)
                self.reruns += 1
        except websockets.ConnectionClosed:
            pass

    async def upload(self, name: str, data: bytes) -> float:
        """Upload one image as the file uploader does and wait for its predictions; returns the seconds taken."""
        began = time.perf_counter()
        request = BackMsg()
        request_id = uuid.uuid4().hex
        request.file_urls_request.CopyFrom(FileURLsRequest(request_id=request_id, file_names=[name],
                                                           session_id=""))
        await self.ws.send(request.SerializeToString())
        while request_id not in self.file_urls:
            await asyncio.sleep(0.005)
        urls = self.file_urls.pop(request_id).file_urls[0]
        xsrf = self.http.cookies.get("_streamlit_xsrf", "")
        target = f"{self.base}{urls.upload_url}" if urls.upload_url.startswith("/") else urls.upload_url
        for attempt in range(2):  # a kept-alive connection the server has just closed is opened again
            try:
                put = await asyncio.to_thread(self.http.put, target, files={"file": (name, data, "image/png")},
                                              headers={"X-Xsrftoken": xsrf}, timeout=60)
                break
            except requests.ConnectionError:
                if attempt:
                    raise
        put.raise_for_status()
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        state = WidgetState(id=self.uploader_id)
        state.file_uploader_state_value.uploaded_file_info.append(
            UploadedFileInfo(name=name, size=len(data), file_id=urls.file_id, file_urls=urls))
        await self.rerun([state])
        status = await self.wait_finished()
        assert status == ForwardMsg.FINISHED_SUCCESSFULLY, status
        return time.perf_counter() - began

    async def close(self) -> None:
        await self.ws.close()
        for task in (self.reader, *self.timers.values()):
            task.cancel()


def photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def server_mb(pid: int) -> int:
    """The server's resident memory."""
    line = next(row for row in Path(f"/proc/{pid}/status").read_text().splitlines() if row.startswith("VmRSS:"))
    return int(line.split()[1]) // 1024


def server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def watchers_and_newcomer(base: str, watchers: int, seconds: float, pid: int, job: Path | None) -> dict:
    first = Visitor(base, "inference")  # the server has loaded the model for someone before
    await first.open(TIMEOUT_S)
    await first.close()
    crowd = [Visitor(base, "training") for _ in range(watchers)]
    for visitor in crowd:
        try:
            await visitor.open(TIMEOUT_S)
        except TimeoutError:  # it stays, and its refreshes start once its page has run
            pass
    await asyncio.sleep(3)  # let the refreshes settle in
    cpu0, t0, speed = server_cpu(pid), time.perf_counter(), JobSpeed(job)
    firsts = []
    while time.perf_counter() - t0 < seconds:
        newcomer = Visitor(base, "inference")
        try:
            firsts.append(await newcomer.open(TIMEOUT_S))
        except TimeoutError:
            firsts.append(float("inf"))
        await newcomer.close()
        await asyncio.sleep(1)
    cpu = (server_cpu(pid) - cpu0) / (time.perf_counter() - t0)
    reruns = sum(v.reruns for v in crowd)
    for visitor in crowd:
        await visitor.close()
    return {"watchers": watchers, "first_pages": len(firsts), "first_page_s": round(statistics.median(firsts), 2),
            "first_page_max_s": round(max(firsts), 2),
            "server_cpu_cores": round(cpu, 2), "refreshes": reruns, "job_img_per_s": speed.img_per_s()}


async def uploaders(base: str, count: int, seconds: float, pid: int, job: Path | None, images: list[bytes],
                    order: itertools.count) -> dict:
    crowd = [Visitor(base, "inference") for _ in range(count)]
    for visitor in crowd:
        await visitor.open()
    await crowd[0].upload("warm-up.png", images[0])  # the model is loaded once, before the clock starts
    times: list[float] = []
    mb0, cpu0, t0, speed = server_mb(pid), server_cpu(pid), time.perf_counter(), JobSpeed(job)

    async def keep_uploading(visitor: Visitor) -> None:
        while time.perf_counter() - t0 < seconds:
            i = next(order)  # the crowd takes the images in turn: with --distinct, no image comes twice
            times.append(await visitor.upload(f"photo{i}.png", images[i % len(images)]))

    await asyncio.gather(*(keep_uploading(v) for v in crowd))
    elapsed = time.perf_counter() - t0
    cpu = (server_cpu(pid) - cpu0) / elapsed
    for visitor in crowd:
        await visitor.close()
    q = statistics.quantiles(times, n=20) if len(times) > 1 else times * 19
    return {"uploaders": count, "uploads": len(times), "uploads_per_s": round(len(times) / elapsed, 2),
            "p50_s": round(statistics.median(times), 2), "p95_s": round(q[18], 2), "server_cpu_cores": round(cpu, 2),
            "server_mb": [mb0, server_mb(pid)], "job_img_per_s": speed.img_per_s()}


def watched_run(runs: Path, rows: int) -> None:
    """A finished run with a long metrics file, as a 3-hour run leaves it (no best.pt: nothing to download)."""
    from mobilenet.config import TrainConfig
    from mobilenet.runs import MetricsRow, RunFolder, RunState

    folder = RunFolder(runs / "watched")
    folder.write_config(TrainConfig(data="cifar10", epochs=100))
    with open(folder.metrics, "w") as f:
        for i in range(rows):
            epoch = 1 + i * 100 // rows
            f.write(json.dumps(MetricsRow("step", epoch, i * 4, 1.0 / (1 + i), 0.5, 0.1, 1000.0, i, 100.0)
                               .to_dict()) + "\n")
    folder.set_status(RunState.FINISHED, 100, 100)


def start_job(runs: Path, images: Path) -> subprocess.Popen:
    """A long training job on generated images, with the app's job manager."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import write_folder

    from mobilenet.config import TrainConfig
    from mobilenet.jobs import JobManager

    from mobilenet.runs import RunFolder

    write_folder(images, per_class=200, splits=("train",))
    JobManager(runs).start(TrainConfig(data=str(images), alpha=0.25, epochs=500, val_size=60, device="cpu",
                                       data_root=str(images.parent / "root")), name="job")
    deadline = time.time() + 180
    while not RunFolder(runs / "job").read_metrics():
        assert time.time() < deadline, "the job did not start training"
        time.sleep(0.5)


class JobSpeed:
    """The job's training speed over a stretch of wall time, from the steps it logged (batch 128)."""

    def __init__(self, runs: Path | None) -> None:
        self.runs = runs
        self.began = self.step(), time.perf_counter()

    def step(self) -> int:
        from mobilenet.runs import RunFolder

        rows = RunFolder(self.runs / "job").read_metrics() if self.runs else []
        return rows[-1].step if rows else 0

    def img_per_s(self) -> float | None:
        if self.runs is None:
            return None
        step, began = self.began
        return round((self.step() - step) * 128 / (time.perf_counter() - began))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watchers", type=int, default=16)
    parser.add_argument("--uploaders", type=int, nargs="*", default=[1, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=20, help="per measurement")
    parser.add_argument("--rows", type=int, default=10000, help="metrics rows of the watched run")
    parser.add_argument("--job", action="store_true", help="run a training job meanwhile")
    parser.add_argument("--distinct", type=int, default=4, metavar="N",
                        help="distinct photos uploaded in turn (default 4: repeats hit the server's map cache; make N "
                             "larger than a row's uploads to measure new images only)")
    parser.add_argument("--server-option", action="append", default=[], metavar="NAME=VALUE",
                        help="e.g. runner.postScriptGC=false")
    parser.add_argument("--app-dir", default=str(ROOT), help="the checkout whose app to serve (e.g. an older one)")
    args = parser.parse_args()
    assert args.watchers <= 32 and all(n <= 32 for n in args.uploaders) and args.seconds <= 600, "bounded load"

    images = [photo(i) for i in range(args.distinct + 1)]  # made before the clock starts
    order = itertools.count(1)  # the next image, across rows (images[0] is the warm-up)
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        runs.mkdir()
        watched_run(runs, args.rows)
        port = free_port()
        env = os.environ | {"MOBILENET_RUNS": str(runs), "MOBILENET_DATA": str(Path(tmp) / "data")}
        env.pop("MOBILENET_ADMIN_PASSWORD", None)
        options = [f"--{o.split('=', 1)[0]}={o.split('=', 1)[1]}" for o in args.server_option]
        server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port",
                                   str(port), "--server.address", "127.0.0.1", *options], cwd=args.app_dir, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 60
            while True:
                try:
                    if requests.get(f"{base}/_stcore/health", timeout=2).ok:
                        break
                except requests.ConnectionError:
                    pass
                assert time.time() < deadline, "the server did not start"
                time.sleep(0.2)
            job = None
            if args.job:
                start_job(runs, Path(tmp) / "images")
                job, idle = runs, JobSpeed(runs)
                time.sleep(10)
                print(json.dumps({"job_alone_img_per_s": idle.img_per_s()}), flush=True)
            if args.watchers:
                watch = asyncio.run(watchers_and_newcomer(base, args.watchers, args.seconds, server.pid, job))
                print(json.dumps(watch), flush=True)
            for count in args.uploaders:
                row = asyncio.run(uploaders(base, count, args.seconds, server.pid, job, images, order))
                print(json.dumps(row), flush=True)
        finally:
            if args.job:
                from mobilenet.jobs import JobManager

                JobManager(runs).stop()
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
