"""Image similarity for the benchmarks: PSNR and SSIM of decoded images in [0, 1].

SSIM is Wang et al. (2004): an 11x11 Gaussian window (sigma 1.5), C1 = (0.01)^2, C2 = (0.03)^2,
on each channel, averaged over the window positions inside the image and over channels (what
skimage's ``structural_similarity(gaussian_weights=True, use_sample_covariance=False,
data_range=1)`` computes; skimage is not installed here)."""

from __future__ import annotations

import math

import torch


def psnr(a, b) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM of two images shaped (channels, height, width) or (1, channels, height, width)."""
    a, b = (t.reshape(-1, 1, *t.shape[-2:]).double() for t in (a, b))  # channels as a batch
    w = _window(min(11, a.shape[-2], a.shape[-1]) // 2 * 2 + 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, w)  # valid positions only, as skimage crops its borders

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())
