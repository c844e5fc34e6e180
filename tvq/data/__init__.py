"""Scene readers: every supported folder layout becomes one ``Scene``."""

from .loader import load_scene, summarize
from .scene import Scene, View

__all__ = ["Scene", "View", "load_scene", "summarize"]
