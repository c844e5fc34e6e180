"""Weighted k-means for codebooks: k-means++ seeding on a subsample, then Lloyd iterations on everything.

Used to start a VQ feature grid from trained raw features (``tvq.train``: the VQ warm start) and, with
per-vector importance as weights, for VQRF-style post-training quantisation. Distances are computed in
row chunks, so N x k never has to fit in memory at once.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def full_precision_matmul():
    """Distances through matmul in full float32, even where the trainer enabled TF32 (whose 10-bit
    mantissa would send some points to the wrong centroid)."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def squared_distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """||x_i - c_j||^2 for every row of x (N, F) and centroid (k, F), clamped at 0 (float rounding)."""
    d = (x * x).sum(1, keepdim=True) - 2 * x @ centroids.T + (centroids * centroids).sum(1)[None]
    return d.clamp_(min=0)


def nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest centroid per row, and its squared distance."""
    index = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    dist = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for s in range(0, x.shape[0], chunk):
        d = squared_distances(x[s:s + chunk], centroids)
        dist[s:s + chunk], index[s:s + chunk] = d.min(dim=1)
    return index, dist


def kmeans_plus_plus(x: torch.Tensor, k: int, weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """k seeds, each drawn with probability proportional to weight x squared distance to the seeds so far."""
    first = torch.multinomial(weights, 1, generator=generator)
    centroids = [x[first]]
    best = squared_distances(x, centroids[0])[:, 0]
    for _ in range(1, k):
        p = weights * best
        if not bool(p.sum() > 0):  # fewer distinct points than k: repeat one
            centroids.append(centroids[-1])
            continue
        pick = torch.multinomial(p, 1, generator=generator)
        centroids.append(x[pick])
        best = torch.minimum(best, squared_distances(x, x[pick])[:, 0])
    return torch.cat(centroids)


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, weights: torch.Tensor | None = None, iters: int = 20, seed: int = 0,
           seed_sample: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted k-means of the rows of ``x`` (N, F): ``(centroids (k, F), assignment (N,))``.

    ``weights`` (N,) >= 0 (default 1) weigh each row in the seeding and in the centroid means. Seeding uses
    a random subsample of at most ``seed_sample`` rows; a cluster left empty keeps its centroid.
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans needs a non-empty (N, F) tensor, got {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"kmeans needs k >= 1, got {k}")
    with full_precision_matmul():
        return _kmeans(x.detach().float(), k, weights, iters, seed, seed_sample)


def _kmeans(x, k, weights, iters, seed, seed_sample):
    n = x.shape[0]
    w = torch.ones(n, device=x.device) if weights is None else weights.detach().float().clamp(min=0)
    if not bool(w.sum() > 0):
        w = torch.ones(n, device=x.device)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    candidates = torch.nonzero(w > 0).flatten()  # seeds come from rows that carry weight
    sample = candidates[torch.randperm(candidates.numel(), generator=generator, device=x.device)[:seed_sample]]
    centroids = kmeans_plus_plus(x[sample], k, w[sample], generator)
    for _ in range(iters):
        assign, _ = nearest(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x * w[:, None])
        mass = torch.zeros(k, device=x.device).index_add_(0, assign, w)
        filled = mass > 0
        centroids[filled] = sums[filled] / mass[filled, None]
    assign, _ = nearest(x, centroids)
    return centroids, assign
