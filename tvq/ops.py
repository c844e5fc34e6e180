"""One ``torch.autograd.Function`` per differentiable op, over the Taichi kernels in ``tvq.kernels``.

Every Function hands the kernels detached, contiguous tensors (a tensor with ``requires_grad`` would make
Taichi allocate a gradient buffer on every call) and calls the op's hand-written backward kernel.
The pure-torch twin of each op is in ``tvq.reference``.
"""

from __future__ import annotations

import torch

from . import runtime


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A detached, contiguous view of ``t`` for passing to a Taichi kernel."""
    return t.detach().contiguous()


# --- gather + codebook (tvq/kernels/gather.py, tvq/kernels/codebook.py) ---


def _ti_real(dtype: torch.dtype):
    import taichi as ti

    if dtype == torch.float32:
        return ti.f32
    if dtype == torch.float64:
        return ti.f64
    raise TypeError(f"feature kernels take float32 or float64 tensors, got {dtype}")


def _tree(flat) -> torch.Tensor:
    """The packed int64 octree the gather kernels take (``kernels.gather.pack_octree``), built once per
    ``FlatOctree`` and kept on it, with its vertex count (read here once, not synced on every call)."""
    tree = getattr(flat, "_kernel_tree", None)
    if tree is None or tree.device != flat.cell_codes.device:
        from .kernels.gather import pack_octree

        tree = flat._kernel_tree = pack_octree(flat)
        flat._kernel_num_vertices = flat.num_vertices
    return tree


def _num_vertices(flat) -> int:
    _tree(flat)
    return flat._kernel_num_vertices


def _check_lod(flat, lod: int) -> int:
    lod = int(lod)
    if not 0 <= lod <= len(flat.levels):
        raise ValueError(f"lod must be in 0..{len(flat.levels)} (levels of this run), got {lod}")
    return lod


def _points_like(points: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be (S, 3), got {tuple(points.shape)}")
    return _plain(points.to(device=table.device, dtype=table.dtype))


def _forward_buffers(pts: torch.Tensor, F: int, lod: int, like: torch.Tensor):
    """The output (S, F) and the per-level cell rows (S, lod) the forward writes in full."""
    out = torch.empty(pts.shape[0], F, dtype=like.dtype, device=like.device)
    rows = torch.empty(pts.shape[0], max(lod, 1), dtype=torch.int32, device=like.device)
    if pts.shape[0] == 0 or lod == 0:
        out.zero_()
    return out, rows


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points, features, flat, lod):
        from .kernels.gather import gather_kernels

        runtime.ensure()
        real, F = _ti_real(features.dtype), features.shape[1]
        pts, tree = _points_like(points, features), _tree(flat)
        out, rows = _forward_buffers(pts, F, lod, features)
        if pts.shape[0] > 0 and lod > 0:
            gather_kernels(real, F).forward(pts, tree, _plain(features), out, rows, lod)
        ctx.save_for_backward(pts, rows)
        ctx.flat, ctx.lod, ctx.real, ctx.shape = flat, lod, real, features.shape
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # the backward kernels record no graph
    def backward(ctx, grad_out):
        from .kernels.gather import gather_kernels, scatter_threads

        pts, rows = ctx.saved_tensors
        grad = torch.zeros(ctx.shape, dtype=grad_out.dtype, device=grad_out.device)
        if pts.shape[0] > 0 and ctx.lod > 0:
            kernels = gather_kernels(ctx.real, ctx.shape[1])
            kernels.backward(pts, _tree(ctx.flat), rows, _plain(grad_out), grad, ctx.lod,
                             scatter_threads(pts.shape[0], ctx.lod, kernels.chunk))
        return None, grad, None, None


def gather(points: torch.Tensor, flat, features: torch.Tensor, lod: int) -> torch.Tensor:
    """Features (S, F) at normalised points (S, 3): the sum over the first ``lod`` levels of ``flat`` of the
    trilinear interpolation of ``features`` (V, F; rows by ``flat.vertex_start``), zero where a level's
    cell is unoccupied or the point lies outside [-1, 1]^3. Differentiable in ``features``."""
    return _Gather.apply(points, features, flat, _check_lod(flat, lod))


def _vertex_and_code_gradients(V: int, code_shape, replicas: int, like: torch.Tensor) -> torch.Tensor:
    """One zeroed buffer for a codebook op's backward: g_v for the V vertices, then ``replicas`` private
    copies of the codebook gradient (``tvq.kernels.codebook``)."""
    rows, F = code_shape
    return torch.zeros(V + replicas * rows, F, dtype=like.dtype, device=like.device)


def _code_gradient(grad_rows: torch.Tensor, V: int, code_shape, replicas: int) -> torch.Tensor:
    """The codebook gradient: the sum of its private copies after the V vertex rows."""
    return grad_rows[V:].view(replicas, *code_shape).sum(0)


class _VQGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points, logits, codebooks, flat, lod):
        from .kernels.codebook import vq_kernels

        runtime.ensure()
        real, F = _ti_real(codebooks.dtype), codebooks.shape[1]
        pts, tree, C, D = _points_like(points, codebooks), _tree(flat), _plain(logits), _plain(codebooks)
        idx = torch.empty(C.shape[0], dtype=torch.int32, device=C.device)  # written for the used levels
        out, rows = _forward_buffers(pts, F, lod, D)
        if pts.shape[0] > 0 and lod > 0:
            vq_kernels(real, F, C.shape[1]).forward(pts, tree, C, D, idx, out, rows, lod)
        ctx.save_for_backward(pts, rows, C, D, idx)
        ctx.flat, ctx.lod, ctx.real = flat, lod, real
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # the backward kernels record no graph
    def backward(ctx, grad_out):
        from .kernels.codebook import code_replicas, vq_kernels
        from .kernels.gather import scatter_threads

        pts, rows, C, D, idx = ctx.saved_tensors
        V, F = C.shape[0], D.shape[1]
        P = code_replicas(D.shape[0])
        grad_rows = _vertex_and_code_gradients(V, D.shape, P, D)
        grad_logits = torch.zeros_like(C)
        if pts.shape[0] > 0 and ctx.lod > 0:
            kernels = vq_kernels(ctx.real, F, C.shape[1])
            kernels.backward(pts, _tree(ctx.flat), rows, _plain(grad_out), C, D.t().contiguous(), idx, grad_rows,
                             grad_logits, ctx.lod, scatter_threads(pts.shape[0], ctx.lod, kernels.chunk), P)
        return None, grad_logits, _code_gradient(grad_rows, V, D.shape, P), None, None


def vq_gather(points: torch.Tensor, flat, logits: torch.Tensor, codebooks: torch.Tensor, lod: int,
              bits: int) -> torch.Tensor:
    """The gather over vector-quantised levels (VQ-AD): vertex v of level k reads codebook row
    ``codebooks[k * 2^bits + argmax(logits[v])]`` (logits (V, 2^bits), codebooks (n_levels * 2^bits, F)).
    Gradients to both through the straight-through softmax (``tvq.kernels.codebook``)."""
    if int(bits) < 1:
        raise ValueError(f"bits must be at least 1, got {bits}")
    K = 1 << int(bits)
    if logits.ndim != 2 or logits.shape[1] != K:
        raise ValueError(f"logits must be (V, {K}) for {bits} bits, got {tuple(logits.shape)}")
    if codebooks.ndim != 2 or codebooks.shape[0] != len(flat.levels) * K:
        raise ValueError(f"codebooks must be ({len(flat.levels)} * {K}, F), got {tuple(codebooks.shape)}")
    if logits.dtype != codebooks.dtype:
        raise TypeError(f"logits and codebooks must share a dtype, got {logits.dtype} and {codebooks.dtype}")
    return _VQGather.apply(points, logits, codebooks, flat, _check_lod(flat, lod))


class _HashGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points, codebooks, indices, flat, lod):
        from .kernels.codebook import hash_kernels

        runtime.ensure()
        real, F = _ti_real(codebooks.dtype), codebooks.shape[1]
        pts, tree, D = _points_like(points, codebooks), _tree(flat), _plain(codebooks)
        idx = _plain(indices.to(device=D.device, dtype=torch.int32))
        out, rows = _forward_buffers(pts, F, lod, D)
        if pts.shape[0] > 0 and lod > 0:
            hash_kernels(real, F).forward(pts, tree, D, idx, out, rows, lod)
        ctx.save_for_backward(pts, rows, idx)
        ctx.flat, ctx.lod, ctx.real, ctx.shape = flat, lod, real, D.shape
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # the backward kernels record no graph
    def backward(ctx, grad_out):
        from .kernels.codebook import code_replicas, hash_kernels
        from .kernels.gather import scatter_threads

        pts, rows, idx = ctx.saved_tensors
        V, F = idx.shape[0], ctx.shape[1]
        P = code_replicas(ctx.shape[0])
        grad_rows = _vertex_and_code_gradients(V, ctx.shape, P, grad_out)
        if pts.shape[0] > 0 and ctx.lod > 0:
            kernels = hash_kernels(ctx.real, F)
            kernels.backward(pts, _tree(ctx.flat), rows, _plain(grad_out), idx, grad_rows, ctx.lod,
                             scatter_threads(pts.shape[0], ctx.lod, kernels.chunk), P)
        return None, _code_gradient(grad_rows, V, ctx.shape, P), None, None, None


def hash_gather(points: torch.Tensor, flat, indices: torch.Tensor, codebooks: torch.Tensor, lod: int) -> torch.Tensor:
    """The gather with fixed indices (the hash baseline): vertex v reads ``codebooks[indices[v]]``, where
    ``indices`` (V,) are rows of the stacked codebooks (level k's vertices use rows k*2^b .. (k+1)*2^b - 1).
    Differentiable in ``codebooks``."""
    if indices.ndim != 1 or indices.shape[0] != _num_vertices(flat):
        raise ValueError(f"indices must be ({_num_vertices(flat)},), got {tuple(indices.shape)}")
    return _HashGather.apply(points, codebooks, indices, flat, _check_lod(flat, lod))


def importance(points: torch.Tensor, flat, weights: torch.Tensor, lod: int | None = None) -> torch.Tensor:
    """Per-vertex importance (V,): the sum over samples of ``weights`` (S,) times the sample's trilinear
    weight on the vertex, over the first ``lod`` levels of ``flat`` (all by default). Forward only."""
    from .kernels.gather import scatter_threads
    from .kernels.importance import importance_kernel

    runtime.ensure()
    lod = len(flat.levels) if lod is None else _check_lod(flat, lod)
    if weights.shape != (points.shape[0],):
        raise ValueError(f"weights must be ({points.shape[0]},), got {tuple(weights.shape)}")
    w = weights.detach()
    pts = _points_like(points, w)
    out = torch.zeros(_num_vertices(flat), 1, dtype=w.dtype, device=w.device)
    if pts.shape[0] > 0 and lod > 0:
        rows = torch.empty(pts.shape[0], lod, dtype=torch.int32, device=w.device)
        importance_kernel(_ti_real(w.dtype))(pts, _tree(flat), _plain(w[:, None]), rows, out, lod,
                                             scatter_threads(pts.shape[0], lod))
    return out[:, 0]


# --- composite (tvq/kernels/composite.py) ---

from typing import NamedTuple  # noqa: E402


class Composited(NamedTuple):
    """Per-ray results of ``composite``; ``weights`` (S,) only when asked for (not differentiable).

    colour, opacity and depth are column views of one (R, 6) buffer (``.contiguous()`` where a
    contiguous tensor is needed)."""

    colour: torch.Tensor  # (R, 3)
    opacity: torch.Tensor  # (R,)
    depth: torch.Tensor  # (R,)
    weights: torch.Tensor | None = None


WARP_RAYS_LIMIT = 1 << 26  # the warp kernels index lanes with int32: 16 per ray


def _composite_kernels(device: torch.device, dtype: str, with_weights: bool, num_rays: int):
    """16 lanes of a warp per ray on CUDA in float32 (coalesced), one thread per ray otherwise."""
    from .kernels.composite import kernels, warp_kernels

    if device.type == "cuda" and dtype == "f32" and num_rays < WARP_RAYS_LIMIT:
        return warp_kernels(with_weights)
    return kernels(dtype, with_weights)


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sigma, rgb, t, dt, ray_offsets, background, early_stop_eps, with_weights):
        from .kernels.composite import OUT_COLUMNS

        dtype = "f64" if sigma.dtype == torch.float64 else "f32"
        num_rays = ray_offsets.numel() - 1
        forward_kernel, _ = _composite_kernels(sigma.device, dtype, with_weights, num_rays)
        sigma_, rgb_, t_, dt_, offsets = _plain(sigma), _plain(rgb), _plain(t), _plain(dt), _plain(ray_offsets)
        bg = _plain(background).reshape(-1, 3)
        out = torch.empty(num_rays, OUT_COLUMNS, dtype=sigma.dtype, device=sigma.device)
        weights = torch.empty(sigma.shape[0] if with_weights else 0, dtype=sigma.dtype, device=sigma.device)
        if num_rays:
            forward_kernel(sigma_, rgb_, t_, dt_, offsets, bg, 1 if bg.shape[0] > 1 else 0, early_stop_eps, out,
                           weights if with_weights else out[0])
        ctx.save_for_backward(sigma_, rgb_, t_, dt_, offsets, out)
        ctx.dtype, ctx.early_stop_eps, ctx.bg_shape = dtype, early_stop_eps, background.shape
        ctx.mark_non_differentiable(weights)
        return out[:, 0:3], out[:, 3], out[:, 4], weights

    @staticmethod
    @torch.autograd.function.once_differentiable  # the backward kernels record no graph
    def backward(ctx, g_colour, g_opacity, g_depth, _g_weights):
        sigma_, rgb_, t_, dt_, offsets, out = ctx.saved_tensors
        _, backward_kernel = _composite_kernels(sigma_.device, ctx.dtype, False, offsets.numel() - 1)
        grad_in = torch.empty(sigma_.shape[0], 4, dtype=sigma_.dtype, device=sigma_.device)
        if sigma_.shape[0]:
            cots = [_plain(g.to(sigma_.dtype)) for g in (g_colour, g_opacity, g_depth)]
            backward_kernel(sigma_, rgb_, t_, dt_, offsets, ctx.early_stop_eps, out, *cots, grad_in)
        d_background = None
        if ctx.needs_input_grad[5]:
            d_background = out[:, 5:6] * g_colour  # dC/dbg = T_n
            if len(ctx.bg_shape) == 1:
                d_background = d_background.sum(dim=0)
            d_background = d_background.reshape(ctx.bg_shape)
        return grad_in[:, 0], grad_in[:, 1:4], None, None, None, d_background, None, None


def composite(
    sigma: torch.Tensor,
    rgb: torch.Tensor,
    t: torch.Tensor,
    dt: torch.Tensor,
    ray_offsets: torch.Tensor,
    background: torch.Tensor | float | tuple | None = None,
    *,
    early_stop_eps: float = 0.0,
    return_weights: bool = False,
) -> Composited:
    """Volume-render packed samples (math in ``tvq.kernels.composite``).

    ``sigma`` (S,) densities, ``rgb`` (S, 3) colours, ``t``/``dt`` (S,) and ``ray_offsets`` (R+1,) int64
    as in ``tvq.sampling.PackedSamples``; ``background`` one colour (3,) or one per ray (R, 3), default
    black. Differentiable in ``sigma``, ``rgb`` and a tensor ``background``; ``t`` and ``dt`` are constants.
    ``early_stop_eps`` > 0 (inference: 1e-4) stops each ray once its transmittance falls below it.
    """
    runtime.ensure()
    if sigma.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"composite takes float32 or float64 tensors, got {sigma.dtype}")
    num_samples = sigma.shape[0]
    if sigma.ndim != 1 or rgb.shape != (num_samples, 3) or t.shape != (num_samples,) or dt.shape != (num_samples,):
        raise ValueError(f"sigma (S,), rgb (S, 3), t (S,), dt (S,) expected, got {tuple(sigma.shape)}, "
                         f"{tuple(rgb.shape)}, {tuple(t.shape)}, {tuple(dt.shape)}")
    if ray_offsets.ndim != 1 or ray_offsets.dtype != torch.int64 or ray_offsets.numel() < 1:
        raise ValueError("ray_offsets must be a (R+1,) int64 tensor")
    if any(x.device != sigma.device for x in (rgb, t, dt, ray_offsets)):
        raise ValueError("sigma, rgb, t, dt and ray_offsets must be on one device")
    if sigma.device.type != runtime.device().type:
        raise ValueError(f"composite inputs must be on {runtime.device()} (the Taichi backend's device), "
                         f"got {sigma.device}")
    num_rays = ray_offsets.numel() - 1
    if background is None:
        background = 0.0
    background = torch.as_tensor(background, dtype=sigma.dtype, device=sigma.device)
    if background.ndim == 0:
        background = background.expand(3)
    if background.shape not in ((3,), (num_rays, 3)):
        raise ValueError(f"background must be (3,) or ({num_rays}, 3), got {tuple(background.shape)}")
    rgb, t, dt = rgb.to(sigma.dtype), t.to(sigma.dtype), dt.to(sigma.dtype)
    colour, opacity, depth, weights = _Composite.apply(sigma, rgb, t, dt, ray_offsets, background,
                                                       float(early_stop_eps), bool(return_weights))
    return Composited(colour, opacity, depth, weights if return_weights else None)


# --- training rays (tvq/kernels/rays.py) ---


def training_rays(ids: torch.Tensor, Ks: torch.Tensor, c2ws: torch.Tensor, images: torch.Tensor):
    """Origins, unit directions and target colours (N, 3) of the pixels ``ids`` (N,) of views with
    intrinsics ``Ks`` (V, 3, 3), camera-to-world ``c2ws`` (V, 4, 4) and ``images`` (V, H, W, 3), the id of
    column i of row j of view v being v H W + j W + i (math in ``tvq.kernels.rays``). Float32 tensors on the
    Taichi backend's device; ids must name pixels (not checked: the caller draws them)."""
    from .kernels.rays import training_rays_kernel

    runtime.ensure()
    ids = _plain(ids.long())
    n = ids.shape[0]
    out = torch.empty(3, n, 3, dtype=torch.float32, device=ids.device)
    if n:
        training_rays_kernel()(ids, _plain(Ks), _plain(c2ws), _plain(images), out[0], out[1], out[2])
    return out[0], out[1], out[2]
