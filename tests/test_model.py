from __future__ import annotations

import pytest
import torch
import torchinfo

from mobilenet.model import MobileNetV1, input_resolution, min_resolution
from mobilenet.stats import model_stats

# The seed's output shapes on a 3×32×32 input: stem, then each block's pointwise output.
SEED_SHAPES = [(32, 30, 30), (64, 30, 30), (128, 15, 15), (128, 15, 15), (256, 8, 8), (256, 8, 8), (512, 4, 4)] \
    + [(512, 4, 4)] * 5 + [(1024, 2, 2), (1024, 2, 2)]


def test_seed_equivalence_with_torchinfo() -> None:
    summary = torchinfo.summary(MobileNetV1(), input_size=(2, 3, 32, 32), verbose=0)
    assert summary.total_params == 3_217_226
    assert summary.total_mult_adds == 90_328_212  # the seed's 90.33M for batch 2


def test_seed_output_shapes() -> None:
    model = MobileNetV1().eval()
    x = torch.randn(2, 3, 32, 32)
    shapes = [tuple(model.stem(x).shape[1:])]
    h = model.stem(x)
    for block in model.blocks:
        h = block(h)
        shapes.append(tuple(h.shape[1:]))
    assert shapes == SEED_SHAPES
    assert model(x).shape == (2, 10)


def test_seed_layer_structure() -> None:
    model = MobileNetV1()
    stem_conv = model.stem[0]
    assert (stem_conv.kernel_size, stem_conv.stride, stem_conv.padding) == ((3, 3), (1, 1), (0, 0))
    assert stem_conv.bias is None
    for block in model.blocks:
        dw, pw = block.depthwise[0], block.pointwise[0]
        assert dw.groups == dw.in_channels == dw.out_channels and dw.kernel_size == (3, 3) and dw.bias is None
        assert pw.kernel_size == (1, 1) and pw.bias is None
        assert isinstance(block.depthwise[1], torch.nn.BatchNorm2d) and isinstance(block.pointwise[2], torch.nn.ReLU)
    assert model.classifier.in_features == 1024 and model.classifier.out_features == 10


# Howard et al. 2017, Tables 6 and 7: (α, resolution) → (million mult-adds, million params).
PAPER = [((1.0, 224), (569, 4.2)), ((0.75, 224), (325, 2.6)), ((0.5, 224), (149, 1.3)), ((0.25, 224), (41, 0.5)),
         ((1.0, 192), (418, 4.2)), ((1.0, 160), (290, 4.2)), ((1.0, 128), (186, 4.2))]


@pytest.mark.parametrize("config,expected", PAPER)
def test_paper_tables(config, expected) -> None:
    alpha, resolution = config
    stats = model_stats(alpha, resolution=resolution, stem="imagenet", num_classes=1000)
    assert abs(stats.mult_adds / 1e6 - expected[0]) / expected[0] < 0.01
    assert round(stats.params / 1e6, 1) == expected[1]


def test_beta_sets_resolution() -> None:
    assert input_resolution("cifar", beta=1.0) == 32
    assert input_resolution("imagenet", beta=192 / 224) == 192
    assert input_resolution("cifar", beta=1.5) == 48
    assert input_resolution("cifar", resolution=40) == 40
    assert model_stats(1.0, beta=0.5).resolution == 16


@pytest.mark.parametrize("stem,resolution",
                         [("cifar", 3), ("cifar", 17), ("cifar", 64), ("imagenet", 1), ("imagenet", 97)])
def test_any_valid_resolution_runs(stem: str, resolution: int) -> None:
    model = MobileNetV1(7, 0.25, stem).eval()
    assert model(torch.randn(1, 3, resolution, resolution)).shape == (1, 7)


def test_too_small_resolution_names_the_smallest() -> None:
    assert min_resolution("cifar") == 3
    with pytest.raises(ValueError, match="smallest that works is 3×3"):
        input_resolution("cifar", resolution=2)
    with pytest.raises(ValueError, match="smallest"):
        model_stats(beta=0.05)


@pytest.mark.parametrize("kwargs", [{"alpha": 0}, {"alpha": -1}, {"alpha": 5}, {"alpha": "1"}, {"num_classes": 0},
                                    {"num_classes": 2.5}, {"stem": "resnet"}])
def test_bad_constructor_values(kwargs) -> None:
    with pytest.raises(ValueError):
        MobileNetV1(**kwargs)


@pytest.mark.parametrize("kwargs", [{"beta": 0}, {"beta": -0.5}, {"resolution": 32.5}, {"beta": 1.0, "resolution": 32}])
def test_bad_resolution_values(kwargs) -> None:
    with pytest.raises(ValueError):
        input_resolution("cifar", **kwargs)


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.75, 1.3, 2.0])
def test_alpha_scales_every_layer(alpha: float) -> None:
    model = MobileNetV1(alpha=alpha)
    assert model.stem[0].out_channels == round(32 * alpha)
    assert [b.pointwise[0].out_channels for b in model.blocks][-1] == round(1024 * alpha)
    assert model.classifier.in_features == round(1024 * alpha)
