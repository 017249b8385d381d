"""Validation accuracy per epoch of one or more runs: a markdown table and an Altair chart (HTML).

    .venv/bin/python bench/recipe_study.py runs/study-a0.25-seed runs/a0.25-fast --out bench/results/recipe_study.html

A run whose folder is gone can be taken from a chart this script saved earlier: --earlier "CHART.html:LABEL".
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import altair as alt
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mobilenet.runs import RunFolder  # noqa: E402


def label(run: Path) -> str:
    config = RunFolder(run).read_config()
    recipe = config.effective
    changed = [f"{name.replace('_', ' ')} {getattr(config, name):g}" for name in ("ema", "cutout", "label_smoothing",
                                                                             "weight_decay") if getattr(config, name)]
    if config.teachers:
        changed.append(f"distilled ({config.distill:g}) from {' + '.join(Path(t).stem for t in config.teachers)}")
    return ", ".join([f"{config.recipe}, α={config.alpha:g}, {recipe.epochs} epochs, batch {recipe.batch_size}, "
                      f"lr {recipe.lr:g}", *changed])


def labels(runs: list[Path], taken: set[str]) -> dict[Path, str]:
    """Each run's label; runs whose labels would read alike (they differ in a setting the label leaves out: TTA,
    seed, β, stem, validation split) or match one from an earlier chart also name their folder."""
    plain = {run: label(run) for run in dict.fromkeys(runs)}
    alike = [text for text in plain.values() if list(plain.values()).count(text) > 1 or text in taken]
    names = [run.name for run in plain]
    return {run: f"{text} ({run.name if names.count(run.name) == 1 else run})" if text in alike else text
            for run, text in plain.items()}


def earlier(given: str) -> list[dict]:
    """The rows of one run, by its label, in a chart this script saved: for runs whose folders are gone."""
    path, run = given.split(":", 1)
    saved = re.search(r"var spec = (\{.*?\});\n", Path(path).read_text(), re.S)
    rows = [row for data in json.loads(saved.group(1))["datasets"].values() for row in data
            if row["run"] == run] if saved else []
    if not rows:
        raise SystemExit(f"{path} has no run labelled {run!r}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--earlier", action="append", default=[], metavar="CHART:LABEL",
                        help="a run from a chart this script saved earlier, by its label (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/recipe_study.html"))
    parser.add_argument("--title", default="validation accuracy per epoch: seed recipe against the default")
    args = parser.parse_args()
    saved = [row for given in args.earlier for row in earlier(given)]
    frame = pd.DataFrame([
        {"run": text, "epoch": row.epoch, "validation accuracy": row.val_acc, "minutes": row.elapsed_s / 60}
        for run, text in labels(args.runs, {row["run"] for row in saved}).items()
        for row in RunFolder(run).read_metrics() if row.kind == "epoch"
    ] + saved)
    table = frame.pivot(index="epoch", columns="run", values="validation accuracy")
    print("| epoch | " + " | ".join(table.columns) + " |\n|---:|" + "---:|" * len(table.columns))
    for epoch, values in table.iterrows():
        print(f"| {epoch} | " + " | ".join(f"{v:.2%}" if pd.notna(v) else "" for v in values) + " |")
    chart = alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1)),
        y=alt.Y("validation accuracy:Q", axis=alt.Axis(format="%"), scale=alt.Scale(zero=False)),
        color="run:N",
        tooltip=["run:N", "epoch:Q", alt.Tooltip("validation accuracy:Q", format=".2%"),
                 alt.Tooltip("minutes:Q", format=".1f")],
    ).properties(title=args.title, width=600, height=360)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    chart.save(str(args.out))
    print(f"\nchart: {args.out}")


if __name__ == "__main__":
    main()
