"""Entropy coding of one chunk's payload, never across chunks (so every prefix of a file stays decodable).

Each codec maps a chunk's raw payload to stored bytes and back; the container keeps the raw length and the
raw CRC32 beside the stored bytes, so a decoder knows how much it may allocate before it decodes and can
tell that what came out is what went in.

- ``raw``  the payload as is.
- ``zstd`` Zstandard, level 19 (one frame; decoding is capped at the expected raw length).
- ``shuffle-zstd`` for fp16 arrays: the low bytes of all values, then the high bytes, then zstd (sign
  and exponent bytes repeat far more than mantissa bytes, which zstd can then exploit).
- ``ans``  rANS (``constriction``) with a static categorical model of the chunk's own symbols: b-bit
  indices for an index chunk, bytes otherwise. The model (symbol counts, as varints) leads the payload.

``encode_best`` tries the candidates a chunk kind allows and keeps the smallest, ``raw`` included, so
entropy coding never makes a chunk larger than its raw form.
"""

from __future__ import annotations

import numpy as np

from . import bitpack

RAW, ZSTD, SHUFFLE_ZSTD, ANS = 0, 1, 2, 3
NAMES = {RAW: "raw", ZSTD: "zstd", SHUFFLE_ZSTD: "shuffle-zstd", ANS: "ans"}
ZSTD_LEVEL = 19


class CodecError(ValueError):
    """Stored bytes that do not decode to a payload of the expected length."""


# ---- zstd ------------------------------------------------------------------------------------------


def _zstd_encode(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, write_checksum=False).compress(data)


def _zstd_decode(data: bytes, raw_length: int) -> bytes:
    import zstandard

    try:
        # The frame states its size; python-zstandard would allocate whatever it states, so check it first.
        size = zstandard.frame_content_size(data)
        if size != raw_length:
            raise CodecError(f"zstd frame states {size} bytes, expected {raw_length}" if size >= 0
                             else "zstd frame does not state its size")
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=raw_length)
    except zstandard.ZstdError as err:
        raise CodecError(f"zstd: {err}") from None
    if len(out) != raw_length:
        raise CodecError(f"zstd gave {len(out)} bytes, expected {raw_length}")
    return out


def _shuffle(data: bytes) -> bytes:
    if len(data) % 2:
        raise CodecError("shuffle needs a whole number of fp16 values")
    return np.frombuffer(data, np.uint8).reshape(-1, 2).T.tobytes()


def _unshuffle(data: bytes) -> bytes:
    return np.frombuffer(data, np.uint8).reshape(2, -1).T.tobytes()


# ---- rANS with a static categorical model ----------------------------------------------------------


def _varints(values: np.ndarray) -> bytes:
    out = bytearray()
    for v in values.tolist():
        while True:
            byte, v = v & 0x7F, v >> 7
            out.append(byte | (0x80 if v else 0))
            if not v:
                break
    return bytes(out)


def _read_varints(data: bytes, count: int, start: int = 0) -> tuple[list[int], int]:
    values, pos = [], start
    for _ in range(count):
        value, shift = 0, 0
        while True:
            if pos >= len(data) or shift > 35:
                raise CodecError("ans: model table cut short")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        values.append(value)
    return values, pos


def _symbols(raw: bytes, symbols) -> tuple[np.ndarray, int]:
    """The chunk's symbols and alphabet size: ``symbols = (bits, count)`` b-bit indices, or (None) bytes."""
    if symbols is None:
        return np.frombuffer(raw, np.uint8).astype(np.int32), 256
    bits, count = symbols
    return bitpack.unpack(raw, bits, count).astype(np.int32), 1 << bits


def _model(counts: np.ndarray):
    import constriction

    return constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)


def _ans_encode(raw: bytes, symbol_info) -> bytes:
    import constriction

    symbols, alphabet = _symbols(raw, symbol_info)
    counts = np.bincount(symbols, minlength=alphabet)
    words = np.zeros(0, "<u4")
    if symbols.size:  # no model can be built of zero symbols, and none is needed
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(symbols, _model(counts))
        words = coder.get_compressed().astype("<u4")
    return np.uint32(symbols.size).astype("<u4").tobytes() + _varints(counts) + words.tobytes()


def _ans_decode(data: bytes, raw_length: int, symbol_info) -> bytes:
    import constriction

    bits = None if symbol_info is None else symbol_info[0]
    alphabet = 256 if bits is None else 1 << bits
    if len(data) < 4:
        raise CodecError("ans: payload cut short")
    count = int(np.frombuffer(data[:4], "<u4")[0])
    expected = raw_length if symbol_info is None else symbol_info[1]
    if count != expected:
        raise CodecError(f"ans: {count} symbols, expected {expected}")
    counts, pos = _read_varints(data, alphabet, 4)
    counts = np.asarray(counts, dtype=np.float64)
    if count and (counts.sum() != count):
        raise CodecError("ans: the model's counts do not add up to the symbol count")
    if (len(data) - pos) % 4:
        raise CodecError("ans: compressed words cut short")
    words = np.frombuffer(data[pos:], "<u4").astype(np.uint32)
    if count == 0:
        symbols = np.zeros(0, np.int32)
    else:
        try:
            symbols = constriction.stream.stack.AnsCoder(words).decode(_model(counts), count)
        except Exception as err:  # a damaged stream: constriction reports it in its own words
            raise CodecError(f"ans: {err}") from None
    if bits is None:
        return symbols.astype(np.uint8).tobytes()
    return bitpack.pack(symbols, bits)


# ---- the interface the container uses --------------------------------------------------------------


def encode(codec: int, raw: bytes, symbols=None) -> bytes:
    """Stored bytes of ``raw``; ``symbols = (bits, count)`` when ``raw`` is bit-packed indices (for ``ans``)."""
    if codec == RAW:
        return raw
    if codec == ZSTD:
        return _zstd_encode(raw)
    if codec == SHUFFLE_ZSTD:
        return _zstd_encode(_shuffle(raw))
    if codec == ANS:
        return _ans_encode(raw, symbols)
    raise CodecError(f"unknown codec {codec}")


def decode(codec: int, stored: bytes, raw_length: int, symbols=None) -> bytes:
    """The raw payload of ``raw_length`` bytes; a ``CodecError`` when the stored bytes do not give one."""
    if codec == RAW:
        if len(stored) != raw_length:
            raise CodecError(f"raw payload of {len(stored)} bytes, expected {raw_length}")
        return stored
    if codec == ZSTD:
        return _zstd_decode(stored, raw_length)
    if codec == SHUFFLE_ZSTD:
        if raw_length % 2:
            raise CodecError("shuffle needs a whole number of fp16 values")
        return _unshuffle(_zstd_decode(stored, raw_length))
    if codec == ANS:
        return _ans_decode(stored, raw_length, symbols)
    raise CodecError(f"unknown codec {codec}")


def decode_unsized(codec: int, stored: bytes, limit: int) -> bytes:
    """Decode a zstd frame whose size is known only to be at most ``limit`` (the header)."""
    import zstandard

    if codec != ZSTD:
        raise CodecError(f"codec {codec} needs a known raw length")
    try:
        size = zstandard.frame_content_size(stored)
    except zstandard.ZstdError as err:
        raise CodecError(f"zstd: {err}") from None
    if not 0 <= size <= limit:
        raise CodecError(f"the frame claims {size} bytes, more than {limit}" if size > limit
                         else "zstd frame does not state its size")
    return _zstd_decode(stored, size)


def encode_best(raw: bytes, candidates, symbols=None) -> tuple[int, bytes, dict]:
    """The smallest of ``raw`` and each candidate codec's output: (codec, stored bytes, size per codec)."""
    best, best_bytes = RAW, raw
    sizes = {NAMES[RAW]: len(raw)}
    for codec in candidates:
        stored = encode(codec, raw, symbols)
        sizes[NAMES[codec]] = len(stored)
        if len(stored) < len(best_bytes):
            best, best_bytes = codec, stored
    return best, best_bytes, sizes
