"""b-bit integers packed into bytes, little-endian bit order (value i occupies bits i*b .. i*b+b-1).

``pack(values, b)`` writes exactly ceil(n * b / 8) bytes, the paper's m*b bits per level rounded up to a
byte; ``unpack(data, b, n)`` reads them back. Both are vectorised numpy (no Python loop over values).
"""

from __future__ import annotations

import numpy as np


def packed_size(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def pack(values: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers < 2^bits (1 <= bits <= 16)."""
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    values = np.asarray(values).astype(np.uint32, copy=False).ravel()
    if values.size and int(values.max()) >> bits:
        raise ValueError(f"a value does not fit in {bits} bits")
    # Each value's bits, least significant first, laid end to end; numpy packs them 8 to a byte.
    bit_planes = ((values[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(bit_planes.ravel(), bitorder="little").tobytes()


def unpack(data: bytes, bits: int, count: int) -> np.ndarray:
    """``count`` integers of ``bits`` bits from ``data`` (which must hold exactly ``packed_size`` bytes)."""
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    if len(data) != packed_size(count, bits):
        raise ValueError(f"{len(data)} bytes cannot hold exactly {count} values of {bits} bits")
    bit_planes = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little", count=count * bits)
    weights = (1 << np.arange(bits, dtype=np.uint32))
    return (bit_planes.reshape(count, bits).astype(np.uint32) * weights).sum(axis=1, dtype=np.uint32).astype(np.int64)
