"""The built-in analytic scene: files, determinism, materials, antialiasing, exact depth, geometry helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tvq.data import synthetic
from tvq.data.rays import pixel_rays
from tvq.data.synthetic import (
    CAMERA_ANGLE_X,
    DEPTH_UNIT_SCALE_FACTOR,
    SOLIDS,
    bounds,
    intersect,
    intrinsics,
    make_scene,
    sdf,
    surface_points,
)
from tvq.errors import TvqError

SIZE = 40
COUNTS = {"train": 4, "val": 2, "test": 3}
SCENE_EXTENT = 2.0  # the scene spans about 2 units


def _make(path: Path, seed: int = 0, **kw) -> Path:
    args = dict(size=SIZE, n_train=COUNTS["train"], n_val=COUNTS["val"], n_test=COUNTS["test"], seed=seed)
    args.update(kw)
    return make_scene(path, **args)


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    return _make(tmp_path_factory.mktemp("synthetic") / "scene")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _views(root: Path, split: str):
    """(rgba uint8, depth in units, c2w) per frame, read straight from the files."""
    meta = json.loads((root / f"transforms_{split}.json").read_text())
    for fr in meta["frames"]:
        rgba = np.asarray(Image.open(root / (fr["file_path"] + ".png")))
        steps = np.asarray(Image.open(root / fr["depth_file_path"]))
        yield rgba, steps.astype(np.float64) * meta["depth_unit_scale_factor"], np.array(fr["transform_matrix"])


def _all_views(root: Path):
    for split in COUNTS:
        yield from _views(root, split)


# ---- files and format -------------------------------------------------------------------------------


def test_layout_and_metadata(scene_dir):
    for split, n in COUNTS.items():
        meta = json.loads((scene_dir / f"transforms_{split}.json").read_text())
        assert meta["camera_angle_x"] == CAMERA_ANGLE_X
        assert meta["depth_unit_scale_factor"] == DEPTH_UNIT_SCALE_FACTOR
        assert len(meta["frames"]) == n
        for k, fr in enumerate(meta["frames"]):
            assert fr["file_path"] == f"./{split}/r_{k}"
            assert fr["depth_file_path"] == f"./{split}/r_{k}_depth.png"
            img = Image.open(scene_dir / split / f"r_{k}.png")
            assert img.mode == "RGBA" and img.size == (SIZE, SIZE)
            dep = Image.open(scene_dir / split / f"r_{k}_depth.png")
            assert np.asarray(dep).dtype == np.uint16 and dep.size == (SIZE, SIZE)
            c2w = np.array(fr["transform_matrix"])
            assert c2w.shape == (4, 4)
            np.testing.assert_allclose(c2w[3], [0, 0, 0, 1])
            R, eye = c2w[:3, :3], c2w[:3, 3]
            np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
            assert np.linalg.det(R) == pytest.approx(1.0)
            assert np.linalg.norm(eye) == pytest.approx(4.0)
            assert eye[2] > 0  # upper hemisphere
            # OpenGL camera: it looks down its -z axis, at the origin
            np.testing.assert_allclose(-R[:, 2], -eye / np.linalg.norm(eye), atol=1e-12)
    assert not list(scene_dir.parent.glob(".*")), "no temporary folders left behind"


def test_splits_have_distinct_cameras(scene_dir):
    eyes = [c2w[:3, 3] for _, _, c2w in _all_views(scene_dir)]
    dists = np.linalg.norm(np.array(eyes)[:, None] - np.array(eyes)[None], axis=-1)
    assert dists[~np.eye(len(eyes), dtype=bool)].min() > 0.05


def test_sizes_and_counts_are_respected(tmp_path):
    root = make_scene(tmp_path / "s", size=17, n_train=2, n_val=0, n_test=1, seed=3)
    assert root == tmp_path / "s"
    assert not (root / "transforms_val.json").exists() and not (root / "val").exists()
    assert len(json.loads((root / "transforms_train.json").read_text())["frames"]) == 2
    assert len(json.loads((root / "transforms_test.json").read_text())["frames"]) == 1
    assert np.asarray(Image.open(root / "train" / "r_1.png")).shape == (17, 17, 4)
    with pytest.raises(TvqError):
        make_scene(tmp_path / "t", size=16, n_train=0)


def test_deterministic_for_a_seed(scene_dir, tmp_path):
    same = _files(_make(tmp_path / "same", seed=0))
    assert same == _files(scene_dir)
    other = _files(_make(tmp_path / "other", seed=1))
    assert other.keys() == same.keys()
    assert other["transforms_train.json"] != same["transforms_train.json"]
    assert sum(other[k] != same[k] for k in same if k.endswith(".png")) >= len(same) // 2


# ---- image content ---------------------------------------------------------------------------------------


def test_several_materials_and_many_colours(scene_dir):
    seen: set[int] = set()
    colours = set()
    K = intrinsics(SIZE)
    for rgba, _, c2w in _all_views(scene_dir):
        o, d = pixel_rays(K, c2w, width=SIZE, height=SIZE, dtype=torch.float64)
        _, ids, _ = intersect(o.numpy(), d.numpy())
        seen |= set(ids[ids >= 0].tolist())
        opaque = rgba[..., 3] == 255
        colours |= {tuple(c) for c in (rgba[opaque][:, :3] // 16).tolist()}  # coarse bins: real differences
    assert len(seen) >= 7, f"only solids {sorted(seen)} visible"
    assert len(colours) >= 40


def test_alpha_is_straight_with_fractional_edges(scene_dir):
    for rgba, _, _ in _all_views(scene_dir):
        a = rgba[..., 3]
        assert (a == 0).any() and (a == 255).any()
        assert ((a > 0) & (a < 255)).sum() >= 20, "antialiased edges have fractional alpha"
        assert (rgba[a == 0][:, :3] == 0).all()
        # straight alpha: edge pixels keep full-strength colours instead of fading towards black
        edge = (a > 0) & (a < 128)
        assert rgba[edge][:, :3].max(axis=1).mean() > 60


def test_depth_lies_on_the_surface(scene_dir):
    K = intrinsics(SIZE)
    for rgba, depth, c2w in _all_views(scene_dir):
        o, d, zscale = pixel_rays(K, c2w, width=SIZE, height=SIZE, return_zscale=True, dtype=torch.float64)
        D = torch.from_numpy(depth.reshape(-1))
        fg = D > 0
        assert fg.sum() > 0.1 * SIZE * SIZE
        points = o[fg] + d[fg] * (D[fg] / zscale[fg])[:, None]
        err = np.abs(sdf(points.numpy()))
        assert err.max() < 1e-3 * SCENE_EXTENT, f"depth point off the surface by {err.max():.2e}"
        # z-depth, not along-ray distance: the camera-space z of each point is -depth
        cam = (points - torch.from_numpy(c2w[:3, 3])) @ torch.from_numpy(c2w[:3, :3])
        np.testing.assert_allclose(-cam[:, 2].numpy(), D[fg].numpy(), atol=1e-12)


def test_depth_is_zero_exactly_where_the_centre_ray_misses(scene_dir):
    K = intrinsics(SIZE)
    for rgba, depth, c2w in _all_views(scene_dir):
        o, d = pixel_rays(K, c2w, width=SIZE, height=SIZE, dtype=torch.float64)
        t, _, _ = intersect(o.numpy(), d.numpy())
        miss = ~np.isfinite(t.reshape(SIZE, SIZE))
        np.testing.assert_array_equal(depth == 0, miss)
        alpha = rgba[..., 3]
        assert (depth[alpha == 0] == 0).all()  # the centre sample counts towards alpha
        assert (alpha[depth > 0] > 0).all()


def test_depth_fits_the_16_bit_range(scene_dir):
    for _, depth, _ in _all_views(scene_dir):
        fg = depth[depth > 0]
        assert fg.min() > 2.0 and fg.max() < 65535 * DEPTH_UNIT_SCALE_FACTOR


# ---- writing safely ------------------------------------------------------------------------------------


def test_refuses_to_overwrite_without_permission(tmp_path):
    root = make_scene(tmp_path / "s", size=16, n_train=1, n_val=0, n_test=1)
    before = _files(root)
    with pytest.raises(TvqError, match="s is not empty") as err:
        make_scene(root, size=16, n_train=2, n_val=0, n_test=1)
    assert "\n" not in str(err.value) and str(root) in str(err.value)
    assert _files(root) == before
    make_scene(root, size=16, n_train=2, n_val=0, n_test=1, overwrite=True)
    assert len(json.loads((root / "transforms_train.json").read_text())["frames"]) == 2
    assert (root / "train" / "r_1.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_empty_folder_is_fine_and_foreign_folders_are_never_replaced(tmp_path):
    (tmp_path / "empty").mkdir()
    make_scene(tmp_path / "empty", size=16, n_train=1, n_val=0, n_test=1)
    assert (tmp_path / "empty" / "transforms_train.json").is_file()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(TvqError, match="mine"):
        make_scene(tmp_path / "mine", size=16, n_train=1, n_val=0, n_test=1, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(TvqError, match="not a folder"):
        make_scene(tmp_path / "file", size=16)


def test_interrupted_write_leaves_no_scene(tmp_path, monkeypatch):
    real = synthetic._write_split

    def fail_on_test(root, split, poses, size):
        if split == "test":
            raise KeyboardInterrupt
        real(root, split, poses, size)

    monkeypatch.setattr(synthetic, "_write_split", fail_on_test)
    with pytest.raises(KeyboardInterrupt):
        make_scene(tmp_path / "s", size=16, n_train=1, n_val=1, n_test=1)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(synthetic, "_write_split", real)
    root = make_scene(tmp_path / "s", size=16, n_train=1, n_val=0, n_test=1)
    before = _files(root)
    monkeypatch.setattr(synthetic, "_write_split", fail_on_test)
    with pytest.raises(KeyboardInterrupt):
        make_scene(root, size=16, n_train=3, n_val=0, n_test=1, overwrite=True)
    assert _files(root) == before, "an interrupted overwrite keeps the old scene"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_cli_make_scene(tmp_path, capsys):
    from tvq.apps.cli import main

    out = tmp_path / "demo"
    main(["make-scene", str(out), "--size", "16", "--train", "2", "--val", "1", "--test", "1", "--seed", "4"])
    assert len(json.loads((out / "transforms_train.json").read_text())["frames"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["make-scene", str(out), "--size", "16"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0]
    main(["make-scene", str(out), "--size", "16", "--train", "1", "--test", "1", "--force"])
    assert len(json.loads((out / "transforms_train.json").read_text())["frames"]) == 1


# ---- analytic geometry --------------------------------------------------------------------------------------


def test_bounds_inside_the_unit_cube():
    lo, hi = bounds()
    assert (lo >= -1).all() and (hi <= 1).all()
    assert (hi - lo).min() > 1.0
    pts = surface_points(20000, seed=1)
    assert (pts >= lo - 1e-9).all() and (pts <= hi + 1e-9).all()
    assert np.isclose(pts.min(0), lo, atol=0.05).all() and np.isclose(pts.max(0), hi, atol=0.05).all()


def test_surface_points_on_surface_deterministic_and_everywhere():
    pts = surface_points(5000, seed=7)
    assert pts.shape == (5000, 3)
    assert np.abs(sdf(pts)).max() < 1e-9
    np.testing.assert_array_equal(pts, surface_points(5000, seed=7))
    assert not np.array_equal(pts, surface_points(5000, seed=8))
    # every solid, thin rods and coin included, gets samples
    per_solid = np.stack([synthetic._solid_sdf(s, synthetic._to_local(s, pts)) for s in SOLIDS])
    owners = np.abs(per_solid).argmin(axis=0)
    assert set(owners.tolist()) == set(range(len(SOLIDS)))


def test_sdf_signs_and_distances():
    sphere = next(s for s in SOLIDS if s.name == "sphere")
    assert sdf(sphere.center[None])[0] == pytest.approx(-sphere.size[0])
    assert sdf(np.array([[0.0, 0.0, 3.0]]))[0] > 2.0
    far = np.array([[5.0, 0.0, -0.8]])  # level with the pedestal
    assert sdf(far)[0] == pytest.approx(5.0 - 0.95, abs=1e-9)  # nearest: the pedestal's rim
    # outside the scene the sdf is the exact distance to the surface: check against dense samples
    rng = np.random.default_rng(0)
    samples = surface_points(20000, seed=2)
    q = rng.uniform(-1.2, 1.2, size=(300, 3))
    q = q[sdf(q) > 0.02]
    nearest = np.sqrt(((q[:, None] - samples[None]) ** 2).sum(-1)).min(axis=1)
    s = sdf(q)
    assert (s <= nearest + 1e-9).all()  # never more than the true distance
    assert np.median(nearest - s) < 0.03  # and close to it (up to sample spacing)


def test_intersect_agrees_with_sdf():
    rng = np.random.default_rng(1)
    o = rng.normal(size=(4000, 3))
    o = 3.5 * o / np.linalg.norm(o, axis=1, keepdims=True)
    target = rng.uniform(-0.9, 0.9, size=(4000, 3))
    d = (target - o) / np.linalg.norm(target - o, axis=1, keepdims=True)
    t, ids, n = intersect(o, d)
    hit = ids >= 0
    assert hit.mean() > 0.3
    p = o[hit] + t[hit, None] * d[hit]
    assert np.abs(sdf(p)).max() < 1e-9
    np.testing.assert_allclose(np.linalg.norm(n[hit], axis=1), 1.0, atol=1e-9)
    assert ((n[hit] * d[hit]).sum(1) < 1e-12).all(), "normals face the incoming ray"
    # no surface before the hit: the sdf stays positive along the ray up to t
    for frac in (0.25, 0.5, 0.9, 0.999):
        assert (sdf(o[hit] + frac * t[hit, None] * d[hit]) > 0).all()
    miss_pts = o[~hit, None] + np.linspace(0, 8, 200)[None, :, None] * d[~hit, None]
    assert (sdf(miss_pts.reshape(-1, 3)) > 0).all()


# ---- the Blender reader, when present ------------------------------------------------------------------------


def test_loader_round_trip(scene_dir):
    loader = pytest.importorskip("tvq.data.loader")
    if not hasattr(loader, "load_scene"):
        pytest.skip("tvq.data.loader has no load_scene")
    scene = loader.load_scene(scene_dir)
    assert scene.format == "blender"
    K = intrinsics(SIZE)
    for split, n in COUNTS.items():
        views = scene.split(split)
        assert len(views) == n
        for view, (rgba, depth, c2w) in zip(views, _views(scene_dir, split)):
            assert (view.width, view.height) == (SIZE, SIZE)
            np.testing.assert_allclose(view.c2w, c2w, atol=1e-12)
            np.testing.assert_allclose(view.K, K, rtol=1e-6)
            assert view.depth is not None and view.alpha is not None
            np.testing.assert_allclose(view.depth, depth, rtol=1e-6, atol=1e-6)
            a = rgba[..., 3:4] / 255.0
            np.testing.assert_allclose(view.alpha, a[..., 0], atol=1e-6)
            np.testing.assert_allclose(view.image, rgba[..., :3] / 255.0 * a + (1 - a), atol=2e-3)
