"""A whole ray in one thread: walk, features, decoder MLP and compositing fused into one launch per frame.

For the ray o + t d (normalised cube) the thread walks the occupied cells of the LOD's level
(``tvq.kernels.walk``: the same samples t_k = t0 + (k + 1/2) dt, dt = (t1 - t0) / n, in every occupied
cell [t0, t1] as ``tvq.kernels.raymarch``), and for each sample in turn

    z = sum_c w_c(x) B[v_c]                        (trilinear over the cell's 8 corners, x = o + t d)
    y = W2 relu(W1_f z + u_ray) + b2               (u_ray = W1_v PE(d) + b1: the view part, once per ray)
    sigma = max(y_0, 0) or exp(min(y_0, 30)),  c = sigmoid(y_1..3)   (the decoder's density activation)
    C += T (1 - e^{-sigma dt}) c,  D += T (1 - e^{-sigma dt}) t,  T *= e^{-sigma dt}

ending after the first sample that leaves T < eps (or at ``max_per_ray`` samples). No sample is written
to memory, no host round trip happens between rounds, and a terminated ray costs nothing more. The n
samples of a cell are decoded together (the weights of W1 and W2 are read once per cell, not once per
sample); only those up to the ray's end are composited.

B is the LOD's *baked* feature table, one row per vertex of its finest level: the sum over the coarser
feature levels of tvq's multi-resolution features is folded into it (``tvq.infer.baked_table``). A coarse
level's trilinear interpolant restricted to one of its cells is a polynomial in span{1, x, y, z, xy, yz,
zx, xyz}, and trilinear interpolation on a finer cell inside it reproduces such a polynomial exactly, so
interpolating B equals summing the per-level interpolations (up to rounding): one 8-corner gather per
sample instead of one per level. The cell's corner rows come from the walk's binary search itself, so
no second lookup is needed.

Arguments: ``codes`` the level's sorted cell codes with their ``walk_index`` (``starts``, ``shift``),
``cell_vertices`` (N, 8) int32 corner rows of the level's cells (in ``codes`` order), ``table``
B (V, F), ``w1`` (H, F), ``view_bias`` (H, R) (u per ray, column-major so a warp's reads coalesce),
``w2`` (4, H), ``b2`` (4,). Outputs per ray: colour (R, 3) (background not added), T, D (normalised t),
samples composited.
"""

import functools

import taichi as ti

from .composite import density_activation
from .gather import corner_weight
from .launch import lean
from .walk import block_exit, clip, entry_cell, locate, next_cell


MAX_BATCH = 8  # samples per cell the kernel decodes together (its registers hold all of them)


@functools.lru_cache(maxsize=None)
def kernel(F: int, n: int, density: str = "relu", block_dim: int = 0):
    """The kernel for F-dimensional features, ``n`` samples per cell (1 <= n <= ``MAX_BATCH``) and the
    decoder's ``density`` activation (relu or exp); ``block_dim`` threads per GPU block (0: Taichi's)."""
    if not 1 <= n <= MAX_BATCH:
        raise ValueError(f"the fused kernel takes 1..{MAX_BATCH} samples per cell, not {n}")
    real = ti.f32
    vec3 = ti.types.vector(3, real)
    vecF = ti.types.vector(F, real)
    rays_t = ti.types.ndarray(dtype=real, ndim=2)
    f1 = ti.types.ndarray(dtype=real, ndim=1)
    f2 = ti.types.ndarray(dtype=real, ndim=2)
    i1 = ti.types.ndarray(dtype=ti.i32, ndim=1)
    i2 = ti.types.ndarray(dtype=ti.i32, ndim=2)
    i64_1 = ti.types.ndarray(dtype=ti.i64, ndim=1)
    table_t = ti.types.ndarray(dtype=vecF, ndim=1)
    activate = density_activation(density, real)

    @ti.kernel
    def shade(origins: rays_t, dirs: rays_t, codes: i64_1, starts: i1, shift: ti.i32, cell_vertices: i2, level: ti.i32,
              max_per_ray: ti.i32, table: table_t, w1: f2, view_bias: f2, w2: f2, b2: f1, eps: real,
              colour_out: f2, trans_out: f1, depth_out: f1, samples_out: i1):
        res = 1 << level
        h = real(2.0) / real(res)
        num_codes = ti.cast(codes.shape[0], ti.i64)
        hidden = w1.shape[0]
        if ti.static(block_dim > 0):
            ti.loop_config(block_dim=block_dim)
        for r in range(origins.shape[0]):
            o = vec3(origins[r, 0], origins[r, 1], origins[r, 2])
            d = vec3(dirs[r, 0], dirs[r, 1], dirs[r, 2])
            t_in, t_out = clip(o, d, 0.0, 1e10, real)
            trans = real(1.0)
            colour = vec3(0.0)
            depth = real(0.0)
            count = 0
            if t_in < t_out and num_codes > 0:
                ijk = entry_cell(o, d, t_in, h, res)
                t = t_in
                it = 0
                marching = True
                while marching and t < t_out and it < 3 * res + 3 and count < max_per_ray:
                    it += 1
                    row, occupied, s = locate(codes, starts, shift, num_codes, ijk, level, True)
                    t_next, axis = block_exit(o, d, ijk, s, h, real)
                    t1 = ti.min(t_next, t_out)
                    if occupied and t1 > t:
                        # the cell's n samples together: each corner row and each weight is read once
                        dt = (t1 - t) / real(float(n))
                        cell = ti.cast(ijk, real)
                        frac = ti.Matrix.zero(real, n, 3)
                        for k in ti.static(range(n)):
                            x = (o + (t + real(k + 0.5) * dt) * d + 1) / h - cell
                            for ax in ti.static(range(3)):
                                frac[k, ax] = x[ax]
                        z = ti.Matrix.zero(real, n, F)
                        for c in ti.static(range(8)):
                            v = table[cell_vertices[row, c]]
                            for k in ti.static(range(n)):
                                wc = corner_weight(ti.Vector([frac[k, 0], frac[k, 1], frac[k, 2]]), c)
                                for i in ti.static(range(F)):
                                    z[k, i] += wc * v[i]
                        y = ti.Matrix.zero(real, n, 4)
                        for j in range(hidden):
                            u = view_bias[j, r]
                            wj = vecF(0.0)
                            for i in ti.static(range(F)):
                                wj[i] = w1[j, i]
                            w2j = ti.Vector([w2[0, j], w2[1, j], w2[2, j], w2[3, j]])
                            for k in ti.static(range(n)):
                                a = u
                                for i in ti.static(range(F)):
                                    a += wj[i] * z[k, i]
                                a = ti.max(a, real(0.0))
                                for q in ti.static(range(4)):
                                    y[k, q] += w2j[q] * a
                        for k in ti.static(range(n)):
                            if marching and count < max_per_ray:
                                count += 1
                                sigma = activate(y[k, 0] + b2[0])
                                rgb = vec3(1.0 / (1.0 + ti.exp(-(y[k, 1] + b2[1]))),
                                           1.0 / (1.0 + ti.exp(-(y[k, 2] + b2[2]))),
                                           1.0 / (1.0 + ti.exp(-(y[k, 3] + b2[3]))))
                                e = ti.exp(-sigma * dt)
                                w = trans * (1 - e)
                                colour += w * rgb
                                depth += w * (t + real(k + 0.5) * dt)
                                trans *= e
                                if trans < eps:
                                    marching = False
                    if marching:
                        if axis < 0 or t_next >= t_out:
                            marching = False
                        else:
                            new, done = next_cell(o, d, ijk, s, axis, t_next, h, res)
                            if done:
                                marching = False
                            ijk = new
                            t = ti.max(t, t_next)
            for q in ti.static(range(3)):
                colour_out[r, q] = colour[q]
            trans_out[r] = trans
            depth_out[r] = depth
            samples_out[r] = count

    return lean(shade)
