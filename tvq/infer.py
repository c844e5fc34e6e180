"""The inference path: a trained field rendered fast, for ``tvq render``, ``tvq eval`` and the viewer.

``tvq.render.render_image`` is the training renderer run without gradients: it marches every sample of
every ray, decodes all of them and only then composites (with early termination). ``FastRenderer``
renders the same image (the same samples, features, MLP and compositing rule) without the waste:

- hard codes only: a VQ field's codes (``grid.indices``, or once ``argmax`` of a training field's logits)
  and a hash field's indices are resolved into a (V, F) feature table when the renderer is made, so a
  frame runs the plain gather and never touches logits;
- empty-space skipping: the marcher walks only the occupied cells of the LOD's level, jumping over empty
  Morton blocks (``tvq.kernels.raymarch``);
- early termination ends marching, gathering and the MLP of a ray, not only its compositing: a frame is
  rendered in a few rounds over the rays still alive (transmittance >= 1e-4 and samples left), each
  round three Taichi launches and one batched MLP (``tvq.kernels.inference``);
- the MLP on all of a round's samples at once, its view-direction part computed once per ray (the first
  layer's 27 view columns become a per-ray bias), in half precision on CUDA when asked for;
- buffers per resolution and per LOD made once and reused (ray directions, per-ray state, round
  workspaces that only grow);
- by default, no rounds at all: one thread renders a whole ray (``tvq.kernels.shade``: the same
  walk, the MLP inside the kernel, features from a per-LOD table with the coarser levels baked in), so a
  frame is one launch and decodes only the samples it composites.

``render`` also draws what the viewer needs besides colour: depth, opacity, samples per ray and the
octree cells of the LOD (``MODES``). ``render_image`` has ``tvq.render.render_image``'s signature.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch

from . import runtime
from .errors import TvqError
from .field import RadianceField, encode_direction
from .kernels.walk import walk_index

MODES = ("color", "depth", "opacity", "samples", "cells")
EARLY_STOP_EPS = 1e-4
_CACHE_ENTRIES = 8  # resolutions kept (dynamic resolution visits a few)


@dataclass
class _Frame:
    """Buffers of one resolution: camera-space pixel directions (for one K) and the per-ray state."""

    key: tuple
    d_cam: torch.Tensor  # (R, 3) float64, z = -1
    istate: torch.Tensor  # (R, 8) int32
    fstate: torch.Tensor  # (R, 8) float32
    all_rays: torch.Tensor  # (R,) int32 0..R-1


class _Workspace:
    """Round buffers that grow to the largest round seen and are then reused."""

    def __init__(self, device):
        self.device = device
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, size: int, dtype, columns: int | None = None) -> torch.Tensor:
        buf = self.buffers.get(name)
        shape = (size,) if columns is None else (size, columns)
        if buf is None or buf.shape[0] < size or buf.dtype != dtype:
            grown = max(size, 1 if buf is None else int(buf.shape[0] * 1.5))
            buf = torch.empty((grown,) + shape[1:], dtype=dtype, device=self.device)
            self.buffers[name] = buf
        return buf


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise TvqError(f"unknown view mode {mode!r}: choose one of {', '.join(MODES)}")
    return mode


# threads per block of the fused kernel on CUDA: at 800x800 on the H200 the finest LOD took 7.9 / 8.2 / 8.4 /
# 8.7 ms at 64 / 128 (Taichi's default) / 256 / 32 (lego 6-bit; raw 8.1 / 8.3 / 8.7 / 9.1 ms)
FUSED_BLOCK_DIM = 64


class FastRenderer:
    """Renders a ``RadianceField`` for inference (see the module docstring).

    ``background`` (3,) is the colour rays end on; ``samples_per_cell`` and ``max_samples_per_ray`` are
    the marcher's (``tvq.render.RenderOptions``' defaults, which ``tvq render`` and ``tvq eval`` use);
    ``half`` runs the MLP in float16 (CUDA only; default off); ``batch_samples`` bounds the samples of one
    launch (memory), ``round_samples`` the samples per ray of the first round (later rounds double it up
    to ``max_round_samples``), ``mlp_chunk`` the rows of one MLP matmul (default: all on CUDA, 8192 on the
    CPU). ``fused`` (the default, unless ``half`` is asked for or a cell has more than 8 samples) renders a
    frame in one launch of ``tvq.kernels.shade`` instead of in rounds: walk, baked features, MLP and
    compositing of a ray in one thread, float32; ``block_dim`` is its threads per GPU block (default
    ``FUSED_BLOCK_DIM`` on CUDA; 0: Taichi's).

    The renderer reads the field's parameters when it is made: make a new one after changing them.
    """

    def __init__(self, field: RadianceField, background=None, *, samples_per_cell: int = 4,
                 max_samples_per_ray: int = 1024, early_stop_eps: float = EARLY_STOP_EPS, half: bool = False,
                 batch_samples: int | None = None, round_samples: int = 16, max_round_samples: int = 128,
                 mlp_chunk: int | None = None, fused: bool | None = None, block_dim: int | None = None):
        runtime.ensure()
        if samples_per_cell < 1:
            raise TvqError(f"samples_per_cell must be at least 1, got {samples_per_cell}")
        if max_samples_per_ray < 1:
            raise TvqError(f"max_samples_per_ray must be at least 1, got {max_samples_per_ray}")
        self.field = field
        grid = field.grid
        self.octree = field.octree
        self.device = self.octree.device
        if self.device.type != runtime.device().type:
            raise TvqError(f"the field is on {self.device}, the Taichi backend runs on {runtime.device()}")
        if background is None:
            background = torch.ones(3)
        self.background = torch.as_tensor(background, dtype=torch.float32).reshape(3).to(self.device)
        self.samples_per_cell = int(samples_per_cell)
        self.block_dim = int(FUSED_BLOCK_DIM if block_dim is None and self.device.type == "cuda" else block_dim or 0)
        self.max_samples_per_ray = int(max_samples_per_ray)
        self.eps = float(early_stop_eps)
        self.half = bool(half) and self.device.type == "cuda"
        self.batch_samples = int(batch_samples or (1 << 22 if self.device.type == "cuda" else 1 << 18))
        self.mlp_chunk = int(mlp_chunk or (1 << 30 if self.device.type == "cuda" else 1 << 13))
        self.round_samples = max(1, int(round_samples))
        self.max_round_samples = max(self.round_samples, int(max_round_samples))
        self.levels = tuple(grid.levels)
        self.feature_dim = grid.feature_dim
        from .kernels.shade import MAX_BATCH

        fusable = samples_per_cell <= MAX_BATCH
        if fused and not fusable:
            raise TvqError(f"the fused renderer takes at most {MAX_BATCH} samples per cell, not {samples_per_cell}")
        # (a float16 MLP is the rounds' option: asking for it picks them)
        self.fused = (fusable and not self.half) if fused is None else bool(fused)
        with torch.no_grad():
            self.table = self._feature_table(grid)
            decoder = field.decoder
            first, second = decoder.net[0], decoder.net[2]
            F = self.feature_dim
            mlp_dtype = torch.float16 if self.half else torch.float32
            self.num_freqs, self.density = decoder.num_freqs, decoder.density
            self.w1_features = first.weight[:, :F].t().contiguous().to(mlp_dtype)  # (F, H)
            self.w1_view = first.weight[:, F:].t().contiguous().float()  # (P, H)
            self.b1 = first.bias.detach().float().contiguous()
            self.w2 = second.weight.t().contiguous().to(mlp_dtype)  # (H, 4)
            self.b2 = second.bias.detach().to(mlp_dtype).contiguous()
            self.hidden = first.out_features
            # the fused kernel's fp32 copies: W1's feature columns (H, F), W2 (4, H), b2
            self.w1_rows = first.weight[:, :F].detach().float().contiguous()
            self.w2_rows = second.weight.detach().float().contiguous()
            self.b2_f32 = second.bias.detach().float().contiguous()
        from .ops import _tree

        self.tree = _tree(grid.flat)
        self.codes = [self.octree.cells[level].to(self.device).contiguous() for level in self.levels]
        self.frames: OrderedDict[tuple, _Frame] = OrderedDict()
        self.work = _Workspace(self.device)
        self._baked: dict[int, torch.Tensor] = {}  # per LOD, made on its first fused frame
        self._cell_vertices: dict[int, torch.Tensor] = {}  # per LOD: its level's (N, 8) int32 corner rows
        self._turbo = None

    @property
    def lods(self) -> int:
        return len(self.levels)

    @staticmethod
    def _feature_table(grid) -> torch.Tensor:
        """(V, F) float32 vertex features: raw features, or each vertex's codebook row (its hard code)."""
        if grid.kind == "raw":
            return grid.features.detach().float().contiguous()
        if grid.learned:  # a training field: argmax of the logits, once
            codes = 1 << grid.bits
            offsets = torch.repeat_interleave(
                torch.arange(grid.num_lods, device=grid.logits.device) * codes,
                torch.tensor(grid.flat.vertex_counts(), device=grid.logits.device))
            rows = grid.logits.detach().argmax(dim=1) + offsets
        else:
            rows = grid.indices.long()
        return grid.codebooks.detach().float().index_select(0, rows.long()).contiguous()

    # ---- rays and buffers ----------------------------------------------------------------------

    def _frame(self, K: torch.Tensor, width: int, height: int) -> _Frame:
        key = (int(width), int(height), tuple(float(x) for x in K.reshape(-1).tolist()))
        frame = self.frames.get(key)
        if frame is not None:
            self.frames.move_to_end(key)
            return frame
        from .data.rays import _camera_dirs, pixel_grid

        pix = pixel_grid(width, height, device=self.device)
        K64 = K.to(device=self.device, dtype=torch.float64)
        d_cam = _camera_dirs(K64[0, 0], K64[1, 1], K64[0, 2], K64[1, 2], K64[0, 1], pix)
        R = d_cam.shape[0]
        frame = _Frame(key, d_cam, torch.zeros(R, 8, dtype=torch.int32, device=self.device),
                       torch.zeros(R, 8, dtype=torch.float32, device=self.device),
                       torch.arange(R, dtype=torch.int32, device=self.device))
        self.frames[key] = frame
        while len(self.frames) > _CACHE_ENTRIES:
            self.frames.popitem(last=False)
        return frame

    def _camera_rays(self, frame: _Frame, c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised origins and unit directions (R, 3) float32, as ``pixel_rays`` + ``normalize``."""
        c2w = c2w.to(device=self.device, dtype=torch.float64)
        d_world = frame.d_cam @ c2w[:3, :3].T
        dirs = (d_world / d_world.norm(dim=1, keepdim=True)).float().contiguous()
        origin = c2w[:3, 3].float()
        o_n = self.octree.normalize(origin[None])
        return o_n.expand(dirs.shape[0], 3).contiguous(), dirs

    # ---- rendering -----------------------------------------------------------------------------

    def _check_lod(self, lod: int | None) -> int:
        lod = self.lods - 1 if lod is None else int(lod)
        if not 0 <= lod < self.lods:
            raise TvqError(f"lod must be in 0..{self.lods - 1}, got {lod}")
        return lod

    @torch.no_grad()
    def render(self, K, c2w, width: int, height: int, lod: int | None = None, mode: str = "color",
               background=None) -> dict:
        """One image of a pinhole camera (``K`` 3x3 in pixels, ``c2w`` 4x4 OpenGL camera-to-world) at
        ``lod`` (default the finest).

        Returns ``image`` (H, W, 3), what ``mode`` shows (one of ``MODES``), and per pixel ``color``
        (H, W, 3), ``opacity``, ``depth`` (world units along the ray, as ``render_image``) and ``samples``
        (int32: samples decoded before the ray terminated), except in mode "cells", which marches only to
        the first occupied cell and returns ``image`` and ``cells`` (the cell's Morton code, -1 for none).
        Also ``stats``: rays, samples decoded, rounds. Tensors are on the renderer's device.
        """
        mode = _check_mode(mode)
        if int(width) < 1 or int(height) < 1:
            raise TvqError(f"image size must be positive, got {width}x{height}")
        lod = self._check_lod(lod)
        K = torch.as_tensor(K, dtype=torch.float64).reshape(3, 3)
        c2w = torch.as_tensor(c2w, dtype=torch.float64).reshape(4, 4)
        frame = self._frame(K, int(width), int(height))
        origins, dirs = self._camera_rays(frame, c2w)
        bg = self.background if background is None else torch.as_tensor(
            background, dtype=torch.float32).reshape(3).to(self.device)
        H, W = int(height), int(width)
        if mode == "cells":
            image, cells = self._cells(frame, origins, dirs, lod, bg)
            return {"image": image.reshape(H, W, 3), "cells": cells.reshape(H, W), "stats": {"rays": H * W}}
        out = self._march_and_shade(frame, origins, dirs, lod, bg)
        result = {key: value.reshape(H, W, *value.shape[1:]) for key, value in out.items() if key != "stats"}
        result["stats"] = out["stats"]
        result["image"] = self.visualize(result, mode, c2w, bg)
        return result

    @torch.no_grad()
    def render_rays(self, origins: torch.Tensor, dirs: torch.Tensor, lod: int | None = None,
                    background=None) -> dict:
        """World-space rays (R, 3) with unit directions: ``color`` (R, 3), ``opacity``, ``depth``, ``samples``
        (as ``tvq.render.render_rays``, without the autograd machinery)."""
        lod = self._check_lod(lod)
        R = origins.shape[0]
        key = ("rays", R)
        frame = self.frames.get(key)
        if frame is None:
            frame = _Frame(key, torch.empty(0, 3), torch.zeros(R, 8, dtype=torch.int32, device=self.device),
                           torch.zeros(R, 8, dtype=torch.float32, device=self.device),
                           torch.arange(R, dtype=torch.int32, device=self.device))
            self.frames[key] = frame
            while len(self.frames) > _CACHE_ENTRIES:
                self.frames.popitem(last=False)
        o_n = self.octree.normalize(origins.to(self.device).float()).contiguous()
        d = dirs.to(self.device).float().contiguous()
        bg = self.background if background is None else torch.as_tensor(
            background, dtype=torch.float32).reshape(3).to(self.device)
        return self._march_and_shade(frame, o_n, d, lod, bg)

    def _reset(self, frame: _Frame) -> None:
        from .kernels.inference import F_FIRST, F_TRANS

        frame.istate.zero_()
        frame.fstate.zero_()
        frame.fstate[:, F_TRANS] = 1.0
        frame.fstate[:, F_FIRST] = -1.0

    def baked(self, lod: int) -> torch.Tensor:
        """The LOD's baked feature table (``baked_table``), made once."""
        if lod not in self._baked:
            self._baked[lod] = baked_table(self.field.grid, self.table, lod)
        return self._baked[lod]

    def _march_and_shade(self, frame: _Frame, origins, dirs, lod: int, bg) -> dict:
        if self.fused:
            return self._shade_fused(origins, dirs, lod, bg)
        return self._shade_in_rounds(frame, origins, dirs, lod, bg)

    def _shade_fused(self, origins, dirs, lod: int, bg) -> dict:
        """The whole frame in one launch of ``tvq.kernels.shade`` (plus the per-ray view part of the MLP)."""
        from .kernels.shade import kernel

        R = origins.shape[0]
        level = self.levels[lod]
        work = self.work
        view = encode_direction(dirs, self.num_freqs)
        view_bias = work.get("view_bias", self.hidden * R, torch.float32)[:self.hidden * R].view(self.hidden, R)
        torch.addmm(self.b1[:, None], self.w1_view.t(), view.t(), out=view_bias)  # (H, R)
        colour = work.get("colour", R, torch.float32, 3)[:R]
        trans = work.get("trans", R, torch.float32)[:R]
        depth = work.get("depth", R, torch.float32)[:R]
        samples = work.get("samples", R, torch.int32)[:R]
        codes = self.codes[lod]
        cell_vertices = self.cell_vertices(lod)
        kernel(self.feature_dim, self.samples_per_cell, self.density, self.block_dim)(
            origins, dirs, codes, *walk_index(codes, level), cell_vertices, level, self.max_samples_per_ray,
            self.baked(lod), self.w1_rows, view_bias, self.w2_rows, self.b2_f32, self.eps, colour, trans, depth,
            samples)
        return {"color": colour + trans[:, None] * bg, "opacity": 1 - trans, "depth": depth / self.octree.scale,
                "samples": samples.clone(), "stats": {"rays": R, "samples": int(samples.sum()), "rounds": 1}}

    def cell_vertices(self, lod: int) -> torch.Tensor:
        if lod not in self._cell_vertices:
            level = self.levels[lod]
            self._cell_vertices[lod] = self.octree.cell_vertices[level].to(self.device, torch.int32).contiguous()
        return self._cell_vertices[lod]

    def _shade_in_rounds(self, frame: _Frame, origins, dirs, lod: int, bg) -> dict:
        from .kernels.inference import (F_COLOUR, F_DEPTH, F_TRANS, I_COMPOSITED, kernels)

        march, gather, composite = kernels(self.feature_dim, self.density)
        self._reset(frame)
        R = origins.shape[0]
        level = self.levels[lod]
        codes = self.codes[lod]
        alive = frame.all_rays[:R]
        k = self.round_samples
        rounds = 0
        decoded = 0
        while alive.numel() > 0 and codes.numel() > 0:
            rounds += 1
            per_launch = max(1, self.batch_samples // k)
            survivors = []
            for start in range(0, alive.numel(), per_launch):
                part = alive[start:start + per_launch]
                decoded += self._round(march, gather, composite, part, k, origins, dirs, codes, level, lod, frame,
                                       survivors)
            alive = torch.cat(survivors) if len(survivors) > 1 else survivors[0]
            k = min(2 * k, self.max_round_samples)
        fs = frame.fstate[:R]
        trans = fs[:, F_TRANS]
        return {"color": fs[:, F_COLOUR:F_COLOUR + 3] + trans[:, None] * bg, "opacity": 1 - trans,
                "depth": fs[:, F_DEPTH] / self.octree.scale, "samples": frame.istate[:R, I_COMPOSITED].clone(),
                "stats": {"rays": R, "samples": decoded, "rounds": rounds}}

    def _round(self, march, gather, composite, alive, k, origins, dirs, codes, level, lod, frame, survivors) -> int:
        A = alive.numel()
        work = self.work
        t_buf = work.get("t", A * k, torch.float32)
        dt_buf = work.get("dt", A * k, torch.float32)
        counts = work.get("counts", A, torch.int32)
        still = work.get("still", A, torch.int32)
        march(origins, dirs, codes, *walk_index(codes, level), level, self.samples_per_cell, self.max_samples_per_ray,
              alive, k, frame.istate, frame.fstate, t_buf, dt_buf, counts)
        offsets = work.get("offsets", A + 1, torch.int32)
        offsets[0] = 0
        torch.cumsum(counts[:A], 0, dtype=torch.int32, out=offsets[1:A + 1])
        S = int(offsets[A])
        out = work.get("out", max(S, 1), torch.float32, 4)
        if S:
            feats = work.get("feats", S, torch.float32, self.feature_dim)
            sample_ray = work.get("sample_ray", S, torch.int32)
            gather(origins, dirs, self.tree, self.table, lod + 1, alive, k, t_buf, counts, offsets, feats, sample_ray)
            self._mlp(dirs, alive, feats[:S], sample_ray[:S], out[:S])
        composite(alive, k, t_buf, dt_buf, counts, offsets, out, self.eps, frame.istate, frame.fstate, still)
        survivors.append(alive[still[:A].nonzero()[:, 0]])
        return S

    def _mlp(self, dirs, alive, feats, sample_ray, out) -> None:
        """Raw decoder outputs (S, 4) into ``out``: W2 relu(W1_f f + (W1_v PE(d_ray) + b1)) + b2, in row
        chunks of ``mlp_chunk`` (on the CPU the hidden activations then stay in cache)."""
        view = encode_direction(dirs.index_select(0, alive), self.num_freqs)
        per_ray = torch.addmm(self.b1, view, self.w1_view)  # (A, H): the first layer's view part, once per ray
        dtype = torch.float16 if self.half else torch.float32
        per_ray = per_ray.to(dtype)
        S = feats.shape[0]
        chunk = min(S, self.mlp_chunk)
        hidden_buf = self.work.get("hidden", chunk, dtype, self.hidden)
        for start in range(0, S, chunk):
            end = min(S, start + chunk)
            hidden = hidden_buf[:end - start]
            torch.index_select(per_ray, 0, sample_ray[start:end], out=hidden)
            hidden.addmm_(feats[start:end].to(dtype), self.w1_features).relu_()
            if self.half:
                out[start:end] = torch.addmm(self.b2, hidden, self.w2)
            else:
                torch.addmm(self.b2, hidden, self.w2, out=out[start:end])

    # ---- what the viewer shows -----------------------------------------------------------------

    def _colormap(self) -> torch.Tensor:
        if self._turbo is None:
            from matplotlib import colormaps

            lut = colormaps["turbo"](torch.linspace(0, 1, 256).numpy())[:, :3]
            self._turbo = torch.tensor(lut, dtype=torch.float32, device=self.device)
        return self._turbo

    def _apply_colormap(self, values: torch.Tensor) -> torch.Tensor:
        idx = (values.clamp(0, 1) * 255 + 0.5).long()
        return self._colormap()[idx]

    def depth_range(self, c2w) -> tuple[float, float]:
        """World-unit distances from the camera that bound the octree's cube (the depth view's range)."""
        c2w = torch.as_tensor(c2w, dtype=torch.float64).reshape(4, 4)
        centre = self.octree.center.double().cpu()
        dist = float((c2w[:3, 3] - centre).norm())
        half = math.sqrt(3.0) / self.octree.scale
        return max(0.0, dist - half), dist + half

    def visualize(self, result: dict, mode: str, c2w, background=None) -> torch.Tensor:
        """(H, W, 3) image of ``mode`` from a ``render`` result (colour, opacity, depth, samples)."""
        bg = self.background if background is None else background
        if mode == "color":
            return result["color"]
        opacity = result["opacity"]
        if mode == "opacity":
            return opacity[..., None].expand(*opacity.shape, 3).contiguous()
        if mode == "depth":
            near, far = self.depth_range(c2w)
            mean = result["depth"] / opacity.clamp_min(1e-6)
            shade = self._apply_colormap((far - mean) / max(far - near, 1e-9))
            return opacity[..., None] * shade + (1 - opacity[..., None]) * bg
        if mode == "samples":
            n = result["samples"].float()
            shade = self._apply_colormap(torch.log1p(n) / math.log1p(256.0))
            return torch.where((n > 0)[..., None], shade, bg.expand_as(shade))
        raise TvqError(f"mode {mode!r} is drawn by render(), not visualize()")

    def _cells(self, frame: _Frame, origins, dirs, lod: int, bg) -> tuple[torch.Tensor, torch.Tensor]:
        """The first occupied cell of the LOD's level on each ray: a colour per cell (a hash of its Morton
        code), shaded by the face the ray enters through, with dark cell edges; its code (-1: none)."""
        from .kernels.inference import F_FIRST, kernels
        from .octree import morton_encode

        march, _, _ = kernels(self.feature_dim)
        self._reset(frame)
        R = origins.shape[0]
        level = self.levels[lod]
        t_buf = self.work.get("t", R, torch.float32)
        dt_buf = self.work.get("dt", R, torch.float32)
        counts = self.work.get("counts", R, torch.int32)
        if self.codes[lod].numel():
            march(origins, dirs, self.codes[lod], *walk_index(self.codes[lod], level), level, self.samples_per_cell,
                  self.max_samples_per_ray, frame.all_rays[:R], 1, frame.istate, frame.fstate, t_buf, dt_buf, counts)
            hit = counts[:R] > 0
        else:
            hit = torch.zeros(R, dtype=torch.bool, device=self.device)
        res = 1 << level
        h = 2.0 / res
        inside = (origins + t_buf[:R, None] * dirs + 1) / h
        ijk = inside.floor().clamp(0, res - 1)
        entry = (origins + frame.fstate[:R, F_FIRST:F_FIRST + 1] * dirs + 1) / h - ijk
        to_face = torch.minimum(entry, 1 - entry).clamp_min(0)
        order = to_face.sort(dim=1)
        axis = order.indices[:, 0]
        edge = order.values[:, 1] < 0.06
        codes = morton_encode(ijk.long())
        mixed = (codes * 0x9E3779B1 + 0x7F4A7C15) & 0xFFFFFF
        rgb = torch.stack([(mixed >> 16) & 255, (mixed >> 8) & 255, mixed & 255], dim=1).float() / 255
        rgb = 0.3 + 0.65 * rgb
        shade = torch.tensor([1.0, 0.82, 0.64], device=self.device)[axis]
        colour = rgb * shade[:, None]
        colour = torch.where(edge[:, None], colour * 0.35, colour)
        image = torch.where(hit[:, None], colour, bg.expand(R, 3))
        return image, torch.where(hit, codes, torch.full_like(codes, -1))


@torch.no_grad()
def baked_table(grid, table: torch.Tensor, lod: int, chunk: int = 1 << 18) -> torch.Tensor:
    """(V, F) features at the vertices of the LOD's finest level with the coarser levels folded in: row v
    holds z_L(v) + sum over the coarser feature levels k of their trilinear interpolation at v's position,
    evaluated in an occupied level-k ancestor of a cell that has v as a corner (``tvq.kernels.shade`` says
    why trilinear interpolation of these rows equals the per-level sum). ``table`` is the (all-levels,
    F) feature table of the grid's vertex rows."""
    from .octree import CORNERS, morton_decode

    octree, levels = grid.octree, grid.levels
    start = grid.flat.vertex_start.tolist()
    own = table[start[lod]:start[lod + 1]]
    if lod == 0:
        return own.contiguous()
    top = levels[lod]
    cells = octree.cells[top]
    cell_vertices = octree.cell_vertices[top].long()
    device = table.device
    corners = CORNERS.to(device)
    V, slots = own.shape[0], cell_vertices.numel()
    # each vertex's first (cell, corner) slot: a deterministic owner cell to take its ancestors from
    owner = torch.full((V,), slots, dtype=torch.int64, device=device).scatter_reduce_(
        0, cell_vertices.reshape(-1), torch.arange(slots, device=device), "amin")
    baked = own.clone()
    for begin in range(0, V, chunk):
        slot = owner[begin:begin + chunk]
        codes = cells[slot // 8]
        position = morton_decode(codes) + corners[slot % 8]  # vertex coordinates in level-top cells
        acc = torch.zeros_like(baked[begin:begin + chunk])
        for k in range(lod):
            shift = top - levels[k]
            ancestors = codes >> (3 * shift)
            row = torch.searchsorted(octree.cells[levels[k]], ancestors)
            frac = (position - (morton_decode(ancestors) << shift)).to(table.dtype) / float(1 << shift)
            weights = torch.where(corners[None].bool(), frac[:, None, :], 1 - frac[:, None, :]).prod(dim=2)
            rows = octree.cell_vertices[levels[k]][row].long() + start[k]
            acc += (weights[:, :, None] * table[rows]).sum(dim=1)
        baked[begin:begin + chunk] += acc
    return baked.contiguous()


def render_image(field: RadianceField, K, c2w, width: int, height: int, lod: int, background: torch.Tensor,
                 options=None) -> dict:
    """``tvq.render.render_image`` on the fast path: ``color`` (H, W, 3), ``opacity``, ``depth`` (and
    ``samples``). ``options`` (``RenderOptions``) gives samples_per_cell and max_samples_per_ray; early
    termination is always on. Makes a renderer per call: for many frames, keep a ``FastRenderer``."""
    spc = getattr(options, "samples_per_cell", 4)
    cap = getattr(options, "max_samples_per_ray", 1024)
    out = FastRenderer(field, background, samples_per_cell=spc, max_samples_per_ray=cap).render(
        K, c2w, width, height, lod)
    return {key: out[key] for key in ("color", "opacity", "depth", "samples")}


@torch.no_grad()
def raymarch_in_rounds(octree, origins: torch.Tensor, dirs: torch.Tensor, level: int, *, samples_per_cell: int = 4,
                       max_samples_per_ray: int = 1024, round_samples: int = 3):
    """The samples the fast path's resumable marcher emits, ``round_samples`` per ray per round until every
    walk ends, packed like ``tvq.sampling.raymarch`` (normalised rays in, ``PackedSamples`` out): the two
    agree sample for sample, which is what lets the fast path stop a ray early and render the same image."""
    from .kernels.inference import F_TRANS, I_STATUS, DONE, kernels
    from .sampling import PackedSamples

    runtime.ensure()
    device = origins.device
    R = origins.shape[0]
    march, _, _ = kernels(1)
    origins, dirs = origins.float().contiguous(), dirs.float().contiguous()
    codes = octree.cells[level].to(device).contiguous()
    istate = torch.zeros(R, 8, dtype=torch.int32, device=device)
    fstate = torch.zeros(R, 8, dtype=torch.float32, device=device)
    fstate[:, F_TRANS] = 1.0
    alive = torch.arange(R, dtype=torch.int32, device=device)
    per_ray_t: list[list[torch.Tensor]] = [[] for _ in range(R)]
    per_ray_dt: list[list[torch.Tensor]] = [[] for _ in range(R)]
    k = int(round_samples)
    while alive.numel() and codes.numel():
        A = alive.numel()
        t_buf = torch.empty(A * k, device=device)
        dt_buf = torch.empty(A * k, device=device)
        counts = torch.empty(A, dtype=torch.int32, device=device)
        march(origins, dirs, codes, *walk_index(codes, level), int(level), int(samples_per_cell),
              int(max_samples_per_ray), alive, k, istate, fstate, t_buf, dt_buf, counts)
        for a, (r, n) in enumerate(zip(alive.tolist(), counts.tolist())):
            per_ray_t[r].append(t_buf[a * k:a * k + n])
            per_ray_dt[r].append(dt_buf[a * k:a * k + n])
        alive = alive[istate[alive.long(), I_STATUS] != DONE]
    counts = torch.tensor([sum(x.numel() for x in ts) for ts in per_ray_t], dtype=torch.int64)
    offsets = torch.zeros(R + 1, dtype=torch.int64)
    offsets[1:] = counts.cumsum(0)
    flat = lambda parts: torch.cat([x for ts in parts for x in ts]) if offsets[-1] else torch.zeros(0)  # noqa: E731
    ray_ids = torch.repeat_interleave(torch.arange(R, dtype=torch.int32), counts)
    return PackedSamples(offsets.to(device), flat(per_ray_t).to(device), flat(per_ray_dt).to(device), ray_ids.to(device))
