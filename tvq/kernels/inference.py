"""Inference kernels: ray marching that resumes where it stopped, the feature gather of the samples it
emitted, and compositing that carries each ray's state from one round to the next. No gradients.

The training path (``tvq.sampling.raymarch`` -> ``ops.gather`` -> MLP -> ``ops.composite``) marches every
sample of every ray before the MLP sees any, then composites with early termination: on a visual hull
most of those samples lie behind the first opaque surface and never count. Here a frame is rendered in
rounds over the rays still alive, with a per-ray state kept between rounds:

1. ``march``: one thread per alive ray continues the walk of ``tvq.kernels.walk`` (the DDA of
   ``tvq.kernels.raymarch`` over the occupied cells of one level, the same empty-block skipping, the same
   sample positions t_k = t0 + (k + 1/2) (t1 - t0) / n in every occupied cell [t0, t1]) and emits at most ``k`` samples
   into its row of (A, k) buffers. The walk's state (cell coordinates, the cell's entry distance, the
   loop counter, the next sample inside the cell, the samples emitted so far) is stored when the round's
   budget is spent, so the next round emits exactly the samples the one-shot marcher emits next; the
   per-ray cap ``max_per_ray`` ends the walk as it does there. A ray whose walk ends is marked done.
2. ``gather``: one thread per emitted sample computes x = o + t d and the feature sum of
   ``tvq.kernels.gather`` over the first ``lod`` levels (table rows are vertices: the hard codes of a VQ or
   hash grid are resolved into a (V, F) table once, outside the frame loop), written compactly at
   ``offsets[a] + j`` together with the sample's alive-ray index.
3. The MLP runs in torch on the compact rows (``tvq.infer``).
4. ``composite``: one thread per alive ray continues the front-to-back sum of ``tvq.kernels.composite``
   with its carried transmittance T, colour C and depth D, over the round's samples, with sigma =
   max(y0, 0) or exp(min(y0, 30)) (the decoder's density activation) and c = sigmoid(y1..3) of the MLP's
   raw outputs y, stopping after the first sample that
   leaves T < eps. A ray stays alive while T >= eps and its walk has samples left.

Early termination therefore also ends the marching and the MLP of a ray (up to the rest of one round),
and a ray that misses the occupied cells costs one clipped walk. Per-ray state layout:

    istate (R, 8) int32: cell i, j, k, loop counter, next sample in the cell, samples emitted,
                         status (0 new, 1 marching, 2 done), samples composited
    fstate (R, 8) f32:   walk t, C (3), D, T, entry distance of the first occupied cell (-1: none), unused
"""

import functools

import taichi as ti

from .composite import density_activation
from .gather import CELL_HI, CELL_LO, META, N_CELLS, N_LEVELS, RES, corner_vertex, corner_weight, level_info
from .launch import lean
from .morton import find_code, morton3
from .walk import block_exit, clip, entry_cell, locate, next_cell

# istate columns
I_CELL, I_IT, I_KCELL, I_EMITTED, I_STATUS, I_COMPOSITED = 0, 3, 4, 5, 6, 7
NEW, MARCHING, DONE = 0, 1, 2
# fstate columns
F_T, F_COLOUR, F_DEPTH, F_TRANS, F_FIRST = 0, 1, 4, 5, 6
STATE_COLUMNS = 8


@functools.lru_cache(maxsize=None)
def kernels(F: int, density: str = "relu"):
    """``(march, gather, composite)`` for float32 features of dimension ``F`` and the decoder's ``density``
    activation."""
    real = ti.f32
    vec3 = ti.types.vector(3, real)
    ivec3 = ti.types.vector(3, ti.i32)
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
    def march(origins: rays_t, dirs: rays_t, codes: i64_1, starts: i1, shift: ti.i32, level: ti.i32, n: ti.i32,
              max_per_ray: ti.i32, alive: i1, k_round: ti.i32, istate: i2, fstate: f2, t_buf: f1, dt_buf: f1,
              counts: i1):
        """Up to ``k_round`` more samples of each alive ray into t_buf/dt_buf[a * k_round + j]; counts[a]."""
        res = 1 << level
        h = real(2.0) / real(res)
        num_codes = ti.cast(codes.shape[0], ti.i64)
        for a in range(alive.shape[0]):
            r = alive[a]
            o = vec3(origins[r, 0], origins[r, 1], origins[r, 2])
            d = vec3(dirs[r, 0], dirs[r, 1], dirs[r, 2])
            t_in, t_out = clip(o, d, 0.0, 1e10, real)
            status = istate[r, I_STATUS]
            ijk = ivec3(istate[r, I_CELL], istate[r, I_CELL + 1], istate[r, I_CELL + 2])
            it = istate[r, I_IT]
            kcell = istate[r, I_KCELL]
            emitted = istate[r, I_EMITTED]
            t = fstate[r, F_T]
            if status == NEW:
                status = DONE
                if t_in < t_out:
                    status = MARCHING
                    ijk = entry_cell(o, d, t_in, h, res)
                    t = t_in
                    it = 0
                    kcell = 0
            budget = ti.min(k_round, max_per_ray - emitted)
            count = 0
            base = a * k_round
            while status == MARCHING:
                if not (t < t_out and it < 3 * res + 3) or emitted + count >= max_per_ray:
                    status = DONE
                    break
                if count >= budget:  # round spent at a cell boundary: resume at the top of this cell
                    break
                it += 1
                _, occupied, s = locate(codes, starts, shift, num_codes, ijk, level, True)
                t_next, axis = block_exit(o, d, ijk, s, h, real)
                t1 = ti.min(t_next, t_out)
                paused = False
                if occupied and t1 > t:
                    dt = (t1 - t) / real(n)
                    if emitted + count == 0:
                        fstate[r, F_FIRST] = t
                    while kcell < n and count < budget:
                        t_buf[base + count] = t + (real(kcell) + real(0.5)) * dt
                        dt_buf[base + count] = dt
                        count += 1
                        kcell += 1
                    if kcell < n:  # the budget ran out inside this cell
                        paused = True
                        if emitted + count >= max_per_ray:
                            status = DONE
                if paused:
                    it -= 1  # the resumed round re-enters this cell's iteration
                    break
                kcell = 0
                if axis < 0 or t_next >= t_out:
                    status = DONE
                    break
                new, done = next_cell(o, d, ijk, s, axis, t_next, h, res)
                if done:
                    status = DONE
                    break
                ijk = new
                t = ti.max(t, t_next)
            for ax in ti.static(range(3)):
                istate[r, I_CELL + ax] = ijk[ax]
            istate[r, I_IT] = it
            istate[r, I_KCELL] = kcell
            istate[r, I_EMITTED] = emitted + count
            istate[r, I_STATUS] = status
            fstate[r, F_T] = t
            counts[a] = count

    @ti.func
    def features_at(x, tree: ti.template(), table: ti.template(), lod: ti.i32):
        """The feature sum of ``tvq.kernels.gather`` at x (normalised) over the first ``lod`` levels."""
        acc = ti.Vector.zero(real, F)
        row = ti.i64(-1)
        inside = ti.abs(x[0]) <= 1 and ti.abs(x[1]) <= 1 and ti.abs(x[2]) <= 1  # False for NaN
        codes = META + 5 * tree[N_LEVELS]
        for k in range(lod):
            res = level_info(tree, k, RES)
            u = (x + 1) * ti.cast(res, real) * 0.5
            i = ti.min(ti.cast(ti.floor(u), ti.i64), res - 1)
            frac = u - ti.cast(i, real)
            found = ti.i64(-1)
            if inside:
                lo = level_info(tree, k, CELL_LO)
                hi = level_info(tree, k, CELL_HI)
                if row >= 0:
                    children = tree[codes + 5 * tree[N_CELLS] + row]
                    if children != -1:
                        lo = children & ti.i64(0xFFFFFFFF)
                        hi = children >> 32
                found = find_code(tree, codes + lo, codes + hi, morton3(i[0], i[1], i[2]))
            row = ti.i64(-1)
            if found >= 0:
                row = found - codes
                for c in ti.static(range(8)):
                    acc += corner_weight(frac, c) * table[corner_vertex(tree, row, c)]
        return acc

    @ti.kernel
    def gather(origins: rays_t, dirs: rays_t, tree: i64_1, table: table_t, lod: ti.i32, alive: i1,
               k_round: ti.i32, t_buf: f1, counts: i1, offsets: i1, feats: table_t, sample_ray: i1):
        """feats[offsets[a] + j] = z(o + t d) of sample j of alive ray a; sample_ray = a."""
        for g in range(alive.shape[0] * k_round):
            a = g // k_round
            j = g % k_round
            if j < counts[a]:
                r = alive[a]
                o = vec3(origins[r, 0], origins[r, 1], origins[r, 2])
                d = vec3(dirs[r, 0], dirs[r, 1], dirs[r, 2])
                x = o + t_buf[g] * d
                s = offsets[a] + j
                feats[s] = features_at(x, tree, table, lod)
                sample_ray[s] = a

    @ti.kernel
    def composite(alive: i1, k_round: ti.i32, t_buf: f1, dt_buf: f1, counts: i1, offsets: i1, out: f2,
                  eps: real, istate: i2, fstate: f2, still: i1):
        """Carry T, C, D of each alive ray over its samples of this round; still[a] = 1 if it goes on."""
        for a in range(alive.shape[0]):
            r = alive[a]
            trans = fstate[r, F_TRANS]
            colour = vec3(fstate[r, F_COLOUR], fstate[r, F_COLOUR + 1], fstate[r, F_COLOUR + 2])
            depth = fstate[r, F_DEPTH]
            base = a * k_round
            start = offsets[a]
            j = 0
            n = counts[a]
            while j < n:
                y = ti.Vector([out[start + j, 0], out[start + j, 1], out[start + j, 2], out[start + j, 3]])
                sigma = activate(y[0])
                c = vec3(1.0 / (1.0 + ti.exp(-y[1])), 1.0 / (1.0 + ti.exp(-y[2])), 1.0 / (1.0 + ti.exp(-y[3])))
                e = ti.exp(-sigma * dt_buf[base + j])
                w = trans * (1 - e)
                colour += w * c
                depth += w * t_buf[base + j]
                trans *= e
                j += 1
                if trans < eps:
                    break
            fstate[r, F_TRANS] = trans
            for q in ti.static(range(3)):
                fstate[r, F_COLOUR + q] = colour[q]
            fstate[r, F_DEPTH] = depth
            istate[r, I_COMPOSITED] += j
            go = 0
            if trans >= eps and istate[r, I_STATUS] != DONE:
                go = 1
            still[a] = go

    return lean(march), lean(gather), lean(composite)
