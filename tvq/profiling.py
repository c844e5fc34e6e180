"""Named stages of a training step, for ``benchmarks/profile_step.py``.

``stage("march")`` is a ``torch.profiler.record_function`` range named ``tvq/march``: outside a profiler it
costs a few microseconds, inside one it groups the host time and the GPU kernels (Taichi's too: the
profiler traces every CUDA launch of the process) launched within it.
"""

import torch

STAGES = ("sample", "march", "features", "decoder", "composite", "loss", "backward", "optimizer")


def stage(name: str):
    return torch.profiler.record_function(f"tvq/{name}")
