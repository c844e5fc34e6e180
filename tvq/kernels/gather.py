"""Feature gather over the levels of a sparse octree (forward and hand-written backward).

For a point x in the normalised cube [-1, 1]^3 and the first ``lod`` levels of a ``FlatOctree``
(coarsest first), with level k of resolution r_k = 2^l cells per axis:

    u_k = (x + 1) * r_k / 2                   position in level-k cell units
    i_k = min(floor(u_k), r_k - 1)            cell coordinates (x = 1 falls in the last cell)
    f_k = u_k - i_k                           position inside the cell, in [0, 1]^3
    w_c = prod_a (f_a if bit a of c else 1 - f_a)    trilinear weight of corner c = dx | dy<<1 | dz<<2

    z(x) = sum_{k < lod} [cell i_k occupied] * sum_c w_c * T[v_k(i_k, c)]

where the cell is found by binary search of morton3(i_k) in level k's sorted slice of ``cell_codes`` (or
only among the children of the point's cell at level k - 1, when that is the run's previous level) and
v_k(i, c) is its row in ``cell_vertices`` (a global row of the table T). Unoccupied cells and points
outside the closed cube (or NaN) contribute zero.

T is either the feature table itself (``gather``) or, for vector-quantised levels, the codebook row
of each vertex, T[v] = D[k * K + idx[v]] (``tvq.kernels.codebook`` reuses ``sum_levels`` for that).

Backward, with g = dL/dz(x): dT[v_k(i_k, c)] += w_c * g for every used level whose cell is occupied.
The forward records each sample's cell row per level (``rows``, -1 when none; a few bytes per sample
and level, written in inference too, which keeps one kernel per op), so the backward needs no search.
It runs one thread per (chunk of consecutive samples, level, corner): packed ray samples come in runs
inside one cell, so a thread sums w_c * g over a run and issues one atomic add per run and
feature instead of one per sample, and the 8 threads of a chunk's level write 8 different vertices.
With a scalar cotangent (F = 1) this is the per-vertex importance sum (``tvq.kernels.importance``).

The octree travels as one int64 tensor (``pack_octree``): launch cost grows with every array argument.
"""

import functools
from types import SimpleNamespace

import taichi as ti
import torch

from .launch import lean
from .morton import find_code, morton3

# Layout of the packed octree ``tree`` (int64), C cells in all: a header; per level k (coarsest first) the
# columns below at META + 5 k; the sorted cell codes of all levels (C words); the cells' 8 corner vertex rows
# as int32 pairs (corner c of cell row r in the low (c even) or high (c odd) half of word 4 r + c // 2 of
# that block); per cell the row range [lo, hi) of its children when the next level of the run is the next
# octree level (lo in the low half, hi in the high half; -1 when there is none).
N_LEVELS, N_CELLS, META = 0, 1, 2
CELL_LO, CELL_HI, RES, VERT_LO, VERT_HI = range(5)
CHUNK = 32  # samples per backward thread


def pack_octree(flat) -> torch.Tensor:
    """One int64 tensor holding a ``FlatOctree``'s levels, cell codes, cell -> vertex rows and child ranges."""
    n, cells = len(flat.levels), flat.cell_codes.numel()
    meta = torch.stack([flat.cell_start[:-1], flat.cell_start[1:], flat.resolution.long(),
                        flat.vertex_start[:-1], flat.vertex_start[1:]], dim=1)
    tree = torch.empty(META + 5 * n + 6 * cells, dtype=torch.int64, device=flat.cell_codes.device)
    tree[N_LEVELS], tree[N_CELLS] = n, cells
    tree[META:META + 5 * n] = meta.reshape(-1)
    codes = META + 5 * n
    tree[codes:codes + cells] = flat.cell_codes
    tree[codes + cells:codes + 5 * cells].view(torch.int32).copy_(flat.cell_vertices.reshape(-1))  # little-endian
    children = tree[codes + 5 * cells:]
    children.fill_(-1)
    start = flat.cell_start.tolist()
    for k in range(n - 1):
        if flat.levels[k + 1] == flat.levels[k] + 1:
            parents, kids = flat.cell_codes[start[k]:start[k + 1]], flat.cell_codes[start[k + 1]:start[k + 2]]
            lo = torch.searchsorted(kids, parents << 3) + start[k + 1]
            hi = torch.searchsorted(kids, (parents << 3) + 8) + start[k + 1]
            children[start[k]:start[k + 1]] = lo | (hi << 32)
    return tree


@ti.func
def level_info(tree: ti.template(), k: ti.i32, column: ti.template()) -> ti.i64:
    return tree[META + 5 * k + column]


@ti.func
def corner_vertex(tree: ti.template(), row: ti.i64, c) -> ti.i32:
    """Global vertex row of corner c of cell ``row``."""
    cv = META + 5 * tree[N_LEVELS] + tree[N_CELLS]
    word = tree[cv + 4 * row + (c >> 1)]
    return ti.cast((word >> (32 * (c & 1))) & ti.i64(0xFFFFFFFF), ti.i32)


@ti.func
def cell_position(points: ti.template(), s: ti.i32, res: ti.i64, real: ti.template()):
    """Point s in level cell units: its (clamped) cell coordinates and in-cell position."""
    x = points[s]
    # (x + 1) * (r / 2): the scale is a power of two, so only the addition rounds (the torch twin agrees).
    u = (x + 1) * ti.cast(res, real) * 0.5
    i = ti.min(ti.cast(ti.floor(u), ti.i64), res - 1)
    return i, u - ti.cast(i, real)


@ti.func
def locate(points: ti.template(), tree: ti.template(), s: ti.i32, k: ti.i32, parent: ti.i64, real: ti.template()):
    """Row of point s's level-k cell (-1 when unoccupied or outside the cube) and its in-cell position.
    ``parent`` is the point's cell row at the run's previous level (-1: none); when that level is the
    octree's parent level, only the parent's children are searched."""
    i, frac = cell_position(points, s, level_info(tree, k, RES), real)
    x = points[s]
    row = ti.i64(-1)
    if ti.abs(x[0]) <= 1 and ti.abs(x[1]) <= 1 and ti.abs(x[2]) <= 1:  # False for NaN
        codes = META + 5 * tree[N_LEVELS]
        lo = level_info(tree, k, CELL_LO)
        hi = level_info(tree, k, CELL_HI)
        if parent >= 0:
            children = tree[codes + 5 * tree[N_CELLS] + parent]
            if children != -1:
                lo = children & ti.i64(0xFFFFFFFF)
                hi = children >> 32
        found = find_code(tree, codes + lo, codes + hi, morton3(i[0], i[1], i[2]))
        if found >= 0:
            row = found - codes
    return row, frac


@ti.func
def corner_weight(frac, c):
    """Trilinear weight of corner c (dx | dy<<1 | dz<<2) for the in-cell position frac."""
    wx = ti.select((c & 1) != 0, frac[0], 1 - frac[0])
    wy = ti.select((c & 2) != 0, frac[1], 1 - frac[1])
    wz = ti.select((c & 4) != 0, frac[2], 1 - frac[2])
    return wx * wy * wz


@ti.func
def sum_levels(points: ti.template(), tree: ti.template(), table: ti.template(), idx: ti.template(),
               rows: ti.template(), s: ti.i32, lod: ti.i32, K: ti.i32, real: ti.template(), F: ti.template(),
               indexed: ti.template()):
    """z(points[s]) over the first ``lod`` levels, recording the cell row of each level in rows[s, k]. Rows
    of ``table`` are vertices, or codebook entries k * K + idx[v] when ``indexed``."""
    acc = ti.Vector.zero(real, F)
    row = ti.i64(-1)
    for k in range(lod):
        frac = ti.Vector.zero(real, 3)
        row, frac = locate(points, tree, s, k, row, real)
        rows[s, k] = ti.cast(row, ti.i32)
        if row >= 0:
            for c in ti.static(range(8)):
                w = corner_weight(frac, c)
                v = corner_vertex(tree, row, c)
                r = ti.i64(v)
                if ti.static(indexed):
                    r = ti.i64(k) * K + ti.i64(idx[v])
                acc += w * table[r]
    return acc


@ti.func
def flush(grad_table: ti.template(), v: ti.i32, acc, F: ti.template()):
    for f in ti.static(range(F)):
        ti.atomic_add(grad_table[v][f], acc[f])


@ti.func
def scatter_chunk(points: ti.template(), tree: ti.template(), rows: ti.template(), grad_out: ti.template(),
                  grad_table: ti.template(), t: ti.i32, lod: ti.i32, real: ti.template(), F: ti.template(),
                  chunk: ti.template()):
    """Thread t = (chunk, level k, corner c): grad_table[v_k(s, c)] += w_c(s) * grad_out[s] over the chunk's
    samples, summed over each run of samples in one cell before the atomic add."""
    c = t % 8
    k = (t // 8) % lod
    start = (t // (8 * lod)) * chunk
    end = ti.min(start + chunk, points.shape[0])
    res = level_info(tree, k, RES)
    current = -1
    acc = ti.Vector.zero(real, F)
    for s in range(start, end):
        # all three loads up front: they do not depend on one another
        row = rows[s, k]
        _, frac = cell_position(points, s, res, real)
        g = grad_out[s]
        if row != current:
            if current >= 0:
                flush(grad_table, corner_vertex(tree, current, c), acc, F)
            current = row
            acc = ti.Vector.zero(real, F)
        if row >= 0:
            acc += corner_weight(frac, c) * g
    if current >= 0:
        flush(grad_table, corner_vertex(tree, current, c), acc, F)


def scatter_threads(num_samples: int, lod: int, chunk: int = CHUNK) -> int:
    """Threads of ``scatter_chunk`` for ``num_samples`` samples and ``lod`` levels."""
    return -(-num_samples // chunk) * lod * 8


def vector_arrays(dtype, F: int):
    """Array types of points (S, 3) and F-wide rows (N, F): rows load and store as one vector each."""
    return (ti.types.ndarray(dtype=ti.types.vector(3, dtype), ndim=1),
            ti.types.ndarray(dtype=ti.types.vector(F, dtype), ndim=1))


@functools.lru_cache(maxsize=None)
def gather_kernels(dtype, F: int, chunk: int = CHUNK) -> SimpleNamespace:
    """Forward and backward kernels for float type ``dtype`` (ti.f32 / ti.f64) and feature dim ``F``."""
    vec3, vecF = vector_arrays(dtype, F)
    i64_1 = ti.types.ndarray(dtype=ti.i64, ndim=1)
    i32_2 = ti.types.ndarray(dtype=ti.i32, ndim=2)

    @ti.kernel
    def forward(points: vec3, tree: i64_1, features: vecF, out: vecF, rows: i32_2, lod: ti.i32):
        """out[s] = z(points[s]) with T = features; rows[s, k] = the sample's level-k cell row (-1: none)."""
        for s in range(points.shape[0]):
            out[s] = sum_levels(points, tree, features, features, rows, s, lod, 0, dtype, F, False)

    @ti.kernel
    def backward(points: vec3, tree: i64_1, rows: i32_2, grad_out: vecF, grad_table: vecF, lod: ti.i32,
                 threads: ti.i32):
        """grad_table[v] += w_c(points[s]) * grad_out[s] for every corner v the forward read."""
        for t in range(threads):
            scatter_chunk(points, tree, rows, grad_out, grad_table, t, lod, dtype, F, chunk)

    return SimpleNamespace(forward=lean(forward), backward=lean(backward), chunk=chunk)
