"""ops.gather against its torch twin, hand-computed cases and float64 gradcheck.

The helpers ``random_octree`` and ``sample_points`` are shared with test_codebook.py and
test_importance.py.
"""

import pytest
import torch

from tvq import ops, reference, runtime
from tvq.octree import SparseOctree, morton_decode, morton_encode

pytestmark = pytest.mark.kernels

# float32 tolerances: sums of at most (levels x 8) products of O(1) numbers
ATOL32, RTOL32 = 2e-5, 1e-5
# backward scatters use atomics, whose order (and so float rounding) varies between runs
NONDET = 1e-12


@pytest.fixture(scope="module")
def device() -> torch.device:
    return runtime.device()


def random_octree(max_level: int = 5, clusters: int = 3, per_cluster: int = 30, seed: int = 0) -> SparseOctree:
    """Leaves in a few Gaussian clusters (a patchy, surface-like occupancy with empty space between)."""
    g = torch.Generator().manual_seed(seed)
    res = 1 << max_level
    centres = torch.randint(0, res, (clusters, 1, 3), generator=g)
    offsets = (torch.randn(clusters, per_cluster, 3, generator=g) * (res / 10)).round().long()
    ijk = (centres + offsets).reshape(-1, 3).clamp(0, res - 1)
    return SparseOctree.from_leaf_codes(max_level, morton_encode(ijk))


def sample_points(octree: SparseOctree, levels, n: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """A mix of points: uniform over a box larger than the cube (outside and empty cells), inside occupied
    leaves, on cell faces and at vertices of the given levels, and on the cube's faces."""
    g = torch.Generator().manual_seed(seed)
    m = n // 5
    uniform = torch.rand(m, 3, generator=g, dtype=torch.float64) * 2.4 - 1.2
    leaves = octree.cells[octree.max_level]
    pick = leaves[torch.randint(0, leaves.numel(), (n - m,), generator=g)]
    occupied = (morton_decode(pick).double() + torch.rand(pick.numel(), 3, generator=g, dtype=torch.float64))
    occupied = occupied / (1 << octree.max_level) * 2 - 1

    def snap(p: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
        res = 1 << torch.tensor(levels)[torch.randint(0, len(levels), (p.shape[0], 1), generator=g)]
        snapped = torch.round((p + 1) / 2 * res) / res * 2 - 1  # dyadic: exact in float32
        return torch.where(axes, snapped, p)

    face_axes = torch.nn.functional.one_hot(torch.randint(0, 3, (m,), generator=g), 3).bool()
    faces = snap(occupied[:m], face_axes)
    vertices = snap(occupied[m:2 * m], torch.ones(m, 3, dtype=torch.bool))
    boundary = occupied[2 * m:3 * m].clone()
    boundary[torch.arange(m), torch.randint(0, 3, (m,), generator=g)] = torch.where(
        torch.rand(m, generator=g) < 0.5, -1.0, 1.0).double()
    pts = torch.cat([uniform, occupied[3 * m:], faces, vertices, boundary])
    return pts[torch.randperm(pts.shape[0], generator=g)].to(dtype)


def setup(device, levels=(2, 3, 4, 5), n: int = 600, F: int = 4, seed: int = 0, dtype=torch.float32):
    octree = random_octree(max(levels), seed=seed)
    flat = octree.to(device).flat(levels)
    points = sample_points(octree, levels, n, seed=seed, dtype=dtype).to(device)
    g = torch.Generator().manual_seed(seed + 1)
    features = torch.randn(flat.num_vertices, F, generator=g, dtype=dtype).to(device)
    return octree, flat, points, features


@pytest.mark.parametrize("lod", [1, 2, 4])
def test_gather_matches_twin(device, lod):
    _, flat, points, features = setup(device)
    features.requires_grad_(True)
    out = ops.gather(points, flat, features, lod)
    ref = reference.gather(points, flat, features, lod)
    torch.testing.assert_close(out, ref, atol=ATOL32, rtol=RTOL32)
    assert (ref != 0).any(dim=1).float().mean() > 0.3  # the case is not trivially empty
    cot = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, features, cot)
    (g_ref,) = torch.autograd.grad(ref, features, cot)
    torch.testing.assert_close(g, g_ref, atol=ATOL32, rtol=RTOL32)
    if lod < len(flat.levels):  # rows of unused levels get no gradient
        assert (g[int(flat.vertex_start[lod]):] == 0).all()


def test_gather_levels_with_gaps(device):
    # levels (2, 4, 5): level 4's cells are searched among all of its cells, level 5's among their parents'
    _, flat, points, features = setup(device, levels=(2, 4, 5), seed=8)
    features.requires_grad_(True)
    out = ops.gather(points, flat, features, 3)
    ref = reference.gather(points, flat, features, 3)
    torch.testing.assert_close(out, ref, atol=ATOL32, rtol=RTOL32)
    cot = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, features, cot)[0],
                               torch.autograd.grad(ref, features, cot)[0], atol=ATOL32, rtol=RTOL32)


@pytest.mark.parametrize("run", [1, 7, 40])
def test_gather_backward_runs_of_samples(device, run):
    # packed ray samples: runs of consecutive samples in one cell, across the backward's chunk boundaries
    octree, flat, points, features = setup(device, n=300, F=3, seed=4)
    g = torch.Generator().manual_seed(5)
    order = torch.argsort(morton_encode(((points.cpu() + 1) / 2 * 32).floor().clamp(0, 31).long()))
    points = points[order.to(device)].repeat_interleave(run, dim=0)
    points = points + (torch.rand(points.shape, generator=g) * 1e-3).to(device)  # same cells, other weights
    features.requires_grad_(True)
    out = ops.gather(points, flat, features, 4)
    ref = reference.gather(points, flat, features, 4)
    cot = torch.randn_like(out)
    cot[::5] = 0  # samples without gradient inside runs
    torch.testing.assert_close(torch.autograd.grad(out, features, cot)[0],
                               torch.autograd.grad(ref, features, cot)[0], atol=1e-4, rtol=1e-5)


def test_gather_gradcheck(device):
    _, flat, points, features = setup(device, levels=(2, 3), n=40, F=2, seed=3, dtype=torch.float64)
    features.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: ops.gather(points, flat, f, 2), (features,), nondet_tol=NONDET)


def test_gather_hand_computed_single_cell(device):
    # one occupied leaf at level 2, cell (1, 2, 1), away from the cube's faces
    octree = SparseOctree.from_leaf_codes(2, morton_encode(torch.tensor([[1, 2, 1]]))).to(device)
    flat = octree.flat([2])
    features = torch.arange(8 * 3, dtype=torch.float32, device=device).reshape(8, 3) ** 1.5
    corners = flat.cell_vertices[0].long()
    cell = 2 / 4
    lo = torch.tensor([1, 2, 1], dtype=torch.float32) * cell - 1  # the cell's lower corner
    centre = (lo + cell / 2)[None].to(device)
    torch.testing.assert_close(ops.gather(centre, flat, features, 1)[0], features[corners].mean(dim=0))
    mid_edge = (lo + torch.tensor([cell / 2, 0, 0]))[None].to(device)
    torch.testing.assert_close(ops.gather(mid_edge, flat, features, 1)[0],
                               (features[corners[0]] + features[corners[1]]) / 2)
    # the lower corner reads exactly its feature; the other corners lie on upper faces, which belong to the
    # empty neighbouring cells, so they read zero
    for c in range(8):
        offset = torch.tensor([c & 1, (c >> 1) & 1, (c >> 2) & 1], dtype=torch.float32) * cell
        got = ops.gather((lo + offset)[None].to(device), flat, features, 1)[0]
        assert torch.equal(got, features[corners[0]] if c == 0 else torch.zeros_like(got))


def test_gather_hand_computed_vertices(device):
    # a 2x2x2 block of occupied level-2 cells: every corner of cell (1, 1, 1) is the lower corner of an
    # occupied cell, so a point there reads exactly that vertex's feature
    ijk = torch.stack(torch.meshgrid(*[torch.arange(1, 3)] * 3, indexing="ij"), dim=-1).reshape(-1, 3)
    octree = SparseOctree.from_leaf_codes(2, morton_encode(ijk)).to(device)
    flat = octree.flat([2])
    features = torch.randn(flat.num_vertices, 5, device=device)
    row = int(torch.searchsorted(octree.cells[2], morton_encode(torch.tensor([1, 1, 1])).to(device)))
    corners = flat.cell_vertices[row].long()
    for c in range(8):
        vertex = torch.tensor([1 + (c & 1), 1 + ((c >> 1) & 1), 1 + ((c >> 2) & 1)], dtype=torch.float32) * 0.5 - 1
        assert torch.equal(ops.gather(vertex[None].to(device), flat, features, 1)[0], features[corners[c]])


def test_gather_cube_faces_and_outside(device):
    # the whole level-1 grid occupied: the cube's upper faces belong to the last cells
    ijk = torch.stack(torch.meshgrid(*[torch.arange(2)] * 3, indexing="ij"), dim=-1).reshape(-1, 3)
    flat = SparseOctree.from_leaf_codes(1, morton_encode(ijk)).to(device).flat([1])
    features = torch.randn(flat.num_vertices, 2, device=device)
    # vertex (2, 2, 2) is the cube's corner (1, 1, 1): the last row of the sorted vertex codes
    corner = torch.tensor([[1.0, 1.0, 1.0]], device=device)
    assert torch.equal(ops.gather(corner, flat, features, 1)[0], features[-1])
    outside = torch.tensor([[1.0 + 1e-6, 0, 0], [0, -1.5, 0], [float("nan"), 0, 0], [float("inf"), 0, 0]],
                           device=device)
    assert torch.equal(ops.gather(outside, flat, features, 1), torch.zeros(4, 2, device=device))


def test_gather_lod_zero_and_validation(device):
    _, flat, points, features = setup(device, levels=(2, 3), n=20)
    assert torch.equal(ops.gather(points, flat, features, 0), torch.zeros_like(ops.gather(points, flat, features, 1)))
    with pytest.raises(ValueError):
        ops.gather(points, flat, features, 3)
    assert ops.gather(points[:0], flat, features, 2).shape == (0, features.shape[1])


@pytest.mark.cuda
def test_gather_cuda_matches_twin():
    assert runtime.ensure().arch == "cuda"
    device = torch.device("cuda")
    _, flat, points, features = setup(device, levels=(3, 4, 5, 6), n=20000, F=16, seed=5)
    features.requires_grad_(True)
    out = ops.gather(points, flat, features, 4)
    ref = reference.gather(points, flat, features, 4)
    torch.testing.assert_close(out, ref, atol=ATOL32, rtol=RTOL32)
    cot = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, features, cot)[0],
                               torch.autograd.grad(ref, features, cot)[0], atol=1e-4, rtol=1e-4)


@pytest.mark.cuda
def test_gather_cuda_gradcheck():
    assert runtime.ensure().arch == "cuda"
    _, flat, points, features = setup(torch.device("cuda"), levels=(2, 3), n=40, F=2, seed=3, dtype=torch.float64)
    features.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: ops.gather(points, flat, f, 2), (features,), nondet_tol=NONDET)
