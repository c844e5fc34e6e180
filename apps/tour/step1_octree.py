# %% [markdown]
# # Step 1: an octree from points
#
# Every tvq model lives on a sparse octree over the normalised cube [-1, 1]^3: level l has 2^l cells per
# axis, and only the cells that hold geometry (and all their ancestors) exist. This step builds one from a
# point cloud with the kernels of `tvq/kernels/octree_build.py` and checks it against its torch twin
# `tvq.reference.octree_from_points`.
#
# **Forward.** A world point x maps into the cube by x_n = (x - c) s. At the finest level L (R = 2^L cells
# per axis) its cell coordinate along each axis is
#
#     t = (x - c) k + h,   k = s R / 2,   h = R / 2,   i = min(floor(t), R - 1)
#
# computed in float64; points with t outside [0, R] are dropped (code -1), and a point on the upper face
# (t = R) belongs to the last cell. The cell is named by its Morton code, the bits of (i, j, k)
# interleaved (x lowest): `code = sum_b i_b << 3b | j_b << 3b+1 | k_b << 3b+2`. Sorting and
# deduplicating the codes gives the occupied leaves; a parent's code is its child's code >> 3, so every
# coarser level is one shift and one `unique_consecutive` away. Each cell's 8 corners
# (x + dx, y + dy, z + dz), corner c = dx | dy << 1 | dz << 2, are the level's feature vertices:
# sorted, deduplicated Morton codes, with a table cell -> 8 vertex rows.
#
# **Adjoint.** None: the output is discrete. The kernel is guarded by exact equality with the twin.
#
# **Taichi.** `point_codes_kernel(dtype)` returns a `@ti.kernel` whose arguments are
# `ti.types.ndarray(dtype=..., ndim=...)`: torch tensors are passed by pointer, no copy. The outermost
# `for n in range(points.shape[0])` of a kernel is a parallel loop (one thread per point, on the CPU a
# thread pool, on CUDA a grid); `morton3` and `spread_bits` are `@ti.func`s, inlined into the kernel.
# `for c in ti.static(range(8))` in `corner_codes` is unrolled at compile time.

# %%
from pathlib import Path

import numpy as np
import torch

from tvq import reference, runtime
from tvq.apps.tour.common import Step, figure, table
from tvq.data import synthetic
from tvq.kernels import octree_build
from tvq.octree import SparseOctree, morton_decode

MAX_LEVEL = 6
NUM_POINTS = 20000


# %% [markdown]
# ## A handful of points, by hand
#
# Five points at level 2 (4 cells per axis) with c = 0, s = 1: the kernel's codes beside the twin's
# bit-by-bit interleaving. The point on the upper corner lands in cell (3, 3, 3), the one outside gets -1.

# %%
def tiny_codes(step: Step) -> None:
    pts = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [0.1, -0.6, 0.3], [0.0, 0.0, 0.0], [1.2, 0.0, 0.0]],
                       dtype=torch.float64)
    res = 4
    codes = torch.empty(pts.shape[0], dtype=torch.int64, device=runtime.device())
    octree_build.point_codes_kernel(torch.float64)(pts.to(runtime.device()), codes, 0.0, 0.0, 0.0, res / 2, res / 2,
                                                   res)
    t = pts * (res / 2) + res / 2
    inside = ((t >= 0) & (t <= res)).all(dim=1)
    ijk = t.floor().long().clamp(max=res - 1)
    twin = torch.where(inside, reference.morton_bits(ijk), torch.full_like(inside, -1, dtype=torch.int64))
    rows = [(str(p.tolist()), str(i.tolist()) if ok else "outside", int(c), int(w))
            for p, i, ok, c, w in zip(pts, ijk, inside, codes.cpu(), twin)]
    step.log(table(["point", "cell (i, j, k)", "kernel code", "twin code"], rows))
    step.equal("Morton codes of five points", codes, twin)


# %% [markdown]
# ## The built-in scene's surface
#
# 20,000 points on the surfaces of the demo scene (`tvq.data.synthetic.surface_points`), up to level 6.
# The twin rebuilds every level with `torch.unique` on integer coordinates; the kernel path
# (`SparseOctree.from_points`) runs `point_codes`, sorts, shifts codes for the parents and `corner_codes`
# for the vertices. Cells, vertices and the cell -> vertex table must be identical at every level.

# %%
def surface_octree(step: Step):
    points = torch.from_numpy(synthetic.surface_points(NUM_POINTS, seed=0)).float()
    octree = SparseOctree.from_points(points.to(runtime.device()), MAX_LEVEL)
    cells, vertices, cell_vertices = reference.octree_from_points(points, MAX_LEVEL, octree.center, octree.scale)
    rows = []
    for level in range(MAX_LEVEL + 1):
        rows.append((level, octree.num_cells(level), int(cells[level].numel()), octree.num_vertices(level),
                     int(vertices[level].numel())))
    step.log(table(["level", "cells (kernel)", "cells (twin)", "vertices (kernel)", "vertices (twin)"], rows))
    for level in range(MAX_LEVEL + 1):
        step.equal(f"level {level}: cells, vertices, corner table",
                   torch.cat([octree.cells[level].cpu(), octree.vertices[level].cpu(),
                              octree.cell_vertices[level].cpu().long().reshape(-1)]),
                   torch.cat([cells[level], vertices[level], cell_vertices[level].long().reshape(-1)]))
    return points, octree


# %% [markdown]
# ## Slices at every level
#
# One horizontal slice of the cube (normalised z = 0.1) at every level: a cell is drawn when it is
# occupied and its z-range holds the slice. Each level's cells are the parents of the next level's; the
# last panel shows the points within half a level-6 cell of the slice.

# %%
def slice_picture(step: Step, points: torch.Tensor, octree: SparseOctree) -> None:
    z = 0.1
    fig = figure(2.0 * (MAX_LEVEL + 2) / 2, 4.2)
    axes = fig.subplots(2, (MAX_LEVEL + 2) // 2)
    for level, ax in zip(range(MAX_LEVEL + 1), axes.flat):
        res = 1 << level
        ijk = morton_decode(octree.cells[level].cpu())
        layer = int(np.clip(np.floor((z + 1) / 2 * res), 0, res - 1))
        image = np.zeros((res, res))
        sel = ijk[:, 2] == layer
        image[ijk[sel, 1].numpy(), ijk[sel, 0].numpy()] = 1.0
        ax.imshow(image, origin="lower", extent=(-1, 1, -1, 1), cmap="Blues", vmin=0, vmax=1.3)
        if level <= 4:  # the cell grid, where it is coarse enough to see
            for k in range(1, res):
                ax.axhline(-1 + 2 * k / res, color="0.75", lw=0.4)
                ax.axvline(-1 + 2 * k / res, color="0.75", lw=0.4)
        ax.set_title(f"level {level}: {int(sel.sum())} cells", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = axes.flat[MAX_LEVEL + 1]
    x = octree.normalize(points.double())
    near = (x[:, 2] - z).abs() < 1.0 / (1 << MAX_LEVEL)
    ax.scatter(x[near, 0], x[near, 1], s=1, c="k")
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_aspect("equal")
    ax.set_title("points near the slice", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    step.picture(fig, "octree_levels.png")


# %% [markdown]
# ## Timing
#
# The whole construction (kernels + torch sorts) against the twin, on the tour's device.

# %%
def measure(step: Step, num_points: int = NUM_POINTS, level: int = MAX_LEVEL) -> None:
    points = torch.from_numpy(synthetic.surface_points(num_points, seed=1)).float()
    on_device = points.to(runtime.device())
    octree = SparseOctree.from_points(on_device, level)
    on_cpu = runtime.device().type == "cpu"
    step.time("octree_build", f"{num_points} points, level {level}",
              lambda: SparseOctree.from_points(on_device, level),
              (lambda: reference.octree_from_points(points, level, octree.center, octree.scale)) if on_cpu else None,
              twin_note="the twin runs on the CPU")


# %%
def run(out: Path, log=print) -> dict:
    runtime.ensure()
    with Step("octree", out, log) as step:
        tiny_codes(step)
        points, octree = surface_octree(step)
        slice_picture(step, points, octree)
        measure(step)
        return step.result(cells=[octree.num_cells(level) for level in range(MAX_LEVEL + 1)])


if __name__ == "__main__":
    run(Path("tvq-tour"))
