"""What runs a classifier's network: PyTorch, or ONNX Runtime on the CPU in fp32 or int8.

Every engine is a function from normalised N×3×R×R float views to logits, so the Classifier feeds each one
through the same InferenceRecipe and gives the same Prediction. "auto" picks the fastest correct engine
for the device: the shipped int8 model on the CPU when its file is there and onnxruntime is installed,
else PyTorch. Only PyTorch is required; ONNX Runtime and onnx are imported when an ONNX engine is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from .checkpoint import CheckpointError, ModelCard, weights_digest

ENGINES = ("auto", "torch", "onnx", "int8")
RUNTIMES = {"torch": "PyTorch", "onnx": "ONNX Runtime", "int8": "ONNX Runtime"}
NEEDS_ONNXRUNTIME = "The faster int8 engine needs ONNX Runtime: pip install onnxruntime onnx."
MAX_INT8_LOSS = 0.005  # an int8 model that loses more accuracy than this against fp32 does not ship


class EngineError(CheckpointError):
    """An engine that cannot be used here; the message says why."""


class Engine(Protocol):
    name: str  # "torch", "onnx" or "int8"

    @property
    def threads(self) -> int | None:
        """The CPU threads a call runs on; None: the runtime's default."""

    def __call__(self, views: torch.Tensor) -> torch.Tensor: ...


def precision(engine: str) -> str:
    return "int8" if engine == "int8" else "fp32"


def describe(engine: str) -> str:
    """For people: "ONNX Runtime, int8"."""
    return f"{RUNTIMES[engine]}, {precision(engine)}"


@dataclass(frozen=True)
class TorchEngine:
    model: nn.Module  # BN-folded, eval mode, on its device
    name: str = "torch"

    @property
    def threads(self) -> int | None:
        return torch.get_num_threads()  # torch's setting is the whole process's

    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        return self.model(views)


class OnnxEngine:
    """An ONNX Runtime session on the CPU; `run` may be called from many threads at once."""

    def __init__(self, model: bytes, name: str, threads: int | None = 1) -> None:
        import onnxruntime as ort

        from .onnx_export import INPUT, OUTPUT

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default, one per physical core
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads would take the cores from concurrent requests and any training job.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.name, self.threads, self._input, self._output = name, threads, INPUT, OUTPUT
        try:
            self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own types: Fail, InvalidGraph, InvalidArgument, …
            raise EngineError(f"ONNX Runtime {ort.__version__} cannot run the {name} model "
                              f"({str(e).splitlines()[0][:200]})") from None

    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        out = self._session.run([self._output], {self._input: views.contiguous().numpy()})[0]
        return torch.from_numpy(out)


def onnxruntime_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def int8_file(checkpoint: Path) -> Path:
    """Where a checkpoint's int8 model lives: beside it, `mobilenet_v1_a1.0.pt` → `mobilenet_v1_a1.0.int8.onnx`."""
    return checkpoint.with_suffix(".int8.onnx")


def choose(requested: str, checkpoint: Path, device: torch.device) -> str:
    """The engine that answers for a request ("auto", "torch", "onnx" or "int8"); EngineError when it cannot."""
    if requested not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {requested!r}")
    if requested == "auto":
        fast = device.type == "cpu" and int8_file(checkpoint).is_file() and onnxruntime_available()
        return "int8" if fast else "torch"
    if requested == "torch":
        return requested
    if not onnxruntime_available():
        raise EngineError(NEEDS_ONNXRUNTIME)
    if device.type != "cpu":
        raise EngineError(f"the {requested} engine runs on the CPU; choose the cpu device or the torch engine")
    if requested == "int8" and not int8_file(checkpoint).is_file():
        raise EngineError(f"{checkpoint.name} has no int8 model beside it ({int8_file(checkpoint).name}); make "
                          f"one with: python -m mobilenet export-onnx {checkpoint} --data TRAINING_DATA")
    return requested


def fp32_choice(checkpoint: Path, device: torch.device) -> str:
    """The fp32 engine to compare the automatic choice with: ONNX Runtime where it answers in int8, else torch."""
    return "onnx" if choose("auto", checkpoint, device) == "int8" else "torch"


def fallback_note(checkpoint: Path, device: torch.device) -> str | None:
    """The one-line note for people when an int8 model is there but cannot be used for lack of onnxruntime."""
    missing = device.type == "cpu" and int8_file(checkpoint).is_file() and not onnxruntime_available()
    return NEEDS_ONNXRUNTIME if missing else None


def onnx_engine(name: str, checkpoint: Path, model: nn.Module, card: ModelCard, threads: int | None) -> OnnxEngine:
    """The "onnx" engine (the fp32 graph, written from the weights) or the "int8" one (the checked file)."""
    from .infer import fold_batchnorm
    from .onnx_export import graph, read

    if name == "onnx":
        blob = graph(fold_batchnorm(model), card).SerializeToString()
    else:
        blob = read(int8_file(checkpoint), card, weights_digest(model.state_dict())).model
    engine = OnnxEngine(blob, name, threads)
    try:  # one image now: a file that fails as it runs would fail every visitor's request, past the fallback
        shape = tuple(engine(torch.zeros(1, 3, card.resolution, card.resolution)).shape)
    except Exception as e:
        raise EngineError(f"the {name} model does not run ({str(e).splitlines()[0][:200]})") from None
    if shape != (1, card.num_classes):
        raise EngineError(f"the {name} model gives {shape} logits, not (1, {card.num_classes})")
    return engine
