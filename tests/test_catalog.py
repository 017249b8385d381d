"""The model catalogue (shipped checkpoints and finished runs) and the evaluation sets the app offers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from helpers import CLASSES, save_model, save_run, write_folder, write_report, zip_folder

from mobilenet import catalog, checkpoint, data, evalsets, memo, shipping
from mobilenet.checkpoint import CheckpointError, ModelCard, TrainingData
from mobilenet.data import DataError, load
from mobilenet.runs import RunFolder
from mobilenet.stats import model_stats


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MOBILENET_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("MOBILENET_RUNS", str(tmp_path / "runs"))
    return tmp_path


def test_shipped_models_come_first_with_the_default_leading_then_finished_runs(places: Path) -> None:
    save_model(places / "checkpoints" / "mobilenet_v1_a0.25.pt")
    save_model(places / "checkpoints" / "mobilenet_v1_a0.5.pt", alpha=0.5)
    save_model(places / "checkpoints" / catalog.DEFAULT_CHECKPOINT_NAME, alpha=0.125)  # the default even if narrower
    save_run(places / "runs", "b-finished")
    save_run(places / "runs", "a-running", state="running")
    (places / "runs" / "no-status").mkdir()
    models = catalog.list_models()
    assert models.keys == ["mobilenet_v1_a1.0", "mobilenet_v1_a0.5", "mobilenet_v1_a0.25", "runs/b-finished"]
    assert models.default.key == "mobilenet_v1_a1.0" and models.problems == ()
    run = models.get("runs/b-finished")
    assert run.path == places / "runs" / "b-finished" / "best.pt"
    assert run.describe() == ("α=0.25, cifar stem, 32×32 input, 10 classes, trained 3 epochs (seed recipe), "
                              "validation accuracy 42.0%")
    save_model(places / "checkpoints" / "all.pt", training={"epochs": 9, "recipe": "fast", "val_acc": 0.9},
               data=TrainingData("cifar10", "cifar10", val_size=0))  # its accuracy is its validating twin's
    assert catalog.list_models().get("all").describe() == (
        "α=0.25, cifar stem, 32×32 input, 10 classes, trained 9 epochs (fast recipe), trained on all its images; "
        "90.0% on held-out images with the same recipe")


def test_without_the_default_the_first_model_is_chosen_and_nothing_is_none(places: Path) -> None:
    assert catalog.list_models().default is None
    save_run(places / "runs", "only")
    assert catalog.list_models().default.key == "runs/only"


def test_a_broken_checkpoint_is_reported_not_listed(places: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (places / "checkpoints").mkdir()
    (places / "checkpoints" / "broken.pt").write_bytes(b"not a checkpoint")
    save_model(places / "checkpoints" / "good.pt")
    reads = []
    read = checkpoint.read
    monkeypatch.setattr(checkpoint, "read", lambda path: reads.append(Path(path).name) or read(path))
    for _ in range(3):  # each page run of each visitor asks
        models = catalog.list_models()
        assert models.keys == ["good"]
        assert len(models.problems) == 1 and models.problems[0].startswith("broken: broken.pt ")
    assert sorted(reads) == ["broken.pt", "good.pt"]  # each read once
    monkeypatch.setattr(catalog._refused, "max_age_s", 0.0)  # a minute later: a refusal may have passed
    catalog.list_models()
    assert sorted(reads) == ["broken.pt", "broken.pt", "good.pt"]


def test_a_retrained_checkpoint_is_read_again(places: Path) -> None:
    path = places / "checkpoints" / "model.pt"
    save_model(path, alpha=0.25)
    assert catalog.list_models().get("model").card.alpha == 0.25
    save_model(path, alpha=0.5)
    assert catalog.list_models().get("model").card.alpha == 0.5


def test_evaluation_sources(tmp_path: Path) -> None:
    root = tmp_path / "data"
    card = save_model(tmp_path / "m.pt", training={"data": str(zip_folder(write_folder(tmp_path / "trained", 6),
                                                                          tmp_path / "trained.zip"))})
    write_folder(root / "with-test", per_class=2)
    write_folder(root / "classes-only", per_class=2, splits=("",))
    (root / "cache").mkdir()
    (root / "notes.txt").write_text("not data")
    labels = [(s.label, s.split) for s in evalsets.sources(card, root)]
    assert labels == [("validation split held out in training (trained.zip)", evalsets.VAL),
                      ("classes-only: all images", "train"), ("with-test: test split", "test")]
    (root / "cifar-10-batches-py").mkdir()
    assert evalsets.sources(card, root)[0] == evalsets.EvalSource("CIFAR-10 test set", "cifar10", "test")


def test_the_training_data_is_found_by_fingerprint_and_offered_last(tmp_path: Path) -> None:
    """A shipped card names its data by file name; the data root may hold it under any name."""
    root = tmp_path / "data"
    root.mkdir()
    trained = zip_folder(write_folder(tmp_path / "trained", 6, splits=("train",)), root / "renamed.zip")
    write_folder(root / "unrelated", per_class=2, splits=("train",))
    card = save_model(tmp_path / "m.pt", data=TrainingData("cifar10-train-jpeg.zip", data.fingerprint(str(trained))))
    found = evalsets.sources(card, root)
    assert [(s.label, s.split, s.seen) for s in found] == [
        ("validation split held out in training (renamed.zip)", evalsets.VAL, False),
        ("unrelated: all images", "train", False),
        (f"renamed.zip: all images ({evalsets.SEEN_NOTE})", "train", True)]
    assert found[0].source == str(trained)
    # A card from before fingerprints: its data by name only.
    old = save_model(tmp_path / "old.pt", training={"data": "renamed.zip"})
    assert [s.seen for s in evalsets.sources(old, root)] == [False, False, True]
    # Another model never saw these images: nothing is marked.
    other = save_model(tmp_path / "other.pt", data=TrainingData("cifar10", "cifar10"))
    assert [s.label for s in evalsets.sources(other, root)] == ["renamed.zip: all images", "unrelated: all images"]


def test_a_model_trained_on_all_its_data_is_offered_no_validation_split(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    trained = zip_folder(write_folder(tmp_path / "trained", 6, splits=("train",)), root / "trained.zip")
    card = save_model(tmp_path / "m.pt", data=TrainingData("trained.zip", data.fingerprint(str(trained)), val_size=0))
    assert [(s.label, s.seen) for s in evalsets.sources(card, root)] == [
        (f"trained.zip: all images ({evalsets.SEEN_NOTE})", True)]
    assert "holding none out for validation" in evalsets.training_note(card)
    with pytest.raises(DataError, match="held no validation split out"):
        evalsets.named(card, str(trained), evalsets.VAL)


def test_a_page_run_reads_each_folder_once_and_sees_a_change_after_two_seconds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    trained = write_folder(root / "trained", 2, splits=("train",))
    card = save_model(tmp_path / "m.pt", data=TrainingData("trained", data.fingerprint(str(trained))))
    walks = []
    monkeypatch.setattr(data, "source_version", lambda path, walk=data.source_version: walks.append(path) or walk(path))
    now = [1000.0]
    monkeypatch.setattr(memo.time, "monotonic", lambda: now[0])
    for _ in range(3):  # a visitor's clicks: each reruns the page
        assert [(s.split, s.seen) for s in evalsets.sources(card, root)] == [(evalsets.VAL, False), ("train", True)]
    assert walks == [trained]
    write_folder(root / "trained", 2, splits=("test",))  # a test split: no longer the images it trained on
    assert [s.split for s in evalsets.sources(card, root)] == [evalsets.VAL, "train"]  # as of two seconds ago
    now[0] += 2
    assert [s.label for s in evalsets.sources(card, root)] == ["trained: test split"]
    assert walks == [trained, trained]


def test_a_folder_moved_away_within_the_two_seconds_is_known_again_when_it_returns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    trained = write_folder(root / "trained", 2, splits=("train",))
    card = save_model(tmp_path / "m.pt", data=TrainingData("trained", data.fingerprint(str(trained))))
    data._fingerprint.cache_clear()
    now = [1000.0]
    monkeypatch.setattr(memo.time, "monotonic", lambda: now[0])
    assert evalsets.trained_on(card, str(trained))  # its version is read now, and kept for two seconds
    data._fingerprint.cache_clear()
    trained.rename(tmp_path / "away")  # moved away (a rename keeps every folder's time) …
    assert not evalsets.trained_on(card, str(trained)) and evalsets.sources_to_train_on(root)[0].source == "cifar10"
    (tmp_path / "away").rename(trained)  # … and back, with the same version as before
    now[0] += 2
    assert evalsets.trained_on(card, str(trained))  # nothing answered for the empty folder was kept under it
    assert [s.label for s in evalsets.sources_to_train_on(root)][0] == "trained"


def test_no_sources_in_a_missing_root(tmp_path: Path) -> None:
    card = save_model(tmp_path / "m.pt")
    assert evalsets.sources(card, tmp_path / "nowhere") == []
    assert "No evaluation data found" in evalsets.missing_data_message(tmp_path / "nowhere")


def test_the_held_out_split_is_the_one_training_kept_apart(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "trained", per_class=10, splits=("train",))
    card = save_model(tmp_path / "m.pt", classes=("cat", "dog", "ship"),
                      training={"data": str(folder), "val_size": 6, "seed": 3})
    images = evalsets.load(card, evalsets.EvalSource("val", str(folder), evalsets.VAL), tmp_path)
    _, expected = data.split_train_val(load(str(folder), "train", 32, root=tmp_path), 6, 3)
    assert images.images.equal(expected.images) and images.labels.equal(expected.labels)
    sample = evalsets.load(card, evalsets.EvalSource("all", str(folder), "train"), tmp_path, limit=9)
    assert sorted(sample.labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_a_sample_of_a_folder_decodes_only_its_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """"1,000 (a class-balanced sample)" of a folder of large photos must not decode all of them first."""
    folder = write_folder(tmp_path / "photos", per_class=20, splits=("test",))
    card = save_model(tmp_path / "m.pt", classes=("cat", "dog", "ship"))
    source = evalsets.EvalSource("photos", str(folder), "test")
    everything = evalsets.load(card, source, tmp_path)
    decoded, decode_all = [], data._decode_all
    monkeypatch.setattr(data, "_decode_all", lambda blobs, *a: decoded.append(len(blobs)) or decode_all(blobs, *a))
    sample = evalsets.load(card, source, tmp_path, limit=9)
    assert decoded == [9] and sorted(sample.labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    chosen = data.balanced_sample(everything.labels, 9)
    assert sample.images.equal(everything.images[chosen]) and sample.labels.equal(everything.labels[chosen])
    assert evalsets.load(card, source, tmp_path, limit=9).images.equal(sample.images) and decoded == [9]  # cached


def test_classes_are_matched_to_the_model_by_name(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "d", per_class=1, splits=("test",))  # cat, dog, ship
    card = save_model(tmp_path / "m.pt", classes=("ship", "cat", "dog", "bird"))
    images = evalsets.load(card, evalsets.EvalSource("d", str(folder), "test"), tmp_path)
    assert images.classes == card.classes and images.labels.tolist() == [1, 2, 0]
    with pytest.raises(DataError, match="does not know: cat, dog, ship"):
        evalsets.load(save_model(tmp_path / "n.pt", classes=("a", "b")), evalsets.EvalSource("d", str(folder), "test"),
                      tmp_path)


def finished_run(runs: Path, name: str, alpha: float, accuracy: float) -> Path:
    folder = save_run(runs, name)
    save_model(folder / "best.pt", alpha=alpha, tta="flip", training={
        "epochs": 12, "recipe": "fast", "val_acc": 0.0, "data": "/home/someone/cifar.zip", "seed": 0})
    hits = round(accuracy * 480)  # of 480 images a class, the misses taken for the next class
    confusion = torch.diag(torch.full((10,), hits)) + torch.roll(torch.diag(torch.full((10,), 480 - hits)), 1, 1)
    write_report(RunFolder(folder), epochs=12, confusion=confusion)
    return folder


def test_export_ships_weights_and_a_complete_card_and_rewrites_the_cards(tmp_path: Path) -> None:
    shipped = tmp_path / "checkpoints"
    shipped.mkdir()
    (shipped / "README.md").write_text(
        f"# Models\n\nIntro kept.\n\n{shipping.CARDS_START}\nstale\n{shipping.CARDS_END}\n\nEnd kept.\n")
    for alpha, accuracy in ((0.25, 0.8125), (1.0, 0.875)):
        run = finished_run(tmp_path / "runs", f"a{alpha}", alpha, accuracy)
        card = shipping.export(run, shipped / f"mobilenet_v1_a{alpha}.pt", data_description="JPEG CIFAR-10")

    payload = checkpoint.read(shipped / "mobilenet_v1_a1.0.pt")
    assert "train_state" not in payload
    stats = model_stats(1.0)
    t = card.training
    assert (t["params"], t["mult_adds"]) == (stats.params, stats.mult_adds)
    assert (t["val_acc"], t["val_n"], t["data"], t["epochs"]) == (0.875, 4800, "JPEG CIFAR-10", 12)
    assert ModelCard.from_dict(payload["card"]) == card

    shipping.write_cards(shipped)
    readme = (shipped / "README.md").read_text()
    assert readme.startswith("# Models\n\nIntro kept.") and readme.endswith("End kept.\n") and "stale" not in readme
    assert readme.count(shipping.CARDS_START) == 1 and readme.count(shipping.CARDS_END) == 1
    overview = [line for line in readme.splitlines() if line.startswith("| `")]
    assert overview == ["| `mobilenet_v1_a1.0.pt` | 1 | 3,217,226 | 45.16 M | 87.50% | – |",
                        f"| `mobilenet_v1_a0.25.pt` | 0.25 | {model_stats(0.25).params:,} | "
                        f"{model_stats(0.25).mult_adds / 1e6:.2f} M | 81.25% | – |"]
    assert readme.index("### `mobilenet_v1_a1.0.pt`") < readme.index("### `mobilenet_v1_a0.25.pt`")
    assert "| validation accuracy | 87.50% on 4800 held-out images (seeded, stratified; seed 0) with flip TTA |" \
        in readme


def test_a_cards_training_line_names_what_the_run_added_to_its_recipe(tmp_path: Path) -> None:
    base = {"epochs": 120, "recipe": "fast", "batch_size": 128, "lr": 0.2, "val_acc": 0.9, "train_time_s": 600,
            "device": "CPU", "distill": 0.5, "cutout": 0, "ema": 0.0, "label_smoothing": 0.1, "weight_decay": 5e-4}
    plain = save_model(tmp_path / "plain.pt", training=base | {"teachers": []})
    taught = save_model(tmp_path / "taught.pt", training=base | {"teachers": ["a.pt", "b.pt"], "cutout": 12,
                                                                 "ema": 0.999, "label_smoothing": 0.2})
    assert ("| training | 120 epochs, recipe `fast` (batch 128, peak lr 0.2), 10 min on CPU |"
            in shipping.card_markdown("plain.pt", plain))
    assert ("| training | 120 epochs, recipe `fast` (batch 128, peak lr 0.2; distilled with weight 0.5 from a.pt, "
            "b.pt; label smoothing 0.2; Cutout 12; EMA 0.999), 10 min on CPU |"
            in shipping.card_markdown("taught.pt", taught))


def test_export_refuses_an_unfinished_run(tmp_path: Path) -> None:
    run = save_run(tmp_path / "runs", "still-training", state="running")
    with pytest.raises(CheckpointError, match="not a finished run"):
        shipping.export(run, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_recording_the_training_data_changes_the_card_only(tmp_path: Path) -> None:
    shipped = tmp_path / "checkpoints"
    save_model(shipped / "m.pt", classes=CLASSES,
               training={"data": "CIFAR-10 as JPEG: a long description", "val_size": 7, "seed": 2})
    digest = checkpoint.read(shipped / "m.pt")["digest"]
    source = zip_folder(write_folder(tmp_path / "trained", 2, splits=("train",)), tmp_path / "trained.zip")
    card = shipping.record_data(shipped / "m.pt", str(source))
    assert card.data == TrainingData("trained.zip", data.fingerprint(str(source)), val_size=7, seed=2)
    payload = checkpoint.read(shipped / "m.pt")
    assert payload["digest"] == digest and ModelCard.from_dict(payload["card"]) == card
    shipping.write_cards(shipped)
    assert f"; fingerprint `{card.data.fingerprint}`" in (shipped / "README.md").read_text()
    other = zip_folder(write_folder(tmp_path / "other", 3, splits=("train",)), tmp_path / "other.zip")
    with pytest.raises(DataError, match="is not the data m.pt was trained on"):
        shipping.record_data(shipped / "m.pt", str(other))
    with pytest.raises(DataError, match="does not exist"):
        shipping.record_data(shipped / "m.pt", str(tmp_path / "missing.zip"))
    (tmp_path / "setup.py").write_text("print('not images')")
    with pytest.raises(DataError, match="setup.py is neither a folder nor a .zip file"):
        shipping.record_data(shipped / "m.pt", str(tmp_path / "setup.py"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty has no training images"):
        shipping.record_data(shipped / "m.pt", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="cifar10 is not the data m.pt was trained on: its classes are airplane, "):
        shipping.record_data(shipped / "m.pt", "cifar10")  # (a model of cat, dog and ship)


@pytest.mark.parametrize("readme,kept", [
    ("# Our models\n\nHand-written, no cards yet.\n", ["# Our models\n\nHand-written, no cards yet.\n\n"]),
    (f"# Models\n{shipping.CARDS_START}\nNotes after a lone marker.\n", ["# Models\n", "Notes after a lone marker.\n"]),
])
def test_cards_go_into_any_readme_and_a_stray_file_is_left_out_in_words(tmp_path: Path, readme: str,
                                                                        kept: list[str]) -> None:
    shipped = tmp_path / "checkpoints"
    save_model(shipped / "mobilenet_v1_a0.25.pt")
    (shipped / "README.md").write_text(readme)
    (shipped / "junk.pt").write_bytes(b"not a checkpoint")
    assert shipping.write_cards(shipped) == ["junk.pt: junk.pt is not a checkpoint file"]
    text = (shipped / "README.md").read_text()
    assert all(part in text for part in kept) and "### `mobilenet_v1_a0.25.pt`" in text
    assert text.count(shipping.CARDS_START) == 1 and text.count(shipping.CARDS_END) == 1


def test_cards_are_written_on_an_install_without_onnx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnx is optional: an export on an install without it failed with a traceback, its new .pt already written."""
    shipped = tmp_path / "checkpoints"
    save_model(shipped / "mobilenet_v1_a0.25.pt")
    (shipped / "mobilenet_v1_a0.25.int8.onnx").write_bytes(b"an int8 model beside it")
    monkeypatch.setitem(sys.modules, "onnx", None)  # what an import of a package not installed meets
    monkeypatch.delitem(sys.modules, "mobilenet.onnx_export", raising=False)
    assert shipping.write_cards(shipped) == ["mobilenet_v1_a0.25.int8.onnx: mobilenet_v1_a0.25.int8.onnx is not "
                                             "checked here: the onnx package is not installed (pip install onnx "
                                             "onnxruntime)"]
    assert "### `mobilenet_v1_a0.25.pt`" in (shipped / "README.md").read_text()


def test_cards_list_a_run_model_copied_in_that_was_never_validated(tmp_path: Path) -> None:
    """A --val-size 0 run's best.pt copied into the folder records no accuracy and no size: its card says so and
    gives the size its architecture has, rather than failing the next export."""
    shipped = tmp_path / "checkpoints"
    save_model(shipped / "copied.pt", training={"epochs": 3, "recipe": "fast", "val_acc": None,
                                                "train_time_s": None})
    assert shipping.write_cards(shipped) == []
    text = (shipped / "README.md").read_text()
    size = model_stats(0.25)
    assert f"| `copied.pt` | 0.25 | {size.params:,} | {size.mult_adds / 1e6:.2f} M | – |" in text
    assert f"| size and cost | {size.params:,} parameters" in text and "| validation accuracy | – on" in text
