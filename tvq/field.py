"""The radiance field: a multi-resolution feature octree and a small decoder MLP.

Feature levels are the ``num_lods`` finest levels of the octree (paper: levels 5..8). A point's feature is
the sum over levels up to the requested LOD of the trilinear interpolation of that level's vertex
features (zero where the level's cell is not occupied). Three ways to hold the vertex features:

- ``raw``  (NGLOD-NeRF, ``bits = 0``): a float table per level, N(0, 0.01) init.
- ``vq``   (VQ-AD, ``bits = b``): per vertex a row of 2^b logits, per level a 2^b x F codebook; the
  forward pass uses the hard code D[argmax C_v], gradients flow through a straight-through softmax.
- ``hash`` (the paper's random-index baseline): fixed pseudo-random b-bit indices, a spatial hash of each
  vertex's coordinates and level (``spatial_hash``), so a file stores only the codebooks and the seed.

A decoded VQ model (``learned=False``) holds the hard b-bit codes as a buffer instead of the logits: it
renders exactly what the trained model renders, at a fraction of the memory.

The decoder maps feature ⊕ PE(view direction) (16 + 27 = 43) -> hidden (ReLU) -> 4: density and colour
(sigmoid), shared by every LOD; hidden is 128 in the paper, 64 in tvq's training recipe. The density
activation is ``relu`` (the paper's) or ``exp`` (instant-ngp's; tvq's recipe): an opaque surface needs
sigma dt of a few units in a cell of 2/256, sigma ~ 10^3, which a ReLU reaches only through large features
and weights, an exponential at an output of ~7.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from . import ops
from .mlp import two_layer_mlp
from .octree import FlatOctree, SparseOctree

KINDS = ("raw", "vq", "hash")
HASH_PRIMES = (1, 2654435761, 805459861)  # instant-ngp's spatial hash
# median gap between the nearest and second-nearest code's logit after a warm start (README, "The logit gap":
# lego 6-bit +0.3 dB against 2, 8 loses 0.9 dB; 4-bit equal)
LOGIT_GAP = 0.5


def spatial_hash(vertex_codes: torch.Tensor, level: int, bits: int, seed: int = 0) -> torch.Tensor:
    """The hash baseline's index of each vertex (Morton codes of level ``level``): the XOR of its
    coordinates times large primes, mixed with the level and seed, modulo 2^bits. Exact in int64 (the
    coordinates stay below 2^13), so any machine recomputes the same indices from the structure."""
    from .octree import morton_decode

    ijk = morton_decode(vertex_codes.long())
    h = (ijk[..., 0] * HASH_PRIMES[0]) ^ (ijk[..., 1] * HASH_PRIMES[1]) ^ (ijk[..., 2] * HASH_PRIMES[2])
    h = h ^ (((int(seed) & 0xFFFF) << 16 | (level & 0xFF)) * 0x9E3779B1 & 0xFFFFFFFF)
    h = (h ^ (h >> 15)) * 0x2C1B3C6D & 0xFFFFFFFF  # spread the high bits into the low ones the modulo keeps
    return (h ^ (h >> 12)) & ((1 << bits) - 1)


@functools.lru_cache(maxsize=16)
def _frequencies(num_freqs: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return 2.0 ** torch.arange(num_freqs, device=device, dtype=dtype)  # made once, not two launches per step


def encode_direction(d: torch.Tensor, num_freqs: int = 4) -> torch.Tensor:
    """NeRF positional encoding of unit directions: d, sin(2^k d), cos(2^k d) -> (N, 3 + 6 num_freqs)."""
    freqs = _frequencies(num_freqs, d.device, d.dtype)
    scaled = (d[:, None, :] * freqs[:, None]).reshape(d.shape[0], 3 * num_freqs)
    return torch.cat([d, torch.sin(scaled), torch.cos(scaled)], dim=-1)


DENSITIES = ("relu", "exp")
EXP_CLAMP = 30.0  # exp's argument is clamped here in the forward pass (sigma <= 1e13: opaque, finite)
EXP_GRAD_CLAMP = 15.0  # and here in its derivative (instant-ngp's truncated exp: no step explodes)


class _TruncatedExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x.clamp(max=EXP_CLAMP))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=EXP_GRAD_CLAMP))


def activate_density(y: torch.Tensor, density: str) -> torch.Tensor:
    """sigma from the decoder's raw density output: max(y, 0) or exp(min(y, 30))."""
    return torch.relu(y) if density == "relu" else _TruncatedExp.apply(y)


class _Head(torch.autograd.Function):
    """The decoder's outputs y (S, 4) -> sigma = activate_density(y[:, 0]) and rgb = sigmoid(y[:, 1:]) as one
    autograd node: the backward writes dL/dy in one (S, 4) tensor, where separate slices of y would each
    materialise a zero-filled (S, 4) gradient and add them up (three full passes and six launches a step)."""

    @staticmethod
    def forward(ctx, y, exp_density: bool):
        raw_sigma = y[:, 0]
        sigma = torch.exp(raw_sigma.clamp(max=EXP_CLAMP)) if exp_density else torch.relu(raw_sigma)
        rgb = torch.sigmoid(y[:, 1:])
        ctx.save_for_backward(raw_sigma, rgb)
        ctx.exp_density = exp_density
        return sigma, rgb

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_sigma, grad_rgb):
        raw_sigma, rgb = ctx.saved_tensors
        both = grad_sigma is not None and grad_rgb is not None
        grad = (rgb.new_empty if both else rgb.new_zeros)(rgb.shape[0], 4)  # an unused output's part stays zero
        if grad_sigma is not None:
            slope = torch.exp(raw_sigma.clamp(max=EXP_GRAD_CLAMP)) if ctx.exp_density else (raw_sigma > 0).to(rgb.dtype)
            torch.mul(grad_sigma, slope, out=grad[:, 0])
        if grad_rgb is not None:
            torch.ops.aten.sigmoid_backward.grad_input(grad_rgb, rgb, grad_input=grad[:, 1:])
        return grad, None


def decoder_head(y: torch.Tensor, density: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Density (S,) and colour (S, 3) from the decoder's raw outputs (S, 4)."""
    return _Head.apply(y, density == "exp")


class Decoder(nn.Module):
    def __init__(self, feature_dim: int = 16, hidden: int = 128, num_freqs: int = 4, density: str = "relu"):
        super().__init__()
        if density not in DENSITIES:
            raise ValueError(f"density must be one of {DENSITIES}, got {density!r}")
        self.num_freqs, self.density = num_freqs, density
        self.net = nn.Sequential(
            nn.Linear(feature_dim + 3 + 6 * num_freqs, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 4)
        )

    def forward(self, features: torch.Tensor, dirs: torch.Tensor,
                ray_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Density (S,) and colour (S, 3) from features (S, F) and unit view directions: per sample (S, 3),
        or per ray (R, 3) with ``ray_ids`` (S,) naming each sample's ray (the encoding is then computed once
        per ray and gathered per sample)."""
        view = encode_direction(dirs, self.num_freqs)
        if ray_ids is not None:
            view = view.index_select(0, ray_ids)
        return decoder_head(two_layer_mlp(features, view, self.net[0], self.net[2]), self.density)


class FeatureOctree(nn.Module):
    """Vertex features of the feature levels of a ``SparseOctree``, held raw, as VQ codes or hashed."""

    def __init__(self, octree: SparseOctree, num_lods: int = 4, feature_dim: int = 16, kind: str = "raw",
                 bits: int = 0, init_std: float = 0.01, seed: int = 0, learned: bool = True):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown feature kind {kind!r}")
        if kind != "raw" and not 1 <= bits <= 16:
            raise ValueError(f"bits must be in 1..16 for {kind} features, got {bits}")
        if not 1 <= num_lods <= octree.max_level + 1:
            raise ValueError(f"num_lods must be in 1..{octree.max_level + 1}, got {num_lods}")
        self.kind, self.bits, self.feature_dim, self.num_lods = kind, bits, feature_dim, num_lods
        self.seed = seed
        self.octree = octree
        self.levels = tuple(range(octree.max_level - num_lods + 1, octree.max_level + 1))
        self.flat: FlatOctree = octree.flat(self.levels)
        gen = torch.Generator().manual_seed(seed)
        device = octree.device
        num_vertices = self.flat.num_vertices
        if kind == "raw":
            self.features = nn.Parameter((torch.randn(num_vertices, feature_dim, generator=gen) * init_std).to(device))
        else:
            codes = 1 << bits
            self.codebooks = nn.Parameter(
                (torch.randn(num_lods * codes, feature_dim, generator=gen) * init_std).to(device))
            if kind == "vq" and learned:
                self.logits = nn.Parameter((torch.randn(num_vertices, codes, generator=gen) * init_std).to(device))
            else:  # hash indices, or the hard codes of a decoded VQ model (zero until loaded)
                offsets = torch.repeat_interleave(torch.arange(num_lods, device=device) * codes,
                                                  torch.tensor(self.flat.vertex_counts(), device=device))
                idx = offsets if kind == "vq" else offsets + torch.cat(
                    [spatial_hash(octree.vertices[level], level, bits, seed) for level in self.levels])
                self.register_buffer("indices", idx.to(torch.int32).to(device))

    @classmethod
    @torch.no_grad()
    def quantized_from(cls, raw: "FeatureOctree", bits: int, seed: int = 0,
                       logit_gap: float = LOGIT_GAP) -> "FeatureOctree":
        """A VQ grid that starts where trained raw features are: per level, the codebook is the k-means
        centroids of that level's features, and each vertex's logits are its negative squared distances to
        the centroids, scaled so that the median gap between the nearest and the second-nearest code is
        ``logit_gap`` (the hard code is the nearest centroid; the index can still move under training). The gap
        is the softmax's temperature: a small one spreads the straight-through gradient over more codes."""
        from .kmeans import full_precision_matmul, kmeans, squared_distances

        if raw.kind != "raw":
            raise ValueError("quantized_from takes a grid of raw features")
        grid = cls(raw.octree, num_lods=raw.num_lods, feature_dim=raw.feature_dim, kind="vq", bits=bits, seed=seed)
        codes = 1 << bits
        starts = raw.flat.vertex_start.tolist()
        for k, count in enumerate(raw.flat.vertex_counts()):
            rows = slice(int(starts[k]), int(starts[k]) + count)
            features = raw.features[rows]
            centroids, _ = kmeans(features, codes, seed=seed + k)
            grid.codebooks[k * codes:(k + 1) * codes] = centroids
            logits = grid.logits[rows]
            with full_precision_matmul():
                for s in range(0, count, 1 << 16):
                    logits[s:s + (1 << 16)] = -squared_distances(features[s:s + (1 << 16)].float(), centroids)
            top2 = logits.topk(2, dim=1).values  # bits >= 1: at least two codes
            gaps = top2[:, 0] - top2[:, 1]
            gaps = gaps[gaps > 0]  # ties (duplicate centroids) would make the scale explode
            logits.mul_(logit_gap / float(gaps.median()) if gaps.numel() else 1.0)
        return grid

    def grid_parameters(self) -> list[nn.Parameter]:
        """The parameters trained at the grid learning rate (features, codebooks, logits)."""
        return [p for p in self.parameters()]

    def forward(self, points: torch.Tensor, lod: int) -> torch.Tensor:
        """Features (S, F) at normalised points (S, 3), summed over the first ``lod + 1`` feature levels."""
        num_levels = lod + 1
        if self.kind == "raw":
            return ops.gather(points, self.flat, self.features, num_levels)
        if self.learned:
            return ops.vq_gather(points, self.flat, self.logits, self.codebooks, num_levels, self.bits)
        return ops.hash_gather(points, self.flat, self.indices, self.codebooks, num_levels)

    @property
    def learned(self) -> bool:
        """VQ with trainable index logits (not hash, not a decoded model's hard codes)."""
        return self.kind == "vq" and hasattr(self, "logits")

    @property
    def indices_fixed(self) -> bool:
        """VQ with hard codes only (a decoded model, or a run past ``vq_freeze``)."""
        return self.kind == "vq" and not self.learned

    def hard_indices(self) -> torch.Tensor:
        """The b-bit code of every vertex (per level, 0..2^b-1), as stored."""
        if self.kind == "raw":
            raise ValueError("raw features have no indices")
        codes = 1 << self.bits
        if self.learned:
            return self.logits.argmax(dim=1).to(torch.int32)
        return (self.indices % codes).to(torch.int32)


class RadianceField(nn.Module):
    """Feature octree + decoder: (normalised points, view directions, LOD) -> (density, colour)."""

    def __init__(self, grid: FeatureOctree, decoder: Decoder | None = None):
        super().__init__()
        self.grid = grid
        self.decoder = decoder or Decoder(grid.feature_dim)

    @property
    def octree(self) -> SparseOctree:
        return self.grid.octree

    @property
    def num_lods(self) -> int:
        return self.grid.num_lods

    def forward(self, points: torch.Tensor, dirs: torch.Tensor, lod: int,
                ray_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Density and colour at normalised points (S, 3); ``dirs`` per sample, or per ray with ``ray_ids``."""
        return self.decoder(self.grid(points, lod), dirs, ray_ids)
