"""The viewer: its state classes without a window, and its GGUI layer headless (Vulkan through Mesa's
lavapipe on a CPU machine; the GGUI tests skip, saying why, where no Vulkan can be initialised)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tvq import runtime
from tvq.data import load_scene
from tvq.data.synthetic import make_scene
from tvq.errors import TvqError
from tvq.export import export_checkpoint, open_model
from tvq.infer import MODES, FastRenderer
from tvq.render import RenderOptions, render_image
from tvq.train import TrainConfig, Trainer

from tvq.apps.viewer import OrbitController, StreamSimulator, ViewerState, ViewerWindow, screenshot, view

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("viewer") / "scene"
    make_scene(root, size=32, n_train=10, n_val=0, n_test=2, seed=2)
    return root


@pytest.fixture(scope="module")
def model_file(scene_dir, tmp_path_factory):
    """A tiny raw model (3 LODs, levels 3..5) and its .tvq."""
    runtime.ensure()
    out = tmp_path_factory.mktemp("viewer-run")
    trainer = Trainer(load_scene(scene_dir), TrainConfig(bits=0, iters=120, max_level=5, num_lods=3, batch_rays=1024,
                                                         samples_per_cell=2, eval_every=0), out)
    trainer.setup()
    trainer.fit()
    export_checkpoint(out / "checkpoint.pt", out / "model.tvq")
    return out / "model.tvq"


@pytest.fixture(scope="session")
def ggui():
    """Skip (with the reason) where GGUI cannot open a headless window."""
    import taichi as ti

    runtime.ensure()
    try:
        window = ti.ui.Window("probe", (16, 16), show_window=False, vsync=False)
    except Exception as err:
        pytest.skip(f"GGUI cannot initialise Vulkan here ({err}); install mesa-vulkan-drivers and libvulkan1")
    window.destroy()


def mae(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


# ---- the camera controller (no window) ---------------------------------------------------------


def _pose(eye, target, up=(0.0, 0.0, 1.0)):
    eye, target, up = (torch.tensor(x, dtype=torch.float64) for x in (eye, target, up))
    back = (eye - target) / (eye - target).norm()
    right = torch.linalg.cross(up, back)
    right = right / right.norm()
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, torch.linalg.cross(back, right), back, eye
    return pose


def test_controller_gives_the_pose_it_was_given_in_the_opengl_convention():
    pose = _pose((3.0, -2.0, 1.5), (0.2, 0.1, 0.0))
    ctl = OrbitController(pose, target=(0.2, 0.1, 0.0))
    torch.testing.assert_close(ctl.c2w(), pose)
    R = ctl.c2w()[:3, :3]
    torch.testing.assert_close(R.T @ R, torch.eye(3, dtype=torch.float64))
    forward = -ctl.c2w()[:3, 2]  # the camera looks down -z, at the target
    to_target = ctl.target - ctl.eye
    torch.testing.assert_close(forward, to_target / to_target.norm())
    assert torch.det(R) > 0.999


def test_orbit_keeps_the_distance_and_the_target_and_turns_about_world_up():
    ctl = OrbitController(_pose((3.0, 0.0, 1.0), (0.0, 0.0, 0.0)), target=(0, 0, 0), world_up=(0, 0, 1))
    d0, t0, z0 = ctl.distance, ctl.target.clone(), float(ctl.eye[2])
    ctl.orbit(0.25, 0.0)  # a quarter of the window: 45 degrees about +z
    assert (ctl.eye - ctl.target).norm() == pytest.approx(d0)
    torch.testing.assert_close(ctl.target, t0)
    assert float(ctl.eye[2]) == pytest.approx(z0)  # yaw keeps the height
    angle = math.degrees(math.atan2(float(ctl.eye[1]), float(ctl.eye[0])))
    assert abs(angle) == pytest.approx(45.0)
    ctl.orbit(0.0, 0.1)
    assert (ctl.eye - ctl.target).norm() == pytest.approx(d0)
    assert float(ctl.eye[2]) != pytest.approx(z0)  # pitch changes the elevation
    for _ in range(200):  # never over the pole
        ctl.orbit(0.0, 0.1)
    up = ctl.c2w()[:3, 1]
    assert float(up[2]) > 0
    torch.testing.assert_close(-ctl.c2w()[:3, 2], (ctl.target - ctl.eye) / ctl.distance)


def test_pan_moves_target_and_eye_by_the_same_vector_in_the_image_plane():
    ctl = OrbitController(_pose((0.0, -4.0, 0.0), (0.0, 0.0, 0.0)), target=(0, 0, 0))
    eye0, target0, R0 = ctl.eye.clone(), ctl.target.clone(), ctl.R.clone()
    ctl.pan(0.1, -0.05)
    shift_eye, shift_target = ctl.eye - eye0, ctl.target - target0
    torch.testing.assert_close(shift_eye, shift_target)
    assert float(shift_eye.norm()) > 0
    assert abs(float(shift_eye @ R0[:, 2])) < 1e-12  # in the image plane
    torch.testing.assert_close(ctl.R, R0)
    assert ctl.distance == pytest.approx(4.0)


def test_zoom_changes_only_the_distance_and_reset_restores():
    ctl = OrbitController(_pose((2.0, 2.0, 1.0), (0.0, 0.0, 0.0)), target=(0, 0, 0))
    home = ctl.c2w().clone()
    R0, target0, d0 = ctl.R.clone(), ctl.target.clone(), ctl.distance
    ctl.zoom(2)
    assert ctl.distance < d0
    torch.testing.assert_close(ctl.R, R0)
    torch.testing.assert_close(ctl.target, target0)
    ctl.wheel(-2)
    assert ctl.distance == pytest.approx(d0)
    ctl.orbit(0.3, 0.1)
    ctl.pan(0.2, 0.2)
    ctl.zoom(5)
    ctl.fly(1.0, 0.5, -0.2, dt=0.3)
    assert not torch.allclose(ctl.c2w(), home)
    ctl.reset()
    torch.testing.assert_close(ctl.c2w(), home)


def test_mouse_drags_and_fly_keys():
    ctl = OrbitController(_pose((0.0, -3.0, 0.0), (0.0, 0.0, 0.0)), target=(0, 0, 0))
    d0 = ctl.distance
    ctl.mouse_press("LMB", 0.5, 0.5)
    assert ctl.mouse_move(0.6, 0.5)
    ctl.mouse_release("LMB")
    assert not ctl.dragging and ctl.distance == pytest.approx(d0)
    target0 = ctl.target.clone()
    ctl.mouse_press("RMB", 0.5, 0.5)
    ctl.mouse_move(0.5, 0.6)
    ctl.mouse_release()
    assert not torch.allclose(ctl.target, target0)
    assert not ctl.mouse_move(0.9, 0.9)  # no button held: nothing moves
    eye0, forward = ctl.eye.clone(), -ctl.R[:, 2]
    assert ctl.key("w", 0.5)
    torch.testing.assert_close(ctl.eye - eye0, forward * d0 * ctl.fly_speed * 0.5)
    assert ctl.key("s", 0.5) and torch.allclose(ctl.eye, eye0)
    assert not ctl.key("x", 0.5)


# ---- streaming and state (no window) -----------------------------------------------------------


def test_stream_simulator_completes_lods_as_their_bytes_arrive(model_file):
    data = model_file.read_bytes()
    ends = [e["end"] for e in open_model(model_file).header["lods"]]
    stream = StreamSimulator(data, bandwidth=1.0)  # 1000 bytes per second
    assert stream.step(ends[0] / 1000.0 * 0.5) == []
    assert stream.received < ends[0]
    done = stream.step(ends[0] / 1000.0)  # now past LOD 0's end
    assert done and done[0] == 0 and stream.lods >= 1
    stream.bandwidth = 1e6
    stream.step(10.0)
    assert stream.done and stream.lods == len(ends) and stream.received == len(data)
    stream.restart()
    assert stream.received == 0 and stream.lods == 0
    with pytest.raises(TvqError, match="bandwidth"):
        stream.bandwidth = -1


def test_viewer_state_lod_bytes_modes_and_dynamic_resolution(model_file):
    state = ViewerState(model_file, size=(40, 30))
    header = open_model(model_file).header
    assert [state.lod_bytes(i) for i in range(state.num_lods)] == [e["end"] for e in header["lods"]]
    assert state.shown_lod == state.num_lods - 1
    state.set_lod(0)
    assert state.shown_lod == 0
    for bad in (-1, state.num_lods):
        with pytest.raises(TvqError, match="lod"):
            state.set_lod(bad)
    with pytest.raises(TvqError, match="mode"):
        state.set_mode("normals")
    for mode in MODES:
        state.set_mode(mode)
    state.set_dynamic(True, target_fps=5)
    for _ in range(30):
        state.frame_done(1.0)  # 1 s per frame: far slower than 5 FPS
    assert state.render_scale == pytest.approx(state.min_scale)
    assert state.render_size() == (8, 8)
    for _ in range(40):
        state.frame_done(0.001)
    assert state.render_scale == 1.0
    with pytest.raises(TvqError, match="target FPS"):
        state.set_dynamic(True, target_fps=0)
    with pytest.raises(TvqError, match="render scale"):
        state.set_render_scale(2)
    with pytest.raises(TvqError, match="background"):
        state.set_background((1, 2, 0))


def test_snapping_to_scene_cameras_gives_their_pose_ground_truth_and_psnr(model_file, scene_dir):
    from tvq.eval import evaluate

    state = ViewerState(model_file, scene=scene_dir, size=(32, 32))
    scene = load_scene(scene_dir)
    assert [v.name for v in state.views[:2]] == [v.name for v in scene.split("test")]
    v = state.snap(0)
    torch.testing.assert_close(state.controller.c2w(), torch.as_tensor(v.c2w, dtype=torch.float64))
    model = open_model(model_file)
    expected = evaluate(model.field, [scene.split("test")[0]], model.background, lods=[model.lods - 1])[0]["psnr"]
    assert state.view_psnr() == pytest.approx(expected, abs=0.1)
    assert state.key_press("]").startswith("camera") and state.view_index == 1
    assert state.key_press("[") and state.view_index == 0
    state.key_press("Left")
    assert state.view_index == len(state.views) - 1
    state.show_ground_truth = True
    state.snap(0)
    np.testing.assert_allclose(state.render(32, 32), scene.split("test")[0].image)
    with pytest.raises(TvqError, match="view"):
        state.snap(len(state.views))
    state.controller.orbit(0.1, 0)
    state.camera_moved()
    assert state.view_index is None and state.view_psnr() is None


def test_screenshot_and_orbit_recording_actions(model_file, tmp_path):
    import imageio.v3 as iio

    state = ViewerState(model_file, size=(24, 20))
    png = state.screenshot(tmp_path / "shot.png")
    assert iio.imread(png).shape == (20, 24, 3)
    gif = state.record_orbit(tmp_path / "orbit.gif", frames=3)
    frames = iio.imread(gif, index=None)
    assert frames.shape[:3] == (3, 20, 24)
    assert not np.array_equal(frames[0], frames[1])  # the camera turned
    with pytest.raises(TvqError, match="png"):
        state.screenshot(tmp_path / "shot.jpg")
    with pytest.raises(TvqError, match="gif"):
        state.record_orbit(tmp_path / "orbit.avi")


# ---- the GGUI layer, headless -------------------------------------------------------------------


def test_headless_screenshot_equals_the_fast_renderer_and_render_image(ggui, model_file, scene_dir, tmp_path):
    import imageio.v3 as iio

    shot = screenshot(model_file, tmp_path / "view0.png", view=0, scene=scene_dir, size=(40, 32))
    assert shot["size"] == (40, 32) and shot["image"].shape == (32, 40, 3)
    model = open_model(model_file)
    fast = FastRenderer(model.field, model.background).render(shot["K"], shot["c2w"], 40, 32)["color"].cpu().numpy()
    ref = render_image(model.field, shot["K"], shot["c2w"], 40, 32, model.lods - 1, model.background,
                       RenderOptions(early_stop=True))["color"].cpu().numpy()
    assert fast.std() > 0.01  # not a blank frame
    assert mae(shot["image"], fast) < 1 / 255
    assert mae(shot["image"], ref) < 1 / 255
    png = iio.imread(tmp_path / "view0.png")
    assert png.shape == (32, 40, 3) and mae(png / 255.0, shot["image"]) < 0.5 / 255


def test_lod_and_mode_change_what_is_drawn(ggui, model_file, tmp_path):
    shots = {}
    for lod in range(3):
        shots[f"lod{lod}"] = screenshot(model_file, tmp_path / f"lod{lod}.png", lod=lod, size=(32, 32))["image"]
    for mode in MODES[1:]:
        shots[mode] = screenshot(model_file, tmp_path / f"{mode}.png", mode=mode, size=(32, 32))["image"]
    names = list(shots)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert mae(shots[a], shots[b]) > 1 / 255, (a, b)


def test_a_checkpoint_shows_what_its_file_shows(ggui, model_file, tmp_path):
    a = screenshot(model_file, tmp_path / "file.png", size=(32, 32))
    b = screenshot(model_file.parent / "checkpoint.pt", tmp_path / "checkpoint.png", size=(32, 32))
    torch.testing.assert_close(b["c2w"], a["c2w"], atol=1e-4, rtol=0)  # the header keeps 6 digits
    assert mae(a["image"], b["image"]) < 1 / 255  # fp16 features in the file


def test_streaming_refines_the_picture_and_a_prefix_equals_max_bytes(ggui, model_file, tmp_path):
    ends = [e["end"] for e in open_model(model_file).header["lods"]]
    cuts = [end + 7 if lod + 1 < len(ends) else end for lod, end in enumerate(ends)]  # a LOD and a few bytes more
    state = ViewerState(model_file, size=(32, 32))
    state.start_stream(bandwidth=1.0)
    seen = []
    with ViewerWindow(state, headless=True, panel=False) as window:
        with pytest.raises(TvqError, match="already open"):
            screenshot(model_file, tmp_path / "second.png", size=(32, 32))  # GGUI: one window at a time
        empty = window.frame(dt=0.0)
        np.testing.assert_allclose(empty, np.broadcast_to(np.float32(state.background), empty.shape), atol=1 / 255)
        for lod, cut in enumerate(cuts):
            state.stream.feed_to(cut)
            assert state.shown_lod == lod
            seen.append(window.frame(dt=0.0))
            assert state.last_stats["lod"] == lod
            assert set(window.timings) == {"render", "upload", "panel", "present"}
            assert all(v >= 0 for v in window.timings.values())
        state.start_stream()  # restart: nothing has arrived again
        np.testing.assert_allclose(window.frame(dt=0.0), empty, atol=1 / 255)
        window.frame(dt=ends[0] / 1000.0 + 0.01)  # simulated time: LOD 0 is in after end / 1 kB/s
        assert state.stream.lods >= 1
    assert mae(seen[0], seen[-1]) > 1 / 255  # the picture refined
    for lod, cut in enumerate(cuts):
        reference = screenshot(model_file, tmp_path / f"prefix{lod}.png", max_bytes=cut, size=(32, 32))
        assert reference["lod"] == lod
        np.testing.assert_array_equal(seen[lod], reference["image"])


def test_the_panel_draws_over_the_image(ggui, model_file, scene_dir):
    state = ViewerState(model_file, scene=scene_dir, size=(160, 120))
    state.start_stream(bandwidth=1e6)
    with ViewerWindow(state, headless=True, panel=True) as window:
        for _ in range(3):
            with_panel = window.frame(dt=0.1)
    plain = state.render(160, 120)
    assert mae(with_panel[:20, :40], plain[:20, :40]) > 10 / 255  # the panel's corner
    assert mae(with_panel[-20:, -40:], plain[-20:, -40:]) < 1 / 255  # the image elsewhere
    assert state.fps > 0


def test_bad_files_and_options_give_one_line_errors(ggui, model_file, scene_dir, tmp_path):
    out = tmp_path / "x.png"
    junk = tmp_path / "junk.tvq"
    junk.write_bytes(b"not a model at all")
    cases = [
        dict(path=tmp_path / "missing.tvq", out_png=out),
        dict(path=junk, out_png=out),
        dict(path=model_file, out_png=tmp_path / "x.jpg"),
        dict(path=model_file, out_png=out, mode="normals"),
        dict(path=model_file, out_png=out, lod=7),
        dict(path=model_file, out_png=out, size="12xbig"),
        dict(path=model_file, out_png=out, size=(4, 4)),
        dict(path=model_file, out_png=out, view=99),
        dict(path=model_file, out_png=out, view=99, scene=scene_dir),
        dict(path=model_file, out_png=out, max_bytes=10),
        dict(path=model_file.parent / "checkpoint.pt", out_png=out, max_bytes=1000),
    ]
    for kwargs in cases:
        with pytest.raises(TvqError) as err:
            screenshot(**kwargs)
        assert "\n" not in str(err.value), kwargs
    assert not out.exists()


def test_no_vulkan_and_no_display_are_one_line_errors(model_file, monkeypatch):
    import taichi as ti

    from tvq.apps.viewer import window as window_module

    def no_vulkan(*args, **kwargs):
        raise RuntimeError("Vulkan must be available for GGUI")

    monkeypatch.setattr(ti.ui, "Window", no_vulkan)
    with pytest.raises(TvqError, match="Vulkan") as err:
        window_module.open_window("t", (8, 8), headless=True)
    assert "\n" not in str(err.value)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(TvqError, match="display"):
        view(model_file, size=(32, 32))


def test_a_missing_vulkan_driver_gives_a_tvq_error_in_a_fresh_process(model_file, tmp_path):
    code = ("import sys\n"
            "from tvq.errors import TvqError\n"
            "from tvq.apps.viewer import screenshot\n"
            "try:\n"
            f"    screenshot({str(model_file)!r}, {str(tmp_path / 'x.png')!r}, size=(16, 16))\n"
            "except TvqError as err:\n"
            "    print('TvqError:', err)\n"
            "    sys.exit(2)\n")
    env = dict(os.environ, VK_ICD_FILENAMES=str(tmp_path / "none.json"), VK_DRIVER_FILES=str(tmp_path / "none.json"),
               TVQ_ARCH="cpu")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "TvqError:" in proc.stdout and "Vulkan" in proc.stdout


def test_render_benchmark_runs_small_and_writes_json(ggui, model_file, tmp_path):
    from benchmarks import render as bench

    out = tmp_path / "render.json"
    assert bench.main(["--models", f"raw={model_file}", "--size", "24", "--iters", "2", "--warmup", "1",
                       "--target-fps", "5", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    (row,) = results["models"]
    assert len(row["lods"]) == 3
    for lod in row["lods"]:
        assert lod["fast"]["median_ms"] > 0 and lod["render_image"]["median_ms"] > 0
        assert lod["psnr_fast_vs_render_image"] > 40
    assert results["viewer"]["fixed_scale"]["median_ms"] > 0
    assert results["viewer"]["dynamic"]["render_scale"] > 0
