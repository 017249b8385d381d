"""The inference recipe: the test-time augmentation views, how their answers combine, and the forward passes' size."""

from __future__ import annotations

import pytest
import torch

from mobilenet.evaluate import predict_probs
from mobilenet.model import MobileNetV1
from mobilenet.tta import CPU_PASS_PIXELS, GPU_PASS_PIXELS, SEED_NORMALIZATION, InferenceRecipe

CPU, GPU = torch.device("cpu"), torch.device("cuda")


def images(n: int, side: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))


def test_flip_translate_views_are_the_image_its_mirror_and_their_one_pixel_shifts() -> None:
    recipe = InferenceRecipe(SEED_NORMALIZATION, "flip-translate")
    x = images(3)
    views = recipe.views(x).view(6, 3, 3, 32, 32)
    plain = SEED_NORMALIZATION.apply(x)
    torch.testing.assert_close(views[0], plain)
    torch.testing.assert_close(views[1], plain.flip(3))
    for shifted, source in ((views[2], plain), (views[3], plain.flip(3))):  # moved one pixel down and right
        torch.testing.assert_close(shifted[..., 1:, 1:], source[..., :-1, :-1])
    for shifted, source in ((views[4], plain), (views[5], plain.flip(3))):  # one pixel up and left
        torch.testing.assert_close(shifted[..., :-1, :-1], source[..., 1:, 1:])


def test_a_one_pixel_input_has_its_shifted_views_too() -> None:  # the imagenet stem takes inputs this small
    x = images(2, side=1)
    views = InferenceRecipe(SEED_NORMALIZATION, "flip-translate").views(x)
    assert views.shape == (12, 3, 1, 1)
    torch.testing.assert_close(views, SEED_NORMALIZATION.apply(x).repeat(6, 1, 1, 1))


def test_the_image_and_its_mirror_weigh_as_much_as_the_four_shifted_views() -> None:
    recipe = InferenceRecipe(SEED_NORMALIZATION, "flip-translate")
    n = 2
    per_view = torch.eye(6).repeat_interleave(n, 0)  # each view answers its own index, one row per image
    combined = recipe.combine(per_view, n)
    torch.testing.assert_close(combined, torch.tensor([[1 / 4, 1 / 4, 1 / 8, 1 / 8, 1 / 8, 1 / 8]] * n))


@pytest.mark.parametrize("tta,side,device,size", [
    ("none", 32, CPU, CPU_PASS_PIXELS // 1024), ("flip", 32, CPU, CPU_PASS_PIXELS // 2048),
    ("flip-translate", 32, CPU, CPU_PASS_PIXELS // 6144), ("flip-translate", 64, CPU, CPU_PASS_PIXELS // 24576),
    ("flip-translate", 32, GPU, GPU_PASS_PIXELS // 6144), ("flip", 4096, CPU, 1),
])
def test_forward_passes_hold_a_device_sized_number_of_views(tta: str, side: int, device: torch.device,
                                                            size: int) -> None:
    recipe = InferenceRecipe(SEED_NORMALIZATION, tta)
    n = 2 * size + 1
    batches = recipe.batches(torch.empty(n, 3, side, side, dtype=torch.uint8), device)
    assert [len(b) for b in batches] == [size, size, 1]
    assert recipe.batches(torch.empty(0, 3, side, side, dtype=torch.uint8), device) == ()


def test_answers_do_not_depend_on_how_the_images_are_batched() -> None:
    torch.manual_seed(0)
    model = MobileNetV1(10, 0.25).eval()
    recipe = InferenceRecipe(SEED_NORMALIZATION, "flip-translate")
    x = images(100)
    batched = predict_probs(model, x, recipe)
    assert len(recipe.batches(x, CPU)) > 2
    with torch.inference_mode():
        torch.testing.assert_close(batched, recipe.probabilities(model, x), atol=1e-5, rtol=1e-4)
