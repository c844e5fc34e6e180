"""Image quality metrics: PSNR and the standard SSIM (11x11 Gaussian window, sigma 1.5).

Images are float tensors in [0, 1], (H, W, 3) or (N, H, W, 3). SSIM follows Wang et al. 2004 with the
constants K1 = 0.01, K2 = 0.03 and "valid" filtering, averaged over channels and pixels, as the NeRF
evaluation code (and skimage with gaussian_weights=True, use_sample_covariance=False) computes it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def mse_to_psnr(mse: float) -> float:
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    return mse_to_psnr(float(torch.mean((pred.float() - target.float()) ** 2)))


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM of (H, W, C) or (N, H, W, C) images in [0, 1]."""
    x = pred.double()
    y = target.double()
    if x.dim() == 3:
        x, y = x[None], y[None]
    x = x.permute(0, 3, 1, 2)  # N, C, H, W
    y = y.permute(0, 3, 1, 2)
    channels = x.shape[1]
    g = _gaussian_window(window, sigma, x.device, x.dtype)
    # Separable filter: one pass along rows, one along columns, each channel on its own.
    kh = g.view(1, 1, 1, window).repeat(channels, 1, 1, 1)
    kv = g.view(1, 1, window, 1).repeat(channels, 1, 1, 1)

    def blur(img: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(img, kh, groups=channels), kv, groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return float((num / den).mean())
