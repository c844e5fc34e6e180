"""Volume rendering of a ``RadianceField``: rays -> packed samples -> features -> colour.

For LOD i the rays are traced through the occupied cells of feature level i (so a coarse LOD needs only
the coarse part of the octree, as a streamed prefix of a model provides), sampled ``samples_per_cell``
times per cell, decoded by the MLP and alpha-composited onto the background. Rays arrive in world units;
everything inside runs in the octree's normalised cube (distances too: densities are per normalised unit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import ops
from .field import RadianceField
from .profiling import stage
from .sampling import MarchCounts, count_samples, fill_samples


@dataclass
class RenderOptions:
    samples_per_cell: int = 4
    max_samples_per_ray: int = 1024
    jitter: bool = False  # stratified jitter (training)
    early_stop: bool = False  # stop compositing once transmittance < 1e-4 (inference)


def march_rays(field: RadianceField, origins: torch.Tensor, dirs: torch.Tensor, lod: int,
               options: RenderOptions = RenderOptions()) -> MarchCounts:
    """The first half of ``render_rays``: the rays in the octree's cube, their samples at ``lod`` counted (queued
    on the device; ``render_counted`` renders them)."""
    with stage("march"):
        return count_samples(field.octree, field.octree.normalize(origins), dirs, field.grid.levels[lod],
                             samples_per_cell=options.samples_per_cell,
                             max_samples_per_ray=options.max_samples_per_ray)


def render_counted(field: RadianceField, counts: MarchCounts, lod: int, background: torch.Tensor,
                   options: RenderOptions = RenderOptions(), generator: torch.Generator | None = None,
                   seed: int | None = None) -> dict:
    """The second half of ``render_rays``, for rays counted by ``march_rays`` at the same ``lod``."""
    with stage("march"):
        packed = fill_samples(counts, jitter=options.jitter, seed=seed, generator=generator)
        points = packed.positions(counts.origins, counts.dirs)
    with stage("features"):
        features = field.grid(points, lod)
    with stage("decoder"):
        sigma, rgb = field.decoder(features, counts.dirs, packed.ray_ids)
    with stage("composite"):
        out = ops.composite(sigma, rgb, packed.t, packed.dt, packed.ray_offsets, background,
                            early_stop_eps=1e-4 if options.early_stop else 0.0)
    return {"color": out.colour, "opacity": out.opacity, "depth": out.depth / field.octree.scale,
            "samples": packed.num_samples}


def render_rays(field: RadianceField, origins: torch.Tensor, dirs: torch.Tensor, lod: int,
                background: torch.Tensor, options: RenderOptions = RenderOptions(),
                generator: torch.Generator | None = None, seed: int | None = None) -> dict:
    """Render world-space rays (R, 3) with unit directions at ``lod`` (0 = coarsest). The jitter of
    ``options.jitter`` comes from ``seed`` when given, else from ``generator``.

    Returns ``color`` (R, 3), ``opacity`` (R,), ``depth`` (R,) in world units along the ray, and the number
    of samples taken.
    """
    return render_counted(field, march_rays(field, origins, dirs, lod, options), lod, background, options,
                          generator, seed)


@torch.no_grad()
def render_image(field: RadianceField, K, c2w, width: int, height: int, lod: int, background: torch.Tensor,
                 options: RenderOptions = RenderOptions(), chunk: int = 1 << 13) -> dict:
    """Render a whole image in chunks of rays (so any resolution fits): colour (H, W, 3), opacity, depth."""
    from .data.rays import pixel_rays

    device = background.device
    origins, dirs = pixel_rays(K, c2w, width=width, height=height)
    origins, dirs = origins.to(device).float(), dirs.to(device).float()
    out = {"color": [], "opacity": [], "depth": []}
    for start in range(0, origins.shape[0], chunk):
        res = render_rays(field, origins[start:start + chunk], dirs[start:start + chunk], lod, background, options)
        for key in out:
            out[key].append(res[key])
    return {
        "color": torch.cat(out["color"]).reshape(height, width, 3),
        "opacity": torch.cat(out["opacity"]).reshape(height, width),
        "depth": torch.cat(out["depth"]).reshape(height, width),
    }


def orbit_poses(c2ws: torch.Tensor, center: torch.Tensor, num: int, elevation_deg: float | None = None) -> torch.Tensor:
    """``num`` camera-to-world poses circling ``center`` at the training cameras' mean distance.

    The orbit's axis is the mean camera up vector; its elevation defaults to the training cameras' mean.
    """
    c2ws = c2ws.double().cpu()
    center = center.double().cpu()
    up = c2ws[:, :3, 1].mean(0)
    up = up / up.norm()
    offsets = c2ws[:, :3, 3] - center
    radius = float(offsets.norm(dim=1).mean())
    if elevation_deg is None:
        sin_el = float((offsets @ up / offsets.norm(dim=1)).mean().clamp(-0.99, 0.99))
    else:
        sin_el = math.sin(math.radians(elevation_deg))
    # An orthonormal frame (a, b, up) around the axis.
    a = torch.linalg.cross(up, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    if a.norm() < 1e-6:
        a = torch.linalg.cross(up, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    a = a / a.norm()
    b = torch.linalg.cross(up, a)
    poses = []
    cos_el = math.sqrt(1 - sin_el**2)
    for k in range(num):
        phi = 2 * math.pi * k / num
        eye = center + radius * (cos_el * (math.cos(phi) * a + math.sin(phi) * b) + sin_el * up)
        back = (eye - center) / (eye - center).norm()  # the camera looks down -z
        right = torch.linalg.cross(up, back)
        right = right / right.norm()
        cam_up = torch.linalg.cross(back, right)
        pose = torch.eye(4, dtype=torch.float64)
        pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, cam_up, back, eye
        poses.append(pose)
    return torch.stack(poses)
