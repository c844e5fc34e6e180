"""The .tvq file: one small, streamable, safely parsed file per trained model.

- ``encode(field, ...)`` / ``write(path, field, ...)``: a field (raw, VQ, hash, or a post-hoc method's
  chunks) as a .tvq, entropy-coded per chunk (``--no-entropy``: the raw layout).
- ``read(path_or_bytes, max_bytes=None)``: the model of every LOD complete in the (first ``max_bytes``)
  bytes; a cut file gives its longest complete prefix, damage gives a one-line ``FormatError``.
- ``StreamDecoder``: ``feed(bytes)`` as they arrive, returns the LODs each call completed.
- ``inspect(path_or_bytes)``: the header and chunk table, without decoding any chunk.

The byte layout is in ``container``, the model's chunks in ``model``, the codecs in ``entropy``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import atomic_write
from ..errors import TvqError
from .container import (CHUNK_HEAD, MAGIC, Chunk, FormatError, Truncated, encode_file, parse_header)
from .container import StreamDecoder as _ChunkStream
from .model import COMPONENT, ModelAssembler, field_chunks, model_header

__all__ = ["encode", "write", "read", "inspect", "StreamDecoder", "Decoded", "FormatError", "Truncated", "Chunk",
           "is_tvq", "size_report", "MAGIC"]

MAX_POSES = 4  # training poses kept in the header, for a viewer that opens a file with no scene at hand


def camera_header(K, width: int, height: int, c2ws) -> dict:
    """Intrinsics and up to ``MAX_POSES`` evenly spread training poses."""
    c2ws = torch.as_tensor(c2ws, dtype=torch.float64).reshape(-1, 4, 4)
    pick = torch.linspace(0, c2ws.shape[0] - 1, min(MAX_POSES, c2ws.shape[0])).round().long()
    def rounded(t: torch.Tensor) -> list:  # 6 significant digits: ample for a camera, small in JSON
        return [[float(f"{x:.6g}") for x in row] for row in t.tolist()]

    return {"width": int(width), "height": int(height),
            "K": rounded(torch.as_tensor(K, dtype=torch.float64).reshape(3, 3)),
            "poses": [rounded(p) for p in c2ws[pick]], "count": int(c2ws.shape[0])}


def encode(field, *, background, cameras: dict | None = None, kind: str | None = None, method: str = "train",
           chunks: list[Chunk] | None = None, bits: int | None = None, rank: int = 0, extra: dict | None = None,
           entropy: bool = True, mlp: str = "int8", model_extra: dict | None = None) -> tuple[bytes, list[dict]]:
    """The .tvq bytes of ``field`` and the chunk index (with every codec's size per chunk).

    ``kind`` and ``chunks`` let a post-hoc method (kmeans, lra) store a raw field its own way (their mlp
    chunk is replaced by one of precision ``mlp``: int8 weights with fp16 scales per row and per column and
    their refinement after the first LOD, or fp16); ``model_extra`` adds a kind's own header fields (vqrf's
    per-level counts)."""
    from .model import MLP_WEIGHTS, decoder_chunks

    if mlp not in MLP_WEIGHTS:
        raise TvqError(f"--mlp must be one of {', '.join(MLP_WEIGHTS)}, got {mlp!r}")
    kind = kind or field.grid.kind
    bits = field.grid.bits if bits is None else bits
    header = {
        "format": "tvq", "method": method,
        "model": {**model_header(field, kind, bits=bits if kind in ("vq", "hash") else 0, rank=rank, mlp=mlp),
                  **(model_extra or {})},
        "background": [float(x) for x in background],
        "cameras": cameras,
        "entropy": bool(entropy),
        "info": extra or {},
    }
    chunks = field_chunks(field, kind) if chunks is None else chunks
    chunks = decoder_chunks(chunks, field.decoder, mlp, field.grid.levels)
    return encode_file(header, chunks, entropy_coding=entropy)


def write(path, field, **kwargs) -> dict:
    """Write ``field`` to ``path`` atomically (``encode``'s options); returns the size report."""
    data, index = encode(field, **kwargs)

    def put(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(Path(path), put, suffix=".tvq")
    return size_report(parse_header(data)[0], index)


def is_tvq(path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


@dataclass
class Decoded:
    header: dict
    field: object  # RadianceField of the complete LODs
    lods: int  # complete LODs
    bytes_used: int  # bytes up to the end of the last complete LOD
    complete: bool  # every chunk of the file was read
    truncation: str  # where the bytes stopped, when not complete


class StreamDecoder:
    """Bytes of a .tvq as they arrive; ``feed`` returns the LODs (0-based) that the new bytes completed.

    ``field()`` builds the model of the complete LODs on ``device`` (default CPU); ``header`` is known once
    its bytes are in."""

    def __init__(self, name: str = "stream", device=None):
        self.assembler = ModelAssembler(name, device)
        self.chunks = _ChunkStream(name, consume=self._consume, symbols=self.assembler.symbols)

    def _consume(self, i, entry, raw) -> None:
        if i is None:
            self.assembler.start(self.chunks.header)
        else:
            self.assembler.consume(i, entry, raw)

    @property
    def header(self) -> dict | None:
        return self.chunks.header

    @property
    def lods(self) -> int:
        return self.assembler.lods

    @property
    def received(self) -> int:
        return self.chunks.received

    @property
    def done(self) -> bool:
        return self.chunks.done

    def feed(self, data: bytes) -> list[int]:
        before = self.assembler.lods
        self.chunks.feed(data)
        return list(range(before, self.assembler.lods))

    def field(self, lods: int | None = None, device=None):
        return self.assembler.field(lods, device)

    def lod_end(self, lod: int) -> int:
        return self.header["lods"][lod]["end"]


def _bytes_of(src, max_bytes: int | None) -> tuple[bytes, str]:
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, name = bytes(src), "input"
    else:
        path = Path(src)
        if not path.is_file():
            raise TvqError(f"{path}: no such file")
        with open(path, "rb") as f:
            data = f.read() if max_bytes is None else f.read(max_bytes)
        name = str(path)
    if max_bytes is not None:
        if max_bytes < 0:
            raise TvqError(f"--bytes must be non-negative, got {max_bytes}")
        data = data[:max_bytes]
    return data, name


def read(src, max_bytes: int | None = None, device=None, strict: bool = False) -> Decoded:
    """The model of every LOD complete in ``src`` (a path or bytes), cut to ``max_bytes`` if given.

    Bytes that end before the first LOD is complete raise ``Truncated`` ("truncated at byte N ..."); with
    ``strict`` so does any file that ends before its last chunk. Damage raises ``FormatError``."""
    data, name = _bytes_of(src, max_bytes)
    stream = StreamDecoder(name, device)
    stream.feed(data)
    if stream.header is None:
        raise Truncated(f"{name}: {stream.chunks.truncation()}")
    if len(data) > stream.header["file_bytes"]:
        raise FormatError(f"{name}: {len(data) - stream.header['file_bytes']} bytes follow the last chunk")
    if stream.lods == 0 or (strict and not stream.done):
        raise Truncated(f"{name}: {stream.chunks.truncation()}: no complete LOD" if stream.lods == 0
                        else f"{name}: {stream.chunks.truncation()}")
    used = stream.lod_end(stream.lods - 1)
    return Decoded(stream.header, stream.field(), stream.lods, used, stream.done,
                   "" if stream.done else stream.chunks.truncation())


def inspect(src) -> dict:
    """Header and chunk table of a whole file (checked, not decoded), with totals per component and LOD."""
    data, name = _bytes_of(src, None)
    header, _ = parse_header(data, name)
    if len(data) != header["file_bytes"]:
        where = "truncated at byte" if len(data) < header["file_bytes"] else "trailing bytes from byte"
        raise FormatError(f"{name}: {where} {min(len(data), header['file_bytes'])} (the header says "
                          f"{header['file_bytes']} bytes)")
    from .model import check_model

    check_model(header, name)
    return size_report(header, header["chunks"])


def size_report(header: dict, index: list[dict]) -> dict:
    """Bytes by component (header, mlp, structure, indices, codebooks, features; chunk heads counted with
    their chunk) and by level, the LODs' byte ends, and the raw size each component would have."""
    first = header["chunks"][0]["offset"] if header["chunks"] else header["file_bytes"]
    components = {"header": first, "mlp": 0, "structure": 0, "indices": 0, "codebooks": 0, "features": 0,
                  "other": 0}
    raw = dict.fromkeys(components, 0)
    raw["header"] = first
    by_level: dict[str, int] = {}
    rows = []
    cumulative = first
    for i, e in enumerate(header["chunks"]):
        size = CHUNK_HEAD.size + e["length"]
        cumulative += size
        component = COMPONENT.get(e["kind"], "other")
        components[component] += size
        raw[component] += CHUNK_HEAD.size + e["raw_length"]
        key = "none" if e["level"] is None else str(e["level"])
        by_level[key] = by_level.get(key, 0) + size
        tried = next((t.get("tried") for t in index if t["offset"] == e["offset"]), None)
        rows.append({"chunk": i, "offset": e["offset"], "kind": e["kind"], "level": e["level"], "codec": e["codec"],
                     "bytes": size, "raw_bytes": CHUNK_HEAD.size + e["raw_length"], "cumulative": cumulative,
                     **({"tried": tried} if tried else {})})
    return {"file_bytes": header["file_bytes"], "components": components, "raw_components": raw,
            "levels": by_level, "lods": header["lods"], "chunks": rows, "model": header["model"],
            "method": header.get("method")}
