"""Taichi, initialised once per process.

``init()`` chooses the backend (CUDA when a CUDA GPU is usable, else the x64 CPU backend), unless the
caller or the ``TVQ_ARCH`` variable names one, points Taichi's offline kernel cache at a tvq folder and
optionally switches on debug mode (bounds checks, no fast-math) for tests. Every kernel entry point calls
``ensure()``, so library users never have to think about it; commands call ``init(arch)`` first to honour
``--arch``.

The torch device that goes with the backend is ``device()``: tensors handed to kernels must live there.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import TvqError

ARCHES = ("auto", "cuda", "cpu")


@dataclass(frozen=True)
class RuntimeInfo:
    arch: str  # "cuda" or "cpu"
    debug: bool
    cache_dir: str


_info: RuntimeInfo | None = None


def _cuda_usable() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # a broken CUDA install counts as "no GPU"
        return False


def cache_dir() -> Path:
    root = os.environ.get("TVQ_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tvq"
    )
    return Path(root) / "taichi"


def resolve_arch(arch: str | None) -> str:
    """'auto' | 'cuda' | 'cpu' (or None: the TVQ_ARCH variable, else auto) -> the backend to use."""
    requested = (arch or os.environ.get("TVQ_ARCH") or "auto").lower()
    if requested not in ARCHES:
        raise TvqError(f"unknown arch {requested!r}: choose one of {', '.join(ARCHES)}")
    if requested == "auto":
        return "cuda" if _cuda_usable() else "cpu"
    if requested == "cuda" and not _cuda_usable():
        raise TvqError("arch 'cuda' was asked for, but no usable CUDA GPU was found (try --arch cpu)")
    return requested


def init(arch: str | None = None, debug: bool | None = None) -> RuntimeInfo:
    """Initialise Taichi once; a second call with a different arch or debug setting is an error."""
    global _info
    resolved = resolve_arch(arch)
    if debug is None:
        debug = os.environ.get("TVQ_DEBUG", "") not in ("", "0")
    if _info is not None:
        if (arch is not None and resolved != _info.arch) or debug != _info.debug:
            raise TvqError(
                f"Taichi already runs with arch={_info.arch} debug={_info.debug}; "
                f"cannot switch to arch={resolved} debug={debug} in the same process"
            )
        return _info
    import taichi as ti

    cdir = cache_dir()
    cdir.mkdir(parents=True, exist_ok=True)
    extra = {}
    if resolved == "cuda":
        # Taichi's own CUDA pool stays small: torch owns the GPU memory (kernels take torch tensors).
        extra["device_memory_GB"] = 0.5
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # ti.init prints its arch to stdout
        ti.init(
            arch=ti.cuda if resolved == "cuda" else ti.cpu,
            debug=debug,
            fast_math=not debug,
            offline_cache=True,
            offline_cache_file_path=str(cdir),
            default_fp=ti.f32,
            default_ip=ti.i32,
            log_level=ti.WARN,
            **extra,
        )
    _info = RuntimeInfo(arch=resolved, debug=debug, cache_dir=str(cdir))
    return _info


def ensure() -> RuntimeInfo:
    """Initialise with the defaults if nobody has yet; return the running configuration."""
    return _info if _info is not None else init()


def device():
    """The torch device that goes with the Taichi backend."""
    import torch

    return torch.device("cuda" if ensure().arch == "cuda" else "cpu")


def sync() -> None:
    """Wait for Taichi's and torch's queued GPU work (for timing)."""
    import taichi as ti

    ensure()
    ti.sync()
    if _info is not None and _info.arch == "cuda":
        import torch

        torch.cuda.synchronize()
