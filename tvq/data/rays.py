"""Camera rays through pixels and world points from depth maps, in torch (CPU or CUDA alike).

Conventions (as ``tvq.data.scene``):
- ``K`` is [[fx, s, cx], [0, fy, cy], [0, 0, 1]] in pixels (the skew s is usually 0); ``c2w`` is a
  camera-to-world 4x4 with the OpenGL camera (+x right, +y up, looking down -z).
- A pixel is (i, j) = (column, row), rows growing downwards, with its centre at (i + 0.5, j + 0.5). Its
  camera-space direction is ``((i + 0.5 - cx) / fx, -(j + 0.5 - cy) / fy, -1)`` (with skew, x first
  removes ``s * y``): the image y axis points down, the camera's +y up.
- Directions are returned with unit length. ``zscale`` is the camera-space |z| of the unit direction, so a
  z-depth D (distance along the camera's -z axis) lies at along-ray distance ``t = D / zscale``.

Device and dtype: an explicit ``device`` / ``dtype`` wins; otherwise they follow the tensor inputs (the
first torch tensor among the arguments; a floating camera tensor also sets the dtype). Numpy inputs alone
give CPU tensors of torch's default float dtype.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from .scene import Scene, View


def _resolve(
    *inputs: object, device: torch.device | str | None, dtype: torch.dtype | None
) -> tuple[torch.device, torch.dtype]:
    tensors = [x for x in inputs if isinstance(x, torch.Tensor)]
    if device is None:
        device = tensors[0].device if tensors else torch.device("cpu")
    if dtype is None:
        floats = [x.dtype for x in tensors if x.is_floating_point()]
        dtype = floats[0] if floats else torch.get_default_dtype()
    return torch.device(device), dtype


def _tensor(x: object, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(device=device, dtype=dtype)


def pixel_grid(width: int, height: int, stride: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
    """All pixel indices (i, j) of a width x height image, row-major (j outer), as int64 (N, 2).

    With ``stride`` > 1, every stride-th column of every stride-th row, starting at (0, 0).
    """
    j, i = torch.meshgrid(
        torch.arange(0, height, stride, device=device), torch.arange(0, width, stride, device=device), indexing="ij"
    )
    return torch.stack([i.reshape(-1), j.reshape(-1)], dim=1)


def _camera_dirs(
    fx: torch.Tensor, fy: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, skew: torch.Tensor, pixels: torch.Tensor
) -> torch.Tensor:
    """Camera-space directions (N, 3) with z = -1 through pixel centres; intrinsics scalars or (N,)."""
    u = pixels[:, 0].to(fx.dtype) + 0.5
    v = pixels[:, 1].to(fx.dtype) + 0.5
    y = (v - cy) / fy
    x = (u - cx - skew * y) / fx
    return torch.stack([x, -y, -torch.ones_like(x)], dim=1)


def _finish(
    origins: torch.Tensor, d_world: torch.Tensor, return_zscale: bool
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # d_world is R @ d_cam with d_cam's z = -1, so a z-depth D is at R @ d_cam * D = unit * (D * |d_world|).
    norm = d_world.norm(dim=1, keepdim=True)
    directions = d_world / norm
    if return_zscale:
        return origins, directions, 1.0 / norm[:, 0]
    return origins, directions


def pixel_rays(
    K: torch.Tensor | np.ndarray,
    c2w: torch.Tensor | np.ndarray,
    pixels: torch.Tensor | np.ndarray | None = None,
    width: int | None = None,
    height: int | None = None,
    *,
    return_zscale: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rays of one camera through pixel centres: ``(origins (N, 3), directions (N, 3)[, zscale (N,)])``.

    ``pixels``: (N, 2) integer (i, j) = (column, row); None means every pixel of a ``width`` x ``height``
    image in row-major order (``pixel_grid``). Directions have unit length; ``zscale`` (with
    ``return_zscale=True``) converts z-depth to along-ray distance: ``t = depth / zscale``.
    """
    device, dtype = _resolve(pixels, K, c2w, device=device, dtype=dtype)
    if pixels is None:
        if width is None or height is None:
            raise ValueError("pixel_rays: give pixels, or width and height for all pixels")
        pix = pixel_grid(width, height, device=device)
    else:
        pix = torch.as_tensor(pixels, device=device).reshape(-1, 2)
    K = _tensor(K, device, dtype)
    c2w = _tensor(c2w, device, dtype)
    d_cam = _camera_dirs(K[0, 0], K[1, 1], K[0, 2], K[1, 2], K[0, 1], pix)
    d_world = d_cam @ c2w[:3, :3].T
    return _finish(c2w[:3, 3].expand_as(d_world), d_world, return_zscale)


def rays_for_views(
    Ks: torch.Tensor | np.ndarray,
    c2ws: torch.Tensor | np.ndarray,
    view_ids: torch.Tensor | np.ndarray,
    pixels: torch.Tensor | np.ndarray,
    *,
    return_zscale: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rays through pixels of many views at once (for example random training rays).

    ``Ks`` (V, 3, 3) and ``c2ws`` (V, 4, 4) are the cameras (see ``stack_cameras``); ray n goes through
    pixel ``pixels[n]`` = (i, j) of view ``view_ids[n]``. Returns ``(origins (N, 3), directions (N, 3)
    [, zscale (N,)])`` exactly as ``pixel_rays`` would per view. Keep the cameras on the rays' device to
    avoid a copy per call.
    """
    device, dtype = _resolve(pixels, view_ids, Ks, c2ws, device=device, dtype=dtype)
    Ks = _tensor(Ks, device, dtype)
    c2ws = _tensor(c2ws, device, dtype)
    ids = torch.as_tensor(view_ids, device=device).reshape(-1).long()
    pix = torch.as_tensor(pixels, device=device).reshape(-1, 2)
    K = Ks[ids]  # (N, 3, 3): small next to the rays themselves
    d_cam = _camera_dirs(K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 0, 1], pix)
    c2w = c2ws[ids]
    d_world = torch.einsum("nij,nj->ni", c2w[:, :3, :3], d_cam)
    return _finish(c2w[:, :3, 3], d_world, return_zscale)


def stack_cameras(
    views: Sequence["View"], device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """The views' intrinsics (V, 3, 3) and camera-to-world matrices (V, 4, 4) as tensors for ``rays_for_views``."""
    Ks = torch.as_tensor(np.stack([np.asarray(v.K) for v in views]).reshape(-1, 3, 3), dtype=dtype, device=device)
    c2ws = torch.as_tensor(np.stack([np.asarray(v.c2w) for v in views]).reshape(-1, 4, 4), dtype=dtype, device=device)
    return Ks, c2ws


def depth_points(
    K: torch.Tensor | np.ndarray,
    c2w: torch.Tensor | np.ndarray,
    depth: torch.Tensor | np.ndarray,
    stride: int = 1,
    *,
    return_pixels: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """World points (M, 3) of a z-depth map (H, W): pixel centres lifted to their depth along -z.

    Pixels with depth <= 0 (or not finite) have no depth and are skipped; ``stride`` keeps every
    stride-th column of every stride-th row. The points are in row-major pixel order; with
    ``return_pixels=True`` also returns their (i, j) pixel indices (M, 2).
    """
    device, dtype = _resolve(depth, K, c2w, device=device, dtype=dtype)
    D = _tensor(depth, device, dtype)
    if D.dim() != 2:
        raise ValueError(f"depth_points: depth must be (H, W), got shape {tuple(D.shape)}")
    pix = pixel_grid(D.shape[1], D.shape[0], stride, device=device)
    d = D[pix[:, 1], pix[:, 0]]
    keep = torch.isfinite(d) & (d > 0)
    pix, d = pix[keep], d[keep]
    K = _tensor(K, device, dtype)
    c2w = _tensor(c2w, device, dtype)
    p_cam = _camera_dirs(K[0, 0], K[1, 1], K[0, 2], K[1, 2], K[0, 1], pix) * d[:, None]  # z = -depth
    points = p_cam @ c2w[:3, :3].T + c2w[:3, 3]
    return (points, pix) if return_pixels else points


def scene_points(
    scene: "Scene",
    split: str = "train",
    stride: int = 1,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """All views' depth points of one split, concatenated (M, 3); (0, 3) when no view there has depth."""
    clouds = [
        depth_points(v.K, v.c2w, v.depth, stride, device=device, dtype=dtype)
        for v in scene.split(split)
        if v.depth is not None
    ]
    if not clouds:
        return torch.zeros((0, 3), device=device, dtype=dtype)
    return torch.cat(clouds)
