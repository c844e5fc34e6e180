"""Cheap repeated launches of a Taichi kernel that takes torch tensors.

Taichi's ``kernel(*args)`` re-derives, on every call, each argument's template key and type checks in
Python (about 15 us per tensor argument on a slow host): with ten tensors that is more host time than a
compositing kernel runs on a GPU. On the first call ``lean(kernel)`` has Taichi compile (and type-check)
the kernel, remembers the compiled kernel, and from then on, that first call included, fills the launch
context directly: one pointer, size and shape per tensor. A tensor whose dtype, device or element shape
differs from the first call's, or that is not contiguous, goes through Taichi's own path (which converts
or raises as usual).

Taichi compiles with zero-size stand-ins of the first call's tensors (same dtype, device and element
shape): it keeps the arguments it compiled with alive for as long as the compiled kernel lives, which for
a first call with real data (a grid's logits and their gradient) would pin gigabytes of GPU memory for
the rest of the process.

Only for kernels whose arguments are all typed ndarrays (dtype and ndim given) and scalars, called with
detached tensors (no gradient buffers: Taichi autodiff is not used in tvq). A plan lives as long as the
Taichi runtime, which ``tvq.runtime`` initialises once per process.
"""

from dataclasses import dataclass

import torch
from taichi.lang import impl
from taichi.types import ndarray_type, primitive_types
from taichi.lang.util import cook_dtype
from taichi.types.utils import is_signed

_ARRAY, _FLOAT, _INT, _UINT = range(4)


@dataclass
class _Plan:
    kernel: object  # the compiled C++ kernel (for its launch context)
    compiled: object  # its compiled data, as Taichi's own launch uses
    kinds: tuple[int, ...]
    dtypes: tuple  # per argument: the torch dtype of a tensor argument, else None
    ndims: tuple  # per argument: the array dimensions of a tensor argument (its shape without element dims)
    element_shapes: tuple  # per argument: the trailing vector/matrix dims the first call's tensor had
    device: torch.device


class LeanKernel:
    """Callable like the ``@ti.kernel`` it wraps; see the module docstring."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.plan: _Plan | None = None
        self.planned = False  # a first call has been made (the plan stays None when the kernel does not fit)

    def __call__(self, *args) -> None:
        if not self.planned:
            self.plan = _make_plan(self.kernel, args)
            self.planned = True
        plan = self.plan
        if plan is not None:
            ctx = plan.kernel.make_launch_context()
            for i, (kind, value) in enumerate(zip(plan.kinds, args)):
                if kind == _ARRAY:
                    if (value.dtype != plan.dtypes[i] or value.device != plan.device or not value.is_contiguous()
                            or value.shape[plan.ndims[i]:] != plan.element_shapes[i]):
                        return self.kernel(*args)
                    ctx.set_arg_external_array_with_shape((i,), value.data_ptr(), value.numel() * value.element_size(),
                                                          list(value.shape[:plan.ndims[i]]), 0)
                elif kind == _FLOAT:
                    ctx.set_arg_float((i,), float(value))
                elif kind == _INT:
                    ctx.set_arg_int((i,), int(value))
                else:
                    ctx.set_arg_uint((i,), int(value))
            impl.get_runtime().prog.launch_kernel(plan.compiled, ctx)
            return None
        return self.kernel(*args)


def _make_plan(kernel, args) -> _Plan | None:
    primal = kernel._primal
    kinds, dtypes, ndims, element_shapes, device = [], [], [], [], None
    for arg, value in zip(primal.arguments, args):
        anno = arg.annotation
        if isinstance(anno, ndarray_type.NdarrayType) and isinstance(value, torch.Tensor):
            kinds.append(_ARRAY)
            dtypes.append(value.dtype)
            ndims.append(anno.ndim)  # Taichi passes only the array dims; vector/matrix element dims are static
            if anno.ndim is None or value.dim() < anno.ndim:
                return None
            element_shapes.append(value.shape[anno.ndim:])
            if device is not None and value.device != device:
                return None
            device = value.device
        elif id(anno) in primitive_types.real_type_ids:
            kinds.append(_FLOAT)
            dtypes.append(None)
            ndims.append(0)
            element_shapes.append(None)
        elif id(anno) in primitive_types.integer_type_ids:
            kinds.append(_INT if is_signed(cook_dtype(anno)) else _UINT)
            dtypes.append(None)
            ndims.append(0)
            element_shapes.append(None)
        else:  # anything else (templates, matrices, fields): keep Taichi's own path
            return None
    if primal.return_type is not None or len(args) != len(primal.arguments):
        return None
    stand_ins = [torch.empty((0,) * ndim + tuple(shape), dtype=dtype, device=device) if kind == _ARRAY else value
                 for kind, value, dtype, ndim, shape in zip(kinds, args, dtypes, ndims, element_shapes)]
    key = primal.ensure_compiled(*stand_ins)
    prog = impl.get_runtime().prog
    t_kernel = primal.compiled_kernels[key]
    compiled = prog.compile_kernel(prog.config(), prog.get_device_caps(), t_kernel)
    return _Plan(t_kernel, compiled, tuple(kinds), tuple(dtypes), tuple(ndims), tuple(element_shapes),
                 device or torch.device("cpu"))


def lean(kernel) -> LeanKernel:
    """Wrap a ``@ti.kernel`` for cheap repeated launches."""
    return LeanKernel(kernel)
