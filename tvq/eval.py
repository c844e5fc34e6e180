"""Evaluation: every LOD on a split, PSNR and SSIM, test renders as PNG, ``metrics.json``."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from .atomic import atomic_write
from .field import RadianceField
from .metrics import psnr, ssim
from .render import RenderOptions


def fast_renderer(field: RadianceField, background: torch.Tensor, options: RenderOptions | None = None):
    """The inference path (``tvq.infer.FastRenderer``) with ``options``' sampling: its images match the
    training renderer's. Built per call: a field being trained changes between calls."""
    from .infer import FastRenderer

    options = options or RenderOptions(early_stop=True)
    return FastRenderer(field, background, samples_per_cell=options.samples_per_cell,
                        max_samples_per_ray=options.max_samples_per_ray,
                        early_stop_eps=1e-4 if options.early_stop else 0.0)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def write_png(path: Path, image: torch.Tensor) -> None:
    atomic_write(path, lambda tmp: iio.imwrite(tmp, to_uint8(image)), suffix=".png")


def write_video(path: Path, frames: np.ndarray, fps: int, instead: str = "write a .gif") -> None:
    """(N, H, W, 3) uint8 frames as a .gif or .mp4 (by the suffix), atomically; an MP4 needs
    imageio-ffmpeg, and without it the error suggests ``instead``."""
    from .errors import TvqError

    suffix = Path(path).suffix.lower()

    def write(tmp: str) -> None:
        if suffix == ".gif":
            iio.imwrite(tmp, frames, duration=1000 / fps, loop=0)
            return
        try:
            iio.imwrite(tmp, frames, fps=fps, codec="libx264")
        except Exception as err:
            raise TvqError(f"{path}: cannot write MP4 ({type(err).__name__}: {err}); without imageio-ffmpeg, "
                           f"{instead}") from None

    atomic_write(path, write, suffix=suffix)


@torch.no_grad()
def evaluate(field: RadianceField, views, background: torch.Tensor, lods=None, options: RenderOptions | None = None,
             render_dir: Path | None = None, max_views: int | None = None) -> list[dict]:
    """PSNR and SSIM per LOD (mean over the views); with ``render_dir``, every render saved as PNG."""
    options = options or RenderOptions(early_stop=True)
    lods = range(field.num_lods) if lods is None else lods
    views = list(views)[:max_views] if max_views else list(views)
    device = background.device
    renderer = fast_renderer(field, background, options)
    results = []
    for lod in lods:
        scores_p, scores_s = [], []
        for i, view in enumerate(views):
            out = renderer.render(view.K, view.c2w, view.width, view.height, lod)
            target = torch.from_numpy(view.image).to(device)
            scores_p.append(psnr(out["color"], target))
            scores_s.append(ssim(out["color"], target))
            if render_dir is not None:
                write_png(Path(render_dir) / f"lod{lod}" / f"{i:03d}_{view.name.replace('/', '_')}.png", out["color"])
        results.append({"lod": lod, "psnr": float(np.mean(scores_p)), "ssim": float(np.mean(scores_s)),
                        "views": len(views)})
    return results
