"""Scene readers: tiny generated scenes of each format, and the real scenes in ../shared/data.

The generated scenes have known cameras, colours and depth, so the readers are checked without the real
data; the real-scene tests (marked ``data``) check counts, camera conventions (depth reprojected between
views) and that the RTMV copy of amsterdam matches its nerfstudio copy.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared_scene
from tvq.data import Scene, load_scene, summarize
from tvq.data import io

# ------------------------------------------------------------------------------------ fixture writers


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenGL camera-to-world looking from ``eye`` at ``target`` (+y towards ``up``, looking down -z)."""
    eye, target, up = (np.asarray(a, np.float64) for a in (eye, target, up))
    z = eye - target
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m


def ring_poses(n: int, radius: float = 4.0) -> list[np.ndarray]:
    angles = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return [look_at((radius * math.cos(a), radius * math.sin(a), 1.0)) for a in angles]


def write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def rgba8(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    arr = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    arr[0, 0, 3], arr[0, 1, 3] = 0, 255  # one transparent and one opaque pixel at known places
    return arr


def make_blender(root: Path, w: int = 8, h: int = 6, counts=(3, 1, 2), depth: bool = True, seed: int = 0) -> dict:
    """A Blender-format scene; returns what was written (pixels, poses, depth in scene units)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    angle = 0.8
    written = {"angle": angle, "splits": {}}
    poses = iter(ring_poses(sum(counts)))
    for split, n in zip(("train", "val", "test"), counts):
        frames = []
        for i in range(n):
            pixels = rgba8(rng, w, h)
            write_png(root / split / f"r_{i}.png", pixels)
            pose = next(poses)
            frame = {"file_path": f"./{split}/r_{i}", "rotation": 0.1, "transform_matrix": pose.tolist()}
            z = None
            if depth:
                raw = rng.integers(0, 60000, (h, w)).astype(np.uint16)
                raw[0, 0] = 0
                write_png(root / split / f"r_{i}_depth.png", raw)
                frame["depth_file_path"] = f"./{split}/r_{i}_depth.png"
                z = raw.astype(np.float64) * 1e-4
            frames.append(frame)
            written["splits"].setdefault(split, []).append({"pixels": pixels, "pose": pose, "depth": z})
        meta = {"camera_angle_x": angle, "frames": frames}
        if depth:
            meta["depth_unit_scale_factor"] = 1e-4
        (root / f"transforms_{split}.json").write_text(json.dumps(meta))
    return written


def make_nerfstudio(root: Path, n: int = 10, w: int = 10, h: int = 8, seed: int = 1, rgba: bool = False) -> dict:
    """A nerfstudio scene: RGB (or RGBA) PNGs, 16-bit millimetre depth, shared intrinsics."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    frames, pixels, depths = [], [], []
    for i, pose in enumerate(ring_poses(n)):
        img = rgba8(rng, w, h) if rgba else rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        raw = rng.integers(1, 5000, (h, w)).astype(np.uint16)
        write_png(root / "images" / f"{i:05d}.png", img)
        write_png(root / "depth" / f"{i:05d}.png", raw)
        frames.append({
            "file_path": f"images/{i:05d}.png",
            "depth_file_path": f"depth/{i:05d}.png",
            "transform_matrix": pose.tolist(),
        })
        pixels.append(img)
        depths.append(raw.astype(np.float64) * 1e-3)
    meta = {"camera_model": "OPENCV", "fl_x": 11.0, "fl_y": 12.0, "cx": 4.5, "cy": 3.5, "w": w, "h": h,
            "depth_unit_scale_factor": 0.001, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta, indent=1))
    return {"meta": meta, "pixels": pixels, "depths": depths}


def make_rtmv(root: Path, n: int = 6, w: int = 12, h: int = 10, plane: float = 2.5, seed: int = 2) -> dict:
    """An RTMV scene: linear RGBA EXRs, along-ray depth EXRs of a plane at z-depth ``plane``, JSON cameras."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    fx, fy, cx, cy = 9.0, 9.5, 6.0, 5.0
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    norms = io.pixel_ray_norms(K, h, w)
    out = {"K": K, "linear": [], "poses": []}
    for i, pose in enumerate(ring_poses(n)):
        lin = rng.uniform(0, 1.2, (h, w, 4)).astype(np.float32)
        lin[..., 3] = rng.uniform(0, 1, (h, w))
        dist = (plane * norms).astype(np.float32)
        dist[0, :] = 1e10  # a row of misses
        io.write_exr(root / f"{i:05d}.exr", {c: lin[..., k] for k, c in enumerate("RGBA")})
        io.write_exr(root / f"{i:05d}.depth.exr", {c: dist for c in "RGB"})
        cam = {
            "camera_data": {
                "camera_look_at": {"eye": pose[:3, 3].tolist(), "at": [0, 0, 0], "up": [0, 0, 1]},
                "intrinsics": {"fx": fx, "fy": fy, "cx": cx, "cy": cy},
                "width": w,
                "height": h,
                "cam2world": pose.T.tolist(),
            }
        }
        (root / f"{i:05d}.json").write_text(json.dumps(cam))
        out["linear"].append(lin)
        out["poses"].append(pose)
    return out


# ------------------------------------------------------------------------------------------ helpers


def reprojection_error(scene: Scene, a: int, b: int) -> tuple[float, int]:
    """Median |z_projected - depth_b| of view a's depth points that land on valid depth in view b."""
    va, vb = scene.views[a], scene.views[b]
    pts = io.backproject_depth(va.depth, va.K, va.c2w)
    w2c = np.linalg.inv(vb.c2w)
    p = pts @ w2c[:3, :3].T + w2c[:3, 3]
    z = -p[:, 2]
    front = z > 1e-6
    p, z = p[front], z[front]
    u = p[:, 0] / z * vb.K[0, 0] + vb.K[0, 2]
    v = -p[:, 1] / z * vb.K[1, 1] + vb.K[1, 2]
    i, j = np.floor(u).astype(int), np.floor(v).astype(int)
    inside = (i >= 0) & (i < vb.width) & (j >= 0) & (j < vb.height)
    i, j, z = i[inside], j[inside], z[inside]
    d = vb.depth[j, i]
    ok = d > 0
    return float(np.median(np.abs(z[ok] - d[ok]))), int(ok.sum())


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tvq.apps.cli", *args], capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------------------ io unit tests


def test_srgb_roundtrip_and_reference_values():
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    np.testing.assert_allclose(io.srgb_to_linear(io.linear_to_srgb(x)), x, atol=1e-6)
    np.testing.assert_allclose(io.linear_to_srgb(np.array([0.0, 0.0031308, 0.5, 1.0, 2.0, -1.0])),
                               [0.0, 0.04045, 0.7353570, 1.0, 1.0, 0.0], atol=1e-5)


def test_downscale_area_and_nearest_crop():
    img = np.arange(7 * 9 * 2, dtype=np.float32).reshape(7, 9, 2)
    out = io.downscale_area(img, 2)
    assert out.shape == (3, 4, 2)
    np.testing.assert_allclose(out[1, 2], img[2:4, 4:6].mean(axis=(0, 1)))
    near = io.downscale_nearest(img[..., 0], 3)
    assert near.shape == (2, 3)
    assert near[1, 2] == img[4, 7, 0]  # block rows 3..5, columns 6..8: centre (4, 7)


def test_exr_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    chans = {c: rng.normal(size=(5, 7)).astype(np.float32) for c in "RGBA"}
    io.write_exr(tmp_path / "x.exr", chans)
    back = io.read_exr(tmp_path / "x.exr")
    assert sorted(back) == list("ABGR")
    for c in chans:
        np.testing.assert_array_equal(back[c], chans[c])
    assert io.image_size(tmp_path / "x.exr") == (7, 5)


def test_ray_distance_to_z_on_plane():
    K = np.array([[50.0, 0, 31.0], [0, 40.0, 20.0], [0, 0, 1]])
    norms = io.pixel_ray_norms(K, 40, 64)
    assert norms.min() >= 1.0
    np.testing.assert_allclose(io.ray_distance_to_z(3.0 * norms, K), 3.0, rtol=1e-6)


def test_backproject_pixel_centre_convention():
    K = np.array([[10.0, 0, 2.0], [0, 10.0, 1.5], [0, 0, 1]])
    depth = np.zeros((3, 4), np.float32)
    depth[0, 3] = 2.0  # top-right pixel: centre (3.5, 0.5): right of and above the principal point
    c2w = np.eye(4)
    c2w[:3, 3] = [1.0, 2.0, 3.0]
    p = io.backproject_depth(depth, K, c2w)
    np.testing.assert_allclose(p, [[1.0 + 0.15 * 2, 2.0 + 0.1 * 2, 3.0 - 2.0]])


# ------------------------------------------------------------------------------- generated scenes


def test_blender_fixture(tmp_path):
    written = make_blender(tmp_path / "b")
    scene = load_scene(tmp_path / "b")
    assert scene.format == "blender"
    assert {k: len(v) for k, v in scene.splits.items()} == {"train": 3, "val": 1, "test": 2}
    view = scene.split("val")[0]
    src = written["splits"]["val"][0]
    fx = 0.5 * 8 / math.tan(0.4)
    np.testing.assert_allclose(view.K, [[fx, 0, 4.0], [0, fx, 3.0], [0, 0, 1]])
    np.testing.assert_allclose(view.c2w, src["pose"])
    rgba = src["pixels"].astype(np.float32) / 255
    expected = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    np.testing.assert_allclose(view.image, expected, atol=1e-6)
    np.testing.assert_allclose(view.alpha, rgba[..., 3], atol=1e-7)
    np.testing.assert_allclose(view.image[0, 0], 1.0)  # transparent pixel shows the white background
    np.testing.assert_allclose(view.depth, src["depth"], rtol=1e-6)
    assert view.depth[0, 0] == 0
    assert view.name == "val/r_0"
    info = summarize(scene)
    assert info["format"] == "blender" and info["depth"] and info["alpha"]
    assert (info["width"], info["height"]) == (8, 6)
    json.dumps(info)


def test_blender_partial_splits_and_extensions(tmp_path):
    make_blender(tmp_path / "b", depth=False)
    (tmp_path / "b" / "transforms_val.json").unlink()
    meta = json.loads((tmp_path / "b" / "transforms_test.json").read_text())
    meta["frames"][0]["file_path"] += ".png"  # with the extension spelled out
    meta["camera_angle_y"] = 0.5
    (tmp_path / "b" / "transforms_test.json").write_text(json.dumps(meta))
    scene = load_scene(tmp_path / "b")
    assert {k: len(v) for k, v in scene.splits.items()} == {"train": 3, "val": 0, "test": 2}
    assert not scene.has_depth
    test = scene.split("test")[0]
    assert test.K[1, 1] == pytest.approx(0.5 * 6 / math.tan(0.25))
    assert summarize(scene)["bbox"] is None


def test_blender_npy_depth(tmp_path):
    make_blender(tmp_path / "b", depth=False, counts=(2, 0, 0))
    (tmp_path / "b" / "transforms_val.json").unlink()
    (tmp_path / "b" / "transforms_test.json").unlink()
    meta = json.loads((tmp_path / "b" / "transforms_train.json").read_text())
    z = np.full((6, 8), 1.25, np.float32)
    z[1, 1] = np.nan
    np.save(tmp_path / "b" / "d0.npy", z)
    meta["frames"][0]["depth_file_path"] = "d0.npy"
    (tmp_path / "b" / "transforms_train.json").write_text(json.dumps(meta))
    scene = load_scene(tmp_path / "b")
    assert scene.views[0].depth[0, 0] == pytest.approx(1.25) and scene.views[0].depth[1, 1] == 0
    assert scene.views[1].depth is None


def test_nerfstudio_fixture_every_8th(tmp_path):
    written = make_nerfstudio(tmp_path / "n")
    scene = load_scene(tmp_path / "n")
    assert scene.format == "nerfstudio"
    assert scene.splits == {"train": [1, 2, 3, 4, 5, 6, 7, 9], "val": [], "test": [0, 8]}
    v = scene.views[3]
    np.testing.assert_allclose(v.K, [[11, 0, 4.5], [0, 12, 3.5], [0, 0, 1]])
    np.testing.assert_allclose(v.image, written["pixels"][3] / 255.0, atol=1e-6)
    assert v.alpha is None
    np.testing.assert_allclose(v.depth, written["depths"][3], rtol=1e-6)
    info = summarize(scene)
    assert info["splits"] == {"train": 8, "val": 0, "test": 2} and info["depth"] and not info["alpha"]
    pts = np.concatenate([io.backproject_depth(v.depth, v.K, v.c2w) for v in scene.views])
    np.testing.assert_allclose(info["bbox"], [pts.min(0), pts.max(0)], rtol=1e-6)


def test_nerfstudio_per_frame_intrinsics_mask_and_rgba(tmp_path):
    make_nerfstudio(tmp_path / "n", rgba=True)
    meta = json.loads((tmp_path / "n" / "transforms.json").read_text())
    meta["frames"][2].update({"fl_x": 20.0, "cx": 5.0})
    mask = np.zeros((8, 10), np.uint8)
    mask[:, 5:] = 255
    write_png(tmp_path / "n" / "masks" / "m2.png", mask)
    meta["frames"][2]["mask_path"] = "masks/m2.png"
    (tmp_path / "n" / "transforms.json").write_text(json.dumps(meta))
    scene = load_scene(tmp_path / "n")
    v2, v3 = scene.views[2], scene.views[3]
    np.testing.assert_allclose(v2.K[0], [20.0, 0, 5.0])
    np.testing.assert_allclose(v3.K[0], [11.0, 0, 4.5])
    assert v3.alpha is not None and v3.image[0, 0].tolist() == [1.0, 1.0, 1.0]
    assert np.all(v2.alpha[:, :5] == 0) and np.all(v2.image[:, :5] == 1.0)


def test_nerfstudio_explicit_splits(tmp_path):
    make_nerfstudio(tmp_path / "n")
    meta = json.loads((tmp_path / "n" / "transforms.json").read_text())
    meta["frames"] = meta["frames"][::-1]  # frames are ordered by file_path regardless
    meta["train_filenames"] = [f"images/{i:05d}.png" for i in (0, 1, 2, 3)]
    meta["test_filenames"] = [f"./images/{i:05d}.png" for i in (5, 6)]
    (tmp_path / "n" / "transforms.json").write_text(json.dumps(meta))
    scene = load_scene(tmp_path / "n")
    assert len(scene.views) == 6  # only frames that some split uses are loaded
    assert [v.name for v in scene.split("train")] == [f"images/{i:05d}" for i in range(4)]
    assert [v.name for v in scene.split("test")] == ["images/00005", "images/00006"]
    assert scene.splits["val"] == []


def test_nerfstudio_missing_images_one_warning(tmp_path):
    make_nerfstudio(tmp_path / "n")
    for i in (3, 8):
        (tmp_path / "n" / "images" / f"{i:05d}.png").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scene = load_scene(tmp_path / "n")
    assert len(caught) == 1 and "skipped 2 of 10" in str(caught[0].message)
    assert [v.name for v in scene.split("test")] == ["images/00000"]  # the split does not shift
    assert len(scene.split("train")) == 7


def test_nerfstudio_missing_images_cli_warns_and_succeeds(tmp_path):
    make_nerfstudio(tmp_path / "n")
    (tmp_path / "n" / "images" / "00004.png").unlink()
    res = run_cli("scene", str(tmp_path / "n"), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["splits"] == {"train": 7, "val": 0, "test": 2}
    assert res.stderr.count("skipped 1 of 10") == 1 and "Traceback" not in res.stderr


def test_rtmv_fixture(tmp_path):
    written = make_rtmv(tmp_path / "r")
    scene = load_scene(tmp_path / "r")
    assert scene.format == "rtmv"
    assert {k: len(v) for k, v in scene.splits.items()} == {"train": 4, "val": 0, "test": 2}
    v = scene.views[1]
    np.testing.assert_allclose(v.c2w, written["poses"][1], atol=1e-12)
    np.testing.assert_allclose(v.K, written["K"])
    lin = written["linear"][1]
    srgb = io.linear_to_srgb(lin[..., :3])
    np.testing.assert_allclose(v.image, srgb * lin[..., 3:] + (1 - lin[..., 3:]), atol=1e-6)
    np.testing.assert_allclose(v.alpha, lin[..., 3])
    assert np.all(v.depth[0] == 0)  # misses
    np.testing.assert_allclose(v.depth[1:], 2.5, rtol=1e-6)  # along-ray distances became z-depth


@pytest.mark.parametrize("n,expected", [(6, (4, 0, 2)), (30, (20, 1, 9)), (100, (66, 3, 31)), (2, (1, 0, 1))])
def test_rtmv_split_sizes(n, expected):
    from tvq.data.rtmv import split_indices

    s = split_indices(n)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == expected
    assert s["train"] + s["val"] + s["test"] == list(range(n))


def test_downscale_generated(tmp_path):
    make_nerfstudio(tmp_path / "n", w=10, h=7)
    meta = json.loads((tmp_path / "n" / "transforms.json").read_text())
    meta["h"] = 7
    (tmp_path / "n" / "transforms.json").write_text(json.dumps(meta))
    full = load_scene(tmp_path / "n")
    half = load_scene(tmp_path / "n", downscale=2)
    a, b = full.views[1], half.views[1]
    assert b.image.shape == (3, 5, 3) and b.depth.shape == (3, 5)
    np.testing.assert_allclose(b.K, [[5.5, 0, 2.25], [0, 6, 1.75], [0, 0, 1]])
    np.testing.assert_allclose(b.image, a.image[:6].reshape(3, 2, 5, 2, 3).mean(axis=(1, 3)), atol=1e-6)
    np.testing.assert_array_equal(b.depth, a.depth[1:6:2, 1:10:2])


def test_demo_scene_round_trip(tmp_path):
    synthetic = pytest.importorskip("tvq.data.synthetic")
    synthetic.make_scene(tmp_path / "demo", size=32, n_train=3, n_val=1, n_test=1, seed=0)
    scene = load_scene(tmp_path / "demo")
    info = summarize(scene)
    assert info["format"] == "blender" and info["splits"] == {"train": 3, "val": 1, "test": 1}
    assert info["depth"] and info["alpha"] and (info["width"], info["height"]) == (32, 32)
    assert all(v.depth is not None and (v.depth > 0).any() for v in scene.views)


def test_load_scene_accepts_a_json_path(tmp_path):
    make_nerfstudio(tmp_path / "n")
    assert load_scene(tmp_path / "n" / "transforms.json").format == "nerfstudio"
    make_blender(tmp_path / "b", depth=False)
    assert load_scene(tmp_path / "b" / "transforms_val.json").format == "blender"


# ------------------------------------------------------------------------------------- real scenes


@pytest.fixture(scope="module")
def lego() -> Scene:
    return load_scene(shared_scene("lego"))


@pytest.fixture(scope="module")
def livingroom() -> Scene:
    return load_scene(shared_scene("livingroom"))


@pytest.fixture(scope="module")
def amsterdam() -> Scene:
    return load_scene(shared_scene("amsterdam"))


@pytest.fixture(scope="module")
def rtmv_mini() -> Scene:
    return load_scene(shared_scene("amsterdam_rtmv_mini"))


@pytest.mark.data
def test_lego(lego):
    info = summarize(lego)
    assert info["format"] == "blender"
    assert info["splits"] == {"train": 100, "val": 25, "test": 25}
    assert (info["width"], info["height"]) == (400, 400)
    assert not info["depth"] and info["alpha"] and info["bbox"] is None
    v = lego.split("train")[0]
    assert v.name == "train/r_0"
    assert v.K[0, 0] == pytest.approx(0.5 * 400 / math.tan(0.5 * 0.6911112070083618))
    assert v.K[0, 2] == 200.0 and v.K[1, 2] == 200.0
    rgba = np.asarray(Image.open(shared_scene("lego") / "train" / "r_0.png"), np.float32) / 255
    np.testing.assert_allclose(v.image, rgba[..., :3] * rgba[..., 3:] + 1 - rgba[..., 3:], atol=1e-6)
    assert v.image.dtype == np.float32 and v.image.shape == (400, 400, 3)


@pytest.mark.data
def test_lego_downscale(lego):
    half = load_scene(shared_scene("lego"), downscale=2)
    assert (half.width, half.height) == (200, 200)
    a, b = lego.views[7], half.views[7]
    np.testing.assert_allclose(b.K[:2], a.K[:2] / 2)
    mean_a, mean_b = (v.image.mean(axis=(0, 1), dtype=np.float64) for v in (a, b))  # float64: exact enough
    np.testing.assert_allclose(mean_b, mean_a, atol=1e-6)
    np.testing.assert_allclose(b.alpha.mean(dtype=np.float64), a.alpha.mean(dtype=np.float64), atol=1e-6)


@pytest.mark.data
def test_livingroom(livingroom):
    info = summarize(livingroom)
    assert info["format"] == "nerfstudio"
    assert info["splits"] == {"train": 184, "val": 0, "test": 27}
    assert (info["width"], info["height"]) == (640, 480)
    assert info["depth"] and not info["alpha"]
    assert livingroom.split("test")[1].name == "images/00008"
    lo, hi = np.array(info["bbox"])
    assert np.all(hi - lo > 1.0) and np.all(hi - lo < 10.0)  # a room, in metres


@pytest.mark.data
def test_livingroom_depth_reprojects(livingroom):
    err, count = reprojection_error(livingroom, 40, 60)
    assert count > 50_000
    assert err < 5e-3, f"median depth disagreement {err * 1000:.2f} mm"


@pytest.mark.data
def test_amsterdam_depth_reprojects(amsterdam):
    assert len(amsterdam.views) == 150 and summarize(amsterdam)["splits"] == {"train": 131, "val": 0, "test": 19}
    centres = np.array([v.c2w[:3, 3] for v in amsterdam.views])
    nearest = int(np.argsort(np.linalg.norm(centres - centres[0], axis=1))[1])
    err, count = reprojection_error(amsterdam, 0, nearest)
    assert count > 10_000
    assert err < 3e-3, f"median depth disagreement {err:.5f} units"


@pytest.mark.data
def test_rtmv_mini(rtmv_mini):
    info = summarize(rtmv_mini)
    assert info["format"] == "rtmv"
    assert info["splits"] == {"train": 4, "val": 0, "test": 2}
    assert (info["width"], info["height"]) == (400, 400) and info["depth"] and info["alpha"]
    for v in rtmv_mini.views:  # cam2world (transposed) agrees with the look-at description
        cam = json.loads((shared_scene("amsterdam_rtmv_mini") / f"{v.name}.json").read_text())["camera_data"]
        expected = look_at(cam["camera_look_at"]["eye"], cam["camera_look_at"]["at"], cam["camera_look_at"]["up"])
        np.testing.assert_allclose(v.c2w, expected, atol=1e-6)


@pytest.mark.data
def test_rtmv_matches_amsterdam(rtmv_mini, amsterdam):
    for i, r in enumerate(rtmv_mini.views):
        a = amsterdam.views[i]
        assert a.name == f"images/{i:05d}" and r.name == f"{i:05d}"
        np.testing.assert_allclose(r.c2w, a.c2w, atol=1e-5)
        np.testing.assert_allclose(r.K, a.K, atol=1e-6)
        diff = np.abs(r.image - a.image)
        assert diff.mean() < 2e-3 and diff.max() < 0.02
        assert np.abs(r.alpha - a.alpha).max() < 0.01
        assert np.array_equal(r.depth > 0, a.depth > 0)
        both = (r.depth > 0) & (a.depth > 0)
        assert np.median(np.abs(r.depth - a.depth)[both]) < 2e-4  # 16-bit PNG steps are 1e-4


@pytest.mark.data
def test_cli_json_counts():
    res = run_cli("scene", str(shared_scene("lego")), "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["splits"] == {"train": 100, "val": 25, "test": 25} and info["format"] == "blender"
    res = run_cli("scene", str(shared_scene("livingroom")), "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["format"] == "nerfstudio" and info["depth"] is True
    assert sum(info["splits"].values()) == 211 and info["splits"]["test"] == 27
    assert (info["width"], info["height"]) == (640, 480)
