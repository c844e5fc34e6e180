"""VQRF / hybrid ablation in one process (Taichi compiles once): one checkpoint compressed with every given
configuration; a JSON row per file (its options, vertices pruned / quantised / kept per level, bytes per
component, PSNR before and after on the test views, seconds per stage).

    python -m benchmarks.vqrf_ablation --checkpoint runs/lego-bits0/checkpoint.pt --method vqrf \
        --configs '{"prune": 0.001, "keep": 0.6}' '{"prune": 0.01, "keep": 0.9}' --out-dir runs/vqrf \
        --out benchmarks/results/vqrf-lego-h200.json

Each configuration is a JSON object of ``VqrfOptions`` fields over ``--base`` (also JSON); its file is
``OUT_DIR/NAME.tvq`` with NAME from the fields that differ from the base. ``--runs METHOD@CHECKPOINT@JSON
...`` adds runs of other checkpoints to the same process (the hybrid of a VQ-AD model beside VQRF of a raw
one).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks._timing import device_name, write_json


def option_text(value, sep: str = "_") -> str:
    """An option's value as short text: 0.001, 4096, or a per-LOD list joined by ``sep``."""
    if isinstance(value, (list, tuple)):
        return sep.join(option_text(x, sep) for x in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def file_name(method: str, own: dict) -> str:
    return "-".join([method] + [f"{k.replace('_', '')}{option_text(v)}" for k, v in sorted(own.items())])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--method", choices=("vqrf", "hybrid"), default="vqrf")
    parser.add_argument("--scene", default=None, help="the scene (default: the folder the checkpoint names)")
    parser.add_argument("--downscale", type=int, default=1)
    parser.add_argument("--base", default="{}", help="JSON of VqrfOptions fields shared by every configuration")
    parser.add_argument("--configs", nargs="+", default=["{}"], help="one JSON object of VqrfOptions fields each")
    parser.add_argument("--runs", nargs="*", default=[], help="more runs: METHOD@CHECKPOINT@JSON each")
    parser.add_argument("--eval-views", type=int, default=25)
    parser.add_argument("--out-dir", required=True, help="folder for the .tvq files")
    parser.add_argument("--out", required=True, help="the JSON to write (rows are appended to an existing one)")
    args = parser.parse_args(argv)

    from tvq import runtime
    from tvq.compress import compress_checkpoint
    from tvq.compress.vqrf_model import VqrfOptions
    from tvq.errors import TvqError

    runtime.ensure()
    base = json.loads(args.base)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = json.loads(Path(args.out).read_text()).get("runs", []) if Path(args.out).is_file() else []
    command = "python -m benchmarks.vqrf_ablation " + " ".join(argv if argv is not None else sys.argv[1:])
    plan = [(args.method, args.checkpoint, text) for text in args.configs] if args.checkpoint else []
    plan += [tuple(run.split("@", 2)) for run in args.runs]
    for method, checkpoint, text in plan:
        own = json.loads(text)
        options = VqrfOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in {**base, **own}.items()})
        path = out_dir / f"{file_name(method, own)}.tvq"
        t0 = time.perf_counter()
        try:
            report = compress_checkpoint(Path(checkpoint), path, method, scene=args.scene,
                                         downscale=args.downscale, vqrf=options, eval_views=args.eval_views,
                                         log=lambda m: print(m, flush=True))
        except TvqError as err:  # one configuration the model refuses: the study goes on
            print(f"{path.name}: {err}", flush=True)
            rows.append({"file": str(path), "method": method, "checkpoint": checkpoint, "options": vars(options),
                         "error": str(err), "command": command})
            write_json(args.out, {"runs": rows})
            continue
        row = {"file": str(path), "method": method, "checkpoint": checkpoint, "options": vars(options), "wall_seconds":
               time.perf_counter() - t0, "device": device_name(str(runtime.device())), "command": command,
               **{k: report[k] for k in ("file_bytes", "components", "lods", "levels", "levels_before", "psnr_before",
                                        "psnr_after", "eval_views", "seconds", "compress_seconds", "finetune_losses")}}
        rows.append(row)
        write_json(args.out, {"runs": rows})
        print(f"{path.name}: {row['file_bytes']:,} bytes, PSNR {row['psnr_before']:.2f} -> {row['psnr_after']:.2f} dB "
              f"({row['eval_views']} views), compress {row['compress_seconds']:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
