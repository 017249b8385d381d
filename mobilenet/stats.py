"""Per-layer parameter and mult-add counts, computed by torchinfo on meta tensors (no real weights).

Counts follow torchinfo's convention, so the seed's figures reproduce exactly: a conv layer costs
weights × output positions, its BatchNorm 2 × channels, the classifier in × out + out.
A row is one conv + BN + ReLU unit (stem, depthwise or pointwise), the pool, or the classifier.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torchinfo
from torch import nn

from .model import NUM_CLASSES, MobileNetV1, check_alpha, check_stem, input_resolution

LAYER_TYPES = ("stem", "depthwise", "pointwise", "pool", "fc")
# The paper's Table 2 names for the layer types.
TABLE2_NAMES = {"pointwise": "Conv 1×1", "depthwise": "Conv DW 3×3", "stem": "Conv 3×3", "fc": "Fully connected"}


@dataclass(frozen=True)
class LayerRow:
    name: str
    type: str
    kernel: int | None
    stride: int | None
    groups: int | None
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    mult_adds: int


@dataclass(frozen=True)
class BlockSaving:
    """One depthwise-separable block against the standard 3×3 convolution it replaces."""

    block: str
    separable_mult_adds: int
    standard_mult_adds: int

    @property
    def ratio(self) -> float:
        return self.standard_mult_adds / self.separable_mult_adds


@dataclass(frozen=True)
class ModelStats:
    alpha: float
    stem: str
    resolution: int
    num_classes: int
    layers: tuple[LayerRow, ...]

    @property
    def params(self) -> int:
        return sum(row.params for row in self.layers)

    @property
    def mult_adds(self) -> int:
        """Mult-adds for one image."""
        return sum(row.mult_adds for row in self.layers)

    @property
    def weight_mb(self) -> float:
        """Size of the float32 weights in MB (10⁶ bytes)."""
        return self.params * 4 / 1e6

    def breakdown(self) -> dict[str, dict[str, float]]:
        """The paper's Table 2: each layer type's share of mult-adds and of parameters."""
        shares = {}
        for kind, label in TABLE2_NAMES.items():
            rows = [row for row in self.layers if row.type == kind]
            shares[label] = {
                "mult_adds": sum(r.mult_adds for r in rows) / self.mult_adds,
                "params": sum(r.params for r in rows) / self.params,
            }
        return shares

    def separable_savings(self) -> list[BlockSaving]:
        """Per block: depthwise + pointwise conv mult-adds against a standard 3×3 conv (no BN)."""
        savings = []
        for dw, pw in zip(self.layers, self.layers[1:]):
            if dw.type != "depthwise" or pw.type != "pointwise":
                continue
            cin, cout, out_positions = dw.input_shape[0], pw.output_shape[0], pw.output_shape[1] * pw.output_shape[2]
            separable = 9 * cin * out_positions + cin * cout * out_positions
            savings.append(BlockSaving(dw.name.rsplit(".", 1)[0], separable, 9 * cin * cout * out_positions))
        return savings

    def to_dict(self) -> dict:
        return {
            "alpha": self.alpha,
            "stem": self.stem,
            "input_size": [3, self.resolution, self.resolution],
            "num_classes": self.num_classes,
            "params": self.params,
            "mult_adds": self.mult_adds,
            "weight_mb": self.weight_mb,
            "layers": [asdict(row) for row in self.layers],
            "breakdown": self.breakdown(),
            "separable_savings": [asdict(s) | {"ratio": s.ratio} for s in self.separable_savings()],
        }


def _row_type(name: str, module: nn.Module) -> str:
    """By the layer's place in the network, not its groups: at tiny α a depthwise conv has one channel and groups 1."""
    if isinstance(module, nn.Conv2d):
        return "stem" if name.startswith("stem") else ("depthwise" if ".depthwise." in name else "pointwise")
    return "fc" if isinstance(module, nn.Linear) else "pool"


def model_stats(
    alpha: float = 1.0,
    beta: float | None = None,
    resolution: int | None = None,
    stem: str = "cifar",
    num_classes: int | None = None,
) -> ModelStats:
    """The network's rows and totals; num_classes defaults to the stem's natural count (10 or 1000)."""
    check_alpha(alpha)
    check_stem(stem)
    num_classes = NUM_CLASSES[stem] if num_classes is None else num_classes
    side = input_resolution(stem, beta, resolution)
    with torch.device("meta"):
        model = MobileNetV1(num_classes, alpha, stem)
        x = torch.empty(1, 3, side, side)
    summary = torchinfo.summary(model, input_data=x, device="meta", verbose=0)
    names = {id(module): name for name, module in model.named_modules()}

    rows: list[dict] = []
    for info in summary.summary_list:
        module = info.module
        if isinstance(module, nn.BatchNorm2d):  # folded into its conv's row
            rows[-1]["params"] += info.num_params
            rows[-1]["mult_adds"] += info.macs
            continue
        if not isinstance(module, (nn.Conv2d, nn.Linear, nn.AdaptiveAvgPool2d)):
            continue
        name = names[id(module)]
        is_conv = isinstance(module, nn.Conv2d)
        rows.append({
            "name": name.removesuffix(".0") if is_conv else name,
            "type": _row_type(name, module),
            "kernel": module.kernel_size[0] if is_conv else None,
            "stride": module.stride[0] if is_conv else None,
            "groups": module.groups if is_conv else None,
            "input_shape": tuple(info.input_size[1:]),
            "output_shape": tuple(info.output_size[1:]),
            "params": info.num_params,
            "mult_adds": info.macs,
        })
    return ModelStats(float(alpha), stem, side, num_classes, tuple(LayerRow(**row) for row in rows))


def format_table(stats: ModelStats) -> str:
    """A plain-text table for the terminal."""
    header = f"{'layer':<22}{'type':<11}{'k/s/g':<12}{'input':<16}{'output':<16}{'params':>12}{'mult-adds':>15}"
    lines = [header, "-" * len(header)]
    for row in stats.layers:
        kernel = f"{row.kernel}/{row.stride}/{row.groups}" if row.kernel else ""
        lines.append(
            f"{row.name:<22}{row.type:<11}{kernel:<12}{'×'.join(map(str, row.input_shape)):<16}"
            f"{'×'.join(map(str, row.output_shape)):<16}{row.params:>12,}{row.mult_adds:>15,}"
        )
    lines += [
        "-" * len(header),
        f"MobileNet v1  α={stats.alpha:g}  stem={stats.stem}  input 3×{stats.resolution}×{stats.resolution}  "
        f"classes={stats.num_classes}",
        f"params {stats.params:,}   mult-adds per image {stats.mult_adds:,} ({stats.mult_adds / 1e6:.2f} M)   "
        f"weights {stats.weight_mb:.2f} MB",
    ]
    return "\n".join(lines)
