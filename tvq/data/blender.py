"""Blender / NeRF-synthetic scenes: ``transforms_{train,val,test}.json``.

Each split file holds ``camera_angle_x`` (horizontal field of view in radians; ``camera_angle_y`` when the
pixels are not square) and ``frames`` with a ``file_path`` (relative to the folder, usually without
extension: ``.png`` is appended) and a camera-to-world ``transform_matrix`` (OpenGL camera, as Blender
stores it). The principal point is the image centre (W/2, H/2).

Images are RGBA with straight alpha, composited onto the background (white by the standard protocol);
the alpha is kept. A frame may name a ``depth_file_path``: a 16-bit PNG of z-depth times the file's
top-level ``depth_unit_scale_factor`` (default 1.0; 0 = no depth), or a ``.npy`` float array.

Missing split files are fine as long as one exists; a split file with no frames is an error.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tvq.errors import TvqError

from . import io
from .frames import Frame, check_split, load_views
from .scene import Scene

SPLITS = ("train", "val", "test")


def split_files(root: Path) -> dict[str, Path]:
    """The split files present in ``root``, by split name."""
    return {s: root / f"transforms_{s}.json" for s in SPLITS if (root / f"transforms_{s}.json").is_file()}


def _depth_path(root: Path, file_path: str) -> Path:
    path = root / file_path
    if path.suffix.lower() in (".png", ".npy", ".exr"):
        return path
    for suffix in (".png", ".npy"):
        candidate = path.with_name(path.name + suffix)
        if candidate.is_file():
            return candidate
    return path.with_name(path.name + ".png")


def read_frames(json_path: Path, root: Path) -> list[Frame]:
    """The frames of one split file, with intrinsics from its field of view and the first image's size."""
    meta = io.read_json(json_path)
    frames = meta.get("frames")
    if not isinstance(frames, list):
        raise TvqError(f"{json_path}: missing 'frames' list")
    angle_x = io.get_number(meta, "camera_angle_x", str(json_path))
    angle_y = meta.get("camera_angle_y")
    depth_scale = io.get_number(meta, "depth_unit_scale_factor", str(json_path), default=1.0)
    if not 0 < angle_x < math.pi:
        raise TvqError(f"{json_path}: camera_angle_x = {angle_x} is not a field of view in radians")

    out: list[Frame] = []
    size: tuple[int, int] | None = None
    for i, fr in enumerate(frames):
        where = f"{json_path} (frame {i})"
        if not isinstance(fr, dict) or not isinstance(fr.get("file_path"), str):
            raise TvqError(f"{where}: frame has no 'file_path'")
        image = io.resolve_image_path(root, fr["file_path"])
        if not image.is_file():
            raise TvqError(f"{image}: image file not found (listed in {json_path.name})")
        if "transform_matrix" not in fr:
            raise TvqError(f"{where}: frame has no 'transform_matrix'")
        c2w = io.camera_matrix(fr["transform_matrix"], where)
        if size is None:
            size = io.image_size(image)  # the intrinsics need W and H before any pixel is decoded
        w, h = size
        fx = 0.5 * w / math.tan(0.5 * angle_x)
        fy = fx
        if angle_y is not None:
            ay = io.get_number(meta, "camera_angle_y", str(json_path))
            if not 0 < ay < math.pi:
                raise TvqError(f"{json_path}: camera_angle_y = {ay} is not a field of view in radians")
            fy = 0.5 * h / math.tan(0.5 * ay)
        depth = fr.get("depth_file_path")
        if depth is not None and not isinstance(depth, str):
            raise TvqError(f"{where}: 'depth_file_path' must be a string")
        out.append(
            Frame(
                name=io.frame_name(fr["file_path"]),
                image=image,
                K=io.intrinsics(fx, fy, w / 2.0, h / 2.0, where),
                c2w=c2w,
                depth=None if depth is None else _depth_path(root, depth),
                depth_scale=depth_scale,
            )
        )
    return out


def load_blender(root: Path, downscale: int = 1, background: np.ndarray | None = None) -> Scene:
    """Load a Blender-format scene folder (see the module docstring)."""
    bg = np.ones(3, np.float32) if background is None else np.asarray(background, np.float32)
    files = split_files(root)
    if not files:
        raise TvqError(f"{root}: no transforms_train.json, transforms_val.json or transforms_test.json")
    frames: list[Frame] = []
    splits: dict[str, list[int]] = {s: [] for s in SPLITS}
    for name, path in files.items():
        split_frames = read_frames(path, root)
        check_split(split_frames, name, path)
        splits[name] = list(range(len(frames), len(frames) + len(split_frames)))
        frames.extend(split_frames)
    views = load_views(frames, bg, downscale)
    return Scene(format="blender", root=root, views=views, splits=splits, background=bg)
