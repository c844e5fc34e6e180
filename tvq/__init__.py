"""tvq: a Taichi differentiable renderer and compressor for neural radiance fields."""

import os as _os

# Taichi prints a banner on import; keep stdout clean for commands that print JSON.
_os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "0")

__version__ = "0.1.0"
