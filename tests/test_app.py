"""Every page of the Streamlit app through streamlit.testing's AppTest, in-process, on random-weight models.

AppTest (Streamlit 1.67) keeps only the page's own elements after switch_page: the entry script's
sidebar is checked on the default page, the explorer.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import image_bytes, isolate_app, save_model, save_run, write_folder
from streamlit.testing.v1 import AppTest

from mobilenet import Classifier, app_models, app_views, checkpoint, data, evalsets
from mobilenet.checkpoint import TrainingData
from mobilenet.evaluate import evaluate

APP = Path(__file__).resolve().parent.parent / "streamlit_app.py"
PAGES = ("app_pages/explorer.py", "app_pages/inference.py", "app_pages/evaluation.py")


@pytest.fixture(autouse=True)
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return isolate_app(tmp_path, monkeypatch)


@pytest.fixture
def model(places: Path) -> Path:
    path = places / "checkpoints" / "mobilenet_v1_a0.25.pt"
    save_model(path)
    return path


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    if page != PAGES[0]:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> list[str]:
    """Every text the script wrote, in the page and the sidebar."""
    kinds = ("markdown", "caption", "info", "warning", "error", "success")
    return [e.value for kind in kinds for e in getattr(at, kind)]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_without_a_model_and_says_once_how_to_get_one(page: str, places: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (places / "models").mkdir()
    monkeypatch.setenv("MOBILENET_CHECKPOINTS", str(places / "models"))  # the folder the server is configured with
    at = open_page(page)
    message = app_models.no_model_message()
    assert [i.value for i in at.info] == [message]  # the explorer needs no model, and says so too
    assert sum(message in text for text in texts(at)) == 1
    assert "`models/`" in message and "checkpoints" not in message and str(places) not in message


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_with_a_model(model: Path, page: str) -> None:
    at = open_page(page)
    assert not at.info
    if page == "app_pages/explorer.py":
        assert at.sidebar.selectbox(key="model").value == "mobilenet_v1_a0.25"


def test_the_sidebar_lists_shipped_models_and_finished_runs(model: Path, places: Path) -> None:
    save_run(places / "runs", "a0.25-seed")
    save_run(places / "runs", "still-training", state="running")
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["model"] = "runs/a0.25-seed"  # a shared link chooses the model
    at.run()
    choice = at.sidebar.selectbox(key="model")
    assert choice.options == ["mobilenet_v1_a0.25", "runs/a0.25-seed"]
    assert choice.value == "runs/a0.25-seed"
    assert "validation accuracy 42.0%" in at.sidebar.caption[1].value


def parameters(at: AppTest) -> str:
    return next(m.value for m in at.metric if m.label == "parameters")


def test_the_alpha_slider_changes_the_parameter_total() -> None:
    at = open_page("app_pages/explorer.py")
    assert parameters(at) == "3,217,226"  # the seed's network
    at.slider(key="alpha").set_value(0.5).run()
    assert parameters(at) == "823,722"
    assert next(m.delta for m in at.metric if m.label == "parameters") == "-74.4%"
    at.slider(key="alpha").set_value(1.0).run()
    assert parameters(at) == "3,217,226"
    assert not at.exception


def test_explorer_settings_come_from_the_url() -> None:
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"alpha": "0.25", "stem": "imagenet", "resolution": "128"})
    at.run()
    assert not at.exception
    assert (at.slider(key="alpha").value, at.radio(key="stem").value, at.select_slider(key="resolution").value) == (
        0.25, "imagenet", 128)
    assert parameters(at) == "470,072"  # the paper's 0.5 M for 0.25 MobileNet, with its 1000-class head
    assert "Table 6" in at.dataframe[1].value["table"].tolist()  # the paper's figures beside ours


def test_another_stem_starts_at_its_own_resolution() -> None:
    at = open_page("app_pages/explorer.py")
    at.select_slider(key="resolution").set_value(64).run()  # β = 2 for CIFAR's stem
    at.radio(key="stem").set_value("imagenet").run()
    assert at.select_slider(key="resolution").value == 224 and not at.exception
    at.radio(key="stem").set_value("cifar").run()
    assert at.select_slider(key="resolution").value == 32


def test_switching_the_stem_after_opening_a_link_is_no_bad_link() -> None:
    """The address still holds the old stem's resolution on the run that switches the stem: read as a link, it
    warned of a link the visitor never followed."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"alpha": "0.5", "stem": "imagenet", "resolution": "128"})
    at.run()
    at.radio(key="stem").set_value("cifar")
    at.query_params.update({"stem": "cifar", "resolution": "128"})  # the browser's address on that run
    at.run()
    assert not at.warning and at.select_slider(key="resolution").value == 32 and not at.exception
    at.select_slider(key="resolution").set_value(36).run()
    assert any("β = 1.125:" in c.value for c in at.caption)  # not rounded half to even (1.12)


def test_the_first_page_says_what_this_is_and_which_model_answers(model: Path) -> None:
    at = open_page("app_pages/explorer.py")
    assert at.markdown[0].value == app_views.INTRO
    for page in ("Model explorer", "Inference", "Evaluation", "Training"):
        assert f"**{page}**" in app_views.INTRO
    assert at.markdown[1].value.startswith("Model in use: **mobilenet_v1_a0.25** (α=0.25, cifar stem")


@pytest.mark.parametrize("link,note", [
    ({"alpha": "7"}, "The link's α = `7` is outside 0.25 to 2: showing α = 1."),
    ({"alpha": "wide"}, "The link's α = `wide` is outside 0.25 to 2: showing α = 1."),
    ({"alpha": ["0.5", "0.75"]}, "The link gives α more than once (`0.5`, `0.75`): showing α = 1."),
    ({"stem": "resnet"}, "The link's stem `resnet` is not one of cifar, imagenet: showing cifar."),
    ({"stem": "imagenet", "resolution": "32"},
     "The link's resolution `32` is not offered for the imagenet stem (64 to 448 in steps of 16): showing 224."),
    ({"model": "nonexistent"}, "The link's model `nonexistent` is not on this server: showing mobilenet_v1_a0.25."),
    ({"model": "x **Session expired.** [Sign in](https://evil.example/) ![](https://evil.example/t.gif) `"},
     "The link's model `x **Session expired.** [Sign in](https://evil.example/) ![](…` is not on this "
     "server: showing mobilenet_v1_a0.25."),  # a stranger's Markdown, shown as code
    ({"model": "x\r\r[Sign in](https://evil.example)\u2028\u202e\r\r"},  # \r\r would end the code span
     "The link's model `x  [Sign in](https://evil.example)    ` is not on this server: showing mobilenet_v1_a0.25."),
])
def test_a_bad_link_value_is_named_not_ignored(model: Path, link: dict, note: str) -> None:
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update(link)
    at.run()
    assert not at.exception
    assert [w.value for w in at.warning] == [note]


def test_a_good_link_gets_no_note(model: Path) -> None:
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"alpha": "0.5", "stem": "imagenet", "resolution": "128", "model": "mobilenet_v1_a0.25"})
    assert not at.run().warning and not at.exception
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"model": ""})  # a link cut short names no model
    assert not at.run().warning and not at.exception


def test_accuracy_against_cost_shows_every_model_beside_the_paper(model: Path, places: Path) -> None:
    save_run(places / "runs", "a0.25-seed")
    at = open_page("app_pages/explorer.py")
    points = app_models.accuracy_points()
    assert sorted(points.loc[points["data"] == "CIFAR-10 validation (ours)", "model"]) == [
        "mobilenet_v1_a0.25", "runs/a0.25-seed"]
    assert (points["data"] == "ImageNet top-1 (the paper)").sum() == 7
    drawn = [c.spec for c in at.get("vega_lite_chart") if "accuracy" in str(c.spec)]
    assert drawn, "no accuracy-against-cost chart"
    next(b for b in at.button if b.label == "Measure each model's latency here").click().run()
    assert not at.exception
    assert any("latency ms" in str(c.spec) for c in at.get("vega_lite_chart"))


def test_latency_is_measured_on_request() -> None:
    at = open_page("app_pages/explorer.py")
    assert not any(m.label.startswith("latency") for m in at.metric)
    next(b for b in at.button if b.label == "Measure latency on this machine").click().run()
    latency = next(m.value for m in at.metric if m.label.startswith("latency"))
    assert latency.endswith(" ms") and float(latency.removesuffix(" ms")) > 0


def test_an_uploaded_image_yields_a_prediction(model: Path) -> None:
    at = open_page("app_pages/inference.py")
    image = image_bytes(size=(200, 150))
    at.file_uploader[0].set_value(("photo.png", image, "image/png")).run()
    assert not at.exception and not at.error
    expected = Classifier.load(model, device="cpu", threads=None).predict(image)  # leave torch's threads alone
    assert at.markdown[-1].value == f"**photo.png**: {expected.label} ({expected.prob:.0%})"
    assert len(at.image) == 4  # the examples' thumbnails, the photo, what the network saw, the class map


def test_a_bad_upload_shows_a_message_not_an_exception(model: Path) -> None:
    at = open_page("app_pages/inference.py")
    at.file_uploader[0].set_value([("notes.png", b"not an image at all", "image/png"),
                                   ("cut.png", image_bytes(size=(200, 150))[:200], "image/png"),
                                   ("photo.png", image_bytes(size=(200, 150)), "image/png")]).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert errors[0] == "**notes.png**: not a supported image: use JPEG, PNG, WebP, BMP, GIF or TIFF"
    assert errors[1].startswith("**cut.png**: ") and len(errors) == 2
    assert at.markdown[-1].value.startswith("**photo.png**: ")  # the good one still gets its answer


def test_the_shipped_examples_can_be_classified(model: Path) -> None:
    at = open_page("app_pages/inference.py")
    at.pills[0].set_value(["cat_1", "ship_1"]).run()
    assert not at.exception and not at.error
    assert [m.value.split(":")[0] for m in at.markdown[-2:]] == ["**cat_1.jpg**", "**ship_1.jpg**"]


def test_a_camera_photo_is_classified(model: Path) -> None:
    at = open_page("app_pages/inference.py")
    assert not at.camera_input  # the camera is only asked for on request
    at.toggle[0].set_value(True).run()
    at.camera_input[0].set_value(("camera.jpg", image_bytes(size=(200, 150), fmt="JPEG"), "image/jpeg")).run()
    assert not at.exception and not at.error
    assert at.markdown[-1].value.startswith("**camera.jpg**: ")


def test_evaluation_on_a_generated_folder(model: Path, places: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_folder(places / "data" / "small", per_class=4)  # cat, dog and ship; train/ and test/
    fingerprints = []
    fingerprint = data.fingerprint
    monkeypatch.setattr(data, "fingerprint", lambda source, **how: fingerprints.append(source) or fingerprint(source,
                                                                                                            **how))
    at = open_page("app_pages/evaluation.py")
    assert at.selectbox[0].value.label == "small: test split"
    assert not at.metric  # nothing runs before the button
    at.button[0].click().run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["images"] == "12"
    net, card = checkpoint.load(model)
    test_split = data.load(str(places / "data" / "small"), "test", 32, root=places / "data")
    images = data.match_classes(test_split, card.classes)
    assert metrics["accuracy"] == f"{evaluate(net, images, card.inference).accuracy:.2%}"
    assert len(at.image) in (1, 2)  # the sample tiles, and the mistakes unless there are none
    asked = len(fingerprints)
    at.run()  # the result stays on screen across reruns
    assert {m.label: m.value for m in at.metric} == metrics
    assert len(fingerprints) == asked  # the data is looked at when asked for, not on every page run
    shutil.rmtree(places / "data" / "small")
    write_folder(places / "data" / "small", per_class=8)  # the host replaced the folder: evaluated afresh
    at.button[0].click().run()
    assert {m.label: m.value for m in at.metric}["images"] == "24"


def test_the_evaluation_choices_survive_a_source_added_and_a_page_switch(model: Path, places: Path) -> None:
    for name in ("b-set", "c-set"):
        write_folder(places / "data" / name, per_class=4)
    at = open_page("app_pages/evaluation.py")
    at.selectbox(key=app_models.EVALUATION_SOURCE).select_index(1).run()
    at.radio(key=app_models.EVALUATION_LIMIT).set_value(1000).run()
    at.button[0].click().run()
    shown = {m.label: m.value for m in at.metric}
    assert shown["images"] == "12"
    write_folder(places / "data" / "a-set", per_class=2)  # the host adds a source, listed first
    at.run()
    assert at.selectbox(key=app_models.EVALUATION_SOURCE).value.label == "c-set: test split"
    at.switch_page("app_pages/inference.py").run()
    at.switch_page("app_pages/evaluation.py").run()
    assert at.selectbox(key=app_models.EVALUATION_SOURCE).value.label == "c-set: test split"
    assert at.radio(key=app_models.EVALUATION_LIMIT).value == 1000
    assert {m.label: m.value for m in at.metric} == shown  # the result is still there
    shutil.rmtree(places / "data" / "c-set")  # gone: the first listed is chosen, and nothing fails
    at.run()
    assert not at.exception and at.selectbox(key=app_models.EVALUATION_SOURCE).value.label == "a-set: test split"


def test_images_overwritten_in_place_are_evaluated_afresh(model: Path, places: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Overwriting images keeps their folders' times (cp -r new/. data/pets/): an Evaluate then showed the result of
    the images that were there before."""
    folder = write_folder(places / "data" / "small", per_class=4)
    loads = []
    load = evalsets.load
    monkeypatch.setattr(evalsets, "load", lambda *args, **kwargs: loads.append(1) or load(*args, **kwargs))
    at = open_page("app_pages/evaluation.py")
    at.button[0].click().run()
    at.button[0].click().run()  # nothing changed: the result kept
    assert len(loads) == 1
    cats, ships = sorted((folder / "test" / "cat").iterdir()), sorted((folder / "test" / "ship").iterdir())
    for cat, ship in zip(cats, ships):
        cat.write_bytes(ship.read_bytes())
    at.button[0].click().run()
    assert len(loads) == 2 and not at.exception


def test_a_file_gone_from_a_data_folder_is_no_failure(model: Path, places: Path) -> None:
    folder = write_folder(places / "data" / "small", per_class=4)
    (folder / "test" / "cat" / "moved.png").symlink_to(places / "moved-away.png")  # the host moved it meanwhile
    at = open_page("app_pages/evaluation.py")
    at.button[0].click().run()
    assert not at.exception and next(m.value for m in at.metric if m.label == "images") == "12"


def test_images_decoded_again_that_are_not_the_results_are_refused(model: Path, places: Path) -> None:
    """Images changed in place keep their folders' times: a result kept, its images evicted and decoded again from
    the new files, must not be shown with them (their tiles indexed past the end)."""
    folder = write_folder(places / "data" / "small", per_class=4)
    entry = app_models.models().default
    source = evalsets.sources(entry.card)[0]
    version = data.fingerprint(source.source)
    app_models.evaluation(entry, source, None, version)
    app_models._evaluation_images.clear()  # evicted by later evaluations
    for image in list((folder / "test" / "cat").iterdir())[:2]:
        image.write_text("damaged in place")
    with pytest.raises(data.DataError, match="changed since it was evaluated"):
        app_models.evaluation(entry, source, None, version)


def test_an_evaluation_says_which_files_it_could_not_read(model: Path, places: Path) -> None:
    folder = write_folder(places / "data" / "small", per_class=4)
    (folder / "test" / "cat" / "x.png").write_text("not an image")
    at = open_page("app_pages/evaluation.py")
    at.button[0].click().run()
    assert not at.exception and next(m.value for m in at.metric if m.label == "images") == "12"
    assert [w.value for w in at.warning if "could not be read" in w.value] == [
        "1 file(s) of small: test split could not be read as images and are not counted: `test/cat/x.png`."]


def test_evaluations_take_turns(model: Path, places: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_folder(places / "data" / "small", per_class=4)
    inside, most, lock = [0], [0], threading.Lock()
    load = evalsets.load

    def loading(*args, **kwargs) -> data.ImageSet:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.3)  # another visitor's evaluation, were it let in, would start meanwhile
        with lock:
            inside[0] -= 1
        return load(*args, **kwargs)

    monkeypatch.setattr(evalsets, "load", loading)
    entry = app_models.models().default
    source = evalsets.sources(entry.card)[0]
    version = data.fingerprint(source.source)
    visitors = [threading.Thread(target=app_models._evaluation, args=(entry.path, entry.version, source, version,
                                                                       places / "data", limit, "torch"))
                for limit in (None, 6, 9)]  # three different evaluations at once
    for visitor in visitors:
        visitor.start()
    for visitor in visitors:
        visitor.join()
    assert most[0] == 1


def test_images_decoded_again_for_a_kept_result_take_their_turn_too(model: Path, places: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    write_folder(places / "data" / "small", per_class=4)
    entry = app_models.models().default
    source = evalsets.sources(entry.card)[0]
    version = data.fingerprint(source.source)
    app_models.evaluation(entry, source, None, version)
    app_models._evaluation_images.clear()  # the result kept, its images evicted by later evaluations
    loads = []
    load = evalsets.load
    monkeypatch.setattr(evalsets, "load", lambda *args, **kwargs: loads.append(1) or load(*args, **kwargs))
    visitor = threading.Thread(target=app_models.evaluation, args=(entry, source, None, version))
    with app_models._evaluating:  # another visitor's evaluation is running
        visitor.start()
        time.sleep(0.3)
        assert loads == []
    visitor.join()
    assert loads == [1]


def test_engines_evaluated_on_the_same_images_share_them(model: Path, places: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    write_folder(places / "data" / "small", per_class=4)
    loads = []
    load = evalsets.load
    monkeypatch.setattr(evalsets, "load", lambda *args, **kwargs: loads.append(args[1]) or load(*args, **kwargs))
    entry = app_models.models().default
    source = evalsets.sources(entry.card)[0]
    version = data.fingerprint(source.source)
    runs = [app_models._evaluation(entry.path, entry.version, source, version, places / "data", None, engine)
            for engine in ("torch", "onnx")]
    assert loads == [source]  # decoded once, kept once
    assert [run.result.n for run in runs] == [12, 12]


def test_evaluation_knows_which_images_the_model_trained_on(places: Path) -> None:
    trained = write_folder(places / "data" / "renamed-training-data", per_class=5, splits=("train",))
    save_model(places / "checkpoints" / "mobilenet_v1_a0.25.pt",
               data=TrainingData("training.zip", data.fingerprint(str(trained)), val_size=3))
    at = open_page("app_pages/evaluation.py")
    options = at.selectbox[0].options
    assert options == ["validation split held out in training (renamed-training-data)",
                       f"renamed-training-data: all images ({evalsets.SEEN_NOTE})"]  # what it never saw first
    assert "trained on training.zip, holding 3 images out" in at.caption[0].value
    assert not at.warning
    at.selectbox[0].select_index(1).run()
    assert "overstates" in at.warning[0].value
    at.selectbox[0].select_index(0).run()
    at.button[0].click().run()
    assert not at.exception and {m.label: m.value for m in at.metric}["images"] == "3"


def test_evaluation_without_data_says_what_to_do(model: Path) -> None:
    at = open_page("app_pages/evaluation.py")
    assert len(at.warning) == 1 and at.warning[0].value.startswith("No evaluation data found")
    assert not at.button


def test_evaluation_on_classes_the_model_does_not_know_is_a_message(places: Path) -> None:
    save_model(places / "checkpoints" / "two.pt", classes=("airplane", "truck"))
    write_folder(places / "data" / "animals", per_class=2)
    at = open_page("app_pages/evaluation.py")
    at.button[0].click().run()
    assert not at.exception
    assert "classes the model does not know: cat, dog, ship" in at.error[0].value


def test_an_image_url_is_fetched_and_classified(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mobilenet import urlfetch

    fetched = []
    monkeypatch.setattr(urlfetch, "fetch_url",
                        lambda url, owner: fetched.append(url) or image_bytes(size=(200, 150)))
    at = open_page("app_pages/inference.py")
    at.text_input[0].input("https://example.org/pictures/cat.png").run()
    assert not at.exception and not at.error
    assert fetched == ["https://example.org/pictures/cat.png"]
    assert at.markdown[-1].value.startswith("**cat.png**: ")
    at.slider[0].set_value(3).run()  # a rerun reuses the image instead of fetching it again
    assert fetched == ["https://example.org/pictures/cat.png"] and at.markdown[-1].value.startswith("**cat.png**: ")
    at.text_input[0].input(" https://example.org/dog.png\n").run()  # pasted on a phone, with spaces around
    assert fetched[-1] == "https://example.org/dog.png" and at.markdown[-1].value.startswith("**dog.png**: ")
    at.slider[0].set_value(2).run()
    at.slider[1].set_value(0.2).run()
    at.toggle[1].set_value(False).run()  # no class maps
    at.switch_page("app_pages/explorer.py").run()
    at.switch_page("app_pages/inference.py").run()  # back: the URL and the choices stay, as the uploads do
    assert at.text_input[0].value == " https://example.org/dog.png\n" and at.toggle[1].value is False
    assert (at.slider[0].value, at.slider[1].value) == (2, 0.2)
    assert at.markdown[-1].value.startswith("**dog.png**: ") and len(fetched) == 2
    at.text_input[0].input("").run()
    assert "url_image" not in at.session_state and not any("dog.png" in m.value for m in at.markdown)


def test_classes_to_show_chosen_for_a_larger_model_fit_the_one_chosen_now(model: Path) -> None:
    save_model(model.with_name("mobilenet_v1_a0.5.pt"), classes=("cat", "dog", "ship"))
    at = open_page("app_pages/inference.py")
    at.sidebar.selectbox[0].set_value("mobilenet_v1_a0.25").run()
    at.slider[0].set_value(7).run()
    at.sidebar.selectbox[0].set_value("mobilenet_v1_a0.5").run()  # three classes
    assert not at.exception and (at.slider[0].value, at.slider[0].max) == (3, 3)


def test_a_url_that_failed_can_be_tried_again(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mobilenet import urlfetch
    from mobilenet.intake import ImageError

    answers_given = iter([ImageError("the server at example.org was too slow to answer"), image_bytes(size=(64, 48))])

    def fetch(url: str, owner: str) -> bytes:
        answer = next(answers_given)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(urlfetch, "fetch_url", fetch)
    at = open_page("app_pages/inference.py")
    at.text_input[0].input("https://example.org/cat.png").run()
    assert at.error[0].value.endswith("was too slow to answer")
    next(b for b in at.button if b.label == "Try this URL again").click().run()
    assert not at.error and at.markdown[-1].value.startswith("**cat.png**: ")


@pytest.mark.parametrize("url", ["http://127.0.0.1/cat.png", "file:///etc/passwd", "not a url"])
def test_a_refused_url_is_a_message(model: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOBILENET_ALLOW_PRIVATE_URLS", raising=False)
    from mobilenet import urlfetch

    asked = []
    fetch_url = urlfetch.fetch_url
    monkeypatch.setattr(urlfetch, "fetch_url", lambda url, owner: asked.append(url) or fetch_url(url, owner=owner))
    at = open_page("app_pages/inference.py")
    at.text_input[0].input(url).run()
    assert not at.exception
    assert len(at.error) == 1 and at.error[0].value.startswith(f"**{url}**: ")
    at.slider[0].set_value(3).run()  # a rerun shows the same answer without asking again
    assert len(at.error) == 1 and at.error[0].value.startswith(f"**{url}**: ") and len(asked) == 1


def test_a_skipped_checkpoint_is_named_without_the_server_path(model: Path, places: Path) -> None:
    (places / "checkpoints" / "gone.pt").symlink_to(places / "nowhere.pt")  # a stat of it names the full path
    at = open_page(PAGES[0])
    warnings = [w.value for w in at.sidebar.warning]
    assert len(warnings) == 1 and warnings[0].startswith("Skipped gone: ")
    assert str(places) not in warnings[0] and "checkpoints/gone.pt" in warnings[0]


def test_measuring_each_models_latency_again_loads_no_model(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mobilenet import app_models

    asked = []
    real = app_models._classifier
    monkeypatch.setattr(app_models, "_classifier", lambda *key: asked.append(key) or real(*key))
    at = open_page("app_pages/explorer.py")
    for _ in range(2):
        next(b for b in at.button if b.label == "Measure each model's latency here").click().run()
        assert not at.exception
    assert len(asked) == 1  # the times are kept: no model is loaded (nor evicted from the cache) to ask for them


def test_the_app_runs_torch_on_one_thread_per_visitor_from_its_first_page() -> None:
    torch.set_num_threads(2)  # a fresh server: torch's default, every core
    open_page("app_pages/explorer.py")  # no model loaded: the explorer counts and may time a network
    seen: list[int] = []
    later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))  # a later page run
    later.start()
    later.join()
    assert seen == [1]


def test_an_evaluation_error_names_no_server_path(model: Path, places: Path) -> None:
    (places / "data" / "cifar-10-batches-py").mkdir()  # an extract that was interrupted
    at = open_page("app_pages/evaluation.py")
    assert at.selectbox[0].value.source == "cifar10"
    at.button[0].click().run()
    assert not at.exception and at.error and not [e.value for e in at.error if str(places) in e.value]


def test_the_evaluation_page_without_data_names_no_server_path(model: Path, places: Path) -> None:
    at = open_page("app_pages/evaluation.py")  # an empty data folder
    (warning,) = [w.value for w in at.warning if "No evaluation data found" in w.value]
    assert str(places) not in warning and "`data/`" in warning


def test_images_decoded_again_for_a_result_of_replaced_data_are_refused(model: Path, places: Path) -> None:
    write_folder(places / "data" / "small", per_class=4)
    entry = app_models.models().default
    source = evalsets.sources(entry.card)[0]
    before = app_models.data_version(source)
    app_models.evaluation(entry, source, None, before)
    shutil.rmtree(places / "data" / "small")
    write_folder(places / "data" / "small", per_class=8)  # replaced after the result was computed on `before`
    app_models._evaluation_images.clear()  # its images evicted by later evaluations
    with pytest.raises(data.DataError, match="changed since it was evaluated"):
        app_models.evaluation(entry, source, None, before)


def test_an_evaluation_looks_at_its_data_once(model: Path, places: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_folder(places / "data" / "small", per_class=4)
    entry = app_models.models().default
    source = evalsets.sources(entry.card)[0]
    looks = []
    fingerprint = data.fingerprint
    monkeypatch.setattr(data, "fingerprint", lambda src, **how: looks.append(src) or fingerprint(src, **how))
    app_models.evaluation(entry, source, None, app_models.data_version(source))  # a click
    assert len(looks) == 1
