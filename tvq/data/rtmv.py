"""RTMV scenes: a folder of ``NNNNN.exr``, ``NNNNN.depth.exr`` and ``NNNNN.json`` per view.

- ``NNNNN.exr``: linear RGBA with straight alpha. The colour is converted to sRGB (clipped to [0, 1]) and
  then composited onto the background (white); the alpha is kept.
- ``NNNNN.depth.exr`` (optional): distance from the camera centre ALONG THE RAY (channel R, or Z/Y);
  values beyond +-1000 mean the ray missed and become 0. Converted to z-depth with each pixel centre's ray.
- ``NNNNN.json``: ``camera_data`` with ``cam2world`` (a 4x4 OpenGL camera-to-world matrix stored transposed,
  so its transpose is used), ``intrinsics {fx, fy, cx, cy}``, ``width`` and ``height`` (and
  ``camera_look_at {eye, at, up}``, which is not needed).

Split, views sorted by name: the first int(2/3 n) are train, the next int(n/30) val, the rest test (an
empty val split is normal for small scenes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tvq.errors import TvqError

from . import io
from .frames import Frame, load_views
from .scene import Scene

NO_HIT = 1000.0  # |depth| beyond this is a miss (RTMV writes 1e10 or -1e10 there)


def frame_stems(root: Path) -> list[str]:
    """Sorted names of the views: ``X.exr`` files whose stem has no further dot (not ``X.depth.exr``)."""
    return sorted(p.stem for p in root.glob("*.exr") if "." not in p.stem and p.is_file())


def split_indices(n: int) -> dict[str, list[int]]:
    """RTMV's split of n views sorted by name: 2/3 train, 1/30 val, the rest test."""
    n_train, n_val = n * 2 // 3, n // 30  # integer forms of int(2/3 n) and int(n/30)
    return {
        "train": list(range(n_train)),
        "val": list(range(n_train, n_train + n_val)),
        "test": list(range(n_train + n_val, n)),
    }


def read_camera(json_path: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(K, c2w, (width, height)) from one view's JSON file."""
    meta = io.read_json(json_path)
    cam = meta.get("camera_data")
    where = str(json_path)
    if not isinstance(cam, dict):
        raise TvqError(f"{json_path}: missing 'camera_data'")
    if "cam2world" not in cam:
        raise TvqError(f"{json_path}: missing 'camera_data.cam2world'")
    # Stored transposed (translation in the last row): transpose before validating.
    try:
        stored = np.asarray(cam["cam2world"], dtype=np.float64)
    except (TypeError, ValueError):
        raise TvqError(f"{json_path}: camera matrix is not a 4x4 array of numbers") from None
    c2w = io.camera_matrix(stored.T if stored.ndim == 2 else stored, where)
    intr = cam.get("intrinsics")
    if not isinstance(intr, dict):
        raise TvqError(f"{json_path}: missing 'camera_data.intrinsics'")
    K = io.intrinsics(*(io.get_number(intr, k, where) for k in ("fx", "fy", "cx", "cy")), where)
    size = (int(io.get_number(cam, "width", where)), int(io.get_number(cam, "height", where)))
    return K, c2w, size


def load_rtmv(root: Path, downscale: int = 1, background: np.ndarray | None = None) -> Scene:
    """Load an RTMV scene folder (see the module docstring)."""
    bg = np.ones(3, np.float32) if background is None else np.asarray(background, np.float32)
    stems = frame_stems(root)
    if not stems:
        raise TvqError(f"{root}: no RTMV frames (NNNNN.exr with NNNNN.json)")
    frames: list[Frame] = []
    for stem in stems:
        K, c2w, size = read_camera(root / f"{stem}.json")
        depth = root / f"{stem}.depth.exr"
        frames.append(
            Frame(
                name=stem,
                image=root / f"{stem}.exr",
                K=K,
                c2w=c2w,
                size=size,
                linear=True,
                depth=depth if depth.is_file() else None,
                depth_along_ray=True,
                depth_max=NO_HIT,
            )
        )
    splits = split_indices(len(frames))
    if not splits["train"]:
        raise TvqError(f"{root}: {len(frames)} RTMV frames leave no training view (needs at least 2)")
    views = load_views(frames, bg, downscale)
    return Scene(format="rtmv", root=root, views=views, splits=splits, background=bg)
