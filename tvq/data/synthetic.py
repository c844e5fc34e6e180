"""The built-in demo scene: an analytic still life rendered with numpy and written in Blender format.

The geometry is a union of closed-form solids (spheres, oriented boxes, capped cylinders), so every
camera ray is intersected exactly and the written depth is exact up to its 16-bit quantisation. It has
what training and compression need: several textured materials with high-frequency patterns (a
checkered sphere, a striped box, a pedestal with a polar checker top and a striped side, banded thin
rods, a tilted thin coin with rings), hard shadows from a fixed light, and thin parts a few pixels wide.

World frame: z up, everything inside [-1, 1]^3 (see ``bounds``). Shading is Lambertian with a fixed
directional light plus ambient, so colours do not depend on the view direction.

Written files (the layout of the NeRF-synthetic scenes, plus metric depth):

- ``transforms_{train,val,test}.json``: ``camera_angle_x``, ``depth_unit_scale_factor`` and ``frames``,
  each with ``file_path`` (no extension, e.g. ``./train/r_0``), ``depth_file_path``
  (``./train/r_0_depth.png``) and ``transform_matrix`` (camera-to-world, OpenGL camera: +x right, +y
  up, looking down -z).
- ``{split}/r_{k}.png``: 8-bit RGBA, straight (not premultiplied) alpha, 0 on the background. Each pixel
  averages a 3x3 grid of rays at offsets 0, 1/2 and 1 pixel with weights (1/4, 1/2, 1/4) per axis (the
  trapezoid rule over the pixel square), so edges have fractional alpha and the pixel centre always
  contributes: alpha 0 implies the centre ray missed.
- ``{split}/r_{k}_depth.png``: 16-bit grey, z-depth (distance along the camera's -z axis, not along the
  ray) of the centre ray divided by ``depth_unit_scale_factor``; 0 where the centre ray misses.

Geometry helpers for tests and other modules: ``sdf`` (exact signed distance of the union),
``surface_points`` (samples on the union's surface), ``intersect`` (exact ray casting) and ``bounds``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from tvq.errors import TvqError

CAMERA_ANGLE_X = 0.6911112070083618  # horizontal field of view in radians, as NeRF-synthetic lego
CAMERA_RADIUS = 4.0  # cameras sit on a sphere of this radius around the origin, looking at it
DEPTH_UNIT_SCALE_FACTOR = 1e-4  # scene units per depth-PNG step: 16 bits cover 0..6.5535
LIGHT_DIR = np.array([0.45, -0.35, 1.0]) / np.linalg.norm([0.45, -0.35, 1.0])  # towards the light
AMBIENT = 0.25

_SHADOW_OFFSET = 1e-4  # start shadow rays this far off the surface so they do not hit it again
_TINY = 1e-18  # stands in for a zero direction component in slab tests (keeps the maths finite)


# ----------------------------------------------------------------------------------------------------
# Geometry: closed-form solids in their local frames
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Solid:
    """One convex solid: ``kind`` in its local frame, placed by ``center`` and ``rot``.

    ``rot`` columns are the local axes in world coordinates (local = (world - center) @ rot).
    ``size``: sphere (radius,), box (half x, half y, half z), cylinder (radius, half height) with the
    axis along local z. ``albedo`` maps local hit points and local normals to linear RGB.
    """

    name: str
    kind: str
    center: np.ndarray
    rot: np.ndarray
    size: tuple[float, ...]
    albedo: Callable[[np.ndarray, np.ndarray], np.ndarray]


def _rotation(axis: tuple[float, float, float], angle: float) -> np.ndarray:
    """Rotation matrix about ``axis`` by ``angle`` radians (Rodrigues)."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def _axis_frame(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre, frame (local z along a->b) and half length of a segment from a to b."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    z = (b - a) / np.linalg.norm(b - a)
    helper = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return (a + b) / 2, np.stack([x, y, z], axis=1), float(np.linalg.norm(b - a) / 2)


def _pick(mask: np.ndarray, on: tuple[float, float, float], off: tuple[float, float, float]) -> np.ndarray:
    return np.where(mask[:, None], np.asarray(on), np.asarray(off))


def _sphere_checker(radius: float, n_lon: int, n_lat: int, on, off):
    def albedo(p: np.ndarray, n: np.ndarray) -> np.ndarray:
        lon = np.arctan2(p[:, 1], p[:, 0])
        lat = np.arcsin(np.clip(p[:, 2] / radius, -1.0, 1.0))
        cell = np.floor(lon / (2 * np.pi / n_lon)) + np.floor(lat / (np.pi / n_lat))
        return _pick(cell.astype(np.int64) % 2 == 0, on, off)

    return albedo


def _box_stripes(period: float, on, off):
    def albedo(p: np.ndarray, n: np.ndarray) -> np.ndarray:
        s = np.floor((p[:, 0] + 0.7 * p[:, 1] + 0.4 * p[:, 2]) / period).astype(np.int64)
        return _pick(s % 2 == 0, on, off)

    return albedo


def _pedestal(n_sectors: int, ring: float, n_side: int, cap_on, cap_off, side_on, side_off):
    def albedo(p: np.ndarray, n: np.ndarray) -> np.ndarray:
        ang = np.arctan2(p[:, 1], p[:, 0])
        r = np.hypot(p[:, 0], p[:, 1])
        cap = np.abs(n[:, 2]) > 0.5
        cap_cell = np.floor(ang / (2 * np.pi / n_sectors)) + np.floor(r / ring)
        side_cell = np.floor(ang / (2 * np.pi / n_side))
        top = _pick(cap_cell.astype(np.int64) % 2 == 0, cap_on, cap_off)
        side = _pick(side_cell.astype(np.int64) % 2 == 0, side_on, side_off)
        return np.where(cap[:, None], top, side)

    return albedo


def _rod_bands(period: float, colour, dark=(0.03, 0.03, 0.03)):
    def albedo(p: np.ndarray, n: np.ndarray) -> np.ndarray:
        return _pick(np.mod(p[:, 2] / period, 1.0) < 0.6, colour, dark)

    return albedo


def _coin_rings(width: float, on, off, rim):
    def albedo(p: np.ndarray, n: np.ndarray) -> np.ndarray:
        face = _pick(np.floor(np.hypot(p[:, 0], p[:, 1]) / width).astype(np.int64) % 2 == 0, on, off)
        return np.where((np.abs(n[:, 2]) > 0.5)[:, None], face, np.asarray(rim))

    return albedo


def _solid_colour(colour):
    def albedo(p: np.ndarray, n: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.asarray(colour, float), (len(p), 3)).copy()

    return albedo


def _cylinder(name: str, a, b, radius: float, albedo) -> _Solid:
    center, rot, half = _axis_frame(np.asarray(a), np.asarray(b))
    return _Solid(name, "cylinder", center, rot, (radius, half), albedo)


def _build_solids() -> tuple[_Solid, ...]:
    eye = np.eye(3)
    return (
        _cylinder(
            "pedestal", (0, 0, -0.9), (0, 0, -0.75), 0.95,
            _pedestal(12, 0.16, 60, (0.04, 0.42, 0.42), (0.85, 0.85, 0.78), (0.35, 0.18, 0.06), (0.75, 0.58, 0.3)),
        ),
        _Solid(
            "sphere", "sphere", np.array([-0.33, 0.27, -0.325]), _rotation((1, 0.3, 0), 0.5), (0.43,),
            _sphere_checker(0.43, 16, 8, (0.8, 0.06, 0.04), (0.92, 0.86, 0.7)),
        ),
        _Solid(
            "box", "box", np.array([0.42, -0.3, -0.5]), _rotation((0, 0, 1), 0.52), (0.22, 0.2, 0.25),
            _box_stripes(0.055, (0.08, 0.16, 0.75), (0.95, 0.8, 0.08)),
        ),
        _Solid("ball", "sphere", np.array([0.42, -0.3, -0.14]), eye, (0.12,), _solid_colour((0.55, 0.12, 0.7))),
        _cylinder("rod_a", (0.6, 0.42, -0.76), (0.6, 0.42, 0.55), 0.035, _rod_bands(0.09, (0.9, 0.1, 0.55))),
        _cylinder("rod_b", (-0.62, -0.45, -0.76), (-0.62, -0.45, 0.4), 0.03, _rod_bands(0.07, (1.0, 0.45, 0.02))),
        _cylinder("rod_c", (0.05, 0.68, -0.76), (0.05, 0.68, 0.25), 0.04, _rod_bands(0.11, (0.1, 0.75, 0.15))),
        _cylinder("beam", (-0.62, -0.45, 0.33), (0.6, 0.42, 0.5), 0.02, _solid_colour((0.9, 0.9, 0.92))),
        _cylinder(
            "coin", (0.05, 0.05, 0.32), (0.05 + 0.012, 0.05 - 0.008, 0.32 + 0.022), 0.27,
            _coin_rings(0.035, (0.95, 0.68, 0.08), (0.55, 0.03, 0.08), (0.7, 0.7, 0.72)),
        ),
    )


SOLIDS = _build_solids()
MATERIALS = tuple(s.name for s in SOLIDS)  # index = the solid id ``intersect`` returns


def _bound_radius(s: _Solid) -> float:
    """Radius of a sphere about ``s.center`` that contains the solid (with a margin for rounding)."""
    size = np.asarray(s.size)
    r = size[0] if s.kind == "sphere" else np.linalg.norm(size) if s.kind == "box" else np.hypot(*size)
    return float(r) + 1e-6


_BOUND_RADIUS = {s: _bound_radius(s) for s in SOLIDS}


def _matmul(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``x @ m`` for (N, 3) x (3, K), written out: faster than BLAS at this shape, single-threaded, and
    with a fixed order of operations whatever the BLAS build."""
    return x[:, 0:1] * m[0] + x[:, 1:2] * m[1] + x[:, 2:3] * m[2]


def _to_local(s: _Solid, x: np.ndarray) -> np.ndarray:
    return _matmul(x - s.center, s.rot)


def _slab(o: np.ndarray, d: np.ndarray, half) -> tuple[np.ndarray, np.ndarray]:
    """Entry and exit ray parameters of |o + t d| <= half, per component (last axis)."""
    d = np.where(d == 0.0, _TINY, d)
    t1 = (-half - o) / d
    t2 = (half - o) / d
    return np.minimum(t1, t2), np.maximum(t1, t2)


def _interval(s: _Solid, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entry t, exit t and the local normal at entry of rays (local frame, unit d) against one solid.

    A miss has entry > exit. The solids are convex, so the ray inside them is one interval.
    """
    n = np.zeros_like(o)
    if s.kind == "sphere":
        r = s.size[0]
        b = np.einsum("ij,ij->i", o, d)
        disc = b * b - (np.einsum("ij,ij->i", o, o) - r * r)
        root = np.sqrt(np.maximum(disc, 0.0))
        t_in = np.where(disc >= 0, -b - root, np.inf)
        t_out = np.where(disc >= 0, -b + root, -np.inf)
        n = (o + t_in[:, None] * d) / r
    elif s.kind == "box":
        lo, hi = _slab(o, d, np.asarray(s.size))
        axis = np.argmax(lo, axis=1)
        t_in = np.take_along_axis(lo, axis[:, None], 1)[:, 0]
        t_out = hi.min(axis=1)
        n[np.arange(len(o)), axis] = -np.sign(d[np.arange(len(o)), axis])
    else:  # capped cylinder along local z
        r, h = s.size
        a = d[:, 0] ** 2 + d[:, 1] ** 2
        b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
        c = o[:, 0] ** 2 + o[:, 1] ** 2 - r * r
        parallel = a < 1e-14  # ray along the axis: inside the tube for all t, or never
        a_safe = np.where(parallel, 1.0, a)
        disc = b * b - a_safe * c
        root = np.sqrt(np.maximum(disc, 0.0))
        side_in = np.where(parallel, np.where(c < 0, -np.inf, np.inf), np.where(disc >= 0, (-b - root) / a_safe, np.inf))
        side_out = np.where(parallel, np.where(c < 0, np.inf, -np.inf), np.where(disc >= 0, (-b + root) / a_safe, -np.inf))
        cap_in, cap_out = _slab(o[:, 2], d[:, 2], h)
        from_side = side_in >= cap_in
        t_in = np.maximum(side_in, cap_in)
        t_out = np.minimum(side_out, cap_out)
        p = o + np.where(np.isfinite(t_in), t_in, 0.0)[:, None] * d
        n[:, 0] = np.where(from_side, p[:, 0] / r, 0.0)
        n[:, 1] = np.where(from_side, p[:, 1] / r, 0.0)
        n[:, 2] = np.where(from_side, 0.0, -np.sign(d[:, 2]))
    return t_in, t_out, n


def intersect(
    origins: np.ndarray, directions: np.ndarray, t_min: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact first hit of rays with the scene.

    ``origins``, ``directions``: (N, 3) world coordinates, directions of unit length. Returns the ray
    parameter ``t`` (N,) of the nearest surface with t > ``t_min`` (``inf`` on a miss; it is the
    distance along the ray), the id of the solid hit (N,) (-1 on a miss; names in ``MATERIALS``) and the
    outward unit normal (N, 3) in world coordinates (0 on a miss). Rays must start outside all solids.
    """
    o = np.asarray(origins, np.float64).reshape(-1, 3)
    d = np.asarray(directions, np.float64).reshape(-1, 3)
    best = np.full(len(o), np.inf)
    ids = np.full(len(o), -1, np.int64)
    normal = np.zeros_like(o)
    for k, (s, idx) in enumerate(zip(SOLIDS, _candidates(o, d))):
        t_in, t_out, n_local = _interval(s, _to_local(s, o[idx]), _matmul(d[idx], s.rot))
        hit = (t_in <= t_out) & (t_in > t_min) & (t_in < best[idx])
        idx = idx[hit]
        best[idx] = t_in[hit]
        ids[idx] = k
        normal[idx] = _matmul(n_local[hit], s.rot.T)
    return best, ids, normal


def _candidates(o: np.ndarray, d: np.ndarray) -> list[np.ndarray]:
    """Per solid, the indices of the rays (unit d) that pass through its bounding sphere, not behind them.

    One matrix product for all solids; the bounding radii carry a margin, so the test is conservative.
    """
    centers = np.stack([s.center for s in SOLIDS])  # (S, 3)
    od = np.einsum("ij,ij->i", o, d)[:, None]
    along = _matmul(d, centers.T) - od  # (N, S): t of the point closest to each centre
    dist2 = (centers**2).sum(1)[None] - 2 * _matmul(o, centers.T) + np.einsum("ij,ij->i", o, o)[:, None]
    radius = np.array([_BOUND_RADIUS[s] for s in SOLIDS])[None]
    near = (dist2 - along * along <= radius**2) & (along > -radius)
    return [np.flatnonzero(col) for col in near.T]


def _occluded(origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Whether each ray meets any solid at t > 0 (a ray starting inside one counts as blocked)."""
    blocked = np.zeros(len(origins), bool)
    for s, idx in zip(SOLIDS, _candidates(origins, directions)):
        t_in, t_out, _ = _interval(s, _to_local(s, origins[idx]), _matmul(directions[idx], s.rot))
        blocked[idx[(t_in <= t_out) & (t_out > 0)]] = True
    return blocked


def _solid_sdf(s: _Solid, p: np.ndarray) -> np.ndarray:
    """Exact signed distance to one solid (local frame points)."""
    if s.kind == "sphere":
        return np.linalg.norm(p, axis=1) - s.size[0]
    if s.kind == "box":
        q = np.abs(p) - np.asarray(s.size)
        return np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.minimum(q.max(axis=1), 0.0)
    r, h = s.size
    q = np.stack([np.hypot(p[:, 0], p[:, 1]) - r, np.abs(p[:, 2]) - h], axis=1)
    return np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.minimum(q.max(axis=1), 0.0)


def sdf(points: np.ndarray) -> np.ndarray:
    """Signed distance (N,) from world points (N, 3) to the scene: negative inside, 0 on the surface.

    The minimum of the solids' exact distances: exact outside the scene and on its surface, a lower bound
    of the depth inside where solids overlap.
    """
    p = np.asarray(points, np.float64).reshape(-1, 3)
    return np.min([_solid_sdf(s, _to_local(s, p)) for s in SOLIDS], axis=0)


def _sample_solid_surface(s: _Solid, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points uniformly distributed (by area) on one solid's surface, local frame."""
    if s.kind == "sphere":
        v = rng.normal(size=(n, 3))
        return s.size[0] * v / np.linalg.norm(v, axis=1, keepdims=True)
    if s.kind == "box":
        h = np.asarray(s.size)
        areas = np.array([h[1] * h[2], h[0] * h[2], h[0] * h[1]]).repeat(2)
        face = rng.choice(6, size=n, p=areas / areas.sum())
        p = rng.uniform(-1.0, 1.0, size=(n, 3)) * h
        axis = face // 2
        p[np.arange(n), axis] = np.where(face % 2 == 0, -1.0, 1.0) * h[axis]
        return p
    r, h = s.size
    side, cap = 2 * np.pi * r * 2 * h, np.pi * r * r
    on_side = rng.uniform(size=n) < side / (side + 2 * cap)
    ang = rng.uniform(0, 2 * np.pi, size=n)
    rad = np.where(on_side, r, r * np.sqrt(rng.uniform(size=n)))
    z = np.where(on_side, rng.uniform(-h, h, size=n), np.where(rng.uniform(size=n) < 0.5, -h, h))
    return np.stack([rad * np.cos(ang), rad * np.sin(ang), z], axis=1)


def surface_points(n: int, seed: int = 0) -> np.ndarray:
    """``n`` points (n, 3) on the scene's surface, roughly uniform by area, deterministic for a seed.

    Each solid gets samples in proportion to its area; samples that fall inside another solid (not on
    the union's surface) are dropped, so every point has ``sdf`` ~ 0 (|sdf| < 1e-9).
    """
    rng = np.random.default_rng(seed)
    areas = np.array([_area(s) for s in SOLIDS])
    out: list[np.ndarray] = []
    have = 0
    while have < n:
        counts = rng.multinomial(2 * (n - have) + 64, areas / areas.sum())
        batch = np.concatenate(
            [_sample_solid_surface(s, int(c), rng) @ s.rot.T + s.center for s, c in zip(SOLIDS, counts)]
        )
        batch = batch[rng.permutation(len(batch))]
        batch = batch[sdf(batch) > -1e-9]
        out.append(batch)
        have += len(batch)
    return np.concatenate(out)[:n]


def _area(s: _Solid) -> float:
    if s.kind == "sphere":
        return 4 * np.pi * s.size[0] ** 2
    if s.kind == "box":
        hx, hy, hz = s.size
        return 8 * (hx * hy + hy * hz + hx * hz)
    r, h = s.size
    return 2 * np.pi * r * 2 * h + 2 * np.pi * r * r


def bounds() -> tuple[np.ndarray, np.ndarray]:
    """Tight axis-aligned bounding box (lo (3,), hi (3,)) of the scene's geometry, world units."""
    lo, hi = [], []
    for s in SOLIDS:
        if s.kind == "sphere":
            ext = np.full(3, s.size[0])
        elif s.kind == "box":
            ext = np.abs(s.rot) @ np.asarray(s.size)
        else:
            r, h = s.size
            axis = s.rot[:, 2]
            ext = np.abs(axis) * h + r * np.sqrt(np.maximum(1 - axis**2, 0.0))
        lo.append(s.center - ext)
        hi.append(s.center + ext)
    return np.min(lo, axis=0), np.max(hi, axis=0)


# ----------------------------------------------------------------------------------------------------
# Cameras and rendering
# ----------------------------------------------------------------------------------------------------


def intrinsics(size: int) -> np.ndarray:
    """Pinhole K (3, 3) of a ``size`` x ``size`` view with ``CAMERA_ANGLE_X`` (pixel centres at +0.5)."""
    f = 0.5 * size / math.tan(0.5 * CAMERA_ANGLE_X)
    return np.array([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])


def look_at(eye: np.ndarray, target: np.ndarray | None = None, up: np.ndarray | None = None) -> np.ndarray:
    """Camera-to-world (4, 4), OpenGL camera at ``eye`` looking at ``target`` (default the origin) with
    world ``up`` (default +z) above."""
    eye = np.asarray(eye, np.float64)
    target = np.zeros(3) if target is None else np.asarray(target, np.float64)
    up = np.array([0.0, 0.0, 1.0]) if up is None else np.asarray(up, np.float64)
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, cam_up, -forward, eye
    return c2w


def _unit(z: np.ndarray, phi: np.ndarray) -> np.ndarray:
    rho = np.sqrt(1 - z * z)
    return np.stack([rho * np.cos(phi), rho * np.sin(phi), z], axis=1)


def camera_poses(n_train: int, n_val: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Camera-to-world matrices (n, 4, 4) per split, all at ``CAMERA_RADIUS`` looking at the origin.

    train: a Fibonacci spiral over the upper hemisphere (elevation ~5..67 degrees) with a random twist;
    val: uniformly random on the same band; test: a ring at 30 degrees elevation (as the NeRF-synthetic
    test path) at a random starting azimuth. The seed moves every camera.
    """
    rng = np.random.default_rng(seed)
    z_lo, z_hi = 0.08, 0.92
    k = np.arange(n_train)
    golden = np.pi * (3 - math.sqrt(5))
    train = _unit(z_lo + (z_hi - z_lo) * (k + 0.5) / n_train, k * golden + rng.uniform(0, 2 * np.pi))
    val = _unit(rng.uniform(z_lo, z_hi, n_val), rng.uniform(0, 2 * np.pi, n_val))
    test = _unit(np.full(n_test, 0.5), rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(n_test) / max(n_test, 1))
    eyes = {"train": train, "val": val, "test": test}
    return {split: np.array([look_at(CAMERA_RADIUS * e) for e in pos]).reshape(-1, 4, 4) for split, pos in eyes.items()}


def _grid_rays(K: np.ndarray, c2w: np.ndarray, us: np.ndarray, vs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World rays (unit directions) through pixel positions (u = column, v = row, pixel units)."""
    v, u = np.meshgrid(vs, us, indexing="ij")
    y = (v.ravel() - K[1, 2]) / K[1, 1]
    x = (u.ravel() - K[0, 2] - K[0, 1] * y) / K[0, 0]
    d_cam = np.stack([x, -y, -np.ones_like(x)], axis=1)  # OpenGL: +y up, looking down -z
    d = _matmul(d_cam, c2w[:3, :3].T)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return np.broadcast_to(c2w[:3, 3], d.shape).copy(), d


def _shade(points: np.ndarray, ids: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Linear RGB of hit points: albedo x (ambient + diffuse from the light, shadowed)."""
    albedo = np.zeros_like(points)
    for k, s in enumerate(SOLIDS):
        m = ids == k
        if m.any():
            albedo[m] = s.albedo(_to_local(s, points[m]), _matmul(normals[m], s.rot))
    lambert = np.clip(_matmul(normals, LIGHT_DIR[:, None])[:, 0], 0.0, None)
    lit = lambert > 0
    if lit.any():
        idx = np.flatnonzero(lit)
        start = points[idx] + _SHADOW_OFFSET * normals[idx]
        lambert[idx[_occluded(start, np.broadcast_to(LIGHT_DIR, start.shape))]] = 0.0
    return albedo * (AMBIENT + (1 - AMBIENT) * lambert)[:, None]


def _linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(c, 1 / 2.4) - 0.055)


def _trapezoid(a: np.ndarray) -> np.ndarray:
    """(2H+1, 2W+1, ...) samples at half-pixel steps -> (H, W, ...) per-pixel trapezoid-rule averages."""
    a = 0.25 * a[0:-2:2] + 0.5 * a[1:-1:2] + 0.25 * a[2::2]
    return 0.25 * a[:, 0:-2:2] + 0.5 * a[:, 1:-1:2] + 0.25 * a[:, 2::2]


def render_view(K: np.ndarray, c2w: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one view: straight-alpha RGBA (H, W, 4) float in [0, 1] (sRGB colour) and z-depth (H, W).

    Rays at half-pixel steps (2W+1 x 2H+1) are shaded once and averaged per pixel with the trapezoid
    rule; depth is the centre ray's z-depth (0 where it misses).
    """
    us = np.arange(2 * width + 1) * 0.5
    vs = np.arange(2 * height + 1) * 0.5
    o, d = _grid_rays(K, c2w, us, vs)
    t, ids, normals = intersect(o, d)
    hit = ids >= 0
    colour = np.zeros_like(o)
    colour[hit] = _shade(o[hit] + t[hit, None] * d[hit], ids[hit], normals[hit])
    grid = (2 * height + 1, 2 * width + 1)
    cover = _trapezoid(hit.reshape(grid).astype(np.float64))
    premult = _trapezoid(colour.reshape(*grid, 3))
    rgb = _linear_to_srgb(premult / np.maximum(cover, 1e-12)[..., None])
    rgba = np.concatenate([np.where(cover[..., None] > 0, rgb, 0.0), cover[..., None]], axis=-1)
    # z-depth = along-ray distance times the ray's component along the camera's -z axis
    z = (t * -_matmul(d, c2w[:3, 2:3])[:, 0]).reshape(grid)[1::2, 1::2]
    depth = np.where(hit.reshape(grid)[1::2, 1::2], z, 0.0)
    return rgba, depth


# ----------------------------------------------------------------------------------------------------
# Writing the scene
# ----------------------------------------------------------------------------------------------------


def _write_png(path: Path, array: np.ndarray) -> None:
    # Pillow writes no timestamps or other varying chunks, so equal arrays give equal bytes.
    Image.fromarray(array).save(path, format="PNG", compress_level=6)


def _write_split(root: Path, split: str, poses: np.ndarray, size: int) -> None:
    if len(poses) == 0:  # readers treat a split file without frames as an error; write none
        return
    folder = root / split
    folder.mkdir()
    K = intrinsics(size)
    frames = []
    for k, c2w in enumerate(poses):
        rgba, depth = render_view(K, c2w, size, size)
        _write_png(folder / f"r_{k}.png", np.rint(rgba * 255).astype(np.uint8))
        steps = np.clip(np.rint(depth / DEPTH_UNIT_SCALE_FACTOR), 0, 65535).astype(np.uint16)
        # a hit must not quantise to 0, which means "no depth"
        steps[(depth > 0) & (steps == 0)] = 1
        _write_png(folder / f"r_{k}_depth.png", steps)
        frames.append(
            {
                "file_path": f"./{split}/r_{k}",
                "depth_file_path": f"./{split}/r_{k}_depth.png",
                "transform_matrix": c2w.tolist(),
            }
        )
    meta = {"camera_angle_x": CAMERA_ANGLE_X, "depth_unit_scale_factor": DEPTH_UNIT_SCALE_FACTOR, "frames": frames}
    (root / f"transforms_{split}.json").write_text(json.dumps(meta, indent=2) + "\n")


def make_scene(
    out_dir: str | os.PathLike,
    size: int = 128,
    n_train: int = 48,
    n_val: int = 8,
    n_test: int = 8,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the demo scene in Blender format to ``out_dir`` and return its path.

    ``size`` x ``size`` images; ``n_train``/``n_val``/``n_test`` views per split (see ``camera_poses``);
    a split with no views gets no ``transforms_{split}.json``.
    The same arguments write byte-identical files. A non-empty ``out_dir`` is refused unless
    ``overwrite`` is true, and even then only when it holds a Blender scene (a ``transforms_*.json``),
    so a mistyped path never deletes unrelated files. The scene is written to a hidden sibling folder
    and renamed into place, so an interrupted run never leaves a folder that looks complete.
    """
    out = Path(out_dir)
    if size < 1 or n_train < 1 or min(n_val, n_test) < 0:
        raise TvqError(
            f"make_scene needs size >= 1, n_train >= 1, n_val >= 0 and n_test >= 0 "
            f"(got size={size}, n_train={n_train}, n_val={n_val}, n_test={n_test})"
        )
    if out.exists() and not out.is_dir():
        raise TvqError(f"{out} exists and is not a folder")
    replace = out.is_dir() and any(out.iterdir())
    if replace and not overwrite:
        raise TvqError(f"{out} is not empty; use --force (overwrite=True) to replace it")
    if replace and not any(out.glob("transforms_*.json")):
        raise TvqError(f"{out} is not empty and holds no Blender scene; refusing to replace it")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        poses = camera_poses(n_train, n_val, n_test, seed)
        for split in ("train", "val", "test"):
            _write_split(tmp, split, poses[split], size)
        if out.is_dir():
            if replace:
                out.rename(old)
            else:
                out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return out
