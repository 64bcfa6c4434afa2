import math

import numpy as np
import pytest
import torch

from rupq.tools.metrics import PSNR


def numpy_psnr(preds: np.ndarray, targets: np.ndarray, min_val: float, max_val: float, border: int) -> list[float]:
    """Per-image PSNR of the same definition, written independently in numpy."""
    values = []
    for pred, target in zip(preds, targets):
        ys = []
        for image in (pred, target):
            pixels = np.clip((image.astype(np.float64) - min_val) / (max_val - min_val), 0, 1) * 255
            if border:
                pixels = pixels[:, border:-border, border:-border]
            red, green, blue = pixels
            ys.append(16 + (65.481 * red + 128.553 * green + 24.966 * blue) / 255)
        mse = np.mean((ys[0] - ys[1]) ** 2)
        values.append(10 * np.log10(255**2 / mse))
    return values


@pytest.mark.parametrize("min_val, max_val, border", [(-2.5, 2.5, 4), (0.0, 255.0, 2), (0.0, 1.0, 0)])
def test_matches_numpy_over_several_batches(min_val, max_val, border):
    rng = np.random.default_rng(0)
    span = max_val - min_val
    # Targets inside the range, predictions spilling over both ends (so that clamping matters).
    targets = [min_val + span * rng.random((n, 3, 20, 24)) for n in (3, 2)]
    preds = [t + 0.15 * span * rng.standard_normal(t.shape) for t in targets]
    metric = PSNR(min_val=min_val, max_val=max_val, boundary_size=border)
    expected = []
    for pred, target in zip(preds, targets):
        metric.update(torch.from_numpy(pred).float(), torch.from_numpy(target).float())
        expected += numpy_psnr(pred.astype(np.float32), target.astype(np.float32), min_val, max_val, border)
    assert metric.compute() == pytest.approx(np.mean(expected), abs=1e-4)
    metric.reset()
    assert math.isnan(metric.compute())


def test_known_value_for_a_uniform_grey_error():
    # Grey images off by d pixel levels in R, G and B differ by d·219/255 in Y.
    target = torch.full((1, 3, 16, 16), 100.0)
    metric = PSNR(min_val=0, max_val=255, boundary_size=4)
    metric.update(target + 10, target)
    assert metric.compute() == pytest.approx(10 * math.log10(255**2 / (10 * 219 / 255) ** 2))


def test_border_is_ignored():
    target = torch.zeros(1, 3, 12, 12)
    pred = target.clone()
    pred[..., :4, :] = 1.0  # only in the 4-pixel border
    pred[..., 6, 6] = 0.5
    metric = PSNR(boundary_size=4)
    metric.update(pred, target)
    center = PSNR(boundary_size=0)
    center.update(pred[..., 4:-4, 4:-4], target[..., 4:-4, 4:-4])
    assert metric.compute() == pytest.approx(center.compute())


def test_identical_images_are_counted_apart():
    """Identical images (PSNR = ∞) are left out of the mean; only identical images give ∞."""
    rng = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 16, 16, generator=rng) * 5 - 2.5
    other = image + 0.05 * torch.randn(1, 3, 16, 16, generator=rng)
    only_other = PSNR()
    only_other.update(other, image)
    metric = PSNR()
    metric.update(torch.cat([image, other]), torch.cat([image, image]))
    assert math.isfinite(metric.compute())
    assert metric.compute() == pytest.approx(only_other.compute())
    all_identical = PSNR()
    all_identical.update(image, image)
    assert all_identical.compute() == math.inf
    # Saturated patches that clamp to the same values are identical too.
    saturated = PSNR()
    saturated.update(torch.full((1, 3, 12, 12), 9.0), torch.full((1, 3, 12, 12), 2.5))
    assert saturated.compute() == math.inf


def test_input_errors():
    metric = PSNR(boundary_size=4)
    with pytest.raises(ValueError, match="differ in shape"):
        metric.update(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 18))
    with pytest.raises(ValueError, match="RGB batches"):
        metric.update(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="nothing left after cropping 4"):
        metric.update(torch.zeros(1, 3, 8, 16), torch.zeros(1, 3, 8, 16))
    with pytest.raises(ValueError, match="max_val must be greater"):
        PSNR(min_val=1, max_val=1)
