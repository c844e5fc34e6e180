"""PSNR and SSIM against direct, loop-written definitions."""

import math

import numpy as np
import torch

from tvq.metrics import psnr, ssim


def _ssim_loops(x: np.ndarray, y: np.ndarray, win: int = 11, sigma: float = 1.5) -> float:
    """SSIM written straight from Wang et al.: Gaussian-weighted moments over every valid window."""
    ax = np.arange(win) - (win - 1) / 2
    g = np.exp(-(ax**2) / (2 * sigma**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = 0.01**2, 0.03**2
    h, wd, ch = x.shape
    vals = []
    for c in range(ch):
        for i in range(h - win + 1):
            for j in range(wd - win + 1):
                a = x[i:i + win, j:j + win, c]
                b = y[i:i + win, j:j + win, c]
                mx, my = (w * a).sum(), (w * b).sum()
                vx = (w * a * a).sum() - mx**2
                vy = (w * b * b).sum() - my**2
                cxy = (w * a * b).sum() - mx * my
                vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_definition():
    rng = np.random.default_rng(0)
    x = rng.random((16, 19, 3))
    y = np.clip(x + 0.15 * rng.standard_normal(x.shape), 0, 1)
    assert abs(ssim(torch.tensor(x), torch.tensor(y)) - _ssim_loops(x, y)) < 1e-10
    assert ssim(torch.tensor(x), torch.tensor(x)) == 1.0


def test_psnr():
    a = torch.zeros(4, 4, 3)
    b = torch.full((4, 4, 3), 0.1)
    assert math.isclose(psnr(a, b), 20.0, rel_tol=1e-6)
    assert psnr(a, a) == float("inf")
