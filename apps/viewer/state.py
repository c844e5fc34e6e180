"""The viewer's state in plain classes: what the GGUI window draws and what its input changes.

Nothing here opens a window, so tests drive all of it directly:

- ``OrbitController``: an orbit camera around a target (left drag orbits, right or middle drag pans, the
  wheel zooms, W/A/S/D/Q/E fly, reset), giving camera-to-world matrices in the OpenGL convention (+x
  right, +y up, looking down -z);
- ``StreamSimulator``: the bytes of a .tvq arriving at a set bandwidth over simulated time, fed to
  ``tvq.codec.StreamDecoder``, which reports each LOD as it completes;
- ``ViewerState``: the model (from a .tvq, a prefix of one, or a checkpoint), LOD and view mode,
  background, render scale (fixed, or dynamic to hold a target frame rate), the stream, the cameras of
  a scene folder to snap to (with their ground truth and PSNR), and the screenshot and orbit-recording
  actions.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tvq.errors import TvqError
from tvq.infer import MODES, FastRenderer

LMB, MMB, RMB = "LMB", "MMB", "RMB"
FLY_KEYS = {"w": (1, 0, 0), "s": (-1, 0, 0), "d": (0, 1, 0), "a": (0, -1, 0), "e": (0, 0, 1), "q": (0, 0, -1)}


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def _rotation(axis: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotation by ``angle`` radians about the unit ``axis`` (Rodrigues), float64 3x3."""
    x, y, z = axis.tolist()
    c, s = math.cos(angle), math.sin(angle)
    C = 1 - c
    return torch.tensor([[c + x * x * C, x * y * C - z * s, x * z * C + y * s],
                         [y * x * C + z * s, c + y * y * C, y * z * C - x * s],
                         [z * x * C - y * s, z * y * C + x * s, c + z * z * C]], dtype=torch.float64)


def _orthonormal(R: torch.Tensor) -> torch.Tensor:
    """The nearest rotation to R (Gram-Schmidt on its back and up columns): no drift after many steps."""
    back = _unit(R[:, 2])
    right = _unit(torch.linalg.cross(R[:, 1], back))
    up = torch.linalg.cross(back, right)
    return torch.stack([right, up, back], dim=1)


class OrbitController:
    """A camera orbiting ``target`` at ``distance``, with rotation ``R`` (columns: right, up, back).

    The eye is ``target + distance * back``; ``c2w()`` is [R | eye]. Mouse positions are window fractions
    in [0, 1]^2 with y up (as GGUI's ``get_cursor_pos``). ``orbit`` turns about the world up axis and the
    camera's right axis around the target (the distance stays), ``pan`` moves target and eye by the same
    vector in the image plane, ``zoom`` scales only the distance, ``fly`` moves target and eye together
    along the view, right and up directions, ``reset`` restores the pose the controller was made with.
    """

    def __init__(self, c2w, target=None, world_up=None, orbit_speed: float = math.pi, pan_speed: float = 1.0,
                 zoom_speed: float = 0.1, fly_speed: float = 0.5, min_distance: float = 1e-3):
        self.world_up = _unit(torch.as_tensor(world_up if world_up is not None else (0.0, 0.0, 1.0),
                                              dtype=torch.float64))
        self.orbit_speed, self.pan_speed, self.zoom_speed, self.fly_speed = orbit_speed, pan_speed, zoom_speed, fly_speed
        self.min_distance = min_distance
        self.set_pose(c2w, target)
        self._home = (self.target.clone(), self.distance, self.R.clone())
        self._drag: tuple[str, float, float] | None = None

    # ---- pose ----------------------------------------------------------------------------------

    def set_pose(self, c2w, target=None) -> None:
        """Take the pose ``c2w`` exactly; the target is ``target`` projected on the view axis (the point
        the camera looks at), or the point at the eye's distance from the origin when none is given."""
        c2w = torch.as_tensor(c2w, dtype=torch.float64).reshape(4, 4)
        self.R = _orthonormal(c2w[:3, :3].clone())
        eye = c2w[:3, 3].clone()
        forward = -self.R[:, 2]
        if target is not None:
            distance = float((torch.as_tensor(target, dtype=torch.float64) - eye) @ forward)
        else:
            distance = float(eye.norm())
        if not distance > self.min_distance:
            distance = max(float(eye.norm()), 1.0)
        self.distance = distance
        self.target = eye + distance * forward

    @property
    def eye(self) -> torch.Tensor:
        return self.target + self.distance * self.R[:, 2]

    def c2w(self) -> torch.Tensor:
        pose = torch.eye(4, dtype=torch.float64)
        pose[:3, :3] = self.R
        pose[:3, 3] = self.eye
        return pose

    def reset(self) -> None:
        target, distance, R = self._home
        self.target, self.distance, self.R = target.clone(), distance, R.clone()

    def home(self, c2w=None, target=None) -> None:
        """Make the current pose (or ``c2w``) the one ``reset`` returns to."""
        if c2w is not None:
            self.set_pose(c2w, target)
        self._home = (self.target.clone(), self.distance, self.R.clone())

    # ---- motions -------------------------------------------------------------------------------

    def orbit(self, dx: float, dy: float) -> None:
        """Turn by ``dx`` and ``dy`` window widths (one width: ``orbit_speed`` radians) around the target:
        dragging right moves the camera left around the target (the scene turns with the cursor)."""
        yaw = _rotation(self.world_up, -dx * self.orbit_speed)
        R = yaw @ self.R
        pitch = _rotation(_unit(R[:, 0]), dy * self.orbit_speed)
        tilted = pitch @ R
        # keep the camera off the poles (where "up" would flip)
        if abs(float(tilted[:, 2] @ self.world_up)) < math.cos(math.radians(1.0)):
            R = tilted
        self.R = _orthonormal(R)

    def pan(self, dx: float, dy: float) -> None:
        """Move target and eye by the same vector: the scene follows the cursor in the image plane."""
        shift = (-dx * self.R[:, 0] - dy * self.R[:, 1]) * self.distance * self.pan_speed
        self.target = self.target + shift

    def zoom(self, steps: float) -> None:
        """Wheel steps (positive: closer): the distance scales by exp(-steps * zoom_speed), nothing else moves."""
        self.distance = max(self.min_distance, self.distance * math.exp(-steps * self.zoom_speed))

    def fly(self, forward: float = 0.0, right: float = 0.0, up: float = 0.0, dt: float = 1.0) -> None:
        """Move target and eye by (forward, right, up) * distance * fly_speed * dt along the view axes."""
        step = self.distance * self.fly_speed * dt
        move = (-forward * self.R[:, 2] + right * self.R[:, 0] + up * self.R[:, 1]) * step
        self.target = self.target + move

    def key(self, name: str, dt: float) -> bool:
        """A held fly key (w, a, s, d, q, e) for ``dt`` seconds; False for other keys."""
        if name not in FLY_KEYS:
            return False
        self.fly(*FLY_KEYS[name], dt=dt)
        return True

    # ---- mouse ---------------------------------------------------------------------------------

    def mouse_press(self, button: str, x: float, y: float) -> None:
        if button in (LMB, MMB, RMB):
            self._drag = (button, x, y)

    def mouse_move(self, x: float, y: float) -> bool:
        """Cursor at (x, y) while a button is held: orbit (left) or pan (right, middle). True if it moved."""
        if self._drag is None:
            return False
        button, x0, y0 = self._drag
        dx, dy = x - x0, y - y0
        self._drag = (button, x, y)
        if dx == 0 and dy == 0:
            return False
        if button == LMB:
            self.orbit(dx, dy)
        else:
            self.pan(dx, dy)
        return True

    def mouse_release(self, button: str | None = None) -> None:
        if self._drag is not None and (button is None or button == self._drag[0]):
            self._drag = None

    @property
    def dragging(self) -> bool:
        return self._drag is not None

    def wheel(self, delta: float) -> None:
        self.zoom(delta)

    def orbit_poses(self, frames: int) -> list[torch.Tensor]:
        """``frames`` poses turning once around the world up axis through the target from the current one."""
        poses = []
        R0 = self.R.clone()
        for k in range(frames):
            R = _rotation(self.world_up, 2 * math.pi * k / frames) @ R0
            pose = torch.eye(4, dtype=torch.float64)
            pose[:3, :3] = R
            pose[:3, 3] = self.target + self.distance * R[:, 2]
            poses.append(pose)
        return poses


class StreamSimulator:
    """A .tvq arriving at ``bandwidth`` kB/s (1 kB = 1000 bytes) over simulated time.

    ``step(dt)`` advances the clock by ``dt`` seconds, feeds the bytes that arrived to a
    ``tvq.codec.StreamDecoder`` and returns the LODs they completed; ``restart()`` starts over. A
    bandwidth of 0 pauses the stream."""

    def __init__(self, data: bytes, bandwidth: float = 64.0, name: str = "stream"):
        self.data = bytes(data)
        self.name = name
        self.bandwidth = float(bandwidth)
        self.restart()

    def restart(self) -> None:
        from tvq.codec import StreamDecoder

        self.decoder = StreamDecoder(self.name)
        self.elapsed = 0.0
        self._due = 0.0

    @property
    def bandwidth(self) -> float:
        return self._bandwidth

    @bandwidth.setter
    def bandwidth(self, value: float) -> None:
        if not value >= 0 or math.isinf(value):
            raise TvqError(f"bandwidth must be a non-negative number of kB/s, got {value}")
        self._bandwidth = float(value)

    @property
    def received(self) -> int:
        return self.decoder.received

    @property
    def total(self) -> int:
        return len(self.data)

    @property
    def lods(self) -> int:
        return self.decoder.lods

    @property
    def done(self) -> bool:
        return self.received >= self.total

    def step(self, dt: float) -> list[int]:
        self.elapsed += max(0.0, float(dt))
        self._due = min(float(self.total), self._due + self.bandwidth * 1000.0 * max(0.0, float(dt)))
        return self.feed_to(int(self._due))

    def feed_to(self, end: int) -> list[int]:
        """Deliver the bytes up to ``end`` at once; the LODs they completed."""
        end = min(int(end), self.total)
        if end <= self.received:
            return []
        self._due = max(self._due, float(end))
        try:
            return self.decoder.feed(self.data[self.received:end])
        except Exception as err:  # a damaged file: the stream's message names the chunk
            raise TvqError(str(err)) from None

    def field(self, lods: int | None = None, device=None):
        from tvq.codec.model import to_device

        field = self.decoder.field(lods)
        return field if device is None else to_device(field, device)


@dataclass
class SnapView:
    """A camera of the scene folder (or of the model file) the viewer can jump to."""

    name: str
    split: str
    K: torch.Tensor  # (3, 3) float64
    c2w: torch.Tensor  # (4, 4) float64
    width: int
    height: int
    image: np.ndarray | None = None  # (H, W, 3) ground truth, when a scene gave it


def scaled_intrinsics(K, width: int, height: int, new_width: int, new_height: int) -> torch.Tensor:
    """K of the same camera for an image of new_width x new_height (focal lengths and centre scaled)."""
    K = torch.as_tensor(K, dtype=torch.float64).reshape(3, 3).clone()
    K[0] *= new_width / width
    K[1] *= new_height / height
    return K


def parse_size(text) -> tuple[int, int]:
    """'WxH' (or 'N' for a square, or a (W, H) pair) -> (W, H), each 8..8192."""
    if isinstance(text, (tuple, list)):
        parts = list(text)
    else:
        s = str(text).lower().strip()
        parts = s.split("x") if "x" in s else [s, s]
    try:
        w, h = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise TvqError(f"--size must be WIDTHxHEIGHT (for example 800x800), got {text!r}") from None
    if not (8 <= w <= 8192 and 8 <= h <= 8192):
        raise TvqError(f"--size must be between 8x8 and 8192x8192, got {w}x{h}")
    return w, h


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


class ViewerState:
    """Everything the viewer shows and every action it offers, for a window or a test to drive.

    ``path``: a .tvq (``max_bytes``: only its first bytes, as ``tvq render --bytes``) or a checkpoint;
    ``scene``: a scene folder whose test and training cameras (with images) ``snap`` jumps to (test
    first); without one, the training poses the .tvq header keeps. ``size``: the window (W, H).
    """

    def __init__(self, path, scene=None, size=(800, 800), max_bytes: int | None = None, arch: str | None = None,
                 scene_downscale: int = 1, bandwidth: float = 64.0, log=None):
        from tvq import runtime
        from tvq.export import open_model

        self.path = Path(path)
        self.log = log or (lambda message: None)
        self.width, self.height = parse_size(size)
        if max_bytes is not None and max_bytes < 0:
            raise TvqError(f"--bytes must be non-negative, got {max_bytes}")
        try:
            model = open_model(self.path, max_bytes=max_bytes, arch=arch)
        except TvqError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise TvqError(f"{self.path}: cannot open ({type(err).__name__}: {err})") from None
        self.model = model
        self.device = runtime.device()
        self.base_background = model.background.detach().cpu().float()
        self.background = tuple(float(x) for x in self.base_background)
        self.num_lods = model.num_lods
        self.header = model.header
        self.lod_ends = [int(e["end"]) for e in model.header["lods"]] if model.header else None
        self.data = None
        if model.source == "tvq":
            with open(self.path, "rb") as f:
                self.data = f.read() if max_bytes is None else f.read(max_bytes)
        self._renderers: dict[int, FastRenderer] = {model.lods: FastRenderer(model.field, model.background)}
        self.static_lods = model.lods
        self.stream: StreamSimulator | None = None
        self.streaming = False
        if self.data is not None:
            self.stream = StreamSimulator(self.data, bandwidth, name=str(self.path))
        self.lod: int | None = None  # None: the finest available
        self.mode = "color"
        self.render_scale = 1.0
        self.dynamic = False
        self.target_fps = 10.0
        self.min_scale = 0.1
        self.frame_ms = 0.0
        self.fps = 0.0
        self.last_stats: dict = {}
        self.views = self._load_views(scene, scene_downscale)
        self.view_index: int | None = None
        self.show_ground_truth = False
        self.psnr: float | None = None
        self.world_up, self.center = self._scene_frame()
        self.K_train, self.train_size = self._training_intrinsics()
        start = self.views[0].c2w if self.views else self._default_pose()
        self.controller = OrbitController(start, target=self.center, world_up=self.world_up)
        self.messages: list[str] = []

    # ---- model and cameras ---------------------------------------------------------------------

    def _load_views(self, scene, downscale: int) -> list[SnapView]:
        views: list[SnapView] = []
        if scene is not None:
            from tvq.data import load_scene

            sc = load_scene(scene, downscale=downscale, background=tuple(self.background))
            for split in ("test", "train"):
                for v in sc.split(split):
                    views.append(SnapView(v.name, split, torch.as_tensor(v.K, dtype=torch.float64),
                                          torch.as_tensor(v.c2w, dtype=torch.float64), v.width, v.height, v.image))
            if not views:
                raise TvqError(f"{scene}: the scene has no test or training views")
        elif self.model.cameras is not None:
            cams = self.model.cameras
            for i, pose in enumerate(cams["c2ws"]):
                views.append(SnapView(f"training pose {i}", "train", cams["K"].double(), pose.double(),
                                      int(cams["width"]), int(cams["height"])))
        return views

    def _scene_frame(self) -> tuple[torch.Tensor, torch.Tensor]:
        """World up (the cameras' mean up vector) and the orbit centre (the octree's centre)."""
        center = self.model.field.octree.center.double().cpu()
        poses = [v.c2w for v in self.views]
        if poses:
            up = torch.stack(poses)[:, :3, 1].mean(0)
            if up.norm() > 1e-6:
                return up / up.norm(), center
        return torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), center

    def _training_intrinsics(self):
        cams = self.model.cameras
        if cams is not None:
            return cams["K"].double(), (int(cams["width"]), int(cams["height"]))
        if self.views:
            v = self.views[0]
            return v.K, (v.width, v.height)
        f = 1.2 * 800
        return torch.tensor([[f, 0, 400], [0, f, 400], [0, 0, 1]], dtype=torch.float64), (800, 800)

    def _default_pose(self) -> torch.Tensor:
        """Looking at the centre from 2.5 half-cube sizes away along (1, -1, 0.6) (z up)."""
        radius = 2.5 * math.sqrt(3.0) / self.model.field.octree.scale
        direction = _unit(torch.tensor([1.0, -1.0, 0.6], dtype=torch.float64))
        eye = self.center + radius * direction
        back = direction
        right = _unit(torch.linalg.cross(self.world_up, back))
        up = torch.linalg.cross(back, right)
        pose = torch.eye(4, dtype=torch.float64)
        pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, up, back, eye
        return pose

    def renderer(self) -> FastRenderer:
        """The renderer of the LODs on screen: the stream's complete LODs while streaming."""
        lods = self.available_lods
        if lods not in self._renderers:
            field = self.stream.field(lods, self.device)
            self._renderers[lods] = FastRenderer(field, self.model.background)
        return self._renderers[lods]

    @property
    def available_lods(self) -> int:
        if self.streaming and self.stream is not None:
            return self.stream.lods
        return self.static_lods

    @property
    def shown_lod(self) -> int | None:
        """The LOD drawn: the selected one, or the finest available when it is not (yet) in."""
        lods = self.available_lods
        if lods == 0:
            return None
        return lods - 1 if self.lod is None else min(self.lod, lods - 1)

    def lod_bytes(self, lod: int) -> int | None:
        """Bytes of the .tvq that LOD ``lod`` needs (its prefix), from the header's LOD ends."""
        return None if self.lod_ends is None else self.lod_ends[lod]

    # ---- settings (validated: a bad value is a one-line TvqError) --------------------------------

    def set_lod(self, lod: int | None) -> None:
        if lod is not None and not 0 <= int(lod) < self.num_lods:
            raise TvqError(f"--lod must be in 0..{self.num_lods - 1}, got {lod}")
        if lod is not None and not self.streaming and int(lod) >= self.static_lods:
            raise TvqError(f"--lod must be in 0..{self.static_lods - 1}, got {lod} (the file's first bytes hold "
                           f"{self.static_lods} LODs)")
        self.lod = None if lod is None else int(lod)

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise TvqError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode

    def set_background(self, rgb) -> None:
        rgb = tuple(float(x) for x in rgb)
        if len(rgb) != 3 or not all(0 <= x <= 1 for x in rgb):
            raise TvqError(f"background must be three numbers in [0, 1], got {rgb}")
        self.background = rgb

    def set_render_scale(self, scale: float) -> None:
        if not self.min_scale <= float(scale) <= 1:
            raise TvqError(f"render scale must be in {self.min_scale}..1, got {scale}")
        self.render_scale = float(scale)

    def set_dynamic(self, on: bool, target_fps: float | None = None) -> None:
        if target_fps is not None:
            if not 0.5 <= float(target_fps) <= 240:
                raise TvqError(f"target FPS must be in 0.5..240, got {target_fps}")
            self.target_fps = float(target_fps)
        self.dynamic = bool(on)

    def set_bandwidth(self, kBps: float) -> None:
        if self.stream is None:
            raise TvqError(f"{self.path}: streaming needs a .tvq file, not a checkpoint")
        self.stream.bandwidth = kBps

    def start_stream(self, bandwidth: float | None = None) -> None:
        """Start (or restart) the streaming simulation: nothing has arrived, LODs refine as they do."""
        if self.stream is None:
            raise TvqError(f"{self.path}: streaming needs a .tvq file, not a checkpoint")
        if bandwidth is not None:
            self.stream.bandwidth = bandwidth
        self.stream.restart()
        self.streaming = True
        self._renderers = {k: v for k, v in self._renderers.items() if k == self.static_lods}

    def stop_stream(self) -> None:
        self.streaming = False

    def advance(self, dt: float) -> list[int]:
        """Move simulated time on by ``dt`` seconds; the LODs that completed."""
        if not self.streaming or self.stream is None:
            return []
        done = self.stream.step(dt)
        for lod in done:
            self.messages.append(f"LOD {lod} complete at {self.stream.received:,} bytes")
        return done

    # ---- cameras -------------------------------------------------------------------------------

    def intrinsics(self, width: int, height: int) -> torch.Tensor:
        """K for a width x height image: the snapped view's camera, else the training camera, scaled."""
        if self.view_index is not None:
            v = self.views[self.view_index]
            return scaled_intrinsics(v.K, v.width, v.height, width, height)
        w0, h0 = self.train_size
        K = self.K_train.clone()
        sx = width / w0
        # square pixels with the training camera's horizontal field of view, centred
        return torch.tensor([[K[0, 0] * sx, 0.0, width / 2], [0.0, K[1, 1] * sx, height / 2], [0, 0, 1]],
                            dtype=torch.float64)

    def snap(self, index: int) -> SnapView:
        if not self.views:
            raise TvqError(f"{self.path}: no cameras to snap to (pass a scene folder)")
        if not 0 <= int(index) < len(self.views):
            raise TvqError(f"--view must be in 0..{len(self.views) - 1}, got {index}")
        self.view_index = int(index)
        v = self.views[self.view_index]
        self.controller.set_pose(v.c2w, target=self.center)
        self.psnr = None
        return v

    def snap_next(self, step: int = 1) -> SnapView:
        if not self.views:
            raise TvqError(f"{self.path}: no cameras to snap to (pass a scene folder)")
        index = 0 if self.view_index is None else (self.view_index + step) % len(self.views)
        return self.snap(index)

    def camera_moved(self) -> None:
        """The user moved the camera: it no longer is the snapped view."""
        self.view_index = None
        self.psnr = None

    def view_psnr(self) -> float | None:
        """PSNR of the snapped view at its own resolution (colour at the shown LOD), against its image."""
        if self.view_index is None or self.shown_lod is None:
            return None
        v = self.views[self.view_index]
        if v.image is None:
            return None
        if self.psnr is None:
            from tvq.metrics import psnr

            out = self.renderer().render(v.K, v.c2w, v.width, v.height, self.shown_lod, background=self.background)
            self.psnr = psnr(out["color"].cpu(), torch.from_numpy(v.image))
        return self.psnr

    # ---- frames --------------------------------------------------------------------------------

    def render_size(self, width: int | None = None, height: int | None = None) -> tuple[int, int]:
        width, height = width or self.width, height or self.height
        if self.render_scale >= 1:
            return width, height
        return max(8, round(width * self.render_scale / 4) * 4), max(8, round(height * self.render_scale / 4) * 4)

    def render(self, width: int | None = None, height: int | None = None, c2w=None, mode: str | None = None,
               scale: bool = True) -> np.ndarray:
        """The image on screen, (H, W, 3) float32 in [0, 1] at the render scale (``scale=False``: full size)."""
        return self.render_tensor(width, height, c2w, mode, scale).cpu().numpy()

    def render_tensor(self, width: int | None = None, height: int | None = None, c2w=None, mode: str | None = None,
                      scale: bool = True) -> torch.Tensor:
        """``render`` as a float32 tensor (on the renderer's device once a LOD is in: what the window draws)."""
        width, height = width or self.width, height or self.height
        w, h = self.render_size(width, height) if scale else (width, height)
        mode = mode or self.mode
        lod = self.shown_lod
        if lod is None:  # nothing has arrived yet
            return torch.tensor(self.background, dtype=torch.float32).expand(h, w, 3).contiguous()
        if self.show_ground_truth and self.view_index is not None and self.views[self.view_index].image is not None:
            return torch.from_numpy(self._ground_truth(w, h))
        K = self.intrinsics(w, h)
        pose = self.controller.c2w() if c2w is None else c2w
        start = time.perf_counter()
        out = self.renderer().render(K, pose, w, h, lod, mode=mode, background=self.background)
        image = out["image"].float()
        stats = dict(out["stats"], width=w, height=h, lod=lod)
        if "samples" in stats:
            stats["samples_per_ray"] = stats["samples"] / max(1, w * h)
        self.last_stats = dict(stats, ms=(time.perf_counter() - start) * 1e3)
        return image

    def _ground_truth(self, w: int, h: int) -> np.ndarray:
        image = self.views[self.view_index].image
        rows = (np.arange(h) * image.shape[0] // h).clip(0, image.shape[0] - 1)
        cols = (np.arange(w) * image.shape[1] // w).clip(0, image.shape[1] - 1)
        return np.ascontiguousarray(image[rows][:, cols], dtype=np.float32)

    def frame_done(self, seconds: float) -> None:
        """Record a frame's time; with dynamic resolution, move the render scale towards the target rate."""
        ms = seconds * 1e3
        self.frame_ms = ms if self.frame_ms == 0 else 0.8 * self.frame_ms + 0.2 * ms
        self.fps = 1e3 / max(self.frame_ms, 1e-6)
        if self.dynamic:
            wanted = 1e3 / self.target_fps
            factor = math.sqrt(wanted / max(ms, 1e-3))  # pixels scale with the square of the scale
            factor = min(1.25, max(0.8, factor))
            self.render_scale = min(1.0, max(self.min_scale, self.render_scale * factor))

    # ---- actions -------------------------------------------------------------------------------

    def screenshot(self, out_png, width: int | None = None, height: int | None = None) -> Path:
        """The current view at full size (no panel) as a PNG."""
        import imageio.v3 as iio

        from tvq.atomic import atomic_write

        out = Path(out_png)
        if out.suffix.lower() != ".png":
            raise TvqError(f"{out}: a screenshot is written as .png")
        image = to_uint8(self.render(width, height, scale=False))
        atomic_write(out, lambda tmp: iio.imwrite(tmp, image), suffix=".png")
        return out

    def record_orbit(self, out, frames: int = 36, fps: int = 24, width: int | None = None,
                     height: int | None = None) -> Path:
        """One turn around the target from the current camera (current LOD and mode) as a GIF or MP4."""
        from tvq.eval import write_video

        out = Path(out)
        suffix = out.suffix.lower()
        if suffix not in (".gif", ".mp4"):
            raise TvqError(f"{out}: an orbit is recorded as .gif or .mp4")
        if frames < 1:
            raise TvqError(f"frames must be at least 1, got {frames}")
        images = np.stack([to_uint8(self.render(width, height, c2w=pose, scale=False))
                           for pose in self.controller.orbit_poses(frames)])
        write_video(out, images, fps, instead="record a .gif")
        return out

    # ---- input from the window -----------------------------------------------------------------

    def key_press(self, name: str) -> str | None:
        """A key press; returns the action it took (for the window's log), or None."""
        if name in ("]", "Right"):
            if self.views:
                return f"camera {self.snap_next(1).name}"
        elif name in ("[", "Left"):
            if self.views:
                return f"camera {self.snap_next(-1).name}"
        elif name == "Up":
            self.controller.zoom(1)
            self.camera_moved()
            return "zoom in"
        elif name == "Down":
            self.controller.zoom(-1)
            self.camera_moved()
            return "zoom out"
        elif name == "r":
            self.controller.reset()
            self.camera_moved()
            return "reset camera"
        elif name == "m":
            self.set_mode(MODES[(MODES.index(self.mode) + 1) % len(MODES)])
            return f"mode {self.mode}"
        elif name == "l":
            lod = self.shown_lod
            if lod is not None:
                self.set_lod((lod + 1) % self.available_lods)
                return f"LOD {self.lod}"
        elif name == "g":
            self.show_ground_truth = not self.show_ground_truth
            return "ground truth" if self.show_ground_truth else "render"
        return None

    def keys_held(self, names, dt: float) -> bool:
        moved = False
        for name in names:
            moved |= self.controller.key(name, dt)
        if moved:
            self.camera_moved()
        return moved
