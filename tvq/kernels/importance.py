"""Per-vertex importance for pruning (VQRF), forward only.

With per-sample weights omega_s (the compositing weight T_s alpha_s of each sample) and the trilinear
weights w_c(x_s) of the gather, the importance of vertex v is

    I[v] = sum_s omega_s * sum_{k, c : v_k(i_k(x_s), c) = v} w_c(x_s)

over the first ``lod`` levels. That is the gather's backward with the scalar cotangent omega (feature
dim 1), so the kernel is built from ``tvq.kernels.gather``'s pieces: a first loop finds every sample's
cell row per level (as the gather's forward records them), a second runs the gather's chunked scatter.
"""

import functools

import taichi as ti

from .gather import CHUNK, locate, scatter_chunk, vector_arrays
from .launch import lean


@functools.lru_cache(maxsize=None)
def importance_kernel(dtype, chunk: int = CHUNK):
    """I (V, 1) += importance of ``points`` (S, 3) with ``weights`` (S, 1); ``rows`` (S, lod) is scratch."""
    vec3, vec1 = vector_arrays(dtype, 1)
    i64_1 = ti.types.ndarray(dtype=ti.i64, ndim=1)
    i32_2 = ti.types.ndarray(dtype=ti.i32, ndim=2)

    @ti.kernel
    def importance(points: vec3, tree: i64_1, weights: vec1, rows: i32_2, out: vec1, lod: ti.i32,
                   threads: ti.i32):
        for s in range(points.shape[0]):
            row = ti.i64(-1)
            for k in range(lod):
                row, _ = locate(points, tree, s, k, row, dtype)
                rows[s, k] = ti.cast(row, ti.i32)
        for t in range(threads):
            scatter_chunk(points, tree, rows, weights, out, t, lod, dtype, 1, chunk)

    return lean(importance)
