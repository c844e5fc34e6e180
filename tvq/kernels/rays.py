"""Training rays: random pixel ids -> camera rays and the colours the pixels hold, in one launch.

Pixel id n = v H W + j W + i names column i of row j of view v. With the view's intrinsics
K = [[fx, s, cx], [0, fy, cy], [0, 0, 1]] and camera-to-world [R | o] (OpenGL camera, as ``tvq.data.rays``):

    y = (j + 1/2 - cy) / fy,   x = (i + 1/2 - cx - s y) / fx,   d_cam = (x, -y, -1),
    origin = o,   direction = R d_cam / |R d_cam|,   target = image_v[j, i].

The same rays in torch take about fifteen small ops (the ids' division and remainder, gathers of the
cameras, the rotation, the norm): at 16k rays those are launches, not work, and a training step pays them
every step. Twin: ``tvq.data.rays.rays_for_views`` and the image gather of ``tvq.train.RayData.rays_at``.
"""

import functools

import taichi as ti

from .launch import lean


@functools.lru_cache(maxsize=None)
def training_rays_kernel():
    """The kernel ``(ids, Ks, c2ws, images, origins, dirs, target)``: float32 cameras and images, int64 ids."""
    f32 = ti.f32

    @ti.kernel
    def training_rays(
        ids: ti.types.ndarray(dtype=ti.i64, ndim=1), Ks: ti.types.ndarray(dtype=f32, ndim=3),
        c2ws: ti.types.ndarray(dtype=f32, ndim=3), images: ti.types.ndarray(dtype=f32, ndim=4),
        origins: ti.types.ndarray(dtype=f32, ndim=2), dirs: ti.types.ndarray(dtype=f32, ndim=2),
        target: ti.types.ndarray(dtype=f32, ndim=2),
    ):
        height, width = images.shape[1], images.shape[2]
        for n in range(ids.shape[0]):
            pixel = ids[n]
            v = ti.cast(pixel // (height * width), ti.i32)
            rest = ti.cast(pixel % (height * width), ti.i32)
            j, i = rest // width, rest % width
            y = (f32(j) + 0.5 - Ks[v, 1, 2]) / Ks[v, 1, 1]
            x = (f32(i) + 0.5 - Ks[v, 0, 2] - Ks[v, 0, 1] * y) / Ks[v, 0, 0]
            cam = ti.Vector([x, -y, -1.0])
            world = ti.Vector([0.0, 0.0, 0.0])
            for a in ti.static(range(3)):
                world[a] = c2ws[v, a, 0] * cam[0] + c2ws[v, a, 1] * cam[1] + c2ws[v, a, 2] * cam[2]
            world /= world.norm()
            for a in ti.static(range(3)):
                origins[n, a] = c2ws[v, a, 3]
                dirs[n, a] = world[a]
                target[n, a] = images[v, j, i, a]

    return lean(training_rays)
