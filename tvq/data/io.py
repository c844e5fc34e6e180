"""File and pixel helpers shared by the scene readers.

Everything here works on numpy arrays and turns unreadable input into ``TvqError`` with a one-line message
that names the file.

Conventions:
- Colour images come back as float32 in [0, 1], (H, W, 3) or (H, W, 4) with straight (not premultiplied)
  alpha, exactly as stored: 8-bit files are sRGB, EXR files are linear.
- Depth maps come back as float32 (H, W) in scene units: the stored value times ``scale``; non-finite or
  negative values become 0 (no depth).
- Cameras are camera-to-world 4x4 in the OpenGL convention (+x right, +y up, looking down -z). A pixel
  (column i, row j) has its centre at (u, v) = (i + 0.5, j + 0.5); rows grow downwards, so its camera-space
  direction is ((u - cx) / fx, -(v - cy) / fy, -1).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from tvq.errors import TvqError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".exr")

T = TypeVar("T")
_FD_LOCK = threading.Lock()


# ---------------------------------------------------------------------------------------------- JSON


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object from ``path``; a missing file or bad JSON is a ``TvqError``."""
    if not path.is_file():
        raise TvqError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise TvqError(f"{path}: cannot read file ({err})") from None
    except json.JSONDecodeError as err:
        raise TvqError(f"{path}: malformed JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    if not isinstance(data, dict):
        raise TvqError(f"{path}: malformed JSON (expected an object at the top level)")
    return data


def get_number(obj: dict[str, Any], key: str, where: str, default: float | None = None) -> float:
    """``obj[key]`` as a finite float (``default`` when absent and a default is given)."""
    if key not in obj:
        if default is None:
            raise TvqError(f"{where}: missing '{key}'")
        return float(default)
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise TvqError(f"{where}: '{key}' must be a finite number, got {value!r}")
    return float(value)


# -------------------------------------------------------------------------------------------- cameras


def camera_matrix(value: Any, where: str) -> np.ndarray:
    """A camera-to-world matrix from nested lists: 4x4 (or 3x4, completed with [0, 0, 0, 1]), float64.

    Raises ``TvqError`` when the matrix is malformed, has non-finite entries, a last row other than
    [0, 0, 0, 1], or a singular 3x3 part.
    """
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TvqError(f"{where}: camera matrix is not a 4x4 array of numbers") from None
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise TvqError(f"{where}: camera matrix has shape {m.shape}, expected 4x4")
    if not np.all(np.isfinite(m)):
        raise TvqError(f"{where}: camera matrix has non-finite entries")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise TvqError(f"{where}: camera matrix last row is {m[3].tolist()}, expected [0, 0, 0, 1]")
    if abs(np.linalg.det(m[:3, :3])) < 1e-9:
        raise TvqError(f"{where}: camera matrix is singular")
    return m


def intrinsics(fx: float, fy: float, cx: float, cy: float, where: str) -> np.ndarray:
    """The 3x3 pinhole matrix, checking that the focal lengths are positive and everything finite."""
    values = np.array([fx, fy, cx, cy], dtype=np.float64)
    if not np.all(np.isfinite(values)) or fx <= 0 or fy <= 0:
        raise TvqError(f"{where}: bad intrinsics fx={fx}, fy={fy}, cx={cx}, cy={cy}")
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def scale_intrinsics(K: np.ndarray, factor: int) -> np.ndarray:
    """Intrinsics of the image downscaled by ``factor`` (fx, fy, cx, cy all divided by it).

    Exact for ``downscale_area``: a pixel edge at u in the original lies at u / factor in the result.
    """
    out = np.array(K, dtype=np.float64, copy=True)
    out[:2] /= factor
    return out


def pixel_ray_norms(K: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) length of the camera-space direction ((u-cx)/fx, -(v-cy)/fy, -1) through each pixel centre.

    Along-ray distance d and z-depth z relate by z = d / norm: the direction has unit z component.
    """
    u = (np.arange(width, dtype=np.float64) + 0.5 - K[0, 2]) / K[0, 0]
    v = (np.arange(height, dtype=np.float64) + 0.5 - K[1, 2]) / K[1, 1]
    return np.sqrt(1.0 + u[None, :] ** 2 + v[:, None] ** 2)


def backproject_depth(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, stride: int = 1) -> np.ndarray:
    """World-space points (N, 3) float64 of the pixels with depth > 0.

    Pixel centre (u, v) with z-depth z maps to the camera-space point ((u-cx)/fx z, -(v-cy)/fy z, -z) (OpenGL
    camera), then through ``c2w``. ``stride`` > 1 keeps every stride-th pixel along each axis, starting at
    the first.
    """
    d = np.asarray(depth)[::stride, ::stride].astype(np.float64)
    rows, cols = np.nonzero(d > 0)
    z = d[rows, cols]
    u = cols * stride + 0.5
    v = rows * stride + 0.5
    p = np.stack([(u - K[0, 2]) / K[0, 0] * z, -(v - K[1, 2]) / K[1, 1] * z, -z], axis=1)
    return p @ c2w[:3, :3].T + c2w[:3, 3]


# --------------------------------------------------------------------------------------------- colour


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """The sRGB transfer function inverted (IEC 61966-2-1), elementwise."""
    x = np.asarray(x, dtype=np.float32)
    return np.where(x <= 0.04045, x / 12.92, ((np.maximum(x, 0.04045) + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """The sRGB transfer function (IEC 61966-2-1), elementwise; inputs are clipped to [0, 1] first."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.maximum(x, 0.0031308) ** (1 / 2.4) - 0.055).astype(
        np.float32
    )


def composite(rgba: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Split (H, W, 3|4) straight-alpha pixels into (rgb over ``background``, alpha or None)."""
    if rgba.shape[-1] == 3:
        return np.ascontiguousarray(rgba, dtype=np.float32), None
    alpha = np.clip(rgba[..., 3], 0.0, 1.0).astype(np.float32)
    bg = np.asarray(background, dtype=np.float32)
    rgb = rgba[..., :3] * alpha[..., None] + bg * (1.0 - alpha[..., None])
    return rgb.astype(np.float32), alpha


# ---------------------------------------------------------------------------------------- downscaling


def downscale_area(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks of an (H, W) or (H, W, C) array, cropped to a multiple of factor."""
    if factor == 1:
        return image
    h, w = image.shape[0] // factor, image.shape[1] // factor
    if h == 0 or w == 0:
        raise TvqError(f"downscale factor {factor} is larger than the image ({image.shape[1]}x{image.shape[0]})")
    blocks = image[: h * factor, : w * factor].reshape(h, factor, w, factor, *image.shape[2:])
    # Adding factor^2 strided slices is several times faster than a mean over two non-contiguous axes.
    acc_dtype = np.float64 if factor > 4 else np.float32
    out = np.zeros((h, w, *image.shape[2:]), acc_dtype)
    for i in range(factor):
        for j in range(factor):
            out += blocks[:, i, :, j]
    return (out / (factor * factor)).astype(image.dtype)


def downscale_nearest(image: np.ndarray, factor: int) -> np.ndarray:
    """The sample at each factor x factor block's centre (offset factor // 2), cropped like ``downscale_area``.

    Used for depth, where averaging would invent surfaces between foreground and background.
    """
    if factor == 1:
        return image
    h, w = image.shape[0] // factor, image.shape[1] // factor
    if h == 0 or w == 0:
        raise TvqError(f"downscale factor {factor} is larger than the image ({image.shape[1]}x{image.shape[0]})")
    c = factor // 2
    return np.ascontiguousarray(image[c : h * factor : factor, c : w * factor : factor])


# --------------------------------------------------------------------------------------------- images


def resolve_image_path(root: Path, file_path: str, default_suffix: str = ".png") -> Path:
    """``root / file_path``, appending ``default_suffix`` when the name has no image extension."""
    path = root / file_path
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        path = path.with_name(path.name + default_suffix)
    return path


def frame_name(file_path: str) -> str:
    """A view name from a metadata file path: normalised, without an image extension."""
    path = Path(file_path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        path = path.with_suffix("")
    return path.as_posix()


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header without decoding the pixels."""
    if not path.is_file():
        raise TvqError(f"{path}: image file not found")
    if path.suffix.lower() == ".exr":
        def window(ex: Any) -> Any:
            with ex.File(str(path), header_only=True) as f:
                return f.header()["dataWindow"]

        lo, hi = _exr_call(path, window)
        return int(hi[0] - lo[0] + 1), int(hi[1] - lo[1] + 1)
    try:
        from PIL import Image

        with Image.open(path) as img:
            return img.size
    except Exception as err:
        raise TvqError(f"{path}: cannot read image ({err})") from None


def read_image(path: Path) -> np.ndarray:
    """An 8- or 16-bit PNG/JPG as float32 (H, W, 3|4) in [0, 1] (grey is repeated to RGB); EXR as stored.

    EXR files give linear float RGB(A) (see ``read_exr``); everything else is decoded with Pillow.
    """
    if path.suffix.lower() == ".exr":
        return read_exr_rgba(path)
    if not path.is_file():
        raise TvqError(f"{path}: image file not found")
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img).astype(np.float32) / (65535.0 if mode.startswith("I;16") else 4294967295.0)
                return np.repeat(arr[..., None], 3, axis=2)
            if mode == "F":
                return np.repeat(np.asarray(img, dtype=np.float32)[..., None], 3, axis=2)
            has_alpha = "A" in img.getbands() or "transparency" in img.info
            img = img.convert("RGBA" if has_alpha else "RGB")
            arr = np.asarray(img)
    except TvqError:
        raise
    except Exception as err:  # Pillow raises several types for truncated or foreign files
        raise TvqError(f"{path}: cannot read image ({err})") from None
    return np.multiply(arr, np.float32(1.0 / 255.0), dtype=np.float32)


def read_mask(path: Path) -> np.ndarray:
    """A mask image as float32 (H, W) in [0, 1]: its alpha channel if it has one, else its first channel."""
    img = read_image(path)
    return np.ascontiguousarray(img[..., 3] if img.shape[-1] == 4 else img[..., 0])


# ------------------------------------------------------------------------------------------------ EXR


def _native_output_captured(fn: Callable[[], T]) -> tuple[T | None, BaseException | None, str]:
    """Run ``fn`` with file descriptors 1 and 2 sent to a buffer: (result, exception, captured text).

    The OpenEXR library prints its diagnostics straight to the process's stdout and stderr, which would
    break one-line errors and JSON output; the caller decides what to do with the text. Calls are
    serialised because the descriptors are process-wide.
    """
    with _FD_LOCK, tempfile.TemporaryFile() as sink:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        try:
            saved = (os.dup(1), os.dup(2))
        except OSError:  # no such descriptors: nothing to protect
            try:
                return fn(), None, ""
            except Exception as err:
                return None, err, ""
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        result, error = None, None
        try:
            result = fn()
        except Exception as err:
            error = err
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        sink.seek(0)
        return result, error, sink.read().decode(errors="replace")


def _exr_call(path: Path, fn: Callable[[Any], T]) -> T:
    """``fn(OpenEXR)`` with the library's printed diagnostics turned into a one-line ``TvqError``."""
    import OpenEXR

    result, error, text = _native_output_captured(lambda: fn(OpenEXR))
    if error is not None:
        found = re.search(r"\((EXR_ERR_\w+)\)\s*([^\n]*)", text)
        reason = f"{found.group(1)}: {found.group(2)}" if found else " ".join(str(error).split())
        raise TvqError(f"{path}: cannot read EXR file ({reason})")
    if text.strip():  # diagnostics of a successful call still belong on stderr
        sys.stderr.write(text)
    return result


def read_exr(path: Path) -> dict[str, np.ndarray]:
    """All channels of a single-part EXR file as float32 (H, W) arrays, keyed by channel name."""
    if not path.is_file():
        raise TvqError(f"{path}: file not found")

    def read(ex: Any) -> dict[str, np.ndarray]:
        with ex.File(str(path), separate_channels=True) as f:
            return {name: np.asarray(ch.pixels, dtype=np.float32) for name, ch in f.channels().items()}

    channels = _exr_call(path, read)
    if not channels:
        raise TvqError(f"{path}: EXR file has no channels")
    return channels


def read_exr_rgba(path: Path) -> np.ndarray:
    """The R, G, B (and A, when present) channels of an EXR file, float32 (H, W, 3|4), values as stored."""
    ch = read_exr(path)
    if not all(c in ch for c in "RGB"):
        if "Y" in ch:  # luminance-only file
            ch = {"R": ch["Y"], "G": ch["Y"], "B": ch["Y"], **({"A": ch["A"]} if "A" in ch else {})}
        else:
            raise TvqError(f"{path}: EXR file has channels {sorted(ch)}, expected R, G, B")
    names = ["R", "G", "B"] + (["A"] if "A" in ch else [])
    return np.stack([ch[n] for n in names], axis=-1)


def write_exr(path: Path, channels: dict[str, np.ndarray]) -> None:
    """Write float32 (H, W) channels to a single-part, ZIP-compressed EXR file."""
    import OpenEXR

    data = {name: np.ascontiguousarray(arr, dtype=np.float32) for name, arr in channels.items()}
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    result, error, text = _native_output_captured(lambda: OpenEXR.File(header, data).write(str(path)))
    if error is not None:
        raise TvqError(f"{path}: cannot write EXR file ({' '.join((text or str(error)).split())})")


# ---------------------------------------------------------------------------------------------- depth


def read_depth(path: Path, scale: float = 1.0) -> np.ndarray:
    """A depth map as float32 (H, W): stored value times ``scale``; non-finite or negative values become 0.

    Accepts single-channel integer PNGs (16-bit as usual, 8- or 32-bit too), ``.npy`` float or integer
    arrays of shape (H, W) or (H, W, 1), and EXR files (channel Z, Y, R or the only one).
    """
    if not path.is_file():
        raise TvqError(f"{path}: depth file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".exr":
            ch = read_exr(path)
            name = next((n for n in ("Z", "Y", "R", "depth") if n in ch), None)
            if name is None and len(ch) == 1:
                name = next(iter(ch))
            if name is None:
                raise TvqError(f"{path}: cannot tell the depth channel among {sorted(ch)}")
            arr = ch[name]
        else:
            from PIL import Image

            with Image.open(path) as img:
                img.load()
                if img.mode not in ("I;16", "I;16B", "I;16L", "I", "L", "F"):
                    raise TvqError(f"{path}: depth map has mode {img.mode}, expected a single-channel image")
                arr = np.asarray(img)
    except TvqError:
        raise
    except Exception as err:
        raise TvqError(f"{path}: cannot read depth map ({err})") from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.number)) or np.issubdtype(arr.dtype, np.complexfloating):
        raise TvqError(f"{path}: depth map has shape {arr.shape} and type {arr.dtype}, expected (H, W) numbers")
    depth = arr.astype(np.float64) * scale
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth.astype(np.float32)


def ray_distance_to_z(distance: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Convert along-ray distances from the camera centre (H, W) to z-depth, keeping zeros as zeros."""
    h, w = distance.shape
    return (distance / pixel_ray_norms(K, h, w)).astype(np.float32)

