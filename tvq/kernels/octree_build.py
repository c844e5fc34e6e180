"""Octree construction: points -> leaf Morton codes, whole-cell dilation, and cell corner codes.

Quantisation. A world point x maps into the normalised cube by x_n = (x - c) * s; at level L (R = 2^L
cells per axis) its cell coordinate along each axis is

    t = (x - c) * k + h,    k = s * R / 2,   h = R / 2,    i = floor(t)

computed in float64. A point is kept when 0 <= t <= R on all three axes (the closed cube); a point on the
upper face (t == R) belongs to the last cell, i = R - 1. Points outside the closed cube get code -1.

Dilation by d whole cells (the (2d + 1)^3 box of neighbours of every leaf, clipped to the cube) is the
composition of three one-axis dilations, so each pass writes 2d + 1 candidates per code instead of
(2d + 1)^3 (-1 where the neighbour falls outside the cube); the caller sorts and deduplicates after each.

Corners. Cell (x, y, z) at level l has the 8 corners (x + dx, y + dy, z + dz), corner index
c = dx | dy << 1 | dz << 2, with vertex coordinates in 0..2^l. The corner kernel writes their Morton codes
(n, 8); sorting and deduplicating them gives the level's vertex table and the cell -> vertex rows.

All codes follow ``tvq.kernels.morton`` (x in the lowest bit, 21 bits per axis).
"""

import functools

import taichi as ti
import torch

from .morton import morton3, spread_bits

@ti.func
def compact_bits(x: ti.i64) -> ti.i64:
    """Inverse of ``spread_bits``: gather every third bit of x (from bit 0) into the low 21 bits."""
    v = x & ti.i64(0x1249249249249249)
    v = (v | (v >> 2)) & ti.i64(0x10C30C30C30C30C3)
    v = (v | (v >> 4)) & ti.i64(0x100F00F00F00F00F)
    v = (v | (v >> 8)) & ti.i64(0x1F0000FF0000FF)
    v = (v | (v >> 16)) & ti.i64(0x1F00000000FFFF)
    v = (v | (v >> 32)) & ti.i64(0x1FFFFF)
    return v


@functools.lru_cache(maxsize=None)
def point_codes_kernel(dtype: torch.dtype):
    """Kernel (points (N, 3), codes (N,) int64 out, cx, cy, cz, k, h, res) for float32/float64 points."""
    fp = {torch.float32: ti.f32, torch.float64: ti.f64}[dtype]

    @ti.kernel
    def point_codes(
        points: ti.types.ndarray(dtype=fp, ndim=2),
        codes: ti.types.ndarray(dtype=ti.i64, ndim=1),
        cx: ti.f64,
        cy: ti.f64,
        cz: ti.f64,
        k: ti.f64,
        h: ti.f64,
        res: ti.i64,
    ):
        rf = ti.cast(res, ti.f64)
        for n in range(points.shape[0]):
            tx = (ti.cast(points[n, 0], ti.f64) - cx) * k + h
            ty = (ti.cast(points[n, 1], ti.f64) - cy) * k + h
            tz = (ti.cast(points[n, 2], ti.f64) - cz) * k + h
            code = ti.i64(-1)
            if tx >= 0.0 and tx <= rf and ty >= 0.0 and ty <= rf and tz >= 0.0 and tz <= rf:
                # The upper face belongs to the last cell.
                ix = ti.min(ti.cast(ti.floor(tx), ti.i64), res - 1)
                iy = ti.min(ti.cast(ti.floor(ty), ti.i64), res - 1)
                iz = ti.min(ti.cast(ti.floor(tz), ti.i64), res - 1)
                code = morton3(ix, iy, iz)
            codes[n] = code

    return point_codes


@ti.kernel
def dilate_axis(
    codes: ti.types.ndarray(dtype=ti.i64, ndim=1),
    out: ti.types.ndarray(dtype=ti.i64, ndim=2),
    axis: ti.i32,
    radius: ti.i64,
    res: ti.i64,
):
    """out[n, j] = codes[n] moved by j - radius cells along ``axis`` (0, 1, 2), or -1 outside the cube."""
    for n, j in out:
        code = codes[n]
        shift = ti.cast(axis, ti.i64)
        a = compact_bits(code >> shift) + ti.cast(j, ti.i64) - radius
        moved = ti.i64(-1)
        if a >= 0 and a < res:
            keep = code & ~(ti.i64(0x1249249249249249) << shift)  # the other two axes' bits
            moved = keep | (spread_bits(a) << shift)
        out[n, j] = moved


@ti.kernel
def corner_codes(
    cells: ti.types.ndarray(dtype=ti.i64, ndim=1),
    corners: ti.types.ndarray(dtype=ti.i64, ndim=2),
):
    """corners[n, c] = Morton code of corner c = dx | dy << 1 | dz << 2 of cell ``cells[n]``."""
    for n in range(cells.shape[0]):
        code = cells[n]
        x = compact_bits(code)
        y = compact_bits(code >> 1)
        z = compact_bits(code >> 2)
        for c in ti.static(range(8)):
            corners[n, c] = morton3(x + (c & 1), y + ((c >> 1) & 1), z + ((c >> 2) & 1))
