# %% [markdown]
# # Step 5: the straight-through codebook lookup (VQ-AD)
#
# VQ-AD replaces each vertex's feature vector with a b-bit index into a small per-level codebook. The
# index is learned: every vertex v keeps a row of K = 2^b logits C_v, and the forward pass reads the
# codebook row of its largest logit. `tvq/kernels/codebook.py` (`vq_kernels`, op `tvq.ops.vq_gather`)
# fuses that lookup into the gather of step 4; the twin is `tvq.reference.vq_gather`.
#
# **Forward** (the hard code, in training and inference alike), for level k with codebook D_k (K x F):
#
#     idx[v] = argmax_j C_v[j]          (first maximum on ties)
#     T[v]   = D_k[idx[v]]
#     z(x)   = sum_k sum_c w_c(x) T[v_k(x, c)]           (the gather of step 4 over T)
#
# **Adjoint** (straight-through softmax). The forward is piecewise constant in C, so its true gradient
# is zero almost everywhere. VQ-AD trains through the surrogate code = onehot(idx) - sg(s) + s with
# s = softmax(C_v) (sg: stop gradient): its value is the one-hot, its gradient the softmax's. With
# g_v = dL/dT[v] from the gather's backward and a_j = D_k[j] . g_v:
#
#     dD_k[idx[v]] += g_v
#     dC_v[j]      = s_j (a_j - sum_i s_i a_i)            (the softmax Jacobian applied to D_k g_v)
#
# The kernel never builds softmax(C) for all vertices nor a (samples x 8 x 2^b x F) tensor (the twin
# does): one thread per vertex makes one pass over its logits, shifted by the forward's maximum, for
# Z = sum_j exp(C_j - C_idx) and sum_j exp(C_j - C_idx) a_j; a second loop, one thread per block of
# 4 logits, writes dC_v[j] = exp(C_j - logsumexp C_v) (a_j - s.a).
#
# **Taichi.** The forward kernel has two top-level loops: Taichi runs each as its own parallel loop, in
# order (all of idx is written before any sample reads it). `K: ti.template()` makes the code count a
# compile-time constant, so `argmax_row` reads logits in unrolled tiles of 16 (`ti.static(range(T))`).
# `for v, b in ti.ndrange(V, K // 4)` is a 2D parallel loop. Values the last loop still needs live in
# dC's first two columns until it overwrites them.

# %%
from pathlib import Path

import numpy as np
import torch

from tvq import ops, reference, runtime
from tvq.apps.tour.common import Step, backward_of, figure, table
from tvq.apps.tour.step4_gather import sample_points, scene_octree
from tvq.octree import SparseOctree, morton_encode

LEVELS = (3, 4, 5)
F, BITS = 16, 4
K = 1 << BITS
ATOL32, RTOL32 = 2e-5, 1e-5


def setup(octree: SparseOctree, levels=LEVELS, F=F, bits=BITS, seed=0, dtype=torch.float32, num_rays=300):
    flat = octree.flat(levels)
    points = sample_points(octree, num_rays, seed=seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 1)
    K = 1 << bits
    logits = torch.randn(flat.num_vertices, K, generator=g, dtype=dtype).to(runtime.device())
    codebooks = torch.randn(len(levels) * K, F, generator=g, dtype=dtype).to(runtime.device())
    return flat, points, logits, codebooks


def level_of_vertex(flat) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(flat.levels), device=flat.vertex_start.device),
                                   flat.vertex_start.diff())


def soft_table(flat, logits, codebooks, K) -> torch.Tensor:
    """The soft model's per-vertex features softmax(C_v) @ D_k (what the straight-through gradient
    differentiates)."""
    k = level_of_vertex(flat)
    soft = torch.softmax(logits, dim=1)
    return torch.einsum("vj,vjf->vf", soft, codebooks.reshape(-1, K, codebooks.shape[1])[k])


# %% [markdown]
# ## One cell by hand
#
# One level-1 cell, K = 4 codes, F = 3. Each corner's logits make code idx[v] the largest; at the cell's
# centre every corner weighs 1/8, so the feature is the mean of the 8 selected codebook rows.

# %%
def one_cell(step: Step) -> None:
    device = runtime.device()
    flat = SparseOctree.from_leaf_codes(1, morton_encode(torch.tensor([[0, 0, 0]]))).to(device).flat([1])
    g = torch.Generator().manual_seed(0)
    codebook = torch.randn(4, 3, generator=g).to(device)
    codes = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0], device=device)
    logits = (torch.nn.functional.one_hot(codes, 4).float() * 3 + torch.randn(8, 4, generator=g).to(device) * 0.5)
    centre = torch.full((1, 3), -0.5, device=device)
    got = ops.vq_gather(centre, flat, logits, codebook, 1, 2)[0]
    rows = flat.cell_vertices[0].long()
    hand = codebook[logits.argmax(dim=1)[rows]].mean(dim=0)
    twin = reference.vq_gather(centre, flat, logits, codebook, 1, 2)[0]
    step.log(table(["vertex", "logits C_v", "argmax", "softmax max"],
                   [(v, str(np.round(logits[v].cpu().numpy(), 2)), int(logits[v].argmax()),
                     float(torch.softmax(logits[v], 0).max())) for v in range(8)], [None, None, None, "{:.3f}"]))
    step.log(table(["", "z[0]", "z[1]", "z[2]"], [("kernel", *got.tolist()), ("mean of D[idx]", *hand.tolist()),
                                                  ("twin", *twin.tolist())], [None, "{:+.6f}", "{:+.6f}", "{:+.6f}"]))
    step.agree("one cell: kernel = mean of the 8 codes", got, hand, atol=1e-6)
    step.agree("one cell: kernel = twin", got, twin, atol=1e-6)


# %% [markdown]
# ## Against the twin
#
# The scene's octree (levels 3, 4, 5), 4-bit codes (K = 16), F = 16. The forward must equal the twin's
# and, exactly, the plain gather of the hard table D_k[argmax C_v]; the gradients of the logits and of
# the codebooks must equal what autograd finds through the twin's one-hot / softmax surrogate.

# %%
def against_twin(step: Step, octree: SparseOctree):
    flat, points, logits, codebooks = setup(octree)
    logits.requires_grad_(True)
    codebooks.requires_grad_(True)
    hard = codebooks.detach()[level_of_vertex(flat) * K + logits.detach().argmax(dim=1)]
    g = torch.Generator().manual_seed(3)
    for lod in (1, 3):
        out = ops.vq_gather(points, flat, logits, codebooks, lod, BITS)
        ref = reference.vq_gather(points, flat, logits, codebooks, lod, BITS)
        step.agree(f"vq_gather, lod {lod}: features", out, ref, atol=ATOL32, rtol=RTOL32)
        step.agree(f"vq_gather, lod {lod}: = gather of the hard table", out, ops.gather(points, flat, hard, lod),
                   atol=0.0)
        cot = torch.randn(out.shape, generator=g).to(out)
        grads = torch.autograd.grad(out, (logits, codebooks), cot)
        grads_ref = torch.autograd.grad(ref, (logits, codebooks), cot)
        step.agree(f"vq_gather, lod {lod}: dL/dlogits", grads[0], grads_ref[0], atol=ATOL32, rtol=RTOL32)
        step.agree(f"vq_gather, lod {lod}: dL/dcodebooks", grads[1], grads_ref[1], atol=1e-4, rtol=1e-5)
    return flat, points, logits.detach(), codebooks.detach()


# %% [markdown]
# ## gradcheck in float64
#
# The codebooks enter linearly: gradcheck checks dD directly. The logits do not enter the forward's
# value smoothly at all (argmax), so their gradcheck runs on a function whose *value* is the soft
# model gather(softmax(C) @ D) and whose *gradient* is the op's:
# `hard + (soft_value - hard).detach()`. Finite differences of that function then check that the
# kernel's dC is exactly the softmax Jacobian the straight-through estimator prescribes. The logits are
# drawn with a clear maximum, so a finite-difference step never flips an argmax.

# %%
def tiny_octree() -> SparseOctree:
    """Four level-2 cells (and their level-1 parents): a few dozen vertices, so gradcheck stays quick."""
    return SparseOctree.from_leaf_codes(2, morton_encode(torch.tensor([[1, 1, 1], [2, 1, 1], [2, 2, 1], [1, 2, 2]])))


def gradcheck(step: Step) -> None:
    device = runtime.device()
    octree = tiny_octree().to(device)
    flat = octree.flat((1, 2))
    g = torch.Generator().manual_seed(4)
    cells = torch.tensor([[1, 1, 1], [2, 1, 1], [2, 2, 1], [1, 2, 2]], dtype=torch.float64)
    points = ((cells[torch.randint(0, 4, (30,), generator=g)] + torch.rand(30, 3, generator=g, dtype=torch.float64))
              * 0.5 - 1).to(device)
    logits = torch.randn(flat.num_vertices, 4, generator=g, dtype=torch.float64).to(device)
    codebooks = torch.randn(2 * 4, 2, generator=g, dtype=torch.float64).to(device)
    step.gradcheck("vq_gather, codebooks (float64)", lambda d: ops.vq_gather(points, flat, logits, d, 2, 2),
                   (codebooks.requires_grad_(True),), nondet_tol=1e-12)
    codebooks = codebooks.detach()
    top = logits.argmax(dim=1)
    logits = logits.clone()
    logits[torch.arange(logits.shape[0]), top] += 1.0  # the maximum leads by at least 1

    def surrogate(c: torch.Tensor) -> torch.Tensor:
        soft_value = reference.gather(points, flat, soft_table(flat, c, codebooks, 4), 2)
        hard = ops.vq_gather(points, flat, c, codebooks, 2, 2)
        return hard + (soft_value - hard).detach()

    step.gradcheck("vq_gather, logits via the surrogate", surrogate, (logits.requires_grad_(True),), nondet_tol=1e-12)


# %% [markdown]
# ## Soft against hard, and what the straight-through gradient is
#
# For a loss *linear* in z the straight-through gradient of the logits is exactly the soft model's
# gradient: both are the softmax Jacobian applied to D_k g_v with the same g (checked). For a loss that
# depends on z itself, such as ½|z - y|², g is evaluated at the hard forward's z instead of the soft
# one: the straight-through gradient is the soft model's gradient at another point. The picture:
# softmax(C_v) and the one-hot code of 8 vertices (left, middle), and the two logit gradients of the MSE
# loss against each other (right).

# %%
def soft_vs_hard(step: Step, flat, points, logits, codebooks) -> None:
    C = logits.clone().requires_grad_(True)
    Cs = logits.clone().requires_grad_(True)
    z_hard = ops.vq_gather(points, flat, C, codebooks, 3, BITS)
    z_soft = reference.gather(points, flat, soft_table(flat, Cs, codebooks, K), 3)
    g = torch.Generator().manual_seed(5)
    cot = torch.randn(z_hard.shape, generator=g).to(z_hard)
    (st_linear,) = torch.autograd.grad(z_hard, C, cot, retain_graph=True)
    (soft_linear,) = torch.autograd.grad(z_soft, Cs, cot, retain_graph=True)
    step.agree("linear loss: straight-through = soft gradient", st_linear, soft_linear, atol=ATOL32, rtol=1e-4)
    target = torch.randn(z_hard.shape, generator=g).to(z_hard) * 0.5
    (st,) = torch.autograd.grad(0.5 * ((z_hard - target) ** 2).sum(), C)
    (soft,) = torch.autograd.grad(0.5 * ((z_soft - target) ** 2).sum(), Cs)
    touched = (st != 0).any(dim=1)
    a, b = st[touched].flatten().cpu(), soft[touched].flatten().cpu()
    cosine = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    step.log(f"  MSE loss: cosine similarity of the straight-through and soft logit gradients {cosine:.3f} "
             f"over {int(touched.sum())} vertices")

    fig = figure(9.6, 3.0)
    axes = fig.subplots(1, 3)
    pick = torch.nonzero(touched).flatten()[:8].cpu()
    s = torch.softmax(logits[pick.to(logits.device)], dim=1).cpu().numpy()
    onehot = np.eye(K)[s.argmax(axis=1)]
    for ax, data, title in ((axes[0], s, "soft: softmax(C_v)"), (axes[1], onehot, "hard: onehot(argmax C_v)")):
        im = ax.imshow(data, cmap="Greys", vmin=0, vmax=float(data.max()), aspect="auto")
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_xlabel("code j", fontsize=8)
        ax.set_ylabel("vertex", fontsize=8)
        ax.set_title(title, fontsize=8)
        ax.set_xticks(range(0, K, 4))
        ax.set_yticks(range(len(pick)))
    ax = axes[2]
    ax.scatter(b.numpy(), a.numpy(), s=2, alpha=0.4)
    lim = float(max(a.abs().max(), b.abs().max()))
    ax.plot([-lim, lim], [-lim, lim], color="k", lw=0.6)
    ax.set_xlabel("soft model dL/dC", fontsize=8)
    ax.set_ylabel("straight-through dL/dC", fontsize=8)
    ax.set_title(f"MSE loss: cosine {cosine:.2f}", fontsize=8)
    step.picture(fig, "codebook_straight_through.png")


# %% [markdown]
# ## Timing
#
# 16,384 packed ray samples, 3 levels, F = 16, 4-bit codes. The twin materialises (samples x 8 x 2^b) logits per
# level, which is what the fused kernel avoids.

# %%
def measure(step: Step, num_points: int = 16384) -> None:
    octree = scene_octree()
    flat, _, logits, codebooks = setup(octree)
    points = sample_points(octree, num_points // 16, seed=5)[:num_points]
    logits.requires_grad_(True)
    codebooks.requires_grad_(True)
    fwd = lambda: ops.vq_gather(points, flat, logits, codebooks, 3, BITS)  # noqa: E731
    twin = lambda: reference.vq_gather(points, flat, logits, codebooks, 3, BITS)  # noqa: E731
    step.time("codebook", f"{points.shape[0]} samples, {len(LEVELS)} levels, F = {F}, b = {BITS}", fwd, twin,
              backward_of(fwd, [logits, codebooks]), backward_of(twin, [logits, codebooks]))


# %%
def run(out: Path, log=print) -> dict:
    runtime.ensure()
    with Step("codebook", out, log) as step:
        one_cell(step)
        octree = scene_octree()
        flat, points, logits, codebooks = against_twin(step, octree)
        gradcheck(step)
        soft_vs_hard(step, flat, points, logits, codebooks)
        measure(step)
        return step.result()


if __name__ == "__main__":
    run(Path("tvq-tour"))
