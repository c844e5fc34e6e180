"""Ray marching through the occupied cells of one octree level, into packed samples.

Rays live in the octree's normalised cube [-1, 1]^3 (origin o, unit direction d). Level L has
N = 2^L cells per axis of size h = 2/N; cell (i, j, k) spans [-1 + i h, -1 + (i + 1) h] along x, etc.

Per ray (one thread each):

1. Clip to the cube and to [near, far]: t_in = max(near, slab entry), t_out = min(far, slab exit).
2. Walk the cells the ray crosses (a 3D DDA on integer cell coordinates). At the current cell, one binary
   search in the sorted Morton codes of level L says whether it is occupied; when it is not, the codes on
   either side of the search position bound an empty Morton range, and the largest aligned block of
   2^s x 2^s x 2^s cells around the current cell that fits in that range is empty too (Morton ranges of
   aligned blocks are contiguous). The walk jumps to that block's exit: empty space costs one search per
   empty block, not per empty cell.
3. For every occupied cell with segment [t0, t1] (t1 > t0), emit n = samples_per_cell samples

       t_k = t0 + (k + u_k) / n (t1 - t0),   dt_k = (t1 - t0) / n,   k = 0..n-1

   with u_k = 1/2, or u_k ~ U[0, 1) per sample (stratified jitter) from a counter-based hash of
   (seed, ray index, k), so a seed gives the same samples on every backend, whatever the other rays do.

Exit distances are recomputed from o and d at every step (no accumulated increments) and cell coordinates
only move in the ray's direction, so a walk ends after at most 3N steps.

Two kernels share the walk: ``count`` writes the number of samples per ray (capped per ray), and, after an
exclusive prefix sum, ``fill`` writes them at ``ray_offsets[r]:ray_offsets[r+1]`` (which may be shorter
than the count when a total cap applies: the walk stops when the slot range is full).
"""

import functools

import taichi as ti

from .launch import lean
from .morton import lower_bound, morton3

_BIG = 3.0e38  # "no boundary along this axis" (the direction component is zero)


@ti.func
def mul_u32(x: ti.u32, c: ti.template()) -> ti.u32:
    """(x * c) mod 2^32, in 64 bits so that debug mode's overflow check stays quiet."""
    return ti.cast((ti.cast(x, ti.u64) * ti.u64(c)) & ti.u64(0xFFFFFFFF), ti.u32)


@ti.func
def hash_u32(x: ti.u32) -> ti.u32:
    """A 32-bit integer mix (lowbias32): consecutive inputs give unrelated outputs."""
    x ^= x >> ti.u32(16)
    x = mul_u32(x, 0x7FEB352D)
    x ^= x >> ti.u32(15)
    x = mul_u32(x, 0x846CA68B)
    x ^= x >> ti.u32(16)
    return x


@ti.func
def uniform01(seed: ti.u32, ray: ti.u32, k: ti.u32) -> ti.f32:
    """u in [0, 1) with 24 random bits, a pure function of (seed, ray, k)."""
    h = hash_u32(seed ^ hash_u32(ray ^ hash_u32(k)))
    return ti.f32(h >> ti.u32(8)) * ti.f32(1.0 / 16777216.0)


@functools.lru_cache(maxsize=None)
def kernels(dtype: str = "f32", skip_empty: bool = True):
    """``(count, fill)`` kernels for float ``dtype`` ('f32' or 'f64').

    ``skip_empty=False`` visits every cell on the ray (the plain DDA), for comparison.
    """
    real = {"f32": ti.f32, "f64": ti.f64}[dtype]
    vec3 = ti.types.vector(3, real)
    ivec3 = ti.types.vector(3, ti.i32)
    rays_t = ti.types.ndarray(dtype=real, ndim=2)
    samples_t = ti.types.ndarray(dtype=real, ndim=1)
    codes_t = ti.types.ndarray(dtype=ti.i64, ndim=1)

    @ti.func
    def march(
        r: ti.i32, o: vec3, d: vec3, codes: ti.template(), level: ti.i32, near: real, far: real,
        n: ti.i32, budget: ti.i64, base: ti.i64, jitter: ti.i32, seed: ti.u32,
        t_buf: ti.template(), dt_buf: ti.template(), id_buf: ti.template(), fill: ti.template(),
    ) -> ti.i64:
        res = 1 << level
        h = real(2.0) / real(res)
        num_codes = ti.cast(codes.shape[0], ti.i64)

        # clip to the cube [-1, 1]^3 and to [near, far]
        t_in = near
        t_out = far
        for a in ti.static(range(3)):
            if d[a] != 0:
                ta = (real(-1.0) - o[a]) / d[a]
                tb = (real(1.0) - o[a]) / d[a]
                t_in = ti.max(t_in, ti.min(ta, tb))
                t_out = ti.min(t_out, ti.max(ta, tb))
            elif o[a] < -1 or o[a] > 1:  # parallel to this slab and outside it
                t_out = -real(_BIG)

        count = ti.i64(0)
        if t_in < t_out:
            step = ivec3(0)
            ijk = ivec3(0)
            p = o + t_in * d
            for a in ti.static(range(3)):
                step[a] = 1 if d[a] > 0 else -1
                ijk[a] = ti.min(ti.max(ti.cast(ti.floor((p[a] + 1) / h), ti.i32), 0), res - 1)
            t = t_in
            it = 0
            while t < t_out and count < budget and it < 3 * res + 3:
                it += 1
                code = morton3(ti.i64(ijk[0]), ti.i64(ijk[1]), ti.i64(ijk[2]))
                lo = lower_bound(codes, ti.i64(0), num_codes, code)
                occupied = False
                if lo < num_codes:  # (Taichi's `and` does not short-circuit)
                    occupied = codes[lo] == code
                s = 0  # the current block is 2^s cells per axis
                if ti.static(skip_empty):
                    if not occupied:
                        prev = ti.i64(-1)
                        if lo > 0:
                            prev = codes[lo - 1]
                        nxt = ti.i64(9223372036854775807)
                        if lo < num_codes:
                            nxt = codes[lo]
                        # grow the empty block while its whole Morton range lies strictly between prev and nxt
                        while s < level:
                            shift = 3 * (s + 1)
                            first = (code >> shift) << shift
                            last = first + (ti.i64(1) << shift) - 1
                            if first > prev and last < nxt:
                                s += 1
                            else:
                                break

                # exit of the block along each axis; the smallest one is where the ray leaves it
                t_next = real(_BIG)
                axis = -1
                for a in ti.static(range(3)):
                    if d[a] != 0:
                        bound = (ijk[a] >> s) + (1 if step[a] > 0 else 0)
                        ta = (real(-1.0) + real(bound << s) * h - o[a]) / d[a]
                        if ta < t_next:
                            t_next = ta
                            axis = a
                t1 = ti.min(t_next, t_out)

                if occupied and t1 > t:
                    dt = (t1 - t) / real(n)
                    k = 0
                    while k < n and count < budget:
                        if ti.static(fill):
                            u = real(0.5)
                            if jitter != 0:
                                u = real(uniform01(seed, ti.cast(r, ti.u32), ti.cast(count, ti.u32)))
                            t_buf[base + count] = t + (real(k) + u) * dt
                            dt_buf[base + count] = dt
                            id_buf[base + count] = r
                        count += 1
                        k += 1

                if axis < 0 or t_next >= t_out:
                    break
                # step into the next cell: across the exit face along `axis`, and along the other axes to
                # the cell the exit point lies in, kept inside the block and never moving backwards
                done = False
                new = ijk
                for a in ti.static(range(3)):
                    if a == axis:
                        if step[a] > 0:
                            new[a] = ((ijk[a] >> s) + 1) << s
                        else:
                            new[a] = ((ijk[a] >> s) << s) - 1
                        if new[a] < 0 or new[a] >= res:
                            done = True
                    elif d[a] != 0 and s > 0:
                        first = (ijk[a] >> s) << s
                        q = ti.cast(ti.floor((o[a] + t_next * d[a] + 1) / h), ti.i32)
                        q = ti.min(ti.max(q, first), first + (1 << s) - 1)
                        if step[a] > 0:
                            q = ti.max(q, ijk[a])
                        else:
                            q = ti.min(q, ijk[a])
                        new[a] = q
                if done:
                    break
                ijk = new
                t = ti.max(t, t_next)
        return count

    @ti.kernel
    def count(
        origins: rays_t, dirs: rays_t, codes: codes_t, level: ti.i32, near: real, far: real,
        samples_per_cell: ti.i32, max_per_ray: ti.i64, counts: ti.types.ndarray(dtype=ti.i64, ndim=1),
    ):
        """counts[0] = 0 and counts[r + 1] = the number of samples of ray r (ready for an in-place cumsum)."""
        for r in range(origins.shape[0]):
            if r == 0:
                counts[0] = 0
            o = vec3(origins[r, 0], origins[r, 1], origins[r, 2])
            d = vec3(dirs[r, 0], dirs[r, 1], dirs[r, 2])
            counts[r + 1] = march(r, o, d, codes, level, near, far, samples_per_cell, max_per_ray, 0, 0,
                                  ti.u32(0), counts, counts, counts, False)

    @ti.kernel
    def fill(
        origins: rays_t, dirs: rays_t, codes: codes_t, level: ti.i32, near: real, far: real,
        samples_per_cell: ti.i32, offsets: ti.types.ndarray(dtype=ti.i64, ndim=1), jitter: ti.i32,
        seed: ti.u32, t: samples_t, dt: samples_t, ray_ids: ti.types.ndarray(dtype=ti.i32, ndim=1),
    ):
        """Samples of ray r into rows offsets[r]:offsets[r+1] of t, dt and ray_ids."""
        for r in range(origins.shape[0]):
            o = vec3(origins[r, 0], origins[r, 1], origins[r, 2])
            d = vec3(dirs[r, 0], dirs[r, 1], dirs[r, 2])
            start = offsets[r]
            march(r, o, d, codes, level, near, far, samples_per_cell, offsets[r + 1] - start, start, jitter,
                  seed, t, dt, ray_ids, True)

    return lean(count), lean(fill)
