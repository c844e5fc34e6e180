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
    """Median and min wall time of fn() in milliseconds, synchronising the device around each call."""
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
    return {"median_ms": statistics.median(times), "min_ms": min(times), "iters": iters}


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
