"""Post-training compression of an uncompressed (``--bits 0``) model, each method ending in a .tvq.

- ``kmeans``: the paper's kmVQ baseline: per level, k-means of the trained features into 2^b codes;
  stored like a VQ-AD model (fp16 codebook, b-bit indices).
- ``lra``: the paper's low-rank baseline: per level, the KLT (PCA) of the features truncated to ``rank``
  components; stored as fp16 mean and basis plus fp16 coefficients.

``compress_checkpoint`` is what ``tvq compress`` runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..errors import TvqError

METHODS = ("kmeans", "lra")


def compress_checkpoint(checkpoint: Path, out: Path, method: str, bits: int = 6, rank: int = 4,
                        entropy: bool = True, mlp: str = "int8", seed: int = 0, log=print) -> dict:
    """Compress a checkpoint's raw field with ``method``; returns the .tvq size report and timings."""
    from ..export import checkpoint_cameras, write_field
    from ..train import field_from_checkpoint, load_checkpoint
    from . import kmeans, lra

    if method not in METHODS:
        raise TvqError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    ckpt = load_checkpoint(checkpoint)
    if ckpt["grid_kind"] != "raw":
        raise TvqError(f"{checkpoint}: {method} compresses an uncompressed model (tvq train --bits 0); this one is "
                       f"{ckpt['grid_kind']} (export it with `tvq export` instead)")
    field = field_from_checkpoint(ckpt, torch.device("cpu"), checkpoint)
    t0 = time.perf_counter()
    if method == "kmeans":
        if not 1 <= bits <= 16:
            raise TvqError(f"--bits must be in 1..16, got {bits}")
        compressed, kwargs = kmeans.quantize(field, bits, seed=seed, log=log), {}
    else:
        if not 1 <= rank <= field.grid.feature_dim:
            raise TvqError(f"--rank must be in 1..{field.grid.feature_dim}, got {rank}")
        compressed, kwargs = field, lra.chunk_options(field, rank)
    seconds = time.perf_counter() - t0
    report = write_field(out, compressed, ckpt["scene"]["background"], checkpoint_cameras(ckpt), entropy=entropy,
                         info={"source": str(checkpoint), "method": method}, method=method, mlp=mlp, **kwargs)
    report["compress_seconds"] = seconds
    return report
