# %% [markdown]
# # Step 3: ray marching through the octree
#
# Rendering needs samples along each camera ray, but only where the octree has cells: empty space
# holds no density. `tvq.sampling.raymarch` runs the two kernels of `tvq/kernels/raymarch.py` (`count`,
# then `fill`) and returns *packed* samples: ray r owns rows `ray_offsets[r]:ray_offsets[r+1]` of flat
# arrays `t`, `dt`, `ray_ids`. Its twin `tvq.reference.raymarch_reference` walks no grid at all.
#
# **Forward.** A ray x(t) = o + t d (unit d, normalised units) is clipped to the cube by the slab test,
# t_in = max(near, max_a min(ta, tb)), t_out = min(far, min_a max(ta, tb)), with ta, tb the crossings of
# the planes x_a = -1 and x_a = 1. Then a 3D DDA walks the level-L cells it crosses (h = 2 / 2^L): at each
# cell a binary search of its Morton code in the level's sorted codes says whether it is occupied; the
# exit distance is the smallest of the next plane crossings along the three axes. An occupied cell with
# segment [t0, t1] gets n samples
#
#     t_k = t0 + (k + u_k) (t1 - t0) / n,   dt_k = (t1 - t0) / n,   k = 0 .. n - 1,
#
# with u_k = 1/2, or with stratified jitter u_k = hash(seed, ray, k) in [0, 1): a counter-based hash,
# so every backend draws the same numbers. An empty cell costs more than nothing only once: the codes on
# either side of the failed search bound an empty Morton range, and the largest aligned block of
# 2^s x 2^s x 2^s cells inside that range is empty too, so the walk jumps over the whole block.
#
# The twin takes every crossing of every grid plane as a boundary, sorts them, and keeps the intervals
# whose midpoint lies in an occupied cell: no walk, no skipping, the same samples.
#
# **Adjoint.** None (t and dt are constants of the compositing step).
#
# **Taichi.** The walk is one `@ti.func` (`march`) called by both kernels; `fill: ti.template()` is a
# compile-time argument, so `if ti.static(fill)` removes the stores from the counting kernel. Each ray is
# one thread; its `while` loop runs serially in that thread. Between the two launches torch does the
# exclusive prefix sum (`offsets.cumsum_`) that tells every ray where its rows start.

# %%
from pathlib import Path

import numpy as np
import torch

from tvq import reference, runtime
from tvq.apps.tour.common import Step, figure, table
from tvq.data import synthetic
from tvq.octree import SparseOctree, morton_decode, morton_encode
from tvq.sampling import raymarch

LEVEL = 4
SAMPLES_PER_CELL = 3


def scene_octree(level: int = LEVEL) -> SparseOctree:
    points = torch.from_numpy(synthetic.surface_points(20000, seed=0)).float()
    return SparseOctree.from_points(points.to(runtime.device()), level)


def random_rays(n: int, seed: int, dtype=torch.float64):
    """Rays from a sphere of radius 2.5 around the cube towards random points inside it."""
    g = torch.Generator().manual_seed(seed)
    origins = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=1) * 2.5
    targets = torch.rand(n, 3, generator=g, dtype=torch.float64) * 1.6 - 0.8
    dirs = torch.nn.functional.normalize(targets - origins, dim=1)
    return origins.to(dtype), dirs.to(dtype)


def packed_agree(step: Step, what: str, got, want, atol: float) -> None:
    step.equal(f"{what}: ray offsets and ids", torch.cat([got.ray_offsets.cpu(), got.ray_ids.cpu().long()]),
               torch.cat([want.ray_offsets, want.ray_ids.long()]))
    step.agree(f"{what}: t and dt", torch.cat([got.t, got.dt]), torch.cat([want.t, want.dt]), atol=atol)


# %% [markdown]
# ## By hand
#
# Level 2 (h = 0.5) with two occupied cells in the row y = 1, z = 1: x-cells 0 and 2, i.e. x in
# [-1, -0.5] and [0, 0.5]. A ray from x = -2 along +x enters the cube at t = 1: its segments are
# [1, 1.5] and [2, 2.5], so with n = 2 the samples sit at t = 1.125, 1.375, 2.125, 2.375, dt = 0.25.

# %%
def by_hand(step: Step) -> None:
    octree = SparseOctree.from_leaf_codes(2, morton_encode(torch.tensor([[0, 1, 1], [2, 1, 1]]))).to(runtime.device())
    o = torch.tensor([[-2.0, -0.25, -0.25]], dtype=torch.float64, device=runtime.device())
    d = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64, device=runtime.device())
    got = raymarch(octree, o, d, 2, samples_per_cell=2)
    want = reference.raymarch_reference(octree.cells[2].cpu(), 2, o.cpu(), d.cpu(), samples_per_cell=2)
    hand = torch.tensor([1.125, 1.375, 2.125, 2.375], dtype=torch.float64)
    step.log(table(["sample", "t (kernel)", "t (twin)", "t (by hand)", "dt (kernel)"],
                   [(k, float(got.t[k]), float(want.t[k]), float(hand[k]), float(got.dt[k])) for k in range(4)]))
    step.agree("two cells by hand: t", got.t, hand, atol=1e-12)
    packed_agree(step, "two cells", got, want, atol=1e-12)


# %% [markdown]
# ## The scene's octree, against the twin
#
# 400 rays through the level-4 octree of the built-in scene, in float64 (where the kernel and the twin
# agree to rounding), with midpoints and with jitter from a seed; then the plain DDA
# (`skip_empty=False`, every empty cell visited) must give the same samples as the block-skipping walk.

# %%
def against_twin(step: Step, octree: SparseOctree) -> None:
    device = runtime.device()
    origins, dirs = random_rays(400, seed=1)
    o, d = origins.to(device), dirs.to(device)
    cells = octree.cells[LEVEL].cpu()
    for jitter in (False, True):
        got = raymarch(octree, o, d, LEVEL, samples_per_cell=SAMPLES_PER_CELL, jitter=jitter, seed=7)
        want = reference.raymarch_reference(cells, LEVEL, origins, dirs, samples_per_cell=SAMPLES_PER_CELL,
                                            jitter=jitter, seed=7)
        packed_agree(step, "jittered" if jitter else "midpoints", got, want, atol=1e-12)
    step.log(f"  {got.num_samples} samples on {int((got.counts() > 0).sum())} of {got.num_rays} rays")
    plain = raymarch(octree, o, d, LEVEL, samples_per_cell=SAMPLES_PER_CELL, skip_empty=False)
    skipping = raymarch(octree, o, d, LEVEL, samples_per_cell=SAMPLES_PER_CELL)
    packed_agree(step, "block skipping = plain DDA", skipping, plain, atol=1e-12)


# %% [markdown]
# ## Samples along a few rays, in a slice
#
# Rays in the horizontal plane through the middle of one cell layer (d_z = 0, so they stay in it): the
# layer's occupied cells in blue, the kernel's samples as dots, the twin's as crosses. Samples fall only
# in occupied cells, `SAMPLES_PER_CELL` per cell crossed, closer together where the ray clips a corner.

# %%
def slice_picture(step: Step, octree: SparseOctree) -> None:
    res = 1 << LEVEL
    layer = 9
    z = (layer + 0.5) / res * 2 - 1
    starts = np.linspace(-0.85, 0.85, 7)
    origins = torch.tensor([[-1.6, y, z] for y in starts])
    targets = torch.tensor([[1.6, -0.7 * y + 0.15 * np.sin(5 * y), z] for y in starts])
    dirs = torch.nn.functional.normalize(targets - origins, dim=1)
    dirs[:, 2] = 0.0
    got = raymarch(octree, origins.to(runtime.device()), dirs.to(runtime.device()), LEVEL,
                   samples_per_cell=SAMPLES_PER_CELL)
    want = reference.raymarch_reference(octree.cells[LEVEL].cpu(), LEVEL, origins, dirs,
                                        samples_per_cell=SAMPLES_PER_CELL)
    packed_agree(step, "slice rays", got, want, atol=1e-12)
    ijk = morton_decode(octree.cells[LEVEL].cpu())
    image = np.zeros((res, res))
    sel = ijk[:, 2] == layer
    image[ijk[sel, 1].numpy(), ijk[sel, 0].numpy()] = 1.0
    fig = figure(4.6, 4.2)
    ax = fig.subplots()
    ax.imshow(image, origin="lower", extent=(-1, 1, -1, 1), cmap="Blues", vmin=0, vmax=2.2)
    for k in range(res + 1):
        ax.axhline(-1 + 2 * k / res, color="0.85", lw=0.4)
        ax.axvline(-1 + 2 * k / res, color="0.85", lw=0.4)
    x = got.positions(origins.to(got.t), dirs.to(got.t)).cpu()
    xw = want.positions(origins, dirs)
    colours = [f"C{r}" for r in range(len(starts))]
    for r in range(len(starts)):
        end = origins[r] + 4.0 * dirs[r]
        ax.plot([origins[r, 0], end[0]], [origins[r, 1], end[1]], color=colours[r], lw=0.6)
        rows = slice(int(got.ray_offsets[r]), int(got.ray_offsets[r + 1]))
        ax.scatter(x[rows, 0], x[rows, 1], s=12, color=colours[r], zorder=3)
        ax.scatter(xw[rows, 0], xw[rows, 1], s=5, marker="x", color="k", lw=0.5, zorder=4)
    ax.set_xlim(-1.1, 1.1)
    ax.set_ylim(-1.1, 1.1)
    ax.set_title(f"level {LEVEL}, slice z = {z:.4f}: samples (dots), twin (crosses)", fontsize=8)
    step.picture(fig, "raymarch_samples.png")


# %% [markdown]
# ## Timing
#
# Float32 rays for the kernel (the training dtype); the twin always computes in float64.

# %%
def measure(step: Step, num_rays: int = 1024, level: int = 5) -> None:
    octree = scene_octree(level)
    origins, dirs = random_rays(num_rays, seed=3)
    o, d = origins.float().to(runtime.device()), dirs.float().to(runtime.device())
    cells = octree.cells[level].cpu()
    step.time("raymarch", f"{num_rays} rays, level {level}, {SAMPLES_PER_CELL} samples per cell",
              lambda: raymarch(octree, o, d, level, samples_per_cell=SAMPLES_PER_CELL),
              (lambda: reference.raymarch_reference(cells, level, origins, dirs, samples_per_cell=SAMPLES_PER_CELL))
              if runtime.device().type == "cpu" else None, twin_note="the twin runs on the CPU")


# %%
def run(out: Path, log=print) -> dict:
    runtime.ensure()
    with Step("raymarch", out, log) as step:
        by_hand(step)
        octree = scene_octree()
        against_twin(step, octree)
        slice_picture(step, octree)
        measure(step)
        return step.result()


if __name__ == "__main__":
    run(Path("tvq-tour"))
