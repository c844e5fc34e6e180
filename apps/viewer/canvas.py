"""The render on the canvas without leaving the device: one Taichi kernel copies the (h, w, 3) render into
a (W, H) field of the window's size, flipping y (the canvas's rows go up) and scaling a smaller render
(dynamic resolution) up by nearest neighbour, and the canvas draws that field.

Handing the canvas a numpy array instead costs a device-to-host copy of the render, two transposing
copies on the host and a host-to-device copy back into GGUI's field on every frame: at 800x800 on a GPU
that is more time than rendering the frame.
"""


import functools

import torch


@functools.lru_cache(maxsize=None)
def _blit():
    import taichi as ti

    @ti.kernel
    def blit(image: ti.types.ndarray(dtype=ti.f32, ndim=3), out: ti.template()):
        h, w = image.shape[0], image.shape[1]
        W, H = out.shape[0], out.shape[1]
        for i, j in out:
            y = (H - 1 - j) * h // H
            x = i * w // W
            out[i, j] = ti.Vector([image[y, x, 0], image[y, x, 1], image[y, x, 2]])

    return blit


class CanvasImage:
    """The field the canvas shows, of the window's size, filled from a render tensor on the device."""

    def __init__(self, size: tuple[int, int]):
        import taichi as ti

        self.size = (int(size[0]), int(size[1]))
        self.field = ti.Vector.field(3, ti.f32, shape=self.size)

    def upload(self, image: torch.Tensor):
        """(h, w, 3) float image (any size; row 0 at the top) -> the canvas field."""
        from tvq import runtime

        image = image.to(runtime.device(), torch.float32).contiguous()
        _blit()(image, self.field)
        return self.field
