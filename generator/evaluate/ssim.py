"""SSIM and PSNR of RGB reconstructions (torch).

SSIM as Wang et al. (2004) define it and most tools compute it: an 11×11 Gaussian window with σ = 1.5,
K1 = 0.01, K2 = 0.03, dynamic range L = 1 for images in [0, 1], local statistics over the window positions
that fit inside the image ("valid" filtering), the map averaged over positions and colour channels.
PSNR = 10·log10(1 / MSE) in dB on [0, 1]; an exact copy's MSE is floored at 1e-10 (100 dB).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WINDOW, SIGMA, K1, K2 = 11, 1.5, 0.01, 0.03
MSE_FLOOR = 1e-10


def _window(channels: int, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(WINDOW, dtype=dtype) - (WINDOW - 1) / 2
    g = torch.exp(-x * x / (2 * SIGMA * SIGMA))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, WINDOW, WINDOW).contiguous()


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {tuple(a.shape)} and {tuple(b.shape)}")
    if a.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(a.shape)}")


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) SSIM of two (N, C, H, W) batches in [0, 1], each side at least 11 px."""
    _check_pair(a, b)
    if min(a.shape[-2:]) < WINDOW:
        raise ValueError(f"SSIM needs images of at least {WINDOW}x{WINDOW} px, got {a.shape[-1]}x{a.shape[-2]}")
    a, b = a.double(), b.double()
    window = _window(a.shape[1], a.dtype)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=a.shape[1])

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = K1 ** 2, K2 ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return index.mean(dim=(1, 2, 3))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) PSNR in dB of two (N, C, H, W) batches in [0, 1]."""
    _check_pair(a, b)
    mse = ((a.double() - b.double()) ** 2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(1.0 / mse.clamp_min(MSE_FLOOR))
