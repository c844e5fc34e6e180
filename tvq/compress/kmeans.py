"""kmVQ: post-hoc vector quantisation of a trained raw field (the VQ-AD paper's Table 2 baseline).

Each level's features are clustered into 2^b codes by k-means (``tvq.kmeans``); every vertex keeps the
index of its nearest centroid. The result is a decoded-VQ field (hard codes, no logits), stored exactly
like a VQ-AD model, so the two compare at equal bytes.
"""

from __future__ import annotations

import torch

from ..field import FeatureOctree, RadianceField
from ..kmeans import kmeans


@torch.no_grad()
def quantize(field: RadianceField, bits: int, seed: int = 0, iters: int = 20, log=print) -> RadianceField:
    raw = field.grid
    grid = FeatureOctree(raw.octree, num_lods=raw.num_lods, feature_dim=raw.feature_dim, kind="vq", bits=bits,
                         seed=seed, learned=False)
    codes = 1 << bits
    starts = raw.flat.vertex_start.tolist()
    for k, level in enumerate(raw.levels):
        rows = slice(starts[k], starts[k + 1])
        centroids, assign = kmeans(raw.features[rows], codes, iters=iters, seed=seed + k)
        grid.codebooks[k * codes:(k + 1) * codes] = centroids
        grid.indices[rows] = (assign + k * codes).to(torch.int32)
        log(f"kmeans: level {level}: {starts[k + 1] - starts[k]:,} vertices -> {codes} codes")
    return RadianceField(grid, field.decoder)
