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

Two implementations of these formulas. ``kernels`` runs one thread per ray, walking its samples in order
(any arch, float32 or float64). ``warp_kernels`` (CUDA, float32) runs one warp per ray with a lane per
sample, 32 samples at a time: a thread per ray reads and writes samples 16 or so rows apart across a
warp, while lanes of one ray touch consecutive rows, so every load and store is coalesced (half the GPU
time of one thread per ray at 2^20 samples on an H100, ``benchmarks/bench_raymarch_composite.py``). The running
products and sums become warp prefix sums (``shfl_up``), in the log domain for transmittance,
T_k = T_chunk exp(-sum_{j<k in chunk} tau_j), and the chunk's totals carry to the next 32 samples.
Early termination keeps the thread-per-ray semantics: sample k > 0 counts when T_k >= eps (T is
non-increasing, so the counted samples are a prefix), and the ray's T_n is the transmittance after the
last counted sample. The backward pass gets the suffixes from prefix sums of w c and w t the same way.

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
WARP = 32
ALL_LANES = 0xFFFFFFFF


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


# Warp shuffles move 32-bit words; Taichi 1.7's float32 shuffles fail to compile in these kernels (an LLVM
# assertion), so a float travels as the bits of an int32.
@ti.func
def _shuffle_up(x, d):
    return ti.bit_cast(ti.simt.warp.shfl_up_i32(ti.u32(ALL_LANES), ti.bit_cast(x, ti.i32), d), ti.f32)


@ti.func
def _shuffle_down(x, d):
    return ti.bit_cast(ti.simt.warp.shfl_down_i32(ti.u32(ALL_LANES), ti.bit_cast(x, ti.i32), d), ti.f32)


@ti.func
def _from_lane(x, lane):
    return ti.bit_cast(ti.simt.warp.shfl_sync_i32(ti.u32(ALL_LANES), ti.bit_cast(x, ti.i32), lane), ti.f32)


@ti.func
def _lane_prefix_sum(x, lane):
    """Inclusive prefix sum of x over the lanes of a warp (every lane must take part)."""
    for d in ti.static((1, 2, 4, 8, 16)):
        y = _shuffle_up(x, d)
        if lane >= d:
            x += y
    return x


@ti.func
def _lane_total(x):
    """Sum of x over the lanes of a warp, in every lane."""
    for d in ti.static((16, 8, 4, 2, 1)):
        x += _shuffle_down(x, d)
    return _from_lane(x, 0)


@ti.func
def _lane_max(x):
    """Maximum of x over the lanes of a warp, in every lane."""
    for d in ti.static((16, 8, 4, 2, 1)):
        x = ti.max(x, _shuffle_down(x, d))
    return _from_lane(x, 0)


@ti.func
def _last_lane(x):
    return _from_lane(x, WARP - 1)


@functools.lru_cache(maxsize=None)
def warp_kernels(with_weights: bool = False):
    """``(forward, backward)`` kernels with one warp per ray (CUDA, float32), launched and laid out exactly
    like ``kernels('f32', with_weights)``."""
    real = ti.f32
    vec3 = ti.types.vector(3, real)
    arr1 = ti.types.ndarray(dtype=real, ndim=1)
    arr2 = ti.types.ndarray(dtype=real, ndim=2)
    offsets_t = ti.types.ndarray(dtype=ti.i64, ndim=1)
    vec4_arr = ti.types.ndarray(dtype=ti.types.vector(4, real), ndim=1)

    @ti.kernel
    def forward(
        sigma: arr1, rgb: arr2, t: arr1, dt: arr1, offsets: offsets_t, bg: arr2, bg_stride: ti.i32, eps: real,
        out: arr2, weights: arr1,
    ):
        ti.loop_config(block_dim=128)
        for g in range((offsets.shape[0] - 1) * WARP):
            r = g // WARP
            lane = g % WARP
            start = offsets[r]
            end = offsets[r + 1]
            trans = real(1.0)  # T at the start of the chunk, the same in every lane
            final = real(1.0)
            colour = vec3(0.0)  # this lane's share, summed over the warp at the end
            depth = real(0.0)
            base = start
            stopped = False
            while base < end:
                i = base + lane
                tau = real(0.0)
                c = vec3(0.0)
                t_i = real(0.0)
                if i < end:
                    tau = sigma[i] * dt[i]
                    c = vec3(rgb[i, 0], rgb[i, 1], rgb[i, 2])
                    t_i = t[i]
                before = _lane_prefix_sum(tau, lane) - tau
                trans_k = trans * ti.exp(-before)
                counted = i < end and (i == start or trans_k >= eps)
                w = real(0.0)
                if counted:
                    w = trans_k * (1 - ti.exp(-tau))
                colour += w * c
                depth += w * t_i
                if ti.static(with_weights):
                    if i < end:
                        weights[i] = w
                trans_next = trans * ti.exp(-_last_lane(before + tau))
                if trans_next < eps:  # stops in this chunk: T_n is the T of the first sample not counted
                    final = _lane_max(ti.select(counted, real(-1.0), trans_k))
                    final = ti.max(final, trans_next)
                    stopped = True
                    break
                trans = trans_next
                base += WARP
            if not stopped:
                final = trans
            if ti.static(with_weights):
                base += WARP
                while base < end:  # terminated early: the rest carry no weight
                    if base + lane < end:
                        weights[base + lane] = 0
                    base += WARP
            colour = vec3(_lane_total(colour[0]), _lane_total(colour[1]), _lane_total(colour[2]))
            depth = _lane_total(depth)
            if lane == 0:
                b = r * bg_stride
                for k in ti.static(range(3)):
                    out[r, COLOUR + k] = colour[k] + final * bg[b, k]
                out[r, OPACITY] = 1 - final
                out[r, DEPTH] = depth
                out[r, TRANS] = final

    @ti.kernel
    def backward(
        sigma: arr1, rgb: arr2, t: arr1, dt: arr1, offsets: offsets_t, eps: real, out: arr2, grad: arr2,
        grad_in: vec4_arr,
    ):
        ti.loop_config(block_dim=128)
        for g in range((offsets.shape[0] - 1) * WARP):
            r = g // WARP
            lane = g % WARP
            start = offsets[r]
            end = offsets[r + 1]
            g_colour = vec3(grad[r, 0], grad[r, 1], grad[r, 2])
            g_depth = grad[r, 4]
            common = grad[r, 3] * out[r, TRANS]  # the A term, the same for every sample of the ray
            total_colour = vec3(out[r, COLOUR], out[r, COLOUR + 1], out[r, COLOUR + 2])
            total_depth = out[r, DEPTH]
            trans = real(1.0)
            done_colour = vec3(0.0)  # sum of w c over the chunks before this one
            done_depth = real(0.0)
            stopped = False
            base = start
            while base < end:
                i = base + lane
                tau = real(0.0)
                d_t = real(0.0)
                c = vec3(0.0)
                t_i = real(0.0)
                if i < end and not stopped:
                    d_t = dt[i]
                    tau = sigma[i] * d_t
                    c = vec3(rgb[i, 0], rgb[i, 1], rgb[i, 2])
                    t_i = t[i]
                before = _lane_prefix_sum(tau, lane) - tau
                trans_k = trans * ti.exp(-before)
                e = ti.exp(-tau)
                counted = i < end and not stopped and (i == start or trans_k >= eps)
                w = real(0.0)
                if counted:
                    w = trans_k * (1 - e)
                upto_colour = done_colour + vec3(_lane_prefix_sum(w * c[0], lane), _lane_prefix_sum(w * c[1], lane),
                                                 _lane_prefix_sum(w * c[2], lane))
                upto_depth = done_depth + _lane_prefix_sum(w * t_i, lane)
                if i < end:
                    value = ti.Vector([0.0, 0.0, 0.0, 0.0], dt=real)
                    if counted:
                        trans_next = trans_k * e
                        suffix = total_colour - upto_colour  # S_k
                        suffix_depth = total_depth - upto_depth  # Z_k
                        dtau = (g_colour.dot(trans_next * c - suffix) + common
                                + g_depth * (trans_next * t_i - suffix_depth))
                        value = ti.Vector([d_t * dtau, w * g_colour[0], w * g_colour[1], w * g_colour[2]])
                    grad_in[i] = value
                done_colour = vec3(_last_lane(upto_colour[0]), _last_lane(upto_colour[1]), _last_lane(upto_colour[2]))
                done_depth = _last_lane(upto_depth)
                trans = trans * ti.exp(-_last_lane(before + tau))
                if trans < eps:  # the ray stopped in this chunk: later samples get no gradient
                    stopped = True
                base += WARP

    return lean(forward), lean(backward)
