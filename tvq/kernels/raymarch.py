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
from .walk import block_exit, clip, entry_cell, locate, next_cell



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
    rays_t = ti.types.ndarray(dtype=real, ndim=2)
    samples_t = ti.types.ndarray(dtype=real, ndim=1)
    codes_t = ti.types.ndarray(dtype=ti.i64, ndim=1)
    starts_t = ti.types.ndarray(dtype=ti.i32, ndim=1)

    @ti.func
    def march(
        r: ti.i32, o: vec3, d: vec3, codes: ti.template(), starts: ti.template(), shift: ti.i32, level: ti.i32,
        near: real, far: real, n: ti.i32, budget: ti.i64, base: ti.i64, jitter: ti.i32, seed: ti.u32,
        t_buf: ti.template(), dt_buf: ti.template(), id_buf: ti.template(), fill: ti.template(),
    ) -> ti.i64:
        res = 1 << level
        h = real(2.0) / real(res)
        num_codes = ti.cast(codes.shape[0], ti.i64)

        t_in, t_out = clip(o, d, near, far, real)
        count = ti.i64(0)
        if t_in < t_out:
            ijk = entry_cell(o, d, t_in, h, res)
            t = t_in
            it = 0
            while t < t_out and count < budget and it < 3 * res + 3:
                it += 1
                _, occupied, s = locate(codes, starts, shift, num_codes, ijk, level, skip_empty)
                t_next, axis = block_exit(o, d, ijk, s, h, real)
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
                new, done = next_cell(o, d, ijk, s, axis, t_next, h, res)
                if done:
                    break
                ijk = new
                t = ti.max(t, t_next)
        return count

    @ti.kernel
    def count(
        origins: rays_t, dirs: rays_t, codes: codes_t, starts: starts_t, shift: ti.i32, level: ti.i32, near: real,
        far: real, samples_per_cell: ti.i32, max_per_ray: ti.i64, counts: ti.types.ndarray(dtype=ti.i64, ndim=1),
    ):
        """counts[0] = 0 and counts[r + 1] = the number of samples of ray r (ready for an in-place cumsum)."""
        for r in range(origins.shape[0]):
            if r == 0:
                counts[0] = 0
            o = vec3(origins[r, 0], origins[r, 1], origins[r, 2])
            d = vec3(dirs[r, 0], dirs[r, 1], dirs[r, 2])
            counts[r + 1] = march(r, o, d, codes, starts, shift, level, near, far, samples_per_cell, max_per_ray, 0, 0,
                                  ti.u32(0), counts, counts, counts, False)

    @ti.kernel
    def fill(
        origins: rays_t, dirs: rays_t, codes: codes_t, starts: starts_t, shift: ti.i32, level: ti.i32, near: real,
        far: real, samples_per_cell: ti.i32, offsets: ti.types.ndarray(dtype=ti.i64, ndim=1), jitter: ti.i32,
        seed: ti.u32, t: samples_t, dt: samples_t, ray_ids: ti.types.ndarray(dtype=ti.i32, ndim=1),
    ):
        """Samples of ray r into rows offsets[r]:offsets[r+1] of t, dt and ray_ids."""
        for r in range(origins.shape[0]):
            o = vec3(origins[r, 0], origins[r, 1], origins[r, 2])
            d = vec3(dirs[r, 0], dirs[r, 1], dirs[r, 2])
            start = offsets[r]
            march(r, o, d, codes, starts, shift, level, near, far, samples_per_cell, offsets[r + 1] - start, start,
                  jitter, seed, t, dt, ray_ids, True)

    return lean(count), lean(fill)
