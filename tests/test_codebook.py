"""ops.vq_gather and ops.hash_gather against their torch twins, and float64 gradcheck.

The forward of vq_gather is piecewise constant in the logits (the hard code), so the logits' gradcheck
runs on the straight-through surrogate: a function whose value is the soft model
gather(softmax(C) @ D) and whose gradient is the op's. Its finite differences then check that the
op's logit gradient is the softmax Jacobian the straight-through estimator prescribes.
"""

import pytest
import torch
from test_gather import ATOL32, NONDET, RTOL32, random_octree, sample_points

from tvq import ops, reference, runtime

pytestmark = pytest.mark.kernels


@pytest.fixture(scope="module")
def device() -> torch.device:
    return runtime.device()


def separated_logits(n: int, K: int, gap: float, generator, dtype) -> torch.Tensor:
    """Random logits whose maximum leads the runner-up by at least ``gap`` (no ties near the argmax)."""
    c = torch.randn(n, K, generator=generator, dtype=dtype)
    c[torch.arange(n), torch.randint(0, K, (n,), generator=generator)] += 2 * gap + 3
    top = c.topk(2, dim=1).values
    assert (top[:, 0] - top[:, 1] > gap).all()
    return c


def setup(device, levels=(2, 3, 4, 5), n=600, F=4, bits=3, seed=0, dtype=torch.float32):
    octree = random_octree(max(levels), seed=seed)
    flat = octree.to(device).flat(levels)
    points = sample_points(octree, levels, n, seed=seed, dtype=dtype).to(device)
    g = torch.Generator().manual_seed(seed + 1)
    K = 1 << bits
    logits = torch.randn(flat.num_vertices, K, generator=g, dtype=dtype).to(device)
    codebooks = torch.randn(len(levels) * K, F, generator=g, dtype=dtype).to(device)
    return flat, points, logits, codebooks


def hard_table(flat, logits, codebooks, K):
    """The per-vertex feature table the hard code implies: D_k[argmax C_v]."""
    level = torch.repeat_interleave(torch.arange(len(flat.levels), device=logits.device),
                                    flat.vertex_start.diff())
    return codebooks[level * K + logits.argmax(dim=1)]


@pytest.mark.parametrize("lod,bits", [(1, 3), (3, 3), (4, 6), (2, 1)])
def test_vq_gather_matches_twin(device, lod, bits):
    flat, points, logits, codebooks = setup(device, bits=bits)
    logits.requires_grad_(True)
    codebooks.requires_grad_(True)
    out = ops.vq_gather(points, flat, logits, codebooks, lod, bits)
    ref = reference.vq_gather(points, flat, logits, codebooks, lod, bits)
    torch.testing.assert_close(out, ref, atol=ATOL32, rtol=RTOL32)
    # the forward is exactly the gather over the hard-coded table
    table = hard_table(flat, logits.detach(), codebooks.detach(), 1 << bits)
    torch.testing.assert_close(out, ops.gather(points, flat, table, lod), atol=0, rtol=0)
    cot = torch.randn_like(out)
    grads = torch.autograd.grad(out, (logits, codebooks), cot)
    grads_ref = torch.autograd.grad(ref, (logits, codebooks), cot)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, atol=ATOL32, rtol=RTOL32)
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0
    if lod < len(flat.levels):  # logits and codebooks of unused levels get no gradient
        assert (grads[0][int(flat.vertex_start[lod]):] == 0).all()
        assert (grads[1][lod << bits:] == 0).all()


def test_vq_gather_codebooks_gradcheck(device):
    flat, points, logits, codebooks = setup(device, levels=(2, 3), n=40, F=2, bits=2, seed=3, dtype=torch.float64)
    codebooks.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda d: ops.vq_gather(points, flat, logits, d, 2, 2), (codebooks,),
                                    nondet_tol=NONDET)


def test_vq_gather_logits_gradcheck(device):
    flat, points, _, codebooks = setup(device, levels=(2, 3), n=40, F=2, bits=2, seed=4, dtype=torch.float64)
    g = torch.Generator().manual_seed(9)
    logits = separated_logits(flat.num_vertices, 4, 1e-3, g, torch.float64).to(device).requires_grad_(True)

    def surrogate(c: torch.Tensor) -> torch.Tensor:
        soft = torch.cat([torch.softmax(c[int(flat.vertex_start[k]):int(flat.vertex_start[k + 1])], dim=1)
                          @ codebooks[4 * k:4 * (k + 1)] for k in range(2)])
        soft_value = reference.gather(points, flat, soft, 2)
        hard = ops.vq_gather(points, flat, c, codebooks, 2, 2)
        return hard + (soft_value - hard).detach()  # the soft model's value, the op's gradient

    assert torch.autograd.gradcheck(surrogate, (logits,), nondet_tol=NONDET)


def test_vq_gather_hand_computed(device):
    from tvq.octree import SparseOctree, morton_encode

    # one level-1 cell (0, 0, 0); its centre reads the mean of its corners' codebook rows
    flat = SparseOctree.from_leaf_codes(1, morton_encode(torch.tensor([[0, 0, 0]]))).to(device).flat([1])
    K, F = 4, 3
    codebooks = torch.randn(K, F, device=device)
    codes = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0], device=device)
    logits = torch.nn.functional.one_hot(codes, K).float() * 5
    corners = flat.cell_vertices[0].long()
    centre = torch.full((1, 3), -0.5, device=device)
    out = ops.vq_gather(centre, flat, logits, codebooks, 1, 2)
    torch.testing.assert_close(out[0], codebooks[codes[corners]].mean(dim=0))
    at_lower_corner = torch.full((1, 3), -1.0, device=device)
    assert torch.equal(ops.vq_gather(at_lower_corner, flat, logits, codebooks, 1, 2)[0], codebooks[codes[corners[0]]])


def test_vq_gather_ties_take_the_first_maximum(device):
    flat, points, _, codebooks = setup(device, levels=(2, 3), n=100, bits=2)
    logits = torch.zeros(flat.num_vertices, 4, device=device)  # every row a four-way tie
    out = ops.vq_gather(points, flat, logits, codebooks, 2, 2)
    torch.testing.assert_close(out, ops.gather(points, flat, hard_table(flat, logits, codebooks, 4), 2), atol=0, rtol=0)


def test_vq_gather_validation(device):
    flat, points, logits, codebooks = setup(device, levels=(2, 3), n=10, bits=3)
    with pytest.raises(ValueError):
        ops.vq_gather(points, flat, logits, codebooks, 2, 2)  # logits are 8 wide, not 4
    with pytest.raises(ValueError):
        ops.vq_gather(points, flat, logits, codebooks[:8], 2, 3)  # one level's codebook for two levels


@pytest.mark.parametrize("lod", [2, 4])
def test_hash_gather_matches_twin(device, lod):
    flat, points, _, codebooks = setup(device, bits=4)
    level = torch.repeat_interleave(torch.arange(4, device=device), flat.vertex_start.diff())
    indices = (torch.randint(0, 16, (flat.num_vertices,), device=device) + 16 * level).to(torch.int32)
    codebooks.requires_grad_(True)
    out = ops.hash_gather(points, flat, indices, codebooks, lod)
    ref = reference.hash_gather(points, flat, indices, codebooks, lod)
    torch.testing.assert_close(out, ref, atol=ATOL32, rtol=RTOL32)
    cot = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, codebooks, cot)[0],
                               torch.autograd.grad(ref, codebooks, cot)[0], atol=ATOL32, rtol=RTOL32)


def test_hash_gather_gradcheck(device):
    flat, points, _, codebooks = setup(device, levels=(2, 3), n=40, F=2, bits=2, seed=5, dtype=torch.float64)
    indices = torch.randint(0, codebooks.shape[0], (flat.num_vertices,), device=device)
    codebooks.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda d: ops.hash_gather(points, flat, indices, d, 2), (codebooks,),
                                    nondet_tol=NONDET)


def test_code_replicas():
    from tvq.kernels.codebook import MAX_REPLICAS, REPLICA_ROWS, code_replicas

    assert code_replicas(4 * 16) == MAX_REPLICAS  # a 4-bit codebook: one copy per lane of a warp
    assert code_replicas(REPLICA_ROWS) == 1 and code_replicas(4 * REPLICA_ROWS) == 1
    assert code_replicas(REPLICA_ROWS // 4) == 4


@pytest.mark.parametrize("op", ["vq", "hash"])
def test_codebook_gradient_copies_sum_to_one_gradient(device, monkeypatch, op):
    """The private copies of dD change only the order of the additions: one copy gives the same gradient."""
    from tvq.kernels import codebook

    flat, points, logits, codebooks = setup(device, bits=2, dtype=torch.float64)
    level = torch.repeat_interleave(torch.arange(4, device=device), flat.vertex_start.diff())
    indices = (torch.randint(0, 4, (flat.num_vertices,), device=device) + 4 * level).to(torch.int32)
    logits.requires_grad_(True)
    codebooks.requires_grad_(True)

    def grads():
        out = (ops.vq_gather(points, flat, logits, codebooks, 4, 2) if op == "vq"
               else ops.hash_gather(points, flat, indices, codebooks, 4))
        return torch.autograd.grad(out, codebooks, torch.ones_like(out))[0]

    assert codebook.code_replicas(codebooks.shape[0]) > 1
    many = grads()
    monkeypatch.setattr(codebook, "MAX_REPLICAS", 1)
    one = grads()
    assert many.abs().sum() > 0
    torch.testing.assert_close(many, one, atol=1e-12, rtol=1e-12)


@pytest.mark.cuda
def test_vq_gather_cuda_matches_twin():
    assert runtime.ensure().arch == "cuda"
    device = torch.device("cuda")
    flat, points, logits, codebooks = setup(device, levels=(3, 4, 5, 6), n=20000, F=16, bits=6, seed=7)
    logits.requires_grad_(True)
    codebooks.requires_grad_(True)
    out = ops.vq_gather(points, flat, logits, codebooks, 4, 6)
    ref = reference.vq_gather(points, flat, logits, codebooks, 4, 6)
    torch.testing.assert_close(out, ref, atol=ATOL32, rtol=RTOL32)
    cot = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, (logits, codebooks), cot),
                         torch.autograd.grad(ref, (logits, codebooks), cot)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.cuda
def test_vq_gather_cuda_codebooks_gradcheck():
    assert runtime.ensure().arch == "cuda"
    flat, points, logits, codebooks = setup(torch.device("cuda"), levels=(2, 3), n=40, F=2, bits=2, seed=3,
                                            dtype=torch.float64)
    codebooks.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda d: ops.vq_gather(points, flat, logits, d, 2, 2), (codebooks,),
                                    nondet_tol=NONDET)
