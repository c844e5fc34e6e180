"""Named stages of a training step, for ``benchmarks/profile_step.py``.

``stage("march")`` is a ``torch.profiler.record_function`` range named ``tvq/march`` inside a profiler, where
it groups the host time and the kernels launched within it, and nothing outside one. Inside a ``StageTimes``
block it also adds the stage's host time and, on CUDA, the time between two stream events
recorded at its ends: that counts every kernel of the stage in stream order, including the backward
kernels autograd launches from its own thread (which the profiler does not attribute to the range) and
Taichi's (launched on the same default stream).
"""

import contextlib
import time

import torch

STAGES = ("sample", "march", "features", "decoder", "composite", "loss", "backward", "optimizer")

_active = None  # the StageTimes block in force, if any


class StageTimes:
    """Per-stage host and GPU milliseconds summed over the steps run inside ``with StageTimes(device):``."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.host, self.calls = {}, {}
        self.events = {}  # name -> [(start, end)] CUDA events, read after the block

    def __enter__(self):
        global _active
        _active = self
        return self

    def __exit__(self, *exc):
        global _active
        _active = None

    def gpu_ms(self) -> dict:
        if not self.cuda:
            return {}
        torch.cuda.synchronize()
        return {name: sum(a.elapsed_time(b) for a, b in pairs) for name, pairs in self.events.items()}


class _Timed:
    def __init__(self, timer: StageTimes, name: str):
        self.timer, self.name = timer, name
        self.range = torch.profiler.record_function(f"tvq/{name}")

    def __enter__(self):
        self.range.__enter__()
        if self.timer.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.start.record()
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        t = self.timer
        t.host[self.name] = t.host.get(self.name, 0.0) + (time.perf_counter() - self.t0) * 1e3
        t.calls[self.name] = t.calls.get(self.name, 0) + 1
        if t.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            t.events.setdefault(self.name, []).append((self.start, end))
        self.range.__exit__(*exc)


_NO_RANGE = contextlib.nullcontext()


def stage(name: str):
    if _active is not None:
        return _Timed(_active, name)
    if torch.autograd.profiler._is_profiler_enabled:
        return torch.profiler.record_function(f"tvq/{name}")
    return _NO_RANGE  # a range costs ~12 us even with no profiler to see it; a step has ten
