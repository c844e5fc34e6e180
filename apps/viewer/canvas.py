"""The render on the canvas in one pass: one Taichi kernel turns the (h, w, 3) render into the canvas's
(W, H) RGBA8 pixels (packed in uint32, as GGUI's ``set_image`` takes them), flipping y (the canvas's rows
go up) and scaling a smaller render (dynamic resolution) up by nearest neighbour; on a GPU the 4 bytes
per pixel come to the host once, into pinned memory, and GGUI copies them into its texture.

``canvas.set_image`` of a float field would run GGUI's own conversion kernel into a host array, which on
CUDA copies that array to the device and back around the launch; a numpy image would cost a
device-to-host copy of 12 bytes per pixel and two transposing copies on the host. The conversion is
GGUI's: each channel clamped to [0, 1], times 255, truncated.
"""


import functools

import numpy as np
import torch


@functools.lru_cache(maxsize=None)
def _pack():
    import taichi as ti

    @ti.kernel
    def pack(image: ti.types.ndarray(dtype=ti.f32, ndim=3), out: ti.types.ndarray(dtype=ti.i32, ndim=2)):
        h, w = image.shape[0], image.shape[1]
        W, H = out.shape[0], out.shape[1]
        for i, j in ti.ndrange(W, H):
            y = (H - 1 - j) * h // H
            x = i * w // W
            px = ti.u32(0xFF) << 24
            for k in ti.static(range(3)):
                px |= ti.cast(ti.min(ti.max(image[y, x, k], 0.0), 1.0) * 255, ti.u32) << (8 * k)
            out[i, j] = ti.bit_cast(px, ti.i32)

    return pack


class CanvasImage:
    """The canvas's (W, H) RGBA8 pixels for the window's size, filled from a render tensor on the device."""

    def __init__(self, size: tuple[int, int]):
        from tvq import runtime

        self.size = (int(size[0]), int(size[1]))
        device = runtime.device()
        self.pixels = torch.zeros(self.size, dtype=torch.int32, device=device)
        self.host = self.pixels if device.type == "cpu" else torch.zeros(
            self.size, dtype=torch.int32, pin_memory=True)
        self.array = self.host.numpy().view(np.uint32)  # what GGUI reads (its memory is the host tensor's)

    def upload(self, image: torch.Tensor) -> np.ndarray:
        """(h, w, 3) float image (any size; row 0 at the top) -> the canvas's pixels, (W, H) uint32 RGBA8."""
        from tvq import runtime

        image = image.to(runtime.device(), torch.float32).contiguous()
        _pack()(image, self.pixels)
        if self.host is not self.pixels:
            self.host.copy_(self.pixels)
        return self.array


def set_canvas_image(canvas, pixels: np.ndarray) -> None:
    """Hand GGUI's canvas packed RGBA8 pixels (W, H) uint32 on the host without its conversion pass."""
    from taichi.ui.utils import get_field_info

    canvas.canvas.set_image(get_field_info(pixels))
