"""``tvq view``: the realtime GGUI inspector of a trained model (state in ``state``, drawing in ``window``)."""

from .state import OrbitController, SnapView, StreamSimulator, ViewerState
from .window import ViewerWindow, screenshot, view

__all__ = ["OrbitController", "SnapView", "StreamSimulator", "ViewerState", "ViewerWindow", "screenshot", "view"]
