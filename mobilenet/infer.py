"""Classifier: load a checkpoint once, then classify untrusted images; safe to share between threads.

The model is a conv+BN-folded copy in eval mode; nothing on it changes after load, every call runs
under torch.inference_mode (Grad-CAM aside, which takes gradients with respect to its own input only).
The only state that grows is a bounded cache of class maps, behind a lock.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .checkpoint import CheckpointError, ModelCard
from .checkpoint import load as load_checkpoint
from .catalog import resolve_checkpoint
from .device import pick_device
from .engines import Engine, TorchEngine, choose, onnx_engine
from .gradcam import class_maps, target_block
from .intake import ImageError, ImageSource, Limits, load_model_input

log = logging.getLogger(__name__)


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

    def to_record(self, source: str) -> dict:
        """The `predict --json` record of one image."""
        return {"source": source, "top": [{"label": label, "prob": prob} for label, prob in self.top],
                "ms": round(self.ms, 2)}


# Class maps kept per classifier, by size (4 KB each at 32×32, 16 MB at 2048×2048): a page's rerun (a slider,
# another class) reuses its maps.
CACHED_MAP_BYTES = 16 << 20


class Classifier:
    def __init__(self, model: nn.Module, card: ModelCard, device: torch.device | str = "cpu",
                 limits: Limits = Limits(), engine: Engine | None = None) -> None:
        """engine: what runs the network (mobilenet.engines); None: the BN-folded model on the device."""
        self.card = card
        self.device = torch.device(device)
        self.limits = limits
        self.recipe = card.inference
        self._engine = engine or TorchEngine(
            fold_batchnorm(model).to(self.device, memory_format=torch.channels_last).requires_grad_(False))
        # Folded too: eval-mode BN is affine, so the maps agree with the unfolded model's to 2e-6, at 30% less cost.
        self._cam_model = fold_batchnorm(model).to(self.device).requires_grad_(False)
        self._maps: OrderedDict[tuple[bytes, int], torch.Tensor] = OrderedDict()
        self._maps_bytes = 0
        self._maps_lock = threading.Lock()

    @classmethod
    def load(cls, checkpoint: Path | str | None = None, device: str = "auto", limits: Limits = Limits(),
             threads: int | None = 1, engine: str = "auto") -> Classifier:
        """A checkpoint file or run folder (its best.pt); None: the shipped default model.

        engine: "torch", "onnx" (ONNX Runtime, fp32), "int8" (ONNX Runtime, the int8 model beside the
        checkpoint) or "auto": int8 on the CPU when that file is there and onnxruntime is installed, else
        torch (see mobilenet.engines); ONNX Runtime runs on the CPU, so device "auto" means the CPU for "onnx"
        and "int8" even on a machine with a GPU. Raises EngineError when the engine asked for cannot run here.

        threads sets torch's intra-op threads for the whole process when running on the CPU (None leaves
        it alone). One 32×32 image is too small to split across cores: with the cores busy, threads
        waiting on each other turned a 4 ms forward pass into 50 to 1000 ms. Concurrent requests, each on
        its own thread, use the cores instead.
        """
        path = resolve_checkpoint(checkpoint)
        model, card = load_checkpoint(path)
        chosen_device = pick_device("cpu" if device == "auto" and engine in ("onnx", "int8") else device)
        name = choose(engine, path, chosen_device)
        runner = None
        if name != "torch":
            try:
                runner = onnx_engine(name, path, model, card, threads)
            except CheckpointError as e:  # an EngineError or OnnxError: the int8 file beside it cannot serve
                if engine != "auto":
                    raise
                log.warning("%s: %s; answering with PyTorch", path.name, e)
        classifier = cls(model, card, chosen_device, limits, runner)
        if threads is not None and classifier.device.type == "cpu":
            torch.set_num_threads(threads)
        return classifier

    @property
    def classes(self) -> tuple[str, ...]:
        return self.card.classes

    @property
    def engine(self) -> str:
        """The engine that answers: "torch", "onnx" or "int8"."""
        return self._engine.name

    @property
    def threads(self) -> int | None:
        """The CPU threads one call runs on (None: ONNX Runtime's default)."""
        return self._engine.threads

    def prepare(self, source: ImageSource) -> torch.Tensor:
        """Untrusted source → 3×R×R uint8 tensor, as in training (raises ImageError)."""
        return load_model_input(source, self.card.resolution, self.limits)

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """N×3×R×R uint8 → N×classes probabilities on the CPU, in forward passes sized for the device."""
        return torch.cat([self.recipe.probabilities(self._engine, batch.to(self.device)).cpu()
                          for batch in self.recipe.batches(images, self.device)]
                         ) if len(images) else torch.empty(0, len(self.classes))

    def _top(self, probs: torch.Tensor, topk: int) -> list[tuple[str, float]]:
        values, index = probs.topk(min(topk, len(self.classes)))
        return [(self.classes[i], float(v)) for v, i in zip(values, index)]

    def predict(self, source: ImageSource, topk: int = 5) -> Prediction:
        start = time.perf_counter()
        image = self.prepare(source)
        probs = self.probabilities(image[None])[0]
        return Prediction(self._top(probs, topk), to_pil(image), (time.perf_counter() - start) * 1000)

    def predict_batch(self, sources: list[ImageSource], topk: int = 5) -> list[Prediction | ImageError]:
        """All readable sources in passes sized for the device (InferenceRecipe.batches); an unreadable one gives
        its ImageError in its place."""
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
        image = self.prepare(source)
        chosen = int(self.probabilities(image[None])[0].argmax()) if class_index is None else class_index
        return self.class_map(image, chosen), chosen

    def class_map(self, image: torch.Tensor, class_index: int) -> torch.Tensor:
        """The map of a prepared model input (3×R×R uint8) for class_index, computed once per input and class
        while it stays among the most recently used (CACHED_MAP_BYTES): the map is a function of the input alone."""
        if not 0 <= class_index < self.card.num_classes:  # on a GPU an index out of range breaks the device
            raise ValueError(f"class index {class_index} is not one of this model's {self.card.num_classes} classes")
        key = (hashlib.blake2b(image.numpy().tobytes(), digest_size=16).digest(), class_index)
        with self._maps_lock:
            if key in self._maps:
                self._maps.move_to_end(key)
                return self._maps[key]
        x = self.recipe.normalization.apply(image[None].to(self.device))
        block = target_block(self.card.stem, self.card.resolution)
        cam = class_maps(self._cam_model, x, torch.tensor([class_index], device=self.device), block)[0]
        with self._maps_lock:
            if key not in self._maps:
                self._maps[key] = cam
                self._maps_bytes += cam.nbytes
            while self._maps_bytes > CACHED_MAP_BYTES and len(self._maps) > 1:
                self._maps_bytes -= self._maps.popitem(last=False)[1].nbytes
        return cam


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
