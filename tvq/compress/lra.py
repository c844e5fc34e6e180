"""LRA: post-hoc low-rank approximation of a trained raw field by the KLT (the VQ-AD paper's Table 2).

Per level, the features F (m x k) are centred on their mean and projected on the top ``rank`` principal
directions (the KLT basis: eigenvectors of the covariance); the file stores the mean and basis
((1 + rank) x k, fp16) and the coefficients (m x rank, fp16). A reader reconstructs coeffs @ basis + mean.
"""

from __future__ import annotations

import torch

from ..codec import Chunk
from ..codec.model import FP16_CODECS, _fp16, field_chunks
from ..field import RadianceField


def klt(features: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean (k,), basis (rank, k), coefficients (m, rank)) of the rank-``rank`` KLT of ``features``."""
    x = features.detach().double()
    mean = x.mean(0)
    centred = x - mean
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    basis = vectors[:, -rank:].flip(1).T.contiguous()  # the top rank directions, largest first
    return mean.float(), basis.float(), (centred @ basis.T).float()


def chunk_options(field: RadianceField, rank: int) -> dict:
    """``tvq.codec.encode`` options that store ``field``'s levels as their KLT truncation."""
    grid = field.grid
    starts = grid.flat.vertex_start.tolist()

    def per_level(k: int, level: int) -> list[Chunk]:
        mean, basis, coeffs = klt(grid.features[starts[k]:starts[k + 1]], rank)
        return [Chunk("klt-basis", level, _fp16(torch.cat([mean[None], basis])), FP16_CODECS),
                Chunk("klt-coeffs", level, _fp16(coeffs), FP16_CODECS)]

    return {"kind": "lra", "rank": rank, "chunks": field_chunks(field, per_level=per_level)}
