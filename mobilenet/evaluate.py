"""Accuracy, per-class accuracy, confusion matrix and most confident mistakes of a model on an ImageSet."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import ImageSet
from .tta import InferenceRecipe


@torch.inference_mode()
def predict_probs(model: torch.nn.Module, images: torch.Tensor, recipe: InferenceRecipe) -> torch.Tensor:
    """Softmax probabilities (N×classes, float32 on CPU) for uint8 images, fed as the recipe says.

    In fp32 on every device, as the Classifier serves: a validation accuracy on a card is the served model's.
    """
    model.eval()
    device = next(model.parameters()).device
    out = []
    for batch in recipe.batches(images, device):
        out.append(recipe.probabilities(model, batch.to(device, non_blocking=True)).cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


@dataclass(frozen=True)
class Evaluation:
    classes: tuple[str, ...]
    confusion: torch.Tensor  # rows: truth, columns: prediction
    probs: torch.Tensor
    labels: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(self.confusion.diag().sum() / max(self.n, 1))

    @property
    def per_class(self) -> dict[str, float | None]:
        """Each class's accuracy; None for a class without images (it has no accuracy, not 0%)."""
        totals = self.confusion.sum(1)
        return {c: float(hit / n) if n else None for c, hit, n in zip(self.classes, self.confusion.diag(), totals)}

    def mistakes(self, k: int = 16) -> list[tuple[int, int, int, float]]:
        """Most confident wrong predictions: (index, truth, prediction, confidence)."""
        confidence, predicted = self.probs.max(1)
        wrong = (predicted != self.labels).nonzero().flatten()
        order = wrong[confidence[wrong].argsort(descending=True)][:k]
        return [(int(i), int(self.labels[i]), int(predicted[i]), float(confidence[i])) for i in order]

    @classmethod
    def from_report(cls, report: dict) -> Evaluation:
        """The counts of a saved report (no probabilities: mistakes() is empty); ValueError for a report whose
        confusion matrix is not a square table of counts, one row per distinct class."""
        classes, confusion = tuple(report["classes"]), torch.tensor(report["confusion"])
        k = len(classes)
        if (not all(isinstance(c, str) for c in classes) or len(set(classes)) != k or confusion.shape != (k, k)
                or confusion.dtype != torch.int64 or bool((confusion < 0).any())):
            raise ValueError(f"not a confusion matrix of counts for {k} distinct classes")
        return cls(classes, confusion, torch.empty(0, 0), torch.empty(0))

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "n": self.n,
            "classes": list(self.classes),
            "per_class": self.per_class,
            "confusion": self.confusion.tolist(),
        }


def evaluate(model: torch.nn.Module, data: ImageSet, recipe: InferenceRecipe) -> Evaluation:
    return score(predict_probs(model, data.images, recipe), data)


def score(probs: torch.Tensor, data: ImageSet) -> Evaluation:
    """The evaluation of probabilities computed for a dataset's images (by a model or a Classifier)."""
    k = len(data.classes)
    labels = data.labels.to(probs.device)  # a validation set lives on the GPU; predict_probs answers on the CPU
    predicted = probs.argmax(1) if len(probs) else torch.empty(0, dtype=torch.long, device=probs.device)
    confusion = torch.bincount(labels * k + predicted, minlength=k * k).view(k, k)
    return Evaluation(data.classes, confusion, probs, labels)


def format_report(result: Evaluation) -> str:
    width = max(len(c) for c in result.classes)
    lines = [f"accuracy {result.accuracy:.2%} on {result.n} images", "", "per-class accuracy:"]
    lines += [f"  {c:<{width}}  {acc:6.2%}" if acc is not None else f"  {c:<{width}}     n/a (no images)"
              for c, acc in result.per_class.items()]
    short = [c[:5] for c in result.classes]
    lines += ["", "confusion matrix (rows: truth, columns: prediction):",
              " " * (width + 2) + "".join(f"{s:>7}" for s in short)]
    for c, row in zip(result.classes, result.confusion.tolist()):
        lines.append(f"  {c:<{width}}" + "".join(f"{v:>7}" for v in row))
    return "\n".join(lines)
