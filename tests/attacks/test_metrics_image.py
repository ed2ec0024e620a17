"""Image metrics against hand-computed values and an independent SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import correlate2d

from attacks.base import GroundTruth, Reconstruction
from attacks.metrics_image import (
    PSNR_CAP,
    label_accuracy,
    label_count_accuracy,
    mse,
    pair_images,
    psnr,
    score_images,
    ssim,
    to_pixels,
)
from secure_ffm.data.builtin import FASHION_MNIST_NORMALIZATION


def images(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1], shape (n, 1, 28, 28)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 1, 7, 7), generator=g)
    return torch.nn.functional.interpolate(coarse, size=28, mode="bilinear", align_corners=False)


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    return FASHION_MNIST_NORMALIZATION.normalize(pixels)


def test_psnr_of_a_known_error() -> None:
    a = torch.zeros(2, 1, 28, 28)
    b = torch.full((2, 1, 28, 28), 0.1)  # MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB
    assert mse(a, b).tolist() == pytest.approx([0.01, 0.01])
    assert psnr(a, b).tolist() == pytest.approx([20.0, 20.0])
    assert psnr(a, b, data_range=2.0).tolist() == pytest.approx([20.0 + 20 * math.log10(2)] * 2)
    assert psnr(a, a).tolist() == [math.inf, math.inf]


def test_metrics_accept_single_images_and_numpy() -> None:
    a = np.zeros((28, 28))
    b = np.full((28, 28), 0.5)  # MSE 0.25 -> 6.02 dB
    assert psnr(a, b).item() == pytest.approx(10 * math.log10(4))
    assert ssim(a, a).item() == pytest.approx(1.0)


def test_ssim_of_identical_images_is_one() -> None:
    x = images(3)
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)


def test_ssim_of_constant_images_is_the_luminance_term() -> None:
    # no variance: SSIM = (2 a b + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 1)^2
    a, b = 0.2, 0.6
    c1 = 0.01**2
    value = ssim(torch.full((1, 1, 28, 28), a), torch.full((1, 1, 28, 28), b)).item()
    assert value == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))


def test_ssim_matches_a_direct_numpy_computation() -> None:
    x, y = images(1, seed=1)[0, 0].double().numpy(), images(1, seed=2)[0, 0].double().numpy()
    coords = np.arange(11) - 5.0
    g = np.exp(-(coords**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()

    def blur(t: np.ndarray) -> np.ndarray:
        return correlate2d(t, w, mode="valid")

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    expected = (((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean()
    assert ssim(x, y).item() == pytest.approx(expected, rel=1e-9)


def test_ssim_and_psnr_fall_as_noise_grows() -> None:
    x = images(1, seed=3)
    g = torch.Generator().manual_seed(4)
    noise = torch.randn(x.shape, generator=g)
    levels = [0.01, 0.05, 0.1, 0.2, 0.4]
    ssims = [ssim(x, (x + s * noise).clamp(0, 1)).item() for s in levels]
    psnrs = [psnr(x, (x + s * noise).clamp(0, 1)).item() for s in levels]
    assert all(a > b for a, b in zip(ssims, ssims[1:], strict=False)), ssims
    assert all(a > b for a, b in zip(psnrs, psnrs[1:], strict=False)), psnrs
    assert ssims[0] > 0.95 and ssims[-1] < 0.5


def test_to_pixels_undoes_the_model_normalization_and_clips() -> None:
    pixels = images(2, seed=5)
    assert torch.allclose(to_pixels(normalize(pixels)), pixels.double(), atol=1e-6)
    out_of_range = torch.tensor([[-10.0, 10.0]])
    assert to_pixels(out_of_range).tolist() == [[0.0, 1.0]]


@pytest.mark.parametrize("by", ["psnr", "mse"])
def test_pairing_recovers_a_permutation(by: str) -> None:
    originals = images(6, seed=6)
    permutation = torch.tensor([3, 0, 5, 1, 4, 2])
    g = torch.Generator().manual_seed(7)
    noisy = (originals[permutation] + 0.05 * torch.randn(originals.shape, generator=g)).clamp(0, 1)
    assert pair_images(noisy, originals, by=by).tolist() == permutation.tolist()


def test_pairing_with_more_originals_than_reconstructions() -> None:
    originals = images(8, seed=8)
    picked = [6, 2, 7]
    assert pair_images(originals[picked], originals).tolist() == picked
    with pytest.raises(ValueError, match="only 3 originals"):
        pair_images(originals, originals[:3])


def test_pairing_is_optimal_not_greedy() -> None:
    # greedy (reconstruction 0 first) would take original 0 and leave reconstruction 1 with original 1
    originals = torch.stack([torch.full((1, 28, 28), v) for v in (0.50, 0.00)])
    reconstructed = torch.stack([torch.full((1, 28, 28), v) for v in (0.45, 0.60)])
    # MSE: r0-o0 .0025, r0-o1 .2025, r1-o0 .01, r1-o1 .36 -> optimum r0->o1, r1->o0 (total .2125 < .3625)
    assert pair_images(reconstructed, originals, by="mse").tolist() == [1, 0]


def test_label_accuracies() -> None:
    assert label_accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert label_count_accuracy([3, 1, 1, 2], [1, 2, 3, 3]) == 0.75  # one 1 too many, one 3 too few
    assert label_count_accuracy([1, 2, 3], [3, 2, 1]) == 1.0


def test_score_images_pairs_then_scores() -> None:
    originals = images(5, seed=9)
    labels = torch.tensor([0, 1, 2, 3, 4])
    truth = GroundTruth(inputs={"pixels": normalize(originals)}, labels=labels)
    reconstructed = normalize(torch.stack([originals[3], (originals[1] + 0.1).clamp(0, 1)]))
    scores = score_images(Reconstruction(inputs=reconstructed, labels=torch.tensor([3, 0])), truth)
    assert scores["pairing"] == [3, 1]
    first, second = scores["per_sample"]
    assert first["truth_index"] == 3 and first["psnr"] == PSNR_CAP and first["ssim"] == pytest.approx(1.0)
    assert second["truth_index"] == 1
    assert second["psnr"] == pytest.approx(psnr(originals[1], (originals[1] + 0.1).clamp(0, 1)).item(), rel=1e-4)
    assert scores["mean"]["psnr"] == pytest.approx((first["psnr"] + second["psnr"]) / 2)
    assert scores["median"]["ssim"] == pytest.approx((first["ssim"] + second["ssim"]) / 2)
    assert scores["mean"]["label_accuracy"] == 0.5  # 3 matches its original, 0 is not 1
    assert scores["mean"]["label_count_accuracy"] == 0.5  # against the target's labels [0, 1]


def test_a_diverged_reconstruction_is_still_paired() -> None:
    originals = images(3, seed=10)
    reconstructed = originals[[2, 0]].clone()
    reconstructed[1] = float("nan")
    assert pair_images(reconstructed, originals).tolist()[0] == 2
    assert math.isnan(psnr(reconstructed, originals[[2, 0]])[1].item())
