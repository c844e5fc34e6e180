"""The steps of the walk over the occupied cells of one octree level (Taichi functions).

The walk is a 3D DDA over the cells of level l (res = 2^l per axis, cell size h = 2 / res) that jumps
over empty space: at cell ijk with Morton code m, a binary search in the level's sorted cell codes gives
``lo`` (the first code >= m). The search runs inside one bucket of a radix index (``walk_index``): with
starts[k] = the first row whose code >> shift is >= k, every code in rows [starts[m >> shift],
starts[(m >> shift) + 1]) shares m's top bits, so the lower bound inside that slice is the lower bound
over all codes, found in a few steps instead of log2(N) dependent reads. If m is absent, the largest aligned
block of 8^s cells around it that holds no occupied cell is the one whose code range [first, first + 8^s - 1]
lies strictly between the neighbours codes[lo - 1] and codes[lo]; the ray leaves that block (or the occupied
cell, s = 0) at

    t_next = min over axes a of (-1 + h * 2^s * (floor(ijk_a / 2^s) + [d_a > 0]) - o_a) / d_a,

and continues in the cell across that face (on the other axes, the cell it is in at t_next, kept inside
the block and never behind ijk). ``tvq.kernels.raymarch`` (training: every sample of every ray),
``tvq.kernels.inference`` (marching in rounds) and ``tvq.kernels.shade`` (one thread renders a whole ray)
walk with these functions, so they emit the same samples. ``real`` is the float type of the walk.
"""

import taichi as ti
import torch

from .morton import lower_bound, morton3

_BIG = 3.0e38
_MAX_CODE = 9223372036854775807
MAX_BUCKET_LEVELS = 7  # at most 8^7 buckets (8 MB of starts)


def walk_index(codes: torch.Tensor, level: int) -> tuple[torch.Tensor, int]:
    """The radix index of one level's sorted Morton ``codes`` that ``locate`` searches with: ``starts``
    (8^b + 1,) int32 with starts[k] the first row whose code >> shift is >= k, and ``shift`` = 3 (level - b),
    for b bucket levels with 8^b about the number of codes (at most ``MAX_BUCKET_LEVELS``). Kept on the
    codes tensor and rebuilt when it changes, so a walk per training step costs no rebuild."""
    key = (int(level), codes._version, codes.device)
    cached = getattr(codes, "_tvq_walk_index", None)
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    n = int(codes.numel())
    b = 0
    while b < min(int(level), MAX_BUCKET_LEVELS) and 8 ** (b + 1) <= 2 * n:
        b += 1
    shift = 3 * (int(level) - b)
    bounds = torch.arange(8 ** b + 1, dtype=torch.int64, device=codes.device) << shift
    starts = torch.searchsorted(codes.contiguous(), bounds).to(torch.int32)
    codes._tvq_walk_index = (key, starts, shift)
    return starts, shift


@ti.func
def clip(o, d, near, far, real: ti.template()):
    """[t_in, t_out] of the ray inside the cube [-1, 1]^3 and [near, far] (t_out <= t_in: it misses)."""
    t_in = real(near)
    t_out = real(far)
    for a in ti.static(range(3)):
        if d[a] != 0:
            ta = (real(-1.0) - o[a]) / d[a]
            tb = (real(1.0) - o[a]) / d[a]
            t_in = ti.max(t_in, ti.min(ta, tb))
            t_out = ti.min(t_out, ti.max(ta, tb))
        elif o[a] < -1 or o[a] > 1:  # parallel to this slab and outside it
            t_out = -real(_BIG)
    return t_in, t_out


@ti.func
def entry_cell(o, d, t_in, h, res: ti.i32):
    """The cell coordinates of the point where the ray enters the cube (clamped to the grid)."""
    p = o + t_in * d
    ijk = ti.Vector([0, 0, 0], ti.i32)
    for ax in ti.static(range(3)):
        ijk[ax] = ti.min(ti.max(ti.cast(ti.floor((p[ax] + 1) / h), ti.i32), 0), res - 1)
    return ijk


@ti.func
def locate(codes: ti.template(), starts: ti.template(), shift: ti.i32, num_codes: ti.i64, ijk, level: ti.i32,
           skip_empty: ti.template()):
    """(row of the cell in ``codes`` or of the next code, whether the cell is occupied, and s: the level
    of the largest empty aligned block around an unoccupied cell, 0 for an occupied one or without
    ``skip_empty``, the plain DDA). ``starts`` and ``shift``: the codes' ``walk_index``."""
    code = morton3(ti.i64(ijk[0]), ti.i64(ijk[1]), ti.i64(ijk[2]))
    bucket = ti.cast(code >> shift, ti.i32)
    lo = lower_bound(codes, ti.i64(starts[bucket]), ti.i64(starts[bucket + 1]), code)
    occupied = False
    if lo < num_codes:
        occupied = codes[lo] == code
    s = 0
    if ti.static(skip_empty) and not occupied:
        prev = ti.i64(-1)
        if lo > 0:
            prev = codes[lo - 1]
        nxt = ti.i64(_MAX_CODE)
        if lo < num_codes:
            nxt = codes[lo]
        while s < level:
            shift = 3 * (s + 1)
            first = (code >> shift) << shift
            last = first + (ti.i64(1) << shift) - 1
            if first > prev and last < nxt:
                s += 1
            else:
                break
    return lo, occupied, s


@ti.func
def block_exit(o, d, ijk, s: ti.i32, h, real: ti.template()):
    """Distance at which the ray leaves the aligned block of 2^s cells per axis holding ijk, and the axis
    of the face it leaves through (-1: none)."""
    t_next = real(_BIG)
    axis = -1
    for ax in ti.static(range(3)):
        if d[ax] != 0:
            bound = (ijk[ax] >> s) + (1 if d[ax] > 0 else 0)
            ta = (real(-1.0) + real(bound << s) * h - o[ax]) / d[ax]
            if ta < t_next:
                t_next = ta
                axis = ax
    return t_next, axis


@ti.func
def next_cell(o, d, ijk, s: ti.i32, axis: ti.i32, t_next, h, res: ti.i32):
    """The cell the walk continues in after leaving the block through ``axis`` at t_next, and whether that
    leaves the grid."""
    done = False
    new = ijk
    for ax in ti.static(range(3)):
        if ax == axis:
            if d[ax] > 0:
                new[ax] = ((ijk[ax] >> s) + 1) << s
            else:
                new[ax] = ((ijk[ax] >> s) << s) - 1
            if new[ax] < 0 or new[ax] >= res:
                done = True
        elif d[ax] != 0 and s > 0:
            first = (ijk[ax] >> s) << s
            q = ti.cast(ti.floor((o[ax] + t_next * d[ax] + 1) / h), ti.i32)
            q = ti.min(ti.max(q, first), first + (1 << s) - 1)
            if d[ax] > 0:
                q = ti.max(q, ijk[ax])
            else:
                q = ti.min(q, ijk[ax])
            new[ax] = q
    return new, done
