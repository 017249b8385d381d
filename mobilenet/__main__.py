"""Command line: python -m mobilenet {summary,train,evaluate,predict,export,record-data,export-onnx} …"""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":  # Ctrl-C while torch loads (most of a predict's seconds) ends quietly, as in main()
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

import argparse
import json
import re
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, settings, train
from .checkpoint import CheckpointError
from .config import RESUMABLE_CHANGES, TRAIN_OPTIONS, TrainConfig, add_arguments, flag
from .runs import MetricsRow, RunFolder, run_name
from .data import IMAGE_SUFFIXES, DataError
from .display import format_duration
from .model import STEMS

if TYPE_CHECKING:
    from .infer import Classifier


def cmd_summary(args: argparse.Namespace) -> int:
    from .stats import format_table, model_stats

    stats = model_stats(args.alpha, args.beta, args.resolution, args.stem, args.num_classes)
    print(json.dumps(stats.to_dict()) if args.json else format_table(stats))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    given = {name: value for name, value in vars(args).items() if name in TRAIN_OPTIONS}
    if args.resume:
        ignored = [flag for flag, given in (("--config", args.config), ("--out", args.out),
                                            ("--overwrite", args.overwrite)) if given]
        if ignored:
            raise ValueError(f"--resume goes on in the run's own folder with its own settings: {', '.join(ignored)} "
                             f"cannot apply")
        folder = RunFolder(args.resume)
        cfg = folder.read_config()
        if not folder.resumable:
            raise train.TrainError(f"{folder.path} has no last.pt to resume from")
        changed = sorted(set(given) - set(RESUMABLE_CHANGES))
        if changed:
            may, got = (", ".join(map(flag, names)) for names in (RESUMABLE_CHANGES, changed))
            raise ValueError(f"a resumed run keeps its settings; only {may} may change (got {got})")
        cfg = replace(cfg, **given).anchored()
        out = folder.path
    else:
        given_config = Path(args.config) if args.config else None
        if given_config is None:
            base = {}
        else:  # a config.json, or a run folder's
            base = (RunFolder(given_config).read_config() if given_config.is_dir() else TrainConfig.read(given_config)
                    ).to_dict()
        cfg = TrainConfig.from_dict(base | given)
        if "distill" in given and not cfg.teachers:
            raise ValueError("--distill weighs the teachers' targets against the labels: give --teacher too")
        out = Path(args.out) if args.out else settings.runs_dir() / run_name(cfg)
        cfg = cfg.anchored()
    recipe = cfg.effective
    bars: list = []  # the progress bar, made at the first step so errors before training print alone
    if args.json:
        on_epoch, on_step = (lambda row: print(json.dumps(row.to_dict()), flush=True)), None
    else:
        from tqdm import tqdm

        def bar(row: MetricsRow):
            if not bars:
                bars.append(tqdm(total=recipe.epochs, initial=row.epoch - 1, unit="epoch", dynamic_ncols=True,
                                 file=sys.stderr))
            return bars[0]

        def on_step(row: MetricsRow) -> None:
            bar(row).set_postfix_str(
                f"ep {row.epoch} loss {row.train_loss:.3f} acc {row.train_acc:.1%} "
                f"{row.img_per_s:.0f} img/s ETA {format_duration(row.eta_s)}"
            )

        def on_epoch(row: MetricsRow) -> None:
            progress = bar(row)
            progress.n = row.epoch
            progress.refresh()
            val = f"val {row.val_acc:.2%}" if row.val_acc is not None else "no validation"
            progress.write(f"epoch {row.epoch:>3}/{recipe.epochs}  loss {row.train_loss:.4f}  "
                           f"acc {row.train_acc:.2%}  {val}  lr {row.lr:.4g}  {row.img_per_s:.0f} img/s")

        print(f"run folder: {out}", file=sys.stderr)
    try:
        report = train.train(cfg, out, resume=bool(args.resume), overwrite=args.overwrite, on_epoch=on_epoch,
                             on_step=on_step)
    finally:
        for progress in bars:
            progress.close()
    if train.process_rank():
        return 0
    if report is None:
        print(f"stopped; resume with: python -m mobilenet train --resume {out}", file=sys.stderr)
    elif report.validation is None:
        print(f"finished: {RunFolder(out).best}, the last epoch's model (no validation split, so no accuracy)",
              file=sys.stderr)
    elif args.json:
        measured = report.validation.to_dict()
        print(json.dumps({"kind": "report", **{k: measured[k] for k in ("accuracy", "n", "per_class", "confusion")}}))
    else:
        from .evaluate import format_report

        print(f"best checkpoint: {RunFolder(out).best}")
        print(format_report(report.validation))
    return 0


def load_classifier(args: argparse.Namespace, threads: int | None = 1) -> Classifier:
    """The Classifier of --checkpoint on --engine; says on stderr when onnxruntime would have made it faster."""
    from .catalog import resolve_checkpoint
    from .device import pick_device
    from .engines import fallback_note
    from .infer import Classifier

    path = resolve_checkpoint(args.checkpoint)
    clf = Classifier.load(path, engine=args.engine, threads=threads)
    note = fallback_note(path, pick_device()) if args.engine == "auto" else None
    if note:
        print(f"note: {note}", file=sys.stderr)
    return clf


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import engines
    from .evalsets import SEEN_NOTE, load, named
    from .evaluate import format_report, score

    clf = load_classifier(args, threads=None)  # a batch job: all the cores
    source = named(clf.card, args.data, args.split, Path(args.data_root))
    print(f"evaluating on {source.label} with {engines.describe(clf.engine)}", file=sys.stderr)  # int8 by default
    if source.seen:
        print(f"note: this {SEEN_NOTE} of the model: its accuracy here overstates how it does on new images; "
              f"--split val scores the validation split it held out", file=sys.stderr)
    dataset = load(clf.card, source, Path(args.data_root), download=not args.no_download)
    result = score(clf.probabilities(dataset.images), dataset)
    print(json.dumps(result.to_dict()) if args.json else format_report(result))
    return 0


URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")  # any scheme: the fetcher refuses all but http(s) with a message


def cmd_predict(args: argparse.Namespace) -> int:
    from PIL import Image

    from .intake import ImageError
    from .urlfetch import fetch_url

    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # intake refuses those images with its own message
    clf = load_classifier(args)
    results: list[dict] = []
    for source in expand_folders(args.inputs):
        if isinstance(source, dict):  # a folder without images
            results.append(source)
            continue
        try:
            prediction = clf.predict(fetch_url(source) if URL.match(source) else source, args.topk)
            results.append(prediction.to_record(source))
        except ImageError as e:
            results.append({"source": source, "error": str(e)})
    if args.json:
        print(json.dumps(results))
    else:
        for result in results:
            print_prediction(result)
    return 1 if any("error" in r for r in results) else 0


def expand_folders(inputs: list[str]) -> list[str | dict]:
    """Each folder among the inputs becomes its image files, sorted; a folder without any, an error object."""
    expanded: list[str | dict] = []
    for source in inputs:
        folder = Path(source)
        if URL.match(source) or not folder.is_dir():
            expanded.append(source)
            continue
        images = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        expanded += images or [{"source": source, "error": f"a folder without images ({kinds})"}]
    return expanded


def print_prediction(result: dict) -> None:
    if "error" in result:
        print(f"error: {result['source']}: {result['error']}", file=sys.stderr)
        return
    print(f"{result['source']}  ({result['ms']:.1f} ms)")
    for row in result["top"]:
        print(f"  {row['label']:<16} {row['prob']:7.2%}")


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def write_cards(folder: Path) -> None:
    """The folder's README.md cards where it keeps them, saying what they leave out."""
    from . import shipping

    if not shipping.keeps_cards(folder):
        print(f"note: {folder / 'README.md'} left as it is: cards are written in the checkpoints folder's README, or "
              f"in a README with the line {shipping.CARDS_START}", file=sys.stderr)
        return
    for note in shipping.write_cards(folder):
        print(f"note: left out of {folder / 'README.md'}: {note}", file=sys.stderr)


def cmd_export(args: argparse.Namespace) -> int:
    from .shipping import Twin, export

    card = export(Path(args.run_dir), Path(args.out), args.data_description, args.validated_by, args.overwrite)
    write_cards(Path(args.out).parent)
    twin = Twin.of(card)
    measured = f" (its validating twin {twin.run}'s; it trained on all the images)" if twin else ""
    print(f"{args.out}: α={card.alpha:g}, validation accuracy {card.val_acc:.2%}{measured}")
    return 0


def cmd_record_data(args: argparse.Namespace) -> int:
    from .shipping import record_data

    path = Path(args.checkpoint)
    card = record_data(path, args.data)
    write_cards(path.parent)
    print(f"{path}: trained on {card.data.source} (fingerprint {card.data.fingerprint})")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from .engines import NEEDS_ONNXRUNTIME, EngineError, onnxruntime_available

    if not onnxruntime_available():
        raise EngineError(NEEDS_ONNXRUNTIME)
    from .catalog import resolve_checkpoint
    from .onnx_export import export_onnx

    path = resolve_checkpoint(args.checkpoint)
    model = export_onnx(path, args.data, Path(args.data_root), fp32_file=args.fp32, overwrite=args.overwrite,
                        download=not args.no_download)
    write_cards(path.parent)
    q = model.quantization
    print(f"{model.path}: int8 accuracy {q.int8_accuracy:.2%} (fp32 {q.fp32_accuracy:.2%}) on {q.images} "
          f"{q.measured_on} images, {model.path.stat().st_size / 1e6:.1f} MB")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mobilenet", description="MobileNet v1 on CIFAR-10")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of:")

    p = sub.add_parser("summary", help="layer table, parameters and mult-adds for α, β and a stem")
    p.add_argument("--alpha", type=float, default=1.0, help="width multiplier α (default 1.0)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--beta", type=float, help="resolution multiplier β: input side = round(base × β)")
    size.add_argument("--resolution", type=int, help="input side in pixels")
    p.add_argument("--stem", choices=STEMS, default="cifar", help="cifar: the seed's network; imagenet: the paper's")
    p.add_argument("--num-classes", type=positive_int,
                   help="classes of the classifier (default: the stem's, 10 for cifar and 1000 for imagenet)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.set_defaults(run=cmd_summary)

    p = sub.add_parser("train", help="train a model into a run folder")
    options = p.add_argument_group("training settings (default: the recipe's, or the --config file's)")
    add_arguments(options, defaults=False)
    p.add_argument("--config", metavar="FILE", help="start from a config.json (or a run folder's); options given here "
                                                   "override it")
    p.add_argument("--out", help="run folder (default: a new folder in MOBILENET_RUNS or runs/)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its best.pt is lost)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a stopped or killed run (only --data, --device, --data-root, --val-every and "
                        "--no-download may change; other images than the run's are refused)")
    p.add_argument("--json", action="store_true", help="one JSON line per epoch, then one with the report, on stdout")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix")
    p.add_argument("--checkpoint", help="checkpoint file or run folder (default: the shipped α=1.0 model)")
    p.add_argument("--data", required=True, help="'cifar10' or an image folder / .zip")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="test: the test split, or all the images of a folder without one (as the app does); val: "
                        "the validation split held out in training (same seed and size)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the report")
    add_engine_option(p)
    add_data_options(p)
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("predict", help="classify image files and URLs")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, folder of images, or http(s) URL")
    p.add_argument("--checkpoint", help="checkpoint file or run folder (default: the shipped α=1.0 model)")
    p.add_argument("--topk", type=positive_int, default=5, help="how many classes to show (default 5)")
    p.add_argument("--json", action="store_true", help="a JSON list, one object per input")
    add_engine_option(p)
    p.set_defaults(run=cmd_predict)

    p = sub.add_parser("export", help="ship a finished run's best model: weights only, with its card")
    p.add_argument("run_dir", metavar="RUN", help="finished run folder")
    p.add_argument("out", help="checkpoint file to write, e.g. checkpoints/mobilenet_v1_a1.0.pt")
    p.add_argument("--data-description", help="the training data in words, stored in the card instead of its path")
    p.add_argument("--validated-by", metavar="TWIN_RUN", type=Path,
                   help="for a run trained on all the images (--val-size 0): the finished run with identical settings "
                        "that held a validation split out; the card gives its validation accuracy and names it")
    p.add_argument("--overwrite", action="store_true", help="replace the file already at OUT")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("record-data", help="record in a shipped model's card the fingerprint of its training data")
    p.add_argument("checkpoint", help="checkpoint file, e.g. checkpoints/mobilenet_v1_a1.0.pt")
    p.add_argument("--data", required=True, help="the folder or .zip it was trained on (or 'cifar10')")
    p.set_defaults(run=cmd_record_data)

    p = sub.add_parser("export-onnx", help="write a shipped model's int8 ONNX model beside it, with its accuracy")
    p.add_argument("checkpoint", help="checkpoint file, e.g. checkpoints/mobilenet_v1_a1.0.pt")
    p.add_argument("--data", required=True, help="the data it was trained on (folder or .zip, or 'cifar10'): "
                   "calibration uses its training part, the accuracy its validation split (a seeded sample of its "
                   "training images for a model trained on all of them)")
    p.add_argument("--fp32", action="store_true", help="also write the fp32 ONNX model (NAME.onnx)")
    p.add_argument("--overwrite", action="store_true", help="replace the ONNX files already beside the checkpoint")
    add_data_options(p)
    p.set_defaults(run=cmd_export_onnx)
    return parser


def add_engine_option(p: argparse.ArgumentParser) -> None:
    from .engines import ENGINES

    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="auto (default): int8 ONNX Runtime on the CPU when the model has one, else torch")


def add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=str(settings.data_root()),
                   help="where CIFAR-10 and the decode cache live (default: MOBILENET_DATA or data)")
    p.add_argument("--no-download", action="store_true", help="never download CIFAR-10")


def _in_words(e: Exception) -> str:
    """An error as a person reads it: an OSError as its file and what went wrong, without its errno."""
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.filename}: {e.strerror}"
    return str(e)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on a KeyboardInterrupt, taken below
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, DataError, CheckpointError, train.TrainError, OSError) as e:
        print(f"error: {_in_words(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
