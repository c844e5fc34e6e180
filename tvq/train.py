"""Training a radiance field on a scene: the VQ-AD recipe, checkpoints, resume, pruning.

Recipe (paper defaults): Adam with lr 1e-3, the grid (features, codebooks, index logits) at 100x; each
step draws ``batch_rays`` rays uniformly over all training pixels and one LOD, each finer LOD twice as
likely as the one before (``lod_ratio``); MSE loss in sRGB against images composited on the scene background.

VQ warm start (``vq_warmup``): a VQ run first trains raw features, then each level's codebook becomes the
k-means centroids of its features and each vertex's index logits its negative distances to them, scaled to
a median top-two gap of ``vq_logit_gap`` (``FeatureOctree.quantized_from``); training goes on end to end
from there. A fraction of the budget, 0 to train VQ from the start, or None (default): until the last
pruning of a visual hull, whose unpruned vertices would otherwise each carry 2^b logits with their gradient
and two Adam moments (the memory peak of a 6-bit run), and from the start on a depth octree, which is never
pruned.

Fixed indices (``vq_freeze``): after that fraction of the budget, and not before the octree's last
pruning or subdivision, each vertex's index is fixed at the argmax of its logits; the logits and their Adam
moments are dropped, and the codebooks and decoder train on at a learning rate decaying exponentially to
``lr_decay`` (default 0.1) times the start over the rest of the budget (the full rate until then). Indices
quantised from raw features only after that fraction (a short budget) learn to the end instead. The learned
indices need the full rate until they stop (a decay over the whole run costs 6-bit lego 0.25-0.55 dB); with
fixed indices the field is a plain codebook field, which a decaying rate settles like raw features. By
default a visual hull's indices are fixed after 0.6 of the budget and a depth octree's learn to the end
(``SOURCE_DEFAULTS``).

The octree comes from depth when the scene has it (the paper's setting), else from the alpha masks (a
visual hull). A visual hull is a solid volume much larger than the visible surface, so at
``prune_at`` steps the trainer renders the training rays, keeps the finest cells whose rendering weight
reached ``prune_threshold`` somewhere, and rebuilds the octree and its parameters around them. By default
it is built and pruned one level coarser and split into 8 inside what survived (``subdivide_at``), so the
carved interior never gets vertices at the finest level (``SOURCE_DEFAULTS``).

Every random choice of a step (its LOD, its rays, the jitter of its samples) is a function of the seed and
the step number, drawn on the host without waiting for the GPU. The GPU is waited for only where a step
needs a count (its number of samples); losses are read in batches of ``LOSS_CHECK_EVERY`` steps, and the
parameters are checked for non-finite values before every checkpoint, so a diverged run stops with a
message and its last checkpoint is a good one.

Checkpoints hold everything needed to continue bit for bit: config, octree leaves, parameters, optimiser
state and the step. They are written to a temporary file and renamed.
"""

from __future__ import annotations

import math
import signal
import threading
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, ops, reference, runtime
from .data.scene import Scene
from .errors import TvqError
from .field import DENSITIES, LOGIT_GAP, Decoder, FeatureOctree, RadianceField
from .metrics import mse_to_psnr
from .octree import SparseOctree
from .optim import LazyRowAdam
from .profiling import stage
from .prune import vertex_rows
from .render import RenderOptions, march_rays, render_counted
from .sampling import MarchCounts

LOSS_CHECK_EVERY = 16  # steps between reads of the losses (each read waits for the GPU)
# options of the training recipe that a resumed run keeps from its checkpoint unless the command sets them
RECIPE_OPTIONS = ("density", "decoder_hidden", "adam_beta2", "lr_decay", "vq_freeze")
# Options whose default depends on where the octree comes from (a TrainConfig field left None takes it), as
# measured (README, "A pruned shell": lego for masks; amsterdam and livingroom for depth): a carved visual hull
# is built and pruned one level coarser, split into 8 inside what survived, pruned once more, sampled twice per
# cell, and trains its finest LOD most; a depth octree already hugs the surface and keeps the paper's sampling.
# subdivide_at 0: never. A VQ run on a visual hull fixes its indices after 0.6 of the budget (README, "Fixed
# indices": lego 6-bit 33.35 dB in 5 minutes against 32.85 dB learned to the end, 33.15 dB fixed after 0.4); on
# a depth octree, VQ from the first step, they learn to the end (the demo scene loses 0.2 dB fixed after 0.6).
SOURCE_DEFAULTS = {
    "masks": {"samples_per_cell": 2, "lod_ratio": 4.0, "subdivide_at": 2000, "vq_freeze": 0.6},
    "depth": {"samples_per_cell": 4, "lod_ratio": 2.0, "subdivide_at": 0, "vq_freeze": 1.0},
}
# a visual hull subdivides by default only when the step cap leaves the new level time to train
MIN_STEPS_PER_SUBDIVISION_STEP = 3


@dataclass
class TrainConfig:
    bits: int = 0  # 0: raw features (NGLOD-NeRF); b > 0: VQ-AD with b-bit learned indices
    hash: bool = False  # with bits > 0: fixed random indices (the paper's hash baseline)
    max_level: int = 8
    num_lods: int = 4
    feature_dim: int = 16
    decoder_hidden: int = 64  # width of the decoder MLP's hidden layer (the paper: 128)
    density: str = "exp"  # the decoder's density activation: exp (truncated, tvq.field) or relu (the paper)
    octree_from: str = "auto"  # auto | depth | masks
    dilate: int = 0  # dilate the depth octree by whole cells at the finest level
    iters: int = 2000
    minutes: float | None = None  # wall-clock budget; stops at whichever of iters/minutes comes first
    batch_rays: int = 1 << 14
    lr: float = 1e-3
    grid_lr_scale: float = 100.0
    adam_beta2: float = 0.99  # Adam's second-moment decay (instant-ngp's; the paper: 0.999)
    # learning rate at the end of the budget, relative to the start (1: constant, the paper); None: 0.1 for raw
    # features and fixed indices, 1 with indices learned to the end (their logits keep moving: a decay costs 0.4 dB)
    lr_decay: float | None = None
    # VQ: budget fraction after which the indices are fixed (the codebooks and decoder train on, the rate
    # decaying to lr_decay, default 0.1); 1: learned to the end; None: the octree source's default, or 1 where
    # raw features train past it
    vq_freeze: float | None = None
    vq_warmup: float | None = None  # VQ: budget fraction on raw features first; None: until the last pruning
    vq_logit_gap: float = LOGIT_GAP  # VQ warm start: median gap of the logits' top two codes (tvq.field)
    samples_per_cell: int | None = None  # None: the octree source's default (SOURCE_DEFAULTS); the paper: 4
    # each step trains one LOD, each finer one this many times as likely (the paper: 2); None: the source's
    lod_ratio: float | None = None
    max_samples_per_ray: int = 1024  # caps memory on rays that cross a thick (unpruned) visual hull
    seed: int = 0
    # steps after which to prune; None: none for depth, for masks 500 and 2000 and, when subdividing at N, N and N + 1000
    prune_at: tuple[int, ...] | None = None
    prune_threshold: float = 1e-3
    # step after which every finest cell is split into its 8 children: the octree is built and pruned one level
    # coarser (max_level - 1) until then, and the field gains its finest LOD there (0: never, built at max_level;
    # None: the source's default, 2000 for masks when ``iters`` is at least 3x that)
    subdivide_at: int | None = None
    eval_every: int = 500
    eval_views: int = 4  # views of the test split rendered for the periodic check
    checkpoint_every: int = 500
    checkpoint_seconds: float = 60.0  # and at least this much training time apart (a VQ checkpoint is ~1 GB)
    mask_threshold: float = 0.5
    lazy_rows: bool = False  # grid rows no sample touched keep their values and Adam moments (tvq.optim)
    random_background: bool = False  # composite each training ray on a random colour (needs alpha masks)

    def validate(self) -> None:
        if self.bits < 0 or self.bits > 12:
            raise TvqError(f"--bits must be 0 (raw features) or 1..12, got {self.bits}")
        if self.hash and self.bits == 0:
            raise TvqError("--hash needs --bits > 0 (the codebook size is 2^bits)")
        if not 1 <= self.max_level <= 12:
            raise TvqError(f"--max-level must be in 1..12, got {self.max_level}")
        if not 1 <= self.num_lods <= self.max_level + 1:
            raise TvqError(f"--num-lods must be in 1..{self.max_level + 1}, got {self.num_lods}")
        if self.octree_from not in ("auto", "depth", "masks"):
            raise TvqError(f"--octree must be auto, depth or masks, got {self.octree_from!r}")
        if self.iters < 1:
            raise TvqError(f"--iters must be at least 1 (with --minutes it is the cap), got {self.iters}")
        if self.minutes is not None and not self.minutes > 0:
            raise TvqError(f"--minutes must be positive, got {self.minutes}")
        if not 0 < self.adam_beta2 < 1:
            raise TvqError(f"--adam-beta2 must be in (0, 1), got {self.adam_beta2}")
        if self.lr_decay is not None and not 0 < self.lr_decay <= 1:
            raise TvqError(f"--lr-decay must be in (0, 1], got {self.lr_decay}")
        if self.vq_warmup is not None and not 0 <= self.vq_warmup < 1:
            raise TvqError(f"--vq-warmup must be in [0, 1), got {self.vq_warmup}")
        if self.vq_warmup and self.kind != "vq":
            raise TvqError("--vq-warmup needs --bits > 0 with learned indices (not --hash)")
        if self.vq_freeze is not None and not 0 <= self.vq_freeze <= 1:
            raise TvqError(f"--vq-freeze must be in [0, 1] (1: never), got {self.vq_freeze}")
        if self.vq_freeze is not None and self.vq_freeze < 1 and self.kind != "vq":
            raise TvqError("--vq-freeze needs --bits > 0 with learned indices (not --hash)")
        if self.vq_freeze is not None and self.vq_warmup and self.vq_freeze <= self.vq_warmup:
            raise TvqError(f"--vq-freeze ({self.vq_freeze}) must come after the end of --vq-warmup "
                           f"({self.vq_warmup})")
        if not self.vq_logit_gap > 0:
            raise TvqError(f"vq_logit_gap must be positive, got {self.vq_logit_gap}")
        if self.batch_rays < 1:
            raise TvqError("--batch-rays must be at least 1")
        if self.lod_ratio is not None and not self.lod_ratio > 0:
            raise TvqError(f"--lod-ratio must be positive, got {self.lod_ratio}")
        if self.samples_per_cell is not None and self.samples_per_cell < 1:
            raise TvqError(f"--samples-per-cell must be at least 1, got {self.samples_per_cell}")
        if self.subdivide_at is not None and self.subdivide_at < 0:
            raise TvqError(f"--subdivide-at must be a step >= 1, or 0 for never, got {self.subdivide_at}")
        if self.subdivide_at and (self.num_lods < 2 or self.max_level < 2):
            raise TvqError("--subdivide-at needs --num-lods >= 2 and --max-level >= 2 (the field trains "
                           f"one LOD fewer until then), got step {self.subdivide_at}, {self.num_lods} LODs, "
                           f"level {self.max_level}")
        if self.density not in DENSITIES:
            raise TvqError(f"--density must be one of {', '.join(DENSITIES)}, got {self.density!r}")
        if not 8 <= self.decoder_hidden <= 1024:
            raise TvqError(f"--decoder-hidden must be in 8..1024, got {self.decoder_hidden}")

    @property
    def final_lr_factor(self) -> float:
        """``lr_decay``, or its default for this kind of model (decaying over the fixed-index phase with
        ``vq_freeze``)."""
        if self.lr_decay is not None:
            return self.lr_decay
        return 0.1 if self.bits == 0 or self.freezes else 1.0

    @property
    def freeze_at(self) -> float | None:
        """The budget fraction after which a VQ run's indices are fixed, or None: never."""
        at = self.vq_freeze  # (None until the octree source's default is filled in: learned to the end)
        return at if self.kind == "vq" and at is not None and at < 1 else None

    @property
    def freezes(self) -> bool:
        """A VQ run whose indices are fixed for the end of its budget."""
        return self.freeze_at is not None

    def lr_factor(self, progress: float, indices_fixed: bool = False) -> float:
        """The learning rate relative to the start at ``progress`` (0..1) of the budget: exponential decay to
        ``final_lr_factor`` over the whole budget, or with ``vq_freeze`` the full rate until the indices are
        fixed, then the decay from ``vq_freeze`` to the end (a freeze held back by a pruning joins it late)."""
        if self.freezes:
            if not indices_fixed:
                return 1.0
            progress = max(progress - self.freeze_at, 0.0) / (1.0 - self.freeze_at)
        return self.final_lr_factor ** progress

    @property
    def kind(self) -> str:
        return "raw" if self.bits == 0 else ("hash" if self.hash else "vq")

    @property
    def build_level(self) -> int:
        """The finest level of the octree a run starts from (one coarser when it subdivides later)."""
        return self.max_level - (1 if self.subdivide_at else 0)

    def fill_source_defaults(self, source: str) -> None:
        """Give the options left None the defaults of an octree from ``source`` (depth or masks)."""
        default_subdivision = self.subdivide_at is None
        default_freeze = self.vq_freeze is None
        for key, value in SOURCE_DEFAULTS[source].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if default_freeze and (self.kind != "vq" or (self.vq_warmup or 0) >= self.vq_freeze):
            self.vq_freeze = 1.0  # raw features, a hash, or raw features trained past it: learned to the end
        if default_subdivision and self.subdivide_at * MIN_STEPS_PER_SUBDIVISION_STEP > self.iters:
            self.subdivide_at = 0
        if self.prune_at is None:
            steps = {500, 2000} | ({self.subdivide_at, self.subdivide_at + 1000} if self.subdivide_at else set())
            self.prune_at = tuple(sorted(steps)) if source == "masks" else ()

    def fill_saved_defaults(self, source: str) -> None:
        """The same for a checkpoint's config, where subdivide_at None (written before the option) means never."""
        if self.subdivide_at is None:
            self.subdivide_at = 0
        self.fill_source_defaults(source)


# ---- data on the device ----------------------------------------------------------------------------


@dataclass
class RayData:
    """All pixels of a set of views on the device, for uniform ray sampling."""

    images: torch.Tensor  # (V, H, W, 3) float32, composited on ``background``
    Ks: torch.Tensor  # (V, 3, 3)
    c2ws: torch.Tensor  # (V, 4, 4)
    background: torch.Tensor  # (3,)
    alphas: torch.Tensor | None = None  # (V, H, W) float32, when every view has one and they are asked for

    @classmethod
    def from_views(cls, views, background, device, alphas: bool = False) -> "RayData":
        keep_alpha = alphas and all(v.alpha is not None for v in views)
        return cls(
            images=torch.from_numpy(np.stack([v.image for v in views])).to(device),
            Ks=torch.from_numpy(np.stack([v.K for v in views])).float().to(device),
            c2ws=torch.from_numpy(np.stack([v.c2w for v in views])).float().to(device),
            background=torch.as_tensor(background, dtype=torch.float32, device=device),
            alphas=torch.from_numpy(np.stack([v.alpha for v in views])).to(device) if keep_alpha else None,
        )

    @property
    def num_pixels(self) -> int:
        v, h, w, _ = self.images.shape
        return v * h * w

    def sample(self, n: int, generator: torch.Generator, random_background: bool = False):
        """n random rays over all pixels: origins, directions, target colours and the background each
        target is composited on: the scene's, or with ``random_background`` (and alphas) a random colour
        per ray, so that only zero opacity renders any background right (instant-ngp's trick)."""
        v, h, w, _ = self.images.shape
        flat = torch.randint(0, v * h * w, (n,), generator=generator, device=generator.device)
        origins, dirs, target = self.rays_at(flat)
        if not random_background or self.alphas is None:
            return origins, dirs, target, self.background
        background = torch.rand(n, 3, generator=generator, device=generator.device)
        alpha = self.alphas.view(-1)[flat]
        return origins, dirs, target + (1 - alpha)[:, None] * (background - self.background), background

    def rays_at(self, flat: torch.Tensor):
        """Origins, directions and target colours of the pixels with flat ids ``flat`` (view, row, column)."""
        if self.images.dtype == torch.float32 and self.images.device.type == runtime.device().type:
            return ops.training_rays(flat, self.Ks, self.c2ws, self.images)  # one launch instead of ~15 ops
        return reference.training_rays(flat, self.Ks, self.c2ws, self.images)


@dataclass
class _Batch:
    """One training step's draws and rays, with their samples counted (``Trainer._batch``)."""

    step: int  # the step count before the step it is for
    field: weakref.ref  # the field it was counted for: a pruned, grown or quantised field needs a new count
    lod: int
    target: torch.Tensor  # (R, 3)
    background: torch.Tensor
    counts: MarchCounts
    seed: int  # of the samples' jitter


# ---- octree ----------------------------------------------------------------------------------------


def octree_source(scene: Scene, requested: str = "auto") -> str:
    """Where a scene's octree comes from: ``depth`` (the training depth points) or ``masks`` (a visual hull);
    ``auto`` takes depth when the training views have it."""
    train = scene.split("train")
    has_depth = any(v.depth is not None for v in train)
    source = ("depth" if has_depth else "masks") if requested == "auto" else requested
    if source == "depth" and not has_depth:
        raise TvqError(f"{scene.root}: --octree depth, but the training views have no depth")
    if source == "masks" and not any(v.alpha is not None for v in train):
        raise TvqError(f"{scene.root}: the scene has neither training depth nor alpha masks to build an octree")
    return source


def build_octree(scene: Scene, config: TrainConfig, device, log=print) -> tuple[SparseOctree, str]:
    """The starting octree, from the training depth points or carved from the training masks; and which."""
    train = scene.split("train")
    source = octree_source(scene, config.octree_from)
    if source == "depth":
        from .data.rays import scene_points

        points = scene_points(scene, split="train", device=device)
        if points.shape[0] == 0:
            raise TvqError(f"{scene.root}: the training depth maps hold no valid depth")
        octree = SparseOctree.from_points(points, config.build_level, dilate=config.dilate)
        log(f"octree from {points.shape[0]:,} depth points")
    else:
        Ks = torch.from_numpy(np.stack([v.K for v in train])).float().to(device)
        c2ws = torch.from_numpy(np.stack([v.c2w for v in train])).float().to(device)
        alphas = torch.from_numpy(np.stack([v.alpha if v.alpha is not None else np.ones(v.image.shape[:2], np.float32)
                                            for v in train])).to(device)
        octree = SparseOctree.from_masks(Ks, c2ws, alphas, config.build_level, threshold=config.mask_threshold)
        log(f"octree carved from {len(train)} masks (visual hull)")
    return octree, source


def vertex_report(octree: SparseOctree, levels) -> str:
    return ", ".join(f"L{l}: {octree.num_cells(l):,} cells / {octree.num_vertices(l):,} vertices" for l in levels)


# ---- checkpoints -----------------------------------------------------------------------------------


def make_field(octree: SparseOctree, config: TrainConfig, kind: str | None = None,
               learned: bool = True) -> RadianceField:
    """A fresh field for ``config`` on ``octree``; ``kind`` overrides the grid kind (raw features during a VQ warm
    start), ``learned`` False holds VQ indices fixed (``vq_freeze``). The first feature level is fixed by the
    config; an octree not yet subdivided has one LOD fewer."""
    kind = kind or config.kind
    num_lods = config.num_lods - (config.max_level - octree.max_level)
    grid = FeatureOctree(octree, num_lods=num_lods, feature_dim=config.feature_dim, kind=kind,
                         bits=0 if kind == "raw" else config.bits, seed=config.seed, learned=learned)
    torch.manual_seed(config.seed)
    decoder = Decoder(config.feature_dim, hidden=config.decoder_hidden, density=config.density)
    return RadianceField(grid, decoder).to(octree.device)


def octree_state(octree: SparseOctree) -> dict:
    return {"max_level": octree.max_level, "center": octree.center.tolist(), "scale": octree.scale,
            "leaf_codes": octree.cells[octree.max_level].cpu()}


def octree_from_state(state: dict, device) -> SparseOctree:
    return SparseOctree.from_leaf_codes(state["max_level"], state["leaf_codes"].to(device),
                                        center=state["center"], scale=state["scale"])


def load_checkpoint(path: Path) -> dict:
    """A validated checkpoint (``tvq.checkpoint.load``: plain data only, never arbitrary pickles)."""
    return checkpoint.load(path)


def field_from_checkpoint(ckpt: dict, device, source="checkpoint") -> RadianceField:
    """The trained field of a validated checkpoint; parameters that do not fit its octree are refused
    (``source`` names the file in the message)."""
    config = TrainConfig(**ckpt["config"])
    try:
        config.validate()
    except TvqError as err:
        raise TvqError(f"{source}: checkpoint config: {err}") from None
    if ckpt["octree"]["max_level"] not in (config.max_level, config.build_level):
        raise TvqError(f"{source}: checkpoint field 'octree.max_level' is {ckpt['octree']['max_level']}, its config "
                       f"trains level {config.max_level}")
    octree = octree_from_state(ckpt["octree"], device)
    # a VQ checkpoint holds index logits, or after ``vq_freeze`` the fixed indices
    learned = not (ckpt["grid_kind"] == "vq" and "grid.indices" in ckpt["field"])
    field_ = make_field(octree, config, kind=ckpt["grid_kind"], learned=learned)
    expected = field_.state_dict()
    for name, tensor in ckpt["field"].items():
        if name not in expected:
            raise TvqError(f"{source}: checkpoint field 'field.{name}' is not a parameter of a {ckpt['grid_kind']} "
                           "model")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise TvqError(f"{source}: checkpoint field 'field.{name}' has shape {tuple(tensor.shape)}, the octree "
                           f"needs {tuple(expected[name].shape)}")
    missing = sorted(set(expected) - set(ckpt["field"]))
    if missing:
        raise TvqError(f"{source}: checkpoint field 'field.{missing[0]}' is missing")
    if not learned:
        # each vertex's fixed index must name a code of its own level's codebook
        indices, levels = ckpt["field"]["grid.indices"], expected["grid.indices"]  # (the fresh grid's level offsets)
        codes = 1 << config.bits
        code = indices.to(levels.device).long() - levels.long()
        if indices.dtype != torch.int32 or not bool(((code >= 0) & (code < codes)).all()):
            raise TvqError(f"{source}: checkpoint field 'field.grid.indices' should be int32 codes of each vertex's "
                           f"level (0..{codes - 1} after the level's offset)")
    field_.load_state_dict(ckpt["field"])
    return field_


# ---- the trainer -----------------------------------------------------------------------------------


def lod_probabilities(num_lods: int, ratio: float = 2.0) -> np.ndarray:
    """Each finer LOD ``ratio`` times as likely as the one before (the paper: twice)."""
    w = float(ratio) ** np.arange(num_lods)
    return w / w.sum()


class Trainer:
    def __init__(self, scene: Scene, config: TrainConfig, out_dir: Path, log=print, inherit: tuple[str, ...] = ()):
        config.validate()
        self.scene, self.config, self.out_dir, self.log = scene, config, Path(out_dir), log
        self.inherit = tuple(inherit)  # config fields a resumed run takes from its checkpoint (the user set none)
        self.device = runtime.device()
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # the decoder's matmuls: TF32 is ample for 8-bit images
        train_views = scene.split("train")
        if not train_views:
            raise TvqError(f"{scene.root}: the scene has no training views")
        sizes = sorted({(v.width, v.height) for v in train_views})
        if len(sizes) > 1:
            raise TvqError(f"{scene.root}: training views differ in size ({', '.join(f'{w}x{h}' for w, h in sizes)}); "
                           "tvq needs one image size per scene")
        self.data = RayData.from_views(train_views, scene.background, self.device, alphas=config.random_background)
        if config.random_background and self.data.alphas is None:
            raise TvqError(f"{scene.root}: --random-background needs an alpha mask in every training view")
        self.generator = torch.Generator(device=self.device)  # re-seeded every step from (seed, step)
        self.step = 0
        self.elapsed = 0.0
        self.history: list[dict] = []
        self.pruning: list[dict] = []  # per pruning: its step and the vertices per level before and after
        self.field: RadianceField | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step, loss) not read from the device yet
        self._next: _Batch | None = None  # the next step's rays, drawn and counted ahead (``train_step``)
        self.last_loss = math.nan

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    # -- setup --

    def setup(self, resume: bool = False) -> None:
        if resume and self.checkpoint_path.is_file():
            self._restore(load_checkpoint(self.checkpoint_path))
            self.log(f"resumed from {self.checkpoint_path} at step {self.step}")
            return
        self.config.fill_source_defaults(octree_source(self.scene, self.config.octree_from))
        octree, _ = build_octree(self.scene, self.config, self.device, self.log)
        warmup = self.config.vq_warmup
        warm_start = self.config.kind == "vq" and (bool(self.config.prune_at) if warmup is None else warmup > 0)
        self.field = make_field(octree, self.config, kind="raw" if warm_start else None)
        self.optimizer = self._make_optimizer()
        self.log("octree: " + vertex_report(octree, self.field.grid.levels))

    def _rebuild_optimizer(self, old_opt: torch.optim.Optimizer) -> None:
        """A fresh optimizer for the current field, with ``old_opt``'s Adam state for every parameter it kept."""
        self.optimizer = self._make_optimizer()
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p in old_opt.state:
                    self.optimizer.state[p] = old_opt.state[p]

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        groups = [
            {"params": self.field.grid.grid_parameters(), "lr": c.lr * c.grid_lr_scale, "lazy": c.lazy_rows},
            {"params": list(self.field.decoder.parameters()), "lr": c.lr},
        ]
        # fused: one kernel for all parameters instead of several per tensor
        optimizer = LazyRowAdam if c.lazy_rows else torch.optim.Adam
        return optimizer(groups, betas=(0.9, c.adam_beta2), eps=1e-15, fused=self.device.type == "cuda")

    def _restore(self, ckpt: dict) -> None:
        saved = TrainConfig(**ckpt["config"])
        for key in self.inherit:  # options the command left unset: the run goes on with its own recipe
            setattr(self.config, key, getattr(saved, key))
        # Budget options may change on resume; everything that shapes the model must not.
        for key in ("bits", "hash", "max_level", "num_lods", "feature_dim", "decoder_hidden", "density", "seed"):
            if getattr(saved, key) != getattr(self.config, key):
                raise TvqError(f"{self.checkpoint_path}: checkpoint has {key}={getattr(saved, key)}, "
                               f"the command asks for {getattr(self.config, key)}")
        for key in ("prune_at", *SOURCE_DEFAULTS["masks"]):  # the run goes on as it started
            if getattr(self.config, key) is None:
                setattr(self.config, key, getattr(saved, key))
        self.config.fill_saved_defaults(octree_source(self.scene, self.config.octree_from))
        cams = ckpt["cameras"]
        size = (int(self.data.images.shape[2]), int(self.data.images.shape[1]))
        if (cams["width"], cams["height"]) != size or cams["c2ws"].shape[0] != self.data.c2ws.shape[0]:
            raise TvqError(f"{self.checkpoint_path}: trained on {cams['c2ws'].shape[0]} views of "
                           f"{cams['width']}x{cams['height']}, but this scene has {self.data.c2ws.shape[0]} of "
                           f"{size[0]}x{size[1]} (another scene or --downscale?)")
        trained_on = ckpt.get("device_type", "cpu")
        if trained_on != self.device.type:
            raise TvqError(f"{self.checkpoint_path}: trained with arch {trained_on}; resume it with --arch {trained_on}")
        self.field = field_from_checkpoint(ckpt, self.device, self.checkpoint_path)
        self.optimizer = self._make_optimizer()
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.optimizer.param_groups[0]["lazy"] = self.config.lazy_rows  # (a budget option, like the rates)
        for group in self.optimizer.param_groups:  # the command's beta2, not the one the state was saved with
            group["betas"] = (group["betas"][0], self.config.adam_beta2)
        self.step, self.elapsed = ckpt["step"], ckpt["elapsed"]
        self.history = ckpt.get("history", [])
        self.pruning = ckpt.get("pruning", [])
        if self.field.grid.indices_fixed:  # fixed indices stay fixed, on the octree they were fixed on
            if self.config.vq_freeze != saved.vq_freeze:
                raise TvqError(f"{self.checkpoint_path}: its indices were fixed after --vq-freeze "
                               f"{saved.vq_freeze}; resume it without --vq-freeze")
            if self.config.subdivide_at and self.config.subdivide_at > self.step:
                raise TvqError(f"{self.checkpoint_path}: its indices are fixed, so its octree cannot subdivide at "
                               f"step {self.config.subdivide_at}")
        self.config.validate()  # the command's options with the checkpoint's

    def save_checkpoint(self) -> None:
        checkpoint.save(
            {
                "format": checkpoint.FORMAT,
                "version": checkpoint.VERSION,
                "config": asdict(self.config),
                "scene": {"root": str(Path(self.scene.root).resolve()), "format": self.scene.format,
                          "background": [float(x) for x in self.scene.background]},
                "cameras": {"K": self.data.Ks[0].cpu(), "width": int(self.data.images.shape[2]),
                            "height": int(self.data.images.shape[1]), "c2ws": self.data.c2ws.cpu()},
                "octree": octree_state(self.field.octree),
                "field": self.field.state_dict(),
                "grid_kind": self.field.grid.kind,  # raw while a VQ run is still in its warm start
                "optimizer": self.optimizer.state_dict(),
                "device_type": self.device.type,  # each device draws its own random stream from a seed
                "step": self.step,
                "elapsed": self.elapsed,
                "history": self.history,
                "pruning": self.pruning,
            },
            self.checkpoint_path,
        )

    # -- one step --

    def progress_fraction(self) -> float:
        """How far through its budget (steps or minutes, whichever is nearer its end) the run is."""
        c = self.config
        done = self.step / c.iters
        if c.minutes:
            done = max(done, self.elapsed / (60 * c.minutes))
        return min(done, 1.0)

    def _set_learning_rate(self) -> None:
        """The recipe's rates times ``TrainConfig.lr_factor`` of the budget's progress."""
        c = self.config
        factor = c.lr_factor(self.progress_fraction(), indices_fixed=self.field.grid.indices_fixed)
        self.optimizer.param_groups[0]["lr"] = c.lr * c.grid_lr_scale * factor
        self.optimizer.param_groups[1]["lr"] = c.lr * factor

    def _batch(self, step: int) -> "_Batch":
        """The draws and rays of the step after ``step`` steps, their samples counted (queued on the device)."""
        c = self.config
        rng = np.random.default_rng((c.seed, step))  # this step's draws, whatever happened before
        num_lods = self.field.num_lods
        lod = int(rng.choice(num_lods, p=lod_probabilities(num_lods, c.lod_ratio)))
        self.generator.manual_seed(int(rng.integers(1 << 62)))
        with stage("sample"):
            origins, dirs, target, background = self.data.sample(c.batch_rays, self.generator, c.random_background)
        counts = march_rays(self.field, origins, dirs, lod, self._render_options())
        return _Batch(step, weakref.ref(self.field), lod, target, background, counts, int(rng.integers(1 << 31)))

    def _render_options(self) -> RenderOptions:
        c = self.config
        return RenderOptions(samples_per_cell=c.samples_per_cell, max_samples_per_ray=c.max_samples_per_ray,
                             jitter=True)

    def train_step(self) -> dict:
        """One optimiser step (the step numbered ``self.step + 1``); the loss stays on the device.

        The next step's rays are drawn and their samples counted before this step's forward pass, so their
        total is on the host when that step starts: the host never waits for the GPU to finish a step."""
        self._set_learning_rate()
        batch, self._next = self._next, None
        if batch is None or batch.step != self.step or batch.field() is not self.field:
            batch = self._batch(self.step)  # the first step, or the octree or field changed since
        self._next = self._batch(self.step + 1)
        out = render_counted(self.field, batch.counts, batch.lod, batch.background, self._render_options(),
                             seed=batch.seed)
        with stage("loss"):
            loss = torch.nn.functional.mse_loss(out["color"], batch.target)  # one op each way
        with stage("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with stage("optimizer"):
            self.optimizer.step()
        return {"loss": loss.detach(), "lod": batch.lod, "samples": out["samples"]}

    def _diverged(self, step: int, what: str) -> None:
        kept = f"; the last good checkpoint is {self.checkpoint_path}" if self.checkpoint_path.is_file() else ""
        raise TvqError(f"training diverged at step {step} ({what}): stopped{kept}")

    def _read_losses(self) -> None:
        """Read the pending losses (one wait for the GPU); stop at the first non-finite one."""
        if not self._pending:
            return
        values = torch.stack([loss for _, loss in self._pending]).tolist()
        for (step, _), value in zip(self._pending, values):
            if not math.isfinite(value):
                self._diverged(step, f"loss {value}")
        self._pending.clear()
        self.last_loss = values[-1]

    def _check_parameters(self) -> None:
        self._read_losses()
        if any(not bool(torch.isfinite(p).all()) for p in self.field.parameters()):
            self._diverged(self.step, "non-finite parameters")

    def _save_checked(self) -> None:
        """A checkpoint only of a finite state: the last one on disk stays a good one."""
        self._check_parameters()
        self.save_checkpoint()
        self._last_save = self.step
        self._last_save_elapsed = self.elapsed

    # -- pruning --

    @torch.no_grad()
    def prune(self) -> None:
        """Drop finest-level cells whose rendering weight never reaches the threshold on the training rays."""
        from .prune import cell_max_weights

        self.optimizer.zero_grad(set_to_none=True)  # last step's gradients: not needed, and as big as the grid
        octree = self.field.octree
        weights = cell_max_weights(self.field, self.data, self.config)
        keep = weights >= self.config.prune_threshold
        if not bool(keep.any()):
            self.log("pruning skipped: no cell reached the weight threshold yet")
            return
        new_octree = SparseOctree.from_leaf_codes(octree.max_level, octree.cells[octree.max_level][keep],
                                                  center=octree.center, scale=octree.scale)
        self._rebuild(new_octree, "pruned", threshold=self.config.prune_threshold)

    @torch.no_grad()
    def subdivide(self) -> None:
        """Split every finest cell into its 8 children: the octree gains level ``max_level`` and the field its
        finest LOD, whose vertices start from the fresh field's small random features (the coarser LODs render
        as before; the new one nearly so). Later prunings work on the new level."""
        self.optimizer.zero_grad(set_to_none=True)
        octree = self.field.octree
        if octree.max_level >= self.config.max_level:
            return
        children = (octree.cells[octree.max_level][:, None] << 3) | torch.arange(8, device=octree.device)
        new_octree = SparseOctree.from_leaf_codes(octree.max_level + 1, children.reshape(-1), center=octree.center,
                                                  scale=octree.scale)
        self._rebuild(new_octree, "subdivided", subdivided=True)

    def _rebuild(self, new_octree: SparseOctree, verb: str, **record) -> None:
        """Move the field onto ``new_octree``; record and log the vertices per level before and after."""
        old_octree, old_levels = self.field.octree, self.field.grid.levels
        vertices_before = {str(l): old_octree.num_vertices(l) for l in old_levels}
        self._remap(new_octree)
        levels = self.field.grid.levels
        self.pruning.append({"step": self.step, **record, "vertices_before": vertices_before,
                             "vertices_after": {str(l): new_octree.num_vertices(l) for l in levels}})
        self.log(f"{verb} at step {self.step}: {vertex_report(old_octree, old_levels)}  ->  "
                 f"{vertex_report(new_octree, levels)}")

    def _remap(self, new_octree: SparseOctree) -> None:
        """Move parameters and Adam moments onto the vertices of a pruned or subdivided octree: a vertex the
        old grid held keeps its row, a new one (a new finest level) its fresh value and zero moments; each
        level's codebook moves with its level."""
        old_field, old_opt = self.field, self.optimizer
        old_grid = old_field.grid
        new_field = make_field(new_octree, self.config, kind=old_grid.kind, learned=not old_grid.indices_fixed)
        new_field.decoder.load_state_dict(old_field.decoder.state_dict())
        new_grid = new_field.grid
        rows = vertex_rows(old_grid, new_octree, new_grid.levels)  # each new vertex's row in the old table, or -1
        held = rows >= 0
        rows_held = rows[held]
        row_params = {"features", "logits"}  # one row per vertex; codebooks: one block of rows per level

        def moved(old: torch.Tensor, fresh: torch.Tensor, by_row: bool) -> torch.Tensor:
            """``fresh`` with the old values where the old grid had them."""
            if by_row:
                fresh[held] = old[rows_held]
            else:
                fresh[: old.shape[0]] = old  # the old levels' codebooks come first, in level order
            return fresh

        old_by_id = {id(p): name for name, p in old_grid.named_parameters()}
        for name, new_param in new_grid.named_parameters():
            new_param.data = moved(getattr(old_grid, name).data, new_param.data, name in row_params)
        if old_grid.indices_fixed:  # fixed VQ indices move with their vertices
            new_grid.indices = moved(old_grid.indices, new_grid.indices, True)
        self.field = new_field
        del old_field, new_field
        # (hash indices need no move: they are a function of the vertex codes, the fresh grid has them)
        self.optimizer = self._make_optimizer()
        # Carry Adam's moments over, re-indexed the same way (both optimisers list parameters in one order);
        # each old moment is freed once copied, so the peak stays near one grid's worth of state.
        old_params = [p for g in old_opt.param_groups for p in g["params"]]
        new_params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for old_p, new_p in zip(old_params, new_params):
            state = old_opt.state.pop(old_p, None)
            if not state:
                continue
            by_row = old_by_id.get(id(old_p)) in row_params
            self.optimizer.state[new_p] = {
                key: (moved(value, value.new_zeros((new_p.shape[0],) + value.shape[1:]), by_row)
                      if torch.is_tensor(value) and value.dim() > 0
                      else value.clone() if torch.is_tensor(value) else value)
                for key, value in state.items()
            }

    # -- the VQ warm start --

    @property
    def warming_up(self) -> bool:
        """A VQ run still training raw features (its codebooks come from them at ``vq_warmup``)."""
        return self.config.kind == "vq" and self.field.grid.kind == "raw"

    def warmup_over(self) -> bool:
        c = self.config
        if c.vq_warmup is None:  # until the last pruning
            return self.step >= max(c.prune_at or (0,))
        return self.progress_fraction() >= c.vq_warmup

    @torch.no_grad()
    def quantize(self) -> None:
        """Replace the raw features by k-means codebooks and distance logits; the decoder and its Adam
        state carry on unchanged."""
        old_field, old_opt = self.field, self.optimizer
        grid = FeatureOctree.quantized_from(old_field.grid, self.config.bits, seed=self.config.seed,
                                             logit_gap=self.config.vq_logit_gap)
        self.field = RadianceField(grid, old_field.decoder)
        self._rebuild_optimizer(old_opt)
        self.log(f"step {self.step}: raw features quantised to {1 << self.config.bits} codes per level (k-means)")
        c = self.config
        if c.freezes and self.progress_fraction() > c.freeze_at:
            # the indices begin to learn after the point where they were to be fixed: they learn to the end
            self.log(f"step {self.step}: indices learn to the end (quantised after --vq-freeze {c.freeze_at})")
            c.vq_freeze = 1.0

    # -- fixed indices --

    def freeze_due(self) -> bool:
        """A VQ run with learned indices past ``vq_freeze`` and past the octree's last change."""
        c = self.config
        if not (c.freezes and self.field.grid.learned):
            return False
        last_change = max((*(c.prune_at or ()), c.subdivide_at or 0))
        return self.step >= last_change and self.progress_fraction() >= c.freeze_at

    @torch.no_grad()
    def freeze_indices(self) -> None:
        """Fix every vertex's index at the argmax of its logits and drop the logits with their Adam moments;
        the codebooks and the decoder, and their Adam state, carry on."""
        old, old_opt = self.field.grid, self.optimizer
        grid = FeatureOctree(old.octree, num_lods=old.num_lods, feature_dim=old.feature_dim, kind="vq",
                             bits=old.bits, seed=old.seed, learned=False)
        grid.indices += old.hard_indices()  # the fresh buffer holds each level's codebook offset
        grid.codebooks = old.codebooks  # the same parameter: its Adam state carries over below
        self.field = RadianceField(grid, self.field.decoder)
        self._rebuild_optimizer(old_opt)
        del old, old_opt
        self.log(f"step {self.step}: indices fixed; codebooks and decoder train on")

    # -- the loop --

    def fit(self, progress=None, evaluate=None) -> dict:
        """Train until ``iters`` steps or ``minutes`` of training time; returns a summary."""
        c = self.config
        budget_s = c.minutes * 60 if c.minutes else None
        stats = {"rays": 0, "samples": 0, "rays_at_check": 0, "samples_at_check": 0, "t0": time.perf_counter()}
        self._last_save = self.step
        self._last_save_elapsed = self.elapsed
        self._interrupted = False
        self._pending.clear()
        # Ctrl-C finishes the step in flight, so the checkpoint it leaves is a consistent state.
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, lambda *_: setattr(self, "_interrupted", True))
        try:
            self._loop(c, budget_s, stats, progress, evaluate)
            if self._interrupted:
                raise KeyboardInterrupt
            if self.warming_up:  # a budget shorter than the warm start still ends with a VQ model
                self._timed(self.quantize)
                self._last_save = -1
        except KeyboardInterrupt:
            if self.step > 0:
                self._save_checked()  # an interrupted run continues from here with --resume
                self.log(f"interrupted at step {self.step}; checkpoint saved to {self.checkpoint_path}")
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if self._last_save != self.step:
            self._save_checked()
        return {"step": self.step, "elapsed": self.elapsed}

    def _timed(self, fn) -> None:
        """Run ``fn`` and count its time as training time."""
        t0 = time.perf_counter()
        fn()
        self.elapsed += time.perf_counter() - t0

    def _loop(self, c: TrainConfig, budget_s, stats: dict, progress, evaluate) -> None:
        while self.step < c.iters and (budget_s is None or self.elapsed < budget_s):
            t0 = time.perf_counter()
            out = self.train_step()
            self.step += 1
            self._pending.append((self.step, out["loss"]))
            if len(self._pending) >= LOSS_CHECK_EVERY or self.step == 1:
                self._read_losses()
            self.elapsed += time.perf_counter() - t0
            stats["rays"] += c.batch_rays
            stats["samples"] += out["samples"]
            pruning = self.step in (c.prune_at or ())
            subdividing = self.step == c.subdivide_at
            quantizing = self.warming_up and self.warmup_over()
            freezing = self.freeze_due()
            checking = evaluate is not None and c.eval_every and self.step % c.eval_every == 0
            saving = (c.checkpoint_every and self.step % c.checkpoint_every == 0
                      and self.elapsed - self._last_save_elapsed >= c.checkpoint_seconds)
            done = self.step >= c.iters or (budget_s is not None and self.elapsed >= budget_s)
            if pruning or subdividing or quantizing or freezing or checking or saving or done or self._interrupted:
                self._timed(self._read_losses)  # nothing is built on a diverged state
            if pruning:
                self._timed(self.prune)
            if subdividing:
                self._timed(self.subdivide)
            if quantizing:
                self._timed(self.quantize)
            if freezing:
                self._timed(self.freeze_indices)
            if checking:
                # samples per ray since the last check: how much work a step of this field costs
                rays, samples = stats["rays"] - stats["rays_at_check"], stats["samples"] - stats["samples_at_check"]
                stats["rays_at_check"], stats["samples_at_check"] = stats["rays"], stats["samples"]
                self.history.append({"step": self.step, "elapsed": self.elapsed, "grid": self.field.grid.kind,
                                     "samples_per_ray": samples / max(rays, 1), **evaluate(self)})
            if saving:
                self._save_checked()
            if progress is not None:
                wall = max(time.perf_counter() - stats["t0"], 1e-9)
                progress(self, {"loss": self.last_loss, "psnr": mse_to_psnr(self.last_loss),
                                "rays_per_s": stats["rays"] / wall, "samples_per_s": stats["samples"] / wall})
            if self._interrupted:
                return
