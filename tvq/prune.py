"""Which finest-level cells does the field actually use? Rendering weight per cell over training rays.

For a sample i on a ray, its rendering weight is w_i = T_i (1 - exp(-sigma_i dt_i)) (from the compositing
kernel); a cell's score is the largest weight of any sample inside it over a large random subset of the
training rays. Cells of a visual hull's interior, or of space the field has made transparent, score ~0
and can be dropped.
"""

from __future__ import annotations

import torch

from .octree import morton_encode


def cell_of_points(points: torch.Tensor, codes: torch.Tensor, level: int) -> torch.Tensor:
    """Row of each normalised point's level cell in the sorted ``codes``, or -1 when unoccupied."""
    res = 1 << level
    ijk = ((points + 1) * 0.5 * res).floor().long().clamp(0, res - 1)
    key = morton_encode(ijk)
    rows = torch.searchsorted(codes, key).clamp(max=max(codes.numel() - 1, 0))
    return torch.where(codes[rows] == key, rows, torch.full_like(rows, -1))


@torch.no_grad()
def sample_weights(field, origins_n: torch.Tensor, dirs: torch.Tensor, background: torch.Tensor,
                   samples_per_cell: int = 4, max_samples_per_ray: int = 1024):
    """Every sample of the training marcher on normalised rays at the field's finest LOD, with its rendering
    weight T (1 - exp(-sigma dt)): ``(points (S, 3), weights (S,))``, or None when no ray meets a cell."""
    from .ops import composite
    from .sampling import raymarch

    octree = field.octree
    lod = field.num_lods - 1
    packed = raymarch(octree, origins_n, dirs, field.grid.levels[lod], samples_per_cell=samples_per_cell,
                      max_samples_per_ray=max_samples_per_ray)
    if packed.num_samples == 0:
        return None
    points = packed.positions(origins_n, dirs)
    sigma, rgb = field(points, dirs, lod, packed.ray_ids)
    weights = composite(sigma, rgb, packed.t, packed.dt, packed.ray_offsets, background,
                        return_weights=True).weights
    return points, weights


def vertex_rows(grid, octree, levels=None) -> torch.Tensor:
    """For every vertex of ``octree``'s feature ``levels`` (default: the grid's; a pruned or subdivided copy of
    the grid's octree), its row in the grid's vertex table, or -1 for a vertex the grid does not hold (a level
    the grid does not have: the finest one after a subdivision)."""
    rows = []
    for level in grid.levels if levels is None else levels:
        wanted = octree.vertices[level]
        if level not in grid.levels:
            rows.append(torch.full_like(wanted, -1, dtype=torch.int64))
            continue
        held = grid.octree.vertices[level]
        at = torch.searchsorted(held, wanted).clamp(max=max(held.numel() - 1, 0))
        start = int(grid.flat.vertex_start[grid.levels.index(level)])
        rows.append(torch.where(held[at] == wanted, at + start, torch.full_like(at, -1)))
    return torch.cat(rows)


@torch.no_grad()
def cell_max_weights(field, data, config, num_rays: int | None = None, chunk: int = 1 << 13) -> torch.Tensor:
    """Max rendering weight of each finest-level cell over ``num_rays`` random training rays."""
    codes = field.octree.cells[field.octree.max_level]
    best = torch.zeros(codes.numel(), device=codes.device)
    num_rays = num_rays or min(data.num_pixels, 1 << 20)
    gen = torch.Generator(device=codes.device).manual_seed(config.seed + 1)
    flat = torch.randperm(data.num_pixels, generator=gen, device=codes.device)[:num_rays]
    for start in range(0, flat.numel(), chunk):
        origins, dirs, _ = data.rays_at(flat[start:start + chunk])
        add_cell_max_weights(best, field, origins, dirs, data.background, config.samples_per_cell,
                             config.max_samples_per_ray)
    return best


@torch.no_grad()
def add_cell_max_weights(best: torch.Tensor, field, origins: torch.Tensor, dirs: torch.Tensor,
                         background: torch.Tensor, samples_per_cell: int = 4, max_samples_per_ray: int = 1024) -> None:
    """Raise ``best`` (one entry per finest-level cell) to the largest rendering weight of any sample of
    these world-space rays inside each cell."""
    octree = field.octree
    level = octree.max_level
    found = sample_weights(field, octree.normalize(origins), dirs, background, samples_per_cell, max_samples_per_ray)
    if found is None:
        return
    points, w = found
    rows = cell_of_points(points, octree.cells[level], level)
    ok = rows >= 0
    best.scatter_reduce_(0, rows[ok], w[ok], reduce="amax")
