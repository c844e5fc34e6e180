"""Morton codes and sorted-code lookup, shared by every kernel that walks the octree.

A cell (or vertex) with integer coordinates (x, y, z) at some level has the Morton code

    code = sum_b  x_b << (3b) | y_b << (3b + 1) | z_b << (3b + 2)

(bit b of x, y, z interleaved, x lowest), 21 bits per axis in an int64. Occupied cells of a level are
stored as a sorted array of codes, so "is this cell occupied, and which row is it?" is a binary search.
``tvq.octree.morton_encode`` is the torch version of the same function.
"""

import taichi as ti


@ti.func
def spread_bits(v: ti.i64) -> ti.i64:
    """Insert two zero bits between each of the low 21 bits of v."""
    x = v & ti.i64(0x1FFFFF)
    x = (x | (x << 32)) & ti.i64(0x1F00000000FFFF)
    x = (x | (x << 16)) & ti.i64(0x1F0000FF0000FF)
    x = (x | (x << 8)) & ti.i64(0x100F00F00F00F00F)
    x = (x | (x << 4)) & ti.i64(0x10C30C30C30C30C3)
    x = (x | (x << 2)) & ti.i64(0x1249249249249249)
    return x


@ti.func
def morton3(x: ti.i64, y: ti.i64, z: ti.i64) -> ti.i64:
    return spread_bits(x) | (spread_bits(y) << 1) | (spread_bits(z) << 2)


@ti.func
def lower_bound(codes: ti.template(), lo: ti.i64, hi: ti.i64, code: ti.i64) -> ti.i64:
    """First index in the sorted slice codes[lo:hi] whose value is >= ``code`` (``hi`` when none is)."""
    a = lo
    b = hi
    while a < b:
        mid = (a + b) >> 1
        if codes[mid] < code:
            a = mid + 1
        else:
            b = mid
    return a


@ti.func
def find_code(codes: ti.template(), lo: ti.i64, hi: ti.i64, code: ti.i64) -> ti.i64:
    """Index of ``code`` in the sorted slice codes[lo:hi], or -1 when it is absent."""
    a = lower_bound(codes, lo, hi, code)
    found = ti.i64(-1)
    if a < hi:
        if codes[a] == code:
            found = a
    return found
