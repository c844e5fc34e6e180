"""VQRF's building blocks (Li et al., *Compressing Volumetric Radiance Fields to 1 MB*, 2023), per octree level.

Importance. A sample's importance is its rendering weight I_i = T_i alpha_i; a vertex collects the
importance of the samples around it, shared by the trilinear weights (eq. 3-4: ``tvq.ops.importance``).

Thresholds by the cumulative score rate (eq. 5): with F(theta) = sum_l I_l 1{I_l < theta} / sum_l I_l, the
fraction of the total importance held by the vertices below theta,

    theta_p = F^-1(beta_p)  (eq. 6): the vertices below theta_p hold at most beta_p of the importance;
                                      they are pruned (a cell all of whose vertices are pruned leaves),
    theta_k = F^-1(beta_k)  (eq. 10): the vertices at or above theta_k (holding at least 1 - beta_k of the
                                       importance) are kept unquantised.

``quantile_threshold`` returns the largest theta the ascending importances allow with F(theta) <= beta.

Codebook (eq. 8-9). Importance-weighted k-means (seeded by importance-weighted k-means++), approximated by
mini-batches: each step assigns a random batch of vectors u_j (weights I_j) to their nearest codes, and each
code that received importance s_k = sum_{j -> k} I_j moves to

    b_k := lambda_d b_k + (1 - lambda_d) / s_k * sum_{j -> k} I_j u_j        (lambda_d = 0.8);

code expiry: every code's capacity is a moving average (the same lambda_d) of the importance it receives;
of the J codes of least capacity (J = 10), those below ``DEAD`` times the mean capacity are re-seeded, so
that no code stays dead. The paper re-seeds them from the batch's most important vectors; here they take
the vectors the codebook serves worst (largest I_j ||u_j - b||^2), which lands them on the clusters that
lack a code instead of next to codes that already serve the most important ones.
"""

from __future__ import annotations

import torch

from ..codec.model import dequantize_uint8  # noqa: F401  (the reader's inverse of quantize_uint8)
from ..kmeans import full_precision_matmul, kmeans_plus_plus, nearest

DEAD = 0.5  # a code whose capacity is below this fraction of the mean counts as under-used
SEED_SAMPLE = 1 << 16  # rows the k-means++ seeding draws from


def quantile_threshold(importance: torch.Tensor, beta: float) -> float:
    """theta = F^-1(beta): the vertices with importance < theta hold at most ``beta`` of the total (eq. 5-6,
    10); +inf for beta = 1 (at beta = 0 the vertices of zero importance are still below it)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"the quantile must be in [0, 1], got {beta}")
    values = importance.detach().double().flatten().sort().values
    total = float(values.sum())
    if beta >= 1.0:
        return float("inf")
    if values.numel() == 0 or total <= 0:
        return 0.0
    cumulative = values.cumsum(0) / total
    count = int(torch.searchsorted(cumulative, torch.tensor([beta], dtype=torch.float64, device=values.device),
                                   right=True))
    # ties: the vertices equal to the threshold stay, so the pruned share never exceeds beta
    while count > 0 and count < values.numel() and values[count - 1] == values[count]:
        count -= 1
    return float("inf") if count >= values.numel() else float(values[count])


@torch.no_grad()
def importance_codebook(x: torch.Tensor, importance: torch.Tensor, k: int, steps: int = 1000, batch: int = 10000,
                        decay: float = 0.8, expire: int = 10, seed: int = 0,
                        init: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Codebook (k, F) of the rows of ``x`` (N, F) weighted by ``importance`` (N,) (eq. 8-9 with code expiry;
    see the module docstring), and the nearest code of every row (N,). ``init`` (k, F) replaces the
    k-means++ seeds."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"the codebook needs a non-empty (N, F) tensor, got {tuple(x.shape)}")
    if k < 1 or not 0 <= decay < 1 or expire < 0:
        raise ValueError(f"bad codebook options: k={k}, decay={decay}, expire={expire}")
    x = x.detach().float()
    w = importance.detach().float().clamp(min=0).to(x.device)
    if not bool(w.sum() > 0):
        w = torch.ones_like(w)
    n = x.shape[0]
    gen = torch.Generator(device=x.device).manual_seed(seed)
    # seeds: importance-weighted k-means++ on a sample of the rows that carry importance
    carrying = torch.nonzero(w > 0).flatten()
    sample = carrying[torch.randperm(carrying.numel(), generator=gen, device=x.device)[:SEED_SAMPLE]]
    capacity = torch.zeros(k, device=x.device)
    with full_precision_matmul():
        if init is not None:
            if tuple(init.shape) != (k, x.shape[1]):
                raise ValueError(f"init must be ({k}, {x.shape[1]}), got {tuple(init.shape)}")
            codes = init.detach().float().to(x.device).clone()
        else:
            codes = kmeans_plus_plus(x[sample], k, w[sample], gen).clone()
        for _ in range(steps):
            rows = torch.randint(0, n, (min(batch, n),), generator=gen, device=x.device)
            u, iw = x[rows], w[rows]
            assign, dist = nearest(u, codes)
            mass = torch.zeros(k, device=x.device).index_add_(0, assign, iw)
            sums = torch.zeros_like(codes).index_add_(0, assign, u * iw[:, None])
            hit = mass > 0
            codes[hit] = decay * codes[hit] + (1 - decay) * sums[hit] / mass[hit, None]
            capacity.mul_(decay).add_((1 - decay) * mass)
            j = min(expire, k, rows.numel())
            if j:
                lowest = capacity.topk(j, largest=False).indices
                dead = lowest[capacity[lowest] < DEAD * capacity.mean()]
                if dead.numel():  # re-seeded from the vectors the codebook serves worst
                    codes[dead] = u[(iw * dist).topk(dead.numel()).indices]
                    capacity[dead] = capacity.mean()  # a fair start, not the next expiry
        assign, _ = nearest(x, codes)
    return codes, assign


def vertex_classes(importance: torch.Tensor, prune: float, keep: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(pruned, kept) masks of one level's vertices: below theta_p = F^-1(``prune``), at or above theta_k =
    F^-1(``keep``) (so the kept ones hold at least 1 - keep of the importance; they stay unquantised, the
    rest are vector-quantised)."""
    if not 0.0 <= prune <= keep <= 1.0:
        raise ValueError(f"need 0 <= prune <= keep <= 1, got prune={prune}, keep={keep}")
    theta_p, theta_k = quantile_threshold(importance, prune), quantile_threshold(importance, keep)
    pruned = importance < theta_p
    return pruned, (importance >= theta_k) & ~pruned


def surviving_cells(cell_vertices: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """(N,) mask of the cells (corner rows (N, 8) into the level's vertex table) that keep at least one
    unpruned corner: a cell whose vertices are all pruned leaves the structure."""
    return ~pruned[cell_vertices.long()].all(dim=1)


@torch.no_grad()
def vertex_importance(field, origins: torch.Tensor, dirs: torch.Tensor, background: torch.Tensor,
                      samples_per_cell: int = 4, chunk: int = 1 << 13) -> torch.Tensor:
    """Importance (V,) of every vertex of the field's feature levels over the rays (world-space origins and
    unit directions (R, 3)): each sample of the training marcher (every sample, no early termination)
    weighs T alpha, shared among the 8 corners of its cell at every level by the trilinear weights."""
    from ..ops import importance
    from ..prune import sample_weights

    octree = field.octree
    device = octree.device
    out = torch.zeros(int(field.grid.flat.vertex_start[-1]), device=device)
    for start in range(0, origins.shape[0], chunk):
        found = sample_weights(field, octree.normalize(origins[start:start + chunk].to(device).float()),
                               dirs[start:start + chunk].to(device).float(), background.to(device),
                               samples_per_cell, max_samples_per_ray=1 << 16)
        if found is not None:
            points, weights = found
            out += importance(points, field.grid.flat, weights.float())
    return out


def quantize_uint8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """8-bit uniform quantisation of the kept features, per channel: ``(q uint8 (N, F), scale (F,), offset
    (F,))`` with x ~ offset + scale * q, scale = (max - min) / 255 (1 for a constant channel), so the error
    is at most scale / 2. Scale and offset are rounded to fp16 (as stored) before q is computed."""
    x = x.detach().float()
    if x.shape[0] == 0:
        zeros = torch.zeros(x.shape[1], device=x.device)
        return torch.zeros(x.shape, dtype=torch.uint8, device=x.device), zeros + 1, zeros
    lo, hi = x.min(dim=0).values, x.max(dim=0).values
    offset = lo.half().float()
    scale = ((hi - offset) / 255).half().float()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    # fp16 rounding can leave the top value a hair above 255 steps: the clamp keeps it in range
    q = ((x - offset) / scale).round().clamp(0, 255).to(torch.uint8)
    return q, scale, offset




class QuantizedGrid(torch.nn.Module):
    """A raw grid's vertices as VQRF holds them for joint fine-tuning (the assignments fixed): the
    vector-quantised rows ``vq_rows`` read ``codebook[assign]``, the kept rows their own features, every
    other (pruned) row 0. The feature table is assembled in each forward pass from the parameters, so a
    code's gradient is the sum of the gradients of the vertices that use it. Stands in for a
    ``FeatureOctree`` in a ``RadianceField``. ``level_codes``: how many of the codebook's rows each level
    owns (one codebook per level, concatenated)."""

    indices_fixed = False  # (as a raw grid: the trainer's rate schedule reads it)

    def __init__(self, raw, codebook: torch.Tensor, assign: torch.Tensor, kept_rows: torch.Tensor,
                 kept: torch.Tensor, vq_rows: torch.Tensor | None = None, level_codes: list[int] | None = None):
        super().__init__()
        from ..field import FeatureOctree

        if not isinstance(raw, FeatureOctree) or raw.kind != "raw":
            raise ValueError("a QuantizedGrid stands on a raw feature grid")
        self.octree, self.levels, self.flat = raw.octree, raw.levels, raw.flat
        self.num_lods, self.feature_dim, self.kind, self.bits = raw.num_lods, raw.feature_dim, "raw", 0
        num_vertices = raw.flat.num_vertices
        is_kept = torch.zeros(num_vertices, dtype=torch.bool, device=codebook.device)
        is_kept[kept_rows] = True
        if vq_rows is None:  # every vertex that is not kept is quantised
            vq_rows = torch.nonzero(~is_kept).flatten()
        elif bool(is_kept[vq_rows].any()):
            raise ValueError("a vertex cannot be both kept and quantised")
        if assign.shape != vq_rows.shape or kept.shape != (kept_rows.numel(), raw.feature_dim):
            raise ValueError("assignments must cover every quantised vertex, kept features every kept one")
        self.level_codes = list(level_codes) if level_codes is not None else [codebook.shape[0]]
        if sum(self.level_codes) != codebook.shape[0]:
            raise ValueError("the levels' code counts must add up to the codebook's rows")
        self.num_vertices = num_vertices
        self.codebook = torch.nn.Parameter(codebook.detach().float().clone())
        self.kept = torch.nn.Parameter(kept.detach().float().clone())
        self.register_buffer("assign", assign.long())
        self.register_buffer("vq_rows", vq_rows.long())
        self.register_buffer("kept_rows", kept_rows.long())

    def table(self) -> torch.Tensor:
        """The (V, F) feature table these parameters give (differentiable; pruned rows 0)."""
        rows = torch.cat([self.vq_rows, self.kept_rows])
        values = torch.cat([self.codebook.index_select(0, self.assign), self.kept])
        zeros = values.new_zeros(self.num_vertices, self.feature_dim)
        return zeros.index_copy(0, rows, values)

    def grid_parameters(self) -> list[torch.nn.Parameter]:
        return [self.codebook, self.kept]

    def forward(self, points: torch.Tensor, lod: int) -> torch.Tensor:
        from .. import ops

        return ops.gather(points, self.flat, self.table(), lod + 1)
