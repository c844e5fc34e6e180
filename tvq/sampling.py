"""Packed ray samples: the ray marcher's output and the layout every per-sample op reads.

Samples of all rays live in flat arrays (as in nerfacc): ray r owns rows
``ray_offsets[r]:ray_offsets[r + 1]``, ordered front to back; per sample, ``t`` (distance along the unit
direction, in normalised units), ``dt`` (the length of the interval the sample stands for) and
``ray_ids``. A ray that misses every occupied cell owns no rows.

``raymarch`` fills them from an octree level (kernel and math in ``tvq.kernels.raymarch``); its twin is
``tvq.reference.raymarch_reference``. It runs in two halves, ``count_samples`` (samples per ray, their total
copied to the host behind an event) and ``fill_samples``, so a training step can count the next batch ahead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import runtime
from .errors import TvqError
from .octree import SparseOctree

_NO_CAP = 1 << 62


@dataclass
class PackedSamples:
    ray_offsets: torch.Tensor  # (R+1,) int64, ray_offsets[0] = 0
    t: torch.Tensor  # (S,) sample distance along the ray
    dt: torch.Tensor  # (S,) interval length
    ray_ids: torch.Tensor  # (S,) int32

    @property
    def num_rays(self) -> int:
        return self.ray_offsets.numel() - 1

    @property
    def num_samples(self) -> int:
        return self.t.numel()

    def counts(self) -> torch.Tensor:
        """(R,) int64 samples per ray."""
        return self.ray_offsets[1:] - self.ray_offsets[:-1]

    def positions(self, origins: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        """(S, 3) sample points x = o[ray] + t d[ray]."""
        return sample_positions(self, origins, dirs)


def sample_positions(samples: PackedSamples, origins: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """(S, 3) sample points x = o[ray] + t d[ray] of packed samples."""
    ids = samples.ray_ids
    return torch.addcmul(origins.index_select(0, ids), dirs.index_select(0, ids), samples.t[:, None].to(dirs.dtype))


def _check_rays(origins: torch.Tensor, dirs: torch.Tensor) -> None:
    if origins.ndim != 2 or origins.shape[1] != 3 or dirs.shape != origins.shape:
        raise TvqError(f"rays must be (R, 3) origins and directions, got {tuple(origins.shape)} and "
                       f"{tuple(dirs.shape)}")
    if origins.dtype not in (torch.float32, torch.float64) or dirs.dtype != origins.dtype:
        raise TvqError(f"rays must be float32 (or float64), got {origins.dtype} and {dirs.dtype}")
    if origins.device.type != runtime.device().type or dirs.device != origins.device:
        raise TvqError(f"rays must be on {runtime.device()} (the Taichi backend's device), got {origins.device}")


@dataclass
class MarchCounts:
    """The first half of a ray march (``count_samples``): each ray's rows in the packed arrays, their total on
    its way to the host. Counting is queued on the device without waiting for it, so a training step can
    count the next batch's samples before its own forward and backward pass, and find the total there
    when it needs it: the host never waits for the GPU to drain (``fill_samples`` does the rest)."""

    origins: torch.Tensor  # (R, 3) in the octree's normalised cube, contiguous
    dirs: torch.Tensor  # (R, 3) unit, contiguous
    codes: torch.Tensor  # the occupied cells of the traced level
    level: int
    walk: tuple  # its radix index (``tvq.kernels.walk.walk_index``): starts, shift
    near: float
    far: float
    samples_per_cell: int
    skip_empty: bool
    ray_offsets: torch.Tensor  # (R+1,) int64
    _total: torch.Tensor  # () int64: on the host (pinned, written asynchronously), or the device's last offset
    _ready: object = None  # the CUDA event after which ``_total`` holds the count

    @property
    def num_samples(self) -> int:
        if self._ready is not None:
            self._ready.synchronize()  # waits for the counting kernels only, not for the work queued after them
        return int(self._total)


@torch.no_grad()
def count_samples(
    octree: SparseOctree,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    level: int | None = None,
    *,
    samples_per_cell: int = 16,
    near: float = 0.0,
    far: float = 1e10,
    max_samples_per_ray: int | None = None,
    max_samples: int | None = None,
    skip_empty: bool = True,
) -> MarchCounts:
    """Count the samples ``raymarch`` would take (same arguments) and queue their total's copy to the host."""
    from .kernels.raymarch import kernels
    from .kernels.walk import walk_index

    runtime.ensure()
    _check_rays(origins, dirs)
    level = octree.max_level if level is None else int(level)
    if not 0 <= level <= octree.max_level:
        raise TvqError(f"tracing level {level} is outside the octree's levels 0..{octree.max_level}")
    if samples_per_cell < 1:
        raise TvqError(f"samples_per_cell must be at least 1, got {samples_per_cell}")
    device = origins.device
    codes = octree.cells[level]
    if codes.device != device:
        codes = codes.to(device)  # keep the octree on the device to avoid this copy per call
    origins, dirs, codes = origins.contiguous(), dirs.contiguous(), codes.contiguous()
    count, _ = kernels("f32" if origins.dtype == torch.float32 else "f64", bool(skip_empty))
    starts, shift = walk_index(codes, level)

    num_rays = origins.shape[0]
    per_ray = _NO_CAP if max_samples_per_ray is None else int(max_samples_per_ray)
    offsets = torch.empty(num_rays + 1, dtype=torch.int64, device=device)
    if num_rays and codes.numel():
        count(origins, dirs, codes, starts, shift, level, float(near), float(far), int(samples_per_cell), per_ray,
              offsets)
        offsets.cumsum_(0)
        if max_samples is not None:
            offsets.clamp_(max=int(max_samples))
    else:
        offsets.zero_()
    total, ready = offsets[-1], None
    if device.type == "cuda":
        total = torch.empty((), dtype=torch.int64, pin_memory=True).copy_(total, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
    return MarchCounts(origins, dirs, codes, level, (starts, shift), float(near), float(far), int(samples_per_cell),
                       bool(skip_empty), offsets, total, ready)


@torch.no_grad()
def fill_samples(counts: MarchCounts, *, jitter: bool = False, seed: int | None = None,
                 generator: torch.Generator | None = None) -> PackedSamples:
    """The packed samples of counted rays (``raymarch``'s second half; jitter as there)."""
    from .kernels.raymarch import kernels

    c = counts
    num_samples = c.num_samples
    device, dtype = c.origins.device, c.origins.dtype
    t = torch.empty(num_samples, dtype=dtype, device=device)
    dt = torch.empty(num_samples, dtype=dtype, device=device)
    ray_ids = torch.empty(num_samples, dtype=torch.int32, device=device)
    if num_samples:
        if jitter and seed is None:
            gen_device = generator.device if generator is not None else "cpu"
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=gen_device))
        _, fill = kernels("f32" if dtype == torch.float32 else "f64", c.skip_empty)
        fill(c.origins, c.dirs, c.codes, *c.walk, c.level, c.near, c.far, c.samples_per_cell, c.ray_offsets,
             int(bool(jitter)), int(seed or 0) & 0xFFFFFFFF, t, dt, ray_ids)
    return PackedSamples(ray_offsets=c.ray_offsets, t=t, dt=dt, ray_ids=ray_ids)


@torch.no_grad()
def raymarch(
    octree: SparseOctree,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    level: int | None = None,
    *,
    samples_per_cell: int = 16,
    near: float = 0.0,
    far: float = 1e10,
    max_samples_per_ray: int | None = None,
    max_samples: int | None = None,
    jitter: bool = False,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    skip_empty: bool = True,
) -> PackedSamples:
    """Packed samples of rays (normalised space, unit ``dirs``) inside the occupied cells of ``level``.

    ``samples_per_cell`` samples per intersected occupied cell, evenly spaced over the ray's segment in
    it (midpoints of equal strata; with ``jitter`` a uniform position inside each stratum, drawn from
    ``seed``, else from ``generator``, else from torch's default generator). Only t in [near, far] is
    sampled. ``max_samples_per_ray`` keeps the first samples of each ray; ``max_samples`` keeps the
    first samples in ray order (later rays lose theirs). ``level`` defaults to the finest level.
    """
    counts = count_samples(octree, origins, dirs, level, samples_per_cell=samples_per_cell, near=near, far=far,
                           max_samples_per_ray=max_samples_per_ray, max_samples=max_samples, skip_empty=skip_empty)
    return fill_samples(counts, jitter=jitter, seed=seed, generator=generator)
