"""Exit 0 when a run's model has shipped: a checkpoint in checkpoints/ holds its weights, or names it as its
validating twin; else 1. For bench/ladder.sh (a width whose pair of runs is done) and bench/carry.sh (a finished run
no longer carried). The run folder need not exist: a twin is known by its name.

    .venv/bin/python bench/shipped.py runs/NAME
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mobilenet import checkpoint, shipping  # noqa: E402
from mobilenet.catalog import shipped_checkpoints  # noqa: E402
from mobilenet.checkpoint import CheckpointError, ModelCard  # noqa: E402
from mobilenet.runs import RunFolder  # noqa: E402


def weights(path: Path) -> str | None:
    """The digest of a checkpoint's weights (checkpoint.read checks it); None when missing or unreadable."""
    try:
        return checkpoint.read(path)["digest"]
    except CheckpointError:
        return None


def shipped(run: Path) -> bool:
    best = weights(RunFolder(run).best)
    for path in shipped_checkpoints():
        try:
            payload = checkpoint.read(path)
            twin = shipping.Twin.of(ModelCard.from_dict(payload["card"]))
        except CheckpointError:
            continue
        if (twin is not None and twin.run == run.name) or payload["digest"] == best:
            return True
    return False


if __name__ == "__main__":
    sys.exit(0 if shipped(Path(sys.argv[1])) else 1)
