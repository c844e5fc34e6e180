"""Octree construction: ``SparseOctree.from_points`` on a surface scan and ``from_masks`` (visual hull).

from_points: 10^7 points (``--small``: 10^5) sampled on the surfaces of a still life (a sphere, a torus,
a box's faces, thin rods and a ground disc, with scan-like noise) in world units, built to max_level 8,
with and without a one-cell dilation; wall time (the whole call: normalisation, Morton codes, sorting,
ancestors, vertex tables), peak GPU memory, and cells / vertices per level. from_masks: silhouettes of a
union of spheres and capsules rendered from 100 cameras on a hemisphere (lego-like: radius 4, lego's field
of view) at 400x400, carved to level 8 with the bounding box taken from the cameras (``--small``: 50
views of 200x200, level 7).

    python -m benchmarks.bench_octree [--small] [--out results.json]
"""

from __future__ import annotations

import sys

import math

import torch

from benchmarks._timing import device_name, peak_memory_bytes, standalone_main, time_ms

LEGO_ANGLE_X = 0.6911112070083618


def scan_points(n: int, device, seed: int = 0) -> torch.Tensor:
    """(n, 3) float32 points on the surfaces of a still life spanning about 6 world units, with noise."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    parts = torch.multinomial(torch.tensor([0.25, 0.2, 0.25, 0.1, 0.2]), n, replacement=True, generator=g)
    counts = torch.bincount(parts, minlength=5).tolist()
    u = lambda k, d=1: torch.rand(k, d, generator=g, dtype=torch.float64)  # noqa: E731
    out = []
    # sphere
    s = torch.randn(counts[0], 3, generator=g, dtype=torch.float64)
    out.append(1.2 * s / s.norm(dim=1, keepdim=True) + torch.tensor([0.8, 0.5, 1.2], dtype=torch.float64))
    # torus (major 1.0, minor 0.3), lying flat
    a, b = 2 * math.pi * u(counts[1]), 2 * math.pi * u(counts[1])
    r = 1.0 + 0.3 * torch.cos(b)
    out.append(torch.cat([r * torch.cos(a) - 1.5, r * torch.sin(a) - 1.0, 0.3 * torch.sin(b) + 0.3], 1))
    # box faces
    p = u(counts[2], 3) * 2 - 1
    face = torch.randint(0, 3, (counts[2],), generator=g)
    rows = torch.arange(counts[2])
    p[rows, face] = torch.sign(p[rows, face])
    f64 = dict(dtype=torch.float64)
    out.append(p * torch.tensor([0.7, 1.1, 0.6], **f64) + torch.tensor([-1.2, 1.6, 0.6], **f64))
    # thin rods (radius 0.03) between fixed end points
    ends = torch.tensor([[[1.5, -1.5, 0.0], [2.2, -0.5, 2.5]], [[-0.5, 0.0, 0.0], [0.3, -1.8, 1.9]]], **f64)
    which = torch.randint(0, 2, (counts[3],), generator=g)
    t, phi = u(counts[3]), 2 * math.pi * u(counts[3])
    axis_pts = ends[which, 0] + t * (ends[which, 1] - ends[which, 0])
    out.append(axis_pts + 0.03 * torch.cat([torch.cos(phi), torch.sin(phi), torch.zeros_like(phi)], 1))
    # ground disc of radius 3
    rad, ang = 3.0 * u(counts[4]).sqrt(), 2 * math.pi * u(counts[4])
    out.append(torch.cat([rad * torch.cos(ang), rad * torch.sin(ang), torch.zeros_like(rad)], 1))
    points = torch.cat(out)
    points = points + 2e-3 * torch.randn(points.shape, generator=g, dtype=torch.float64)  # scanner noise
    return points[torch.randperm(n, generator=g)].float().to(device)


def hemisphere_cameras(n: int, radius: float = 4.0) -> torch.Tensor:
    """(n, 4, 4) camera-to-world (OpenGL) on a Fibonacci spiral over the upper hemisphere, looking at 0."""
    k = torch.arange(n, dtype=torch.float64)
    z = 0.05 + 0.9 * (k + 0.5) / n
    phi = k * math.pi * (3 - math.sqrt(5))
    eye = radius * torch.stack([(1 - z * z).sqrt() * torch.cos(phi), (1 - z * z).sqrt() * torch.sin(phi), z], 1)
    forward = -eye / eye.norm(dim=1, keepdim=True)
    right = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(forward))
    right = right / right.norm(dim=1, keepdim=True)
    up = torch.linalg.cross(right, forward)
    c2w = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, up, -forward, eye
    return c2w


def silhouettes(Ks: torch.Tensor, c2ws: torch.Tensor, size: int, device) -> torch.Tensor:
    """(V, size, size) float32 alpha of a union of spheres and capsules (pixel-centre rays)."""
    spheres = torch.tensor([[0.2, 0.1, 0.3, 0.55], [-0.5, -0.4, -0.2, 0.35], [0.5, -0.6, 0.7, 0.25]],
                           dtype=torch.float64, device=device)
    capsules = torch.tensor([[-0.9, 0.6, -0.8, 0.7, 0.8, 0.9, 0.05], [0.9, -0.9, -0.9, 0.9, 0.9, -0.9, 0.08]],
                            dtype=torch.float64, device=device)
    j, i = torch.meshgrid(torch.arange(size, device=device) + 0.5, torch.arange(size, device=device) + 0.5,
                          indexing="ij")
    out = []
    for K, c2w in zip(Ks.to(device), c2ws.to(device)):
        d = torch.stack([(i - K[0, 2]) / K[0, 0], -(j - K[1, 2]) / K[1, 1], -torch.ones_like(i)], -1).reshape(-1, 3)
        d = d.double() @ c2w[:3, :3].T
        d = d / d.norm(dim=1, keepdim=True)
        o = c2w[:3, 3]
        hit = torch.zeros(d.shape[0], dtype=torch.bool, device=device)
        for cx, cy, cz, radius in spheres.tolist():
            w = torch.tensor([cx, cy, cz], dtype=torch.float64, device=device) - o
            hit |= (w - (d @ w)[:, None] * d).norm(dim=1) < radius
        for *ab, radius in capsules.tolist():
            a = torch.tensor(ab[:3], dtype=torch.float64, device=device)
            e = torch.tensor(ab[3:], dtype=torch.float64, device=device) - a
            w0 = o - a
            b, dd = d @ e, d @ w0
            s = ((e @ w0 - b * dd) / (e @ e - b * b).clamp_min(1e-12)).clamp(0, 1)
            dist2 = ((w0 - s[:, None] * e) ** 2).sum(1) - (dd - s * b) ** 2
            hit |= dist2 < radius**2
        out.append(hit.reshape(size, size).float())
    return torch.stack(out)


def bench_from_points(device, n: int, max_level: int) -> dict:
    from tvq.octree import SparseOctree

    points = scan_points(n, device)
    results = {"points": n, "max_level": max_level}
    for dilate in (0, 1):
        build = lambda: SparseOctree.from_points(points, max_level, dilate=dilate)  # noqa: E731
        octree = build()
        entry = time_ms(build, device, warmup=2, iters=5)
        entry["peak_memory_bytes"] = peak_memory_bytes(build, device)
        entry["cells_per_level"] = [octree.num_cells(level) for level in range(max_level + 1)]
        entry["vertices_per_level"] = [octree.num_vertices(level) for level in range(max_level + 1)]
        entry["points_per_s"] = n / (entry["median_ms"] * 1e-3)
        results[f"dilate_{dilate}"] = entry
    return results


def bench_from_masks(device, views: int, size: int, max_level: int) -> dict:
    from tvq.octree import SparseOctree

    c2ws = hemisphere_cameras(views)
    f = 0.5 * size / math.tan(0.5 * LEGO_ANGLE_X)
    K = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    Ks = K.repeat(views, 1, 1)
    alphas = silhouettes(Ks, c2ws, size, device)
    carve = lambda: SparseOctree.from_masks(Ks, c2ws, alphas, max_level)  # noqa: E731
    octree = carve()
    entry = time_ms(carve, device, warmup=1, iters=3)
    entry.update(
        views=views,
        size=size,
        max_level=max_level,
        foreground_fraction=float((alphas > 0.5).float().mean()),
        peak_memory_bytes=peak_memory_bytes(carve, device),
        cells_per_level=[octree.num_cells(level) for level in range(max_level + 1)],
        vertices_per_level=[octree.num_vertices(level) for level in range(max_level + 1)],
        cube_half_extent=1.0 / octree.scale,
        center=octree.center.tolist(),
    )
    return entry


def run(device: str, small: bool) -> dict:
    from tvq import runtime

    runtime.ensure()
    device = torch.device(device)
    if device != runtime.device():
        raise ValueError(f"Taichi runs on {runtime.device()}, not {device}")
    points, masks = ((10**5, 8), (50, 200, 7)) if small else ((10**7, 8), (100, 400, 8))
    return {
        "benchmark": "octree",
        "device": device_name(device),
        "taichi_arch": runtime.ensure().arch,
        "small": small,
        "from_points": bench_from_points(device, *points),
        "from_masks": bench_from_masks(device, *masks),
    }


def main(argv=None) -> int:
    return standalone_main(run, __doc__.splitlines()[0], "10^5 points; 50 views of 200x200 at level 7", argv)


if __name__ == "__main__":
    sys.exit(main())
