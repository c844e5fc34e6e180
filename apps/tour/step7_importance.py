# %% [markdown]
# # Step 7: importance
#
# Which vertices matter for the images? VQRF-style pruning and importance-weighted k-means weigh each
# vertex by how much the training rays' compositing weights pass through it
# (`tvq/kernels/importance.py`, op `tvq.ops.importance`, twin `tvq.reference.importance`).
#
# **Forward.** With the compositing weight omega_s = T_s alpha_s of every sample (step 6) and the
# trilinear weights w_c(x_s) of the gather (step 4),
#
#     I[v] = sum_s omega_s sum_{k, c : v_k(i_k(x_s), c) = v} w_c(x_s)
#
# over the used levels. That is exactly the gather's backward (dT[v] += w_c g) with the scalar
# cotangent g_s = omega_s: the kernel is built from the gather's pieces, a first parallel loop that
# finds each sample's cell row per level (`locate`, as the gather's forward records it) and a second
# that runs the gather's chunked atomic scatter (`scatter_chunk`) with F = 1.
#
# **Adjoint.** None (forward only). Guarded by the twin, by the identity with the gather's backward,
# and by a partition of unity: trilinear weights sum to one, so each level's importance sums to the
# weight of the samples that fall in its occupied cells.
#
# **Taichi.** Nothing new: `@ti.func`s shared between kernels are how tvq reuses code; the two loops
# of one kernel run one after the other, each in parallel.

# %%
from pathlib import Path

import numpy as np
import torch

from tvq import ops, reference, runtime
from tvq.apps.tour.common import Step, figure, table
from tvq.data import synthetic
from tvq.data.rays import pixel_rays
from tvq.octree import SparseOctree, morton_decode, morton_encode
from tvq.ops import composite
from tvq.sampling import raymarch

LEVELS = (3, 4, 5)


# %% [markdown]
# ## One sample by hand
#
# A sample of weight 2 at the centre of the level-1 cell (1, 0, 1): each of its 8 corners gets
# 2 x 1/8 at level 1; at level 0 the same point sits at (3/4, 1/4, 3/4) of the root cell.

# %%
def by_hand(step: Step) -> None:
    device = runtime.device()
    flat = SparseOctree.from_leaf_codes(1, morton_encode(torch.tensor([[1, 0, 1]]))).to(device).flat([0, 1])
    got = ops.importance(torch.tensor([[0.5, -0.5, 0.5]], device=device), flat, torch.tensor([2.0], device=device))
    expected = torch.zeros(flat.num_vertices)
    expected[flat.cell_vertices[1].long().cpu()] = 0.25
    frac = (0.75, 0.25, 0.75)
    w0 = torch.tensor([[frac[a] if (c >> a) & 1 else 1 - frac[a] for a in range(3)] for c in range(8)]).prod(dim=1)
    expected[flat.cell_vertices[0].long().cpu()] = 2 * w0
    step.log(table(["vertex row", "level", "kernel I", "by hand"],
                   [(v, 0 if v < 8 else 1, float(got[v]), float(expected[v])) for v in range(flat.num_vertices)],
                   [None, None, "{:.6f}", "{:.6f}"]))
    step.agree("one sample by hand", got, expected, atol=1e-6)


# %% [markdown]
# ## Importance of the built-in scene's vertices
#
# Every pixel ray of eight 32x32 training views, marched through the scene's level-5 octree; the
# density is the soft step of the signed distance from step 6, the weights come from `composite`
# (return_weights=True). Then the importance of the vertices of levels 3, 4 and 5.

# %%
def scene_samples(num_views: int = 8, size: int = 32):
    device = runtime.device()
    points = torch.from_numpy(synthetic.surface_points(20000, seed=0)).float()
    octree = SparseOctree.from_points(points.to(device), 5)
    K = synthetic.intrinsics(size)
    origins, dirs = [], []
    for c2w in synthetic.camera_poses(num_views, 0, 0, seed=0)["train"]:
        o, d = pixel_rays(K, c2w, width=size, height=size)
        origins.append(o)
        dirs.append(d)
    o = octree.normalize(torch.cat(origins).double()).float().to(device)
    d = torch.cat(dirs).float().to(device)
    s = raymarch(octree, o, d, 5, samples_per_cell=4)
    x = s.positions(o, d)
    sdf = torch.from_numpy(synthetic.sdf(octree.denormalize(x.double().cpu()).numpy()))
    sigma = (30 * torch.sigmoid(-sdf / 0.02)).float().to(device)
    weights = composite(sigma, torch.full((s.num_samples, 3), 0.5, device=device), s.t, s.dt, s.ray_offsets,
                        return_weights=True).weights
    return octree, x, weights


def against_twin(step: Step, octree, x, weights):
    flat = octree.flat(LEVELS)
    got = ops.importance(x, flat, weights)
    want = reference.importance(x, flat, weights)
    step.log(f"  {x.shape[0]} samples, {flat.num_vertices} vertices, total weight {float(weights.sum()):.1f}")
    top = torch.argsort(want.cpu(), descending=True)[:5]
    step.log(table(["vertex row", "kernel I", "twin I"], [(int(v), float(got[v]), float(want[v])) for v in top],
                   [None, "{:.5f}", "{:.5f}"]))
    step.agree("importance, levels 3-5", got, want, atol=1e-4, rtol=1e-5)
    features = torch.zeros(flat.num_vertices, 1, device=x.device, requires_grad=True)
    (grad,) = torch.autograd.grad(ops.gather(x, flat, features, len(LEVELS)), features, weights[:, None])
    step.agree("importance = gather backward with g = omega", got, grad[:, 0], atol=1e-4, rtol=1e-5)
    starts = flat.vertex_start.tolist()
    level_sums = [float(got[starts[k]:starts[k + 1]].sum()) for k in range(len(LEVELS))]
    step.log("  per level: " + ", ".join(f"level {l}: {v:.2f}" for l, v in zip(LEVELS, level_sums))
             + f" (all samples lie in level-5 cells: sum of weights {float(weights.sum()):.2f})")
    step.agree("level 5's importance sums to the weights", torch.tensor(level_sums[-1]), weights.sum(), atol=1e-2,
               rtol=1e-5)
    return flat, got


# %% [markdown]
# ## Importance on a slice
#
# The level-5 vertices of one horizontal plane (z index 18, normalised z = 0.125), coloured by
# log10 importance (grey: zero, no visible weight), with the true surface of the scene in that plane.
# Weight concentrates on the surfaces the cameras see; vertices inside solids, behind surfaces or on
# faces no view reaches get little or none, which is what pruning removes.

# %%
def slice_picture(step: Step, octree, flat, importance) -> None:
    level = LEVELS[-1]
    res = 1 << level
    k = len(LEVELS) - 1
    lo, hi = int(flat.vertex_start[k]), int(flat.vertex_start[k + 1])
    ijk = morton_decode(octree.vertices[level].cpu())
    value = importance[lo:hi].cpu().numpy()
    layer = 18
    sel = (ijk[:, 2] == layer).numpy()
    x = ijk[sel, 0].numpy() / res * 2 - 1
    y = ijk[sel, 1].numpy() / res * 2 - 1
    v = value[sel]
    fig = figure(4.8, 4.0)
    ax = fig.subplots()
    zero = v <= 0
    ax.scatter(x[zero], y[zero], s=6, color="0.8")
    sc = ax.scatter(x[~zero], y[~zero], s=10, c=np.log10(v[~zero]), cmap="viridis")
    fig.colorbar(sc, ax=ax, shrink=0.8, label="log10 I")
    n = 160
    g = np.linspace(-1, 1, n)
    gx, gy = np.meshgrid(g, g)
    z = layer / res * 2 - 1
    world = octree.denormalize(torch.from_numpy(np.stack([gx, gy, np.full_like(gx, z)], -1).reshape(-1, 3))).numpy()
    ax.contour(g, g, synthetic.sdf(world).reshape(n, n), levels=[0.0], colors="r", linewidths=0.8)
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_aspect("equal")
    ax.set_title(f"level {level} vertices at z = {z:.3f}; red: the surface", fontsize=8)
    step.picture(fig, "importance_slice.png")


# %% [markdown]
# ## Timing

# %%
def measure(step: Step) -> None:
    octree, x, weights = scene_samples(num_views=4)
    flat = octree.flat(LEVELS)
    step.time("importance", f"{x.shape[0]} samples, {len(LEVELS)} levels",
              lambda: ops.importance(x, flat, weights), lambda: reference.importance(x, flat, weights))


# %%
def run(out: Path, log=print) -> dict:
    runtime.ensure()
    with Step("importance", out, log) as step:
        by_hand(step)
        octree, x, weights = scene_samples()
        flat, importance = against_twin(step, octree, x, weights)
        slice_picture(step, octree, flat, importance)
        measure(step)
        return step.result()


if __name__ == "__main__":
    run(Path("tvq-tour"))
