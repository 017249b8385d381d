"""ONNX files of a checkpoint: the fp32 graph, the int8 model quantized from it, and reading either safely.

The graph is written from the BN-folded network's layers directly rather than through torch.onnx.export:
the network is a plain chain of Conv, ReLU, global average pooling and one Linear layer, which this writes
in milliseconds, while the exporter took 9 to 14 s per model on a 2-core CPU (and needs onnxscript).
`tests/test_engine.py` checks that the graph computes what the torch model does.

Every file carries its model card, the digest of the torch weights it was made from and a digest of
itself in its metadata. Reading refuses a file that is not an ONNX model of this project, that was
modified, that was made from other weights than the checkpoint beside it, that keeps data outside itself,
or that uses any operator outside a short list of standard ones, so no custom operator can ever run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from . import checkpoint, data
from .checkpoint import CheckpointError, ModelCard, atomic_write, weights_digest
from .data import DataError, ImageSet, measurement_split, stratified_split
from .engines import MAX_INT8_LOSS, OnnxEngine, int8_file
from .infer import fold_batchnorm
from .tta import InferenceRecipe
from .values import is_of_type

FORMAT = "mobilenet-v1-onnx"
FORMAT_VERSION = 1
OPSET = 17
# The file format version: the oldest that opset 17 needs (onnx 1.12), so that any ONNX Runtime from 1.13 on reads
# our files; the onnx package writes its newest (14 with onnx 1.23), which ONNX Runtime 1.20 refuses.
IR_VERSION = 8
INPUT, OUTPUT = "images", "logits"
# What the fp32 graph and its int8 quantization are made of: standard operators of the default domain only.
ALLOWED_OPS = frozenset({"Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm", "QuantizeLinear", "DequantizeLinear"})
MAX_BYTES = 64 * 1024 * 1024  # an α=1 fp32 graph is 13 MB
CALIBRATION_IMAGES = 512
# Where int8 was measured against fp32: held-out images, or, for a model trained on all the images, a seeded sample
# of its training images (data.measurement_split), calibrated on others.
VALIDATION, TRAINING = "validation", "training"


class OnnxError(CheckpointError):
    """An ONNX file that cannot be used; the message says why."""


@dataclass(frozen=True)
class Quantization:
    """How an int8 model was made and what it costs in accuracy, measured on the model's validation split (or, for
    a model trained on all the images, on a seeded sample of them)."""

    fp32_accuracy: float
    int8_accuracy: float
    images: int  # images measured on
    calibration_images: int  # training images (never measured ones) the activation ranges come from
    calibration_seed: int
    measured_on: str = VALIDATION  # or TRAINING: images the model trained on, since it held none out
    method: str = ("static, QDQ, per-channel int8 weights, uint8 activations, MinMax calibration; "
                   "first convolution and classifier in fp32")

    def __post_init__(self) -> None:  # read from a file's metadata, which a hand may have edited
        for f in fields(self):
            value = getattr(self, f.name)
            if not is_of_type(value, f.type):
                raise ValueError(f"quantization record field {f.name} is {value!r}")

    @property
    def loss(self) -> float:
        return self.fp32_accuracy - self.int8_accuracy

    @property
    def too_lossy(self) -> bool:
        """It loses more than MAX_INT8_LOSS, counted in images: 25 of 5,000 is 0.5% and passes, which the difference
        of two rounded fractions (0.0050000000000000044) would not."""
        return round(self.loss * self.images) > MAX_INT8_LOSS * self.images + 1e-9

    @property
    def held_out(self) -> bool:
        """Measured on images the model never trained on."""
        return self.measured_on == VALIDATION


@dataclass(frozen=True)
class OnnxModel:
    """A checked int8 file: its serialized model (what ONNX Runtime is given), card and quantization record."""

    path: Path
    model: bytes
    card: ModelCard
    quantization: Quantization


# ---- the graph ----------------------------------------------------------------------------------


def graph(folded: nn.Module, card: ModelCard) -> onnx.ModelProto:
    """The fp32 ONNX model of a BN-folded network (mobilenet.infer.fold_batchnorm): normalised float
    N×3×R×R images in, logits out. Layers run in the order they are registered, as in MobileNetV1.forward."""
    nodes: list[onnx.NodeProto] = []
    weights: list[TensorProto] = []
    current = INPUT

    def add(op: str, inputs: list[str], **attributes: Any) -> None:
        nonlocal current
        name = f"{op.lower()}{len(nodes)}"
        nodes.append(helper.make_node(op, [current, *inputs], [name], name=name, **attributes))
        current = name

    def tensor(name: str, value: torch.Tensor) -> str:
        weights.append(numpy_helper.from_array(value.detach().cpu().float().numpy(), f"{current}.{name}"))
        return weights[-1].name

    for module in folded.modules():
        if isinstance(module, nn.Conv2d):
            inputs = [tensor("weight", module.weight)]
            if module.bias is not None:
                inputs.append(tensor("bias", module.bias))
            pad_h, pad_w = module.padding
            add("Conv", inputs, kernel_shape=list(module.kernel_size), strides=list(module.stride),
                pads=[pad_h, pad_w, pad_h, pad_w], dilations=list(module.dilation), group=module.groups)
        elif isinstance(module, nn.ReLU):
            add("Relu", [])
        elif isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
            add("GlobalAveragePool", [])
        elif isinstance(module, nn.Linear):
            add("Flatten", [], axis=1)
            add("Gemm", [tensor("weight", module.weight), tensor("bias", module.bias)], transB=1)
        elif isinstance(module, nn.BatchNorm2d):
            raise ValueError("fold the batch norms into the convolutions first (mobilenet.infer.fold_batchnorm)")
        elif not isinstance(module, (nn.Sequential, nn.Identity)) and module is not folded:
            raise ValueError(f"no ONNX translation for {type(module).__name__}")
    nodes[-1].output[0] = OUTPUT
    side = card.resolution
    model = helper.make_model(
        helper.make_graph(nodes, "mobilenet_v1", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT,
                                                                                ["batch", 3, side, side])],
                          [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", card.num_classes])],
                          weights),
        opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mobilenet-v1-studio", ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model


def stamp(model: onnx.ModelProto, precision: str, card: ModelCard, weights_digest: str,
          quantization: Quantization | None = None) -> onnx.ModelProto:
    """The model with our metadata: format, precision, card, source weights' digest, and its own digest last."""
    meta = {"format": FORMAT, "version": str(FORMAT_VERSION), "precision": precision,
            "card": json.dumps(card.to_dict()), "weights_digest": weights_digest}
    if quantization is not None:
        meta["quantization"] = json.dumps(asdict(quantization))
    model.ir_version = IR_VERSION  # the quantizer writes its onnx's newest
    del model.metadata_props[:]
    helper.set_model_props(model, meta)
    helper.set_model_props(model, meta | {"digest": digest(model)})
    return model


def digest(model: onnx.ModelProto) -> str:
    """sha256 of the whole model, metadata included, except its own digest entry."""
    unsigned = onnx.ModelProto()
    unsigned.CopyFrom(model)
    kept = [p for p in unsigned.metadata_props if p.key != "digest"]
    del unsigned.metadata_props[:]
    unsigned.metadata_props.extend(kept)
    return hashlib.sha256(unsigned.SerializeToString(deterministic=True)).hexdigest()


def write(model: onnx.ModelProto, path: Path) -> None:
    atomic_write(path, lambda f: f.write(model.SerializeToString(deterministic=True)))


# ---- reading ------------------------------------------------------------------------------------


def skeleton(model: onnx.ModelProto) -> list[tuple[str, list[tuple[str, str]]]]:
    """The layers a graph computes, without the quantizer's Q/DQ pairs and the ReLUs it folds into them."""
    return [(n.op_type, sorted((a.name, str(helper.get_attribute_value(a))) for a in n.attribute))
            for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear", "Relu")]


@functools.lru_cache(maxsize=16)
def _layers(alpha: float, stem: str, resolution: int, num_classes: int) -> list[tuple[str, list[tuple[str, str]]]]:
    """The skeleton of the network a card describes (its weights play no part)."""
    card = ModelCard(alpha, stem, resolution, tuple(map(str, range(num_classes))), (0.0,) * 3, (1.0,) * 3)
    return skeleton(graph(fold_batchnorm(card.build().eval()), card))


def read(path: Path, card: ModelCard, weights_digest: str) -> OnnxModel:
    """The checked int8 file made by export-onnx from the checkpoint whose card and weights' digest are given
    (raises OnnxError)."""
    try:
        with open(path, "rb") as f:
            blob = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise OnnxError(f"{path.name} does not exist") from None
    except OSError as e:  # a file the server may not read, a folder of that name, a disk error
        raise OnnxError(f"{path.name} cannot be read ({e.strerror or type(e).__name__})") from None
    if len(blob) > MAX_BYTES:
        raise OnnxError(f"{path.name} is refused: more than {MAX_BYTES / 1e6:.0f} MB, more than any model of ours")
    try:
        model = onnx.load_model_from_string(blob)
    except Exception:  # protobuf's DecodeError and friends: the bytes are not a model
        raise OnnxError(f"{path.name} is not an ONNX model") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("format") != FORMAT:
        raise OnnxError(f"{path.name} is refused: it is not an ONNX model of this project")
    if meta.get("version") != str(FORMAT_VERSION):
        raise OnnxError(f"{path.name} has format version {meta.get('version')}; this program reads {FORMAT_VERSION}")
    if meta.get("digest") != digest(model):
        raise OnnxError(f"{path.name} is damaged or was modified: it does not match its digest")
    if meta.get("weights_digest") != weights_digest:
        raise OnnxError(f"{path.name} was made from other weights than the checkpoint beside it; export it again")
    check_operators(model, path.name)
    try:
        stamped = ModelCard.from_dict(json.loads(meta["card"]))
        quantization = Quantization(**json.loads(meta["quantization"])) if "quantization" in meta else None
    except (KeyError, TypeError, ValueError, RecursionError) as e:  # RecursionError: JSON nested thousands deep
        raise OnnxError(f"{path.name} has incomplete or malformed metadata ({e})") from None
    if serving(stamped) != serving(card):
        raise OnnxError(f"{path.name} describes another model than its checkpoint (architecture or input)")
    if meta.get("precision") != "int8" or quantization is None:
        raise OnnxError(f"{path.name} is not an int8 model made by export-onnx (no quantization record)")
    check_interface(model, card, path.name)
    if skeleton(model) != _layers(card.alpha, card.stem, card.resolution, card.num_classes):
        raise OnnxError(f"{path.name} is refused: its layers are not those of the checkpoint's network")
    if quantization.too_lossy:  # made by an older, looser export-onnx, or its record edited
        raise OnnxError(f"{path.name} is refused: {lossy(quantization)}")
    return OnnxModel(path, blob, stamped, quantization)


def lossy(q: Quantization) -> str:
    return (f"it loses {q.loss:.2%} of accuracy on {q.images} {q.measured_on} images ({q.int8_accuracy:.2%} against "
            f"{q.fp32_accuracy:.2%} in fp32), more than the {MAX_INT8_LOSS:.1%} allowed")


def serving(card: ModelCard) -> ModelCard:
    """What a model needs to be served: its card without the training history."""
    return replace(card, data=None, training={})


def check_operators(model: onnx.ModelProto, name: str) -> None:
    """Refuse anything but the standard operators our graphs use: no custom or contrib operators, no local
    functions, no subgraphs, no tensors read from outside the file."""
    if model.functions or any(o.domain not in ("", "ai.onnx") for o in model.opset_import):
        raise OnnxError(f"{name} is refused: it declares operators outside the standard ONNX set")
    unknown = sorted({f"{n.domain}:{n.op_type}" if n.domain else n.op_type for n in model.graph.node
                      if n.domain not in ("", "ai.onnx") or n.op_type not in ALLOWED_OPS})
    if unknown:
        raise OnnxError(f"{name} is refused: it uses operators a MobileNet v1 does not need ({', '.join(unknown)})")
    attributes = [a for n in model.graph.node for a in n.attribute]
    if model.graph.sparse_initializer or any(a.tensors or a.HasField("sparse_tensor") or a.sparse_tensors
                                             or a.HasField("g") or a.graphs for a in attributes):
        raise OnnxError(f"{name} is refused: it holds sparse tensors or subgraphs, which our models never need")
    tensors = [*model.graph.initializer, *(a.t for a in attributes if a.HasField("t"))]
    if any(t.data_location == TensorProto.EXTERNAL or t.external_data for t in tensors):
        raise OnnxError(f"{name} is refused: it reads tensors from files outside itself")


def check_interface(model: onnx.ModelProto, card: ModelCard, name: str) -> None:
    """One input and one output, named and shaped as graph() writes them for this card: images in, logits out."""
    def shape(value: onnx.ValueInfoProto) -> list[int | str]:
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]

    side = card.resolution
    expected = [(INPUT, [3, side, side]), (OUTPUT, [card.num_classes])]
    found = [(v.name, shape(v)[1:]) for v in (*model.graph.input, *model.graph.output)]
    if found != expected:
        raise OnnxError(f"{name} is refused: it takes and gives {found}, not the model's {expected}")


# ---- int8 ---------------------------------------------------------------------------------------


def calibration_sample(train: ImageSet, n: int = CALIBRATION_IMAGES, seed: int = 0) -> torch.Tensor:
    """A seeded, class-balanced sample of training images (uint8) to measure activation ranges on."""
    return train.images[stratified_split(train.labels, min(n, len(train) - 1), seed)[1]]


def quantize(fp32: onnx.ModelProto, calibration: torch.Tensor, recipe: InferenceRecipe) -> onnx.ModelProto:
    """Static int8 quantization with ONNX Runtime: per-channel int8 weights, uint8 activations whose ranges are
    measured on the calibration images fed as served (normalised, with the test-time augmentation views).

    The first convolution and the classifier stay in fp32, as is usual: quantizing them too cost α=0.25 0.6
    points of validation accuracy instead of 0.2, for under 2% of the mult-adds."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[torch.Tensor] = iter(calibration.split(64))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: recipe.views(batch).contiguous().numpy()}

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(fp32.SerializeToString())
        quantize_static(source, target, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=[fp32.graph.node[0].name, fp32.graph.node[-1].name])
        return onnx.load_model(target)


def accuracy(model: onnx.ModelProto, images: ImageSet, recipe: InferenceRecipe) -> float:
    engine = OnnxEngine(model.SerializeToString(), "onnx", threads=None)
    batches = recipe.batches(images.images, torch.device("cpu"))
    labels = images.labels.split([len(batch) for batch in batches])
    correct = sum(int((recipe.logits(engine, batch).argmax(1) == y).sum()) for batch, y in zip(batches, labels))
    return correct / max(len(images), 1)


def export_onnx(checkpoint_path: Path, source: str, root: Path | None = None, fp32_file: bool = False,
                calibration_images: int = CALIBRATION_IMAGES, overwrite: bool = False,
                download: bool = False) -> OnnxModel:
    """Write the int8 model beside a checkpoint (and the fp32 graph, if asked). Its accuracy and fp32's are
    measured on the validation split held out in training (same source, size, seed and subset as the card
    records); its activation ranges come from a seeded sample of the training part, never validation images.
    A model trained on all the images is measured on a seeded sample of them instead, which the record says,
    and calibrated on others.

    Refuses (OnnxError, nothing written) when int8 loses more than MAX_INT8_LOSS of fp32's accuracy; existing
    files are replaced only with overwrite; CIFAR-10 is downloaded only with download.
    """
    for target in [int8_file(checkpoint_path), *([checkpoint_path.with_suffix(".onnx")] if fp32_file else [])]:
        checkpoint.refuse_to_replace(target, overwrite)
    model, card = checkpoint.load(checkpoint_path)
    trained_on = card.data
    if trained_on is None:
        raise OnnxError(f"{checkpoint_path.name} does not record its training data: the validation split to measure "
                        f"on and the training images to calibrate on are unknown")
    data.check_source(source, root, download)
    found = data.fingerprint(source)
    if trained_on.fingerprint and found != trained_on.fingerprint:
        raise DataError(f"{source} is not the data {checkpoint_path.name} was trained on (fingerprint {found}, its "
                        f"card says {trained_on.fingerprint})")
    full = data.match_classes(data.load(source, "train", card.resolution, root=root, download=download),
                              card.classes)
    train, measured, held_out = measurement_split(full, trained_on.val_size, trained_on.seed, trained_on.subset)
    measured_on = VALIDATION if held_out else TRAINING
    source_digest = weights_digest(model.state_dict())
    fp32 = stamp(graph(fold_batchnorm(model), card), "fp32", card, source_digest)
    sample = calibration_sample(train, calibration_images, trained_on.seed)  # fewer where the data holds fewer
    int8 = quantize(fp32, sample, card.inference)
    report = Quantization(accuracy(fp32, measured, card.inference), accuracy(int8, measured, card.inference),
                          len(measured), len(sample), trained_on.seed, measured_on)
    if report.too_lossy:
        raise OnnxError(f"{checkpoint_path.name}: the int8 model is not shipped: {lossy(report)}")
    target = int8_file(checkpoint_path)
    write(stamp(int8, "int8", card, source_digest, report), target)
    if fp32_file:
        write(fp32, checkpoint_path.with_suffix(".onnx"))
    return read(target, card, source_digest)
