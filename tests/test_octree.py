"""Octree construction from points, vertex tables and breadth-first child masks, against the twins."""

from __future__ import annotations

import pytest
import torch

from tvq import reference, runtime
from tvq.errors import TvqError
from tvq.octree import CORNERS, SparseOctree, morton_decode, morton_encode

pytestmark = pytest.mark.kernels


def surface_cloud(n: int, seed: int = 0, device="cpu") -> torch.Tensor:
    """Points on a sphere, a box's faces and a thin rod, with a little noise, off-centre (like a scan)."""
    g = torch.Generator().manual_seed(seed)
    k = n // 3
    sphere = torch.randn(k, 3, generator=g, dtype=torch.float64)
    sphere = 0.6 * sphere / sphere.norm(dim=1, keepdim=True) + torch.tensor([0.3, -0.2, 1.5], dtype=torch.float64)
    box = torch.rand(k, 3, generator=g, dtype=torch.float64) * 2 - 1
    face = torch.randint(0, 3, (k,), generator=g)
    box[torch.arange(k), face] = torch.sign(box[torch.arange(k), face])
    box = box * torch.tensor([0.8, 0.4, 0.3], dtype=torch.float64) + torch.tensor([-0.5, 0.4, 1.0], dtype=torch.float64)
    s = torch.rand(n - 2 * k, 1, generator=g, dtype=torch.float64)
    rod = torch.tensor([0.9, 0.9, 0.2], dtype=torch.float64) + s * torch.tensor([-1.2, 0.3, 2.0], dtype=torch.float64)
    pts = torch.cat([sphere, box, rod]) + 1e-3 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    return pts.float().to(device)


def assert_same_octree(octree: SparseOctree, cells, vertices, cell_vertices) -> None:
    assert len(octree.cells) == len(cells) == octree.max_level + 1
    for level in range(octree.max_level + 1):
        assert torch.equal(octree.cells[level].cpu(), cells[level]), f"cells differ at level {level}"
        assert torch.equal(octree.vertices[level].cpu(), vertices[level]), f"vertices differ at level {level}"
        assert torch.equal(octree.cell_vertices[level].cpu(), cell_vertices[level]), f"tables differ at level {level}"


def check_against_reference(points: torch.Tensor, max_level: int, dilate: int, **kw) -> SparseOctree:
    octree = SparseOctree.from_points(points, max_level, dilate=dilate, **kw)
    expected = reference.octree_from_points(points.cpu(), max_level, octree.center, octree.scale, dilate=dilate)
    assert_same_octree(octree, *expected)
    return octree


@pytest.mark.parametrize("max_level,dilate", [(0, 0), (1, 0), (3, 0), (3, 1), (5, 0), (5, 2), (7, 0), (7, 1)])
def test_from_points_matches_reference(max_level, dilate):
    points = surface_cloud(3000, seed=max_level + 10 * dilate)
    octree = check_against_reference(points, max_level, dilate)
    assert octree.num_cells(0) == 1
    for level in range(1, max_level + 1):  # every cell's parent is occupied
        parents = octree.cells[level] >> 3
        assert torch.isin(parents, octree.cells[level - 1]).all()


def test_float64_points_and_given_normalisation():
    points = surface_cloud(2000, seed=3).double()
    octree = check_against_reference(points, 6, 0, center=[0.1, 0.2, 1.0], scale=0.7)
    assert octree.scale == 0.7 and torch.equal(octree.center, torch.tensor([0.1, 0.2, 1.0], dtype=torch.float64))


def test_normalisation_from_bounding_box():
    points = surface_cloud(5000, seed=4)
    octree = SparseOctree.from_points(points, 4, margin=0.05)
    lo, hi = points.double().min(0).values, points.double().max(0).values
    assert torch.allclose(octree.center, (lo + hi) / 2)
    x = octree.normalize(points.double())
    assert x.abs().max() <= 1.0
    assert abs(float(x.abs().max()) - 1 / 1.05) < 1e-6  # the largest half-extent, grown by the margin


def test_points_on_faces_corners_and_outside():
    pts = torch.tensor(
        [
            [-1.0, -1.0, -1.0],  # lower corner -> cell (0, 0, 0)
            [1.0, 1.0, 1.0],  # upper corner -> last cell (3, 3, 3)
            [1.0, -1.0, 0.0],  # on two faces and a cell boundary
            [0.0, 0.0, 0.0],  # the centre: cell (2, 2, 2)
            [0.5, -0.5, 1.0],
            [1.0 + 1e-6, 0.0, 0.0],  # outside: ignored
            [0.0, -1.5, 0.0],  # outside: ignored
            [float("nan"), 0.0, 0.0],  # not finite: ignored
            [float("inf"), 0.0, 0.0],
        ]
    )
    octree = SparseOctree.from_points(pts, 2, center=[0.0, 0.0, 0.0], scale=1.0)
    expected = morton_encode(torch.tensor([[0, 0, 0], [3, 3, 3], [3, 0, 2], [2, 2, 2], [3, 1, 3]]))
    assert torch.equal(octree.cells[2].cpu(), torch.sort(expected).values)
    check_against_reference(pts, 2, 0, center=[0.0, 0.0, 0.0], scale=1.0)
    check_against_reference(pts, 5, 1, center=[0.0, 0.0, 0.0], scale=1.0)


def test_dilation_counts_and_clipping():
    centre = SparseOctree.from_points(torch.tensor([[0.01, 0.01, 0.01]]), 4, dilate=1, center=[0, 0, 0], scale=1.0)
    assert centre.num_cells(4) == 27
    corner = SparseOctree.from_points(torch.tensor([[-1.0, -1.0, -1.0]]), 4, dilate=1, center=[0, 0, 0], scale=1.0)
    assert corner.num_cells(4) == 8  # the box is clipped to the cube
    far = SparseOctree.from_points(torch.tensor([[-1.0, -1.0, -1.0]]), 4, dilate=3, center=[0, 0, 0], scale=1.0)
    assert torch.equal(morton_decode(far.cells[4].cpu()).max(0).values, torch.tensor([3, 3, 3]))


def test_empty_and_degenerate_inputs():
    empty = SparseOctree.from_points(torch.zeros(0, 3), 3)
    assert all(empty.num_cells(level) == 0 for level in range(4))
    assert all(v.shape == (0, 8) for v in empty.cell_vertices)
    single = SparseOctree.from_points(torch.tensor([[2.0, 3.0, 4.0]] * 5), 3)
    assert [single.num_cells(level) for level in range(4)] == [1, 1, 1, 1]
    with pytest.raises(TvqError):
        SparseOctree.from_points(torch.zeros(4, 2), 3)


def test_vertices_match_the_torch_formula():
    octree = SparseOctree.from_points(surface_cloud(4000, seed=5), 6)
    for level, codes in enumerate(octree.cells):
        ijk = morton_decode(codes.cpu())
        corners = morton_encode(ijk[:, None, :] + CORNERS[None])
        verts, inverse = torch.unique(corners.reshape(-1), sorted=True, return_inverse=True)
        assert torch.equal(octree.vertices[level].cpu(), verts)
        assert torch.equal(octree.cell_vertices[level].cpu(), inverse.reshape(-1, 8).to(torch.int32))
        # each table row is the vertex at that corner
        assert torch.equal(octree.vertices[level].cpu()[octree.cell_vertices[level].cpu().long()], corners)


def test_from_leaf_codes_is_consistent():
    octree = SparseOctree.from_points(surface_cloud(3000, seed=6), 6, dilate=1)
    leaves = octree.cells[6]
    shuffled = torch.cat([leaves, leaves[: leaves.numel() // 2]])[torch.randperm(leaves.numel() * 3 // 2)]
    rebuilt = SparseOctree.from_leaf_codes(6, shuffled, center=octree.center, scale=octree.scale)
    assert_same_octree(rebuilt, [c.cpu() for c in octree.cells], [v.cpu() for v in octree.vertices],
                       [t.cpu() for t in octree.cell_vertices])
    # the torch path (tensors on another device than the kernels') gives the same tables
    if runtime.device().type != "cpu":
        on_cpu = SparseOctree.from_leaf_codes(6, leaves.cpu(), center=octree.center, scale=octree.scale)
        assert_same_octree(on_cpu, [c.cpu() for c in octree.cells], [v.cpu() for v in octree.vertices],
                           [t.cpu() for t in octree.cell_vertices])


@pytest.mark.parametrize("max_level,dilate", [(1, 0), (4, 0), (6, 1), (8, 0)])
def test_child_mask_round_trip(max_level, dilate):
    octree = SparseOctree.from_points(surface_cloud(2000, seed=7), max_level, dilate=dilate)
    masks = octree.child_masks()
    assert len(masks) == max_level
    expected = reference.octree_child_masks([c.cpu() for c in octree.cells])
    for level, (mask, ref) in enumerate(zip(masks, expected)):
        assert mask.dtype == torch.uint8 and mask.numel() == octree.num_cells(level)
        assert torch.equal(mask.cpu(), ref)
    rebuilt = SparseOctree.from_child_masks(max_level, masks, octree.center, octree.scale)
    assert rebuilt.scale == octree.scale and torch.equal(rebuilt.center, octree.center)
    assert_same_octree(rebuilt, [c.cpu() for c in octree.cells], [v.cpu() for v in octree.vertices],
                       [t.cpu() for t in octree.cell_vertices])


def test_child_masks_edge_cases():
    root_only = SparseOctree.from_child_masks(0, [])
    assert root_only.num_cells(0) == 1 and root_only.num_vertices(0) == 8
    empty = SparseOctree.from_points(torch.zeros(0, 3), 3)
    masks = empty.child_masks()
    assert [m.numel() for m in masks] == [0, 0, 0]
    rebuilt = SparseOctree.from_child_masks(3, masks)
    assert all(rebuilt.num_cells(level) == 0 for level in range(4))
    all_children = [torch.tensor([255], dtype=torch.uint8), torch.full((8,), 255, dtype=torch.uint8)]
    full = SparseOctree.from_child_masks(2, all_children)
    assert full.num_cells(2) == 64 and full.num_vertices(2) == 125
    with pytest.raises(TvqError):
        SparseOctree.from_child_masks(2, [torch.tensor([3], dtype=torch.uint8), torch.tensor([1], dtype=torch.uint8)])
    with pytest.raises(TvqError):
        SparseOctree.from_child_masks(3, [torch.tensor([3], dtype=torch.uint8)])


def _needs_cuda_backend() -> None:
    if runtime.ensure().arch != "cuda":
        pytest.skip("Taichi runs on the CPU backend in this process (TVQ_ARCH)")


@pytest.mark.cuda
@pytest.mark.parametrize("max_level,dilate", [(5, 0), (8, 0), (7, 2)])
def test_from_points_cuda(max_level, dilate):
    _needs_cuda_backend()
    points = surface_cloud(20000, seed=11, device="cuda")
    octree = check_against_reference(points, max_level, dilate)
    assert octree.device.type == "cuda"
    masks = octree.child_masks()
    assert all(m.is_cuda for m in masks)
    rebuilt = SparseOctree.from_child_masks(max_level, masks, octree.center, octree.scale)
    assert_same_octree(rebuilt, [c.cpu() for c in octree.cells], [v.cpu() for v in octree.vertices],
                       [t.cpu() for t in octree.cell_vertices])
    # CPU points are moved to the kernels' device
    assert_same_octree(SparseOctree.from_points(points.cpu(), max_level, dilate=dilate),
                       [c.cpu() for c in octree.cells], [v.cpu() for v in octree.vertices],
                       [t.cpu() for t in octree.cell_vertices])
