"""Benchmark: private copies of the codebook gradient (``tvq.kernels.codebook.code_replicas``).

    python -m benchmarks.bench_code_replicas --out benchmarks/results/code-replicas-h100.json   # on the GPU
    python -m benchmarks.bench_code_replicas --small --out /tmp/code-replicas-cpu.json           # CPU smoke run

In a VQ-AD backward every vertex a sample touched adds its gradient g_v into codebook row idx[v]: about a
million vertices into 2^b rows per level. With one copy of dD those atomic adds queue on few addresses;
with P copies vertex v adds into copy v mod P and the copies are summed after the kernel. This times
``ops.hash_gather`` (the fixed-index step) and ``ops.vq_gather`` (learned indices), forward+backward, at
b = 4 and 6, for P in 1, 4, 8, 32, with uniform code use and with a skewed one (code j of a level used
with weight 1 / (j + 1)).

Scene: the surface-shell octree and packed samples of ``benchmarks.bench_gather_codebook`` (levels 5..8,
2^20 samples, F = 16). Small: levels 3..6, 2^14 samples.
"""

from __future__ import annotations

import sys

import torch

from benchmarks._timing import device_name, standalone_main, time_ms
from benchmarks.bench_gather_codebook import packed_samples, shell_octree
from tvq import ops
from tvq.kernels import codebook

REPLICAS = (1, 4, 8, 32)


def code_draws(level_of_vertex: torch.Tensor, K: int, skewed: bool, generator) -> torch.Tensor:
    """Stacked codebook rows per vertex: uniform codes, or code j drawn with weight 1 / (j + 1)."""
    weights = 1 / torch.arange(1, K + 1, dtype=torch.float64) if skewed else torch.ones(K, dtype=torch.float64)
    codes = torch.multinomial(weights, level_of_vertex.numel(), replacement=True, generator=generator)
    return (codes.to(level_of_vertex.device) + level_of_vertex * K).to(torch.int32)


def run(device: str, small: bool) -> dict:
    device = torch.device(device)
    max_level, samples, F = (6, 1 << 14, 16) if small else (8, 1 << 20, 16)
    levels = tuple(range(max_level - 3, max_level + 1))
    lod, iters = len(levels), 5 if small else 20
    octree = shell_octree(max_level)
    flat = octree.to(device).flat(levels)
    points = packed_samples(octree, samples).to(device)
    V = flat.num_vertices
    level_of_vertex = torch.repeat_interleave(torch.arange(lod), torch.tensor(flat.vertex_counts())).to(device)
    g = torch.Generator().manual_seed(2)
    cotangent = torch.randn(samples, F, generator=g).to(device)
    rows = []
    for bits in (4, 6):
        K = 1 << bits
        codebooks = (torch.randn(lod * K, F, generator=g) * 0.01).to(device).requires_grad_(True)
        for skewed in (False, True):
            indices = code_draws(level_of_vertex, K, skewed, g)
            # logits whose argmax is that code: the learned-index op reads the same rows
            logits = torch.randn(V, K, generator=g).to(device)
            logits[torch.arange(V, device=device), indices.long() - level_of_vertex * K] += 10
            logits.requires_grad_(True)
            ops_ = {"hash_gather": (lambda: ops.hash_gather(points, flat, indices, codebooks, lod), [codebooks]),
                    "vq_gather": (lambda: ops.vq_gather(points, flat, logits, codebooks, lod, bits),
                                  [logits, codebooks])}
            for name, (forward, params) in ops_.items():
                def step():
                    for p in params:
                        p.grad = None
                    forward().backward(cotangent)

                for P in REPLICAS:
                    with codebook.replicas_at_most(P):
                        t = time_ms(step, device, warmup=2, iters=iters)
                        used = codebook.code_replicas(lod * K)
                    rows.append({"op": name, "bits": bits, "codes": "skewed" if skewed else "uniform",
                                 "replicas": used, "forward_backward": t})
                    print(f"{name:12s} b={bits} {rows[-1]['codes']:8s} P={P:2d}: "
                          f"{t['median_ms']:.3f} ms (back to back {t['back_to_back_ms']:.3f})", flush=True)
    return {"device": device_name(device), "samples": samples, "levels": list(levels), "vertices": V,
            "vertex_counts": flat.vertex_counts(), "feature_dim": F, "default_replicas": codebook.MAX_REPLICAS, "rows": rows}


if __name__ == "__main__":
    sys.exit(standalone_main(run, __doc__.splitlines()[0], "levels 3..6, 2^14 samples (CPU smoke run)"))
