"""Classifier: load a checkpoint once, then classify untrusted images; safe to share between threads.

The model is a conv+BN-folded copy in eval mode; nothing on it changes after load, every call runs
under torch.inference_mode (Grad-CAM aside, which takes gradients with respect to its own input only).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .checkpoint import CheckpointError, ModelCard
from .checkpoint import load as load_checkpoint
from .data import Normalization
from .device import pick_device
from .gradcam import class_maps, target_block
from .intake import ImageError, ImageSource, Limits, load_model_input

CHECKPOINT_DIR = Path(os.environ.get("MOBILENET_CHECKPOINTS", Path(__file__).resolve().parent.parent / "checkpoints"))
DEFAULT_CHECKPOINT_NAME = "mobilenet_v1_a1.0.pt"


def default_checkpoint() -> Path:
    path = CHECKPOINT_DIR / DEFAULT_CHECKPOINT_NAME
    if not path.exists():
        raise CheckpointError(f"the default model {path} is missing; pass --checkpoint FILE or a run folder")
    return path


def shipped_checkpoints() -> list[Path]:
    return sorted(CHECKPOINT_DIR.glob("*.pt"))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy with every Conv2d → BatchNorm2d pair folded into one conv (eval-mode inference only)."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, nn.Sequential) and len(module) >= 2 \
                and isinstance(module[0], nn.Conv2d) and isinstance(module[1], nn.BatchNorm2d):
            module[0] = fuse_conv_bn_eval(module[0], module[1])
            module[1] = nn.Identity()
    return folded


@dataclass(frozen=True)
class Prediction:
    top: list[tuple[str, float]]  # (label, probability), most likely first
    image: Image.Image  # the model-resolution RGB image the network saw
    ms: float  # time from source to top-k

    @property
    def label(self) -> str:
        return self.top[0][0]

    @property
    def prob(self) -> float:
        return self.top[0][1]


class Classifier:
    def __init__(self, model: nn.Module, card: ModelCard, device: torch.device | str = "cpu",
                 limits: Limits = Limits()) -> None:
        self.card = card
        self.device = torch.device(device)
        self.limits = limits
        self.normalization = Normalization(card.mean, card.std)
        self.flip_tta = bool(card.training.get("flip_tta", False))
        self._model = fold_batchnorm(model).to(self.device, memory_format=torch.channels_last)
        self._cam_model = copy.deepcopy(model).eval().to(self.device)  # unfolded, for Grad-CAM's gradients
        for module in (self._model, self._cam_model):
            module.requires_grad_(False)

    @classmethod
    def load(cls, checkpoint: Path | str | None = None, device: str = "auto", limits: Limits = Limits(),
             threads: int | None = 1) -> Classifier:
        """A checkpoint file or run folder (its best.pt); None: the shipped default model.

        threads sets torch's intra-op threads for the whole process when running on the CPU (None leaves
        it alone). One 32×32 image is too small to split across cores: with the cores busy, threads
        waiting on each other turned a 4 ms forward pass into 50 to 1000 ms. Concurrent requests, each on
        its own thread, use the cores instead.
        """
        path = Path(checkpoint) if checkpoint is not None else default_checkpoint()
        if path.is_dir():
            path = path / "best.pt"
        model, card = load_checkpoint(path)
        classifier = cls(model, card, pick_device(device), limits)
        if threads is not None and classifier.device.type == "cpu":
            torch.set_num_threads(threads)
        return classifier

    @property
    def classes(self) -> tuple[str, ...]:
        return self.card.classes

    def prepare(self, source: ImageSource) -> torch.Tensor:
        """Untrusted source → 3×R×R uint8 tensor, as in training (raises ImageError)."""
        return load_model_input(source, self.card.resolution, self.limits)

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """N×3×R×R uint8 → N×classes probabilities on the CPU."""
        x = self.normalization.apply(images.to(self.device))
        if self.flip_tta:  # one pass over both views is faster than two passes
            x = torch.cat([x, x.flip(3)])
        logits = self._model(x.contiguous(memory_format=torch.channels_last)).float()
        if self.flip_tta:
            logits = (logits[:len(images)] + logits[len(images):]) / 2
        return logits.softmax(1).cpu()

    def _top(self, probs: torch.Tensor, topk: int) -> list[tuple[str, float]]:
        values, index = probs.topk(min(topk, len(self.classes)))
        return [(self.classes[i], float(v)) for v, i in zip(values, index)]

    def predict(self, source: ImageSource, topk: int = 5) -> Prediction:
        start = time.perf_counter()
        image = self.prepare(source)
        probs = self.probabilities(image[None])[0]
        return Prediction(self._top(probs, topk), to_pil(image), (time.perf_counter() - start) * 1000)

    def predict_batch(self, sources: list[ImageSource], topk: int = 5) -> list[Prediction | ImageError]:
        """One forward pass for all readable sources; an unreadable one gives its ImageError in its place."""
        start = time.perf_counter()
        prepared: list[torch.Tensor | ImageError] = []
        for source in sources:
            try:
                prepared.append(self.prepare(source))
            except ImageError as e:
                prepared.append(e)
        good = [p for p in prepared if isinstance(p, torch.Tensor)]
        probs = iter(self.probabilities(torch.stack(good)) if good else [])
        ms = (time.perf_counter() - start) * 1000 / max(len(sources), 1)
        return [p if isinstance(p, ImageError) else Prediction(self._top(next(probs), topk), to_pil(p), ms)
                for p in prepared]

    def gradcam(self, source: ImageSource, class_index: int | None = None) -> tuple[torch.Tensor, int]:
        """Class activation map (R×R, 0..1; all zero when nothing in the image speaks for the class) for
        class_index (default: the predicted class), and that class. See mobilenet.gradcam."""
        image = self.prepare(source)[None].to(self.device)
        chosen = int(self.probabilities(image)[0].argmax()) if class_index is None else class_index
        x = self.normalization.apply(image)
        block = target_block(self.card.stem, self.card.resolution)
        return class_maps(self._cam_model, x, torch.tensor([chosen], device=self.device), block)[0], chosen


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
