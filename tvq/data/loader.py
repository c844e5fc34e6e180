"""Scene loading by folder layout, and a JSON-able summary of a scene.

``load_scene`` recognises the layout of a folder:

- ``transforms_train.json`` / ``transforms_val.json`` / ``transforms_test.json``: Blender (NeRF-synthetic);
- ``transforms.json``: nerfstudio / instant-ngp;
- ``NNNNN.exr`` with ``NNNNN.json``: RTMV.

A path to one of those JSON files is accepted too. Every reader composites onto the same background
(white unless given) and returns a ``Scene`` with the splits ``train``, ``val`` and ``test`` (some may be
empty).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from tvq.errors import TvqError

from . import io
from .blender import load_blender, split_files
from .nerfstudio import load_nerfstudio
from .rtmv import frame_stems, load_rtmv
from .scene import Scene

BBOX_MAX_POINTS = 1 << 22  # summarize back-projects at most about this many depth pixels


def detect_format(path: Path) -> tuple[str, Path]:
    """("blender" | "nerfstudio" | "rtmv", scene folder) for a folder or one of its metadata files."""
    path = Path(path)
    if not path.exists():
        raise TvqError(f"{path}: no such file or folder")
    if path.is_file():
        if path.name == "transforms.json":
            return "nerfstudio", path.parent
        if path.name in ("transforms_train.json", "transforms_val.json", "transforms_test.json"):
            return "blender", path.parent
        raise TvqError(f"{path}: not a scene folder or a transforms*.json file")
    if split_files(path):
        return "blender", path
    if (path / "transforms.json").is_file():
        return "nerfstudio", path
    if any((path / f"{stem}.json").is_file() for stem in frame_stems(path)):
        return "rtmv", path
    raise TvqError(
        f"{path}: not a scene folder (no transforms_train.json, transforms.json or RTMV NNNNN.exr + NNNNN.json)"
    )


def load_scene(
    path: str | Path,
    downscale: int = 1,
    split_every: int = 8,
    background: tuple[float, float, float] | np.ndarray | None = None,
) -> Scene:
    """Load the scene at ``path`` (a folder, or a transforms*.json file in it).

    ``downscale`` N > 1 averages colour and alpha over NxN blocks, takes each block's centre sample of
    depth, crops to a multiple of N and divides the intrinsics by N. ``split_every`` is the test stride of
    nerfstudio scenes without explicit split lists. ``background`` is the sRGB colour images are
    composited onto (default white).
    """
    if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 1:
        raise TvqError(f"downscale must be a positive integer, got {downscale!r}")
    bg = np.ones(3, np.float32) if background is None else np.asarray(background, np.float32).reshape(3)
    fmt, root = detect_format(Path(path))
    if fmt == "blender":
        return load_blender(root, downscale=downscale, background=bg)
    if fmt == "nerfstudio":
        json_path = Path(path) if Path(path).is_file() else None
        return load_nerfstudio(root, downscale=downscale, background=bg, split_every=split_every, json_path=json_path)
    return load_rtmv(root, downscale=downscale, background=bg)


def depth_bbox(scene: Scene, max_points: int = BBOX_MAX_POINTS) -> list[list[float]] | None:
    """World-space [[xmin, ymin, zmin], [xmax, ymax, zmax]] of the back-projected depth of every view.

    To stay fast on large scenes the pixels are subsampled with one stride along both image axes, the
    smallest that keeps the total under about ``max_points``; the box can then be slightly smaller than the
    exact one. None when no view has depth (or no pixel has a depth value).
    """
    views = [v for v in scene.views if v.depth is not None]
    if not views:
        return None
    total = sum(v.depth.size for v in views)
    stride = max(1, math.ceil(math.sqrt(total / max_points)))
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    for v in views:
        pts = io.backproject_depth(v.depth, v.K, v.c2w, stride=stride)
        if len(pts):
            lo = np.minimum(lo, pts.min(axis=0))
            hi = np.maximum(hi, pts.max(axis=0))
    if not np.all(np.isfinite(lo)):
        return None
    return [lo.tolist(), hi.tolist()]


def summarize(scene: Scene) -> dict[str, Any]:
    """A JSON-able description: format, root, splits (name -> view count), size, depth, alpha, depth bbox."""
    K = scene.views[0].K
    return {
        "format": scene.format,
        "root": str(scene.root),
        "views": len(scene.views),
        "splits": {name: len(idx) for name, idx in scene.splits.items()},
        "width": scene.width,
        "height": scene.height,
        "intrinsics": {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2])},
        "depth": scene.has_depth,
        "alpha": scene.has_alpha,
        "background": [float(c) for c in scene.background],
        "bbox": depth_bbox(scene),
    }
