"""Timing and memory helpers shared by the benchmarks (GPU-aware, honest about synchronisation)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Callable

import torch

from tvq.atomic import write_json  # noqa: F401  (the benchmarks' JSON writer)


def sync(device: torch.device | str) -> None:
    import taichi as ti

    from tvq import runtime

    if runtime._info is not None:
        ti.sync()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device, warmup: int = 3, iters: int = 10) -> dict:
    """Median and min wall time of fn() in milliseconds, synchronising the device around each call; and
    ``back_to_back_ms``, the mean over ``iters`` calls queued one after another with one final sync (what a
    training loop sees: no per-call sync latency, but all host overhead the GPU cannot hide)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    back_to_back = (time.perf_counter() - start) * 1e3 / iters
    return {"median_ms": statistics.median(times), "min_ms": min(times), "back_to_back_ms": back_to_back,
            "iters": iters}


def gpu_kernel_ms(fn: Callable[[], object], device, iters: int = 10) -> float | None:
    """GPU time of the kernels fn() launches (torch's and Taichi's alike, from the CUDA profiler), per call;
    None on the CPU. Separates device work from host overhead."""
    if torch.device(device).type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        sync(device)
    # the profiler's "Self CUDA" column: kernel time, each kernel counted once
    total_us = sum(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
                   for e in prof.key_averages())
    return total_us / iters / 1e3 if total_us > 0 else None


def peak_memory_bytes(fn: Callable[[], object], device) -> int | None:
    """Peak GPU memory allocated by torch while fn() runs, above what was allocated before (None on CPU)."""
    if torch.device(device).type != "cuda":
        return None
    sync(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync(device)
    return int(torch.cuda.max_memory_allocated() - base)


def device_name(device) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} threads)"


def standalone_main(run: Callable[[str, bool], dict], description: str, small_help: str, argv=None) -> int:
    """Command line of one benchmark module: ``--small``, ``--out PATH``, ``--arch``; prints the JSON."""
    import argparse

    from tvq import runtime

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--small", action="store_true", help=small_help)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--arch", default=None, help="auto | cuda | cpu")
    args = parser.parse_args(argv)
    info = runtime.init(args.arch)
    results = {"arch": info.arch, "small": args.small, "torch": torch.__version__,
               "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    results.update(run(str(runtime.device()), args.small))
    if args.out:
        write_json(args.out, results)
    print(json.dumps(results, indent=2))
    return 0
