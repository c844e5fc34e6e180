"""The GGUI layer of the viewer: it draws ``ViewerState`` and forwards input to it, nothing more.

A ``ti.ui.Window`` shows the rendered image on its canvas (the (W, H) RGBA8 pixels, y up, that one kernel
packs from the (H, W, 3) render: ``canvas.py``) and a panel of controls; keys and mouse drags
go to the state's camera controller. Headless (``show_window=False``) the same frame is read back with
``get_image_buffer_as_numpy()``: that is how ``screenshot`` renders, and how the tests and the benchmark
time the viewer. GGUI needs Vulkan; without it (or without a display, for a window) opening fails with
a one-line ``TvqError``.

Input (GGUI 1.7.4 reports letters, arrows and a few named keys, no wheel and no punctuation, so every
action also has a key it does report or a panel button):

    left drag: orbit     right / middle / shift+left drag: pan     Up / Down (wheel): zoom
    W A S D: fly forward, left, back, right     Q E: down, up     R: reset camera
    Left / Right ([ / ]): previous / next camera of the scene     G: ground truth of a snapped camera
    M: next view mode     L: next LOD     P: screenshot     O: record an orbit     H: hide the panel
    Esc: quit
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from tvq.errors import TvqError
from tvq.infer import MODES

from .canvas import CanvasImage, set_canvas_image
from .state import LMB, MMB, RMB, ViewerState, parse_size, to_uint8

PANEL = (0.0, 0.0, 0.34, 0.78)  # x, y, width, height as window fractions (top left)
BANDWIDTH_RANGE = (1.0, 4000.0)  # kB/s on the slider


_open_windows: list = []  # GGUI runs one window per process: a second one crashes it


def open_window(title: str, size: tuple[int, int], headless: bool):
    """A GGUI window, or a one-line TvqError saying why there is none."""
    import taichi as ti

    if _open_windows:
        raise TvqError("a viewer window is already open in this process (GGUI runs one at a time); close it first")
    if not headless and sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or
                                                                   os.environ.get("WAYLAND_DISPLAY")):
        raise TvqError("no display to open a window on (DISPLAY is not set); render headless with "
                       "`tvq view FILE --screenshot out.png`")
    try:
        window = ti.ui.Window(title, tuple(int(x) for x in size), vsync=False, show_window=not headless)
    except Exception as err:  # RuntimeError("Vulkan must be available for GGUI"), GGUI missing, ...
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TvqError(f"cannot open a GGUI window ({detail}); GGUI needs Vulkan: on a machine without a GPU "
                       "install Mesa's lavapipe (apt-get install mesa-vulkan-drivers libvulkan1)") from None
    _open_windows.append(window)
    return window


def close_window(window) -> None:
    if window in _open_windows:
        _open_windows.remove(window)
    window.destroy()


def from_buffer(buffer: np.ndarray) -> np.ndarray:
    """``get_image_buffer_as_numpy()`` (W, H, 4), y up -> (H, W, 3) float32, row 0 at the top."""
    return np.ascontiguousarray(buffer[:, ::-1, :3].transpose(1, 0, 2), dtype=np.float32)


def _next_free(stem: str, suffix: str) -> Path:
    k = 0
    while Path(f"{stem}-{k:03d}{suffix}").exists():
        k += 1
    return Path(f"{stem}-{k:03d}{suffix}")


class ViewerWindow:
    """One GGUI window over a ``ViewerState``; ``frame()`` draws one frame, ``run()`` loops until closed."""

    def __init__(self, state: ViewerState, headless: bool = False, panel: bool = True, title: str = "tvq view"):
        self.state = state
        self.headless = headless
        self.panel = panel
        # ImGui saves its panel layout to ./imgui.ini; a headless window (a screenshot, a benchmark) leaves
        # no file behind that was not there before
        self._ini = Path.cwd() / "imgui.ini"
        self._ini_existed = self._ini.exists()
        self.window = open_window(title, (state.width, state.height), headless)
        self.canvas = self.window.get_canvas()
        self.canvas_image = CanvasImage((state.width, state.height))
        self.gui = self.window.get_gui() if panel else None
        self.last_time = None
        self.timings: dict[str, float] = {}
        self.status = ""
        self.out_dir = Path.cwd()

    def close(self) -> None:
        if self.window is not None:
            close_window(self.window)
            self.window = None
            if self.headless and not self._ini_existed and self._ini.exists():
                self._ini.unlink()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- one frame -----------------------------------------------------------------------------

    def frame(self, dt: float | None = None, read_back: bool = True) -> np.ndarray | None:
        """Input, stream, render, draw. Headless: returns what the window shows, (H, W, 3) float32 (with
        ``read_back``; without it the frame is drawn and copied to the host, as GGUI's only offscreen
        draw does, but not converted: the benchmark's frame)."""
        now = time.perf_counter()
        if dt is None:
            dt = 0.0 if self.last_time is None else now - self.last_time
        self.last_time = now
        state = self.state
        if not self.headless:
            self._input(dt)
        state.advance(dt)
        marks = [time.perf_counter()]
        image = state.render_tensor()
        marks.append(time.perf_counter())
        set_canvas_image(self.canvas, self.canvas_image.upload(image))
        marks.append(time.perf_counter())
        if self.gui is not None:
            self._panel()
        marks.append(time.perf_counter())
        if self.headless:
            buffer = self.window.get_image_buffer_as_numpy()  # draws the frame
            shown = from_buffer(buffer) if read_back else None
        else:
            shown = None
            self.window.show()
        marks.append(time.perf_counter())
        # where a frame's time goes (the benchmark reports it): render, canvas upload, panel, draw + present
        # (headless: draw + copy to the host)
        self.timings = {name: (b - a) * 1e3 for name, a, b in zip(("render", "upload", "panel", "present"),
                                                                   marks, marks[1:])}
        state.frame_done(time.perf_counter() - now)
        return shown

    def run(self, frames: int | None = None) -> None:
        """Draw frames until the window is closed (Esc), or ``frames`` of them."""
        count = 0
        while self.window.running and (frames is None or count < frames):
            self.frame()
            count += 1
        self.close()

    # ---- input ---------------------------------------------------------------------------------

    def _over_panel(self, x: float, y: float) -> bool:
        if self.gui is None:
            return False
        px, py, pw, ph = PANEL
        return px <= x <= px + pw and 1 - py - ph <= y <= 1 - py

    def _input(self, dt: float) -> None:
        import taichi as ti

        state, ctl = self.state, self.state.controller
        x, y = self.window.get_cursor_pos()
        # GGUI's events carry only a key name: presses and releases come from two queues
        for e in self.window.get_events(ti.ui.PRESS):
            if e.key in (LMB, MMB, RMB):
                if not self._over_panel(x, y):
                    button = RMB if e.key == LMB and self.window.is_pressed(ti.ui.SHIFT) else e.key
                    ctl.mouse_press(button, x, y)
            elif e.key == ti.ui.ESCAPE:
                self.window.running = False
            else:
                self._key(e.key)
        for e in self.window.get_events(ti.ui.RELEASE):
            if e.key in (LMB, MMB, RMB):
                ctl.mouse_release()
        if ctl.dragging and ctl.mouse_move(x, y):
            state.camera_moved()
        held = [k for k in "wasdqe" if self.window.is_pressed(k)]
        if held:
            state.keys_held(held, dt)

    def _key(self, name: str) -> None:
        try:
            if name == "p":
                self.status = f"wrote {self.state.screenshot(_next_free(str(self.out_dir / 'tvq-view'), '.png'))}"
            elif name == "o":
                self.status = f"wrote {self.state.record_orbit(_next_free(str(self.out_dir / 'tvq-orbit'), '.gif'))}"
            elif name == "h":
                self.gui = None if self.gui is not None else self.window.get_gui()
            else:
                self.status = self.state.key_press(name) or self.status
        except TvqError as err:
            self.status = f"error: {err}"

    # ---- the panel -----------------------------------------------------------------------------

    def _panel(self) -> None:
        state = self.state
        stats = state.last_stats
        with self.gui.sub_window("tvq view", *PANEL) as g:
            g.text(f"{state.fps:5.1f} FPS  {state.frame_ms:6.1f} ms/frame")
            g.text(f"render {stats.get('width', 0)}x{stats.get('height', 0)}, "
                   f"{stats.get('samples_per_ray', 0):.1f} samples/ray")
            self._lod_controls(g)
            g.text("view")
            for mode in MODES:
                if g.checkbox(mode, state.mode == mode) and state.mode != mode:
                    state.set_mode(mode)
            scale = g.slider_float("render scale", state.render_scale, state.min_scale, 1.0)
            if abs(scale - state.render_scale) > 1e-6:
                state.set_render_scale(scale)
            dynamic = g.checkbox("dynamic resolution", state.dynamic)
            target = g.slider_float("target FPS", state.target_fps, 1.0, 60.0)
            state.set_dynamic(dynamic, target)
            bg = g.color_edit_3("background", state.background)
            if tuple(bg) != state.background:
                state.set_background(bg)
            self._stream_controls(g)
            if g.button("reset camera"):
                state.controller.reset()
                state.camera_moved()
            self._camera_controls(g)
            if g.button("screenshot"):
                self._key("p")
            if g.button("record orbit"):
                self._key("o")
            if self.status:
                g.text(self.status[-60:])

    def _lod_controls(self, g) -> None:
        state = self.state
        shown = state.shown_lod
        finest = g.checkbox("finest available LOD", state.lod is None)
        if finest and state.lod is not None:
            state.set_lod(None)
        elif not finest and state.lod is None:
            state.lod = shown if shown is not None else 0
        if state.lod is not None:
            top = state.num_lods - 1 if state.streaming else state.static_lods - 1
            lod = g.slider_int("LOD", state.lod, 0, max(top, 0))
            if lod != state.lod:
                state.set_lod(lod)
        need = state.lod_bytes(state.lod if state.lod is not None else max(state.available_lods - 1, 0))
        g.text(f"LOD {shown if shown is not None else '-'} shown, {state.available_lods}/{state.num_lods} in"
               + (f"; needs {need:,} bytes" if need is not None else ""))

    def _stream_controls(self, g) -> None:
        state = self.state
        if state.stream is None:
            return
        streaming = g.checkbox("stream", state.streaming)
        if streaming and not state.streaming:
            state.start_stream()
        elif not streaming and state.streaming:
            state.stop_stream()
        bandwidth = g.slider_float("kB/s", state.stream.bandwidth, *BANDWIDTH_RANGE)
        if abs(bandwidth - state.stream.bandwidth) > 1e-6:
            state.set_bandwidth(bandwidth)
        if g.button("restart stream"):
            state.start_stream()
        g.text(f"received {state.stream.received:,} / {state.stream.total:,} bytes")

    def _camera_controls(self, g) -> None:
        state = self.state
        if not state.views:
            return
        if g.button("previous camera"):
            self._key("Left")
        if g.button("next camera"):
            self._key("Right")
        if state.view_index is not None:
            v = state.views[state.view_index]
            psnr = state.view_psnr()
            g.text(f"{v.split} {v.name}" + (f": {psnr:.2f} dB" if psnr is not None else ""))
            if v.image is not None:
                state.show_ground_truth = g.checkbox("ground truth", state.show_ground_truth)


# ---- entry points ------------------------------------------------------------------------------


def view(path, scene=None, size=(800, 800), max_bytes: int | None = None, arch: str | None = None,
         lod: int | None = None, mode: str = "color", stream: bool = False, bandwidth: float = 64.0,
         dynamic: bool = False, target_fps: float = 10.0, scene_downscale: int = 1, camera: int | None = None,
         frames: int | None = None) -> None:
    """The interactive viewer of a .tvq (or its first ``max_bytes``) or a checkpoint (``tvq view FILE``),
    starting at camera ``camera`` when given (as ``screenshot``'s ``view``); ``frames`` ends it after that
    many frames (for scripted runs)."""
    size = parse_size(size)
    state = ViewerState(path, scene=scene, size=size, max_bytes=max_bytes, arch=arch,
                        scene_downscale=scene_downscale, bandwidth=bandwidth)
    state.set_mode(mode)
    state.set_lod(lod)
    state.set_dynamic(dynamic, target_fps)
    if camera is not None:
        state.snap(camera)
    if stream:
        state.start_stream()
    window = ViewerWindow(state, headless=False, panel=True, title=f"tvq view {Path(path).name}")
    try:
        window.run(frames)
    finally:
        window.close()


def screenshot(path, out_png, lod: int | None = None, view: int | None = None, mode: str = "color",
               size=None, scene=None, max_bytes: int | None = None, arch: str | None = None,
               background=None, scene_downscale: int = 1) -> dict:
    """Render one frame of the viewer headless through GGUI and write it as a PNG (``tvq view FILE
    --screenshot out.png``). ``view``: a camera to snap to (the scene's test views, then its training views;
    without a scene the training poses of the .tvq header); ``size`` (W, H) or 'WxH' defaults to that
    camera's image size, else the training size. Returns the image (H, W, 3) float32 as the window showed
    it, and the camera (``K``, ``c2w``), ``lod``, ``mode`` and ``size`` it was rendered with."""
    import imageio.v3 as iio

    from tvq.atomic import atomic_write

    out = Path(out_png)
    if out.suffix.lower() != ".png":
        raise TvqError(f"{out}: --screenshot writes a .png file")
    if mode not in MODES:
        raise TvqError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    wanted = parse_size(size) if size is not None else None
    state = ViewerState(path, scene=scene, size=wanted or (64, 64), max_bytes=max_bytes, arch=arch,
                        scene_downscale=scene_downscale)
    state.set_mode(mode)
    state.set_lod(lod)
    if background is not None:
        state.set_background(background)
    if view is not None:
        snapped = state.snap(view)
        default = (snapped.width, snapped.height)
    else:
        default = state.train_size
    state.width, state.height = wanted or parse_size(default)
    K = state.intrinsics(state.width, state.height)
    c2w = state.controller.c2w()
    with ViewerWindow(state, headless=True, panel=False) as window:
        image = window.frame(dt=0.0)
    atomic_write(out, lambda tmp: iio.imwrite(tmp, to_uint8(image)), suffix=".png")
    return {"path": out, "image": image, "K": K, "c2w": c2w, "lod": state.shown_lod, "mode": mode,
            "size": (state.width, state.height)}
