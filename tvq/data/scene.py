"""The one scene type every reader produces.

A ``Scene`` is a list of ``View``s (an image, optional alpha and depth, intrinsics, a camera-to-world
matrix) plus named splits and the background colour the images were composited onto.

Conventions (see the project's design notes):
- ``c2w`` is camera-to-world, 4x4, OpenGL camera (+x right, +y up, looking down -z); readers convert.
- ``K`` is the 3x3 pinhole matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] in pixels; a pixel (i, j) (column
  i, row j) has its centre at (i + 0.5, j + 0.5), and rows grow downwards in the image.
- ``image`` is float32 sRGB in [0, 1], (H, W, 3), already composited onto ``Scene.background``.
- ``alpha`` is float32 in [0, 1], (H, W), or None when the format has no alpha.
- ``depth`` is float32 z-depth (distance along the camera's -z axis) in scene units, (H, W), 0 where there
  is no depth; None when the view has no depth. Readers of along-ray distances convert to z-depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class View:
    name: str
    image: np.ndarray  # (H, W, 3) float32 sRGB, composited onto the scene background
    K: np.ndarray  # (3, 3) float64 intrinsics in pixels
    c2w: np.ndarray  # (4, 4) float64 camera-to-world, OpenGL camera
    alpha: np.ndarray | None = None  # (H, W) float32 in [0, 1]
    depth: np.ndarray | None = None  # (H, W) float32 z-depth in scene units, 0 = no depth

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass
class Scene:
    format: str  # "blender" | "nerfstudio" | "rtmv" (the reader that made it)
    root: Path
    views: list[View]
    splits: dict[str, list[int]]  # split name -> indices into views
    background: np.ndarray = field(default_factory=lambda: np.ones(3, np.float32))  # (3,) sRGB

    @property
    def width(self) -> int:
        return self.views[0].width

    @property
    def height(self) -> int:
        return self.views[0].height

    @property
    def has_depth(self) -> bool:
        return any(v.depth is not None for v in self.views)

    @property
    def has_alpha(self) -> bool:
        return any(v.alpha is not None for v in self.views)

    def split(self, name: str) -> list[View]:
        """The views of one split, in order (an unknown name gives an empty list)."""
        return [self.views[i] for i in self.splits.get(name, [])]
