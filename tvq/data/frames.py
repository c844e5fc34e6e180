"""The per-frame loading pipeline every reader shares.

A reader parses its metadata into ``Frame``s (where the files are, full-resolution intrinsics, the
camera-to-world matrix, how the depth is stored); ``load_views`` decodes them on a thread pool into
``View``s: colour converted to sRGB, composited onto the background, depth as z-depth, everything
downscaled, and every image checked to have the scene's one size.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from tvq.errors import TvqError

from . import io
from .scene import View

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Frame:
    """Where one view's data lives and how it is stored."""

    name: str
    image: Path
    K: np.ndarray  # (3, 3) intrinsics at the stored resolution
    c2w: np.ndarray  # (4, 4) camera-to-world, OpenGL camera
    size: tuple[int, int] | None = None  # (width, height) the metadata declares, checked when given
    linear: bool = False  # colour stored linear (EXR): converted to sRGB, clipped to [0, 1]
    mask: Path | None = None  # a mask image that becomes (multiplies) the alpha
    depth: Path | None = None
    depth_scale: float = 1.0  # stored depth value times this = scene units
    depth_along_ray: bool = False  # stored depth is distance from the camera centre, not z-depth
    depth_max: float | None = None  # stored |values| beyond this mean "no hit"


def parallel_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]`` on a thread pool (image decoders release the GIL); the first error wins."""
    items = list(items)
    workers = min(8, os.cpu_count() or 1, max(1, len(items)))
    if workers == 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(fn, x) for x in items]
        try:
            return [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()


def load_frame(frame: Frame, background: np.ndarray, downscale: int = 1) -> tuple[View, tuple[int, int]]:
    """Decode one frame into a ``View``; also returns the stored image size (width, height)."""
    pixels = io.read_image(frame.image)
    h, w = pixels.shape[:2]
    if frame.size is not None and frame.size != (w, h):
        raise TvqError(f"{frame.image}: image is {w}x{h} but the metadata says {frame.size[0]}x{frame.size[1]}")
    if frame.linear:
        pixels = np.concatenate([io.linear_to_srgb(pixels[..., :3]), pixels[..., 3:]], axis=-1)
    if frame.mask is not None:
        mask = io.read_mask(frame.mask)
        if mask.shape != (h, w):
            raise TvqError(f"{frame.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {w}x{h}")
        alpha = mask if pixels.shape[-1] == 3 else pixels[..., 3] * mask
        pixels = np.concatenate([pixels[..., :3], alpha[..., None]], axis=-1)
    image, alpha = io.composite(pixels, background)

    depth = None
    if frame.depth is not None:
        if frame.depth_max is not None:
            # Sentinel values (misses) must go before scaling or converting.
            raw = io.read_depth(frame.depth, 1.0)
            raw[np.abs(raw) > frame.depth_max] = 0.0
            depth = raw * np.float32(frame.depth_scale)
        else:
            depth = io.read_depth(frame.depth, frame.depth_scale)
        if depth.shape != (h, w):
            raise TvqError(f"{frame.depth}: depth map is {depth.shape[1]}x{depth.shape[0]} but its image is {w}x{h}")
        if frame.depth_along_ray:
            depth = io.ray_distance_to_z(depth, frame.K)

    K = frame.K
    if downscale > 1:
        if w < downscale or h < downscale:
            raise TvqError(f"{frame.image}: image is {w}x{h}, smaller than the downscale factor {downscale}")
        image = io.downscale_area(image, downscale)
        alpha = None if alpha is None else io.downscale_area(alpha, downscale)
        depth = None if depth is None else io.downscale_nearest(depth, downscale)
        K = io.scale_intrinsics(K, downscale)
    view = View(name=frame.name, image=image, K=np.array(K, dtype=np.float64), c2w=frame.c2w, alpha=alpha, depth=depth)
    return view, (w, h)


def load_views(frames: Sequence[Frame], background: np.ndarray, downscale: int = 1) -> list[View]:
    """Load all frames in order; every image must have the first one's size."""
    if downscale < 1:
        raise TvqError(f"--downscale must be at least 1, got {downscale}")
    results = parallel_map(lambda f: load_frame(f, background, downscale), frames)
    if results:
        first = results[0][1]
        for frame, (_, size) in zip(frames, results):
            if size != first:
                raise TvqError(
                    f"{frame.image}: image is {size[0]}x{size[1]} but {frames[0].image.name} is {first[0]}x{first[1]}"
                    " (all images of a scene must have one size)"
                )
    return [view for view, _ in results]


def check_split(indices: Sequence[int], name: str, where: Path) -> None:
    """A split that the metadata lists must not be empty."""
    if len(indices) == 0:
        raise TvqError(f"{where}: split '{name}' has no frames")
