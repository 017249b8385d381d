from __future__ import annotations


import pytest
import torchinfo

from mobilenet.model import MobileNetV1
from mobilenet.stats import format_table, model_stats

from test_model import SEED_SHAPES


def test_seed_totals_and_rows() -> None:
    stats = model_stats()
    assert stats.params == 3_217_226
    assert stats.mult_adds == 45_164_106
    assert stats.weight_mb == pytest.approx(3_217_226 * 4 / 1e6)
    convs = [row for row in stats.layers if row.type in ("stem", "pointwise")]
    assert [row.output_shape for row in convs] == SEED_SHAPES
    assert [row.type for row in stats.layers[:3]] == ["stem", "depthwise", "pointwise"]
    assert stats.layers[-2].type == "pool" and stats.layers[-1].type == "fc"
    assert stats.layers[-1].output_shape == (10,)
    dw = stats.layers[3]
    assert (dw.name, dw.kernel, dw.stride, dw.groups) == ("blocks.1.depthwise", 3, 2, 64)


@pytest.mark.parametrize("alpha,resolution,stem,classes", [(0.5, 32, "cifar", 10), (1.7, 40, "cifar", 100),
                                                             (0.75, 160, "imagenet", 1000)])
def test_meta_counts_match_torchinfo_on_real_weights(alpha, resolution, stem, classes) -> None:
    stats = model_stats(alpha, resolution=resolution, stem=stem, num_classes=classes)
    real = torchinfo.summary(MobileNetV1(classes, alpha, stem), input_size=(1, 3, resolution, resolution), verbose=0)
    assert (stats.params, stats.mult_adds) == (real.total_params, real.total_mult_adds)


def test_table2_breakdown_matches_the_paper() -> None:
    shares = model_stats(stem="imagenet", num_classes=1000).breakdown()
    assert shares["Conv 1×1"]["mult_adds"] == pytest.approx(0.9486, abs=0.002)
    assert shares["Conv 1×1"]["params"] == pytest.approx(0.7459, abs=0.003)
    assert shares["Conv DW 3×3"]["mult_adds"] == pytest.approx(0.0306, abs=0.001)
    assert shares["Fully connected"]["params"] == pytest.approx(0.2433, abs=0.003)
    assert sum(s["mult_adds"] for s in shares.values()) == pytest.approx(1.0)


def test_separable_savings_follow_the_formula() -> None:
    savings = model_stats(stem="imagenet", num_classes=1000).separable_savings()
    assert len(savings) == 13
    for saving, out_channels in zip(savings, [64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]):
        # standard / separable = 1 / (1/N + 1/Dk²)
        assert saving.ratio == pytest.approx(1 / (1 / out_channels + 1 / 9))
    assert all(7.8 < s.ratio < 9 for s in savings)


def test_table_text() -> None:
    text = format_table(model_stats())
    assert "3,217,226" in text and "45,164,106" in text and "blocks.12.pointwise" in text
