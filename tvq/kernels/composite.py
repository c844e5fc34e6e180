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
(any arch, float32 or float64). ``warp_kernels`` (CUDA, float32) gives each ray ``lanes`` (16, or 32) lanes
of a warp, a lane per sample, one round of ``lanes`` samples at a time. A thread per ray reads and writes
rows a ray's length apart across a warp; the lanes of one ray touch consecutive rows, so loads and stores
are coalesced. Transmittance is a prefix sum of tau over the ray's lanes (warp shuffles) in the log domain,
T_k = T_round exp(-sum_{j<k in round} tau_j), carried from round to round; C and D are per-lane partial sums
added over the ray's lanes at the end. Early termination keeps the thread-per-ray semantics: sample k > 0
counts when T_k >= eps and every sample before it counted (a prefix count of the samples left out, so
rounding never breaks the prefix), and the ray's T_n is the T of its first sample left out, or the T after
its last sample when none was. The backward pass needs the suffixes only
through g_C . S_k + g_D Z_k, which is g_C . C + g_D D minus a prefix sum of w_i (g_C . c_i + g_D t_i): one
scalar prefix sum per round.

Launch layout: the per-ray results as one (R, 6) tensor [C (3), A, D, T_n]; the input gradients as one
(S, 4) tensor [dsigma, dc (3)]: one allocation and one argument each; the cotangents as three tensors
g_C (R, 3), g_A (R,), g_D (R,). The background is a (B, 3) tensor
read at row r * bg_stride (B = 1 and stride 0 for one colour). dbg is a reduction left to torch.
"""

import functools

import taichi as ti

from .launch import lean


def density_activation(density: str, real):
    """The decoder's density activation as a Taichi function of its raw output y (``tvq.field``):
    max(y, 0), or exp(min(y, 30))."""
    if density not in ("relu", "exp"):
        raise ValueError(f"unknown density activation {density!r}")

    @ti.func
    def activate(y):
        sigma = real(0.0)
        if ti.static(density == "relu"):
            sigma = ti.max(y, real(0.0))
        else:
            sigma = ti.exp(ti.min(y, real(30.0)))
        return sigma

    return activate


# Columns of the per-ray output.
COLOUR, OPACITY, DEPTH, TRANS = 0, 3, 4, 5
OUT_COLUMNS = 6
WARP = 32
ALL_LANES = 0xFFFFFFFF


@ti.func
def _write_ray(out: ti.template(), bg: ti.template(), r, bg_stride, colour, depth, final):
    """Row r of the per-ray output: C over the background, A, D and T_n."""
    b = r * bg_stride
    for k in ti.static(range(3)):
        out[r, COLOUR + k] = colour[k] + final * bg[b, k]
    out[r, OPACITY] = 1 - final
    out[r, DEPTH] = depth
    out[r, TRANS] = final


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
            _write_ray(out, bg, r, bg_stride, colour, depth, trans)

    @ti.kernel
    def backward(
        sigma: arr1, rgb: arr2, t: arr1, dt: arr1, offsets: offsets_t, eps: real, out: arr2, g_colours: arr2,
        g_opacities: arr1, g_depths: arr1, grad_in: vec4_arr,
    ):
        for r in range(offsets.shape[0] - 1):
            start = offsets[r]
            end = offsets[r + 1]
            g_colour = vec3(g_colours[r, 0], g_colours[r, 1], g_colours[r, 2])
            g_opacity = g_opacities[r]
            g_depth = g_depths[r]
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


@functools.lru_cache(maxsize=None)
def warp_kernels(with_weights: bool = False, lanes: int = 16):
    """``(forward, backward)`` kernels with ``lanes`` (16 or 32) lanes of a warp per ray (CUDA, float32),
    launched and laid out exactly like ``kernels('f32', with_weights)``.

    The rays of one warp take as many rounds of ``lanes`` samples as its longest ray needs, so that every
    lane of the warp reaches every shuffle (a ray that ended, or stopped early, idles through them)."""
    if lanes not in (16, 32):
        raise ValueError(f"lanes must be 16 or 32, got {lanes}")
    real = ti.f32
    vec3 = ti.types.vector(3, real)
    arr1 = ti.types.ndarray(dtype=real, ndim=1)
    arr2 = ti.types.ndarray(dtype=real, ndim=2)
    offsets_t = ti.types.ndarray(dtype=ti.i64, ndim=1)
    vec4_arr = ti.types.ndarray(dtype=ti.types.vector(4, real), ndim=1)
    steps = tuple(1 << k for k in range(lanes.bit_length() - 1))  # 1, 2, 4, ... lanes / 2
    steps_down = tuple(reversed(steps))

    @ti.func
    def prefix_sum(x, lane):
        """Inclusive prefix sum of x over the lanes of one ray."""
        for d in ti.static(steps):
            y = _shuffle_up(x, d)
            if lane >= d:
                x += y
        return x

    @ti.func
    def ray_total(x, first):
        """Sum of x over the lanes of one ray (the first of which is warp lane ``first``), in each of them."""
        for d in ti.static(steps_down):
            x += _shuffle_down(x, d)
        return _from_lane(x, first)

    @ti.func
    def ray_max(x, first):
        """Maximum of x over the lanes of one ray, in each of them."""
        for d in ti.static(steps_down):
            x = ti.max(x, _shuffle_down(x, d))
        return _from_lane(x, first)

    @ti.func
    def transmittance(trans, tau, lane, first):
        """(sum of tau over the ray's lanes in this round, T of this lane's sample) given T at the round's
        start. The exclusive prefix is the inclusive one moved up a lane, not inclusive minus tau, which
        would lose the small terms next to a huge tau and give inf - inf = NaN for an infinite one."""
        inclusive = prefix_sum(tau, lane)
        before = _shuffle_up(inclusive, 1)
        if lane == 0:
            before = real(0.0)
        return _from_lane(inclusive, first + lanes - 1), trans * ti.exp(-before)

    @ti.func
    def early_stop(live, is_first, trans_k, eps, lane, first):
        """(counted, whether the ray stops in this round, T of its first sample not counted if it does).
        Sample k > 0 counts when T_k >= eps and every sample before it counted: an ulp-level wobble of T
        around eps never counts a sample after one that was left out."""
        counted = live
        stops = False
        first_stop = real(-1.0)
        if eps > 0:  # the same branch in every lane: the shuffles inside are safe
            short = live and not is_first and trans_k < eps
            shorts = prefix_sum(ti.select(short, real(1.0), real(0.0)), lane)  # exact small counts
            counted = live and shorts == 0
            stops = _from_lane(shorts, first + lanes - 1) > 0
            first_stop = ray_max(ti.select(short and shorts == 1, trans_k, real(-1.0)), first)
        return counted, stops, first_stop

    @ti.func
    def weigh(trans, tau, live, is_first, eps, lane, first):
        """One round's arithmetic, shared by both passes so the backward counts exactly the forward's
        samples: (sum of tau over the round, T_k, exp(-tau), counted, whether the ray stops, T of its first
        sample not counted, w_k)."""
        through, trans_k = transmittance(trans, tau, lane, first)
        e = ti.exp(-tau)
        counted, stops, first_stop = early_stop(live, is_first, trans_k, eps, lane, first)
        w = real(0.0)
        if counted:
            w = trans_k * (1 - e)
        return through, trans_k, e, counted, stops, first_stop, w

    @ti.func
    def warp_max(x):
        for d in ti.static((16, 8, 4, 2, 1)):
            x = ti.max(x, _shuffle_down(x, d))
        return _from_lane(x, 0)

    @ti.func
    def ray_of(g, num_rays, offsets: ti.template()):
        """(ray, lane, its first warp lane, start, end, rounds) of loop index g; rays past the last are empty.
        Taichi's range-for runs index g on hardware lane g % 32 (grid-stride, block_dim a multiple of 32)."""
        r = g // lanes
        lane = g % lanes
        start = ti.i64(0)
        end = ti.i64(0)
        if r < num_rays:
            start = offsets[r]
            end = offsets[r + 1]
        rounds = ti.cast(warp_max(ti.cast((end - start + lanes - 1) // lanes, real)), ti.i32)
        return r, lane, g % WARP - lane, start, end, rounds

    @ti.kernel
    def forward(
        sigma: arr1, rgb: arr2, t: arr1, dt: arr1, offsets: offsets_t, bg: arr2, bg_stride: ti.i32, eps: real,
        out: arr2, weights: arr1,
    ):
        ti.loop_config(block_dim=128)
        num_rays = offsets.shape[0] - 1
        for g in range((num_rays * lanes + WARP - 1) // WARP * WARP):  # whole warps
            r, lane, first, start, end, rounds = ray_of(g, num_rays, offsets)
            trans = real(1.0)  # T at the start of the round, the same in every lane of the ray
            final = real(1.0)
            stopped = False
            colour = vec3(0.0)  # this lane's share, summed over the ray's lanes at the end
            depth = real(0.0)
            for k in range(rounds):
                i = start + k * lanes + lane
                live = i < end and not stopped
                tau = real(0.0)
                c = vec3(0.0)
                t_i = real(0.0)
                if live:
                    tau = sigma[i] * dt[i]
                    c = vec3(rgb[i, 0], rgb[i, 1], rgb[i, 2])
                    t_i = t[i]
                through, _, _, _, stops, first_stop, w = weigh(trans, tau, live, i == start, eps, lane, first)
                colour += w * c
                depth += w * t_i
                if ti.static(with_weights):
                    if i < end:
                        weights[i] = w
                trans_next = trans * ti.exp(-through)
                if not stopped and (stops or trans_next < eps):
                    # T_n: the T of the ray's first sample not counted, or the T after the round when all counted
                    final = ti.select(stops, first_stop, trans_next)
                    stopped = True
                if not stopped:
                    trans = trans_next
            if not stopped:
                final = trans
            colour = vec3(ray_total(colour[0], first), ray_total(colour[1], first), ray_total(colour[2], first))
            depth = ray_total(depth, first)
            if lane == 0 and r < num_rays:
                _write_ray(out, bg, r, bg_stride, colour, depth, final)

    @ti.kernel
    def backward(
        sigma: arr1, rgb: arr2, t: arr1, dt: arr1, offsets: offsets_t, eps: real, out: arr2, g_colour: arr2,
        g_opacity: arr1, g_depth: arr1, grad_in: vec4_arr,
    ):
        ti.loop_config(block_dim=128)
        num_rays = offsets.shape[0] - 1
        for g in range((num_rays * lanes + WARP - 1) // WARP * WARP):
            r, lane, first, start, end, rounds = ray_of(g, num_rays, offsets)
            gc = vec3(0.0)
            gd = real(0.0)
            common = real(0.0)  # the A term, the same for every sample of the ray
            total = real(0.0)
            if r < num_rays:
                gc = vec3(g_colour[r, 0], g_colour[r, 1], g_colour[r, 2])
                gd = g_depth[r]
                common = g_opacity[r] * out[r, TRANS]
                # g_C . S_k + g_D Z_k = total - sum_{i<=k} w_i h_i with h_i = g_C . c_i + g_D t_i
                total = gc.dot(vec3(out[r, COLOUR], out[r, COLOUR + 1], out[r, COLOUR + 2])) + gd * out[r, DEPTH]
            trans = real(1.0)
            done = real(0.0)  # sum of w h over the rounds before this one
            stopped = False
            for k in range(rounds):
                i = start + k * lanes + lane
                live = i < end and not stopped
                tau = real(0.0)
                d_t = real(0.0)
                h = real(0.0)
                if live:
                    d_t = dt[i]
                    tau = sigma[i] * d_t
                    h = gc.dot(vec3(rgb[i, 0], rgb[i, 1], rgb[i, 2])) + gd * t[i]
                through, trans_k, e, counted, stops, _, w = weigh(trans, tau, live, i == start, eps, lane, first)
                upto = done + prefix_sum(w * h, lane)
                if i < end:
                    value = ti.Vector([0.0, 0.0, 0.0, 0.0], dt=real)
                    if counted:
                        dtau = trans_k * e * h - (total - upto) + common
                        value = ti.Vector([d_t * dtau, w * gc[0], w * gc[1], w * gc[2]])
                    grad_in[i] = value
                done = _from_lane(upto, first + lanes - 1)
                trans = trans * ti.exp(-through)
                if stops or trans < eps:  # the ray stopped in this round: later samples get no gradient
                    stopped = True

    return lean(forward), lean(backward)
