"""The .tvq container: a preamble, a JSON header, then chunks, readable from any prefix.

Layout (little-endian):

    preamble   8s magic b"\\x89TVQ\\r\\n\\x1a\\n" | u16 format version | u16 flags | u32 header length H
    header     H bytes of UTF-8 JSON (zstd-compressed when flags bit 0 is set), then u32 CRC32 of those H bytes
    chunk      4s kind | u8 level (255: none) | u8 codec | u16 reserved (0) | u32 stored length n | u32 CRC32
               of the n stored bytes | n stored bytes

The header carries the model description and the chunk index: for every chunk its kind, level, codec,
offset, stored length, raw (decoded) length and raw CRC32; for every LOD the offset at which it is complete;
and the bytes of all chunks. Offsets count from the first chunk (the header's end), so the header never
depends on its own length; a reader adds the header's end and works with absolute offsets. A reader therefore knows every LOD's byte range before it reads any chunk, checks
each chunk head against the index, each stored payload against its CRC, and each decoded payload against
its raw length (before allocating it) and raw CRC. Chunks of a kind this reader does not know are skipped
by their length (forward compatibility). Nothing is ever unpickled.

``StreamDecoder`` takes bytes as they arrive and yields each chunk once it is complete and verified;
``tvq.codec.read`` and the viewer's streaming simulation are built on it.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

from ..errors import TvqError
from . import entropy

MAGIC = b"\x89TVQ\r\n\x1a\n"
FORMAT_VERSION = 2  # 2: int8 decoder weights carry a scale per input column too
PREAMBLE = struct.Struct("<8sHHI")
CHUNK_HEAD = struct.Struct("<4sBBHII")
CRC = struct.Struct("<I")
NO_LEVEL = 255
MAX_HEADER_BYTES = 1 << 24  # 16 MiB: far above any real header (a few kB), refused before it is read
MAX_CHUNKS = 4096
HEADER_ZSTD = 1  # preamble flag: the header's JSON is one zstd frame (the header counts in the first LOD)

# Chunk kinds: the 4-byte tag in the file and the name in the header.
KINDS = {
    b"MLP ": "mlp",  # decoder weights: int8 with fp16 scales, or fp16
    b"MLPR": "mlp-refine",  # int8 decoder weights' rounding residuals (8 more bits), after the first LOD
    b"OCT ": "structure",  # child masks of the level above, one byte per occupied parent cell
    b"FEAT": "features",  # raw vertex features, fp16 (vertices x feature_dim)
    b"CODE": "codebook",  # per-level codebook, fp16 (2^bits x feature_dim)
    b"INDX": "indices",  # bit-packed b-bit code of every vertex
    b"HASH": "hash",  # hash baseline: u32 seed, u32 hash function id (indices follow from positions)
    b"KLTB": "klt-basis",  # low-rank baseline: fp16 mean (F) and basis (rank x F)
    b"KLTC": "klt-coeffs",  # low-rank baseline: fp16 coefficients (vertices x rank)
    b"VCLS": "vertex-classes",  # vqrf: 2 bits per vertex (pruned, quantised, kept)
    b"KEPT": "kept-features",  # vqrf: fp16 scale and offset (F each), then uint8 kept features (kept x F)
}
TAGS = {name: tag for tag, name in KINDS.items()}
# The header stores each chunk's index entry as a row of these fields (compact: the first LOD's bytes
# include the header); readers see dicts.
INDEX_FIELDS = ("kind", "level", "codec", "offset", "length", "raw_length", "raw_crc")


class FormatError(TvqError):
    """A .tvq file (or prefix) that is not what it claims to be; the message says where."""


class Truncated(FormatError):
    """The bytes end before the part that was asked for."""


@dataclass
class Chunk:
    """One chunk to write: its kind, level, raw payload and the entropy codecs worth trying on it."""

    kind: str
    level: int | None
    raw: bytes
    candidates: tuple[int, ...] = ()
    symbols: tuple[int, int] | None = None  # (bits, count) of bit-packed indices, for ans


def _crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_file(header: dict, chunks: list[Chunk], entropy_coding: bool = True) -> tuple[bytes, list[dict]]:
    """The file's bytes and its chunk index (with the size every codec tried would have given)."""
    stored, index = [], []
    for chunk in chunks:
        candidates = chunk.candidates if entropy_coding else ()
        codec, data, sizes = entropy.encode_best(chunk.raw, candidates, chunk.symbols)
        stored.append(data)
        index.append({"kind": chunk.kind, "level": chunk.level, "codec": entropy.NAMES[codec], "offset": 0,
                      "length": len(data), "raw_length": len(chunk.raw), "raw_crc": _crc(chunk.raw),
                      "tried": sizes})
    # The stored index counts offsets from the first chunk, so the header does not depend on its own length
    # (and may be compressed); readers add the header's end and see absolute offsets.
    offset = 0
    for entry, data in zip(index, stored):
        entry["offset"] = offset
        offset += CHUNK_HEAD.size + len(data)
    stored_header = dict(header, chunks=[[e[k] for k in INDEX_FIELDS] for e in index], lods=_lod_ends(header, index),
                         chunk_bytes=offset)
    header_bytes, flags = _header_bytes(stored_header, entropy_coding)
    first = PREAMBLE.size + len(header_bytes) + CRC.size
    for entry in index:
        entry["offset"] += first
    out = [PREAMBLE.pack(MAGIC, FORMAT_VERSION, flags, len(header_bytes)), header_bytes, CRC.pack(_crc(header_bytes))]
    for entry, data in zip(index, stored):
        level = NO_LEVEL if entry["level"] is None else entry["level"]
        codec = next(c for c, n in entropy.NAMES.items() if n == entry["codec"])
        out.append(CHUNK_HEAD.pack(TAGS[entry["kind"]], level, codec, 0, len(data), _crc(data)))
        out.append(data)
    return b"".join(out), index


def _header_bytes(header: dict, compress: bool) -> tuple[bytes, int]:
    """The header as stored, and the preamble flags: zstd-compressed JSON when that is smaller."""
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    if compress:
        packed = entropy.encode(entropy.ZSTD, text)
        if len(packed) < len(text):
            return packed, HEADER_ZSTD
    return text, 0


def _lod_ends(header: dict, index: list[dict]) -> list[dict]:
    """For each LOD, the byte offset at which every chunk it needs (all chunks up to its level) is in."""
    levels = header["model"]["levels"]
    ends = []
    for lod, level in enumerate(levels):
        needed = [e for e in index if e["level"] is None or e["level"] <= level]
        end = max(e["offset"] + CHUNK_HEAD.size + e["length"] for e in needed)
        ends.append({"lod": lod, "level": level, "end": end})
    return ends


# ---- reading -----------------------------------------------------------------------------------------


def parse_header(data: bytes, name: str = "input") -> tuple[dict, int]:
    """The header (checked by ``check_index``) and the offset of the first chunk; ``Truncated`` if the
    bytes end inside the preamble or header."""
    if len(data) < PREAMBLE.size:
        if not MAGIC.startswith(bytes(data[:8])):
            raise FormatError(f"{name}: not a .tvq file")
        raise Truncated(f"{name}: truncated at byte {len(data)}: the preamble needs {PREAMBLE.size} bytes")
    magic, version, flags, length = PREAMBLE.unpack_from(data, 0)
    if magic != MAGIC:
        raise FormatError(f"{name}: not a .tvq file")
    if version != FORMAT_VERSION:
        raise FormatError(f"{name}: .tvq format version {version} is not supported (this tvq reads {FORMAT_VERSION})")
    if flags & ~HEADER_ZSTD:
        raise FormatError(f"{name}: unknown preamble flags {flags:#x}")
    if length > MAX_HEADER_BYTES:
        raise FormatError(f"{name}: header claims {length} bytes, more than any .tvq header holds")
    end = PREAMBLE.size + length + CRC.size
    if len(data) < end:
        raise Truncated(f"{name}: truncated at byte {len(data)}: the header ends at byte {end}")
    header_bytes = bytes(data[PREAMBLE.size:PREAMBLE.size + length])
    (crc,) = CRC.unpack_from(data, PREAMBLE.size + length)
    if crc != _crc(header_bytes):
        raise FormatError(f"{name}: header CRC mismatch (the file is damaged)")
    if flags & HEADER_ZSTD:
        try:
            header_bytes = entropy.decode_unsized(entropy.ZSTD, header_bytes, MAX_HEADER_BYTES)
        except entropy.CodecError as err:
            raise FormatError(f"{name}: header does not decompress ({err})") from None
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, or an integer too long to convert
        raise FormatError(f"{name}: header is not valid JSON") from None
    check_index(header, end, name)
    for lod in header.get("lods") if isinstance(header.get("lods"), list) else ():
        if isinstance(lod, dict) and _is_int(lod.get("end")):
            lod["end"] += end  # absolute, like the chunk offsets (the model layer checks the table)
    return header, end


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_index(header, first_chunk: int, name: str) -> None:
    """The chunk index is a contiguous run of chunks starting after the header, with sane fields."""
    if not isinstance(header, dict):
        raise FormatError(f"{name}: header is not a JSON object")
    rows = header.get("chunks")
    if not isinstance(rows, list) or len(rows) > MAX_CHUNKS:
        raise FormatError(f"{name}: header has no valid chunk index")
    if not all(isinstance(r, list) and len(r) == len(INDEX_FIELDS) for r in rows):
        raise FormatError(f"{name}: the header's chunk index is malformed")
    header["chunks"] = chunks = [dict(zip(INDEX_FIELDS, r)) for r in rows]
    offset = 0
    for i, e in enumerate(chunks):
        ok = (isinstance(e.get("kind"), str)
              and (e.get("level") is None or (_is_int(e.get("level")) and 0 <= e["level"] < NO_LEVEL))
              and e.get("codec") in entropy.NAMES.values()
              and all(_is_int(e.get(k)) and 0 <= e[k] < 1 << 32 for k in ("offset", "length", "raw_length", "raw_crc")))
        if not ok:
            raise FormatError(f"{name}: chunk {i} of the header's index is malformed")
        if e["offset"] != offset:
            raise FormatError(f"{name}: chunk {i} of the index starts at byte {first_chunk + e['offset']}, expected "
                              f"{first_chunk + offset}")
        if e["kind"] in TAGS and e["codec"] == "raw" and e["length"] != e["raw_length"]:
            raise FormatError(f"{name}: chunk {i} is stored raw but its lengths differ")
        e["offset"] += first_chunk
        offset += CHUNK_HEAD.size + e["length"]
    if header.get("chunk_bytes") != offset:
        raise FormatError(f"{name}: header says its chunks take {header.get('chunk_bytes')} bytes, the index {offset}")
    header["file_bytes"] = first_chunk + offset


def describe(entry: dict, i: int) -> str:
    level = "" if entry["level"] is None else f", level {entry['level']}"
    return f"chunk {i} ({entry['kind']}{level}, bytes {entry['offset']}..{entry['offset'] + CHUNK_HEAD.size + entry['length']})"


def check_chunk(data, entry: dict, i: int, name: str) -> bytes:
    """Chunk ``i``'s stored bytes (``data`` holds them from ``entry['offset']``), once its head agrees with
    the index and its CRC with its bytes."""
    start = entry["offset"]
    tag, level, codec, reserved, length, crc = CHUNK_HEAD.unpack_from(data, start)
    expected_level = NO_LEVEL if entry["level"] is None else entry["level"]
    expected_tag = TAGS.get(entry["kind"], tag)
    if (tag != expected_tag or KINDS.get(tag, entry["kind"]) != entry["kind"] or level != expected_level
            or entropy.NAMES.get(codec) != entry["codec"] or reserved != 0 or length != entry["length"]):
        raise FormatError(f"{name}: {describe(entry, i)}: its chunk head disagrees with the header's index")
    stored = bytes(data[start + CHUNK_HEAD.size:start + CHUNK_HEAD.size + length])
    if _crc(stored) != crc:
        raise FormatError(f"{name}: {describe(entry, i)}: CRC mismatch (the file is damaged)")
    return stored


def decode_chunk(data, entry: dict, i: int, name: str, symbols=None) -> bytes:
    """Check chunk ``i`` (``check_chunk``) and return its raw payload, checked against its raw CRC."""
    stored = check_chunk(data, entry, i, name)
    codec = next(c for c, n in entropy.NAMES.items() if n == entry["codec"])
    try:
        raw = entropy.decode(codec, stored, entry["raw_length"], symbols)
    except entropy.CodecError as err:
        raise FormatError(f"{name}: {describe(entry, i)}: {err}") from None
    if _crc(raw) != entry["raw_crc"]:
        raise FormatError(f"{name}: {describe(entry, i)}: decoded payload fails its CRC")
    return raw


class StreamDecoder:
    """Bytes in as they arrive (``feed``), verified chunks out in file order.

    ``feed`` returns the chunks completed by the new bytes as (index, entry) pairs; ``header`` is known
    once its bytes are in. ``on_chunk(i, entry) -> symbols`` may give the (bits, count) an index chunk's
    ``ans`` codec needs, and ``consume(i, entry, raw)`` receives each decoded payload; both are set by
    the model layer (``tvq.codec.model``)."""

    def __init__(self, name: str = "stream", consume=None, symbols=None):
        self.name = name
        self.buffer = bytearray()
        self.header: dict | None = None
        self.next_chunk = 0
        self._first_chunk = 0
        self._consume = consume
        self._symbols = symbols

    @property
    def received(self) -> int:
        return len(self.buffer)

    @property
    def done(self) -> bool:
        return self.header is not None and self.next_chunk == len(self.header["chunks"])

    def feed(self, data: bytes) -> list[tuple[int, dict]]:
        self.buffer += data
        if self.header is None:
            try:
                self.header, self._first_chunk = parse_header(self.buffer, self.name)
            except Truncated:
                return []
            if self._consume is not None:
                try:
                    self._consume(None, None, None)  # the header is in: the model layer validates it now
                except FormatError:
                    self.header = None  # refused: a later feed refuses it again instead of reading on
                    raise
        completed = []
        chunks = self.header["chunks"]
        # Every chunk these bytes complete is checked against the index and its CRC first (cheap), so
        # damage anywhere is reported before any decoding work is spent on the chunks ahead of it.
        i = self.next_chunk
        while i < len(chunks) and len(self.buffer) >= chunks[i]["offset"] + CHUNK_HEAD.size + chunks[i]["length"]:
            if chunks[i]["kind"] in TAGS:
                check_chunk(self.buffer, chunks[i], i, self.name)
            i += 1
        while self.next_chunk < len(chunks):
            entry = chunks[self.next_chunk]
            if len(self.buffer) < entry["offset"] + CHUNK_HEAD.size + entry["length"]:
                break
            i = self.next_chunk
            if entry["kind"] in TAGS:
                symbols = self._symbols(i, entry) if self._symbols else None
                raw = decode_chunk(self.buffer, entry, i, self.name, symbols)
                if self._consume is not None:
                    self._consume(i, entry, raw)
            # a kind this reader does not know is skipped by its length
            self.next_chunk += 1
            completed.append((i, entry))
        return completed

    def truncation(self) -> str:
        """Where the bytes stop, for messages."""
        if self.header is None:
            return f"truncated at byte {len(self.buffer)} (inside the header)"
        if self.done:
            return "complete"
        entry = self.header["chunks"][self.next_chunk]
        return f"truncated at byte {len(self.buffer)}, inside {describe(entry, self.next_chunk)}"
