"""ops.importance against its torch twin and hand-computed sums."""

import pytest
import torch
from test_gather import random_octree, sample_points

from tvq import ops, reference, runtime
from tvq.octree import SparseOctree, morton_encode

pytestmark = pytest.mark.kernels


@pytest.fixture(scope="module")
def device() -> torch.device:
    return runtime.device()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_importance_matches_twin(device, dtype, tol):
    levels = (2, 3, 4, 5)
    octree = random_octree(5, seed=2)
    flat = octree.to(device).flat(levels)
    points = sample_points(octree, levels, 800, seed=2, dtype=dtype).to(device)
    weights = torch.rand(points.shape[0], dtype=dtype, device=device)
    weights[::7] = 0  # samples that composite to nothing
    got = ops.importance(points, flat, weights)
    torch.testing.assert_close(got, reference.importance(points, flat, weights), atol=tol, rtol=tol)
    assert got.shape == (flat.num_vertices,) and (got > 0).any()


def test_importance_lod(device):
    levels = (2, 3, 4, 5)
    octree = random_octree(5, seed=3)
    flat = octree.to(device).flat(levels)
    points = sample_points(octree, levels, 400, seed=3).to(device)
    weights = torch.rand(points.shape[0], device=device)
    got = ops.importance(points, flat, weights, lod=2)
    torch.testing.assert_close(got, reference.importance(points, flat, weights, lod=2), atol=1e-5, rtol=1e-5)
    assert (got[int(flat.vertex_start[2]):] == 0).all()


def test_importance_partition_of_unity(device):
    # trilinear weights sum to one, so each level's importance sums to the weight of its occupied samples
    levels = (3, 4, 5)
    octree = random_octree(5, seed=6)
    flat = octree.to(device).flat(levels)
    points = sample_points(octree, levels, 500, seed=6, dtype=torch.float64).to(device)
    weights = torch.rand(points.shape[0], dtype=torch.float64, device=device)
    got = ops.importance(points, flat, weights)
    features = torch.ones(flat.num_vertices, 1, dtype=torch.float64, device=device)
    for k in range(len(levels)):
        lo, hi = int(flat.vertex_start[k]), int(flat.vertex_start[k + 1])
        level_only = torch.zeros_like(features)
        level_only[lo:hi] = 1
        occupied = ops.gather(points, flat, level_only, len(levels))[:, 0]  # 1 where level k's cell is occupied
        torch.testing.assert_close(got[lo:hi].sum(), (weights * occupied).sum())


def test_importance_cell_centre(device):
    # a sample of weight 2 at the centre of level-1 cell (1, 0, 1) gives each of its corners 2/8 at level 1
    flat = SparseOctree.from_leaf_codes(1, morton_encode(torch.tensor([[1, 0, 1]]))).to(device).flat([0, 1])
    point = torch.tensor([[0.5, -0.5, 0.5]], device=device)
    got = ops.importance(point, flat, torch.tensor([2.0], device=device))
    corners = flat.cell_vertices[1].long()
    expected = torch.zeros(flat.num_vertices, device=device)
    expected[corners] = 0.25
    # level 0: one cell, the point at (3/4, 1/4, 3/4) of it
    frac = (0.75, 0.25, 0.75)
    w0 = torch.tensor([[frac[a] if (c >> a) & 1 else 1 - frac[a] for a in range(3)] for c in range(8)]).prod(dim=1)
    expected[flat.cell_vertices[0].long()] = 2 * w0.to(device)
    torch.testing.assert_close(got, expected)
