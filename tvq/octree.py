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

Construction (on ``tvq.runtime.device()``, a few kernel launches and torch sorts per level, no Python loop
over points or cells):

- ``from_points``: a point cloud (depth scans), optionally dilated by whole cells
  (``tvq.kernels.octree_build``);
- ``from_masks``: the visual hull of foreground masks, carved coarse to fine (``tvq.kernels.carve``);
  ``camera_bbox`` gives the region object-centric cameras look at;
- ``from_leaf_codes``: any set of finest-level cells;
- ``from_child_masks``: the breadth-first structure ``child_masks()`` writes, one byte per occupied cell
  of every level but the last, bit c set when child c (child code & 7) is occupied. This is what the
  container stores; vertices and tables are rebuilt from it.

``flat(levels)`` packs a run of levels into the few contiguous tensors the kernels take.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import runtime
from .errors import TvqError

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
        return cls._from_sorted_leaves(max_level, torch.unique(leaf_codes.long()), center, scale)

    @classmethod
    def _from_sorted_leaves(cls, max_level: int, leaves: torch.Tensor, center, scale: float) -> "SparseOctree":
        cells = [leaves]
        for _ in range(max_level):
            # Sorted children give sorted, run-length grouped parents.
            cells.append(torch.unique_consecutive(cells[-1] >> 3))
        octree = cls(max_level=max_level, center=_as_center(center), scale=float(scale), cells=cells[::-1])
        octree.build_vertices()
        return octree

    @classmethod
    def from_points(
        cls,
        points: torch.Tensor,
        max_level: int,
        dilate: int = 0,
        center=None,
        scale: float | None = None,
        margin: float = 0.01,
    ) -> "SparseOctree":
        """Octree of the cells that hold at least one of ``points`` (N, 3), plus all their ancestors.

        Normalisation: unless given, ``center`` is the centre of the points' bounding box and ``scale``
        maps the largest half-extent (grown by the fraction ``margin``) to 1. Points outside the closed
        cube [-1, 1]^3 (only possible with a given center/scale) and non-finite points are ignored; a point
        on the upper face belongs to the last cell. ``dilate`` adds every finest-level cell within that
        many cells (the (2d+1)^3 box) of an occupied one. The work runs on ``tvq.runtime.device()`` and the
        octree lives there.
        """
        from .kernels import octree_build

        device = runtime.device()
        if not 0 <= max_level <= 20:
            raise TvqError(f"max_level must be in 0..20, got {max_level}")
        points = torch.as_tensor(points).detach()
        if points.dtype not in (torch.float32, torch.float64):
            points = points.float()
        if points.ndim != 2 or points.shape[1] != 3:
            raise TvqError(f"points must be (N, 3), got {tuple(points.shape)}")
        points = points.to(device).contiguous()
        finite = torch.isfinite(points).all(dim=1)
        if not bool(finite.all()):
            points = points[finite].contiguous()
        center, scale = _normalization(points, center, scale, margin)
        res = 1 << max_level
        leaves = torch.empty(points.shape[0], dtype=torch.int64, device=device)
        if points.shape[0] > 0:
            half = res / 2
            octree_build.point_codes_kernel(points.dtype)(
                points, leaves, float(center[0]), float(center[1]), float(center[2]), scale * half, half, res
            )
        leaves = _drop_negative(torch.unique(leaves))
        if dilate > 0:
            for axis in range(3):
                moved = torch.empty((leaves.numel(), 2 * dilate + 1), dtype=torch.int64, device=device)
                if leaves.numel() > 0:
                    octree_build.dilate_axis(leaves, moved, axis, dilate, res)
                leaves = _drop_negative(torch.unique(moved))
        return cls._from_sorted_leaves(max_level, leaves, center, scale)

    @classmethod
    def from_child_masks(cls, max_level: int, masks, center=None, scale: float = 1.0) -> "SparseOctree":
        """Rebuild the octree from its breadth-first child masks (see ``child_masks``).

        ``masks[l]`` holds one byte per occupied cell of level l (sorted Morton order). Level 0 is the root
        when ``masks[0]`` has one byte and empty when it has none; with ``max_level == 0`` the root is
        occupied.
        """
        if len(masks) != max_level:
            raise TvqError(f"expected {max_level} levels of child masks, got {len(masks)}")
        device = masks[0].device if max_level > 0 else torch.device("cpu")
        codes = torch.zeros(1 if max_level == 0 or masks[0].numel() > 0 else 0, dtype=torch.int64, device=device)
        cells = [codes]
        for level, mask in enumerate(masks):
            codes = child_cells(codes, torch.as_tensor(mask).to(device), level)
            cells.append(codes)
        octree = cls(max_level=max_level, center=_as_center(center), scale=float(scale), cells=cells)
        octree.build_vertices()
        return octree

    @classmethod
    def from_masks(
        cls,
        Ks,
        c2ws,
        alphas,
        max_level: int,
        bbox=None,
        threshold: float = 0.5,
        pad: float = 1.0,
        tighten: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> "SparseOctree":
        """Visual hull: the cells that survive carving by the views' foreground masks.

        ``Ks`` (V, 3, 3) intrinsics in pixels, ``c2ws`` (V, 4, 4) camera-to-world (OpenGL camera), ``alphas``
        (V, H, W) in [0, 1] (uint8 is read as /255); foreground is alpha > ``threshold``. Carving runs
        coarse to fine from the root: at each level every candidate cell is tested against every view
        (``tvq.kernels.carve``: a view that fully sees the cell and finds no foreground in its projected
        bounding rectangle, grown by ``pad`` pixels, removes it) and the survivors' children are the next
        level's candidates. ``bbox`` ((2, 3) world min/max corners) maps to the cube (its centre to the
        origin, its largest extent to [-1, 1]) and cells outside it are dropped. Without it the box comes
        from the cameras (``camera_bbox``) and, with ``tighten``, shrinks to the bounding box of a coarse
        carving (level 5) before the final one. ``dtype`` is the precision of the projections.
        """
        from .kernels import carve

        device = runtime.device()
        Ks = torch.as_tensor(Ks, dtype=torch.float64).cpu().reshape(-1, 3, 3)
        c2ws = torch.as_tensor(c2ws, dtype=torch.float64).cpu().reshape(-1, 4, 4)
        alphas = torch.as_tensor(alphas)
        if alphas.dtype == torch.uint8:
            alphas = alphas.float() / 255.0
        if alphas.ndim != 3 or not (Ks.shape[0] == c2ws.shape[0] == alphas.shape[0]):
            raise TvqError(
                f"from_masks needs Ks (V,3,3), c2ws (V,4,4), alphas (V,H,W); got {tuple(Ks.shape)}, "
                f"{tuple(c2ws.shape)}, {tuple(alphas.shape)}"
            )
        if not 0 <= max_level <= 20:
            raise TvqError(f"max_level must be in 0..20, got {max_level}")
        _, height, width = alphas.shape
        sat = _summed_area(alphas.to(device) > threshold)
        kernel = carve.carve_kernel(dtype)

        def carve_in(lo: torch.Tensor, hi: torch.Tensor, level: int):
            center = (lo + hi) / 2
            scale = 2.0 / float((hi - lo).max())
            proj = _projections(Ks, c2ws, center, scale).to(device=device, dtype=dtype).contiguous()
            box = torch.stack([(lo - center) * scale, (hi - center) * scale]).to(device=device, dtype=dtype)
            codes = torch.zeros(1, dtype=torch.int64, device=device)  # cells still to be tested
            settled = torch.zeros(0, dtype=torch.int64, device=device)  # cells whose subtree survives
            bits = torch.arange(8, dtype=torch.int64, device=device)
            for l in range(level + 1):
                if l > 0:
                    codes = ((codes[:, None] << 3) | bits).reshape(-1)
                    settled = ((settled[:, None] << 3) | bits).reshape(-1)
                keep = torch.empty(codes.numel(), dtype=torch.int8, device=device)
                if codes.numel() > 0:
                    kernel(codes, keep, proj, sat, box.contiguous(), 1 << l, pad, 1e-6)
                settled = torch.cat([settled, codes[keep == 2]])
                codes = codes[keep == 1]
            return torch.sort(torch.cat([codes, settled])).values, center, scale

        if bbox is None:
            lo, hi = camera_bbox(Ks, c2ws, width, height)
            if tighten and max_level > 0:
                coarse = min(5, max_level)
                codes, center, scale = carve_in(lo, hi, coarse)
                if codes.numel() > 0:
                    ijk = morton_decode(codes).cpu()
                    cell = 2.0 / (1 << coarse)
                    lo_t = (ijk.min(0).values * cell - 1.0) / scale + center
                    hi_t = ((ijk.max(0).values + 1) * cell - 1.0) / scale + center
                    lo, hi = torch.maximum(lo, lo_t), torch.minimum(hi, hi_t)
        else:
            bbox = torch.as_tensor(bbox, dtype=torch.float64).cpu().reshape(2, 3)
            lo, hi = bbox[0], bbox[1]
            if not bool((hi > lo).all()):
                raise TvqError(f"bbox must be [min corner, max corner] with max > min, got {bbox.tolist()}")
        leaves, center, scale = carve_in(lo, hi, max_level)
        return cls._from_sorted_leaves(max_level, leaves, center, scale)

    def build_vertices(self) -> None:
        """Fill ``vertices`` and ``cell_vertices`` from ``cells`` (a pure function of the cells)."""
        self.vertices, self.cell_vertices = map(list, zip(*(level_vertices(codes) for codes in self.cells)))

    def child_masks(self) -> list[torch.Tensor]:
        """Breadth-first structure: for each level l < max_level, one uint8 per occupied cell of level l
        (sorted Morton order) with bit c set when its child c (child code & 7) is occupied."""
        masks = []
        for level in range(self.max_level):
            parents, children = self.cells[level], self.cells[level + 1]
            row = torch.searchsorted(parents, children >> 3)
            bits = torch.ones_like(children, dtype=torch.int32) << (children & 7).to(torch.int32)
            # Each child sets a distinct bit of its parent, so the sum is the bitwise or.
            mask = torch.zeros(parents.numel(), dtype=torch.int32, device=parents.device).index_add_(0, row, bits)
            masks.append(mask.to(torch.uint8))
        return masks

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


# ---- helpers ---------------------------------------------------------------------------------------


def child_cells(parents: torch.Tensor, mask: torch.Tensor, level: int = 0) -> torch.Tensor:
    """Sorted codes of the children that ``mask`` (one byte per parent, bit c: child c) marks occupied."""
    if mask.numel() != parents.numel():
        raise TvqError(f"child masks of level {level} hold {mask.numel()} bytes for {parents.numel()} occupied cells")
    bits = torch.arange(8, dtype=torch.int64, device=parents.device)
    has_child = ((mask.to(torch.int64)[:, None] >> bits) & 1).bool()
    # Parents in sorted order, children in ascending index: the children come out sorted.
    return ((parents[:, None] << 3) | bits)[has_child]


def level_vertices(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One level's vertex table (sorted Morton codes of the occupied cells' corners) and the (n, 8) int32
    row of each cell's corners in it."""
    verts, inverse = torch.unique(_corner_codes(codes).reshape(-1), sorted=True, return_inverse=True)
    return verts, inverse.reshape(-1, 8).to(torch.int32)


def _as_center(center) -> torch.Tensor:
    if center is None:
        return torch.zeros(3, dtype=torch.float64)
    return torch.as_tensor(center, dtype=torch.float64).detach().cpu().clone().reshape(3)


def _drop_negative(sorted_codes: torch.Tensor) -> torch.Tensor:
    """Sorted codes without the leading -1 (the "outside" marker) if there is one."""
    if sorted_codes.numel() > 0 and bool(sorted_codes[0] < 0):
        return sorted_codes[1:]
    return sorted_codes


def _normalization(points: torch.Tensor, center, scale, margin: float) -> tuple[torch.Tensor, float]:
    """(center (3,) float64 CPU, scale): the given values, or the points' bounding box grown by margin."""
    if center is not None and scale is not None:
        return _as_center(center), float(scale)
    if points.shape[0] == 0:
        return _as_center(center), 1.0 if scale is None else float(scale)
    lo = points.min(dim=0).values.double().cpu()
    hi = points.max(dim=0).values.double().cpu()
    if center is None:
        center = (lo + hi) / 2
    center = _as_center(center)
    if scale is None:
        half = float(torch.maximum(hi - center, center - lo).max()) * (1.0 + margin)
        scale = 1.0 / half if half > 0 else 1.0
    return center, float(scale)


def _corner_codes(cells: torch.Tensor) -> torch.Tensor:
    """(n,) cell codes -> (n, 8) Morton codes of their corners (a kernel on the runtime's device)."""
    if cells.numel() > 0 and cells.device == runtime.device():
        from .kernels import octree_build

        corners = torch.empty((cells.numel(), 8), dtype=torch.int64, device=cells.device)
        octree_build.corner_codes(cells.contiguous(), corners)
        return corners
    return morton_encode(morton_decode(cells)[:, None, :] + CORNERS.to(cells.device)[None])


def _summed_area(fg: torch.Tensor) -> torch.Tensor:
    """(V, H, W) bool -> (V, H + 1, W + 1) int32 S with S[v, j, i] = foreground count above-left of (i, j)."""
    v, h, w = fg.shape
    sat = torch.zeros((v, h + 1, w + 1), dtype=torch.int32, device=fg.device)
    sat[:, 1:, 1:] = fg.to(torch.int32).cumsum(1, dtype=torch.int32).cumsum(2, dtype=torch.int32)
    return sat


def _projections(Ks: torch.Tensor, c2ws: torch.Tensor, center: torch.Tensor, scale: float) -> torch.Tensor:
    """(V, 3, 4) float64 maps from the normalised cube to homogeneous pixels (u', v', depth)."""
    rot, origin = c2ws[:, :3, :3], c2ws[:, :3, 3]
    w2c = torch.zeros((Ks.shape[0], 3, 4), dtype=torch.float64)
    w2c[:, :, :3] = rot.transpose(1, 2)
    w2c[:, :, 3] = -(rot.transpose(1, 2) @ origin[:, :, None])[..., 0]
    # OpenGL camera (y up, looking down -z) -> pixel rows down, positive depth.
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    cube_to_world = torch.zeros((4, 4), dtype=torch.float64)
    cube_to_world[:3, :3] = torch.eye(3, dtype=torch.float64) / scale
    cube_to_world[:3, 3] = center
    cube_to_world[3, 3] = 1.0
    return Ks @ flip @ w2c @ cube_to_world


def camera_bbox(Ks, c2ws, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The cube (min, max corners, float64) the cameras look at, for object-centric captures.

    Its centre is the least-squares point nearest all optical axes; its half-size is the median over views
    of the frustum's half-width at that point's depth (depth times the larger of the horizontal and
    vertical half-field-of-view tangents), which holds an object that fills the views.
    """
    Ks = torch.as_tensor(Ks, dtype=torch.float64).cpu().reshape(-1, 3, 3)
    c2ws = torch.as_tensor(c2ws, dtype=torch.float64).cpu().reshape(-1, 4, 4)
    origin = c2ws[:, :3, 3]
    axis = -c2ws[:, :3, 2]
    axis = axis / axis.norm(dim=1, keepdim=True)
    # sum_v (I - d d^T) (p - o_v) = 0: the point with the least squared distance to all axes.
    across = torch.eye(3, dtype=torch.float64) - axis[:, :, None] * axis[:, None, :]
    lhs, rhs = across.sum(0), (across @ origin[:, :, None]).sum(0)[:, 0]
    if float(torch.linalg.eigvalsh(lhs)[0]) < 1e-3 * Ks.shape[0]:
        raise TvqError("the cameras' optical axes (nearly) never cross, so they look at no one region: pass a bbox")
    point = torch.linalg.solve(lhs, rhs)
    depth = ((point - origin) * axis).sum(1)
    if float(depth.median()) <= 0:
        raise TvqError("the point nearest the cameras' optical axes lies behind them: pass a bbox")
    fx, fy, cx, cy = Ks[:, 0, 0], Ks[:, 1, 1], Ks[:, 0, 2], Ks[:, 1, 2]
    tan_x = torch.maximum(cx, width - cx) / fx
    tan_y = torch.maximum(cy, height - cy) / fy
    half = float((depth * torch.maximum(tan_x, tan_y)).median())
    return point - half, point + half
