"""Run every kernel benchmark (bench_*.py beside this file) and write one JSON.

    python -m benchmarks.kernels --out benchmarks/results/kernels-h100.json          # on the GPU
    python -m benchmarks.kernels --small --out /tmp/kernels-cpu.json                 # small, on the CPU

Each module exposes ``run(device, small) -> dict``: for each differentiable op, forward and
forward+backward time and peak memory of the Taichi op and of the vectorised pure-torch version.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

import torch

from benchmarks._timing import device_name, write_json
from tvq import runtime

MODULES = ["bench_gather_codebook", "bench_raymarch_composite", "bench_octree"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--small", action="store_true", help="small sizes (CPU smoke run)")
    parser.add_argument("--arch", default=None, help="auto | cuda | cpu")
    parser.add_argument("--only", nargs="*", default=None, help="subset of modules")
    args = parser.parse_args(argv)
    info = runtime.init(args.arch)
    device = str(runtime.device())
    results = {"device": device_name(device), "arch": info.arch, "small": args.small,
               "torch": torch.__version__, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "benchmarks": {}}
    failed = False
    for name in args.only or MODULES:
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            results["benchmarks"][name] = module.run(device, args.small)
        except Exception:  # keep the other benchmarks' numbers
            failed = True
            results["benchmarks"][name] = {"error": traceback.format_exc()}
            traceback.print_exc()
        print(f"{name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        write_json(args.out, results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
