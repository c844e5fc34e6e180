"""Pure-torch twins of every tvq op, written to be read.

Each twin computes what its Taichi kernel computes, in plain torch, so autograd gives the reference
gradients the hand-written backward kernels are tested against. Where it helps a reader the twin keeps the
kernel's loop structure; speed is not a goal here (the vectorised baselines for benchmarks live in
``benchmarks/``).
"""

from __future__ import annotations

import torch

# --- octree (tvq/kernels/octree_build.py, tvq/octree.py) ---


def morton_bits(ijk: torch.Tensor) -> torch.Tensor:
    """(..., 3) integer coordinates -> Morton codes, interleaving one bit at a time (x lowest)."""
    ijk = ijk.long()
    code = torch.zeros(ijk.shape[:-1], dtype=torch.int64, device=ijk.device)
    for bit in range(21):
        for axis in range(3):
            code |= ((ijk[..., axis] >> bit) & 1) << (3 * bit + axis)
    return code


def octree_from_points(
    points: torch.Tensor, max_level: int, center, scale: float, dilate: int = 0
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Twin of ``SparseOctree.from_points`` with a given normalisation: (cells, vertices, cell_vertices).

    Cell coordinates along an axis are floor(t) with t = (x - center) * (scale * R/2) + R/2 in float64,
    R = 2^max_level; points with t outside [0, R] on any axis (or non-finite) are dropped and t == R goes
    into the last cell. Dilation adds every cell of the (2d+1)^3 box around each leaf, clipped to the cube.
    """
    res = 1 << max_level
    x = torch.as_tensor(points).double().cpu()
    x = x[torch.isfinite(x).all(dim=1)]
    t = (x - torch.as_tensor(center, dtype=torch.float64)) * (float(scale) * (res / 2)) + res / 2
    inside = ((t >= 0) & (t <= res)).all(dim=1)
    ijk = torch.unique(torch.floor(t[inside]).long().clamp(max=res - 1), dim=0)
    if dilate > 0:
        steps = range(-dilate, dilate + 1)
        offsets = torch.tensor([[dx, dy, dz] for dz in steps for dy in steps for dx in steps])
        ijk = (ijk[:, None, :] + offsets[None]).reshape(-1, 3)
        ijk = torch.unique(ijk[((ijk >= 0) & (ijk < res)).all(dim=1)], dim=0)
    corner_offsets = torch.tensor([[c & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)])
    cells, vertices, cell_vertices = [None] * (max_level + 1), [None] * (max_level + 1), [None] * (max_level + 1)
    for level in range(max_level, -1, -1):
        codes = morton_bits(ijk)
        order = torch.argsort(codes)
        cells[level] = codes[order]
        corner_codes = morton_bits(ijk[order][:, None, :] + corner_offsets[None])  # (n, 8)
        vertices[level] = torch.unique(corner_codes)
        cell_vertices[level] = torch.searchsorted(vertices[level], corner_codes).to(torch.int32)
        ijk = torch.unique(ijk // 2, dim=0)  # parents
    return cells, vertices, cell_vertices


def octree_child_masks(cells: list[torch.Tensor]) -> list[torch.Tensor]:
    """Twin of ``SparseOctree.child_masks``: per level, a byte per cell with bit (child & 7) per child."""
    masks = []
    for level in range(len(cells) - 1):
        row = {int(code): i for i, code in enumerate(cells[level].tolist())}
        mask = [0] * len(row)
        for child in cells[level + 1].tolist():
            mask[row[child >> 3]] |= 1 << (child & 7)
        masks.append(torch.tensor(mask, dtype=torch.uint8))
    return masks


# --- carving (tvq/kernels/carve.py) ---


def _view_carves(K, c2w, fg, corners_world, pad: float, near: float) -> bool:
    """True when this view fully sees the box with these 8 world corners and finds no foreground there."""
    height, width = fg.shape
    cam = (corners_world - c2w[:3, 3]) @ c2w[:3, :3]  # (8, 3) OpenGL camera: x right, y up, looking down -z
    depth = -cam[:, 2]
    if bool((depth <= near).any()):
        return False  # not entirely in front of the camera
    us = K[0, 0] * cam[:, 0] / depth + K[0, 1] * (-cam[:, 1]) / depth + K[0, 2]
    vs = K[1, 1] * (-cam[:, 1]) / depth + K[1, 2]  # image rows grow downwards
    u_lo, u_hi = float(us.min()) - pad, float(us.max()) + pad
    v_lo, v_hi = float(vs.min()) - pad, float(vs.max()) + pad
    if u_lo < 0 or v_lo < 0 or u_hi > width or v_hi > height:
        return False  # not entirely inside the image
    # The pixels the rectangle touches: column i covers [i, i + 1).
    i0, i1 = int(u_lo // 1), min(int(u_hi // 1), width - 1)
    j0, j1 = int(v_lo // 1), min(int(v_hi // 1), height - 1)
    return not bool(fg[j0 : j1 + 1, i0 : i1 + 1].any())


def carve(
    Ks, c2ws, alphas, max_level: int, bbox, threshold: float = 0.5, pad: float = 1.0, near: float = 1e-6
) -> torch.Tensor:
    """Twin of the carving in ``SparseOctree.from_masks`` with a given bbox: sorted leaf Morton codes.

    Coarse to fine from the root of the cube that ``bbox`` maps to: a cell is kept when it meets the box
    and no view carves it (``_view_carves``); the kept cells' children are the next level's candidates.
    """
    Ks = torch.as_tensor(Ks, dtype=torch.float64)
    c2ws = torch.as_tensor(c2ws, dtype=torch.float64)
    fg = torch.as_tensor(alphas) > threshold
    lo, hi = torch.as_tensor(bbox, dtype=torch.float64)
    center, scale = (lo + hi) / 2, 2.0 / float((hi - lo).max())
    box_lo, box_hi = (lo - center) * scale, (hi - center) * scale
    corner_offsets = torch.tensor([[c & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], dtype=torch.float64)
    kept = [(0, 0, 0)]
    for level in range(max_level + 1):
        if level == 0:
            candidates = kept
        else:
            candidates = [(2 * x + dx, 2 * y + dy, 2 * z + dz) for x, y, z in kept
                          for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)]
        size = 2.0 / (1 << level)
        kept = []
        for cell in candidates:
            cell_lo = torch.tensor(cell, dtype=torch.float64) * size - 1.0
            if ((cell_lo + size) <= box_lo).any() or (cell_lo >= box_hi).any():
                continue
            corners_world = center + (cell_lo + corner_offsets * size) / scale
            if not any(_view_carves(Ks[v], c2ws[v], fg[v], corners_world, pad, near) for v in range(len(Ks))):
                kept.append(cell)
    if not kept:
        return torch.zeros(0, dtype=torch.int64)
    return torch.sort(morton_bits(torch.tensor(kept))).values


# --- ray marching (tvq/kernels/raymarch.py) ---

_U32 = 0xFFFFFFFF


def _mul_u32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for u32 values held in int64, without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _U32


def hash_u32(x: torch.Tensor) -> torch.Tensor:
    """The ray marcher's 32-bit integer mix (lowbias32) on int64 tensors holding u32 values."""
    x = x & _U32
    x = x ^ (x >> 16)
    x = _mul_u32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul_u32(x, 0x846CA68B)
    return x ^ (x >> 16)


def jitter_uniform(seed: int, ray: int, k: torch.Tensor) -> torch.Tensor:
    """The ray marcher's stratum offsets u in [0, 1) of samples k (int64) of one ray."""
    h = hash_u32((seed & _U32) ^ hash_u32(ray ^ hash_u32(k)))
    return (h >> 8).double() / 2.0**24


def raymarch_reference(
    cells: torch.Tensor,
    level: int,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    samples_per_cell: int = 16,
    near: float = 0.0,
    far: float = 1e10,
    max_samples_per_ray: int | None = None,
    max_samples: int | None = None,
    jitter: bool = False,
    seed: int = 0,
):
    """Brute-force twin of ``tvq.sampling.raymarch``, in float64: ``PackedSamples``.

    No walk and no skipping: every crossing of every grid plane x, y, z = -1 + i h (i = 0..N) is a
    candidate boundary. Sorted, consecutive crossings bound intervals that each lie in one cell; the
    cell of an interval's midpoint says whether it is occupied. Occupied intervals of positive length
    get ``samples_per_cell`` samples each, as in the kernel.
    """
    from .octree import morton_encode
    from .sampling import PackedSamples

    o, d = origins.double().cpu(), dirs.double().cpu()
    codes = cells.cpu()
    res = 1 << level
    h = 2.0 / res
    num_rays = o.shape[0]
    nonzero = d != 0

    # clip to the cube and to [near, far] (a ray parallel to a slab and outside it misses)
    ta = (-1.0 - o) / d
    tb = (1.0 - o) / d
    t_lo = torch.where(nonzero, torch.minimum(ta, tb), torch.full_like(o, -torch.inf))
    t_hi = torch.where(nonzero, torch.maximum(ta, tb), torch.full_like(o, torch.inf))
    t_lo = torch.where(~nonzero & (o.abs() > 1), torch.full_like(o, torch.inf), t_lo)
    t_in = torch.clamp(t_lo.amax(dim=1), min=near)
    t_out = torch.clamp(t_hi.amin(dim=1), max=far)

    # every plane crossing, clipped to [t_in, t_out]
    planes = -1.0 + h * torch.arange(res + 1, dtype=torch.float64)
    crossings = (planes[None, None, :] - o[:, :, None]) / d[:, :, None]
    crossings = torch.where(nonzero[:, :, None], crossings, t_in[:, None, None]).reshape(num_rays, -1)
    bounds = torch.cat([t_in[:, None], t_out[:, None], crossings], dim=1)
    bounds = torch.minimum(torch.maximum(bounds, t_in[:, None]), t_out[:, None]).sort(dim=1).values
    t0, t1 = bounds[:, :-1], bounds[:, 1:]
    mid = 0.5 * (t0 + t1)
    ijk = torch.floor((o[:, None, :] + mid[..., None] * d[:, None, :] + 1.0) / h).long().clamp(0, res - 1)
    code = morton_encode(ijk)
    pos = torch.searchsorted(codes, code).clamp(max=max(codes.numel() - 1, 0))
    occupied = (codes[pos] == code) if codes.numel() else torch.zeros_like(code, dtype=torch.bool)
    keep = occupied & (t1 > t0) & (t_in < t_out)[:, None]

    n = samples_per_cell
    cap = max_samples_per_ray if max_samples_per_ray is not None else 1 << 62
    budget = max_samples if max_samples is not None else 1 << 62
    t_all, dt_all, ids_all, offsets = [], [], [], [0]
    for r in range(num_rays):
        seg0, seg1 = t0[r][keep[r]], t1[r][keep[r]]
        dt = ((seg1 - seg0) / n).repeat_interleave(n)
        k = torch.arange(dt.numel(), dtype=torch.int64)  # sample index along the ray
        u = jitter_uniform(seed, r, k) if jitter else torch.full_like(dt, 0.5)
        t = seg0.repeat_interleave(n) + ((k % n).double() + u) * dt
        take = min(t.numel(), cap, budget - offsets[-1])
        t_all.append(t[:take])
        dt_all.append(dt[:take])
        ids_all.append(torch.full((take,), r, dtype=torch.int32))
        offsets.append(offsets[-1] + take)
    cat = lambda xs, dtype: torch.cat(xs) if xs else torch.zeros(0, dtype=dtype)  # noqa: E731
    return PackedSamples(
        ray_offsets=torch.tensor(offsets, dtype=torch.int64),
        t=cat(t_all, torch.float64),
        dt=cat(dt_all, torch.float64),
        ray_ids=cat(ids_all, torch.int32),
    )


# --- gather + codebook (tvq/kernels/gather.py, tvq/kernels/codebook.py) ---


def locate_cells(points: torch.Tensor, flat, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Level k of ``flat`` at normalised points (S, 3): (found (S,) bool, corner rows (S, 8) int64 global
    vertex rows, trilinear weights (S, 8) with zeros where the cell is unoccupied or the point outside)."""
    from .octree import CORNERS, morton_encode

    res = int(flat.resolution[k])
    lo, hi = int(flat.cell_start[k]), int(flat.cell_start[k + 1])
    codes = flat.cell_codes[lo:hi]
    inside = (points.abs() <= 1).all(dim=1)  # the closed cube; False for NaN
    u = (points + 1) * res * 0.5  # a power-of-two scale: only the addition rounds, as in the kernel
    ijk = torch.nan_to_num(torch.floor(u)).clamp(0, res - 1)  # x = 1 lies in the last cell
    frac = u - ijk
    code = morton_encode(ijk.long())
    pos = torch.searchsorted(codes, code).clamp(max=max(hi - lo - 1, 0))
    found = inside & (codes[pos] == code) if hi > lo else torch.zeros_like(inside)
    rows = flat.cell_vertices[lo + pos].long()
    corner = CORNERS.to(points.device)  # (8, 3): corner c has offsets (c & 1, c >> 1 & 1, c >> 2 & 1)
    w = torch.where(corner[None] == 1, frac[:, None, :], 1 - frac[:, None, :]).prod(dim=2)
    w = torch.where(found[:, None], w, torch.zeros_like(w))
    return found, rows, w


def gather(points: torch.Tensor, flat, features: torch.Tensor, lod: int) -> torch.Tensor:
    """Twin of ``ops.gather``: per used level, trilinear interpolation of the occupied cell's 8 corners."""
    points = points.to(features.dtype)
    out = features.new_zeros(points.shape[0], features.shape[1])
    for k in range(lod):
        _, rows, w = locate_cells(points, flat, k)
        out = out + (w[:, :, None] * features[rows]).sum(dim=1)
    return out


def vq_gather(points: torch.Tensor, flat, logits: torch.Tensor, codebooks: torch.Tensor, lod: int,
              bits: int) -> torch.Tensor:
    """Twin of ``ops.vq_gather``, with the straight-through softmax of the VQ-AD reference code: per
    sample and corner, soft = softmax(C_v), hard = onehot(argmax C_v), code = hard - sg(soft) + soft,
    feature = code @ D_k. The forward value is D_k[argmax C_v]; autograd gives dD through the one-hot
    and dC through the softmax Jacobian."""
    K = 1 << bits
    points = points.to(codebooks.dtype)
    out = codebooks.new_zeros(points.shape[0], codebooks.shape[1])
    for k in range(lod):
        _, rows, w = locate_cells(points, flat, k)
        c = logits[rows]  # (S, 8, K)
        soft = torch.softmax(c, dim=-1)
        hard = torch.nn.functional.one_hot(c.argmax(dim=-1), K).to(soft.dtype)
        code = hard - soft.detach() + soft
        out = out + (w[:, :, None] * (code @ codebooks[k * K:(k + 1) * K])).sum(dim=1)
    return out


def hash_gather(points: torch.Tensor, flat, indices: torch.Tensor, codebooks: torch.Tensor, lod: int) -> torch.Tensor:
    """Twin of ``ops.hash_gather``: the gather over the table codebooks[indices]."""
    return gather(points, flat, codebooks[indices.long()], lod)


# --- composite (tvq/kernels/composite.py) ---


def composite_reference(
    sigma: torch.Tensor,
    rgb: torch.Tensor,
    t: torch.Tensor,
    dt: torch.Tensor,
    ray_offsets: torch.Tensor,
    background: torch.Tensor | None = None,
    early_stop_eps: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Twin of ``tvq.ops.composite``: (colour (R, 3), opacity (R,), depth (R,), weights (S,)).

    One loop over rays and, inside, one over the ray's samples front to back, as in the kernel;
    autograd provides the gradients.
    """
    num_rays = ray_offsets.numel() - 1
    if background is None:
        background = torch.zeros(3, dtype=sigma.dtype)
    bg = background if background.ndim == 2 else background.expand(num_rays, 3)
    colours, opacities, depths = [], [], []
    weights = [torch.zeros((), dtype=sigma.dtype)] * sigma.shape[0]
    for r in range(num_rays):
        trans = torch.ones((), dtype=sigma.dtype)
        colour = torch.zeros(3, dtype=sigma.dtype)
        depth = torch.zeros((), dtype=sigma.dtype)
        for i in range(int(ray_offsets[r]), int(ray_offsets[r + 1])):
            alpha = 1 - torch.exp(-sigma[i] * dt[i])
            w = trans * alpha
            colour = colour + w * rgb[i]
            depth = depth + w * t[i]
            weights[i] = w
            trans = trans * (1 - alpha)
            if trans < early_stop_eps:
                break
        colours.append(colour + trans * bg[r])
        opacities.append(1 - trans)
        depths.append(depth)
    stack = lambda xs, shape: torch.stack(xs) if xs else torch.zeros(shape, dtype=sigma.dtype)  # noqa: E731
    return stack(colours, (0, 3)), stack(opacities, (0,)), stack(depths, (0,)), stack(weights, (0,))


# --- importance (tvq/kernels/importance.py) ---


def importance(points: torch.Tensor, flat, weights: torch.Tensor, lod: int | None = None) -> torch.Tensor:
    """Twin of ``ops.importance``: each sample adds weight * trilinear weight to its 8 corners, every used
    level (all by default)."""
    points = points.to(weights.dtype)
    out = weights.new_zeros(int(flat.vertex_start[-1]))
    for k in range(len(flat.levels) if lod is None else lod):
        _, rows, w = locate_cells(points, flat, k)
        for c in range(8):
            out.index_add_(0, rows[:, c], weights * w[:, c])
    return out


# --- training rays (tvq/kernels/rays.py) ---


def training_rays(ids: torch.Tensor, Ks: torch.Tensor, c2ws: torch.Tensor, images: torch.Tensor):
    """Origins, unit directions and target colours of pixel ids v H W + j W + i (``tvq.ops.training_rays``)."""
    from .data.rays import rays_for_views

    _, h, w, _ = images.shape
    view, pixel = ids // (h * w), ids % (h * w)
    row, col = pixel // w, pixel % w
    origins, dirs = rays_for_views(Ks, c2ws, view, torch.stack([col, row], dim=1))
    return origins, dirs, images[view, row, col]
