"""Volume rendering of packed samples: colour, opacity and depth per ray, and the hand-written adjoint.

Per ray r, over its samples i = 0..n-1 (rows ray_offsets[r]:ray_offsets[r+1], front to back):

    tau_i = sigma_i dt_i,   alpha_i = 1 - exp(-tau_i),   T_i = prod_{j<i} exp(-tau_j),   w_i = T_i alpha_i

    C = sum_i w_i c_i + T_n bg,    A = 1 - T_n,    D = sum_i w_i t_i

With early termination (threshold eps > 0, inference) the loop stops after the first sample i with
T_{i+1} < eps; later samples get zero weight and T_n is that T_{i+1}.

Backward, with cotangents g_C, g_A, g_D and the suffixes S_k = sum_{i>k} w_i c_i + T_n bg and
Z_k = sum_{i>k} w_i t_i (dT_i/dtau_k = -T_i for i > k, dw_k/dtau_k = T_{k+1}):

    dc_k     = w_k g_C
    dsigma_k = dt_k [ g_C . (T_{k+1} c_k - S_k) + g_A T_n + g_D (T_{k+1} t_k - Z_k) ]
    dbg      = T_n g_C

One pass per ray in sample order: T_k is recomputed exactly as in the forward pass (no division by
transmittance, which would fail once T underflows), and the suffixes come from the saved totals,
S_k = C - sum_{i<=k} w_i c_i and Z_k = D - sum_{i<=k} w_i t_i.

Launch layout: the per-ray results as one (R, 6) tensor [C (3), A, D, T_n]; the cotangents as one (R, 5)
tensor [g_C (3), g_A, g_D]; the input gradients as one (S, 4) tensor [dsigma, dc (3)]: one allocation and
one argument each. The background is a (B, 3) tensor read at row r * bg_stride (B = 1 and stride 0 for one
colour). dbg is a reduction left to torch.
"""

import functools

import taichi as ti

from .launch import lean

# Columns of the per-ray output.
COLOUR, OPACITY, DEPTH, TRANS = 0, 3, 4, 5
OUT_COLUMNS = 6


@functools.lru_cache(maxsize=None)
def kernels(dtype: str = "f32", with_weights: bool = False):
    """``(forward, backward)`` kernels for float ``dtype`` ('f32' or 'f64'); ``with_weights`` makes the
    forward kernel also write w_i per sample."""
    real = {"f32": ti.f32, "f64": ti.f64}[dtype]
    vec3 = ti.types.vector(3, real)
    arr1 = ti.types.ndarray(dtype=real, ndim=1)
    arr2 = ti.types.ndarray(dtype=real, ndim=2)
    offsets_t = ti.types.ndarray(dtype=ti.i64, ndim=1)
    # one vector store per sample (16 bytes in f32): a warp's stores land ~16 samples apart, so four scalar
    # stores per sample would each touch 32 partly written sectors
    vec4_arr = ti.types.ndarray(dtype=ti.types.vector(4, real), ndim=1)

    @ti.kernel
    def forward(
        sigma: arr1, rgb: arr2, t: arr1, dt: arr1, offsets: offsets_t, bg: arr2, bg_stride: ti.i32, eps: real,
        out: arr2, weights: arr1,
    ):
        for r in range(offsets.shape[0] - 1):
            start = offsets[r]
            end = offsets[r + 1]
            trans = real(1.0)
            colour = vec3(0.0)
            depth = real(0.0)
            i = start
            while i < end:
                e = ti.exp(-sigma[i] * dt[i])
                w = trans * (1 - e)
                colour += w * vec3(rgb[i, 0], rgb[i, 1], rgb[i, 2])
                depth += w * t[i]
                if ti.static(with_weights):
                    weights[i] = w
                trans *= e
                i += 1
                if trans < eps:
                    break
            if ti.static(with_weights):
                while i < end:  # terminated early: the rest carry no weight
                    weights[i] = 0
                    i += 1
            b = r * bg_stride
            for c in ti.static(range(3)):
                out[r, COLOUR + c] = colour[c] + trans * bg[b, c]
            out[r, OPACITY] = 1 - trans
            out[r, DEPTH] = depth
            out[r, TRANS] = trans

    @ti.kernel
    def backward(
        sigma: arr1, rgb: arr2, t: arr1, dt: arr1, offsets: offsets_t, eps: real, out: arr2, grad: arr2,
        grad_in: vec4_arr,
    ):
        for r in range(offsets.shape[0] - 1):
            start = offsets[r]
            end = offsets[r + 1]
            g_colour = vec3(grad[r, 0], grad[r, 1], grad[r, 2])
            g_opacity = grad[r, 3]
            g_depth = grad[r, 4]
            final = out[r, TRANS]
            suffix = vec3(out[r, COLOUR], out[r, COLOUR + 1], out[r, COLOUR + 2])  # S_{k-1}
            suffix_depth = out[r, DEPTH]  # Z_{k-1}
            # the A term is the same for every sample of the ray
            common = g_opacity * final
            trans = real(1.0)
            i = start
            while i < end:
                e = ti.exp(-sigma[i] * dt[i])
                w = trans * (1 - e)
                trans_next = trans * e
                c = vec3(rgb[i, 0], rgb[i, 1], rgb[i, 2])
                suffix -= w * c
                suffix_depth -= w * t[i]
                dtau = g_colour.dot(trans_next * c - suffix) + common + g_depth * (trans_next * t[i] - suffix_depth)
                grad_in[i] = ti.Vector([dt[i] * dtau, w * g_colour[0], w * g_colour[1], w * g_colour[2]])
                trans = trans_next
                i += 1
                if trans < eps:
                    break
            while i < end:  # past early termination: no gradient
                grad_in[i] = ti.Vector([0.0, 0.0, 0.0, 0.0], dt=real)
                i += 1

    return lean(forward), lean(backward)
