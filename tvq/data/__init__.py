"""Scene readers: every supported folder layout becomes one ``Scene``."""

from .scene import Scene, View

__all__ = ["Scene", "View"]
