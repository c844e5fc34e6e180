"""The README's recipe-study table, from a study's JSON (``benchmarks/recipe_lego.sh`` runs, grouped):
one row per run, the options it changed against today's defaults, PSNR per LOD on the test views, steps,
time to 30 dB and peak GPU memory.

    python -m benchmarks.recipe_table benchmarks/results/recipe-lego-h200.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from tvq.train import TrainConfig

BUDGET_KEYS = {"iters", "minutes", "eval_every", "bits"}  # how long a run went (bits: a column of its own)


def changed(config: dict) -> str:
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    diff = []
    for key, value in config.items():
        default = defaults.get(key)
        if isinstance(default, tuple):
            default = list(default)
        if key in BUDGET_KEYS or key in ("bits", "prune_at") and value is None or value == default:
            continue
        if key == "prune_at" and value == [500, 2000]:  # the default the trainer resolves for a visual hull
            continue
        diff.append(f"{key} {json.dumps(value)}")
    return ", ".join(diff) or "today's defaults"


def rows(study: dict):
    for group, runs in study["groups"].items():
        for run in runs:
            if run["train_seconds"] < 30:  # a warm-up run (compiles the kernels)
                continue
            yield group, run


def table(study: dict) -> str:
    lines = ["| group | bits | changed | train | steps | PSNR per LOD (finest last) | to 30 dB | peak GPU |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for group, run in rows(study):
        lods = " / ".join(f"{lod['psnr']:.2f}" for lod in run["lods"])
        to30 = f"{run['seconds_to_30db']:.1f} s" if run.get("seconds_to_30db") else "-"
        peak = f"{run['peak_gpu_memory_bytes'] / 2 ** 30:.1f} GB" if run.get("peak_gpu_memory_bytes") else "-"
        lines.append(f"| {group} | {run['bits']} | {changed(run['config'])} | {run['train_seconds']:.0f} s | "
                     f"{run['iterations']:,} | {lods} | {to30} | {peak} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="the study's JSON ({'groups': {name: [run rows]}})")
    args = parser.parse_args(argv)
    with open(args.study) as f:
        print(table(json.load(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
