# %% [markdown]
# # Step 2: visual-hull carving
#
# Without depth, tvq builds its octree from the views' foreground masks: the visual hull, carved coarse
# to fine by `tvq/kernels/carve.py` (`carve_kernel`). Its twin `tvq.reference.carve` tests every cell
# against every view with a plain Python loop.
#
# **Forward.** View v maps the cube to homogeneous pixels with a 3x4 matrix P_v:
# (u', v', w) = P_v [x; 1], pixel (u, v) = (u'/w, v'/w), w the depth in front of the camera. Its mask
# becomes a summed-area table S_v[j, i] = sum_{j' < j, i' < i} F_v[j', i'] (F = alpha > threshold), so the
# foreground count of any pixel rectangle is four reads:
# count = S[j1, i1] - S[j0, i1] - S[j1, i0] + S[j0, i0]. A cell [lo, lo + h]^3 is carved by a view that
# sees it whole (all 8 corners in front, w > near) and whose projected bounding rectangle, grown by `pad`
# pixels and lying inside the image, holds no foreground pixel. A cell survives when no view carves it;
# a survivor whose rectangle is foreground on every pixel in every view is *settled* (keep = 2): no
# view can carve any of its descendants, so its subtree is kept without testing. The survivors' 8
# children are the next level's candidates.
#
# **Adjoint.** None (a set of cells). Exact equality with the twin guards it, and a property check:
# the test is conservative, so no point of the true surface may lie in a carved cell.
#
# **Taichi.** One thread per candidate cell (`for n in range(codes.shape[0])`), an inner *serial*
# `for v in range(num_views)` loop with `break` at the first view that carves; `ti.Vector` and
# `ti.Matrix` are small register arrays; the 8 corners are enumerated with `ti.static(range(1, 8))`
# and `if ti.static((c >> a) & 1)`, so the corner arithmetic is unrolled and branch-free.

# %%
from pathlib import Path

import numpy as np
import torch

from tvq import reference, runtime
from tvq.apps.tour.common import Step, figure, table
from tvq.data import synthetic
from tvq.kernels import carve
from tvq.octree import SparseOctree, _projections, _summed_area, morton_decode, morton_encode

NUM_VIEWS = 8
SIZE = 32  # pixels per side of each mask
TWIN_LEVEL = 4  # the twin's Python loop is slow: compared up to this level
PICTURE_LEVEL = 5
THRESHOLD = 0.1  # foreground: alpha above this (see "The masks" below)


def scene_masks():
    """Alpha masks of the built-in scene from NUM_VIEWS training cameras; the box around the geometry."""
    poses = synthetic.camera_poses(NUM_VIEWS, 0, 0, seed=0)["train"]
    K = synthetic.intrinsics(SIZE)
    alphas = np.stack([synthetic.render_view(K, c2w, SIZE, SIZE)[0][..., 3] for c2w in poses]).astype(np.float32)
    lo, hi = synthetic.bounds()
    bbox = np.stack([lo - 0.05, hi + 0.05])
    return np.repeat(K[None], NUM_VIEWS, 0), poses, alphas, bbox


# %% [markdown]
# ## The masks
#
# Eight training views of the built-in scene at 32x32 pixels, from `synthetic.render_view`. Its alpha is
# the pixel's coverage, and at this size the scene's thin rods cover less than half of the pixels they
# cross: foreground here is alpha > 0.1, not the usual 0.5, or the masks themselves would lose the rods
# and the (correct) carving with them.
#
# ## The summed-area table
#
# A 4x5 mask, its table (one row and column of zeros in front) and the count of one rectangle from four
# reads, beside the direct sum.

# %%
def summed_area(step: Step) -> None:
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)
    sat = _summed_area(mask[None])[0]
    step.log("mask:\n" + str(mask.int().numpy()) + "\nsummed-area table:\n" + str(sat.numpy()))
    i0, i1, j0, j1 = 1, 4, 0, 3  # columns 1..3, rows 0..2
    count = int(sat[j1, i1] - sat[j0, i1] - sat[j1, i0] + sat[j0, i0])
    step.log(f"  rows {j0}..{j1 - 1}, columns {i0}..{i1 - 1}: four reads give {count}, "
             f"the direct sum {int(mask[j0:j1, i0:i1].sum())}")
    step.holds("four reads count a rectangle", count == int(mask[j0:j1, i0:i1].sum()))


# %% [markdown]
# ## Coarse to fine, one launch per level
#
# The loop that `SparseOctree.from_masks` runs, written out: children of the cells still to be tested,
# one kernel launch, then split them by their keep value (0 carved, 1 survives, 2 settled). The counts
# show the settled subtrees taking over inside the hull.

# %%
def carve_levels(step: Step, Ks, c2ws, alphas, bbox, level: int) -> torch.Tensor:
    device = runtime.device()
    lo, hi = torch.as_tensor(bbox, dtype=torch.float64)
    center, scale = (lo + hi) / 2, 2.0 / float((hi - lo).max())
    proj = _projections(torch.as_tensor(Ks, dtype=torch.float64), torch.as_tensor(c2ws, dtype=torch.float64),
                        center, scale).to(device).contiguous()
    sat = _summed_area(torch.as_tensor(alphas).to(device) > THRESHOLD)
    box = torch.stack([(lo - center) * scale, (hi - center) * scale]).to(device).contiguous()
    kernel = carve.carve_kernel(torch.float64)
    bits = torch.arange(8, dtype=torch.int64, device=device)
    codes = torch.zeros(1, dtype=torch.int64, device=device)
    settled = torch.zeros(0, dtype=torch.int64, device=device)
    rows = []
    for l in range(level + 1):
        if l > 0:
            codes = ((codes[:, None] << 3) | bits).reshape(-1)
            settled = ((settled[:, None] << 3) | bits).reshape(-1)
        keep = torch.empty(codes.numel(), dtype=torch.int8, device=device)
        if codes.numel():
            kernel(codes, keep, proj, sat, box, 1 << l, 1.0, 1e-6)
        rows.append((l, codes.numel(), int((keep == 0).sum()), int((keep == 1).sum()), int((keep == 2).sum()),
                     settled.numel()))
        settled = torch.cat([settled, codes[keep == 2]])
        codes = codes[keep == 1]
    step.log(table(["level", "tested", "carved", "survive", "settled", "inside settled"], rows))
    return torch.sort(torch.cat([codes, settled])).values


def compare(step: Step, Ks, c2ws, alphas, bbox) -> None:
    by_hand = carve_levels(step, Ks, c2ws, alphas, bbox, TWIN_LEVEL)
    octree = SparseOctree.from_masks(Ks, c2ws, alphas, TWIN_LEVEL, bbox=bbox, threshold=THRESHOLD,
                                     dtype=torch.float64)
    twin = reference.carve(Ks, c2ws, alphas, TWIN_LEVEL, bbox, threshold=THRESHOLD)
    step.log(f"  level {TWIN_LEVEL}: {octree.num_cells(TWIN_LEVEL)} cells kept by the kernel, {twin.numel()} by the "
             f"twin, of {8 ** TWIN_LEVEL}")
    step.equal(f"level-{TWIN_LEVEL} hull: the loop above = from_masks", by_hand, octree.cells[TWIN_LEVEL])
    step.equal(f"level-{TWIN_LEVEL} hull: kernel = twin", octree.cells[TWIN_LEVEL], twin)


# %% [markdown]
# ## The hull against the masks
#
# At level 5 (kernel only, now that it agrees with the twin): every kept cell's projected bounding
# rectangle, drawn into three of the views. White: mask and hull; red: hull outside the mask (what the
# views cannot carve: concavities, and the rectangles' slack); blue would be mask that the hull misses,
# and there is none. The last panel is a slice of the hull against the true solid.

# %%
def silhouette(octree: SparseOctree, level: int, K, c2w, size: int) -> np.ndarray:
    res = 1 << level
    h = 2.0 / res
    lo = morton_decode(octree.cells[level].cpu()).double() * h - 1
    corners = torch.tensor([[c & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], dtype=torch.float64) * h
    world = octree.denormalize(lo[:, None, :] + corners[None])  # (n, 8, 3)
    cam = (world - torch.as_tensor(c2w[:3, 3])) @ torch.as_tensor(c2w[:3, :3])
    depth = -cam[..., 2]
    u = K[0, 0] * cam[..., 0] / depth + K[0, 2]
    v = K[1, 1] * -cam[..., 1] / depth + K[1, 2]
    image = np.zeros((size, size), bool)
    for a, b, c, d in zip(u.min(1).values.floor().long().tolist(), u.max(1).values.floor().long().tolist(),
                          v.min(1).values.floor().long().tolist(), v.max(1).values.floor().long().tolist()):
        image[max(c, 0):max(d + 1, 0), max(a, 0):max(b + 1, 0)] = True
    return image


def hull_picture(step: Step, Ks, c2ws, alphas, bbox) -> SparseOctree:
    octree = SparseOctree.from_masks(Ks, c2ws, alphas, PICTURE_LEVEL, bbox=bbox, threshold=THRESHOLD,
                                     dtype=torch.float64)
    surface = synthetic.surface_points(20000, seed=2)
    x = octree.normalize(torch.from_numpy(surface))
    res = 1 << PICTURE_LEVEL
    codes = morton_encode(((x + 1) / 2 * res).floor().long().clamp(0, res - 1))
    kept = torch.isin(codes, octree.cells[PICTURE_LEVEL].cpu())
    step.holds(f"no surface point in a carved level-{PICTURE_LEVEL} cell", bool(kept.all()),
               f"{int(kept.sum())} of {kept.numel()} points kept")
    fig = figure(9.6, 2.6)
    axes = fig.subplots(1, 4)
    missed_total = 0
    for ax, view in zip(axes[:3], (0, 3, 6)):
        sil = silhouette(octree, PICTURE_LEVEL, Ks[view], c2ws[view], SIZE)
        mask = alphas[view] > THRESHOLD
        rgb = np.zeros((SIZE, SIZE, 3))
        rgb[sil & mask] = 1.0
        rgb[sil & ~mask] = (0.85, 0.25, 0.2)
        rgb[mask & ~sil] = (0.2, 0.3, 0.9)
        missed_total += int((mask & ~sil).sum())
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(f"view {view}: mask (white), hull only (red)", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    step.holds("every mask pixel lies in the hull's projection", missed_total == 0, f"{missed_total} missed")
    ax = axes[3]
    z = 0.1
    ijk = morton_decode(octree.cells[PICTURE_LEVEL].cpu())
    layer = int((z + 1) / 2 * res)
    image = np.zeros((res, res))
    sel = ijk[:, 2] == layer
    image[ijk[sel, 1].numpy(), ijk[sel, 0].numpy()] = 0.5
    g = (np.arange(res) + 0.5) / res * 2 - 1
    gx, gy = np.meshgrid(g, g)
    world = octree.denormalize(torch.from_numpy(np.stack([gx, gy, np.full_like(gx, (layer + 0.5) / res * 2 - 1)],
                                                         -1).reshape(-1, 3))).numpy()
    solid = synthetic.sdf(world).reshape(res, res) < 0
    image[solid] = 1.0
    ax.imshow(image, origin="lower", extent=(-1, 1, -1, 1), cmap="Greys", vmin=0, vmax=1)
    ax.set_title(f"slice z = {z}: hull (grey), solid (black)", fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    step.picture(fig, "carve_hull.png")
    return octree


# %% [markdown]
# ## Timing

# %%
def measure(step: Step, level: int = 3) -> None:
    Ks, c2ws, alphas, bbox = scene_masks()
    on_device = torch.as_tensor(alphas).to(runtime.device())
    step.time("carve", f"{NUM_VIEWS} masks of {SIZE}x{SIZE}, level {level}",
              lambda: SparseOctree.from_masks(Ks, c2ws, on_device, level, bbox=bbox, threshold=THRESHOLD,
                                              dtype=torch.float64),
              (lambda: reference.carve(Ks, c2ws, alphas, level, bbox, threshold=THRESHOLD))
              if runtime.device().type == "cpu" else None, twin_note="the twin runs on the CPU")


# %%
def run(out: Path, log=print) -> dict:
    runtime.ensure()
    with Step("carve", out, log) as step:
        summed_area(step)
        Ks, c2ws, alphas, bbox = scene_masks()
        compare(step, Ks, c2ws, alphas, bbox)
        octree = hull_picture(step, Ks, c2ws, alphas, bbox)
        measure(step)
        return step.result(cells=octree.num_cells(PICTURE_LEVEL))


if __name__ == "__main__":
    run(Path("tvq-tour"))
