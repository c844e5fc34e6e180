"""Training runs on real scenes, one JSON row per (scene, bits): PSNR/SSIM per LOD, time, time to 30 dB,
peak GPU memory, model size.

    python -m benchmarks.train --scene .device/data/lego --bits 0 6 4 --minutes 5 \
        --out benchmarks/results/train-lego-h100.json --runs-dir /tmp/runs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks._timing import write_json
from tvq.job import format_table, train_scene
from tvq.kernels import codebook
from tvq.train import TrainConfig


def parse_run(text: str) -> tuple[str, int, float, dict]:
    """SCENE:BITS:MINUTES[:JSON] -> (scene, bits, minutes, that run's TrainConfig fields)."""
    scene, bits, minutes, *own = text.split(":", 3)
    return scene, int(bits), float(minutes), json.loads(own[0]) if own else {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", nargs="+", default=[], help="one or more scene folders (one process: "
                        "Taichi compiles its kernels once)")
    parser.add_argument("--bits", type=int, nargs="+", default=[0, 6, 4])
    parser.add_argument("--runs", nargs="*", default=None, help="explicit SCENE:BITS:MINUTES[:JSON] runs instead "
                        "(JSON: TrainConfig fields for that run only, over --config; and \"code_replicas\": the "
                        "private copies of the codebook gradient at most, tvq.kernels.codebook.MAX_REPLICAS)")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--iters", type=int, default=1_000_000)
    parser.add_argument("--out", required=True)
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--config", default="{}", help="JSON of extra TrainConfig fields")
    parser.add_argument("--no-file", action="store_true", help="skip writing each run's .tvq (a recipe study)")
    args = parser.parse_args(argv)
    extra = json.loads(args.config)
    rows = []
    if Path(args.out).is_file():
        rows = json.loads(Path(args.out).read_text()).get("runs", [])
    plan = [(scene, bits, args.minutes, {}) for scene in args.scene for bits in args.bits]
    if args.runs:
        plan = [parse_run(r) for r in args.runs]
    for number, (scene, bits, minutes, own) in enumerate(plan):
        name = f"{Path(scene).name}-bits{bits}" + (f"-{number}" if own else "")
        replicas = own.pop("code_replicas", codebook.MAX_REPLICAS)
        config = TrainConfig(**{"bits": bits, "iters": args.iters, "minutes": minutes, **extra, **own})
        t0 = time.perf_counter()
        with codebook.replicas_at_most(replicas):
            metrics = train_scene(Path(scene), Path(args.runs_dir) / name, config, write_file=not args.no_file)
        metrics["code_replicas"] = int(replicas)
        metrics["wall_seconds"] = time.perf_counter() - t0
        metrics["command"] = "python -m benchmarks.train " + " ".join(argv or sys.argv[1:])
        print(name, "\n" + format_table(metrics), flush=True)
        rows.append({"name": name, **{k: v for k, v in metrics.items() if k != "history"},
                     "history": metrics["history"]})
        write_json(args.out, {"runs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
