"""Camera rays and depth back-projection: hand-computed cases, a numpy twin, batching, round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tvq.data.rays import depth_points, pixel_grid, pixel_rays, rays_for_views, scene_points, stack_cameras
from tvq.data.scene import Scene, View


def _K(f: float, cx: float, cy: float, fy: float | None = None, skew: float = 0.0) -> np.ndarray:
    return np.array([[f, skew, cx], [0.0, f if fy is None else fy, cy], [0.0, 0.0, 1.0]])


def _random_c2w(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = q, rng.normal(size=3) * 3
    return c2w


def _numpy_rays(K: np.ndarray, c2w: np.ndarray, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independent twin: OpenCV ray via K^-1, flipped to the OpenGL camera, rotated, normalised."""
    uv1 = np.concatenate([pixels + 0.5, np.ones((len(pixels), 1))], axis=1)
    cv = uv1 @ np.linalg.inv(K).T  # (x, y, 1), y down, looking down +z
    gl = cv * np.array([1.0, -1.0, -1.0])
    world = gl @ c2w[:3, :3].T
    unit = world / np.linalg.norm(world, axis=1, keepdims=True)
    zscale = 1.0 / np.linalg.norm(gl, axis=1)
    return np.broadcast_to(c2w[:3, 3], unit.shape), unit, zscale


# ---- hand-computed cases -----------------------------------------------------------------------------


def test_centre_pixel_of_identity_camera_looks_down_minus_z():
    o, d, z = pixel_rays(_K(10.0, 2.5, 2.5), np.eye(4), torch.tensor([[2, 2]]), return_zscale=True)
    torch.testing.assert_close(o, torch.zeros(1, 3))
    torch.testing.assert_close(d, torch.tensor([[0.0, 0.0, -1.0]]))
    torch.testing.assert_close(z, torch.ones(1))


def test_corner_pixel_direction():
    # 4x4 image, f = 2, principal point (2, 2): pixel (0, 0) has centre (0.5, 0.5), up and to the left
    _, d, z = pixel_rays(_K(2.0, 2.0, 2.0), np.eye(4), torch.tensor([[0, 0], [3, 3]]), return_zscale=True)
    n = math.sqrt(0.75**2 + 0.75**2 + 1.0)
    expected = torch.tensor([[-0.75, 0.75, -1.0], [0.75, -0.75, -1.0]]) / n
    torch.testing.assert_close(d, expected)
    torch.testing.assert_close(z, torch.full((2,), 1.0 / n))


def test_non_square_pixels_and_skew():
    K = _K(2.0, 2.0, 1.0, fy=4.0, skew=0.5)
    _, d = pixel_rays(K, np.eye(4), torch.tensor([[1, 3]]), dtype=torch.float64)
    y = (3.5 - 1.0) / 4.0
    x = (1.5 - 2.0 - 0.5 * y) / 2.0
    expected = torch.tensor([[x, -y, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(d, expected / expected.norm())


def test_rotation_and_translation_are_applied():
    # camera at (1, 2, 3) turned +90 degrees about world y: its -z axis points along world -x
    c2w = np.eye(4)
    c2w[:3, :3] = [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]
    c2w[:3, 3] = [1.0, 2.0, 3.0]
    K = _K(2.0, 2.0, 2.0)
    o, d = pixel_rays(K, c2w, torch.tensor([[2, 2], [0, 2]]), dtype=torch.float64)
    torch.testing.assert_close(o, torch.tensor([[1.0, 2.0, 3.0]] * 2, dtype=torch.float64))
    # centre of pixel (2, 2) is (2.5, 2.5): camera (0.25, -0.25, -1) -> world (-1, -0.25, -0.25)
    expected = torch.tensor([[-1.0, -0.25, -0.25], [-1.0, -0.25, 0.75]], dtype=torch.float64)
    torch.testing.assert_close(d, expected / expected.norm(dim=1, keepdim=True))


# ---- against the numpy twin, batching, dtype and device ---------------------------------------------------


def test_all_pixels_match_numpy_twin_and_are_unit():
    rng = np.random.default_rng(0)
    W, H = 7, 5
    K = _K(6.0, 3.3, 2.6, fy=5.5)
    c2w = _random_c2w(rng)
    o, d, z = pixel_rays(K, c2w, width=W, height=H, return_zscale=True, dtype=torch.float64)
    pix = np.stack(np.meshgrid(np.arange(W), np.arange(H), indexing="xy"), -1).reshape(-1, 2)
    no, nd, nz = _numpy_rays(K, c2w, pix)
    np.testing.assert_allclose(o.numpy(), no, atol=1e-12)
    np.testing.assert_allclose(d.numpy(), nd, atol=1e-12)
    np.testing.assert_allclose(z.numpy(), nz, atol=1e-12)
    np.testing.assert_allclose(d.norm(dim=1).numpy(), 1.0, atol=1e-12)
    # row-major: pixel k is (k % W, k // W)
    torch.testing.assert_close(pixel_grid(W, H), torch.from_numpy(pix))


def test_float32_default_and_dtype_following():
    K, c2w = _K(5.0, 2.0, 2.0), np.eye(4)
    o, d = pixel_rays(K, c2w, width=4, height=4)
    assert o.dtype == d.dtype == torch.float32 and d.device.type == "cpu"
    _, d64 = pixel_rays(torch.from_numpy(K), torch.from_numpy(c2w), width=4, height=4)
    assert d64.dtype == torch.float64
    torch.testing.assert_close(d, d64.float())


def test_zscale_turns_z_depth_into_ray_distance():
    rng = np.random.default_rng(1)
    K, c2w = _K(8.0, 4.0, 3.0), _random_c2w(rng)
    pix = torch.from_numpy(rng.integers(0, 8, size=(50, 2)))
    depth = torch.from_numpy(rng.uniform(0.5, 5.0, size=50))
    o, d, z = pixel_rays(K, c2w, pix, return_zscale=True, dtype=torch.float64)
    points = o + d * (depth / z)[:, None]
    cam = (points - torch.from_numpy(c2w[:3, 3])) @ torch.from_numpy(c2w[:3, :3])
    torch.testing.assert_close(-cam[:, 2], depth)


def test_batched_equals_per_view():
    rng = np.random.default_rng(2)
    V, N = 5, 300
    Ks = np.stack([_K(rng.uniform(20, 40), rng.uniform(10, 20), rng.uniform(10, 20), fy=rng.uniform(20, 40)) for _ in range(V)])
    c2ws = np.stack([_random_c2w(rng) for _ in range(V)])
    ids = torch.from_numpy(rng.integers(0, V, size=N))
    pix = torch.from_numpy(rng.integers(0, 32, size=(N, 2)))
    o, d, z = rays_for_views(Ks, c2ws, ids, pix, return_zscale=True, dtype=torch.float64)
    for v in range(V):
        m = ids == v
        ov, dv, zv = pixel_rays(Ks[v], c2ws[v], pix[m], return_zscale=True, dtype=torch.float64)
        torch.testing.assert_close(o[m], ov)
        torch.testing.assert_close(d[m], dv)
        torch.testing.assert_close(z[m], zv)
        _, nd, nz = _numpy_rays(Ks[v], c2ws[v], pix[m].numpy())
        np.testing.assert_allclose(d[m].numpy(), nd, atol=1e-12)
        np.testing.assert_allclose(z[m].numpy(), nz, atol=1e-12)


def test_batched_from_stacked_scene_cameras():
    rng = np.random.default_rng(3)
    views = [View(f"v{k}", np.zeros((6, 8, 3), np.float32), _K(7.0, 4.0, 3.0), _random_c2w(rng)) for k in range(3)]
    Ks, c2ws = stack_cameras(views)
    assert Ks.shape == (3, 3, 3) and c2ws.shape == (3, 4, 4) and Ks.dtype == torch.float32
    ids = torch.tensor([2, 0, 1, 2])
    pix = torch.tensor([[0, 0], [7, 5], [3, 2], [4, 4]])
    o, d = rays_for_views(Ks, c2ws, ids, pix)
    assert o.dtype == torch.float32
    for n in range(4):
        ov, dv = pixel_rays(views[ids[n]].K, views[ids[n]].c2w, pix[n : n + 1])
        torch.testing.assert_close(o[n : n + 1], ov)
        torch.testing.assert_close(d[n : n + 1], dv)


@pytest.mark.cuda
def test_cuda_inputs_give_cuda_rays():
    K = torch.tensor(_K(5.0, 2.0, 2.0), device="cuda")
    o, d = pixel_rays(K, np.eye(4), width=4, height=4)
    assert o.is_cuda and d.is_cuda
    Ks, c2ws = K[None], torch.eye(4, device="cuda", dtype=torch.float64)[None]
    ob, db = rays_for_views(Ks, c2ws, torch.zeros(16, dtype=torch.long), pixel_grid(4, 4, device="cuda"))
    torch.testing.assert_close(db, d)
    pts = depth_points(K, np.eye(4), torch.ones(4, 4, device="cuda"))
    assert pts.is_cuda and pts.shape == (16, 3)


# ---- depth back-projection -------------------------------------------------------------------------------


def test_depth_points_round_trip():
    rng = np.random.default_rng(4)
    H, W = 9, 12
    K, c2w = _K(10.0, 6.2, 4.4, fy=11.0), _random_c2w(rng)
    depth = rng.uniform(0.5, 4.0, size=(H, W))
    depth[rng.uniform(size=(H, W)) < 0.3] = 0.0
    pts, pix = depth_points(K, c2w, depth, return_pixels=True, dtype=torch.float64)
    assert len(pts) == (depth > 0).sum()
    # back to the camera, then project with K (OpenGL: x right, y up, -z forward)
    cam = (pts.numpy() - c2w[:3, 3]) @ c2w[:3, :3]
    z = -cam[:, 2]
    u = K[0, 0] * cam[:, 0] / z + K[0, 2]
    v = -K[1, 1] * cam[:, 1] / z + K[1, 2]
    np.testing.assert_allclose(u, pix[:, 0].numpy() + 0.5, atol=1e-9)
    np.testing.assert_allclose(v, pix[:, 1].numpy() + 0.5, atol=1e-9)
    np.testing.assert_allclose(z, depth[pix[:, 1].numpy(), pix[:, 0].numpy()], atol=1e-12)
    # every pixel with depth appears once, in row-major order
    rows, cols = np.nonzero(depth > 0)
    np.testing.assert_array_equal(pix.numpy(), np.stack([cols, rows], 1))


def test_depth_points_agree_with_rays():
    rng = np.random.default_rng(5)
    K, c2w = _K(9.0, 5.0, 4.0), _random_c2w(rng)
    depth = rng.uniform(1.0, 3.0, size=(8, 10))
    pts = depth_points(K, c2w, depth, dtype=torch.float64)
    o, d, z = pixel_rays(K, c2w, width=10, height=8, return_zscale=True, dtype=torch.float64)
    torch.testing.assert_close(pts, o + d * (torch.from_numpy(depth.reshape(-1)) / z)[:, None])


def test_depth_points_stride_skips_and_ignores_invalid():
    K = _K(4.0, 3.0, 3.0)
    depth = np.ones((6, 6), np.float32)
    depth[0, 0] = 0.0
    depth[2, 2] = np.nan
    depth[4, 2] = -1.0
    pts, pix = depth_points(K, np.eye(4), depth, stride=2, return_pixels=True)
    assert pts.dtype == torch.float32
    kept = {tuple(p) for p in pix.tolist()}
    assert kept == {(i, j) for j in (0, 2, 4) for i in (0, 2, 4)} - {(0, 0), (2, 2), (2, 4)}
    torch.testing.assert_close(pts[:, 2], -torch.ones(len(pts)))


def test_scene_points_concatenates_views_with_depth():
    rng = np.random.default_rng(6)
    K = _K(5.0, 2.0, 2.0)

    def view(name: str, depth: np.ndarray | None) -> View:
        return View(name, np.zeros((4, 4, 3), np.float32), K, _random_c2w(rng), depth=depth)

    d0 = np.full((4, 4), 2.0, np.float32)
    d1 = np.full((4, 4), 3.0, np.float32)
    d1[:2] = 0.0
    views = [view("a", d0), view("b", None), view("c", d1), view("d", d0)]
    scene = Scene("blender", root=None, views=views, splits={"train": [0, 1, 2], "test": [3]})
    pts = scene_points(scene, "train", dtype=torch.float64)
    expected = torch.cat([depth_points(views[i].K, views[i].c2w, views[i].depth, dtype=torch.float64) for i in (0, 2)])
    assert pts.shape == (16 + 8, 3)
    torch.testing.assert_close(pts, expected)
    assert scene_points(scene, "train", stride=2).shape == (4 + 2, 3)
    assert scene_points(scene, "val").shape == (0, 3)
    assert scene_points(scene, "test").dtype == torch.float32


# ---- the training-ray kernel against its twin ----------------------------------------------------------------


def test_training_rays_kernel_matches_its_twin():
    from tvq import ops, reference, runtime

    rng = np.random.default_rng(5)
    H, W = 6, 9
    views = [View(f"v{k}", rng.uniform(size=(H, W, 3)).astype(np.float32),
                  _K(7.0 + k, 4.1, 2.9, fy=6.5, skew=0.3 * k), _random_c2w(rng)) for k in range(3)]
    device = runtime.device()
    Ks, c2ws = (x.to(device) for x in stack_cameras(views))
    images = torch.from_numpy(np.stack([v.image for v in views])).to(device)
    ids = torch.from_numpy(rng.integers(0, 3 * H * W, size=500)).to(device)
    ids[:2] = torch.tensor([0, 3 * H * W - 1])  # the first and the last pixel
    got = ops.training_rays(ids, Ks, c2ws, images)
    want = reference.training_rays(ids, Ks, c2ws, images)
    for g, w in zip(got, want):
        assert g.shape == (500, 3) and g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert all(x.shape == (0, 3) for x in ops.training_rays(ids[:0], Ks, c2ws, images))
