"""nerfstudio / instant-ngp scenes: one ``transforms.json``.

Intrinsics ``fl_x, fl_y, cx, cy, w, h`` sit at the top level or in each frame (a frame's own value wins).
Without ``fl_x``/``fl_y``, instant-ngp's ``camera_angle_x``/``camera_angle_y`` give them (square pixels when
only one is present); without ``cx``/``cy`` the principal point is the image centre. Distortion
coefficients are ignored (with a warning when non-zero). Each frame has a ``file_path`` relative to the
folder and a camera-to-world ``transform_matrix`` (OpenGL camera).

Optional per frame: ``depth_file_path``, z-depth stored as a 16-bit PNG (or ``.npy``/EXR) times
``depth_unit_scale_factor`` (top level or per frame; default 0.001, millimetres, as nerfstudio); and
``mask_path``, a mask image that becomes the view's alpha (multiplying the image's own alpha, if any) and
composites the image onto the background like an alpha channel would.

Frames are ordered by ``file_path``, as nerfstudio does. Split: when the file has ``train_filenames``,
``val_filenames`` or ``test_filenames`` those lists define the splits (a split it does not list is empty,
one it lists must not end up empty); otherwise every ``split_every``-th frame (0, 8, 16, ... by default)
is a test view and the rest are training views. Frames whose image file is missing are skipped with one
warning that counts them; the computed split is taken before skipping, so a missing file never moves
other frames between splits. No frame left is an error.

Images: RGB (e.g. JPG) gives no alpha; RGBA is composited onto the background (white) and keeps alpha.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tvq.errors import TvqError

from . import io
from .frames import Frame, check_split, load_views
from .scene import Scene

SPLITS = ("train", "val", "test")
UNSUPPORTED_MODELS = ("OPENCV_FISHEYE", "FISHEYE", "EQUIRECTANGULAR", "FULL_OPENCV", "THIN_PRISM_FISHEYE")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


def _lookup(frame: dict[str, Any], meta: dict[str, Any], key: str) -> Any:
    return frame[key] if key in frame else meta.get(key)


def _number(value: Any, key: str, where: str) -> float:
    return io.get_number({key: value}, key, where)


def _frame_intrinsics(
    frame: dict[str, Any], meta: dict[str, Any], image: Path, where: str
) -> tuple[np.ndarray, tuple[int, int]]:
    """(K, (w, h)) of one frame, reading the image header only when the size is not declared."""
    w, h = _lookup(frame, meta, "w"), _lookup(frame, meta, "h")
    if w is None or h is None:
        size = io.image_size(image)
    else:
        size = (int(_number(w, "w", where)), int(_number(h, "h", where)))
    w, h = size

    fx, fy = _lookup(frame, meta, "fl_x"), _lookup(frame, meta, "fl_y")
    ax, ay = _lookup(frame, meta, "camera_angle_x"), _lookup(frame, meta, "camera_angle_y")
    fx = _number(fx, "fl_x", where) if fx is not None else None
    fy = _number(fy, "fl_y", where) if fy is not None else None
    if fx is None and ax is not None:
        fx = 0.5 * w / math.tan(0.5 * _number(ax, "camera_angle_x", where))
    if fy is None and ay is not None:
        fy = 0.5 * h / math.tan(0.5 * _number(ay, "camera_angle_y", where))
    if fx is None and fy is None:
        raise TvqError(f"{where}: no focal length (fl_x/fl_y or camera_angle_x)")
    fx = fy if fx is None else fx
    fy = fx if fy is None else fy
    cx, cy = _lookup(frame, meta, "cx"), _lookup(frame, meta, "cy")
    cx = w / 2.0 if cx is None else _number(cx, "cx", where)
    cy = h / 2.0 if cy is None else _number(cy, "cy", where)
    return io.intrinsics(fx, fy, cx, cy, where), size


def _normalised(a: Path) -> str:
    return os.path.normpath(os.path.abspath(a))


def load_nerfstudio(
    root: Path,
    downscale: int = 1,
    background: np.ndarray | None = None,
    split_every: int = 8,
    json_path: Path | None = None,
) -> Scene:
    """Load a nerfstudio / instant-ngp scene folder (see the module docstring)."""
    bg = np.ones(3, np.float32) if background is None else np.asarray(background, np.float32)
    json_path = root / "transforms.json" if json_path is None else json_path
    meta = io.read_json(json_path)
    raw_frames = meta.get("frames")
    if not isinstance(raw_frames, list):
        raise TvqError(f"{json_path}: missing 'frames' list")
    if not raw_frames:
        raise TvqError(f"{json_path}: 'frames' is empty")
    model = meta.get("camera_model")
    if isinstance(model, str) and model.upper() in UNSUPPORTED_MODELS:
        raise TvqError(f"{json_path}: camera_model {model} is not supported (pinhole cameras only)")
    if any(isinstance(meta.get(k), (int, float)) and meta.get(k) != 0 for k in DISTORTION_KEYS):
        warnings.warn(f"{json_path}: lens distortion coefficients are ignored", stacklevel=2)

    for i, fr in enumerate(raw_frames):
        if not isinstance(fr, dict) or not isinstance(fr.get("file_path"), str):
            raise TvqError(f"{json_path} (frame {i}): frame has no 'file_path'")
    order = sorted(range(len(raw_frames)), key=lambda i: raw_frames[i]["file_path"])
    raw_frames = [raw_frames[i] for i in order]
    images = [io.resolve_image_path(root, fr["file_path"]) for fr in raw_frames]

    # Split membership per frame, decided on the listed frames (before missing files are skipped).
    listed = {s: meta.get(f"{s}_filenames") for s in SPLITS}
    explicit = any(v is not None for v in listed.values())
    membership: dict[str, list[int]] = {s: [] for s in SPLITS}
    if explicit:
        by_path = {_normalised(p): i for i, p in enumerate(images)}
        for s, names in listed.items():
            if names is None:
                continue
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise TvqError(f"{json_path}: '{s}_filenames' must be a list of file names")
            check_split(names, s, json_path)
            for n in names:
                i = by_path.get(_normalised(root / n))
                if i is None:
                    raise TvqError(f"{json_path}: '{s}_filenames' lists {n}, which is not a frame's file_path")
                membership[s].append(i)
    else:
        if split_every < 2:
            raise TvqError(f"split_every must be at least 2, got {split_every}")
        membership["test"] = list(range(0, len(images), split_every))
        membership["train"] = [i for i in range(len(images)) if i % split_every != 0]

    used = sorted({i for s in SPLITS for i in membership[s]})
    missing = [i for i in used if not images[i].is_file()]
    if len(missing) == len(used):
        raise TvqError(f"{json_path}: none of the {len(used)} frames' image files exist (first: {images[used[0]]})")
    if missing:
        warnings.warn(
            f"{json_path}: skipped {len(missing)} of {len(used)} frames whose image file is missing"
            f" (first: {images[missing[0]]})",
            stacklevel=2,
        )
    missing_set = set(missing)
    kept = [i for i in used if i not in missing_set]
    new_index = {old: new for new, old in enumerate(kept)}
    splits = {s: [new_index[i] for i in membership[s] if i in new_index] for s in SPLITS}
    for s in SPLITS:
        required = listed[s] is not None if explicit else s == "train"
        if required and not splits[s]:
            raise TvqError(f"{json_path}: split '{s}' has no frames with an existing image")

    default_scale = io.get_number(meta, "depth_unit_scale_factor", str(json_path), default=1e-3)
    frames: list[Frame] = []
    for i in kept:
        fr = raw_frames[i]
        where = f"{json_path} ({fr['file_path']})"
        if "transform_matrix" not in fr:
            raise TvqError(f"{where}: frame has no 'transform_matrix'")
        c2w = io.camera_matrix(fr["transform_matrix"], where)
        K, size = _frame_intrinsics(fr, meta, images[i], where)
        depth, mask = fr.get("depth_file_path"), fr.get("mask_path")
        for key, value in (("depth_file_path", depth), ("mask_path", mask)):
            if value is not None and not isinstance(value, str):
                raise TvqError(f"{where}: '{key}' must be a string")
        frames.append(
            Frame(
                name=io.frame_name(fr["file_path"]),
                image=images[i],
                K=K,
                c2w=c2w,
                size=size,
                mask=None if mask is None else root / mask,
                depth=None if depth is None else root / depth,
                depth_scale=io.get_number(fr, "depth_unit_scale_factor", where, default=default_scale),
            )
        )
    views = load_views(frames, bg, downscale)
    return Scene(format="nerfstudio", root=root, views=views, splits=splits, background=bg)
