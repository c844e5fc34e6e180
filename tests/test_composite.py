"""Compositing: hand-computed values, the loop twin (outputs and gradients), gradcheck, early termination."""

import math

import pytest
import torch

from tvq import runtime
from tvq.octree import SparseOctree, morton_encode
from tvq.ops import composite
from tvq.reference import composite_reference
from tvq.sampling import raymarch

pytestmark = pytest.mark.kernels

# float32 against the float32 twin
RTOL, ATOL = 1e-4, 1e-5


def packed_batch(num_rays: int, max_samples: int, dtype=torch.float32, seed: int = 0, device="cpu"):
    """Random packed samples with 0..max_samples per ray (some rays empty)."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_samples + 1, (num_rays,), generator=g)
    counts[::7] = 0
    offsets = torch.zeros(num_rays + 1, dtype=torch.int64)
    offsets[1:] = counts.cumsum(0)
    n = int(offsets[-1])
    dt = torch.rand(n, generator=g, dtype=torch.float64) * 0.2 + 0.01
    # t increasing along each ray
    t = torch.cat([torch.cumsum(dt[a:b], 0) + 0.5 for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
                  or [torch.zeros(0, dtype=torch.float64)])
    sigma = torch.rand(n, generator=g, dtype=torch.float64) * 8
    sigma[torch.rand(n, generator=g) < 0.2] = 0.0  # empty space inside occupied cells
    rgb = torch.rand(n, 3, generator=g, dtype=torch.float64)
    bg = torch.rand(3, generator=g, dtype=torch.float64)
    cast = lambda x: x.to(dtype=dtype, device=device)  # noqa: E731
    return cast(sigma), cast(rgb), cast(t), cast(dt), offsets.to(device), cast(bg)


def cotangents(num_rays: int, dtype, seed: int = 1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
            for s in ((num_rays, 3), (num_rays,), (num_rays,))]


def loss(outputs, cots):
    return sum((o * c).sum() for o, c in zip(outputs, cots))


# ---- hand-computed values -----------------------------------------------------------------------------


def test_one_sample_hand_computed():
    sigma, dt, t = 2.0, 0.5, 1.5
    rgb = torch.tensor([[0.2, 0.4, 0.6]])
    bg = torch.tensor([1.0, 1.0, 1.0])
    out = composite(torch.tensor([sigma]), rgb, torch.tensor([t]), torch.tensor([dt]), torch.tensor([0, 1]), bg,
                    return_weights=True)
    alpha = 1 - math.exp(-1.0)
    torch.testing.assert_close(out.colour, alpha * rgb + (1 - alpha) * bg)
    torch.testing.assert_close(out.opacity, torch.tensor([alpha]))
    torch.testing.assert_close(out.depth, torch.tensor([alpha * t]))
    torch.testing.assert_close(out.weights, torch.tensor([alpha]))


def test_two_samples_hand_computed():
    # tau = (0.5, 1.0): alpha = 1 - e^-tau, T = (1, e^-0.5), T_n = e^-1.5
    sigma = torch.tensor([1.0, 4.0], requires_grad=True)
    dt = torch.tensor([0.5, 0.25])
    t = torch.tensor([1.0, 2.0])
    rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    out = composite(sigma, rgb, t, dt, torch.tensor([0, 2]), return_weights=True)
    a0, a1 = 1 - math.exp(-0.5), 1 - math.exp(-1.0)
    w = torch.tensor([a0, math.exp(-0.5) * a1])
    torch.testing.assert_close(out.weights, w)
    torch.testing.assert_close(out.colour, torch.tensor([[w[0], w[1], 0.0]]))
    torch.testing.assert_close(out.opacity, torch.tensor([1 - math.exp(-1.5)]))
    torch.testing.assert_close(out.depth, torch.tensor([w[0] * 1.0 + w[1] * 2.0]))
    # d opacity / d sigma_k = dt_k T_n
    (g_sigma,) = torch.autograd.grad(out.opacity.sum(), [sigma], retain_graph=True)
    torch.testing.assert_close(g_sigma, dt * math.exp(-1.5))
    # d depth / d sigma_0 = dt_0 (T_1 t_0 - w_1 t_1), d depth / d sigma_1 = dt_1 T_2 t_1
    g_sigma, g_rgb = torch.autograd.grad(out.depth.sum(), [sigma, rgb])
    t1, t2 = math.exp(-0.5), math.exp(-1.5)
    torch.testing.assert_close(g_sigma, torch.tensor([0.5 * (t1 * 1.0 - float(w[1]) * 2.0), 0.25 * t2 * 2.0]))
    torch.testing.assert_close(g_rgb, torch.zeros(2, 3))


def test_empty_rays_show_the_background():
    bg = torch.tensor([0.1, 0.5, 0.9], requires_grad=True)
    empty = torch.zeros(0)
    out = composite(empty, torch.zeros(0, 3), empty, empty, torch.zeros(4, dtype=torch.int64), bg)
    torch.testing.assert_close(out.colour, bg.detach().expand(3, 3))
    torch.testing.assert_close(out.opacity, torch.zeros(3))
    torch.testing.assert_close(out.depth, torch.zeros(3))
    (g,) = torch.autograd.grad(out.colour.sum(), [bg])
    torch.testing.assert_close(g, torch.full((3,), 3.0))
    none = composite(empty, torch.zeros(0, 3), empty, empty, torch.zeros(1, dtype=torch.int64))
    assert none.colour.shape == (0, 3) and none.opacity.shape == (0,)


# ---- against the twin ---------------------------------------------------------------------------------


@pytest.mark.parametrize("per_ray_bg", [False, True])
def test_float32_matches_twin(per_ray_bg):
    sigma, rgb, t, dt, offsets, bg = packed_batch(60, 24, seed=2)
    num_rays = offsets.numel() - 1
    if per_ray_bg:
        bg = torch.rand(num_rays, 3, generator=torch.Generator().manual_seed(3))
    inputs = [x.clone().requires_grad_() for x in (sigma, rgb, bg)]
    twin_inputs = [x.clone().requires_grad_() for x in (sigma, rgb, bg)]
    out = composite(inputs[0], inputs[1], t, dt, offsets, inputs[2], return_weights=True)
    want = composite_reference(twin_inputs[0], twin_inputs[1], t, dt, offsets, twin_inputs[2])
    for got, ref in zip(out, want):
        torch.testing.assert_close(got, ref.detach(), rtol=RTOL, atol=ATOL)
    cots = cotangents(num_rays, torch.float32)
    grads = torch.autograd.grad(loss(out[:3], cots), inputs)
    grads_twin = torch.autograd.grad(loss(want[:3], cots), twin_inputs)
    for got, ref in zip(grads, grads_twin):
        torch.testing.assert_close(got, ref, rtol=RTOL, atol=ATOL)


def test_weights_sum_to_opacity():
    sigma, rgb, t, dt, offsets, bg = packed_batch(40, 30, seed=4)
    out = composite(sigma, rgb, t, dt, offsets, bg, return_weights=True)
    ids = torch.repeat_interleave(torch.arange(offsets.numel() - 1), offsets[1:] - offsets[:-1])
    sums = torch.zeros(offsets.numel() - 1).index_add_(0, ids, out.weights)
    torch.testing.assert_close(sums, out.opacity, rtol=RTOL, atol=ATOL)
    assert composite(sigma, rgb, t, dt, offsets, bg).weights is None


def test_opaque_samples_stay_finite():
    # transmittance underflows to zero after the first sample: the backward must not divide by it
    sigma = torch.tensor([1e4, 5.0, 5.0, 2.0], requires_grad=True)
    rgb = torch.rand(4, 3, requires_grad=True)
    dt = torch.full((4,), 0.1)
    t = torch.arange(4.0)
    offsets = torch.tensor([0, 4])
    out = composite(sigma, rgb, t, dt, offsets, torch.ones(3))
    want = composite_reference(sigma, rgb, t, dt, offsets, torch.ones(3))
    torch.testing.assert_close(out.colour, want[0], rtol=RTOL, atol=ATOL)
    cots = cotangents(1, torch.float32)
    grads = torch.autograd.grad(loss(out[:3], cots), [sigma, rgb])
    grads_twin = torch.autograd.grad(loss(want[:3], cots), [sigma, rgb])
    for got, ref in zip(grads, grads_twin):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, ref, rtol=RTOL, atol=ATOL)


def test_early_termination():
    sigma, rgb, t, dt, offsets, bg = packed_batch(40, 40, seed=5)
    sigma = sigma * 10  # opaque enough that most rays terminate
    eps = 1e-4
    inputs = [x.clone().requires_grad_() for x in (sigma, rgb)]
    twin_inputs = [x.clone().requires_grad_() for x in (sigma, rgb)]
    out = composite(inputs[0], inputs[1], t, dt, offsets, bg, early_stop_eps=eps, return_weights=True)
    want = composite_reference(twin_inputs[0], twin_inputs[1], t, dt, offsets, bg, early_stop_eps=eps)
    for got, ref in zip(out, want):
        torch.testing.assert_close(got, ref.detach(), rtol=RTOL, atol=ATOL)
    stopped = (1 - out.opacity) < eps
    assert stopped.sum() > 10 and (out.weights == 0).sum() > 0
    full = composite(sigma, rgb, t, dt, offsets, bg)
    torch.testing.assert_close(out.colour, full.colour, rtol=0, atol=2e-4)  # the rest weighs < eps
    cots = cotangents(offsets.numel() - 1, torch.float32)
    grads = torch.autograd.grad(loss(out[:3], cots), inputs)
    grads_twin = torch.autograd.grad(loss(want[:3], cots), twin_inputs)
    for got, ref in zip(grads, grads_twin):
        torch.testing.assert_close(got, ref, rtol=RTOL, atol=ATOL)


def test_composites_raymarch_samples():
    octree = SparseOctree.from_leaf_codes(3, morton_encode(torch.randint(0, 8, (150, 3),
                                                                        generator=torch.Generator().manual_seed(6))))
    g = torch.Generator().manual_seed(6)
    origins = torch.rand(64, 3, generator=g) * 2 - 1
    dirs = torch.nn.functional.normalize(torch.randn(64, 3, generator=g), dim=1)
    s = raymarch(octree, origins, dirs, samples_per_cell=4)
    sigma = torch.rand(s.num_samples, generator=g) * 5
    rgb = torch.rand(s.num_samples, 3, generator=g)
    assert s.num_samples > 100
    got = composite(sigma, rgb, s.t, s.dt, s.ray_offsets, torch.ones(3))
    want = composite_reference(sigma, rgb, s.t, s.dt, s.ray_offsets, torch.ones(3))
    for x, y in zip(got[:3], want[:3]):
        torch.testing.assert_close(x, y, rtol=RTOL, atol=ATOL)


def test_lean_launch_matches_taichi_launch():
    from tvq.kernels.composite import OUT_COLUMNS, kernels

    runtime.ensure()

    sigma, rgb, t, dt, offsets, bg = packed_batch(30, 10, seed=11)
    forward, _ = kernels("f32", True)
    outs = [torch.empty(30, OUT_COLUMNS) for _ in range(2)]
    weights = [torch.empty(sigma.shape[0]) for _ in range(2)]
    forward(sigma, rgb, t, dt, offsets, bg[None], 0, 0.0, outs[0], weights[0])
    forward(sigma, rgb, t, dt, offsets, bg[None], 0, 0.0, outs[0], weights[0])
    assert forward.plan is not None
    forward.kernel(sigma, rgb, t, dt, offsets, bg[None], 0, 0.0, outs[1], weights[1])  # Taichi's own launch
    assert torch.equal(outs[0], outs[1]) and torch.equal(weights[0], weights[1])
    # a strided tensor takes Taichi's path, which refuses it
    strided = torch.stack([sigma, sigma], dim=1)[:, 0]
    with pytest.raises(ValueError, match="contiguous"):
        forward(strided, rgb, t, dt, offsets, bg[None], 0, 0.0, outs[0], weights[0])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_lean_first_call_keeps_no_argument_alive(device):
    """Taichi keeps the arguments a kernel was compiled with; the lean launcher compiles with stand-ins."""
    import gc
    import weakref

    import taichi as ti

    from tvq.kernels.launch import lean

    if runtime.ensure().arch != device:
        pytest.skip("Taichi runs on the CPU backend in this process")

    @ti.kernel
    def double(a: ti.types.ndarray(dtype=ti.f32, ndim=1), b: ti.types.ndarray(dtype=ti.types.vector(2, ti.f32), ndim=1)):
        for i in range(a.shape[0]):
            b[i] = ti.Vector([a[i], a[i]]) * 2

    launch = lean(double)
    for _ in range(2):
        a, b = torch.arange(5.0, device=device), torch.zeros(5, 2, device=device)
        refs = weakref.ref(a), weakref.ref(b)
        launch(a, b)
        assert torch.equal(b.cpu(), torch.arange(5.0)[:, None].expand(5, 2) * 2)
        del a, b
        gc.collect()
        assert all(ref() is None for ref in refs)
    assert launch.plan is not None


# ---- gradcheck (float64) ------------------------------------------------------------------------------


@pytest.mark.parametrize("per_ray_bg", [False, True])
def test_gradcheck_composite(per_ray_bg):
    assert runtime.ensure().debug  # fast_math off
    sigma, rgb, t, dt, offsets, bg = packed_batch(6, 5, dtype=torch.float64, seed=7)
    if per_ray_bg:
        bg = torch.rand(offsets.numel() - 1, 3, dtype=torch.float64)
    inputs = [x.clone().requires_grad_() for x in (sigma, rgb, bg)]
    fn = lambda s, c, b: tuple(composite(s, c, t, dt, offsets, b)[:3])  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8)


def test_gradcheck_composite_early_stop():
    sigma, rgb, t, dt, offsets, bg = packed_batch(5, 6, dtype=torch.float64, seed=8)
    inputs = [x.clone().requires_grad_() for x in (sigma * 4, rgb)]
    fn = lambda s, c: tuple(composite(s, c, t, dt, offsets, bg, early_stop_eps=1e-3)[:3])  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-7, atol=1e-7)


# ---- CUDA ---------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("max_samples, early_stop_eps, per_ray_bg", [(40, 0.0, False), (100, 0.0, True),
                                                                     (100, 1e-2, True)])
def test_cuda_matches_twin(max_samples, early_stop_eps, per_ray_bg):
    """On CUDA 16 lanes of a warp composite a ray, 16 samples a round: rays of up to 100 samples take
    several rounds, and early termination must stop where the sample-by-sample twin stops."""
    if runtime.ensure().arch != "cuda":
        pytest.skip("Taichi runs on the CPU backend in this process")
    sigma, rgb, t, dt, offsets, bg = packed_batch(300, max_samples, seed=9)
    sigma = sigma * 3
    if per_ray_bg:
        bg = torch.rand(offsets.numel() - 1, 3, generator=torch.Generator().manual_seed(4))
    cuda = [x.cuda() for x in (sigma, rgb, t, dt, offsets, bg)]
    inputs = [cuda[0].requires_grad_(), cuda[1].requires_grad_(), cuda[5].requires_grad_()]
    out = composite(inputs[0], inputs[1], cuda[2], cuda[3], cuda[4], inputs[2], early_stop_eps=early_stop_eps,
                    return_weights=True)
    twin_inputs = [x.clone().requires_grad_() for x in (sigma, rgb, bg)]
    want = composite_reference(twin_inputs[0], twin_inputs[1], t, dt, offsets, twin_inputs[2], early_stop_eps)
    for got, ref in zip(out, want):
        torch.testing.assert_close(got.cpu(), ref.detach(), rtol=RTOL, atol=ATOL)
    cots = cotangents(offsets.numel() - 1, torch.float32)
    grads = torch.autograd.grad(loss(out[:3], [c.cuda() for c in cots]), inputs)
    grads_twin = torch.autograd.grad(loss(want[:3], cots), twin_inputs)
    for got, ref in zip(grads, grads_twin):
        torch.testing.assert_close(got.cpu(), ref, rtol=RTOL, atol=ATOL)


@pytest.mark.cuda
@pytest.mark.parametrize("lanes", [16, 32])
@pytest.mark.parametrize("early_stop_eps", [0.0, 1e-2])
@pytest.mark.parametrize("extreme", [False, True])
def test_cuda_warp_layouts_match_thread_per_ray(lanes, early_stop_eps, extreme):
    """Both warp layouts (the op runs 16 lanes per ray; the benchmark also times 32) give the per-ray
    kernels' results, weights and input gradients; also with huge and infinite densities among the
    samples (a diverged field), which must neither turn into NaN nor blur the transmittance next to them."""
    if runtime.ensure().arch != "cuda":
        pytest.skip("Taichi runs on the CPU backend in this process")
    from tvq.kernels.composite import OUT_COLUMNS, kernels, warp_kernels

    sigma, rgb, t, dt, offsets, bg = packed_batch(301, 100, seed=11, device="cuda")
    sigma = sigma * 3
    if extreme:
        sigma[::37] = 1e6
        sigma[5::53] = float("inf")
    num_rays, num_samples = offsets.numel() - 1, sigma.numel()
    cots = [c.cuda() for c in cotangents(num_rays, torch.float32)]
    results = []
    for forward, backward in (kernels("f32", True), warp_kernels(True, lanes)):
        out = torch.empty(num_rays, OUT_COLUMNS, device="cuda")
        weights = torch.empty(num_samples, device="cuda")
        grad_in = torch.empty(num_samples, 4, device="cuda")
        forward(sigma, rgb, t, dt, offsets, bg[None], 0, early_stop_eps, out, weights)
        backward(sigma, rgb, t, dt, offsets, early_stop_eps, out, *cots, grad_in)
        results.append((out, weights, grad_in))
    for got, want in zip(*results):
        assert torch.isfinite(want).all()
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
