"""The inference page as a visitor uses it: kept uploads, per-image times, class maps for any class, downloads."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import image_bytes, isolate_app, save_model
from PIL import Image
from streamlit.testing.v1 import AppTest

from mobilenet import answers, app_uploads, gradcam, intake
from mobilenet.data import CIFAR10_CLASSES

APP = Path(__file__).resolve().parent.parent / "streamlit_app.py"


@pytest.fixture(autouse=True)
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    isolate_app(tmp_path, monkeypatch)
    path = tmp_path / "checkpoints" / "mobilenet_v1_a0.25.pt"
    save_model(path)
    return path


def inference_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("app_pages/inference.py").run()
    assert not at.exception
    return at


def test_uploads_stay_after_visiting_another_page() -> None:
    at = inference_page()
    photo = image_bytes(size=(200, 150))
    uploads = [("a.png", photo, "image/png"), ("cut.png", photo[:300], "image/png")]
    at.file_uploader[0].set_value(uploads).run()
    assert [e.value for e in at.error] == [("**cut.png**: the image file is truncated: it ends before the picture does "
                                           "(an interrupted download or copy?)")]
    answer = at.markdown[-1].value
    at.switch_page("app_pages/explorer.py").run()
    at.switch_page("app_pages/inference.py").run()
    assert not at.exception and at.markdown[-1].value == answer
    assert any(c.value.startswith("Showing 2 image(s) you uploaded before") for c in at.caption)


def test_a_session_keeps_at_most_max_images_uploads() -> None:
    at = inference_page()
    n = answers.MAX_IMAGES + 2
    at.toggle[1].set_value(False).run()  # no class maps: only the count matters here
    at.file_uploader[0].set_value([(f"{i:02d}.png", image_bytes(seed=i, size=(40, 30)), "image/png")
                                   for i in range(n)]).run()
    left_out = f"left out: {n - 2:02d}.png, {n - 1:02d}.png."
    assert [w.value for w in at.warning if "left out" in w.value] == [
        f"At most {answers.MAX_IMAGES} uploaded images, 64 MB together, are kept and classified; {left_out} The "
        f"first ones listed are kept, and the server does not keep files it left out: to classify one, remove it and "
        f"some of the kept ones, then upload it again."]
    assert len([c for c in at.caption if " ms for this image" in c.value]) == answers.MAX_IMAGES
    assert [u.name for u in at.session_state.kept_uploads] == [f"{i:02d}.png" for i in range(answers.MAX_IMAGES)]
    at.run()  # any later rerun still says what was left out
    assert any(left_out in w.value for w in at.warning)
    at.switch_page("app_pages/explorer.py").run()
    at.switch_page("app_pages/inference.py").run()  # the uploader lists nothing now: nothing to remove from it
    assert not [w for w in at.warning if "left out" in w.value]
    assert any(c.value.endswith("Uploading others replaces them.") for c in at.caption)


def test_files_left_out_are_named_while_the_uploader_lists_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import local_script_runner

    gone: set[str] = set()  # as in a browser: a file that left the server is not sent again
    register = local_script_runner.LocalScriptRunner.register_file
    monkeypatch.setattr(local_script_runner.LocalScriptRunner, "register_file",
                        lambda runner, record: None if record.file_id in gone else register(runner, record))
    at = inference_page()
    at.toggle[1].set_value(False).run()
    at.file_uploader[0].set_value([(f"{i:02d}.png", image_bytes(seed=i, size=(40, 30)), "image/png")
                                   for i in range(answers.MAX_IMAGES + 2)]).run()
    listed = [(f.file_id, f.name, f.getvalue(), f.type) for f in at.session_state[app_uploads.UPLOADER_KEY]]
    gone |= {file_id for file_id, *_ in listed[answers.MAX_IMAGES:]}
    at.file_uploader[0]._files = listed[1:]  # the visitor removes 00.png; 16.png and 17.png are still listed
    at.run()
    assert len([c for c in at.caption if " ms for this image" in c.value]) == answers.MAX_IMAGES - 1
    assert [w.value for w in at.warning if "left out: 16.png, 17.png." in w.value]
    at.file_uploader[0]._files = listed[1:-1]  # and then 17.png
    at.run()
    assert [w.value for w in at.warning if "left out: 16.png." in w.value]
    assert not at.exception


def test_a_session_keeps_uploads_up_to_a_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    files = [(f"{i}.png", image_bytes(seed=i, size=(40, 30)), "image/png") for i in range(3)]
    monkeypatch.setattr(app_uploads, "MAX_KEPT_BYTES", len(files[0][1]) + len(files[1][1]))
    at = inference_page()
    at.file_uploader[0].set_value(files).run()
    assert [u.name for u in at.session_state.kept_uploads] == ["0.png", "1.png"]
    (warning,) = [w.value for w in at.warning if "left out" in w.value]
    assert warning.startswith(f"At most {answers.MAX_IMAGES} uploaded images, ")
    assert "left out: 2.png." in warning
    assert len([c for c in at.caption if " ms for this image" in c.value]) == 2


def test_every_result_has_its_own_time_a_map_for_any_class_and_downloads() -> None:
    at = inference_page()
    at.file_uploader[0].set_value([("a.png", image_bytes(seed=1, size=(200, 150)), "image/png"),
                                   ("b.png", image_bytes(seed=2, size=(200, 150)), "image/png")]).run()
    times = [c.value for c in at.caption if " ms for this image" in c.value]
    assert len(times) == 2
    [s for s in at.selectbox if s.label == "Map for class"][1].set_value("truck").run()
    assert not at.exception
    captions = [img.caption for image in at.image for img in image.proto.imgs]
    maps = [c for c in captions if c == "evidence for truck"] + [i for i in at.info if "speaks for truck" in i.value]
    assert maps  # the map of the chosen class, or the note that nothing in the image speaks for it
    at.switch_page("app_pages/explorer.py").run()
    at.switch_page("app_pages/inference.py").run()  # back: the choice stays, as the page's others do
    assert [s.value for s in at.selectbox if s.label == "Map for class"][1] == "truck"
    assert [b.label for b in at.get("download_button")] == ["Download predictions (CSV)", "Download predictions (JSON)"]


def test_map_class_choices_are_kept_for_the_answers_shown_only() -> None:
    """One key an image and top class, never removed: a long session piled them up, each kept on every page run."""
    at = inference_page()
    for seed in range(1, 6):  # one image after another, each replacing the last
        at.file_uploader[0].set_value([(f"{seed}.png", image_bytes(seed=seed, size=(60, 40)), "image/png")]).run()
        assert not at.exception
        assert len(map_class_keys(at)) == 1
    at.selectbox(map_class_keys(at)[0]).set_value("truck").run()
    at.switch_page("app_pages/explorer.py").run()
    at.switch_page("app_pages/inference.py").run()  # the choice for the image shown stays
    assert [s.value for s in at.selectbox if s.label == "Map for class"] == ["truck"]


def map_class_keys(at: AppTest) -> list[str]:
    """The map-class keys in the session (AppTest lists its state only through its private part)."""
    return [key for key in at.session_state._state.filtered_state if key.startswith(app_uploads.MAP_CLASS_PREFIX)]


def test_the_first_16_images_and_the_names_of_the_rest() -> None:
    uploads = [answers.Upload(f"{i}.png", b"") for i in range(18)]
    kept, message = answers.first_images(uploads)
    assert len(kept) == 16 and message.endswith("left out: 16.png, 17.png.")
    assert answers.first_images(uploads[:16]) == (uploads[:16], None)


def test_predictions_download_as_the_command_line_writes_them(model: Path) -> None:
    from mobilenet import Classifier

    clf = Classifier.load(model, device="cpu", threads=None)
    results = answers.classify(clf, [answers.Upload("a.png", image_bytes(size=(200, 150))),
                                         answers.Upload("x.txt", b"hello")], topk=2, threshold=0.99)
    rows = json.loads(answers.predictions_json(results))
    assert rows[0]["source"] == "a.png" and len(rows[0]["top"]) == 2 and rows[0]["looks_foreign"] is True
    assert rows[0]["ms"] == round(rows[0]["ms"], 2)  # as `predict --json` writes it
    assert rows[1] == {"source": "x.txt", "error": "not a supported image: use JPEG, PNG, WebP, BMP, GIF or TIFF"}
    table = answers.predictions_table(results)
    assert list(table["rank"].dropna()) == [1, 2] and table["error"].iloc[-1].startswith("not a supported")


def oriented(fmt: str) -> bytes:
    """A 200×150 photo whose EXIF says to turn it upright (orientation 6): decoding must turn it exactly once."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.open(io.BytesIO(image_bytes(seed=3, size=(200, 150)))).save(buffer, fmt, exif=exif)
    return buffer.getvalue()


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the images decoded from bytes (every decode of bytes opens them through intake._open)."""
    opened: list[int] = []
    original = intake._open

    def counting(data: bytes, limits: intake.Limits) -> Image.Image:
        opened.append(len(data))
        return original(data, limits)

    monkeypatch.setattr(intake, "_open", counting)
    return opened


def test_the_example_thumbnails_are_built_once_as_png(monkeypatch: pytest.MonkeyPatch) -> None:
    built = []
    monkeypatch.setattr(answers, "enlarge", lambda image, side: built.append(image) or image.resize((side, side)))
    answers.example_thumbnails.cache_clear()
    paths = tuple(answers.examples())
    first = answers.example_thumbnails(paths)
    assert answers.example_thumbnails(paths) == first and len(built) == len(paths)
    assert all(Image.open(io.BytesIO(png)).format == "PNG" and Image.open(io.BytesIO(png)).size == (96, 96)
               for png in first)
    answers.example_thumbnails.cache_clear()  # the other tests get the real thumbnails


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_one_upload_is_decoded_once_and_answers_as_the_command_line(model: Path, fmt: str,
                                                                    decodes: list[int]) -> None:
    from mobilenet import Classifier

    clf = Classifier.load(model, device="cpu", threads=None)
    data = oriented(fmt)
    (result,) = answers.classify(clf, [answers.Upload("a", data)])
    answers.heatmap(clf, result, "cat", 0.5)
    assert len(decodes) == (1 if fmt == "PNG" else 2)  # a JPEG decodes smaller for the model: twice
    expected = clf.predict(data)
    assert result.prediction.top == expected.top
    assert result.prediction.image.tobytes() == expected.image.tobytes()
    photo = intake.decode(data, draft_side=answers.PHOTO_SIDE)
    assert result.photo.tobytes() == answers._display_copy(photo).tobytes() and result.photo.height == 384


def test_a_panoramas_class_map_is_drawn_from_its_full_centre_square(model: Path) -> None:
    """The overlay was cut from the display copy: a 4000×300 photo's is 384×29, so its map lay on 29 pixels blown up
    to 256, coarser than the 300-pixel square the network saw."""
    from mobilenet import Classifier

    clf = Classifier.load(model, device="cpu", threads=None)
    stripes = np.zeros((300, 4000, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: a blurry copy turns them grey
    buffer = io.BytesIO()
    Image.fromarray(stripes).save(buffer, "PNG")
    (result,) = answers.classify(clf, [answers.Upload("panorama.png", buffer.getvalue())])
    assert result.photo.size == (384, 29) and result.square.size == (256, 256)
    assert result.square.tobytes() == intake.fit_square(Image.fromarray(stripes), 256).tobytes()
    clf.class_map = lambda image, class_index: torch.ones(8, 8)  # evidence everywhere, drawn without colour:
    assert answers.heatmap(clf, result, "cat", 0.0).tobytes() == result.square.tobytes()  # the photo it lies on


def test_the_map_of_what_the_network_saw_is_the_map_of_the_bytes(model: Path) -> None:
    from mobilenet import Classifier

    clf = Classifier.load(model, device="cpu", threads=None)
    for data in (oriented("PNG"), oriented("JPEG"), image_bytes(seed=4, size=(640, 480))):
        seen = clf.predict(data).image
        for k in (0, 3):
            assert torch.equal(clf.gradcam(seen, k)[0], clf.gradcam(data, k)[0])


def test_a_rerun_reuses_the_map_of_the_same_image_and_class(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mobilenet import Classifier, infer

    computed = []
    real = gradcam.class_maps
    monkeypatch.setattr(infer, "class_maps", lambda *args: computed.append(args[2].tolist()) or real(*args))
    clf = Classifier.load(model, device="cpu", threads=None)
    data = image_bytes(seed=5, size=(200, 150))
    (result,) = answers.classify(clf, [answers.Upload("a.png", data)])
    first = clf.class_map(clf.prepare(data), 3)
    for opacity in (0.2, 0.6):
        answers.heatmap(clf, result, "cat", opacity)  # an opacity slider moved: the same map
    (again,) = answers.classify(clf, [answers.Upload("again.png", data)])  # the same image uploaded again
    answers.heatmap(clf, again, "cat", 0.6)
    answers.heatmap(clf, result, "dog", 0.6)  # another class: a map of its own
    assert computed == [[3], [5]]
    assert torch.equal(clf.class_map(clf.prepare(data), 3), first)


def test_a_rerun_answers_from_the_session_without_decoding_again(model: Path, decodes: list[int]) -> None:
    save_model(model.with_name("mobilenet_v1_a0.5.pt"), alpha=0.5)
    at = inference_page()
    decodes.clear()  # the examples' thumbnails
    first = [("a.png", image_bytes(seed=1, size=(200, 150)), "image/png"),
             ("b.png", image_bytes(seed=2, size=(120, 90)), "image/png")]
    at.file_uploader[0].set_value(first).run()
    answered, opened = [m.value for m in at.markdown if m.value.startswith("**")], len(decodes)
    assert len(answered) == 2 and opened == 2
    at.slider[1].set_value(0.3).run()  # the map's opacity
    at.selectbox[0].set_value("truck").run()  # another class's map
    at.toggle[1].set_value(False).run()  # no maps
    assert len(decodes) == opened and [m.value for m in at.markdown if m.value.startswith("**")] == answered
    at.file_uploader[0].set_value([*first, ("c.png", image_bytes(seed=3, size=(100, 100)), "image/png")]).run()
    assert len(decodes) == opened + 1  # only the new image
    at.slider[0].set_value(2).run()  # fewer classes shown: the same answers
    assert len(decodes) == opened + 1 and len(at.session_state.answers[2]) == 3
    shown = [pa.ipc.open_stream(chart.proto.data.data).read_all().num_rows for chart in at.get("vega_lite_chart")]
    assert shown == [2, 2, 2]  # each image's chart: its two most likely classes
    choice = at.sidebar.selectbox(key="model")
    choice.set_value(next(m for m in choice.options if m != choice.value)).run()  # another model: answered again
    assert len(decodes) == opened + 4
    assert not at.exception


def test_the_class_map_follows_the_answer_of_the_model_chosen(model: Path) -> None:
    save_model(model.with_name("mobilenet_v1_a0.5.pt"), alpha=0.5)
    at = inference_page()
    at.file_uploader[0].set_value([("a.png", image_bytes(seed=1, size=(200, 150)), "image/png")]).run()

    def answer() -> str:
        return next(m.value for m in at.markdown if m.value.startswith("**a.png**")).split(": ")[1].split(" (")[0]

    first = answer()
    assert at.selectbox[0].value == first
    other = next(c for c in CIFAR10_CLASSES if c != first)
    at.selectbox[0].set_value(other).run()
    at.slider[1].set_value(0.3).run()
    assert at.selectbox[0].value == other  # a choice stays while the answer does
    choice = at.sidebar.selectbox(key="model")
    choice.set_value(next(m for m in choice.options if m != choice.value)).run()
    assert answer() != first and at.selectbox[0].value == answer()  # another model's answer: its own class


def test_uploaded_files_no_widget_holds_leave_the_servers_memory() -> None:
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
    from streamlit.runtime.uploaded_file_manager import UploadedFileRec

    from mobilenet.app_uploads import drop_files_no_widget_holds

    manager = MemoryUploadedFileManager("/_stcore/upload_file")
    for session, file_id in [("visitor", "old"), ("visitor", "replaced"), ("visitor", "shown"), ("other", "old")]:
        manager.add_file(session, UploadedFileRec(file_id, f"{file_id}.png", "image/png", b"x" * 1000))
    assert drop_files_no_widget_holds(manager, "visitor", {"shown"}) == 2
    assert list(manager.file_storage["visitor"]) == ["shown"]
    assert list(manager.file_storage["other"]) == ["old"]  # another session's files are its own
    assert [s.byte_length for stats in manager.get_stats().values() for s in stats] == [2000]
    assert drop_files_no_widget_holds(manager, "nobody", set()) == 0 and "nobody" not in manager.file_storage


def test_a_file_still_on_its_way_into_the_uploaders_value_is_kept_for_a_while(monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    """The browser sends the uploader's value once all the files it is uploading have arrived: a page run in
    between (another widget changed) used to drop the ones that had arrived, and the visitor lost them."""
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
    from streamlit.runtime.uploaded_file_manager import UploadedFileRec

    from mobilenet import memo

    manager = MemoryUploadedFileManager("/_stcore/upload_file")
    app_uploads.cap_session_uploads(manager)
    for file_id in ("shown", "left-out", "arriving"):
        manager.add_file("visitor", UploadedFileRec(file_id, f"{file_id}.png", "image/png", b"x" * 1000))
    for i in range(14 * app_uploads.UPLOAD_GRACE_S):  # meanwhile, other visitors upload as fast as a server takes
        manager.add_file(f"s{i % 50}", UploadedFileRec(f"f{i}", "x.png", "image/png", b"x"))
        manager.remove_file(f"s{i % 50}", f"f{i}")
    # the value lists "left-out" (beyond the uploads kept): it goes at once; "arriving" it does not list yet
    assert app_uploads.drop_files_no_widget_holds(manager, "visitor", {"shown"}, ["shown", "left-out"]) == 1
    assert list(manager.file_storage["visitor"]) == ["shown", "arriving"]
    later = memo.time.monotonic() + app_uploads.UPLOAD_GRACE_S
    monkeypatch.setattr(memo.time, "monotonic", lambda: later)
    assert app_uploads.drop_files_no_widget_holds(manager, "visitor", {"shown"}, ["shown"]) == 1  # never came
    assert list(manager.file_storage["visitor"]) == ["shown"]


def test_a_session_uploading_without_running_a_page_keeps_only_its_newest_files(monkeypatch: pytest.MonkeyPatch
                                                                                 ) -> None:
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
    from streamlit.runtime.uploaded_file_manager import UploadedFileRec

    monkeypatch.setattr(app_uploads, "MAX_SESSION_UPLOAD_BYTES", 3000)
    manager = MemoryUploadedFileManager("/_stcore/upload_file")
    app_uploads.cap_session_uploads(manager)
    app_uploads.cap_session_uploads(manager)  # each page run asks: capped once
    manager.add_file("other", UploadedFileRec("theirs", "theirs.png", "image/png", b"x" * 1000))
    for i in range(10):  # a script's PUTs, no page run between them
        manager.add_file("script", UploadedFileRec(f"f{i}", f"{i}.png", "image/png", b"x" * 1000))
    assert list(manager.file_storage["script"]) == ["f7", "f8", "f9"]
    assert list(manager.file_storage["other"]) == ["theirs"]
    assert sum(s.byte_length for stats in manager.get_stats().values() for s in stats) == 4000


def test_files_the_upload_cap_dropped_as_they_arrived_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    files = [(f"{i}.png", image_bytes(seed=i, size=(40, 30)), "image/png") for i in range(5)]
    monkeypatch.setattr(app_uploads, "MAX_SESSION_UPLOAD_BYTES", sum(len(f[1]) for f in files[2:]))
    from streamlit.testing.v1 import local_script_runner

    register = local_script_runner.LocalScriptRunner.register_file  # AppTest's store, fresh each run: capped first
    monkeypatch.setattr(local_script_runner.LocalScriptRunner, "register_file", lambda runner, record: (
        app_uploads.cap_session_uploads(runner._uploaded_file_mgr), register(runner, record)))
    at = inference_page()
    at.file_uploader[0].set_value(files).run()  # the store keeps the newest three as they arrive
    assert [u.name for u in at.session_state.kept_uploads] == ["2.png", "3.png", "4.png"]
    assert [w.value for w in at.warning if "left out: 0.png, 1.png." in w.value]
    assert not at.exception


def test_a_camera_photo_the_server_dropped_is_named_not_silently_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A photo taken before a large upload is the session's oldest file, so the upload cap drops it first: the
    camera then answers None as if no photo had been taken, and the photo vanished without a word."""
    from streamlit.testing.v1 import local_script_runner

    register = local_script_runner.LocalScriptRunner.register_file
    monkeypatch.setattr(local_script_runner.LocalScriptRunner, "register_file", lambda runner, record: (
        None if record.name == "camera.jpg" else register(runner, record)))  # as if the cap had dropped it
    at = inference_page()
    at.toggle[0].set_value(True).run()
    assert not at.warning
    at.camera_input[0].set_value(("camera.jpg", image_bytes(size=(200, 150), fmt="JPEG"), "image/jpeg")).run()
    assert not at.exception
    assert [w.value for w in at.warning] == [
        "Your photo is no longer on the server: it keeps the newest 128 MB of a visitor's uploads, and the files "
        "uploaded after the photo took its room. Take it again to classify it."]
    assert not any(m.value.startswith("**camera.jpg**") for m in at.markdown)


def test_the_app_caps_its_upload_store(monkeypatch: pytest.MonkeyPatch) -> None:
    capped = []
    monkeypatch.setattr(app_uploads, "cap_session_uploads", capped.append)
    inference_page()
    assert capped and all(hasattr(manager, "file_storage") for manager in capped)  # the server's own store


def test_a_one_class_model_answers_with_its_class(model: Path) -> None:
    save_model(model, classes=("cat",))
    at = inference_page()
    at.file_uploader[0].set_value([("a.png", image_bytes(size=(40, 40)), "image/png")]).run()
    assert not at.exception and at.markdown[-1].value.startswith("**a.png**: cat (100%)")
