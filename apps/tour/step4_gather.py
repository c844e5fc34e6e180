# %% [markdown]
# # Step 4: the trilinear gather over levels
#
# A sample's feature is the sum, over the feature levels, of the trilinear interpolation of the 8
# corner features of its cell (`tvq/kernels/gather.py`, op `tvq.ops.gather`, twin `tvq.reference.gather`).
# This is the first differentiable kernel: its backward is written by hand, and float64 `gradcheck`
# compares it with finite differences of the forward.
#
# **Forward.** For a point x and level k with r_k = 2^l cells per axis:
#
#     u = (x + 1) r_k / 2,   i = min(floor(u), r_k - 1),   f = u - i            (f in [0, 1]^3)
#     w_c = prod_a (f_a if bit a of c else 1 - f_a)        corner c = dx | dy << 1 | dz << 2
#     z(x) = sum_{k < lod} [cell i occupied] sum_c w_c T[v_k(i, c)]
#
# The cell is found by a binary search of morton3(i) in level k's sorted codes (only among the children
# of the point's level-(k-1) cell, when that level precedes it), and v_k(i, c) is its row in the cell ->
# vertex table. Unoccupied cells and points outside the closed cube contribute zero.
#
# **Adjoint.** z is linear in T, so with g = dL/dz(x) every corner the forward read receives its weight
# times g:
#
#     dT[v_k(i, c)] += w_c(x) g(x)      for every used level whose cell is occupied.
#
# Many samples touch one vertex, so the adds are atomic. The forward records each sample's cell row
# per level (`rows`), so the backward needs no search; it runs one thread per (chunk of 32 consecutive
# samples, level, corner), sums w_c g over each run of samples in the same cell (packed ray samples
# come in such runs) and issues one atomic add per run instead of one per sample.
#
# **Taichi.** `gather_kernels(dtype, F)` is a factory cached with `functools.lru_cache` on the static
# configuration; inside, `ti.types.ndarray(dtype=ti.types.vector(F, dtype), ndim=1)` makes each row of
# the (N, F) torch tensor one vector load or store. `sum_levels`, `locate`, `corner_weight` and
# `scatter_chunk` are `@ti.func`s; `ti.atomic_add(grad_table[v][f], acc[f])` is the scatter;
# `for c in ti.static(range(8))` unrolls the corners. The octree itself travels as one packed int64
# tensor (`pack_octree`): every extra ndarray argument costs host time at each launch.

# %%
from pathlib import Path

import numpy as np
import torch

from tvq import ops, reference, runtime
from tvq.apps.tour.common import Step, backward_of, figure, table
from tvq.data import synthetic
from tvq.octree import SparseOctree, morton_encode
from tvq.sampling import raymarch

LEVELS = (3, 4, 5)  # the feature levels of a 3-LOD model with max_level 5
F = 16
ATOL32, RTOL32 = 2e-5, 1e-5  # float32: sums of at most 3 x 8 products of O(1) numbers


def scene_octree(max_level: int = 5) -> SparseOctree:
    points = torch.from_numpy(synthetic.surface_points(20000, seed=0)).float()
    return SparseOctree.from_points(points.to(runtime.device()), max_level)


def sample_points(octree: SparseOctree, num_rays: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Packed ray samples (runs of samples in one cell), uniform points (outside, empty cells) and points
    snapped to level-5 cell faces and vertices."""
    g = torch.Generator().manual_seed(seed)
    origins = torch.nn.functional.normalize(torch.randn(num_rays, 3, generator=g), dim=1) * 2.5
    dirs = torch.nn.functional.normalize(torch.rand(num_rays, 3, generator=g) * 1.6 - 0.8 - origins, dim=1)
    device = runtime.device()
    s = raymarch(octree, origins.to(device), dirs.to(device), octree.max_level, samples_per_cell=4)
    along = s.positions(origins.to(device), dirs.to(device)).cpu().double()
    uniform = torch.rand(num_rays, 3, generator=g, dtype=torch.float64) * 2.4 - 1.2
    snapped = along[torch.randint(0, along.shape[0], (num_rays,), generator=g)]
    snapped = torch.where(torch.rand(num_rays, 3, generator=g) < 0.5, torch.round((snapped + 1) * 16) / 16 - 1, snapped)
    return torch.cat([along, uniform, snapped]).to(dtype=dtype, device=device)


# %% [markdown]
# ## One cell by hand
#
# One occupied level-2 cell, (1, 2, 1), so the table has exactly its 8 corner vertices. Gathering the
# identity table (vertex v's feature is the unit vector e_v) returns the 8 trilinear weights
# themselves: the kernel's weights beside the formula's and the twin's.

# %%
def one_cell(step: Step):
    device = runtime.device()
    flat = SparseOctree.from_leaf_codes(2, morton_encode(torch.tensor([[1, 2, 1]]))).to(device).flat([2])
    table_ = torch.eye(8, F, device=device)  # rows: vertices; the first 8 columns: e_v
    lo = torch.tensor([1, 2, 1], dtype=torch.float32) * 0.5 - 1  # the cell's lower corner
    frac = torch.tensor([0.2, 0.7, 0.4])
    point = (lo + 0.5 * frac)[None].to(device)
    got = ops.gather(point, flat, table_, 1)[0, :8].cpu()
    corners = flat.cell_vertices[0].long().cpu()  # vertex row of corner c
    by_corner = got[corners]
    formula = torch.tensor([np.prod([frac[a] if (c >> a) & 1 else 1 - frac[a] for a in range(3)]) for c in range(8)])
    _, rows, w = reference.locate_cells(point, flat, 0)  # the twin's corner rows and weights
    twin = torch.zeros(8).index_add_(0, rows[0].cpu(), w[0].cpu())[corners]
    step.log(table(["corner c", "(dx, dy, dz)", "kernel w_c", "formula", "twin"],
                   [(c, str((c & 1, (c >> 1) & 1, (c >> 2) & 1)), float(by_corner[c]), float(formula[c]),
                     float(twin[c])) for c in range(8)], [None, None, "{:.6f}", "{:.6f}", "{:.6f}"]))
    step.agree("weights of one point, formula", by_corner, formula, atol=1e-6)
    step.agree("weights of one point, twin", by_corner, twin, atol=1e-6)
    return frac, by_corner, formula


# %% [markdown]
# ## Against the twin, forward and backward
#
# The scene's octree at levels 3, 4, 5 with random features (F = 16), about 4,000 points; every LOD
# from 1 to 3 levels. The backward takes a random cotangent: autograd through the twin's plain torch
# indexing gives the reference gradient.

# %%
def against_twin(step: Step, octree: SparseOctree):
    flat = octree.flat(LEVELS)
    points = sample_points(octree, 300, seed=1)
    g = torch.Generator().manual_seed(2)
    features = torch.randn(flat.num_vertices, F, generator=g).to(runtime.device()).requires_grad_(True)
    for lod in (1, 2, 3):
        out = ops.gather(points, flat, features, lod)
        ref = reference.gather(points, flat, features, lod)
        if lod == 3:
            rows = [(s, f, float(out[s, f].detach()), float(ref[s, f].detach())) for s in range(3) for f in range(2)]
            step.log(table(["sample", "feature", "kernel z", "twin z"], rows,
                           [None, None, "{:+.6f}", "{:+.6f}"]))
        step.agree(f"gather, lod {lod}: features", out, ref, atol=ATOL32, rtol=RTOL32)
        cot = torch.randn(out.shape, generator=g).to(out)
        (grad,) = torch.autograd.grad(out, features, cot)
        (grad_ref,) = torch.autograd.grad(ref, features, cot)
        step.agree(f"gather, lod {lod}: dL/dfeatures", grad, grad_ref, atol=1e-4, rtol=1e-5)
    step.log(f"  {points.shape[0]} points, {flat.num_vertices} vertices, "
             f"{float((ref != 0).any(dim=1).float().mean()):.0%} of the points read an occupied cell")
    return flat, features


# %% [markdown]
# ## gradcheck in float64
#
# Finite differences of the forward against the hand-written backward, at a tiny size (levels 2 and
# 3, 40 points, F = 2). Atomics make the sum order, and so the last bits, vary between runs: gradcheck
# allows a nondeterminism of 1e-12.

# %%
def gradcheck(step: Step, octree: SparseOctree) -> None:
    flat = octree.flat((2, 3))
    points = sample_points(octree, 14, seed=3, dtype=torch.float64)[:40]
    g = torch.Generator().manual_seed(4)
    features = torch.randn(flat.num_vertices, 2, generator=g, dtype=torch.float64).to(runtime.device())
    step.gradcheck("ops.gather (float64)", lambda f: ops.gather(points, flat, f, 2), (features.requires_grad_(True),),
                   nondet_tol=1e-12)


# %% [markdown]
# ## Interpolation weights
#
# Left: the 8 weights of the one-cell point above (kernel bars, formula dots); they sum to one. Middle
# and right: feature 0 of the gather on the slice z = 0.1 with one level (lod 1, level 3: coarse
# trilinear patches) and with all three levels summed (lod 3); white where no level's cell is occupied.

# %%
def weights_picture(step: Step, frac, by_corner, formula, octree: SparseOctree, flat, features) -> None:
    fig = figure(9.6, 3.0)
    axes = fig.subplots(1, 3)
    ax = axes[0]
    ax.bar(range(8), by_corner.numpy(), color="C0", label="kernel")
    ax.scatter(range(8), formula.numpy(), color="k", s=12, zorder=3, label="formula")
    ax.set_xticks(range(8), [f"{c & 1}{(c >> 1) & 1}{(c >> 2) & 1}" for c in range(8)], fontsize=7)
    ax.set_xlabel("corner (dx dy dz)", fontsize=8)
    ax.set_title(f"w_c at f = {tuple(round(float(v), 2) for v in frac)}", fontsize=8)
    ax.legend(fontsize=7)
    n = 96
    g = (torch.arange(n, dtype=torch.float32) + 0.5) / n * 2 - 1
    gy, gx = torch.meshgrid(g, g, indexing="ij")
    grid = torch.stack([gx, gy, torch.full_like(gx, 0.1)], -1).reshape(-1, 3).to(runtime.device())
    with torch.no_grad():
        for ax, lod in zip(axes[1:], (1, 3)):
            value = ops.gather(grid, flat, features, lod)[:, 0].reshape(n, n).cpu().numpy()
            shown = np.ma.masked_where(value == 0, value)
            im = ax.imshow(shown, origin="lower", extent=(-1, 1, -1, 1), cmap="coolwarm", vmin=-3, vmax=3)
            ax.set_title(f"feature 0, lod {lod} (levels {', '.join(map(str, LEVELS[:lod]))})", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=axes[2], shrink=0.8)
    step.picture(fig, "gather_weights.png")


# %% [markdown]
# ## Timing
#
# 16,384 packed ray samples, three levels, F = 16; forward, and forward + backward.

# %%
def measure(step: Step, num_points: int = 16384) -> None:
    octree = scene_octree()
    flat = octree.flat(LEVELS)
    points = sample_points(octree, num_points // 16, seed=5)[:num_points]
    features = torch.randn(flat.num_vertices, F, device=runtime.device()).requires_grad_(True)
    fwd = lambda: ops.gather(points, flat, features, 3)  # noqa: E731
    twin = lambda: reference.gather(points, flat, features, 3)  # noqa: E731
    step.time("gather", f"{points.shape[0]} samples, {len(LEVELS)} levels, F = {F}", fwd, twin,
              backward_of(fwd, [features]), backward_of(twin, [features]))


# %%
def run(out: Path, log=print) -> dict:
    runtime.ensure()
    with Step("gather", out, log) as step:
        frac, by_corner, formula = one_cell(step)
        octree = scene_octree()
        flat, features = against_twin(step, octree)
        gradcheck(step, octree)
        weights_picture(step, frac, by_corner, formula, octree, flat, features.detach())
        measure(step)
        return step.result()


if __name__ == "__main__":
    run(Path("tvq-tour"))
