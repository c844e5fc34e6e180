"""Ray marching and compositing: the Taichi kernels against a vectorised pure-torch compositor.

Compositing: 2^20 samples over 2^16 rays (``--small``: 2^14 over 2^10), a Poisson-like number of samples
per ray, forward and forward+backward wall time (each call synced, and back to back), GPU kernel time and
peak memory for ``tvq.ops.composite`` and for the nerfacc-style torch version (per-ray exclusive prefix
sums of tau from one global cumsum, segment sums with ``index_add_``, autograd backward). Ray marching:
rays/s through a lego-like octree (a surface shell of boxes and a sphere, level 8, about 10^5 cells;
``--small``: level 7) with 2^16 rays (``--small``: 2^10), aimed from a sphere around the cube, with and
without skipping empty blocks.

    python -m benchmarks.bench_raymarch_composite [--small] [--out results.json]
"""

from __future__ import annotations

import sys

import math

import torch

from benchmarks._timing import device_name, gpu_kernel_ms, peak_memory_bytes, standalone_main, time_ms


# calls of well under a millisecond whose wall time is host-bound and noisy: many of them
SHORT_CALLS = dict(warmup=20, iters=200)


def composite_torch(sigma, rgb, t, dt, ray_ids, ray_offsets, background):
    """Vectorised compositing in plain torch (the way nerfacc's ``render_weight_from_density`` and
    ``accumulate_along_rays`` work without their CUDA scan): (colour, opacity, depth)."""
    num_rays = ray_offsets.numel() - 1
    tau = sigma * dt
    # a global prefix sum of 2^20 taus in float32 loses the per-ray differences: sum in float64
    inclusive = torch.cumsum(tau.double(), dim=0)
    before_ray = torch.cat([inclusive.new_zeros(1), inclusive])[ray_offsets[:-1]]
    exclusive = (inclusive - before_ray[ray_ids]).to(tau.dtype) - tau
    weights = torch.exp(-exclusive) * (1 - torch.exp(-tau))
    colour = torch.zeros(num_rays, 3, dtype=rgb.dtype, device=rgb.device).index_add(0, ray_ids, weights[:, None] * rgb)
    opacity = torch.zeros(num_rays, dtype=rgb.dtype, device=rgb.device).index_add(0, ray_ids, weights)
    depth = torch.zeros(num_rays, dtype=rgb.dtype, device=rgb.device).index_add(0, ray_ids, weights * t)
    return colour + (1 - opacity)[:, None] * background, opacity, depth


def packed_inputs(num_rays: int, num_samples: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.bincount(torch.randint(0, num_rays, (num_samples,), generator=g), minlength=num_rays)
    offsets = torch.zeros(num_rays + 1, dtype=torch.int64)
    offsets[1:] = counts.cumsum(0)
    ray_ids = torch.repeat_interleave(torch.arange(num_rays), counts)
    dt = torch.rand(num_samples, generator=g) * 0.02 + 0.005
    t = torch.rand(num_samples, generator=g) * 3 + 0.5
    sigma = torch.rand(num_samples, generator=g) * 20
    rgb = torch.rand(num_samples, 3, generator=g)
    to = lambda x: x.to(device)  # noqa: E731
    return dict(sigma=to(sigma), rgb=to(rgb), t=to(t), dt=to(dt), ray_ids=to(ray_ids), ray_offsets=to(offsets),
                background=torch.ones(3, device=device))


def bench_composite(device, num_rays: int, num_samples: int) -> dict:
    from tvq.ops import composite

    x = packed_inputs(num_rays, num_samples, device)
    sigma = x["sigma"].requires_grad_()
    rgb = x["rgb"].requires_grad_()
    g = torch.Generator().manual_seed(1)
    cots = [torch.randn(num_rays, 3, generator=g).to(device), torch.randn(num_rays, generator=g).to(device),
            torch.randn(num_rays, generator=g).to(device)]

    def taichi_forward():
        return composite(sigma, rgb, x["t"], x["dt"], x["ray_offsets"], x["background"])[:3]

    def torch_forward():
        return composite_torch(sigma, rgb, x["t"], x["dt"], x["ray_ids"], x["ray_offsets"], x["background"])

    def step(forward):
        def run():
            outputs = forward()
            return torch.autograd.grad(outputs, [sigma, rgb], grad_outputs=cots)
        return run

    results = {"rays": num_rays, "samples": num_samples}
    for name, forward in (("taichi", taichi_forward), ("torch", torch_forward)):
        results[name] = {
            "forward": time_ms(forward, device, **SHORT_CALLS),
            "forward_backward": time_ms(step(forward), device, **SHORT_CALLS),
            "peak_bytes_forward_backward": peak_memory_bytes(step(forward), device),
            "gpu_kernel_ms_forward_backward": gpu_kernel_ms(step(forward), device),
        }
    a, b = taichi_forward(), torch_forward()
    ga, gb = step(taichi_forward)(), step(torch_forward)()
    results["max_abs_diff"] = {
        "outputs": max(float((u - v).detach().abs().max()) for u, v in zip(a, b)),
        "grad_sigma": float((ga[0] - gb[0]).abs().max()),
        "grad_rgb": float((ga[1] - gb[1]).abs().max()),
    }
    for phase in ("forward", "forward_backward"):
        results[f"speedup_{phase}"] = (results["torch"][phase]["median_ms"]
                                       / results["taichi"][phase]["median_ms"])
        results[f"speedup_{phase}_back_to_back"] = (results["torch"][phase]["back_to_back_ms"]
                                                    / results["taichi"][phase]["back_to_back_ms"])
    # the part of the wall time no compositing kernel can remove: this harness around a Function that launches none
    results["harness_floor_forward_backward"] = time_ms(step(lambda: _NoKernels.apply(sigma, rgb, num_rays)), device,
                                                        **SHORT_CALLS)
    if device.type == "cuda":
        results["kernel_layouts"] = compare_layouts(x, cots)
    kernel_ms = [results[n]["gpu_kernel_ms_forward_backward"] for n in ("torch", "taichi")]
    if None not in kernel_ms:  # CUDA only
        results["speedup_forward_backward_gpu_kernels"] = kernel_ms[0] / kernel_ms[1]
    return results


class _NoKernels(torch.autograd.Function):
    """Shaped like ``tvq.ops.composite`` (one (R, 6) output buffer, one (S, 4) gradient buffer, column views
    out and in) but launching no kernel: forward+backward through it times the harness, autograd and the
    allocations alone."""

    @staticmethod
    def forward(ctx, sigma, rgb, num_rays):
        ctx.num_samples = sigma.shape[0]
        out = sigma.new_empty(num_rays, 6)
        return out[:, 0:3], out[:, 3], out[:, 4]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_colour, g_opacity, g_depth):
        grad_in = g_colour.new_empty(ctx.num_samples, 4)
        return grad_in[:, 0], grad_in[:, 1:4], None


def compare_layouts(x: dict, cots) -> dict:
    """GPU time of the forward and backward kernels alone: one thread per ray against 16 and 32 lanes of
    a warp per ray (``tvq.ops.composite`` runs 16 on CUDA)."""
    from tvq.kernels.composite import OUT_COLUMNS, kernels, warp_kernels

    device = x["sigma"].device
    plain = [x[k].detach() for k in ("sigma", "rgb", "t", "dt")]
    offsets, bg = x["ray_offsets"], x["background"].reshape(1, 3)
    out = torch.empty(offsets.numel() - 1, OUT_COLUMNS, device=device)
    grad_in = torch.empty(plain[0].shape[0], 4, device=device)
    results = {}
    for name, (forward, backward) in (("thread_per_ray", kernels("f32")), ("warp_16_lanes", warp_kernels(lanes=16)),
                                      ("warp_32_lanes", warp_kernels(lanes=32))):
        def run():
            forward(*plain, offsets, bg, 0, 0.0, out, out[0])
            backward(*plain, offsets, 0.0, out, *cots, grad_in)
        results[name] = {"gpu_kernel_ms_forward_backward": gpu_kernel_ms(run, device),
                         "forward_backward": time_ms(run, device, **SHORT_CALLS)}
    return results


def lego_like_octree(level: int, device):
    """A surface shell of a few boxes and a sphere (the lego scene's rough extent) at ``level``."""
    from tvq.octree import SparseOctree, morton_encode

    res = 1 << level
    h = 2.0 / res
    idx = torch.arange(res, dtype=torch.float32)
    centres = (idx + 0.5) * h - 1
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")

    def box(p, centre, half):
        q = (p - torch.tensor(centre)).abs() - torch.tensor(half)
        return q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)

    codes = []
    for k in range(res):
        p = torch.stack([xx, yy, torch.full_like(xx, float(centres[k]))], dim=-1)
        sdf = torch.minimum(box(p, (0.0, 0.0, -0.55), (0.6, 0.4, 0.07)), box(p, (-0.2, 0.0, -0.2), (0.2, 0.2, 0.3)))
        sdf = torch.minimum(sdf, (p - torch.tensor([0.35, 0.0, 0.05])).norm(dim=-1) - 0.3)
        sdf = torch.minimum(sdf, box(p, (0.3, 0.1, 0.45), (0.05, 0.25, 0.05)))
        j, i = torch.nonzero(sdf.abs() < h * math.sqrt(3) / 2, as_tuple=True)
        codes.append(morton_encode(torch.stack([i, j, torch.full_like(i, k)], dim=-1)))
    return SparseOctree.from_leaf_codes(level, torch.cat(codes)).to(device)


def camera_rays(num_rays: int, device, seed: int = 0):
    """Rays from random points on a sphere of radius 2.5 towards random points near the object."""
    g = torch.Generator().manual_seed(seed)
    origins = torch.nn.functional.normalize(torch.randn(num_rays, 3, generator=g), dim=1) * 2.5
    targets = (torch.rand(num_rays, 3, generator=g) * 2 - 1) * 0.7
    dirs = torch.nn.functional.normalize(targets - origins, dim=1)
    return origins.to(device), dirs.to(device)


def bench_raymarch(device, level: int, num_rays: int) -> dict:
    from tvq.sampling import raymarch

    octree = lego_like_octree(level, device)
    origins, dirs = camera_rays(num_rays, device)
    results = {"level": level, "cells": octree.num_cells(level), "rays": num_rays, "samples_per_cell": 16}
    for name, kwargs in (("inference", {}), ("training_jitter", {"jitter": True, "seed": 1}),
                         ("inference_plain_dda", {"skip_empty": False})):
        samples = raymarch(octree, origins, dirs, **kwargs)
        timing = time_ms(lambda: raymarch(octree, origins, dirs, **kwargs), device)
        results[name] = {**timing, "rays_per_s": num_rays / (timing["median_ms"] * 1e-3),
                         "samples": samples.num_samples,
                         "hit_fraction": float((samples.counts() > 0).float().mean())}
    results["speedup_skip_empty"] = (results["inference_plain_dda"]["median_ms"]
                                     / results["inference"]["median_ms"])
    return results


def run(device: str, small: bool) -> dict:
    from tvq import runtime

    runtime.ensure()
    device = torch.device(device)
    if small:
        composite_size, march = (1 << 10, 1 << 14), (7, 1 << 10)
    else:
        composite_size, march = (1 << 16, 1 << 20), (8, 1 << 16)
    return {
        "benchmark": "raymarch_composite",
        "device": device_name(device),
        "taichi_arch": runtime.ensure().arch,
        "small": small,
        "composite": bench_composite(device, *composite_size),
        "raymarch": bench_raymarch(device, *march),
    }


def main(argv=None) -> int:
    return standalone_main(run, __doc__.splitlines()[0], "small sizes (CPU, CI)", argv)


if __name__ == "__main__":
    sys.exit(main())
