"""Where a training step's time goes: GPU time and host time per stage (``tvq.profiling.STAGES``), for each
bitwidth, after a warm-up past the last pruning (the steady state), in one run and one JSON.

    python -m benchmarks.profile_step --scene .device/data/lego --bits 0 6 --out benchmarks/results/profile-h200.json
    python -m benchmarks.profile_step --scene tiny --bits 0 --warmup-steps 5 --steps 3 --config '{"max_level": 4}' \
        --out /tmp/profile.json   # CPU smoke

Per bitwidth: ``wall_ms`` per step (steps queued back to back, one sync at the end: what training sees),
``gpu_busy_ms`` per step (the sum of all kernel and copy times, torch's and Taichi's, from the CUDA
profiler; annotations not counted), the host-overhead share ``1 - gpu_busy / wall`` (the time the GPU
waits for the host), and per stage (``tvq.profiling.StageTimes``, a separate pass) the host time
(``cpu_ms``: Python and launch work inside the stage) and the GPU time of its kernels in stream order
(``gpu_ms``; CUDA only). march, features, decoder and composite make up the forward pass; backward
includes every kernel's backward. A step marches in two parts: it counts the next step's samples (and draws
its rays: sample) before it fills its own, so the host never waits for the GPU to drain.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._timing import device_name, sync, write_json
from tvq import runtime
from tvq.profiling import STAGES, StageTimes


def profile_run(scene, bits: int, warmup_steps: int, steps: int, overrides: dict, device) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from tvq.train import TrainConfig, Trainer, vertex_report

    config = TrainConfig(bits=bits, iters=warmup_steps, eval_every=0, checkpoint_every=0, **overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(scene, config, Path(tmp), log=lambda _: None)
        trainer.setup()
        t0 = time.perf_counter()
        trainer.fit()  # prunes and quantises on the way, as a run does
        warmup_seconds = time.perf_counter() - t0

        def run(n: int) -> None:
            for _ in range(n):
                trainer.train_step()
                trainer.step += 1

        run(3)
        sync(device)
        start = time.perf_counter()
        run(steps)
        sync(device)
        wall_ms = (time.perf_counter() - start) * 1e3 / steps
        with StageTimes(device) as times:
            run(steps)
        gpu = times.gpu_ms()
        stages = {name: {"cpu_ms": ms / steps, "gpu_ms": gpu[name] / steps if name in gpu else None,
                         "calls_per_step": times.calls[name] / steps} for name, ms in times.host.items()}
        gpu_busy = None
        if device.type == "cuda":
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                run(steps)
                sync(device)
            gpu_busy = sum(e.time_range.elapsed_us() for e in prof.events()
                           if e.device_type == torch.autograd.DeviceType.CUDA and not e.is_user_annotation) / 1e3 / steps
        grid = trainer.field.grid
        return {
            "bits": bits, "kind": grid.kind, "steps_profiled": steps, "warmup_steps": warmup_steps,
            "warmup_seconds": warmup_seconds, "wall_ms": wall_ms, "gpu_busy_ms": gpu_busy,
            "host_overhead_share": None if gpu_busy is None else max(0.0, 1 - gpu_busy / wall_ms),
            "stages": {name: stages[name] for name in STAGES if name in stages},
            "octree": vertex_report(trainer.field.octree, grid.levels),
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
        }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", required=True)
    parser.add_argument("--bits", type=int, nargs="+", default=[0, 6])
    parser.add_argument("--warmup-steps", type=int, default=2100, help="steps trained before profiling "
                        "(past the default last pruning at 2000)")
    parser.add_argument("--steps", type=int, default=50, help="steps timed and profiled")
    parser.add_argument("--config", default="{}", help="JSON overrides of the training config")
    parser.add_argument("--downscale", type=int, default=1)
    parser.add_argument("--arch", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    info = runtime.init(args.arch)
    from tvq.data import load_scene

    device = runtime.device()
    scene = load_scene(Path(args.scene), downscale=args.downscale)
    results = {"device": device_name(str(device)), "arch": info.arch, "torch": torch.__version__,
               "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "command": "python -m benchmarks.profile_step " + " ".join(argv if argv is not None else sys.argv[1:]),
               "runs": []}
    for bits in args.bits:
        row = profile_run(scene, bits, args.warmup_steps, args.steps, json.loads(args.config), device)
        results["runs"].append(row)
        write_json(args.out, results)
        parts = ", ".join(f"{k} {v['cpu_ms']:.2f}" + (f"/{v['gpu_ms']:.2f}" if v["gpu_ms"] is not None else "")
                          for k, v in row["stages"].items())
        share = "" if row["host_overhead_share"] is None else f", host overhead {row['host_overhead_share']:.0%}"
        print(f"bits {bits}: {row['wall_ms']:.2f} ms/step{share}; host/GPU ms: {parts}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
