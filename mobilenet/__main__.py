"""Command line: python -m mobilenet {summary,train,evaluate,predict} …"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings
from pathlib import Path

from . import checkpoint, data, train
from .checkpoint import CheckpointError
from .data import DataError
from .model import STEMS


def cmd_summary(args: argparse.Namespace) -> int:
    from .stats import format_table, model_stats

    stats = model_stats(args.alpha, args.beta, args.resolution, args.stem, args.num_classes)
    print(json.dumps(stats.to_dict()) if args.json else format_table(stats))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        cfg = train.load_config(args.resume)
        if args.device:
            cfg.device = args.device
        out = Path(args.resume)
        if not train.resumable(out):
            raise train.TrainError(f"{out} has no last.pt to resume from")
    else:
        cfg = train.TrainConfig(
            data=args.data, recipe=args.recipe, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            alpha=args.alpha, beta=args.beta, stem=args.stem, seed=args.seed, val_size=args.val_size,
            subset=args.subset, device=args.device or "auto", compile=args.compile, data_root=args.data_root,
            download=not args.no_download,
        )
        out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-a{cfg.alpha:g}-{cfg.recipe}")
    recipe = cfg.effective
    bars: list = []  # the progress bar, made at the first step so errors before training print alone
    if args.json:
        on_epoch, on_step = (lambda row: print(json.dumps(row), flush=True)), None
    else:
        from tqdm import tqdm

        def bar(row: dict):
            if not bars:
                bars.append(tqdm(total=recipe.epochs, initial=row["epoch"] - 1, unit="epoch", dynamic_ncols=True,
                                 file=sys.stderr))
            return bars[0]

        def on_step(row: dict) -> None:
            bar(row).set_postfix_str(
                f"ep {row['epoch']} loss {row['train_loss']:.3f} acc {row['train_acc']:.1%} "
                f"{row['img_per_s']:.0f} img/s ETA {train.format_duration(row['eta_s'])}"
            )

        def on_epoch(row: dict) -> None:
            progress = bar(row)
            progress.n = row["epoch"]
            progress.refresh()
            val = f"val {row['val_acc']:.2%}" if row["val_acc"] is not None else "no validation"
            progress.write(f"epoch {row['epoch']:>3}/{recipe.epochs}  loss {row['train_loss']:.4f}  "
                           f"acc {row['train_acc']:.2%}  {val}  lr {row['lr']:.4g}  {row['img_per_s']:.0f} img/s")

        print(f"run folder: {out}", file=sys.stderr)
    try:
        report = train.train(cfg, out, resume=bool(args.resume), on_epoch=on_epoch, on_step=on_step)
    finally:
        for progress in bars:
            progress.close()
    if report.get("status") == "stopped":
        print(f"stopped; resume with: python -m mobilenet train --resume {out}", file=sys.stderr)
    elif "confusion" in report:
        from .evaluate import Evaluation, format_report

        result = Evaluation.from_report(report)
        if args.json:
            print(json.dumps({"kind": "report", **{k: report[k] for k in ("accuracy", "n", "per_class", "confusion")}}))
        else:
            print(f"best checkpoint: {out / 'best.pt'}")
            print(format_report(result))
    return 0


def resolve_checkpoint(path: str | None) -> Path:
    """A checkpoint file, a run folder (its best.pt) or, with None, the shipped default model."""
    if path is None:
        from .infer import default_checkpoint

        return default_checkpoint()
    p = Path(path)
    return p / "best.pt" if p.is_dir() else p


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import Normalization
    from .evalsets import VAL, EvalSource, load
    from .evaluate import evaluate, format_report

    model, card = checkpoint.load(resolve_checkpoint(args.checkpoint))
    source = EvalSource(args.data, args.data, VAL if args.split == "val" else "test")
    dataset = load(card, source, Path(args.data_root), download=not args.no_download)
    result = evaluate(model, dataset, Normalization(card.mean, card.std), flip_tta=card.training.get("flip_tta", False))
    print(json.dumps(result.to_dict()) if args.json else format_report(result))
    return 0


URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")  # any scheme: the fetcher refuses all but http(s) with a message


def cmd_predict(args: argparse.Namespace) -> int:
    from PIL import Image

    from .infer import Classifier
    from .intake import ImageError
    from .urlfetch import fetch_url

    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # intake refuses those images with its own message
    clf = Classifier.load(args.checkpoint)
    results: list[dict] = []
    for source in args.inputs:
        try:
            prediction = clf.predict(fetch_url(source) if URL.match(source) else source, args.topk)
            results.append({"source": source, "top": [{"label": label, "prob": prob} for label, prob in prediction.top],
                            "ms": round(prediction.ms, 2)})
        except ImageError as e:
            results.append({"source": source, "error": str(e)})
    if args.json:
        print(json.dumps(results))
    else:
        for result in results:
            print_prediction(result)
    return 1 if any("error" in r for r in results) else 0


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


def cmd_export(args: argparse.Namespace) -> int:
    from .catalog import export, write_cards

    card = export(Path(args.run_dir), Path(args.out), args.data_description)
    write_cards(Path(args.out).parent)
    print(f"{args.out}: α={card.alpha:g}, validation accuracy {card.training['val_acc']:.2%}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mobilenet", description="MobileNet v1 on CIFAR-10")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("summary", help="layer table, parameters and mult-adds for α, β and a stem")
    p.add_argument("--alpha", type=float, default=1.0, help="width multiplier α (default 1.0)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--beta", type=float, help="resolution multiplier β: input side = round(base × β)")
    size.add_argument("--resolution", type=int, help="input side in pixels")
    p.add_argument("--stem", choices=STEMS, default="cifar", help="cifar: the seed's network; imagenet: the paper's")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.set_defaults(run=cmd_summary)

    p = sub.add_parser("train", help="train a model into a run folder")
    p.add_argument("--data", default="cifar10", help="'cifar10' or an image folder / .zip (default cifar10)")
    p.add_argument("--recipe", choices=sorted(train.RECIPES), default=train.DEFAULT_RECIPE)
    p.add_argument("--epochs", type=int, help="default: the recipe's")
    p.add_argument("--batch-size", type=int, help="default: the recipe's")
    p.add_argument("--lr", type=float, help="peak learning rate; default: the recipe's")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--stem", choices=STEMS, default="cifar")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-size", type=int, default=5000,
                   help="held-out validation images (default 5000; at most 20%% of the data)")
    p.add_argument("--subset", type=int, help="use only N training images, a seeded class-balanced sample (smoke runs)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto: the GPU when there is one")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--out", help="run folder (default runs/<time>-a<α>-<recipe>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped or killed run")
    p.add_argument("--json", action="store_true", help="one JSON line per epoch on stdout")
    add_data_options(p)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix")
    p.add_argument("--checkpoint", help="checkpoint file or run folder (default: the shipped α=1.0 model)")
    p.add_argument("--data", required=True, help="'cifar10' or an image folder / .zip")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="test split, or the validation split held out in training (same seed and size)")
    p.add_argument("--json", action="store_true")
    add_data_options(p)
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("predict", help="classify image files and URLs")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, or http(s) URL")
    p.add_argument("--checkpoint", help="checkpoint file or run folder (default: the shipped α=1.0 model)")
    p.add_argument("--topk", type=positive_int, default=5, help="how many classes to show (default 5)")
    p.add_argument("--json", action="store_true", help="a JSON list, one object per input")
    p.set_defaults(run=cmd_predict)

    p = sub.add_parser("export", help="ship a finished run's best model: weights only, with its card")
    p.add_argument("run_dir", metavar="RUN", help="finished run folder")
    p.add_argument("out", help="checkpoint file to write, e.g. checkpoints/mobilenet_v1_a1.0.pt")
    p.add_argument("--data-description", help="the training data in words, stored in the card instead of its path")
    p.set_defaults(run=cmd_export)
    return parser


def add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=str(data.DATA_ROOT), help="where CIFAR-10 and the decode cache live")
    p.add_argument("--no-download", action="store_true", help="never download CIFAR-10")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, DataError, CheckpointError, train.TrainError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
