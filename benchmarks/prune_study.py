"""How much of a trained octree do the rays use? Prune a model's finest-level cells post hoc by their largest
rendering weight over the training rays, and measure what each pruned model keeps.

    python -m benchmarks.prune_study --model runs/lego-b6/model.tvq --scene ../shared/data/lego --downscale 4 \
        --out benchmarks/results/prune-study.json

Weights w = T (1 - exp(-sigma dt)) come from the training renderer (every sample, no early termination) over
``--rays`` random training rays at ``--downscale``; a cell's score is the largest weight of a sample inside
it (``tvq.prune``). For each threshold, and for each threshold with the kept cells dilated by their 26
occupied neighbours: cells and vertices at the finest level, PSNR of the finest LOD on every ``--every``-th
test view, samples the fast path decodes per pixel, and the .tvq bytes. No retraining: this measures how
concentrated the trained density is, not what a run that prunes and trains on would reach.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from benchmarks._timing import device_name, write_json
from tvq import codec, runtime


@torch.no_grad()
def cell_weights(field, views, background, rays: int, seed: int = 0) -> torch.Tensor:
    from tvq.data.rays import pixel_rays
    from tvq.prune import add_cell_max_weights

    codes = field.octree.cells[field.octree.max_level]
    device = codes.device
    origins, dirs = zip(*(pixel_rays(torch.as_tensor(v.K), torch.as_tensor(v.c2w), width=v.image.shape[1],
                                     height=v.image.shape[0]) for v in views))
    origins, dirs = torch.cat(origins).float(), torch.cat(dirs).float()
    pick = torch.randperm(origins.shape[0], generator=torch.Generator().manual_seed(seed))[:rays]
    origins, dirs = origins[pick].to(device), dirs[pick].to(device)
    best = torch.zeros(codes.numel(), device=device)
    for start in range(0, origins.shape[0], 1 << 13):
        add_cell_max_weights(best, field, origins[start:start + (1 << 13)], dirs[start:start + (1 << 13)], background)
    return best


def dilate(codes: torch.Tensor, keep: torch.Tensor, level: int) -> torch.Tensor:
    """``keep`` plus the occupied cells among the 26 neighbours of every kept cell."""
    from tvq.octree import morton_decode, morton_encode

    offsets = torch.stack(torch.meshgrid(*[torch.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    near = (morton_decode(codes[keep])[:, None, :] + offsets.to(codes.device)[None]).reshape(-1, 3)
    near = near[((near >= 0) & (near < (1 << level))).all(1)]
    key = torch.unique(morton_encode(near))
    rows = torch.searchsorted(codes, key).clamp(max=codes.numel() - 1)
    out = keep.clone()
    out[rows[codes[rows] == key]] = True
    return out


def pruned(field, keep: torch.Tensor):
    """The field on the octree of the kept finest cells (and their ancestors), every vertex keeping its row."""
    from tvq.field import FeatureOctree, RadianceField
    from tvq.octree import SparseOctree
    from tvq.prune import vertex_rows

    grid, octree = field.grid, field.octree
    new = SparseOctree.from_leaf_codes(octree.max_level, octree.cells[octree.max_level][keep], center=octree.center,
                                       scale=octree.scale)
    out = FeatureOctree(new, num_lods=grid.num_lods, feature_dim=grid.feature_dim, kind=grid.kind, bits=grid.bits,
                        seed=grid.seed, learned=False)
    rows = vertex_rows(grid, new)
    with torch.no_grad():
        if grid.kind == "raw":
            out.features.copy_(grid.features[rows])
        else:
            out.codebooks.copy_(grid.codebooks)
            out.indices.copy_(grid.indices[rows])
    return RadianceField(out, field.decoder).eval()


def measure(field, views, background, header) -> dict:
    from tvq.eval import evaluate
    from tvq.infer import FastRenderer
    from tvq.render import RenderOptions

    row = evaluate(field, views, background, lods=[field.num_lods - 1], options=RenderOptions(early_stop=True))[0]
    renderer = FastRenderer(field, background)
    spp = [float(renderer.render(v.K, v.c2w, v.image.shape[1], v.image.shape[0])["samples"].float().mean())
           for v in views]
    data, _ = codec.encode(field, background=header["background"], cameras=header.get("cameras"))
    level = field.octree.max_level
    return {"psnr": row["psnr"], "cells": field.octree.num_cells(level), "vertices": field.octree.num_vertices(level),
            "samples_per_pixel": sum(spp) / len(spp), "file_bytes": len(data)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a .tvq")
    parser.add_argument("--scene", required=True)
    parser.add_argument("--downscale", type=int, default=4)
    parser.add_argument("--rays", type=int, default=1 << 20)
    parser.add_argument("--every", type=int, default=5, help="every n-th test view")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2, 3e-2])
    parser.add_argument("--arch", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    info = runtime.init(args.arch)
    from tvq.data import load_scene
    from tvq.export import open_model

    model = open_model(Path(args.model))
    scene = load_scene(Path(args.scene), downscale=args.downscale)
    views = scene.split("test")[::args.every]
    t0 = time.perf_counter()
    best = cell_weights(model.field, scene.split("train"), model.background, args.rays)
    level = model.field.octree.max_level
    codes = model.field.octree.cells[level]
    result = {"device": device_name(str(runtime.device())), "arch": info.arch, "model": args.model,
              "command": "python -m benchmarks.prune_study " + " ".join(argv if argv is not None else sys.argv[1:]),
              "rays": min(args.rays, sum(v.image.shape[0] * v.image.shape[1] for v in scene.split("train"))),
              "weight_seconds": time.perf_counter() - t0, "views": len(views), "size": list(views[0].image.shape[:2]),
              "cells_with_weight_at_least": {str(q): int((best >= q).sum()) for q in [0.0] + args.thresholds + [0.1]},
              "as_trained": measure(model.field, views, model.background, model.header), "pruned": []}
    print(f"as trained: {result['as_trained']}", flush=True)
    for q in args.thresholds:
        for grow in (False, True):
            keep = best >= q
            keep = dilate(codes, keep, level) if grow else keep
            row = dict(threshold=q, dilated=grow, **measure(pruned(model.field, keep), views, model.background,
                                                            model.header))
            result["pruned"].append(row)
            print(row, flush=True)
            write_json(args.out, result)
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
