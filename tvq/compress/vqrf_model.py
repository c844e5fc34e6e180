"""VQRF on the octree: a trained uncompressed field -> importance -> prune / keep / quantise -> fine-tune ->
a progressive .tvq (``tvq compress --method vqrf``). The building blocks are in ``tvq.compress.vqrf``.

1. Importance of every vertex of every feature level over all training rays (eq. 3-4).
2. Per level, the vertices below theta_p = F^-1(beta_p) are pruned (their features become 0) and those at
   or above theta_k = F^-1(beta_k) are kept (eq. 5, 6, 10); a finest-level cell whose 8 corners are all
   pruned leaves the octree (and with it every coarser cell left without descendants), so the structure
   and every level's vertex table shrink.
   beta_p and beta_k may differ per level (a list, coarsest first): a coarse level's kept features are
   paid for by every LOD, the first one included.
3. Per level, an importance-weighted codebook of the remaining vertices (eq. 8-9 with code expiry). A
   level gets min(K, the largest power of two <= its quantised vertices / 32) codes: a coarse level of a
   few thousand vertices does not pay for 4096 codes, and the first LOD stays small.
4. Joint fine-tuning with the assignments fixed (``QuantizedGrid``): the codebooks, the kept features and
   the decoder are trained with the training loss, the learning rate decaying to 0.1x.
5. The kept features are quantised to 8 bits per channel and level; each level's chunks hold its
   codebook (fp16), the vertex classes (2 bits each), the indices of the quantised vertices and the kept
   features, so a prefix of the file still renders the coarser LODs.

tvq's features feed both density and colour (one decoder), so every channel is quantised, unlike VQRF's
grid, whose separate density grid stays unquantised.

The hybrid (``tvq compress --method hybrid``) starts from a trained VQ-AD model instead: its learned b-bit
indices and codebooks take the place of step 3 (no k-means: the indices were trained end to end), and
VQRF's importance pruning, keep set (the most important vertices leave their code for their own 8-bit
features, starting from the code's value), fine-tuning and 8-bit storage are applied around them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..codec import Chunk
from ..codec.model import (FP16_CODECS, INDEX_CODECS, KEPT, PRUNED, QUANTISED, _fp16, dequantize_uint8, field_chunks,
                           index_bits)
from ..codec import bitpack
from ..errors import TvqError
from ..field import FeatureOctree, RadianceField
from ..octree import SparseOctree
from ..prune import vertex_rows
from .vqrf import QuantizedGrid, importance_codebook, quantize_uint8, surviving_cells, vertex_classes, vertex_importance


@dataclass
class VqrfOptions:
    prune: float | tuple = 0.001  # beta_p: the pruned vertices of a level hold at most this share of its importance
    keep: float | tuple = 0.6  # beta_k: the vertices above F^-1(keep) stay unquantised (1: none)
    codebook: int = 4096  # codes per level at most
    kmeans_steps: int = 1000
    finetune_steps: int = 2000
    importance_rays: int | None = None  # None: every training pixel
    seed: int = 0

    def per_level(self, num_lods: int) -> list[tuple[float, float]]:
        """(beta_p, beta_k) of every feature level, coarsest first."""
        def expand(value, name):
            values = list(value) if isinstance(value, (list, tuple)) else [value] * num_lods
            if len(values) != num_lods:
                raise TvqError(f"--{name} takes one value or one per LOD ({num_lods}), got {len(values)}")
            return [float(v) for v in values]
        return list(zip(expand(self.prune, "prune"), expand(self.keep, "keep")))

    def validate(self, num_lods: int) -> None:
        for p, k in self.per_level(num_lods):
            if not 0 <= p <= k <= 1:
                raise TvqError(f"need 0 <= --prune <= --keep <= 1 at every level, got --prune {p} --keep {k}")
        if not 2 <= self.codebook <= 1 << 16:
            raise TvqError(f"--codebook must be in 2..65536, got {self.codebook}")
        if self.finetune_steps < 0 or self.kmeans_steps < 1:
            raise TvqError("--finetune-steps must be >= 0 and the k-means steps >= 1")


def level_codes(quantised: int, limit: int) -> int:
    """Codes of a level with ``quantised`` vector-quantised vertices: a power of two, <= limit, <= n / 32."""
    return int(min(limit, max(2, 1 << max(1, int(math.floor(math.log2(max(quantised // 32, 2))))))))


def _level_slices(grid) -> list[slice]:
    starts = grid.flat.vertex_start.tolist()
    return [slice(int(starts[k]), int(starts[k + 1])) for k in range(grid.num_lods)]


@torch.no_grad()
def hard_field(field: RadianceField) -> tuple[RadianceField, torch.Tensor]:
    """A VQ field as a raw one with the same features (each vertex's code vector), and every vertex's code
    as a row of the concatenated per-level codebooks."""
    grid = field.grid
    codes = 1 << grid.bits
    level = torch.repeat_interleave(torch.arange(grid.num_lods, device=grid.codebooks.device),
                                    torch.tensor(grid.flat.vertex_counts(), device=grid.codebooks.device))
    index = grid.hard_indices().long() + level * codes
    raw = FeatureOctree(grid.octree, num_lods=grid.num_lods, feature_dim=grid.feature_dim, kind="raw")
    raw.features.data.copy_(grid.codebooks.detach()[index])
    return RadianceField(raw, field.decoder), index


@torch.no_grad()
def prune_octree(field: RadianceField, importance: torch.Tensor, options: VqrfOptions):
    """The field on the octree without the finest cells whose corners are all pruned, the importance of
    its vertices, the per-vertex classes (PRUNED / QUANTISED / KEPT) of every level, and each new vertex's
    row in the old tables."""
    grid = field.grid
    classes = torch.full_like(importance, QUANTISED, dtype=torch.int64)
    for rows, (beta_p, beta_k) in zip(_level_slices(grid), options.per_level(grid.num_lods)):
        pruned, kept = vertex_classes(importance[rows], beta_p, beta_k)
        classes[rows][pruned] = PRUNED
        classes[rows][kept] = KEPT
    octree = field.octree
    top = octree.max_level
    finest = _level_slices(grid)[-1]
    alive = surviving_cells(octree.cell_vertices[top], classes[finest] == PRUNED)
    if not bool(alive.any()):
        raise TvqError("every finest-level cell would be pruned: lower --prune")
    pruned_octree = SparseOctree.from_leaf_codes(top, octree.cells[top][alive], center=octree.center,
                                                 scale=octree.scale)
    rows = vertex_rows(grid, pruned_octree)
    new_grid = FeatureOctree(pruned_octree, num_lods=grid.num_lods, feature_dim=grid.feature_dim, kind="raw")
    new_grid.features.data.copy_(grid.features.data[rows])
    # the decoder is fine-tuned later: a copy, so that the field compressed keeps its own
    return RadianceField(new_grid, copy.deepcopy(field.decoder)), importance[rows], classes[rows], rows


@torch.no_grad()
def build_codebooks(field: RadianceField, importance: torch.Tensor, classes: torch.Tensor, options: VqrfOptions,
                    log=print, learned=None) -> QuantizedGrid:
    """Per level, the importance-weighted codebook of its quantised vertices, or with ``learned`` =
    (codebooks (L * 2^b, F), each vertex's row in them) a VQ-AD model's own; the fixed-assignment grid."""
    grid = field.grid
    books, assigns, offset = [], [], 0
    for k, rows in enumerate(_level_slices(grid)):
        quantised = torch.nonzero(classes[rows] == QUANTISED).flatten() + rows.start
        if learned is not None:
            codes = learned[0].shape[0] // grid.num_lods
            book, assign = learned[0][k * codes:(k + 1) * codes].detach().float(), learned[1][quantised] - k * codes
        else:
            codes = level_codes(quantised.numel(), options.codebook)
            book, assign = (importance_codebook(grid.features[quantised], importance[quantised], codes,
                                                steps=options.kmeans_steps, seed=options.seed + k)
                            if quantised.numel() else
                            (torch.zeros(codes, grid.feature_dim, device=importance.device), quantised))
        log(f"level {grid.levels[k]}: {codes} codes for {quantised.numel():,} vertices"
            + (" (learned)" if learned is not None else ""))
        books.append(book)
        assigns.append(assign + offset)
        offset += codes
    kept_rows = torch.nonzero(classes == KEPT).flatten()
    return QuantizedGrid(grid, torch.cat(books), torch.cat(assigns), kept_rows, grid.features[kept_rows],
                         vq_rows=torch.nonzero(classes == QUANTISED).flatten(),
                         level_codes=[b.shape[0] for b in books])


def finetune(trainer, quantized: QuantizedGrid, decoder, steps: int, progress=None) -> list[float]:
    """Train the codebooks, kept features and decoder with the assignments fixed: ``trainer``'s step (its
    loss, rays and LOD sampling) on the quantised field; returns the loss every 100 steps."""
    c = trainer.config = dataclasses.replace(trainer.config, iters=max(steps, 1), minutes=None, lr_decay=0.1)
    trainer.field = RadianceField(quantized, decoder)
    groups = [{"params": quantized.grid_parameters(), "lr": c.lr * c.grid_lr_scale},
              {"params": list(decoder.parameters()), "lr": c.lr}]
    trainer.optimizer = torch.optim.Adam(groups, betas=(0.9, c.adam_beta2), eps=1e-15,
                                         fused=trainer.device.type == "cuda")
    trainer.step, losses = 0, []
    for _ in range(steps):
        out = trainer.train_step()
        trainer.step += 1
        if trainer.step % 100 == 0 or trainer.step == steps:
            losses.append(float(out["loss"]))
        if progress is not None:
            progress(trainer.step, steps)
    return losses


@torch.no_grad()
def materialise(quantized: QuantizedGrid, decoder, classes: torch.Tensor):
    """The decoded field (a raw grid: 0, codebook rows and 8-bit kept features) and what the file stores."""
    grid_q = quantized
    table = grid_q.table().detach()  # pruned rows 0; the others are replaced below by what the file stores
    grid = FeatureOctree(grid_q.octree, num_lods=grid_q.num_lods, feature_dim=grid_q.feature_dim, kind="raw")
    grid.features.data.copy_(table)
    levels = []
    books = torch.split(grid_q.codebook.detach(), grid_q.level_codes)
    starts = np.cumsum([0] + grid_q.level_codes)
    for k, rows in enumerate(_level_slices(grid)):
        level_classes = classes[rows]
        kept = torch.nonzero(level_classes == KEPT).flatten() + rows.start
        q, scale, offset = quantize_uint8(table[kept])
        grid.features.data[kept] = dequantize_uint8(q, scale, offset)
        in_level = (grid_q.vq_rows >= rows.start) & (grid_q.vq_rows < rows.stop)
        book = books[k].half().float()  # as stored
        vq = grid_q.vq_rows[in_level]
        index = grid_q.assign[in_level] - int(starts[k])
        grid.features.data[vq] = book[index]
        levels.append({"classes": level_classes, "codebook": book, "index": index, "kept": q, "scale": scale,
                       "offset": offset})
    return RadianceField(grid, decoder).eval(), levels


def chunk_options(field: RadianceField, levels: list[dict]) -> dict:
    """``tvq.codec.encode`` options that store ``field`` (the materialised grid) as VQRF's per-level chunks."""

    def per_level(k: int, level: int) -> list[Chunk]:
        d = levels[k]
        codes = d["codebook"].shape[0]
        classes = d["classes"].cpu().numpy()
        index = d["index"].cpu().numpy()
        kept = (_fp16(d["scale"]) + _fp16(d["offset"]) + d["kept"].cpu().numpy().astype(np.uint8).tobytes())
        return [Chunk("codebook", level, _fp16(d["codebook"]), FP16_CODECS),
                Chunk("vertex-classes", level, bitpack.pack(classes, 2), INDEX_CODECS, symbols=(2, classes.size)),
                Chunk("indices", level, bitpack.pack(index, index_bits(codes)), INDEX_CODECS,
                      symbols=(index_bits(codes), index.size)),
                Chunk("kept-features", level, kept, INDEX_CODECS)]

    counts = {"codes": [int(d["codebook"].shape[0]) for d in levels],
              "quantised": [int((d["classes"] == QUANTISED).sum()) for d in levels],
              "kept": [int((d["classes"] == KEPT).sum()) for d in levels]}
    return {"kind": "vqrf", "chunks": field_chunks(field, per_level=per_level), "model_extra": {"vqrf": counts}}


def level_summary(grid, classes: torch.Tensor) -> list[dict]:
    out = []
    for k, rows in enumerate(_level_slices(grid)):
        c = classes[rows]
        out.append({"level": grid.levels[k], "vertices": int(c.numel()), "pruned": int((c == PRUNED).sum()),
                    "quantised": int((c == QUANTISED).sum()), "kept": int((c == KEPT).sum())})
    return out


def compress(trainer, field: RadianceField, options: VqrfOptions, log=print, progress=None) -> tuple:
    """The whole pipeline on ``trainer``'s training rays: (decoded field, encode options, report). A raw
    field gets VQRF, a VQ-AD field (learned indices) the hybrid."""
    options.validate(field.grid.num_lods)
    learned = None
    if field.grid.kind == "vq":
        codebooks = field.grid.codebooks
        field, index = hard_field(field)
        learned = (codebooks, index)
    elif field.grid.kind != "raw":
        raise TvqError(f"vqrf compresses raw features and the hybrid learned VQ indices, not {field.grid.kind}")
    timings, t0 = {}, time.perf_counter()
    data = trainer.data
    n = data.num_pixels if options.importance_rays is None else min(options.importance_rays, data.num_pixels)
    gen = torch.Generator(device=data.images.device).manual_seed(options.seed)
    flat = torch.randperm(data.num_pixels, generator=gen, device=data.images.device)[:n]
    origins, dirs, _ = data.rays_at(flat)
    chunk = 1 << 14 if origins.is_cuda else 1 << 13  # rays per pass: a training batch's worth on a GPU
    importance = vertex_importance(field, origins, dirs, data.background,
                                   samples_per_cell=trainer.config.samples_per_cell, chunk=chunk)
    if not bool(importance.sum() > 0):
        raise TvqError("the model renders nothing on its training rays (every vertex has zero importance)")
    before = level_summary(field.grid, torch.full_like(importance, QUANTISED, dtype=torch.int64))
    timings["importance"] = time.perf_counter() - t0
    log(f"importance of {importance.numel():,} vertices over {n:,} rays in {timings['importance']:.1f} s")
    t = time.perf_counter()
    field, importance, classes, rows = prune_octree(field, importance, options)
    if learned is not None:
        learned = (learned[0], learned[1][rows])
    quantized = build_codebooks(field, importance, classes, options, log=log, learned=learned)
    timings["prune_and_codebooks"] = time.perf_counter() - t
    t = time.perf_counter()
    losses = finetune(trainer, quantized, field.decoder, options.finetune_steps, progress)
    timings["finetune"] = time.perf_counter() - t
    decoded, levels = materialise(quantized, field.decoder, classes)
    if not all(map(math.isfinite, losses)) or any(not bool(torch.isfinite(p).all()) for p in decoded.parameters()) \
            or any(not bool(torch.isfinite(d["codebook"]).all()) for d in levels):
        raise TvqError("fine-tuning diverged (non-finite loss or parameters): nothing written; try fewer "
                       "--finetune-steps")
    timings["total"] = time.perf_counter() - t0
    report = {"levels_before": before, "levels": level_summary(decoded.grid, classes), "finetune_losses": losses,
              "seconds": timings}
    return decoded, chunk_options(decoded, levels), report
