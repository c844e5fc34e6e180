"""Space carving: which candidate cells of one level survive the views' foreground masks.

Cameras. View v is a 3x4 matrix P_v from the normalised cube to homogeneous pixels: for a point x_n,
(u', v', w) = P_v [x_n; 1], pixel coordinates (u, v) = (u' / w, v' / w) with the centre of column i /
row j at (i + 0.5, j + 0.5), and w the depth in front of the camera (P_v = K diag(1, -1, -1) [R^T | -R^T o]
composed with the map from the cube to the world, built by the caller).

Foreground. S_v is the summed-area table of view v's foreground mask F_v (alpha > threshold):
S_v[j, i] = sum_{j' < j, i' < i} F_v[j', i'], (H + 1, W + 1) int32, so the foreground count of any pixel
rectangle costs four reads.

Test. Cell (x, y, z) of a level with R cells per axis spans [lo, lo + h]^3, lo = -1 + (x, y, z) h,
h = 2 / R. For each view, with its 8 corners projected:

- if any corner has w <= near (not entirely in front of the camera), the view cannot carve the cell;
- its footprint is the bounding rectangle [u_min, u_max] x [v_min, v_max] of the 8 projections, grown by
  ``pad`` pixels; if that rectangle is not entirely inside the image [0, W] x [0, H], the view cannot
  carve the cell;
- otherwise the pixels that the rectangle touches, columns floor(u_min - pad) .. floor(u_max + pad) and
  rows floor(v_min - pad) .. floor(v_max + pad) (clipped to the image), are counted in S_v; a count of
  zero means the view sees only background where the cell projects: the cell is carved.

A cell survives when no view carves it; the loop over views stops at the first that does. Cells entirely
outside the box [box[0], box[1]] (normalised coordinates) are dropped as well. The test is conservative:
the rectangle holds the whole projected cell, so a cell holding a point that projects onto foreground in
every view survives.

Settled cells. A child's rectangle lies inside its parent's (the projection of a box held in the parent's
box lies in the convex hull of the parent's projected corners). So when a cell lies inside the box and
every view fully sees it with foreground on every pixel of its rectangle, no view can carve any of its
descendants: the kernel marks it settled (keep = 2) and the caller stops testing its subtree, which
saves the bulk of the work inside the hull. keep is 0 (carved), 1 (survives) or 2 (survives, settled).
"""

import functools

import taichi as ti
import torch

from .octree_build import compact_bits


@functools.lru_cache(maxsize=None)
def carve_kernel(dtype: torch.dtype):
    """Kernel (codes, keep out, proj (V, 3, 4), sat (V, H+1, W+1), box (2, 3), res, pad, near)."""
    fp = {torch.float32: ti.f32, torch.float64: ti.f64}[dtype]

    @ti.kernel
    def carve(
        codes: ti.types.ndarray(dtype=ti.i64, ndim=1),
        keep: ti.types.ndarray(dtype=ti.i8, ndim=1),
        proj: ti.types.ndarray(dtype=fp, ndim=3),
        sat: ti.types.ndarray(dtype=ti.i32, ndim=3),
        box: ti.types.ndarray(dtype=fp, ndim=2),
        res: ti.i32,
        pad: fp,
        near: fp,
    ):
        num_views = proj.shape[0]
        height = sat.shape[1] - 1
        width = sat.shape[2] - 1
        fw = ti.cast(width, fp)
        fh = ti.cast(height, fp)
        h = ti.cast(2.0, fp) / ti.cast(res, fp)
        for n in range(codes.shape[0]):
            code = codes[n]
            lo = ti.Vector([ti.cast(compact_bits(code >> a), fp) for a in ti.static(range(3))]) * h - 1.0
            hi = lo + h
            alive = 1
            settled = 1
            for a in ti.static(range(3)):
                if hi[a] <= box[0, a] or lo[a] >= box[1, a]:
                    alive = 0
                if lo[a] < box[0, a] or hi[a] > box[1, a]:
                    settled = 0
            if alive:
                for v in range(num_views):
                    # Projective coordinates at the low corner and their steps along the cell's edges.
                    base = ti.Vector([proj[v, r, 0] * lo[0] + proj[v, r, 1] * lo[1] + proj[v, r, 2] * lo[2]
                                      + proj[v, r, 3] for r in ti.static(range(3))])
                    step = ti.Matrix([[proj[v, r, a] * h for a in ti.static(range(3))] for r in ti.static(range(3))])
                    w_min = base[2] + ti.min(step[2, 0], 0.0) + ti.min(step[2, 1], 0.0) + ti.min(step[2, 2], 0.0)
                    if w_min <= near:
                        settled = 0
                    else:
                        u_lo = base[0] / base[2]  # corner 0; no infinities under fast math
                        u_hi = u_lo
                        v_lo = base[1] / base[2]
                        v_hi = v_lo
                        for c in ti.static(range(1, 8)):
                            p = base
                            for a in ti.static(range(3)):
                                if ti.static((c >> a) & 1):
                                    p = p + ti.Vector([step[r, a] for r in ti.static(range(3))])
                            pu = p[0] / p[2]
                            pv = p[1] / p[2]
                            u_lo = ti.min(u_lo, pu)
                            u_hi = ti.max(u_hi, pu)
                            v_lo = ti.min(v_lo, pv)
                            v_hi = ti.max(v_hi, pv)
                        u_lo -= pad
                        u_hi += pad
                        v_lo -= pad
                        v_hi += pad
                        if u_lo >= 0.0 and v_lo >= 0.0 and u_hi <= fw and v_hi <= fh:
                            i0 = ti.cast(ti.floor(u_lo), ti.i32)
                            j0 = ti.cast(ti.floor(v_lo), ti.i32)
                            i1 = ti.min(ti.cast(ti.floor(u_hi), ti.i32), width - 1) + 1
                            j1 = ti.min(ti.cast(ti.floor(v_hi), ti.i32), height - 1) + 1
                            count = sat[v, j1, i1] - sat[v, j0, i1] - sat[v, j1, i0] + sat[v, j0, i0]
                            if count == 0:
                                alive = 0
                                break
                            if count < (i1 - i0) * (j1 - j0):
                                settled = 0
                        else:
                            settled = 0
            keep[n] = ti.cast(alive * (1 + settled), ti.i8)

    return carve
