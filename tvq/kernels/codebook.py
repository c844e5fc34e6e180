"""Straight-through vector quantisation fused with the feature gather (VQ-AD), and its hash baseline.

Per level k a codebook D_k (K = 2^b rows, F columns), stored stacked as ``codebooks`` (n_levels * K, F),
and per vertex v of level k a logit row C_v (K,), stored like the vertex tables as ``logits`` (V, K).

Forward uses the hard code in training and inference alike:

    idx[v] = argmax_j C_v[j]                  (first maximum on ties, as torch.argmax)
    T[v]   = D_k[idx[v]] = codebooks[k * K + idx[v]]
    z(x)   = the gather of ``tvq.kernels.gather`` over T

One launch: a first loop writes idx for the vertices of the used levels, a second runs the gather reading
codebook rows through idx, so no per-vertex feature table is ever built.

Backward (straight-through softmax), one launch: the gather's backward accumulates g_v = dL/dT[v] into the
first V rows of a zeroed (V + P n_levels K, F) buffer, whose last rows receive P copies of dD (see below);
then per vertex, with s = softmax(C_v) and a_j = D_k[j] . g_v,

    dD_k[idx[v]] += g_v
    dC_v[j]       = s_j * (a_j - sum_i s_i a_i)

which is what autograd gives for y = (onehot(argmax C) - sg(softmax C) + softmax C) @ D. One thread per
vertex sums Z = sum_j exp(C_j - C_idx) and sum_j exp(C_j - C_idx) a_j (the forward's idx gives the
maximum, so one pass and no rescaling) and parks logsumexp(C_v) and s.a in dC_v's first two slots; then
one thread per ``BLOCK`` logits writes dC_v[j] = exp(C_j - logsumexp) (a_j - s.a), neighbouring threads
neighbouring values. Only O(F) values live per thread
and softmax(C) is never stored. The backward reads the codebooks transposed (F, n_levels K): threads of
neighbouring logits then read neighbouring codebook values, and threads of one logit index the same one.

Hash baseline (fixed indices, trained codebook): vertex v reads codebook row idx[v] (a row of the
stacked codebooks); backward dD[idx[v]] += g_v, through the same (V + P rows of D, F) buffer.

Private copies of dD: about a million vertices add into a few hundred codebook rows (16 per level at 4
bits), so their atomic adds may queue on few addresses. Vertex v adds into copy v mod P instead (P =
``code_replicas``, 32: the lanes of a warp never collide); the caller sums the P copies afterwards.

Logit rows are read in bursts of ``TILE`` values where one thread walks a row: neighbouring threads read
rows K values apart, and a burst uses each fetched cache line at once instead of after it was evicted.

Rows of levels at or past ``lod`` are skipped: they take no part in the forward.
"""

import contextlib
import functools
from types import SimpleNamespace

import taichi as ti

from .gather import CHUNK, VERT_HI, flush, level_info, scatter_chunk, sum_levels, vector_arrays
from .launch import lean


@ti.func
def used_vertices(tree: ti.template(), lod: ti.i32) -> ti.i64:
    """Number of leading vertex rows that belong to the first ``lod`` levels."""
    n = ti.i64(0)
    if lod > 0:
        n = level_info(tree, lod - 1, VERT_HI)
    return n


@ti.func
def level_of(tree: ti.template(), v: ti.i64) -> ti.i32:
    """Level (index into the run) that owns vertex row v."""
    k = 0
    while level_info(tree, k, VERT_HI) <= v:
        k += 1
    return k


TILE = 16  # logits read per thread in one burst: a row's neighbouring loads hit the same cache lines
STATS_TILE = 4  # the same where each logit also needs a dot product with its code: fewer live registers
BLOCK = 4  # logits per thread when writing dC: the vertex's g_v and statistics are read once per block
MAX_REPLICAS = 32  # private copies of the codebook gradient: one per lane of a warp
REPLICA_ROWS = 1 << 16  # ... while the copies hold at most this many rows (a 12-bit hash has few collisions)


def code_replicas(code_rows: int) -> int:
    """Private copies P of the codebook gradient for a codebook of ``code_rows`` rows."""
    return max(1, min(MAX_REPLICAS, REPLICA_ROWS // max(code_rows, 1)))


@contextlib.contextmanager
def replicas_at_most(n: int):
    """Within the block, at most ``n`` private copies of the codebook gradient (the benchmarks' lever)."""
    global MAX_REPLICAS
    default, MAX_REPLICAS = MAX_REPLICAS, int(n)
    try:
        yield
    finally:
        MAX_REPLICAS = default


@ti.func
def code_gradient_row(grad_rows: ti.template(), n_vertices: ti.i64, v: ti.i64, code: ti.i64,
                      replicas: ti.i32) -> ti.i64:
    """Row of grad_rows where vertex v adds its g_v into codebook row ``code``: copy v mod P of dD, the
    copies stacked after the n_vertices vertex rows."""
    code_rows = (grad_rows.shape[0] - n_vertices) // replicas
    return n_vertices + (v % replicas) * code_rows + code


@ti.func
def logit_tile(logits: ti.template(), v: ti.i32, t: ti.i32, T: ti.template()):
    return ti.Vector([logits[v, t * T + i] for i in ti.static(range(T))])


@ti.func
def argmax_row(logits: ti.template(), v: ti.i32, K: ti.template()):
    """First index of the largest of logits[v, :K]."""
    T = ti.static(min(K, TILE))
    best = logits[v, 0]
    arg = 0
    for t in range(K // T):
        c = logit_tile(logits, v, t, T)
        for i in ti.static(range(T)):
            if c[i] > best:  # strict: the first maximum wins ties
                best = c[i]
                arg = t * T + i
    return arg


@ti.func
def code_dot(codebooks_t: ti.template(), r: ti.i64, g, F: ti.template()):
    """D[r] . g from the transposed codebooks (F, rows)."""
    a = codebooks_t[0, r] * g[0]
    for f in ti.static(range(1, F)):
        a += codebooks_t[f, r] * g[f]
    return a


@ti.func
def softmax_stats(tree: ti.template(), grad_rows: ti.template(), logits: ti.template(),
                  codebooks_t: ti.template(), idx: ti.template(), grad_logits: ti.template(), v: ti.i32,
                  replicas: ti.i32, real: ti.template(), F: ti.template(), K: ti.template()):
    """Vertex v: dD[k*K + idx[v]] += g_v (g_v is grad_rows[v], dD's copies the rows after the V vertex rows),
    and logsumexp(C_v) and s.a parked in grad_logits[v, 0:2] for ``straight_through``."""
    g = grad_rows[v]
    if (g != 0).any():  # vertices no sample touched: both adjoints are zero
        T = ti.static(min(K, STATS_TILE))
        base = ti.i64(level_of(tree, v)) * K
        top = logits[v, idx[v]]  # the maximum: the softmax shift
        z = ti.cast(0, real)
        ea = ti.cast(0, real)
        for t in range(K // T):
            c = logit_tile(logits, v, t, T)
            for i in ti.static(range(T)):
                e = ti.exp(c[i] - top)
                z += e
                ea += e * code_dot(codebooks_t, base + t * T + i, g, F)
        grad_logits[v, 0] = top + ti.log(z)
        grad_logits[v, 1] = ea / z
        flush(grad_rows, code_gradient_row(grad_rows, logits.shape[0], v, base + idx[v], replicas), g, F)


@ti.func
def straight_through(logits: ti.template(), codebooks_t: ti.template(), v: ti.i32, j: ti.i32, base: ti.i64, g,
                     lse, sa, F: ti.template()):
    """dC_v[j] = s_j (a_j - s.a), with s_j = exp(C_j - logsumexp C_v) and a_j = D_k[j] . g_v."""
    return ti.exp(logits[v, j] - lse) * (code_dot(codebooks_t, base + j, g, F) - sa)


@functools.lru_cache(maxsize=None)
def vq_kernels(dtype, F: int, K: int, chunk: int = CHUNK) -> SimpleNamespace:
    """VQ kernels for float type ``dtype`` (ti.f32 / ti.f64), feature dim ``F`` and K = 2^b codes."""
    real2 = ti.types.ndarray(dtype=dtype, ndim=2)
    vec3, vecF = vector_arrays(dtype, F)
    i64_1 = ti.types.ndarray(dtype=ti.i64, ndim=1)
    i32_1 = ti.types.ndarray(dtype=ti.i32, ndim=1)
    i32_2 = ti.types.ndarray(dtype=ti.i32, ndim=2)

    @ti.kernel
    def forward(points: vec3, tree: i64_1, logits: real2, codebooks: vecF, idx: i32_1, out: vecF, rows: i32_2,
                lod: ti.i32):
        """idx = argmax of the used vertices' logits; out[s] = z(points[s]) with T[v] = D_k[idx[v]]; rows as
        the gather's."""
        n = used_vertices(tree, lod)
        for v in range(logits.shape[0]):
            if v < n:
                idx[v] = argmax_row(logits, v, K)
        for s in range(points.shape[0]):
            out[s] = sum_levels(points, tree, codebooks, idx, rows, s, lod, K, dtype, F, True)

    @ti.kernel
    def backward(points: vec3, tree: i64_1, rows: i32_2, grad_out: vecF, logits: real2, codebooks_t: real2,
                 idx: i32_1, grad_rows: vecF, grad_logits: real2, lod: ti.i32, threads: ti.i32, replicas: ti.i32):
        """g_v into the zeroed grad_rows[:V], then the straight-through adjoints: dC into grad_logits, dD's
        ``replicas`` copies into grad_rows[V:]. ``idx`` is the forward's, ``codebooks_t`` the codebooks
        transposed."""
        for t in range(threads):
            scatter_chunk(points, tree, rows, grad_out, grad_rows, t, lod, dtype, F, chunk)
        n = used_vertices(tree, lod)
        for v in range(logits.shape[0]):
            if v < n:
                softmax_stats(tree, grad_rows, logits, codebooks_t, idx, grad_logits, v, replicas, dtype, F, K)
        # columns 0 and 1 hold the statistics until the last loop, where each vertex's thread reads them
        # before overwriting them
        B = ti.static(min(K, BLOCK))
        for v, b in ti.ndrange(logits.shape[0], K // B):
            if v < n:
                g = grad_rows[v]
                if (g != 0).any():
                    base = ti.i64(level_of(tree, v)) * K
                    lse, sa = grad_logits[v, 0], grad_logits[v, 1]
                    for i in ti.static(range(B)):
                        if b * B + i >= 2:
                            grad_logits[v, b * B + i] = straight_through(logits, codebooks_t, v, b * B + i, base,
                                                                         g, lse, sa, F)
        for v in range(logits.shape[0]):
            if v < n:
                g = grad_rows[v]
                if (g != 0).any():
                    base = ti.i64(level_of(tree, v)) * K
                    lse, sa = grad_logits[v, 0], grad_logits[v, 1]
                    d0 = straight_through(logits, codebooks_t, v, 0, base, g, lse, sa, F)
                    d1 = straight_through(logits, codebooks_t, v, 1, base, g, lse, sa, F)
                    grad_logits[v, 0] = d0
                    grad_logits[v, 1] = d1

    return SimpleNamespace(forward=lean(forward), backward=lean(backward), chunk=chunk)


@functools.lru_cache(maxsize=None)
def hash_kernels(dtype, F: int, chunk: int = CHUNK) -> SimpleNamespace:
    """Hash-baseline kernels for float type ``dtype`` (ti.f32 / ti.f64) and feature dim ``F``."""
    vec3, vecF = vector_arrays(dtype, F)
    i64_1 = ti.types.ndarray(dtype=ti.i64, ndim=1)
    i32_1 = ti.types.ndarray(dtype=ti.i32, ndim=1)
    i32_2 = ti.types.ndarray(dtype=ti.i32, ndim=2)

    @ti.kernel
    def forward(points: vec3, tree: i64_1, codebooks: vecF, idx: i32_1, out: vecF, rows: i32_2, lod: ti.i32):
        """out[s] = z(points[s]) with T[v] = codebooks[idx[v]]; rows as the gather's."""
        for s in range(points.shape[0]):
            out[s] = sum_levels(points, tree, codebooks, idx, rows, s, lod, 0, dtype, F, True)

    @ti.kernel
    def backward(points: vec3, tree: i64_1, rows: i32_2, grad_out: vecF, idx: i32_1, grad_rows: vecF,
                 lod: ti.i32, threads: ti.i32, replicas: ti.i32):
        """g_v into the zeroed grad_rows[:V], then dD[idx[v]] += g_v into copy v mod ``replicas`` of dD in
        grad_rows[V:]."""
        for t in range(threads):
            scatter_chunk(points, tree, rows, grad_out, grad_rows, t, lod, dtype, F, chunk)
        n = used_vertices(tree, lod)
        for v in range(idx.shape[0]):
            if v < n:
                g = grad_rows[v]
                if (g != 0).any():
                    flush(grad_rows, code_gradient_row(grad_rows, idx.shape[0], v, idx[v], replicas), g, F)

    return SimpleNamespace(forward=lean(forward), backward=lean(backward), chunk=chunk)
