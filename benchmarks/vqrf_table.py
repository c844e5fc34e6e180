"""The README's VQRF / hybrid table, from ``benchmarks.vqrf_ablation`` JSON: one row per file, its options
against the paper's (beta_p 0.001, beta_k 0.6, 4096 codes, 2000 fine-tuning steps), the finest level's
vertices pruned / quantised / kept, the bytes of the file, of its first LOD and of its main components,
PSNR before and after on the test views, and the compression time.

    python -m benchmarks.vqrf_table benchmarks/results/vqrf-lego-h200.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.vqrf_ablation import option_text
from tvq.compress.vqrf_model import VqrfOptions

PAPER = {key: getattr(VqrfOptions(), key) for key in ("prune", "keep", "codebook", "finetune_steps")}


def options_text(options: dict) -> str:
    diff = [f"{key} {option_text(options[key], ',')}" for key in PAPER if options.get(key) != PAPER[key]]
    return ", ".join(diff) or "the paper's"


def table(runs: list[dict]) -> str:
    lines = ["| method | options | level 8: pruned / quantised / kept | file | first LOD | indices / kept / structure "
             "/ codebooks | PSNR before -> after | compress |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for run in sorted((r for r in runs if "error" not in r), key=lambda r: (r["method"], -r["file_bytes"])):
        finest, c = run["levels"][-1], run["components"]
        parts = " / ".join(f"{c[k] / 1e3:,.0f}" for k in ("indices", "features", "structure", "codebooks"))
        lines.append(f"| {run['method']} | {options_text(run['options'])} | {finest['pruned']:,} / "
                     f"{finest['quantised']:,} / {finest['kept']:,} | {run['file_bytes'] / 1e6:.2f} MB | "
                     f"{run['lods'][0]['end'] / 1e3:.1f} kB | {parts} kB | {run['psnr_before']:.2f} -> "
                     f"{run['psnr_after']:.2f} dB | {run['compress_seconds']:.0f} s |")
    refused = [r for r in runs if "error" in r]
    return "\n".join(lines + [""] * bool(refused) + [f"refused: {r['file']}: {r['error']}" for r in refused])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ablation", help="JSON written by benchmarks.vqrf_ablation")
    args = parser.parse_args(argv)
    print(table(json.loads(Path(args.ablation).read_text())["runs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
