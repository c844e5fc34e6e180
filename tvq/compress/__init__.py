"""Post-training compression of an uncompressed (``--bits 0``) model, each method ending in a .tvq.

- ``kmeans``: the paper's kmVQ baseline: per level, k-means of the trained features into 2^b codes;
  stored like a VQ-AD model (fp16 codebook, b-bit indices).
- ``lra``: the paper's low-rank baseline: per level, the KLT (PCA) of the features truncated to ``rank``
  components; stored as fp16 mean and basis plus fp16 coefficients.
- ``vqrf``: VQRF (``tvq.compress.vqrf_model``): importance pruning, an importance-weighted codebook per
  level with the most important vertices kept in 8 bits, joint fine-tuning on the training rays.
- ``hybrid``: a trained VQ-AD model (``--bits b``) with VQRF's importance pruning, keep set, fine-tuning
  and 8-bit storage around its learned indices.

``compress_checkpoint`` is what ``tvq compress`` runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..errors import TvqError

METHODS = ("kmeans", "lra", "vqrf", "hybrid")


def compress_checkpoint(checkpoint: Path, out: Path, method: str, bits: int = 6, rank: int = 4,
                        entropy: bool = True, mlp: str = "int8", seed: int = 0, log=print, scene: Path | None = None,
                        downscale: int = 1, vqrf=None, eval_views: int = 5) -> dict:
    """Compress a checkpoint's raw field with ``method``; returns the .tvq size report and timings (vqrf:
    also the per-level summary and the PSNR before and after on ``eval_views`` test views)."""
    from ..export import checkpoint_cameras, write_field
    from ..train import field_from_checkpoint, load_checkpoint
    from . import kmeans, lra

    if method not in METHODS:
        raise TvqError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    ckpt = load_checkpoint(checkpoint)
    if method == "hybrid" and ckpt["grid_kind"] != "vq":
        raise TvqError(f"{checkpoint}: hybrid compresses a VQ-AD model with learned indices (tvq train --bits b); "
                       f"this one is {ckpt['grid_kind']}")
    if method != "hybrid" and ckpt["grid_kind"] != "raw":
        raise TvqError(f"{checkpoint}: {method} compresses an uncompressed model (tvq train --bits 0); this one is "
                       f"{ckpt['grid_kind']} (export it with `tvq export` instead)")
    if method in ("vqrf", "hybrid"):
        return _compress_vqrf(ckpt, checkpoint, out, scene, downscale, vqrf, entropy, mlp, eval_views, log, method)
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


def _compress_vqrf(ckpt: dict, checkpoint: Path, out: Path, scene_path, downscale: int, options, entropy: bool,
                   mlp: str, eval_views: int, log, method: str) -> dict:
    from .. import runtime
    from ..data import load_scene
    from ..eval import evaluate
    from ..export import checkpoint_cameras, open_model, write_field
    from ..job import Bar
    from ..train import TrainConfig, Trainer, field_from_checkpoint, octree_source
    from .vqrf_model import VqrfOptions, compress

    config = TrainConfig(**ckpt["config"])
    options = options or VqrfOptions()
    options.validate(config.num_lods)
    scene_path = Path(scene_path or ckpt["scene"]["root"])
    if not scene_path.is_dir():
        raise TvqError(f"{scene_path}: the checkpoint's scene is not there; pass --scene (vqrf needs its training rays)")
    scene = load_scene(scene_path, downscale=downscale)
    cams = ckpt["cameras"]
    if (scene.width, scene.height) != (cams["width"], cams["height"]):
        raise TvqError(f"{scene_path}: views of {scene.width}x{scene.height}, the checkpoint was trained on "
                       f"{cams['width']}x{cams['height']} (another --downscale?)")
    config.fill_saved_defaults(octree_source(scene, config.octree_from))  # options a checkpoint left unset
    runtime.ensure()
    device = runtime.device()
    trainer = Trainer(scene, config, Path(out).parent, log=log)
    field = field_from_checkpoint(ckpt, device, checkpoint)
    views = (scene.split("test") or scene.split("val"))[:eval_views]
    last = [field.num_lods - 1]
    before = evaluate(field, views, trainer.data.background, lods=last)[0]["psnr"] if views else None
    bar = Bar("fine-tune", options.finetune_steps, log=log)
    try:
        decoded, kwargs, report = compress(trainer, field, options, log=log, progress=lambda i, n: bar(i))
    finally:
        bar.close()
    t = time.perf_counter()
    written = write_field(out, decoded, ckpt["scene"]["background"], checkpoint_cameras(ckpt), entropy=entropy,
                          info={"source": str(checkpoint), "method": method}, method=method, mlp=mlp, **kwargs)
    report["seconds"]["write"] = time.perf_counter() - t
    # "after" is what the file renders (its decoder's weights as stored), not the field in memory
    stored = open_model(out).field if views else None
    after = evaluate(stored, views, trainer.data.background, lods=last)[0]["psnr"] if views else None
    written.update(report, psnr_before=before, psnr_after=after, eval_views=len(views),
                   compress_seconds=report["seconds"]["total"] + report["seconds"]["write"])
    return written
