"""The .tvq codec: bit packing and entropy codecs round trip, models round trip bit-exactly (to fp16), every
prefix decodes to its longest complete LOD, and damaged or crafted files give a one-line FormatError and
nothing else."""

import copy
import dataclasses
import json
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tvq.codec as codec
from tvq import runtime
from tvq.codec import bitpack, container, entropy
from tvq.codec.model import load_mlp, mlp_payload
from tvq.codec.container import CHUNK_HEAD, CRC, FORMAT_VERSION, MAGIC, PREAMBLE, FormatError, Truncated
from tvq.errors import TvqError
from tvq.field import Decoder, FeatureOctree, RadianceField
from tvq.octree import SparseOctree

CODEC_ID = {name: c for c, name in entropy.NAMES.items()}


# ---- models ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Tiny trained fields (raw, vq 4 bits, hash 4 bits) and their .tvq bytes, built once."""
    runtime.init("cpu")
    from tvq.data import load_scene
    from tvq.data.synthetic import make_scene
    from tvq.train import TrainConfig, Trainer

    root = tmp_path_factory.mktemp("codec")
    make_scene(root / "s", size=24, n_train=6, n_val=0, n_test=2, seed=1)
    scene = load_scene(root / "s")
    train = scene.split("train")
    cameras = codec.camera_header(train[0].K, scene.width, scene.height, np.stack([v.c2w for v in train]))
    out = {}
    for kind, bits, hashed in (("raw", 0, False), ("vq", 4, False), ("hash", 4, True)):
        trainer = Trainer(scene, TrainConfig(bits=bits, hash=hashed, iters=5, max_level=4, num_lods=2, batch_rays=256,
                                             eval_every=0, vq_warmup=0), root / f"run-{kind}")
        trainer.setup()
        trainer.fit()
        field = trainer.field
        data, index = codec.encode(field, background=[1, 1, 1], cameras=cameras, entropy=True)
        out[kind] = (field, data, index)
    out["cameras"] = cameras
    return out


def tiny_field(kind: str) -> RadianceField:
    """A hand-built field whose file is about a kilobyte, mostly header (two feature levels, F = 2, a 4-unit MLP)."""
    torch.manual_seed(7)
    masks = [torch.tensor([0b10000001], dtype=torch.uint8), torch.tensor([0b00000011, 0b11000000], dtype=torch.uint8)]
    octree = SparseOctree.from_child_masks(2, masks)
    grid = FeatureOctree(octree, num_lods=2, feature_dim=2, kind=kind, bits=0 if kind == "raw" else 2, seed=5,
                         init_std=0.5)
    return RadianceField(grid, Decoder(2, hidden=4, num_freqs=1))


@pytest.fixture(scope="session")
def tiny():
    runtime.init("cpu")
    out = {}
    for kind in ("raw", "vq", "hash"):
        field = tiny_field(kind)
        out[kind] = (field, codec.encode(field, background=[0, 0, 0])[0])
    return out


def lod_ends(data: bytes) -> list[int]:
    return [lod["end"] for lod in codec.inspect(data)["lods"]]


def chunk_spans(data: bytes) -> list[tuple[int, int]]:
    header, _ = container.parse_header(data)
    return [(e["offset"], e["offset"] + CHUNK_HEAD.size + e["length"]) for e in header["chunks"]]


def random_points(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---- crafting files: the documented layout, written here independently of the encoder ----------------


def split(data: bytes) -> tuple[dict, list[tuple[dict, bytes, bytes]]]:
    """A file as (header without chunks/lods/file_bytes, [(index entry, 4-byte tag, stored bytes)])."""
    header, _ = container.parse_header(data)
    parts = []
    for e in header["chunks"]:
        start = e["offset"] + CHUNK_HEAD.size
        parts.append((dict(e), CHUNK_HEAD.unpack_from(data, e["offset"])[0], data[start:start + e["length"]]))
    return {k: v for k, v in header.items() if k not in ("chunks", "lods", "file_bytes", "chunk_bytes")}, parts


def assemble(base: dict, parts, edit=None, raw_json: bytes | None = None, magic=MAGIC, version=FORMAT_VERSION,
             flags=0) -> bytes:
    """The file of ``parts`` with a plain JSON header (offsets, stored lengths, LOD ends and file size
    recomputed), ``edit(header)`` applied to the finished header dict and every CRC made right again;
    ``raw_json`` replaces the header's bytes outright."""
    offset = 0  # the stored index counts from the first chunk
    entries = []
    for e, _, stored in parts:
        entries.append(dict(e, offset=offset, length=len(stored)))
        offset += CHUNK_HEAD.size + len(stored)
    ends = [{"lod": lod, "level": level,
             "end": max(e["offset"] + CHUNK_HEAD.size + e["length"] for e in entries
                        if e["level"] is None or e["level"] <= level)}
            for lod, level in enumerate(base["model"]["levels"])]
    header = dict(copy.deepcopy(base), chunks=entries, lods=ends, chunk_bytes=offset)
    if edit is not None:
        edit(header)
    if isinstance(header.get("chunks"), list):
        header["chunks"] = [[e[k] for k in container.INDEX_FIELDS] if isinstance(e, dict) else e
                            for e in header["chunks"]]
    text = raw_json if raw_json is not None else json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    out = [PREAMBLE.pack(magic, version, flags, len(text)), text, CRC.pack(zlib.crc32(text))]
    for e, tag, stored in parts:
        level = 255 if e["level"] is None else e["level"]
        out.append(CHUNK_HEAD.pack(tag, level, CODEC_ID.get(e["codec"], 0), 0, len(stored), zlib.crc32(stored)))
        out.append(stored)
    return b"".join(out)


def test_the_layout_is_what_the_container_docstring_says(trained, tiny):
    """Rebuilt from its parts by the documented layout (plain JSON header), a file without entropy coding is
    byte for byte what the encoder wrote; one with a compressed header has the same header and chunks."""
    for kind in ("raw", "vq", "hash"):
        plain, _ = codec.encode(trained[kind][0], background=[1, 1, 1], cameras=trained["cameras"], entropy=False)
        assert PREAMBLE.unpack_from(plain)[2] == 0
        assert assemble(*split(plain)) == plain
    for data in [trained[k][1] for k in ("raw", "vq", "hash")] + [tiny[k][1] for k in tiny]:
        rebuilt = assemble(*split(data))

        def parts(d):  # the header and every chunk, apart from where they lie
            base, chunks = split(d)
            return base, [({k: v for k, v in e.items() if k != "offset"}, tag, stored) for e, tag, stored in chunks]

        assert parts(data) == parts(rebuilt)
        first1, first2 = container.parse_header(data)[1], container.parse_header(rebuilt)[1]
        assert data[first1:] == rebuilt[first2:]  # chunk heads and payloads hold no absolute offsets


# ---- bit packing and entropy codecs --------------------------------------------------------------------


@pytest.mark.parametrize("bits", range(1, 17))
def test_bitpack_round_trip_exact(bits):
    rng = np.random.default_rng(bits)
    for count in (0, 1, 3, 7, 9, 13, 101, 1001):
        for values in (rng.integers(0, 1 << bits, count), np.full(count, (1 << bits) - 1), np.zeros(count, int)):
            packed = bitpack.pack(values, bits)
            assert len(packed) == bitpack.packed_size(count, bits) == (count * bits + 7) // 8
            out = bitpack.unpack(packed, bits, count)
            assert out.shape == (count,) and np.array_equal(out, values)
    # value i at bits i*b .. i*b+b-1, little-endian
    assert bitpack.pack(np.array([1, 0, 3]), 2) == bytes([0b00110001])
    with pytest.raises(ValueError):
        bitpack.pack(np.array([1 << bits]), bits)
    with pytest.raises(ValueError):
        bitpack.unpack(b"\0" * (bitpack.packed_size(5, bits) + 1), bits, 5)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 16).flatmap(lambda b: st.tuples(st.just(b), st.lists(st.integers(0, (1 << b) - 1), max_size=67))))
def test_bitpack_round_trip_property(case):
    bits, values = case
    packed = bitpack.pack(np.array(values, dtype=np.int64), bits)
    assert np.array_equal(bitpack.unpack(packed, bits, len(values)), np.array(values, dtype=np.int64))


def _payloads():
    rng = np.random.default_rng(0)
    fp16 = (rng.standard_normal(999) * 0.01).astype("<f2").tobytes()
    return {
        "empty": b"",
        "one byte": b"\x07",
        "random": rng.integers(0, 256, 777).astype(np.uint8).tobytes(),
        "skewed": rng.choice(4, 3001, p=[0.85, 0.1, 0.04, 0.01]).astype(np.uint8).tobytes(),
        "constant": b"\xff" * 500,
        "fp16": fp16,
    }


@pytest.mark.parametrize("name", list(_payloads()))
def test_entropy_codecs_round_trip(name):
    raw = _payloads()[name]
    codecs = [entropy.RAW, entropy.ZSTD] + ([entropy.SHUFFLE_ZSTD] if len(raw) % 2 == 0 else [])
    codecs += [entropy.ANS] if raw else []  # an empty ans payload: test_ans_encodes_an_empty_payload
    for c in codecs:
        stored = entropy.encode(c, raw)
        assert entropy.decode(c, stored, len(raw)) == raw, entropy.NAMES[c]
        if c != entropy.RAW:
            with pytest.raises(entropy.CodecError):  # the expected raw length is enforced
                entropy.decode(c, stored, len(raw) + 2)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 6, 8, 11, 16])
def test_ans_round_trips_b_bit_symbols(bits):
    rng = np.random.default_rng(bits)
    for count in (1, 5, 333):
        for values in (rng.integers(0, 1 << bits, count), np.zeros(count, int),
                       np.minimum(rng.geometric(0.6, count) - 1, (1 << bits) - 1)):
            raw = bitpack.pack(values, bits)
            stored = entropy.encode(entropy.ANS, raw, (bits, count))
            assert entropy.decode(entropy.ANS, stored, len(raw), (bits, count)) == raw
            with pytest.raises(entropy.CodecError):
                entropy.decode(entropy.ANS, stored, len(raw), (bits, count + 1))
    if 1 < bits <= 8:  # the model table holds a count per symbol (2^b varints): small alphabets only
        skewed = bitpack.pack(np.zeros(4000, int), bits)
        assert len(entropy.encode(entropy.ANS, skewed, (bits, 4000))) < len(skewed) // 2


@pytest.mark.parametrize("name", list(_payloads()))
def test_encode_best_never_exceeds_raw(name):
    raw = _payloads()[name]
    candidates = (entropy.ZSTD, entropy.SHUFFLE_ZSTD) if len(raw) % 2 == 0 else (entropy.ZSTD,)
    candidates += (entropy.ANS,) if raw else ()
    best, stored, sizes = entropy.encode_best(raw, candidates)
    assert len(stored) <= len(raw) and sizes["raw"] == len(raw)
    assert len(stored) == min(sizes.values()) and set(sizes) == {"raw"} | {entropy.NAMES[c] for c in candidates}
    assert entropy.decode(best, stored, len(raw)) == raw
    if name in ("random", "one byte"):
        assert best == entropy.RAW  # nothing beats incompressible bytes
    if name in ("skewed", "constant"):
        assert best != entropy.RAW


# Bugs in entropy.py (their fix belongs there): expected to fail until it is fixed; strict, so that a fix
# shows up as XPASS and the mark can go.
def test_ans_encodes_an_empty_payload():
    for symbols in (None, (4, 0)):
        raw = b""
        assert entropy.decode(entropy.ANS, entropy.encode(entropy.ANS, raw, symbols), 0, symbols) == raw


def _damage(good: bytes, rng) -> bytes:
    b = bytearray(good)
    for _ in range(int(rng.integers(1, 4))):
        b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
    if rng.random() < 0.3:
        b = b[:int(rng.integers(0, len(b)))]
    return bytes(b)


def _check_damaged_streams(goods, n: int, seed: int) -> None:
    """Garbage in a codec's stored bytes gives a one-line CodecError or a payload of the expected length
    (which the raw CRC then refuses), never another exception."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        c, good, length, symbols = goods[i % len(goods)]
        try:
            out = entropy.decode(c, _damage(good, rng), length, symbols)
        except entropy.CodecError as err:
            assert "\n" not in str(err)
        else:
            assert len(out) == length


def test_damaged_ans_streams_give_codec_errors():
    raw = bitpack.pack(np.random.default_rng(3).integers(0, 3, 500), 4)
    _check_damaged_streams([(entropy.ANS, entropy.encode(entropy.ANS, raw, (4, 500)), len(raw), (4, 500)),
                            (entropy.ANS, entropy.encode(entropy.ANS, raw), len(raw), None)], 1500, seed=3)


def test_damaged_zstd_frames_give_codec_errors():
    """Every one-byte overwrite of a zstd frame's first 12 bytes (its header: sizes, flags)."""
    raw = bitpack.pack(np.random.default_rng(3).integers(0, 3, 500), 4)
    for c in (entropy.ZSTD, entropy.SHUFFLE_ZSTD):
        good = entropy.encode(c, raw)
        for i in range(12):
            for value in range(256):
                damaged = good[:i] + bytes([value]) + good[i + 1:]
                try:
                    out = entropy.decode(c, damaged, len(raw))
                except entropy.CodecError as err:
                    assert "\n" not in str(err)
                else:
                    assert len(out) == len(raw)


# ---- round trips ---------------------------------------------------------------------------------------


def _fp16(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().half().float()


def _mlp(field) -> list[torch.Tensor]:
    return [field.decoder.net[0].weight, field.decoder.net[0].bias, field.decoder.net[2].weight,
            field.decoder.net[2].bias]


def _check_mlp(field, decoded) -> None:
    """Biases exact to fp16; weights exact to fp16, or (int8) an integer in -127..127 times an fp16 scale
    per output row and an fp16 scale per input column (max |w| of the column), within half a step of the
    original; once the refinement chunk is in (from the second LOD on), within half of 1/254 step."""
    weights = decoded.header["model"]["decoder"].get("weights", "fp16")
    got, want = _mlp(decoded.field), _mlp(field)
    refined = any(e["kind"] == "mlp-refine" and e["level"] <= decoded.field.grid.levels[-1]
                  for e in decoded.header["chunks"])
    for k in (1, 3):
        assert torch.equal(got[k].detach(), _fp16(want[k]))
    for k in (0, 2):
        a, w = got[k].detach(), want[k].detach().cpu().float()
        if weights == "fp16":
            assert torch.equal(a, _fp16(w))
            continue
        assert weights == "int8"
        col = w.abs().amax(dim=0).half().float()[None]
        row = ((w / col.clamp(min=1e-30)).abs().amax(dim=1) / 127).half().float()[:, None]
        step = row * col / (254 if refined else 1)
        q = a / step.clamp(min=1e-30)
        assert torch.allclose(q, q.round(), atol=1e-2, rtol=0)
        assert q.abs().max() <= (127 * 254 + 127 if refined else 127) + 1e-2
        assert ((a - w).abs() <= step / 2 * 1.01 + 1e-7).all()


def test_int8_mlp_keeps_small_weights_of_large_features():
    """Features that grew 100x with the weights reading them shrunk 100x: the same network. One scale per row
    (set by the view-direction weights) would round those weights to a few levels; the per-column scale keeps
    the decoded network's output as close as for unscaled features."""
    torch.manual_seed(0)
    errors = []
    for factor in (1.0, 100.0):
        decoder = Decoder(8, hidden=32, num_freqs=2)
        with torch.no_grad():
            decoder.net[0].weight[:, :8] /= factor
        payload = mlp_payload(decoder, "int8")
        decoded = Decoder(8, hidden=32, num_freqs=2)
        load_mlp(decoded, payload, "int8")
        features = torch.randn(2048, 8) * factor
        dirs = torch.nn.functional.normalize(torch.randn(2048, 3), dim=1)
        with torch.no_grad():
            want, got = decoder(features, dirs), decoded(features, dirs)
        out = lambda pair: torch.cat([pair[0][:, None], pair[1]], dim=1)  # noqa: E731 density, colour
        errors.append(float((out(got) - out(want)).abs().max()))
    assert errors[1] <= 2 * errors[0] + 1e-6, errors


def _check_round_trip(field, decoded, lods=None):
    grid, got = field.grid, decoded.field.grid
    lods = field.grid.num_lods if lods is None else lods
    assert got.kind == grid.kind and got.bits == grid.bits and got.num_lods == lods
    assert got.levels == grid.levels[:lods]
    for level in range(got.levels[-1] + 1):  # the structure: cells and vertex tables
        assert torch.equal(got.octree.cells[level].cpu(), grid.octree.cells[level].cpu())
        assert torch.equal(got.octree.vertices[level].cpu(), grid.octree.vertices[level].cpu())
    assert torch.equal(got.octree.center.cpu().double(), grid.octree.center.cpu().double())
    assert got.octree.scale == pytest.approx(grid.octree.scale, rel=1e-12)
    rows = slice(0, int(got.flat.vertex_start[lods]))
    if grid.kind == "raw":
        assert torch.equal(got.features.detach(), _fp16(grid.features[rows]))
    else:
        codes = (1 << grid.bits) * lods
        assert torch.equal(got.codebooks.detach(), _fp16(grid.codebooks[:codes]))
        assert torch.equal(got.hard_indices().cpu(), grid.hard_indices()[rows].cpu())
    _check_mlp(field, decoded)
    points = random_points(4096, 1)
    dirs = torch.nn.functional.normalize(random_points(4096, 2), dim=1)
    reference = copy.deepcopy(field)  # the original with every parameter rounded to fp16: what the file holds
    with torch.no_grad():
        stored = [getattr(reference.grid, n) for n in ("features", "codebooks") if hasattr(reference.grid, n)]
        for p in stored:  # (VQ logits only ever give their argmax)
            p.copy_(_fp16(p))
        reference.decoder.load_state_dict(decoded.field.decoder.state_dict())  # checked by _check_mlp
    with torch.no_grad():
        for lod in range(lods):
            want, out = grid(points, lod), got(points, lod)
            assert (want.abs().sum(dim=1) > 0).sum() > 50  # the points do hit occupied cells
            assert torch.allclose(out, want, atol=1e-3, rtol=0)
            density, colour = decoded.field(points, dirs, lod)
            ref_density, ref_colour = reference(points, dirs, lod)
            assert torch.allclose(density, ref_density, atol=1e-5, rtol=1e-5)
            assert torch.allclose(colour, ref_colour, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["raw", "vq", "hash"])
def test_trained_model_round_trip(trained, kind):
    field, data, index = trained[kind]
    decoded = codec.read(data)
    assert decoded.complete and decoded.lods == 2 and decoded.bytes_used == len(data) and decoded.truncation == ""
    assert decoded.header["model"]["kind"] == kind and decoded.header["cameras"] == trained["cameras"]
    assert decoded.header["background"] == [1.0, 1.0, 1.0]
    _check_round_trip(field, decoded)
    assert [e["offset"] for e in index] == [e["offset"] for e in decoded.header["chunks"]]


@pytest.mark.parametrize("kind", ["raw", "vq", "hash"])
def test_tiny_model_round_trip_with_and_without_entropy_coding(tiny, kind):
    field, data = tiny[kind]
    _check_round_trip(field, codec.read(data))
    for mlp in ("int8", "fp16"):
        for entropy_coding in (True, False):
            data, index = codec.encode(field, background=[0, 0, 0], entropy=entropy_coding, mlp=mlp)
            assert entropy_coding or all(e["codec"] == "raw" for e in index)
            decoded = codec.read(data)
            assert decoded.header["model"]["decoder"]["weights"] == mlp
            _check_round_trip(field, decoded)


def test_headers_of_every_length_encode_and_decode(tiny):
    """The stored index counts from the first chunk, so headers of any length (compressed or not) are
    consistent with the chunks that follow them."""
    for kind in ("raw", "vq", "hash"):
        field = tiny[kind][0]
        for n in range(24):
            for mlp in ("int8", "fp16"):
                data, _ = codec.encode(field, background=[0, 0, 0], mlp=mlp, extra={"note": "x" * n})
                assert codec.read(data).header["info"] == {"note": "x" * n}


@pytest.mark.parametrize("kind", ["raw", "vq", "hash"])
def test_trained_model_round_trip_with_fp16_mlp(trained, kind):
    field = trained[kind][0]
    data, _ = codec.encode(field, background=[1, 1, 1], mlp="fp16")
    _check_round_trip(field, codec.read(data))


@pytest.mark.parametrize("method", ["ans", "zstd"])
def test_entropy_coded_indices_round_trip(trained, method):
    """Skewed codes make an entropy-coded index chunk (5 training steps leave them near uniform: raw)."""
    field = copy.deepcopy(trained["vq"][0])
    with torch.no_grad():
        field.grid.logits.zero_()
        field.grid.logits[:, 0] = 1
        field.grid.logits[::5, 3] = 2
        field.grid.logits[::17, 9] = 3
    chunks = [dataclasses.replace(c, candidates=(entropy.ANS if method == "ans" else entropy.ZSTD,))
              if c.kind == "indices" else c for c in codec.model.field_chunks(field)]
    data, index = codec.encode(field, background=[1, 1, 1], chunks=chunks)
    assert [e["codec"] for e in index if e["kind"] == "indices"] == [method, method]
    _check_round_trip(field, codec.read(data))


def test_write_read_inspect_a_path(trained, tmp_path):
    field, data, _ = trained["vq"]
    path = tmp_path / "model.tvq"
    report = codec.write(path, field, background=[1, 1, 1], cameras=trained["cameras"])
    assert path.read_bytes() == data and codec.is_tvq(path) and not codec.is_tvq(tmp_path / "missing.tvq")
    assert report["file_bytes"] == len(data) and sum(report["components"].values()) == len(data)
    info = codec.inspect(path)
    assert info["lods"] == codec.read(data).header["lods"] and info["chunks"][-1]["cumulative"] == len(data)
    end = lod_ends(data)[0]
    assert codec.read(path, max_bytes=end).lods == 1
    with pytest.raises(TvqError, match="no such file"):
        codec.read(tmp_path / "missing.tvq")
    with pytest.raises(FormatError, match="truncated at byte"):
        codec.inspect(data[:-1])
    with pytest.raises(FormatError, match="trailing bytes"):
        codec.inspect(data + b"\0")
    with pytest.raises(FormatError, match="bytes follow the last chunk"):
        codec.read(data + b"\0")


# ---- prefixes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["raw", "vq", "hash"])
def test_decode_at_every_lod_end(trained, kind):
    field, data, _ = trained[kind]
    full = codec.read(data)
    ends = lod_ends(data)
    assert ends == sorted(ends) and ends[-1] == len(data)
    points = random_points(2048, 3)
    for lod, end in enumerate(ends):
        prefix = codec.read(data, max_bytes=end)
        assert prefix.lods == lod + 1 and prefix.bytes_used == end and prefix.complete == (end == len(data))
        _check_round_trip(field, prefix, lods=lod + 1)
        with torch.no_grad():
            for k in range(lod + 1):
                assert torch.allclose(prefix.field.grid(points, k), full.field.grid(points, k), atol=1e-6, rtol=0)
        if lod > 0:
            assert codec.read(data, max_bytes=end - 1).lods == lod
        else:
            with pytest.raises(Truncated, match="truncated at byte"):
                codec.read(data, max_bytes=end - 1)
        if end < len(data):
            with pytest.raises(Truncated, match="truncated at byte"):
                codec.read(data, max_bytes=end, strict=True)


def _check_prefix(data: bytes, offset: int, ends: list[int]) -> None:
    complete = sum(end <= offset for end in ends)
    try:
        decoded = codec.read(data[:offset])
    except Truncated as err:
        message = str(err)
        assert complete == 0, f"offset {offset}: {message}"
        assert "\n" not in message and "truncated at byte" in message, message
    else:
        assert decoded.lods == complete, offset
        assert decoded.bytes_used == ends[complete - 1]
        assert decoded.complete == (offset == len(data))
        assert decoded.complete or "truncated at byte" in decoded.truncation


@pytest.mark.parametrize("kind", ["raw", "vq", "hash"])
def test_truncation_at_every_byte_of_a_tiny_model(tiny, kind):
    data = tiny[kind][1]
    ends = lod_ends(data)
    for offset in range(len(data) + 1):
        _check_prefix(data, offset, ends)


def test_truncation_at_every_byte_after_the_mlp_of_a_trained_model(trained):
    """Every offset from the end of the (11 kB) MLP chunk on, and a sample of those before it."""
    data = trained["vq"][1]
    ends = lod_ends(data)
    mlp_end = chunk_spans(data)[0][1]
    rng = np.random.default_rng(0)
    offsets = sorted(set(range(mlp_end - 20, len(data) + 1)) | set(rng.integers(0, mlp_end, 300).tolist()))
    for offset in offsets:
        _check_prefix(data, offset, ends)


# ---- damage --------------------------------------------------------------------------------------------


def _region(data: bytes, byte: int) -> int | None:
    """The chunk a byte lies in (None: the preamble or header)."""
    for i, (start, end) in enumerate(chunk_spans(data)):
        if start <= byte < end:
            return i
    return None


def _check_flips(data: bytes, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    spans = chunk_spans(data)
    original = np.frombuffer(data, np.uint8)
    seen = {"header": 0, "chunk": 0}
    for _ in range(n):
        damaged = bytearray(data)
        flips = int(rng.choice([1, 1, 2, 3, 8]))
        if rng.random() < 0.5:  # spread over the file
            positions = rng.integers(0, len(data) * 8, flips)
        else:  # a burst within a few bytes
            start = int(rng.integers(0, len(data) * 8))
            positions = np.minimum(start + rng.integers(0, 32, flips), len(data) * 8 - 1)
        for p in positions.tolist():
            damaged[p // 8] ^= 1 << (p % 8)
        if damaged == data:  # flips that cancelled out
            continue
        first = int(np.flatnonzero(np.frombuffer(bytes(damaged), np.uint8) != original)[0])
        with pytest.raises(FormatError) as info:
            codec.read(bytes(damaged))
        message = str(info.value)
        assert "\n" not in message, message
        chunk = None
        for i, (start, end) in enumerate(spans):
            if start <= first < end:
                chunk = i
        if chunk is None:
            seen["header"] += 1
            assert any(s in message for s in ("header", "not a .tvq file", "format version", "flags")), message
        else:
            seen["chunk"] += 1
            assert f"chunk {chunk} (" in message, (first, message)
    return seen


def test_random_bit_flips_of_a_trained_model_all_give_format_errors(trained):
    seen = _check_flips(trained["vq"][1], 2500, seed=0)
    assert seen["chunk"] > 1000 and seen["header"] > 50


@pytest.mark.parametrize("kind", ["raw", "vq", "hash"])
def test_random_bit_flips_of_a_tiny_model_all_give_format_errors(tiny, kind):
    seen = _check_flips(tiny[kind][1], 800, seed=1)
    assert seen["chunk"] > 50 and seen["header"] > 50


def test_a_flipped_byte_in_each_chunk_names_that_chunk(trained):
    data = trained["hash"][1]
    for i, (start, end) in enumerate(chunk_spans(data)):
        # tag, level, codec, stored length, CRC, payload
        for byte in (start, start + 4, start + 5, start + 8, start + 12, start + CHUNK_HEAD.size, end - 1):
            damaged = bytearray(data)
            damaged[byte] ^= 0x10
            with pytest.raises(FormatError, match=rf"chunk {i} \(") as info:
                codec.read(bytes(damaged))
            assert "\n" not in str(info.value)


# ---- crafted headers -----------------------------------------------------------------------------------


def _set(path, value):
    def edit(h):
        *keys, last = path
        for k in keys:
            h = h[k]
        h[last] = value(h[last]) if callable(value) else value
    return edit


def _model(path, value):
    return _set(("model",) + tuple(path), value)


BIG = 1 << 31
HEADER_CRAFTS = {  # name: (edit of the finished header, expected message)
    # the structure cannot hold what the counts claim (checked before any chunk is decoded)
    "cells of a level exceed 8x the level above": (_model(("counts", "cells", 4), BIG), "cannot come from an octree"),
    "2^31 vertices": (_model(("counts", "vertices", 1), BIG), "vertex counts cannot come from the cell counts"),
    "vertices beyond 8 per cell": (_model(("counts", "vertices", 0), lambda v: 8 * 151 + 1), "vertex counts"),
    "full octree": (_model(("counts", "cells"), [1, 8, 64, 512, 4096]), "its counts need"),
    "cells of the level above +1": (_model(("counts", "cells", 3), lambda v: v + 1), "its counts need"),
    "negative count": (_model(("counts", "cells", 2), -1), "counts malformed"),
    "float count": (_model(("counts", "cells", 2), 47.0), "counts malformed"),
    "unknown density activation": (_model(("decoder", "density"), "softplus"), "decoder shape malformed"),
    "no density activation": (_model(("decoder", "density"), None), "decoder shape malformed"),
    # chunk lengths against the counts and the file
    "mlp raw_length": (_set(("chunks", 0, "raw_length"), lambda v: v + 2), "claims"),
    "raw-stored chunk lengths differ": (_set(("chunks", 1, "raw_length"), 2), "stored raw but its lengths differ"),
    "chunk bytes larger than the chunks": (_set(("chunk_bytes",), lambda v: v + 100), "its chunks take"),
    "chunk offset": (_set(("chunks", 2, "offset"), lambda v: v + 1), "starts at byte"),
    "chunk length beyond 2^32": (_set(("chunks", 3, "length"), 1 << 32), "malformed"),
    "malformed index row": (_set(("chunks", 1), "mlp"), "malformed"),
    "index row of 6 fields": (_set(("chunks", 1), [1, 2, 3, 4, 5, 6]), "malformed"),
    "too many chunks": (_set(("chunks",), lambda v: v * 1000), "no valid chunk index"),
    "no chunk index": (_set(("chunks",), None), "no valid chunk index"),
    "unknown codec": (_set(("chunks", 0, "codec"), "lzma"), "malformed"),
    "missing chunk": (lambda h: h["chunks"].pop(), "its chunks take"),
    # the LOD table
    "no LOD table": (lambda h: h.pop("lods"), "LOD table"),
    "LOD end too early": (_set(("lods", 0, "end"), lambda v: v - 1), "LOD table"),
    "LOD end as a float": (_set(("lods", 1, "end"), float), "LOD table"),
    "LOD table a string": (_set(("lods",), "lods"), "LOD table"),
    # the model description
    "levels inconsistent": (_model(("levels",), [2, 4]), "levels do not follow"),
    "levels for one LOD more": (_model(("levels",), [2, 3, 4]), "levels do not follow"),
    "levels as floats": (_model(("levels",), [3.0, 4.0]), "levels do not follow"),
    "num_lods beyond max_level + 1": (_model(("num_lods",), 6), "max_level / num_lods"),
    "max_level 13": (_model(("max_level",), 13), "max_level / num_lods"),
    "unknown model kind": (_model(("kind",), "jpeg"), "unknown model kind"),
    "model kind a list": (_model(("kind",), ["vq"]), "unknown model kind"),
    "model kind an object": (_model(("kind",), {"vq": 1}), "unknown model kind"),
    "bits 17": (_model(("bits",), 17), "bits"),
    "rank a string": (_model(("rank",), "ab"), "bits / rank"),
    "rank a list": (_model(("rank",), [0]), "bits / rank"),
    "feature_dim 0": (_model(("feature_dim",), 0), "feature_dim"),
    "decoder inputs": (_model(("decoder", "inputs"), 44), "decoder shape"),
    "decoder hidden 10^6": (_model(("decoder", "hidden"), 10 ** 6), "decoder shape"),
    "unknown MLP weights": (_model(("decoder", "weights"), "int4"), "decoder shape"),
    # (an fp16 decoder has no refinement chunk: the int8 file's index no longer fits the model)
    "fp16 MLP weights claimed for an int8 chunk": (_model(("decoder", "weights"), "fp16"), "chunk index"),
    "normalization NaN": (_model(("normalization", "scale"), float("nan")), "normalization"),
    "normalization center of 2": (_model(("normalization", "center"), [0, 0]), "normalization"),
    "seed negative": (_model(("seed",), -1), "seed"),
    "background out of range": (_set(("background",), [2, 0, 0]), "background"),
    "cameras malformed": (_set(("cameras", "K"), [[1, 0], [0, 1]]), "cameras"),
    "no model": (lambda h: h.pop("model"), "no model description"),
}


@pytest.fixture
def decode_spy(monkeypatch):
    """The chunks the reader decodes, in order."""
    decoded = []
    real = container.decode_chunk

    def spy(data, entry, i, name, symbols=None):
        decoded.append((entry["kind"], entry["level"]))
        return real(data, entry, i, name, symbols)

    monkeypatch.setattr(container, "decode_chunk", spy)
    return decoded


@pytest.mark.parametrize("name", list(HEADER_CRAFTS))
def test_crafted_headers_are_refused_before_any_chunk_is_decoded(trained, decode_spy, name):
    edit, expected = HEADER_CRAFTS[name]
    data = assemble(*split(trained["vq"][1]), edit=edit)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(FormatError) as info:
            codec.read(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert expected in message and "\n" not in message, message
    assert decode_spy == [], f"{name}: chunks decoded before the header was refused"
    assert time.perf_counter() - t0 < 2 and peak < 32 << 20  # nothing the claims ask for is allocated
    with pytest.raises(FormatError):
        codec.inspect(data)


@pytest.mark.parametrize("kind", ["raw", "vq", "hash"])
def test_counts_the_structure_does_not_hold_are_refused_before_the_level_is_read(trained, decode_spy, kind):
    """Counts that pass the header checks but disagree with the decoded structure: refused at the
    structure chunk that shows it, before that level's feature chunks are decoded."""
    base, parts = split(trained[kind][1])
    cells = base["model"]["counts"]["cells"]
    data = assemble(base, parts, edit=_model(("counts", "cells", 4), lambda v: v + 1))
    with pytest.raises(FormatError, match=rf"level 4 has {cells[4]} occupied cells, the header says {cells[4] + 1}"):
        codec.read(data)
    assert decode_spy[-1] == ("structure", 4)
    if kind == "vq":  # 348 vertices need as many index bytes as 347: only the structure tells
        decode_spy.clear()
        data = assemble(base, parts, edit=_model(("counts", "vertices", 0), lambda v: v + 1))
        with pytest.raises(FormatError, match="level 3 has .* vertices, the header says"):
            codec.read(data)
        assert decode_spy[-1] == ("structure", 3)


def test_chunks_that_disagree_with_their_index_are_refused(trained):
    base, parts = split(trained["vq"][1])
    # a chunk head that disagrees with the index: a known kind under another tag
    swapped = [(e, b"FEAT" if e["kind"] == "codebook" else tag, s) for e, tag, s in parts]
    with pytest.raises(FormatError, match=r"chunk 4 \(codebook, level 3.*disagrees with the header's index"):
        codec.read(assemble(base, swapped))
    # chunks in the wrong order
    reordered = parts[:4] + [parts[5], parts[4]] + parts[6:]
    with pytest.raises(FormatError, match="in stream order"):
        codec.read(assemble(base, reordered))
    # a payload whose stored CRC is right but whose raw CRC is not
    e, tag, stored = parts[4]
    other = (dict(e, raw_crc=(e["raw_crc"] + 1) % (1 << 32)), tag, stored)
    with pytest.raises(FormatError, match=r"chunk 4 .*decoded payload fails its CRC"):
        codec.read(assemble(base, parts[:4] + [other] + parts[5:]))
    # a zstd chunk (CRC right) that does not decode to its raw length
    e, tag, stored = parts[0]
    bad = (dict(e, codec="zstd"), tag, entropy.encode(entropy.ZSTD, b"\0" * (e["raw_length"] - 2)))
    with pytest.raises(FormatError, match=r"chunk 0 \(mlp.*zstd frame states"):
        codec.read(assemble(base, [bad] + parts[1:]))


def test_a_zstd_frame_that_claims_a_huge_size_is_refused(trained):
    base, parts = split(trained["vq"][1])
    e, tag, _ = parts[0]
    # a single-segment zstd frame with an 8-byte content size of 2^62 and one empty raw block
    frame = b"\x28\xb5\x2f\xfd" + bytes([0b11100000]) + struct.pack("<Q", 1 << 62) + bytes([1, 0, 0])
    with pytest.raises(FormatError, match=r"chunk 0"):
        codec.read(assemble(base, [(dict(e, codec="zstd"), tag, frame)] + parts[1:]))


PREAMBLE_CRAFTS = {
    "bad magic": (dict(magic=b"\x89PNG\r\n\x1a\n"), "not a .tvq file"),
    "format version 1": (dict(version=1), "format version 1 is not supported"),
    "format version 3": (dict(version=FORMAT_VERSION + 1), f"format version {FORMAT_VERSION + 1} is not supported"),
    "format version 0": (dict(version=0), "format version 0 is not supported"),
    "unknown flags": (dict(flags=0x8000), "unknown preamble flags"),
    "compressed-header flag over plain JSON": (dict(flags=container.HEADER_ZSTD), "header does not decompress"),
    "compressed header claiming 2^40 bytes": (dict(flags=container.HEADER_ZSTD, raw_json=b"\x28\xb5\x2f\xfd\xe0"
                                                   + struct.pack("<Q", 1 << 40) + bytes([1, 0, 0])),
                                              "header does not decompress"),
    "compressed header of unknown size": (dict(flags=container.HEADER_ZSTD, raw_json=b"\x28\xb5\x2f\xfd\x00\x00"
                                               + bytes([1, 0, 0])), "header does not decompress"),
    "compressed header that is not JSON": (dict(flags=container.HEADER_ZSTD,
                                                raw_json=entropy.encode(entropy.ZSTD, b"{not json" * 50)),
                                           "not valid JSON"),
    "not an object": (dict(raw_json=b"[1, 2, 3]"), "not a JSON object"),
    "not JSON": (dict(raw_json=b"{\"chunks\": [}"), "not valid JSON"),
    "not UTF-8": (dict(raw_json=b"{\"a\": \"\xff\xfe\"}"), "not valid JSON"),
    "deeply nested": (dict(raw_json=b"[" * 100000 + b"]" * 100000), "not valid JSON"),
    "an integer of 5000 digits": (dict(raw_json=b"{\"file_bytes\": " + b"9" * 5000 + b"}"), "not valid JSON"),
}


@pytest.mark.parametrize("name", list(PREAMBLE_CRAFTS))
def test_crafted_preambles_are_refused(trained, decode_spy, name):
    kwargs, expected = PREAMBLE_CRAFTS[name]
    data = assemble(*split(trained["vq"][1]), **kwargs)
    with pytest.raises(FormatError) as info:
        codec.read(data)
    assert expected in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert decode_spy == []


@pytest.mark.parametrize("length", [1 << 30, (1 << 32) - 1, container.MAX_HEADER_BYTES + 1])
def test_a_huge_header_length_is_refused_at_once(trained, length):
    data = trained["vq"][1]
    crafted = PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, length) + data[PREAMBLE.size:]
    t0 = time.perf_counter()
    with pytest.raises(FormatError, match=f"header claims {length} bytes"):
        codec.read(crafted)
    with pytest.raises(FormatError, match="header claims"):
        codec.StreamDecoder().feed(crafted[:PREAMBLE.size])  # before the header's bytes arrive
    assert time.perf_counter() - t0 < 0.5


def test_short_inputs():
    with pytest.raises(FormatError, match="not a .tvq file"):
        codec.read(b"GIF8")
    for n in range(PREAMBLE.size):
        with pytest.raises(Truncated, match="truncated at byte"):
            codec.read(MAGIC[:n] if n <= len(MAGIC) else MAGIC + b"\0" * (n - len(MAGIC)))


def test_a_header_refused_once_stays_refused(tiny):
    """After a FormatError the stream decoder refuses again on the next feed; it does not read on."""
    crafted = assemble(*split(tiny["vq"][1]), edit=_set(("background",), [2, 0, 0]))
    stream = codec.StreamDecoder()
    for piece in (crafted[:-1], crafted[-1:], b""):
        with pytest.raises(FormatError, match="background"):
            stream.feed(piece)


# ---- forward compatibility -----------------------------------------------------------------------------


def test_unknown_chunk_kinds_are_skipped_by_length(trained):
    field, data, _ = trained["vq"]
    base, parts = split(data)
    at = next(i for i, (e, _, _) in enumerate(parts) if e["kind"] == "indices")  # between codebook 3 and indices 3
    payload = b"a future tvq's data \x00\x01\x02" * 7
    extra = {"kind": "extra", "level": 3, "codec": "raw", "offset": 0, "length": len(payload),
             "raw_length": len(payload), "raw_crc": zlib.crc32(payload)}
    tail = dict(extra, kind="thumbnail", level=4, codec="zstd", raw_length=12345)  # a codec only it knows
    crafted = assemble(base, parts[:at] + [(extra, b"XTRA", payload)] + parts[at:] + [(tail, b"THMB", payload[:50])])
    body = len(crafted) - container.parse_header(crafted)[1]
    assert body == len(data) - container.parse_header(data)[1] + 2 * CHUNK_HEAD.size + len(payload) + 50
    decoded = codec.read(crafted)
    assert decoded.complete and decoded.lods == 2
    assert [e["kind"] for e in decoded.header["chunks"]].count("extra") == 1
    _check_round_trip(field, decoded)
    original = codec.read(data).field
    with torch.no_grad():
        points = random_points(1024, 5)
        for lod in range(2):
            assert torch.equal(decoded.field.grid(points, lod), original.grid(points, lod))
    report = codec.inspect(crafted)
    assert report["components"]["other"] == 2 * CHUNK_HEAD.size + len(payload) + 50
    # prefixes still end where the header says each LOD does
    for lod, end in enumerate(lod_ends(crafted)):
        assert codec.read(crafted, max_bytes=end).lods == lod + 1
    # a stream reports each chunk, the unknown ones included (through the model's stream: an ans-coded index
    # chunk needs the symbol count the header gives)
    stream = codec.StreamDecoder()
    chunks = stream.chunks.feed(crafted)
    assert stream.lods == 2
    assert [e["kind"] for _, e in chunks] == [e["kind"] for e, _, _ in parts[:at]] + ["extra"] + \
        [e["kind"] for e, _, _ in parts[at:]] + ["thumbnail"]


# ---- streaming -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_stream_decoder_reports_each_lod_once_when_its_bytes_are_in(trained, tiny, seed):
    rng = np.random.default_rng(seed)
    for data in (trained["vq"][1], trained["raw"][1], tiny["hash"][1]):
        ends = lod_ends(data)
        header_end = container.parse_header(data)[1]
        stream = codec.StreamDecoder()
        received, reported = 0, []
        assert stream.feed(b"") == [] and stream.header is None
        while received < len(data):
            size = int(rng.choice([1, int(rng.integers(1, 64)), int(rng.integers(1, 4000))]))
            piece = data[received:received + size]
            received += len(piece)
            new = stream.feed(piece)
            assert stream.received == received
            assert (stream.header is not None) == (received >= header_end)
            for lod in new:
                # reported at the first feed that reached its end: not before, and not at a later feed
                assert received >= ends[lod] > received - len(piece), (lod, received, ends)
            assert [lod for lod, end in enumerate(ends) if received - len(piece) < end <= received] == new
            reported += new
        assert reported == list(range(len(ends))) and stream.done and stream.lods == len(ends)
        assert [stream.lod_end(k) for k in range(len(ends))] == ends
        whole, streamed = codec.read(data).field, stream.field()
        with torch.no_grad():
            points = random_points(512, seed)
            assert torch.equal(whole.grid(points, len(ends) - 1), streamed.grid(points, len(ends) - 1))
