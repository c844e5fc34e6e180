"""SparseOctree: the occupied cells and feature vertices of every level.

Level l has 2^l cells per axis over the normalised cube [-1, 1]^3; a world point x maps to
``x_n = (x - center) * scale``. For every level 0..max_level the octree keeps

- ``cells[l]``: sorted int64 Morton codes (``tvq.kernels.morton``) of the occupied cells; a cell is
  occupied when it holds a surface point (or survives carving), and every ancestor of an occupied cell
  is occupied;
- ``vertices[l]``: sorted int64 Morton codes of the corners of occupied cells (coordinates 0..2^l),
  deduplicated: the rows of that level's feature table. The order is a pure function of the cells, so a
  decoder rebuilds it from the structure alone;
- ``cell_vertices[l]``: (n_cells, 8) int32, the row in ``vertices[l]`` of each cell's corner
  c = dx | dy << 1 | dz << 2.

``flat(levels)`` packs a run of levels into the few contiguous tensors the kernels take.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

CORNERS = torch.tensor([[c & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], dtype=torch.int64)


def _spread_bits(v: torch.Tensor) -> torch.Tensor:
    x = v & 0x1FFFFF
    x = (x | (x << 32)) & 0x1F00000000FFFF
    x = (x | (x << 16)) & 0x1F0000FF0000FF
    x = (x | (x << 8)) & 0x100F00F00F00F00F
    x = (x | (x << 4)) & 0x10C30C30C30C30C3
    x = (x | (x << 2)) & 0x1249249249249249
    return x


def _compact_bits(x: torch.Tensor) -> torch.Tensor:
    x = x & 0x1249249249249249
    x = (x | (x >> 2)) & 0x10C30C30C30C30C3
    x = (x | (x >> 4)) & 0x100F00F00F00F00F
    x = (x | (x >> 8)) & 0x1F0000FF0000FF
    x = (x | (x >> 16)) & 0x1F00000000FFFF
    x = (x | (x >> 32)) & 0x1FFFFF
    return x


def morton_encode(ijk: torch.Tensor) -> torch.Tensor:
    """(..., 3) integer coordinates -> (...,) int64 Morton codes (x in the lowest bit)."""
    ijk = ijk.long()
    return _spread_bits(ijk[..., 0]) | (_spread_bits(ijk[..., 1]) << 1) | (_spread_bits(ijk[..., 2]) << 2)


def morton_decode(codes: torch.Tensor) -> torch.Tensor:
    """(...,) int64 Morton codes -> (..., 3) int64 coordinates."""
    return torch.stack([_compact_bits(codes), _compact_bits(codes >> 1), _compact_bits(codes >> 2)], dim=-1)


@dataclass
class FlatOctree:
    """A run of levels packed for the kernels (all tensors on one device).

    Level k of the run (``levels[k]``, coarsest first) owns rows ``cell_start[k]:cell_start[k+1]`` of
    ``cell_codes``/``cell_vertices`` and rows ``vertex_start[k]:vertex_start[k+1]`` of a feature table
    built for this run. ``cell_vertices`` holds global rows (already offset by ``vertex_start[k]``).
    """

    levels: tuple[int, ...]
    cell_codes: torch.Tensor  # (C,) int64, sorted within each level
    cell_start: torch.Tensor  # (n+1,) int64
    cell_vertices: torch.Tensor  # (C, 8) int32, global vertex rows
    vertex_start: torch.Tensor  # (n+1,) int64
    resolution: torch.Tensor  # (n,) int32, 2^level

    @property
    def num_vertices(self) -> int:
        return int(self.vertex_start[-1])

    def vertex_counts(self) -> list[int]:
        return (self.vertex_start[1:] - self.vertex_start[:-1]).tolist()


@dataclass
class SparseOctree:
    max_level: int
    center: torch.Tensor  # (3,) float64, world point that maps to the origin
    scale: float  # world units -> normalised units
    cells: list[torch.Tensor] = field(default_factory=list)
    vertices: list[torch.Tensor] = field(default_factory=list)
    cell_vertices: list[torch.Tensor] = field(default_factory=list)

    # ---- construction --------------------------------------------------------------------------

    @classmethod
    def from_leaf_codes(
        cls, max_level: int, leaf_codes: torch.Tensor, center=None, scale: float = 1.0
    ) -> "SparseOctree":
        """Octree whose finest level holds exactly ``leaf_codes`` (any order, duplicates allowed)."""
        device = leaf_codes.device
        center = torch.zeros(3, dtype=torch.float64) if center is None else torch.as_tensor(center, dtype=torch.float64)
        cells = [torch.empty(0, dtype=torch.int64, device=device)] * (max_level + 1)
        codes = torch.unique(leaf_codes.long())
        for level in range(max_level, -1, -1):
            cells[level] = codes
            codes = torch.unique(codes >> 3)
        octree = cls(max_level=max_level, center=center.cpu(), scale=float(scale), cells=list(cells))
        octree.build_vertices()
        return octree

    def build_vertices(self) -> None:
        """Fill ``vertices`` and ``cell_vertices`` from ``cells`` (a pure function of the cells)."""
        self.vertices, self.cell_vertices = [], []
        for codes in self.cells:
            ijk = morton_decode(codes)
            corners = ijk[:, None, :] + CORNERS.to(codes.device)[None]
            verts, inverse = torch.unique(morton_encode(corners).reshape(-1), sorted=True, return_inverse=True)
            self.vertices.append(verts)
            self.cell_vertices.append(inverse.reshape(-1, 8).to(torch.int32))

    # ---- queries ------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.cells[-1].device

    def num_cells(self, level: int) -> int:
        return int(self.cells[level].numel())

    def num_vertices(self, level: int) -> int:
        return int(self.vertices[level].numel())

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """World points -> the normalised cube."""
        return (x - self.center.to(x)) * self.scale

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.scale + self.center.to(x)

    def to(self, device) -> "SparseOctree":
        move = lambda ts: [t.to(device) for t in ts]  # noqa: E731
        return SparseOctree(self.max_level, self.center, self.scale, move(self.cells), move(self.vertices),
                            move(self.cell_vertices))

    def flat(self, levels) -> FlatOctree:
        """Pack ``levels`` (coarsest first) into the contiguous tensors the kernels take."""
        levels = tuple(int(l) for l in levels)
        device = self.device
        cell_counts = [self.num_cells(l) for l in levels]
        vertex_counts = [self.num_vertices(l) for l in levels]
        vstart = [0]
        for n in vertex_counts:
            vstart.append(vstart[-1] + n)
        cstart = [0]
        for n in cell_counts:
            cstart.append(cstart[-1] + n)
        cell_vertices = torch.cat([self.cell_vertices[l] + vstart[k] for k, l in enumerate(levels)])
        return FlatOctree(
            levels=levels,
            cell_codes=torch.cat([self.cells[l] for l in levels]).contiguous(),
            cell_start=torch.tensor(cstart, dtype=torch.int64, device=device),
            cell_vertices=cell_vertices.to(torch.int32).contiguous(),
            vertex_start=torch.tensor(vstart, dtype=torch.int64, device=device),
            resolution=torch.tensor([1 << l for l in levels], dtype=torch.int32, device=device),
        )
