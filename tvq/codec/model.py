"""A radiance field as .tvq chunks, and chunks (any prefix of them) back into a renderable field.

Chunk order, coarsest first, so that every LOD is a prefix of the file:

    mlp                                   the decoder: int8 weights with fp16 scales (or all fp16)
    structure 1 .. L0                     child masks of levels 0 .. L0-1 (L0: the first feature level)
    level L0:  its features               raw: features | vq: codebook, indices | hash: codebook, hash
                                          | lra: klt-basis, klt-coeffs
                                          | vqrf: codebook, vertex-classes, indices, kept-features
    mlp-refine (level L0+1)               int8 weights only: the rounding residual of every weight, 8 more bits
    structure L0+1, level L0+1 features, ... up to the finest level

The first LOD renders with 8-bit decoder weights (at its quality they cost nothing measurable and save
6 kB of the first LOD's bytes); every finer LOD needs the refinement too, so it renders with ~16-bit
weights: long-trained features are large, and 8-bit weights alone cost the finest LOD tenths of a dB.

The vertex order of a level is a pure function of its occupied cells (sorted Morton codes of their
corners), so only masks and per-vertex payloads are stored; the header's counts (cells per level,
vertices per feature level) let a reader check every raw length before decoding, and the decoded structure
is checked against those counts before the level's features are allocated.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..field import DENSITIES, Decoder, FeatureOctree, RadianceField, spatial_hash
from ..octree import SparseOctree, child_cells, level_vertices, _as_center
from . import bitpack, entropy
from .container import Chunk, FormatError, _lod_ends

FP16_CODECS = (entropy.ZSTD, entropy.SHUFFLE_ZSTD)
BYTE_CODECS = (entropy.ZSTD, entropy.ANS)
INDEX_CODECS = (entropy.ZSTD, entropy.ANS)
HASH_FUNCTION = 1  # tvq.field.spatial_hash
LEVEL_KINDS = {"raw": ("features",), "vq": ("codebook", "indices"), "hash": ("codebook", "hash"),
               "lra": ("klt-basis", "klt-coeffs"), "vqrf": ("codebook", "vertex-classes", "indices", "kept-features")}
COMPONENT = {"mlp": "mlp", "mlp-refine": "mlp", "structure": "structure", "features": "features", "codebook": "codebooks",
             "indices": "indices", "hash": "indices", "klt-basis": "codebooks", "klt-coeffs": "features",
             "vertex-classes": "structure", "kept-features": "features"}
# VQRF's vertex classes (2 bits per vertex): pruned (features 0), vector-quantised, kept (8-bit features)
PRUNED, QUANTISED, KEPT = 0, 1, 2


def dequantize_uint8(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """8-bit kept features back to floats: offset + scale q (``tvq.compress.vqrf.quantize_uint8`` writes them)."""
    return offset + scale * q.float()


def index_bits(codes: int) -> int:
    """Bits of an index into ``codes`` codes (at least 1)."""
    return max(1, (int(codes) - 1).bit_length())


def _fp16(t: torch.Tensor) -> bytes:
    return t.detach().to("cpu", torch.float16).contiguous().numpy().astype("<f2").tobytes()


def _from_fp16(raw: bytes, shape) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(raw, "<f2").astype(np.float32).reshape(shape).copy())


def _mlp_tensors(decoder: Decoder) -> list[torch.Tensor]:
    first, second = decoder.net[0], decoder.net[2]
    return [first.weight, first.bias, second.weight, second.bias]


MLP_WEIGHTS = ("fp16", "int8")


def mlp_bytes(model: dict) -> int:
    """Raw bytes of the mlp chunk: fp16 everything, or int8 weights with fp16 scales per output row and per
    input column, and fp16 biases."""
    d = model["decoder"]
    hidden, inputs = d["hidden"], d["inputs"]
    if d.get("weights", "fp16") == "int8":
        scales = (hidden + inputs) + (4 + hidden)
        return hidden * inputs + 4 * hidden + 2 * scales + 2 * (hidden + 4)
    return 2 * (hidden * inputs + hidden + 4 * hidden + 4)


def _int8_two_sided(w: torch.Tensor) -> tuple[bytes, bytes, bytes, bytes]:
    """8-bit quantisation w ~ row[i] * col[j] * (q[i, j] + e[i, j] / 254): fp16 column scales (max |w| of each
    input column), then fp16 row scales (max of the row / 127 once the columns are normalised), int8 values
    q and int8 refinements e of the rounding residual (|w / (row col) - q| <= 1/2). A scale per column
    matters: trained features grow large while the weights that read them shrink, and one scale per row
    alone (set by the view-direction weights) would round those small weights away."""
    w = w.detach().float().cpu()
    col = w.abs().amax(dim=0).half().float()
    wn = torch.where(col[None] > 0, w / col.clamp(min=1e-30)[None], torch.zeros_like(w))
    row = (wn.abs().amax(dim=1) / 127).half().float()
    x = torch.where(row[:, None] > 0, wn / row.clamp(min=1e-30)[:, None], torch.zeros_like(w))
    q = x.round().clamp(-127, 127)
    e = ((x - q) * REFINE).round().clamp(-127, 127)
    as_bytes = lambda t: t.to(torch.int8).numpy().tobytes()  # noqa: E731
    return _fp16(row), _fp16(col), as_bytes(q), as_bytes(e)


REFINE = 254  # refinement steps per int8 step


def mlp_payload(decoder: Decoder, weights: str) -> bytes:
    w1, b1, w2, b2 = _mlp_tensors(decoder)
    if weights == "fp16":
        return b"".join(_fp16(t) for t in (w1, b1, w2, b2))
    r1, c1, q1, _ = _int8_two_sided(w1)
    r2, c2, q2, _ = _int8_two_sided(w2)
    return b"".join([r1, c1, r2, c2, _fp16(b1), _fp16(b2), q1, q2])


def mlp_refine_payload(decoder: Decoder) -> bytes:
    w1, _, w2, _ = _mlp_tensors(decoder)
    return _int8_two_sided(w1)[3] + _int8_two_sided(w2)[3]


def refine_bytes(model: dict) -> int:
    d = model["decoder"]
    return (d["hidden"] * d["inputs"] + 4 * d["hidden"]) if d.get("weights", "fp16") == "int8" else 0


def decoder_chunks(chunks: list[Chunk], decoder: Decoder, weights: str, levels) -> list[Chunk]:
    """``chunks`` with the decoder stored as ``weights``: the mlp chunk first and, for int8, the refinement
    after the first LOD's chunks (at the second feature level, or the first when there is one)."""
    body = [c for c in chunks if c.kind not in ("mlp", "mlp-refine")]
    out = [Chunk("mlp", None, mlp_payload(decoder, weights), FP16_CODECS if weights == "fp16" else BYTE_CODECS)]
    if weights != "int8":
        return out + body
    first = levels[0]
    at = next((i for i, c in enumerate(body) if c.level is not None and c.level > first), len(body))
    refine = Chunk("mlp-refine", levels[min(1, len(levels) - 1)], mlp_refine_payload(decoder), BYTE_CODECS)
    return out + body[:at] + [refine] + body[at:]


def load_mlp(decoder: Decoder, raw: bytes, weights: str) -> list[torch.Tensor] | None:
    """Decoder weights from an mlp chunk; for int8, returns the step of each weight matrix (row x col
    scales), which the refinement chunk needs."""
    tensors = _mlp_tensors(decoder)
    with torch.no_grad():
        if weights == "fp16":
            offsets = np.cumsum([0] + [t.numel() for t in tensors]) * 2
            for t, a, b in zip(tensors, offsets[:-1], offsets[1:]):
                t.copy_(_from_fp16(raw[a:b], t.shape))
            return None
        w1, b1, w2, b2 = tensors
        h, n_in = w1.shape
        pos = 0

        def take(n: int) -> bytes:
            nonlocal pos
            pos += n
            return raw[pos - n:pos]

        r1, c1 = _from_fp16(take(2 * h), (h, 1)), _from_fp16(take(2 * n_in), (1, n_in))
        r2, c2 = _from_fp16(take(8), (4, 1)), _from_fp16(take(2 * h), (1, h))
        b1.copy_(_from_fp16(take(2 * h), (h,)))
        b2.copy_(_from_fp16(take(8), (4,)))
        steps = [r1 * c1, r2 * c2]
        w1.copy_(_int8(take(h * n_in), (h, n_in)) * steps[0])
        w2.copy_(_int8(take(4 * h), (4, h)) * steps[1])
        return steps


def refine_mlp(decoder: Decoder, raw: bytes, steps: list[torch.Tensor]) -> None:
    """Add the refinement chunk's residuals (e / 254 steps) to int8 decoder weights."""
    w1, _, w2, _ = _mlp_tensors(decoder)
    n = w1.numel()
    with torch.no_grad():
        w1.add_(_int8(raw[:n], tuple(w1.shape)) * steps[0] / REFINE)
        w2.add_(_int8(raw[n:], tuple(w2.shape)) * steps[1] / REFINE)


def _int8(raw: bytes, shape) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(raw, np.int8).astype(np.float32).reshape(shape))


# ---- writing -------------------------------------------------------------------------------------------


def model_header(field: RadianceField, kind: str, bits: int = 0, rank: int = 0, mlp: str = "fp16") -> dict:
    grid, octree, decoder = field.grid, field.octree, field.decoder
    first = decoder.net[0]
    return {
        "kind": kind, "bits": bits, "rank": rank, "feature_dim": grid.feature_dim,
        "max_level": octree.max_level, "num_lods": grid.num_lods, "levels": list(grid.levels),
        "seed": int(getattr(grid, "seed", 0)),
        "decoder": {"inputs": first.in_features, "hidden": first.out_features, "outputs": 4,
                    "num_freqs": decoder.num_freqs, "density": decoder.density, "color": "sigmoid", "weights": mlp},
        "normalization": {"center": [float(x) for x in octree.center.tolist()], "scale": float(octree.scale)},
        "counts": {"cells": [octree.num_cells(l) for l in range(octree.max_level + 1)],
                   "vertices": [octree.num_vertices(l) for l in grid.levels]},
    }


def field_chunks(field: RadianceField, kind: str | None = None, per_level=None, mlp: str = "fp16") -> list[Chunk]:
    """The chunks of ``field`` in stream order. ``per_level(k, level) -> list[Chunk]`` overrides the
    feature chunks of each level (post-hoc methods); by default they follow the grid's kind. ``mlp``:
    the decoder's weights as fp16 or int8."""
    grid, octree = field.grid, field.octree
    kind = kind or grid.kind
    chunks = []
    masks = octree.child_masks()

    def structure(level: int) -> Chunk:
        return Chunk("structure", level, masks[level - 1].cpu().numpy().tobytes(), BYTE_CODECS)

    first = grid.levels[0]
    chunks.extend(structure(level) for level in range(1, first + 1))
    starts = grid.flat.vertex_start.tolist()
    for k, level in enumerate(grid.levels):
        if level > first:
            chunks.append(structure(level))
        if per_level is not None:
            chunks.extend(per_level(k, level))
            continue
        rows = slice(int(starts[k]), int(starts[k + 1]))
        codes = 1 << grid.bits if grid.kind != "raw" else 0
        if kind == "raw":
            chunks.append(Chunk("features", level, _fp16(grid.features[rows]), FP16_CODECS))
        elif kind in ("vq", "hash"):
            chunks.append(Chunk("codebook", level, _fp16(grid.codebooks[k * codes:(k + 1) * codes]), FP16_CODECS))
            if kind == "vq":
                idx = grid.hard_indices()[rows].cpu().numpy()
                chunks.append(Chunk("indices", level, bitpack.pack(idx, grid.bits), INDEX_CODECS,
                                    symbols=(grid.bits, idx.size)))
            else:
                chunks.append(Chunk("hash", level, np.array([grid.seed, HASH_FUNCTION], "<u4").tobytes()))
        else:
            raise ValueError(f"no default chunks for kind {kind!r}")
    return decoder_chunks(chunks, field.decoder, mlp, grid.levels)


# ---- reading -------------------------------------------------------------------------------------------


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v, lo, hi) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def check_model(header: dict, name: str) -> None:
    """The header's model section is self-consistent and its chunks are the ones that model needs, each
    with the raw length its counts imply."""

    def bad(what):
        raise FormatError(f"{name}: header: {what}")

    m = header.get("model")
    if not isinstance(m, dict):
        bad("no model description")
    if not isinstance(m.get("kind"), str) or m["kind"] not in LEVEL_KINDS:
        bad(f"unknown model kind {m.get('kind')!r}")
    if not _int(m.get("max_level"), 1, 12) or not _int(m.get("num_lods"), 1, 13) or m["num_lods"] > m["max_level"] + 1:
        bad("max_level / num_lods out of range")
    levels = list(range(m["max_level"] - m["num_lods"] + 1, m["max_level"] + 1))
    if m.get("levels") != levels or not all(_int(l, 0, 12) for l in m["levels"]):
        bad("levels do not follow from max_level and num_lods")
    if not _int(m.get("feature_dim"), 1, 1024):
        bad("feature_dim out of range")
    if m["kind"] in ("vq", "hash") and not _int(m.get("bits"), 1, 16):
        bad("bits out of range")
    if m["kind"] == "lra" and not _int(m.get("rank"), 1, m["feature_dim"]):
        bad("rank out of range")
    if not _int(m.get("bits", 0), 0, 16) or not _int(m.get("rank", 0), 0, m["feature_dim"]):
        bad("bits / rank out of range")  # every kind's chunk sizes are computed from both
    if not _int(m.get("seed", 0), 0, (1 << 32) - 1):
        bad("seed out of range")
    d = m.get("decoder")
    if (not isinstance(d, dict) or not _int(d.get("hidden"), 1, 4096) or not _int(d.get("num_freqs"), 0, 16)
            or d.get("inputs") != m["feature_dim"] + 3 + 6 * d["num_freqs"] or d.get("outputs") != 4
            or d.get("weights", "fp16") not in MLP_WEIGHTS or d.get("density") not in DENSITIES
            or d.get("color") != "sigmoid"):
        bad("decoder shape malformed")
    norm = m.get("normalization")
    if (not isinstance(norm, dict) or not isinstance(norm.get("center"), list) or len(norm["center"]) != 3
            or not all(map(_number, norm["center"])) or not _number(norm.get("scale")) or not norm["scale"] > 0):
        bad("normalization malformed")
    counts = m.get("counts")
    cells = counts.get("cells") if isinstance(counts, dict) else None
    verts = counts.get("vertices") if isinstance(counts, dict) else None
    if (not isinstance(cells, list) or len(cells) != m["max_level"] + 1 or not all(_int(c, 0, 1 << 31) for c in cells)
            or not isinstance(verts, list) or len(verts) != m["num_lods"] or not all(_int(v, 0, 1 << 31) for v in verts)):
        bad("counts malformed")
    if cells[0] > 1 or any(cells[l] > 8 * cells[l - 1] for l in range(1, len(cells))):
        bad("cell counts cannot come from an octree")
    if any(v > 8 * cells[l] for v, l in zip(verts, levels)):
        bad("vertex counts cannot come from the cell counts")
    if m["kind"] == "vqrf":
        q = m.get("vqrf")
        lists = [q.get(key) if isinstance(q, dict) else None for key in ("codes", "quantised", "kept")]
        if not all(isinstance(v, list) and len(v) == m["num_lods"] for v in lists):
            bad("vqrf counts malformed")
        codes, quantised, kept = lists
        if (not all(_int(c, 1, 1 << 16) for c in codes) or not all(_int(v, 0, 1 << 31) for v in quantised + kept)
                or any(a + b > n for a, b, n in zip(quantised, kept, verts))):
            bad("vqrf counts malformed")
    bg = header.get("background")
    if not isinstance(bg, list) or len(bg) != 3 or not all(_number(x) and 0 <= x <= 1 for x in bg):
        bad("background malformed")
    check_cameras(header.get("cameras"), bad)
    # The known chunks, in order, are exactly those the model needs, with the raw lengths its counts imply.
    expected = expected_chunks(m)
    known = [e for e in header["chunks"] if e["kind"] in COMPONENT]
    if [(e["kind"], e["level"]) for e in known] != [(k, l) for k, l, _ in expected]:
        bad("the chunk index does not hold the chunks this model needs, in stream order")
    for e, (_, _, length) in zip(known, expected):
        if e["raw_length"] != length:
            bad(f"chunk {e['kind']} of level {e['level']} claims {e['raw_length']} bytes, its counts need {length}")
    ends, lods = _lod_ends(header, header["chunks"]), header.get("lods")
    if not (isinstance(lods, list) and len(lods) == len(ends)
            and all(a == b and all(type(a[k]) is int for k in b) for a, b in zip(lods, ends))):
        bad("the LOD table does not follow from the chunk index")


def check_cameras(cams, bad) -> None:
    if cams is None:
        return
    ok = (isinstance(cams, dict) and _int(cams.get("width"), 1, 1 << 16) and _int(cams.get("height"), 1, 1 << 16)
          and _matrix(cams.get("K"), 3, 3) and isinstance(cams.get("poses"), list) and len(cams["poses"]) <= 1024
          and all(_matrix(p, 4, 4) for p in cams["poses"]))
    if not ok:
        bad("cameras malformed")


def _matrix(v, rows, cols) -> bool:
    return (isinstance(v, list) and len(v) == rows
            and all(isinstance(r, list) and len(r) == cols and all(map(_number, r)) for r in v))


def expected_chunks(m: dict) -> list[tuple[str, int | None, int]]:
    """(kind, level, raw length) of every chunk the model needs, in stream order."""
    F, counts = m["feature_dim"], m["counts"]
    cells, verts = counts["cells"], counts["vertices"]
    out = [("mlp", None, mlp_bytes(m))]
    first = m["levels"][0]
    for level in range(1, first + 1):
        out.append(("structure", level, cells[level - 1]))
    for k, level in enumerate(m["levels"]):
        if level > first:
            out.append(("structure", level, cells[level - 1]))
        n = verts[k]
        sizes = {"features": n * F * 2, "codebook": (1 << m.get("bits", 0)) * F * 2 if m["kind"] != "raw" else 0,
                 "indices": bitpack.packed_size(n, m.get("bits", 0) or 1), "hash": 8,
                 "klt-basis": (F + m.get("rank", 0) * F) * 2, "klt-coeffs": n * m.get("rank", 0) * 2}
        if m["kind"] == "vqrf":
            q = m["vqrf"]
            sizes.update({"codebook": q["codes"][k] * F * 2, "vertex-classes": bitpack.packed_size(n, 2),
                          "indices": bitpack.packed_size(q["quantised"][k], index_bits(q["codes"][k])),
                          "kept-features": 4 * F + q["kept"][k] * F})
        out.extend((kind, level, sizes[kind]) for kind in LEVEL_KINDS[m["kind"]])
        if refine_bytes(m) and k == 0:
            out.append(("mlp-refine", m["levels"][min(1, len(m["levels"]) - 1)], refine_bytes(m)))
    return out


class ModelAssembler:
    """Receives verified raw payloads in stream order (from ``StreamDecoder``) and builds the field of the
    LODs received so far, on ``device`` (the structure is rebuilt there: on a GPU its vertex tables take
    milliseconds, on a CPU most of a large file's decoding time)."""

    def __init__(self, name: str, device=None):
        self.name = name
        self.device = torch.device(device or "cpu")
        self.header: dict | None = None
        self.model: dict | None = None
        self.decoder: Decoder | None = None
        self.mlp_steps: list[torch.Tensor] | None = None  # int8 weights' steps, for the refinement
        self.cells: list[torch.Tensor] = []
        self.vertices: list[torch.Tensor] = []
        self.cell_vertices: list[torch.Tensor] = []
        self.level_data: dict[int, dict[str, bytes]] = {}
        self.lods = 0  # complete LODs

    def start(self, header: dict) -> None:
        check_model(header, self.name)
        self.header, self.model = header, header["model"]
        m = self.model
        root = torch.zeros(m["counts"]["cells"][0], dtype=torch.int64, device=self.device)
        self._add_level(root)

    def symbols(self, i: int, entry: dict):
        m = self.model
        k = (entry["level"] - m["levels"][0]) if entry["kind"] in ("indices", "vertex-classes") else None
        if entry["kind"] == "vertex-classes":
            return 2, m["counts"]["vertices"][k]
        if entry["kind"] == "indices" and m["kind"] == "vqrf":
            return index_bits(m["vqrf"]["codes"][k]), m["vqrf"]["quantised"][k]
        if entry["kind"] == "indices":
            return m["bits"], m["counts"]["vertices"][k]
        return None

    def _add_level(self, codes: torch.Tensor) -> None:
        level = len(self.cells)
        if codes.numel() != self.model["counts"]["cells"][level]:
            raise FormatError(f"{self.name}: level {level} has {codes.numel()} occupied cells, the header says "
                              f"{self.model['counts']['cells'][level]}")
        verts, cell_verts = level_vertices(codes)
        levels = self.model["levels"]
        if level in levels and verts.numel() != self.model["counts"]["vertices"][levels.index(level)]:
            raise FormatError(f"{self.name}: level {level} has {verts.numel()} vertices, the header says "
                              f"{self.model['counts']['vertices'][levels.index(level)]}")
        self.cells.append(codes)
        self.vertices.append(verts)
        self.cell_vertices.append(cell_verts)

    def consume(self, i, entry, raw) -> None:
        if i is None:
            return
        kind, level, m = entry["kind"], entry["level"], self.model
        if kind == "mlp":
            decoder = self._new_decoder()
            self.mlp_steps = load_mlp(decoder, raw, m["decoder"].get("weights", "fp16"))
            self.decoder = decoder
        elif kind == "mlp-refine":
            refine_mlp(self.decoder, raw, self.mlp_steps)
        elif kind == "structure":
            mask = torch.from_numpy(np.frombuffer(raw, np.uint8).copy()).to(self.device)
            self._add_level(child_cells(self.cells[level - 1], mask, level - 1))
        else:
            self.level_data.setdefault(level, {})[kind] = raw
            if len(self.level_data[level]) == len(LEVEL_KINDS[m["kind"]]):
                self.lods += 1

    def field(self, lods: int | None = None, device=None) -> RadianceField:
        """The field of the first ``lods`` complete LODs (default: all received), on the assembler's device
        (or moved to ``device``)."""
        lods = self.lods if lods is None else lods
        if not 1 <= lods <= self.lods:
            raise FormatError(f"{self.name}: {self.lods} LODs are complete, {lods} asked for")
        m = self.model
        top = m["levels"][lods - 1]
        norm = m["normalization"]
        octree = SparseOctree(max_level=top, center=_as_center(norm["center"]), scale=float(norm["scale"]),
                              cells=self.cells[:top + 1], vertices=self.vertices[:top + 1],
                              cell_vertices=self.cell_vertices[:top + 1])
        kind = {"lra": "raw", "vqrf": "raw"}.get(m["kind"], m["kind"])
        F, bits = m["feature_dim"], m.get("bits", 0)
        grid = FeatureOctree(octree, num_lods=lods, feature_dim=F, kind=kind, bits=bits if kind != "raw" else 0,
                             seed=m.get("seed", 0), learned=False)
        codes = 1 << bits
        with torch.no_grad():
            starts = grid.flat.vertex_start.tolist()
            for k, level in enumerate(grid.levels):
                data, n = self.level_data[level], starts[k + 1] - starts[k]
                rows = slice(starts[k], starts[k + 1])
                if m["kind"] == "raw":
                    grid.features[rows] = _from_fp16(data["features"], (n, F))
                elif m["kind"] == "vqrf":
                    grid.features[rows] = self._vqrf_level(k, level, data, n).to(self.device)
                elif m["kind"] == "lra":
                    r = m["rank"]
                    basis = _from_fp16(data["klt-basis"], (1 + r, F))
                    grid.features[rows] = _from_fp16(data["klt-coeffs"], (n, r)) @ basis[1:] + basis[0]
                else:
                    grid.codebooks[k * codes:(k + 1) * codes] = _from_fp16(data["codebook"], (codes, F))
                    if m["kind"] == "vq":
                        idx = torch.from_numpy(bitpack.unpack(data["indices"], bits, n)).to(self.device)
                        grid.indices[rows] = (idx + k * codes).to(torch.int32)
                    else:
                        seed, function = np.frombuffer(data["hash"], "<u4").tolist()
                        if function != HASH_FUNCTION:
                            raise FormatError(f"{self.name}: level {level}: unknown hash function {function}")
                        idx = spatial_hash(octree.vertices[level], level, bits, seed)
                        grid.indices[rows] = (idx + k * codes).to(torch.int32)
        field = RadianceField(grid, self._decoder_copy().to(self.device)).eval()
        return field if device is None or torch.device(device) == self.device else to_device(field, device)

    def _vqrf_level(self, k: int, level: int, data: dict, n: int) -> torch.Tensor:
        """One level's (n, F) features: 0 where pruned, the codebook's where quantised, the 8-bit ones
        where kept; the classes must agree with the header's counts."""
        m, F = self.model, self.model["feature_dim"]
        q = m["vqrf"]
        codes, quantised, kept = q["codes"][k], q["quantised"][k], q["kept"][k]
        classes = torch.from_numpy(bitpack.unpack(data["vertex-classes"], 2, n).astype(np.int64))
        found = torch.bincount(classes, minlength=4).tolist()
        if found[QUANTISED] != quantised or found[KEPT] != kept or found[3]:
            raise FormatError(f"{self.name}: level {level}: the vertex classes ({found[QUANTISED]} quantised, "
                              f"{found[KEPT]} kept, {found[3]} unknown) disagree with the header "
                              f"({quantised} quantised, {kept} kept)")
        idx = torch.from_numpy(bitpack.unpack(data["indices"], index_bits(codes), quantised).astype(np.int64))
        if quantised and int(idx.max()) >= codes:
            raise FormatError(f"{self.name}: level {level}: an index reaches beyond the {codes} codes")
        codebook = _from_fp16(data["codebook"], (codes, F))
        raw = data["kept-features"]
        scale, offset = _from_fp16(raw[:2 * F], (F,)), _from_fp16(raw[2 * F:4 * F], (F,))
        kept_q = torch.from_numpy(np.frombuffer(raw[4 * F:], np.uint8).copy().reshape(kept, F))
        features = torch.zeros(n, F)
        features[classes == QUANTISED] = codebook[idx]
        features[classes == KEPT] = dequantize_uint8(kept_q, scale, offset)
        if not bool(torch.isfinite(features).all()):
            raise FormatError(f"{self.name}: level {level}: non-finite features")
        return features

    def _new_decoder(self) -> Decoder:
        d = self.model["decoder"]
        return Decoder(self.model["feature_dim"], hidden=d["hidden"], num_freqs=d["num_freqs"], density=d["density"])

    def _decoder_copy(self) -> Decoder:
        copy = self._new_decoder()
        copy.load_state_dict(self.decoder.state_dict())
        return copy


def to_device(field: RadianceField, device) -> RadianceField:
    """The field with its octree and parameters on ``device`` (the grid's flat tables are rebuilt there)."""
    device = torch.device(device)
    if device.type == "cpu":
        return field.eval()
    grid = field.grid
    octree = grid.octree.to(device)
    moved = FeatureOctree(octree, num_lods=grid.num_lods, feature_dim=grid.feature_dim, kind=grid.kind,
                          bits=grid.bits, seed=grid.seed, learned=False)
    moved.load_state_dict(grid.state_dict())
    return RadianceField(moved, field.decoder.to(device)).eval()
