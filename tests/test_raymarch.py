"""Ray marching against the brute-force twin (every grid-plane crossing) and hand-made cases."""

import math

import pytest
import torch

from tvq import runtime
from tvq.octree import SparseOctree, morton_encode
from tvq.reference import raymarch_reference
from tvq.sampling import PackedSamples, raymarch, sample_positions

pytestmark = pytest.mark.kernels


# ---- fixtures -----------------------------------------------------------------------------------------


def random_octree(level: int, fraction: float, seed: int) -> SparseOctree:
    """Uniformly scattered occupied leaves."""
    g = torch.Generator().manual_seed(seed)
    res = 1 << level
    n = max(1, int(fraction * res**3))
    return SparseOctree.from_leaf_codes(level, morton_encode(torch.randint(0, res, (n, 3), generator=g)))


def clustered_octree(level: int, seed: int) -> SparseOctree:
    """A few solid balls and a sphere shell: large empty regions next to dense ones."""
    g = torch.Generator().manual_seed(seed)
    res = 1 << level
    ijk = torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), -1).reshape(-1, 3)
    x = (ijk.double() + 0.5) / res * 2 - 1
    keep = ((x.norm(dim=1) - 0.7).abs() < 1.5 / res)
    for _ in range(3):
        c = torch.rand(3, generator=g, dtype=torch.float64) * 1.4 - 0.7
        keep |= (x - c).norm(dim=1) < 0.2
    return SparseOctree.from_leaf_codes(level, morton_encode(ijk[keep]))


def random_rays(n: int, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays from outside (mostly aimed into the cube), from inside, axis-aligned ones and misses."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    outside = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=1)
    outside = outside * (1.8 + rand(n, 1))
    inside = rand(n, 3) * 2 - 1
    origins = torch.where(rand(n, 1) < 0.75, outside, inside)
    target = rand(n, 3) * 2.4 - 1.2  # some targets lie outside the cube: near misses and misses
    dirs = target - origins
    # zero direction components: along one axis (two zeros) or in an axis plane (one zero)
    kind = torch.randint(0, 6, (n,), generator=g)
    axis = torch.randint(0, 3, (n,), generator=g)
    one_hot = torch.nn.functional.one_hot(axis, 3).bool()
    dirs = torch.where((kind == 0)[:, None] & ~one_hot, torch.zeros_like(dirs), dirs)
    dirs = torch.where((kind == 1)[:, None] & one_hot, torch.zeros_like(dirs), dirs)
    # exactly on grid planes (x = 0, y = 0.5) for some axis-aligned rays
    origins[:8, 1] = 0.0
    origins[8:16, 2] = 0.5
    dirs[:16, 1:] = 0.0
    dirs[:16, 0] = torch.where(torch.arange(16) % 2 == 0, 1.0, -1.0).double()
    dirs = torch.nn.functional.normalize(dirs, dim=1)
    return origins.to(dtype), dirs.to(dtype)


def segments(samples: PackedSamples, n: int, min_length: float = 0.0) -> list[torch.Tensor]:
    """Per ray, the (k, 2) [t0, t1] cell segments of uncapped, unjittered samples (n per segment)."""
    t = samples.t.double()
    dt = samples.dt.double()
    out = []
    for r in range(samples.num_rays):
        a, b = int(samples.ray_offsets[r]), int(samples.ray_offsets[r + 1])
        assert (b - a) % n == 0
        t0 = t[a:b:n] - 0.5 * dt[a:b:n]
        t1 = t0 + n * dt[a:b:n]
        seg = torch.stack([t0, t1], dim=1)
        out.append(seg[(t1 - t0) >= min_length])
    return out


def assert_packed_equal(got: PackedSamples, want: PackedSamples, atol: float) -> None:
    assert torch.equal(got.ray_offsets.cpu(), want.ray_offsets)
    assert torch.equal(got.ray_ids.cpu(), want.ray_ids)
    torch.testing.assert_close(got.t.cpu().double(), want.t, rtol=0, atol=atol)
    torch.testing.assert_close(got.dt.cpu().double(), want.dt, rtol=0, atol=atol)


def in_occupied_cell(octree: SparseOctree, level: int, x: torch.Tensor, tol: float = 1e-5) -> torch.Tensor:
    """(S,) whether each point lies in an occupied level cell grown by ``tol`` on every side."""
    res = 1 << level
    h = 2.0 / res
    codes = octree.cells[level]
    hit = torch.zeros(x.shape[0], dtype=torch.bool)
    for corner in range(8):
        shift = torch.tensor([(tol if corner >> a & 1 else -tol) for a in range(3)], dtype=torch.float64)
        ijk = torch.floor((x + shift + 1) / h).long()
        valid = ((ijk >= 0) & (ijk < res)).all(dim=1)
        code = morton_encode(ijk.clamp(0, res - 1))
        pos = torch.searchsorted(codes, code).clamp(max=codes.numel() - 1)
        hit |= valid & (codes[pos] == code)
    return hit


OCTREES = [
    ("random-L3", lambda: random_octree(3, 0.3, 1), 3),
    ("random-L5", lambda: random_octree(5, 0.05, 2), 5),
    ("clustered-L5", lambda: clustered_octree(5, 3), 5),
    ("clustered-L4-coarser-level", lambda: clustered_octree(5, 4), 4),
]


# ---- against the twin ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name,make,level", OCTREES, ids=[o[0] for o in OCTREES])
def test_float64_matches_twin_exactly(name, make, level):
    octree = make()
    origins, dirs = random_rays(300, seed=level)
    got = raymarch(octree, origins, dirs, level, samples_per_cell=3)
    want = raymarch_reference(octree.cells[level], level, origins, dirs, samples_per_cell=3)
    assert got.t.dtype == torch.float64
    assert_packed_equal(got, want, atol=1e-12)
    assert want.num_samples > 100  # the rays do hit something
    assert (want.counts() == 0).sum() > 10  # and some miss


@pytest.mark.parametrize("name,make,level", OCTREES, ids=[o[0] for o in OCTREES])
def test_float32_segments_match_twin(name, make, level):
    octree = make()
    origins, dirs = random_rays(300, seed=10 + level)
    n = 2
    got = raymarch(octree, origins.float(), dirs.float(), level, samples_per_cell=n)
    assert got.t.dtype == torch.float32 and got.ray_ids.dtype == torch.int32 and got.ray_offsets.dtype == torch.int64
    want = raymarch_reference(octree.cells[level], level, origins.float().double(), dirs.float().double(),
                              samples_per_cell=n)
    # float32 rounding may create or drop slivers at cell corners: compare segments of real length
    for r, (a, b) in enumerate(zip(segments(got, n, 1e-4), segments(want, n, 1e-4))):
        assert a.shape == b.shape, f"ray {r}"
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5)
    # dt sums equal the occupied length of each ray
    length = lambda s: torch.zeros(s.num_rays, dtype=torch.float64).index_add_(  # noqa: E731
        0, s.ray_ids.long(), s.dt.double())
    torch.testing.assert_close(length(got), length(want), rtol=0, atol=1e-4)


def test_every_sample_in_an_occupied_cell():
    octree = clustered_octree(5, 7)
    origins, dirs = random_rays(400, seed=7, dtype=torch.float32)
    s = raymarch(octree, origins, dirs, samples_per_cell=4)
    x = sample_positions(s, origins.double(), dirs.double())
    assert s.num_samples > 1000
    assert in_occupied_cell(octree, 5, x).all()
    assert (s.t >= 0).all() and (s.dt > 0).all()
    # samples are ordered front to back within each ray
    same_ray = s.ray_ids[1:] == s.ray_ids[:-1]
    assert (s.t[1:][same_ray] > s.t[:-1][same_ray]).all()
    # and ray ids agree with the offsets
    assert torch.equal(torch.repeat_interleave(torch.arange(s.num_rays), s.counts()).int(), s.ray_ids)


def test_skipping_empty_blocks_changes_nothing():
    octree = clustered_octree(5, 8)
    origins, dirs = random_rays(300, seed=8, dtype=torch.float32)
    a = raymarch(octree, origins, dirs, samples_per_cell=2, skip_empty=True)
    b = raymarch(octree, origins, dirs, samples_per_cell=2, skip_empty=False)
    assert torch.equal(a.ray_offsets, b.ray_offsets)
    torch.testing.assert_close(a.t, b.t, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.dt, b.dt, rtol=0, atol=1e-6)


@pytest.mark.parametrize("near,far", [(0.5, 1e10), (0.0, 2.5), (1.2, 2.0)])
def test_near_far(near, far):
    octree = clustered_octree(4, 9)
    origins, dirs = random_rays(300, seed=9)
    got = raymarch(octree, origins, dirs, samples_per_cell=2, near=near, far=far)
    want = raymarch_reference(octree.cells[4], 4, origins, dirs, samples_per_cell=2, near=near, far=far)
    assert_packed_equal(got, want, atol=1e-12)
    assert (got.t - 0.5 * got.dt >= near - 1e-12).all() and (got.t + 0.5 * got.dt <= far + 1e-12).all()


@pytest.mark.parametrize("per_ray,total", [(5, None), (None, 700), (7, 300), (1, None)])
def test_caps(per_ray, total):
    octree = clustered_octree(4, 10)
    origins, dirs = random_rays(200, seed=10)
    got = raymarch(octree, origins, dirs, samples_per_cell=3, max_samples_per_ray=per_ray, max_samples=total)
    want = raymarch_reference(octree.cells[4], 4, origins, dirs, samples_per_cell=3,
                              max_samples_per_ray=per_ray, max_samples=total)
    assert_packed_equal(got, want, atol=1e-12)
    if per_ray is not None:
        assert int(got.counts().max()) <= per_ray
    if total is not None:
        assert got.num_samples <= total


# ---- hand-made cases ----------------------------------------------------------------------------------


def test_axis_aligned_ray_hand_computed():
    # level 2: h = 0.5; occupied cells x = 0 and x = 2 of the row y = 1, z = 1
    octree = SparseOctree.from_leaf_codes(2, morton_encode(torch.tensor([[0, 1, 1], [2, 1, 1]])))
    origins = torch.tensor([[-2.0, -0.25, -0.25], [2.0, -0.25, -0.25], [-2.0, 0.25, -0.25]])
    dirs = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    s = raymarch(octree, origins, dirs, samples_per_cell=2)
    assert s.ray_offsets.tolist() == [0, 4, 8, 8]  # the third ray runs along the empty row y = 2
    torch.testing.assert_close(s.t[:4], torch.tensor([1.125, 1.375, 2.125, 2.375]))
    torch.testing.assert_close(s.t[4:], torch.tensor([1.625, 1.875, 2.625, 2.875]))  # enters at x = 1
    torch.testing.assert_close(s.dt, torch.full((8,), 0.25))
    assert s.ray_ids.tolist() == [0] * 4 + [1] * 4


def test_ray_on_a_grid_plane_belongs_to_the_upper_cell():
    # y = 0 is the boundary between rows 1 and 2 at level 2: the cell index is floor((y + 1) / h) = 2
    octree = SparseOctree.from_leaf_codes(2, morton_encode(torch.tensor([[1, 2, 1]])))
    origins = torch.tensor([[-2.0, 0.0, -0.25]])
    s = raymarch(octree, origins, torch.tensor([[1.0, 0.0, 0.0]]), samples_per_cell=1)
    torch.testing.assert_close(s.t, torch.tensor([1.75]))
    torch.testing.assert_close(s.dt, torch.tensor([0.5]))


def test_ray_starting_inside_an_occupied_cell():
    octree = SparseOctree.from_leaf_codes(1, morton_encode(torch.tensor([[0, 0, 0], [1, 1, 1]])))
    origins = torch.tensor([[-0.5, -0.5, -0.5]])
    dirs = torch.tensor([[1.0, 1.0, 1.0]]) / math.sqrt(3)
    s = raymarch(octree, origins, dirs, samples_per_cell=1)
    # the first cell from t = 0 to the corner at t = sqrt(3)/2, the second from there to t = 3 sqrt(3)/2
    half = math.sqrt(3) / 2
    torch.testing.assert_close(s.t, torch.tensor([half / 2, 2 * half]), rtol=0, atol=1e-6)
    torch.testing.assert_close(s.dt, torch.tensor([half, 2 * half]), rtol=0, atol=1e-6)


def test_misses_and_empty_inputs():
    octree = random_octree(3, 0.5, 11)
    origins = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.5, 1.5, 0.0]])
    dirs = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # away, parallel outside, parallel
    s = raymarch(octree, origins, dirs)
    assert s.ray_offsets.tolist() == [0, 0, 0, 0] and s.num_samples == 0
    s = raymarch(octree, torch.zeros(0, 3), torch.zeros(0, 3))
    assert s.ray_offsets.tolist() == [0] and s.num_samples == 0
    empty = SparseOctree.from_leaf_codes(3, torch.zeros(0, dtype=torch.int64))
    s = raymarch(empty, origins, dirs)
    assert s.ray_offsets.tolist() == [0, 0, 0, 0]


def test_full_cube_gives_cells_in_order():
    # every cell occupied: a ray from corner to corner (in general position) crosses 3N - 2 cells
    level = 3
    res = 1 << level
    ijk = torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), -1).reshape(-1, 3)
    octree = SparseOctree.from_leaf_codes(level, morton_encode(ijk))
    origins = torch.tensor([[-1.01, -1.02, -1.03]], dtype=torch.float64)
    dirs = torch.nn.functional.normalize(torch.tensor([[1.0, 0.99, 0.98]], dtype=torch.float64), dim=1)
    s = raymarch(octree, origins, dirs, samples_per_cell=1)
    want = raymarch_reference(octree.cells[level], level, origins, dirs, samples_per_cell=1)
    assert_packed_equal(s, want, atol=1e-12)
    assert s.num_samples == 3 * res - 2
    cells = torch.floor((sample_positions(s, origins, dirs) + 1) / (2 / res)).long()
    steps = (cells[1:] - cells[:-1]).abs().sum(dim=1)
    assert (steps == 1).all()  # face neighbours, one after the other


# ---- jitter -------------------------------------------------------------------------------------------


def test_jitter_is_reproducible_and_stays_in_its_stratum():
    octree = clustered_octree(4, 12)
    origins, dirs = random_rays(200, seed=12, dtype=torch.float32)
    mid = raymarch(octree, origins, dirs, samples_per_cell=4)
    a = raymarch(octree, origins, dirs, samples_per_cell=4, jitter=True, seed=123)
    b = raymarch(octree, origins, dirs, samples_per_cell=4, jitter=True, seed=123)
    c = raymarch(octree, origins, dirs, samples_per_cell=4, jitter=True, seed=124)
    assert torch.equal(a.t, b.t)
    assert not torch.equal(a.t, c.t)
    assert torch.equal(a.ray_offsets, mid.ray_offsets) and torch.equal(a.dt, mid.dt)
    offset = (a.t - mid.t) / mid.dt  # u - 1/2
    assert (offset.abs() <= 0.5 + 1e-3).all()
    assert offset.std() > 0.25  # close to 1/sqrt(12) for uniform u
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    d = raymarch(octree, origins, dirs, samples_per_cell=4, jitter=True, generator=g1)
    e = raymarch(octree, origins, dirs, samples_per_cell=4, jitter=True, generator=g2)
    assert torch.equal(d.t, e.t)


def test_jitter_matches_twin():
    octree = clustered_octree(4, 13)
    origins, dirs = random_rays(150, seed=13)
    got = raymarch(octree, origins, dirs, samples_per_cell=3, jitter=True, seed=987654321)
    want = raymarch_reference(octree.cells[4], 4, origins, dirs, samples_per_cell=3, jitter=True, seed=987654321)
    assert_packed_equal(got, want, atol=1e-12)


def test_positions():
    octree = clustered_octree(4, 14)
    origins, dirs = random_rays(50, seed=14, dtype=torch.float32)
    s = raymarch(octree, origins, dirs)
    x = s.positions(origins, dirs)
    want = origins[s.ray_ids.long()] + s.t[:, None] * dirs[s.ray_ids.long()]
    torch.testing.assert_close(x, want)


# ---- CUDA ---------------------------------------------------------------------------------------------


@pytest.mark.cuda
def test_cuda_matches_twin():
    if runtime.ensure().arch != "cuda":
        pytest.skip("Taichi runs on the CPU backend in this process")
    octree = clustered_octree(5, 15)
    origins, dirs = random_rays(2000, seed=15)
    got = raymarch(octree.to("cuda"), origins.cuda(), dirs.cuda(), samples_per_cell=3, jitter=True, seed=3)
    want = raymarch_reference(octree.cells[5], 5, origins, dirs, samples_per_cell=3, jitter=True, seed=3)
    assert_packed_equal(got, want, atol=1e-12)
    got32 = raymarch(octree.to("cuda"), origins.float().cuda(), dirs.float().cuda(), samples_per_cell=3)
    assert in_occupied_cell(octree, 5, sample_positions(got32, origins.float().cuda(), dirs.float().cuda())
                            .cpu().double()).all()


# ---- the walk's radix index ------------------------------------------------------------------------------


@pytest.mark.parametrize("level,fraction", [(3, 0.3), (6, 0.02), (9, 1e-4)])
def test_walk_index_buckets_bound_every_lower_bound(level, fraction):
    """starts[k] is the first row whose code >> shift >= k, so each code's lower bound lies in its bucket."""
    import numpy as np

    from tvq.kernels.walk import walk_index

    codes = random_octree(level, fraction, seed=level).cells[level]
    starts, shift = walk_index(codes, level)
    c = codes.numpy()
    buckets = np.arange(starts.numel()) << shift
    assert np.array_equal(starts.numpy(), np.searchsorted(c, buckets, side="left"))
    assert 3 * level - shift <= 3 * 7 and 8 ** ((3 * level - shift) // 3) <= 2 * max(1, len(c))
    queries = np.random.default_rng(0).integers(0, 8 ** level, 2000)
    lo = np.searchsorted(c, queries)
    b = queries >> shift
    assert np.all(starts.numpy()[b] <= lo) and np.all(lo <= starts.numpy()[b + 1])


def test_walk_index_is_rebuilt_when_the_codes_change():
    from tvq.kernels.walk import walk_index

    codes = random_octree(5, 0.05, seed=1).cells[5].clone()
    first, shift = walk_index(codes, 5)
    assert walk_index(codes, 5)[0] is first  # cached
    codes.fill_(codes[-1].item())  # in place: every code the last one
    again, shift2 = walk_index(codes, 5)
    assert again is not first
    assert int(again[(codes[0] >> shift2).item()]) == 0
