"""Visual-hull carving: the kernel against its loop twin, and no true surface ever carved away."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tvq import reference, runtime
from tvq.errors import TvqError
from tvq.kernels import carve
from tvq.octree import SparseOctree, camera_bbox, morton_encode

pytestmark = pytest.mark.kernels

# A small analytic scene: a sphere and a thin rod (a capsule about 2-3 pixels wide in 64-pixel views).
SPHERE_C, SPHERE_R = np.array([0.25, 0.1, 0.0]), 0.5
ROD_A, ROD_B, ROD_R = np.array([-0.7, -0.5, -0.6]), np.array([-0.35, 0.6, 0.7]), 0.06
LEGO_ANGLE_X = 0.6911112070083618


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    eye, target, up = (np.asarray(v, np.float64) for v in (eye, target, up))
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(right, forward), -forward, eye
    return c2w


def ring_cameras(counts_and_elevations, radius: float = 4.0, jitter: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    poses = []
    for count, elevation in counts_and_elevations:
        for k in range(count):
            az, el = 2 * math.pi * k / count + 0.3 * elevation, math.radians(elevation)
            eye = radius * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
            poses.append(look_at(eye, target=rng.normal(scale=jitter, size=3)))
    return np.array(poses)


def intrinsics(size: int, angle_x: float = LEGO_ANGLE_X) -> np.ndarray:
    f = 0.5 * size / math.tan(0.5 * angle_x)
    return np.array([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])


def render_masks(K: np.ndarray, c2ws: np.ndarray, size: int) -> np.ndarray:
    """(V, size, size) alpha: 1 where the ray through the pixel centre hits the sphere or the rod."""
    j, i = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    d_cam = np.stack([(i - K[0, 2]) / K[0, 0], -(j - K[1, 2]) / K[1, 1], -np.ones_like(i)], -1).reshape(-1, 3)
    out = []
    for c2w in c2ws:
        o = c2w[:3, 3]
        d = d_cam @ c2w[:3, :3].T
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        w = SPHERE_C - o
        hit_sphere = np.linalg.norm(w - (w @ d.T)[:, None] * d, axis=1) < SPHERE_R
        # distance between each ray's line and the rod's axis segment (convex in s once t is eliminated)
        e, w0 = ROD_B - ROD_A, o - ROD_A
        b, dd, ee, c = d @ e, d @ w0, e @ w0, e @ e
        s = np.clip((ee - b * dd) / np.maximum(c - b * b, 1e-12), 0.0, 1.0)
        dist2 = ((w0[None] - s[:, None] * e[None]) ** 2).sum(1) - (dd - s * b) ** 2
        out.append((hit_sphere | (dist2 < ROD_R**2)).reshape(size, size).astype(np.float32))
    return np.stack(out)


def solid_points(n: int, seed: int = 0) -> np.ndarray:
    """Points on the sphere's and the rod's surfaces."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(n, 3))
    sphere = SPHERE_C + SPHERE_R * u / np.linalg.norm(u, axis=1, keepdims=True)
    e = (ROD_B - ROD_A) / np.linalg.norm(ROD_B - ROD_A)
    n1 = np.cross(e, [1.0, 0.0, 0.0])
    n1 /= np.linalg.norm(n1)
    n2 = np.cross(e, n1)
    s, phi = rng.uniform(size=(n, 1)), rng.uniform(0, 2 * math.pi, size=(n, 1))
    side = ROD_A + s * (ROD_B - ROD_A) + ROD_R * (np.cos(phi) * n1 + np.sin(phi) * n2)
    u = rng.normal(size=(n, 3))
    caps = np.where(rng.uniform(size=(n, 1)) < 0.5, ROD_A, ROD_B) + ROD_R * u / np.linalg.norm(u, axis=1, keepdims=True)
    return np.concatenate([sphere, side, caps])


def leaf_codes_of(octree: SparseOctree, points: np.ndarray) -> torch.Tensor:
    x = octree.normalize(torch.as_tensor(points, dtype=torch.float64))
    assert x.abs().max() <= 1.0, "true geometry lies outside the octree's cube"
    res = 1 << octree.max_level
    ijk = ((x + 1) / 2 * res).floor().long().clamp(0, res - 1)
    return morton_encode(ijk)


def assert_keeps(octree: SparseOctree, points: np.ndarray) -> None:
    codes = leaf_codes_of(octree, points)
    inside = torch.isin(codes, octree.cells[octree.max_level].cpu())
    assert bool(inside.all()), f"{int((~inside).sum())} of {len(points)} surface points lie in carved cells"


@pytest.fixture(scope="module")
def ring_scene():
    c2ws = ring_cameras([(10, 15), (6, 50), (2, -30)])
    size = 64
    K = intrinsics(size)
    return np.repeat(K[None], len(c2ws), 0), c2ws, render_masks(K, c2ws, size)


# ---- against the loop twin -----------------------------------------------------------------------


def tiny_scene(seed: int):
    c2ws = ring_cameras([(3, 20), (2, 60)], jitter=0.05, seed=seed)
    size = 20
    K = intrinsics(size) * np.array([[1.0], [1.1], [1.0]])  # non-square pixels
    return np.repeat(K[None], len(c2ws), 0), c2ws, render_masks(K, c2ws, size)


def check_twin(seed: int, max_level: int, dtype: torch.dtype, pad: float) -> None:
    Ks, c2ws, alphas = tiny_scene(seed)
    bbox = np.array([[-1.05, -0.9, -1.0], [1.0, 1.1, 0.95]])
    octree = SparseOctree.from_masks(Ks, c2ws, alphas, max_level, bbox=bbox, pad=pad, dtype=dtype)
    expected = reference.carve(Ks, c2ws, alphas, max_level, bbox, pad=pad)
    assert torch.equal(octree.cells[max_level].cpu(), expected)
    assert 0 < expected.numel() < 8**max_level


@pytest.mark.parametrize("seed,max_level,pad", [(0, 2, 1.0), (1, 3, 1.0), (2, 3, 0.0), (3, 4, 0.5)])
def test_carve_matches_twin(seed, max_level, pad):
    check_twin(seed, max_level, torch.float64, pad)


def test_carve_float32_matches_twin():
    check_twin(4, 3, torch.float32, 1.0)


def test_settled_subtrees_are_what_testing_would_keep(ring_scene, monkeypatch):
    Ks, c2ws, alphas = ring_scene
    fast = SparseOctree.from_masks(Ks, c2ws, alphas, 6, bbox=[[-1, -1, -1], [1, 1, 1]], dtype=torch.float64)
    unpatched = carve.carve_kernel

    def without_settling(dtype):
        kernel = unpatched(dtype)

        def run(codes, keep, *args):
            kernel(codes, keep, *args)
            keep[keep == 2] = 1

        return run

    monkeypatch.setattr(carve, "carve_kernel", without_settling)
    slow = SparseOctree.from_masks(Ks, c2ws, alphas, 6, bbox=[[-1, -1, -1], [1, 1, 1]], dtype=torch.float64)
    for level in range(7):
        assert torch.equal(fast.cells[level], slow.cells[level])


# ---- conservative: true geometry survives --------------------------------------------------------


@pytest.mark.parametrize("bbox", [[[-1, -1, -1], [1, 1, 1]], None])
def test_carving_keeps_sphere_and_thin_rod(ring_scene, bbox):
    Ks, c2ws, alphas = ring_scene
    octree = SparseOctree.from_masks(Ks, c2ws, alphas, 6, bbox=bbox)
    assert_keeps(octree, solid_points(4000, seed=1))
    # ...while removing most of the empty space (the solids fill about 7% of [-1, 1]^3)
    assert octree.num_cells(6) < 0.3 * 8**6
    assert octree.num_vertices(6) > octree.num_cells(6)
    rebuilt = SparseOctree.from_child_masks(6, octree.child_masks(), octree.center, octree.scale)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.cells, octree.cells))


def test_camera_bbox_for_lego_like_captures():
    c2ws = ring_cameras([(12, 10), (12, 35), (8, 60), (1, 89)], radius=4.03)
    Ks = np.repeat(intrinsics(400)[None], len(c2ws), 0)
    lo, hi = camera_bbox(Ks, c2ws, 400, 400)
    assert torch.allclose(lo + hi, torch.zeros(3, dtype=torch.float64), atol=1e-9)  # centred on the look-at point
    assert bool((hi > 1.3).all()) and bool((hi < 2.0).all())  # holds the object, not much more
    off = ring_cameras([(12, 10), (12, 35)], radius=4.03) + 0.0
    off[:, :3, 3] += np.array([1.0, -2.0, 0.5])  # cameras shifted: the box follows the look-at point
    lo, hi = camera_bbox(Ks[:24], off, 400, 400)
    assert torch.allclose((lo + hi) / 2, torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), atol=1e-6)
    parallel = np.repeat(look_at([0, 0, 4.0], up=(0, 1, 0))[None], 3, 0)
    parallel[:, 0, 3] = [0.0, 1.0, 2.0]
    with pytest.raises(TvqError):
        camera_bbox(Ks[:3], parallel, 400, 400)


def test_from_masks_input_checks():
    Ks, c2ws, alphas = tiny_scene(0)
    with pytest.raises(TvqError):
        SparseOctree.from_masks(Ks, c2ws, alphas[:3], 3)
    with pytest.raises(TvqError):
        SparseOctree.from_masks(Ks, c2ws, alphas, 3, bbox=[[1, 1, 1], [0, 0, 0]])
    as_bytes = SparseOctree.from_masks(Ks, c2ws, (alphas * 255).astype(np.uint8), 3, bbox=[[-1, -1, -1], [1, 1, 1]])
    as_float = SparseOctree.from_masks(Ks, c2ws, alphas, 3, bbox=[[-1, -1, -1], [1, 1, 1]])
    assert torch.equal(as_bytes.cells[3], as_float.cells[3])


def test_carving_keeps_the_synthetic_scene(tmp_path):
    synthetic = pytest.importorskip("tvq.data.synthetic")
    from PIL import Image

    root = synthetic.make_scene(tmp_path / "scene", size=128, n_train=24, n_val=0, n_test=0, seed=0)
    meta = json.loads((root / "transforms_train.json").read_text())
    alphas = np.stack([
        np.asarray(Image.open(root / (frame["file_path"] + ".png")))[..., 3].astype(np.float32) / 255.0
        for frame in meta["frames"]
    ])
    c2ws = np.array([frame["transform_matrix"] for frame in meta["frames"]])
    size = alphas.shape[-1]
    Ks = np.repeat(intrinsics(size, meta["camera_angle_x"])[None], len(c2ws), 0)
    octree = SparseOctree.from_masks(Ks, c2ws, alphas, 7)
    assert_keeps(octree, synthetic.surface_points(20000, seed=3))
    assert octree.num_cells(7) < 0.3 * 8**7


# ---- CUDA ------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_carve_cuda(ring_scene, dtype):
    if runtime.ensure().arch != "cuda":
        pytest.skip("Taichi runs on the CPU backend in this process (TVQ_ARCH)")
    check_twin(5, 3, dtype, 1.0)
    Ks, c2ws, alphas = ring_scene
    octree = SparseOctree.from_masks(Ks, c2ws, torch.as_tensor(alphas).cuda(), 7, dtype=dtype)
    assert octree.device.type == "cuda"
    assert_keeps(octree, solid_points(4000, seed=2))
