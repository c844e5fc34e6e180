# %% [markdown]
# # Step 6: alpha compositing
#
# The decoder turns each sample into a density sigma and a colour c; compositing turns a ray's samples
# into a pixel (`tvq/kernels/composite.py`, op `tvq.ops.composite`, twin
# `tvq.reference.composite_reference`). The backward is the one kernel whose hand-written adjoint needs
# real care: every sample's density changes the transmittance of all the samples behind it.
#
# **Forward**, per ray over its samples i = 0 .. n-1 front to back:
#
#     tau_i = sigma_i dt_i,   alpha_i = 1 - exp(-tau_i),   T_i = prod_{j<i} exp(-tau_j),   w_i = T_i alpha_i
#     C = sum_i w_i c_i + T_n bg,   A = 1 - T_n,   D = sum_i w_i t_i
#
# with early termination at inference (stop after the first sample with T_{i+1} < eps).
#
# **Adjoint.** dT_i/dtau_k = -T_i for i > k and dw_k/dtau_k = T_{k+1}, so with the suffix sums
# S_k = sum_{i>k} w_i c_i + T_n bg and Z_k = sum_{i>k} w_i t_i and the cotangents g_C, g_A, g_D:
#
#     dc_k     = w_k g_C
#     dsigma_k = dt_k [ g_C . (T_{k+1} c_k - S_k) + g_A T_n + g_D (T_{k+1} t_k - Z_k) ]
#     dbg      = T_n g_C
#
# Derivation, once: w_i = T_i alpha_i, and for i > k, T_i contains exp(-tau_k), so dw_i/dtau_k = -w_i;
# for i = k, dw_k/dtau_k = T_k exp(-tau_k) = T_{k+1}; for i < k, zero. Hence
# dC/dtau_k = T_{k+1} c_k - sum_{i>k} w_i c_i - T_n bg = T_{k+1} c_k - S_k, and dA/dtau_k = T_n.
# The kernel needs no second pass: it walks the samples in order again, recomputes T_k exactly as the
# forward did (no division by a transmittance that may have underflowed to zero) and gets the suffixes
# from the saved totals, S_k = C - sum_{i<=k} w_i c_i, Z_k = D - sum_{i<=k} w_i t_i.
#
# **Taichi.** `kernels(dtype, with_weights)` gives one thread per ray (`for r in range(R)`) with a
# serial `while` loop over the ray's samples: the locals `trans`, `colour`, `suffix` are carried across
# iterations, exactly what Taichi's own autodiff gets wrong in 1.7.4, hence the hand-written backward.
# `if ti.static(with_weights)` compiles the per-sample weight store in or out. On CUDA, `warp_kernels`
# run the same formulas with 16 lanes of a warp per ray (`ti.simt.warp` shuffles for the prefix sums).

# %%
from pathlib import Path

import numpy as np
import torch

from tvq import reference, runtime
from tvq.apps.tour.common import Step, backward_of, figure, table
from tvq.data import synthetic
from tvq.octree import SparseOctree
from tvq.ops import composite
from tvq.sampling import raymarch

RTOL, ATOL = 1e-4, 1e-5  # float32 against the float32 twin


def packed_batch(num_rays: int, max_samples: int, dtype=torch.float32, seed: int = 0):
    """Random packed samples, 0..max_samples per ray (some rays empty), some samples of zero density."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_samples + 1, (num_rays,), generator=g)
    counts[::7] = 0
    offsets = torch.zeros(num_rays + 1, dtype=torch.int64)
    offsets[1:] = counts.cumsum(0)
    n = int(offsets[-1])
    dt = torch.rand(n, generator=g, dtype=torch.float64) * 0.2 + 0.01
    t = torch.cat([torch.cumsum(dt[a:b], 0) + 0.5 for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())])
    sigma = torch.rand(n, generator=g, dtype=torch.float64) * 8
    sigma[torch.rand(n, generator=g) < 0.2] = 0.0
    rgb = torch.rand(n, 3, generator=g, dtype=torch.float64)
    bg = torch.rand(3, generator=g, dtype=torch.float64)
    device = runtime.device()
    cast = lambda x: x.to(dtype=dtype, device=device)  # noqa: E731
    return cast(sigma), cast(rgb), cast(t), cast(dt), offsets.to(device), cast(bg)


# %% [markdown]
# ## Two samples by hand
#
# sigma = (1, 4), dt = (0.5, 0.25): tau = (0.5, 1), T = (1, e^-0.5), T_n = e^-1.5; the first sample is
# red at t = 1, the second green at t = 2, the background black. By the adjoint above,
# dD/dsigma_0 = dt_0 (T_1 t_0 - w_1 t_1) and dD/dsigma_1 = dt_1 T_2 t_1.

# %%
def by_hand(step: Step) -> None:
    device = runtime.device()
    sigma = torch.tensor([1.0, 4.0], device=device, requires_grad=True)
    dt = torch.tensor([0.5, 0.25], device=device)
    t = torch.tensor([1.0, 2.0], device=device)
    rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], device=device)
    offsets = torch.tensor([0, 2], device=device)
    out = composite(sigma, rgb, t, dt, offsets, return_weights=True)
    twin = reference.composite_reference(sigma.cpu(), rgb.cpu(), t.cpu(), dt.cpu(), offsets.cpu())
    values = [x.detach().cpu() for x in (*out[:3], *twin)]
    e0, e1 = np.exp(-0.5), np.exp(-1.0)
    w = torch.tensor([1 - e0, e0 * (1 - e1)])
    hand_dD = torch.tensor([0.5 * (e0 * 1.0 - float(w[1]) * 2.0), 0.25 * e0 * e1 * 2.0])
    (dD,) = torch.autograd.grad(out.depth.sum(), sigma)
    (dD_twin,) = torch.autograd.grad(twin[2].sum(), sigma)
    step.log(table(["sample", "w (kernel)", "w (twin)", "w (by hand)", "dD/dsigma (kernel)", "twin", "by hand"],
                   [(i, float(out.weights[i]), float(values[6][i]), float(w[i]), float(dD[i]), float(dD_twin[i]),
                     float(hand_dD[i])) for i in range(2)], [None] + ["{:.6f}"] * 6))
    step.log(f"  C = {values[0][0].tolist()}, A = {float(values[1][0]):.6f} (1 - e^-1.5 = {1 - np.exp(-1.5):.6f}), "
             f"D = {float(values[2][0]):.6f}")
    step.agree("two samples: weights, by hand", out.weights, w, atol=1e-6)
    step.agree("two samples: dD/dsigma, by hand", dD, hand_dD, atol=1e-6)
    step.agree("two samples: dD/dsigma, twin", dD, dD_twin, atol=1e-6)


# %% [markdown]
# ## Against the twin
#
# 60 random rays of 0..24 samples (a seventh of them empty), float32: the four outputs, then the
# gradients of sigma, rgb and the background under random cotangents of C, A and D; then the same
# with early termination (densities x 10, eps = 1e-4), where the backward must stop where the forward did.

# %%
def against_twin(step: Step) -> None:
    for eps, scale in ((0.0, 1.0), (1e-4, 10.0)):
        sigma, rgb, t, dt, offsets, bg = packed_batch(60, 24, seed=2)
        sigma = sigma * scale
        ins = [x.clone().requires_grad_(True) for x in (sigma, rgb, bg)]
        twin_ins = [x.detach().cpu().clone().requires_grad_(True) for x in (sigma, rgb, bg)]
        out = composite(ins[0], ins[1], t, dt, offsets, ins[2], early_stop_eps=eps, return_weights=True)
        want = reference.composite_reference(twin_ins[0], twin_ins[1], t.cpu(), dt.cpu(), offsets.cpu(), twin_ins[2],
                                   early_stop_eps=eps)
        label = "early stop" if eps else "full"
        for name, got, ref in zip(("colour", "opacity", "depth", "weights"), out, want):
            step.agree(f"composite ({label}): {name}", got, ref, atol=ATOL, rtol=RTOL)
        g = torch.Generator().manual_seed(3)
        cots = [torch.randn(x.shape, generator=g) for x in want[:3]]
        grads = torch.autograd.grad(out[:3], ins, [c.to(runtime.device()) for c in cots])
        grads_twin = torch.autograd.grad(want[:3], twin_ins, cots)
        for name, got, ref in zip(("dL/dsigma", "dL/drgb", "dL/dbg"), grads, grads_twin):
            step.agree(f"composite ({label}): {name}", got, ref, atol=ATOL, rtol=RTOL)
        if eps:
            stopped = int(((1 - out.opacity) < eps).sum())
            step.log(f"  {stopped} of {offsets.numel() - 1} rays stopped early; "
                     f"{int((out.weights == 0).sum())} samples left out")


# %% [markdown]
# ## gradcheck in float64
#
# Six rays of up to five samples; all three differentiable inputs at once.

# %%
def gradcheck(step: Step) -> None:
    sigma, rgb, t, dt, offsets, bg = packed_batch(6, 5, dtype=torch.float64, seed=7)
    ins = [x.clone().requires_grad_(True) for x in (sigma, rgb, bg)]
    fn = lambda s, c, b: tuple(composite(s, c, t, dt, offsets, b)[:3])  # noqa: E731
    step.gradcheck("composite (float64)", fn, ins, eps=1e-6, atol=1e-8)


# %% [markdown]
# ## Weights and transmittance along a ray
#
# One camera ray into the built-in scene, marched through its level-5 octree with 8 samples per cell;
# the density is a soft step of the scene's signed distance, sigma = 30 sigmoid(-sdf / 0.02) (per
# normalised unit). The ray crosses three runs of occupied cells (no samples in the empty cells between
# them). Left: sigma, T_i and w_i (kernel lines, twin dots): T falls where the ray enters the first
# solid and the weights peak there; what passes it is spent in the next. Right: the adjoint (kernel
# lines, twin dots). dD/dsigma_k = dt_k (T_{k+1} t_k - Z_k) is negative in front of the ray's mean depth
# (more density there pulls the depth forward) and positive behind it; dA/dsigma_k = dt_k T_n is the
# same small positive number per unit length at every sample: opacity does not care where the
# density sits.

# %%
def ray_picture(step: Step) -> None:
    device = runtime.device()
    points = torch.from_numpy(synthetic.surface_points(20000, seed=0)).float()
    octree = SparseOctree.from_points(points.to(device), 5)
    eye = torch.tensor([2.6, -2.2, 1.6], dtype=torch.float64)
    target = torch.tensor([0.0, 0.0, 0.2], dtype=torch.float64)
    o = octree.normalize(eye)[None]
    d = torch.nn.functional.normalize(target - eye, dim=0)[None]
    s = raymarch(octree, o.float().to(device), d.float().to(device), 5, samples_per_cell=8)
    x = octree.denormalize(s.positions(o.to(device), d.to(device)).double().cpu())
    sdf = torch.from_numpy(synthetic.sdf(x.numpy()))
    sigma = (30 * torch.sigmoid(-sdf / 0.02)).float().to(device).requires_grad_(True)
    rgb = torch.full((s.num_samples, 3), 0.5, device=device)
    out = composite(sigma, rgb, s.t, s.dt, s.ray_offsets, return_weights=True)
    sigma_twin = sigma.detach().cpu().requires_grad_(True)
    want = reference.composite_reference(sigma_twin, rgb.cpu(), s.t.cpu(), s.dt.cpu(), s.ray_offsets.cpu())
    step.agree("the picture's ray: weights", out.weights, want[3], atol=ATOL, rtol=RTOL)
    (dD,) = torch.autograd.grad(out.depth.sum(), sigma, retain_graph=True)
    (dA,) = torch.autograd.grad(out.opacity.sum(), sigma)
    (dD_twin,) = torch.autograd.grad(want[2].sum(), sigma_twin, retain_graph=True)
    (dA_twin,) = torch.autograd.grad(want[1].sum(), sigma_twin)
    step.agree("the picture's ray: dD/dsigma", dD, dD_twin, atol=ATOL, rtol=RTOL)
    step.agree("the picture's ray: dA/dsigma", dA, dA_twin, atol=ATOL, rtol=RTOL)
    t, dts = s.t.cpu().double().numpy(), s.dt.cpu().double().numpy()
    trans = torch.cat([torch.ones(1), torch.cumprod(torch.exp(-sigma.detach().cpu() * s.dt.cpu()), 0)[:-1]]).numpy()
    # lines stop where the ray crosses empty cells (no samples there)
    gap = np.flatnonzero(np.diff(t) > 0.51 * (dts[1:] + dts[:-1]) + 1e-6) + 1
    broken = lambda y: np.insert(np.asarray(y, dtype=np.float64), gap, np.nan)  # noqa: E731
    tb = broken(t)
    fig = figure(9.6, 3.0)
    ax1, ax2 = fig.subplots(1, 2)
    sig = sigma.detach().cpu().numpy()
    w_max = float(out.weights.max())
    ax1.fill_between(tb, 0, broken(sig / sig.max()), color="0.85", label="sigma / max")
    ax1.plot(tb, broken(trans), color="C0", label="T_i")
    ax1.plot(tb, broken(out.weights.detach().cpu().numpy() / w_max), color="C3", label="w_i / max")
    ax1.scatter(t, want[3].detach().numpy() / w_max, s=5, color="k", zorder=3, label="twin")
    ax1.set_xlabel("t (normalised units)", fontsize=8)
    ax1.legend(fontsize=7)
    ax1.set_title(f"{s.num_samples} samples, opacity {float(out.opacity[0].detach()):.3f}", fontsize=8)
    ax2.plot(tb, broken(dD.cpu().numpy()), color="C2", label="dD/dsigma_k")
    ax2.plot(tb, broken(dA.cpu().numpy()), color="C1", label="dA/dsigma_k")
    ax2.scatter(t, dD_twin.numpy(), s=5, color="k", zorder=3, label="twin")
    ax2.scatter(t, dA_twin.numpy(), s=5, color="k", zorder=3)
    ax2.axhline(0, color="0.6", lw=0.5)
    ax2.set_xlabel("t (normalised units)", fontsize=8)
    ax2.legend(fontsize=7)
    ax2.set_title("the adjoint along the ray", fontsize=8)
    step.picture(fig, "composite_ray.png")


# %% [markdown]
# ## Timing
#
# 64 rays of up to 32 samples. The twin loops over every sample in Python: the reason the tests keep it
# small and the benchmarks compare against a vectorised torch version instead.

# %%
def measure(step: Step, num_rays: int = 64, max_samples: int = 32) -> None:
    sigma, rgb, t, dt, offsets, bg = packed_batch(num_rays, max_samples, seed=9)
    sigma.requires_grad_(True)
    rgb.requires_grad_(True)
    fwd = lambda: composite(sigma, rgb, t, dt, offsets, bg)[:3]  # noqa: E731
    on_cpu = runtime.device().type == "cpu"
    twin = (lambda: reference.composite_reference(sigma, rgb, t, dt, offsets, bg)[:3]) if on_cpu else None  # noqa: E731
    step.time("composite", f"{num_rays} rays, {int(offsets[-1])} samples", fwd, twin,
              backward_of(fwd, [sigma, rgb]), backward_of(twin, [sigma, rgb]) if on_cpu else None,
              twin_note="the twin runs on the CPU")


# %%
def run(out: Path, log=print) -> dict:
    runtime.ensure()
    with Step("composite", out, log) as step:
        by_hand(step)
        against_twin(step)
        gradcheck(step)
        ray_picture(step)
        measure(step)
        return step.result()


if __name__ == "__main__":
    run(Path("tvq-tour"))
