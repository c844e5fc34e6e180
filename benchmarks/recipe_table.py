"""The README's recipe-study table, from studies' JSON (``benchmarks/recipe_lego.sh`` runs, grouped, or a
``benchmarks.train`` output, one group named after its file): one row per run, the options it changed
against the paper's recipe (what the studies started from), PSNR per LOD on the test views, steps, time to
30 dB and peak GPU memory.

    python -m benchmarks.recipe_table benchmarks/results/recipe-lego-h200.json \
        "vq, leave one out=benchmarks/results/recipe-lego-h200-bits6.json"
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from tvq.train import TrainConfig

BUDGET_KEYS = {"iters", "minutes", "eval_every", "bits"}  # how long a run went (bits: a column of its own)
# the paper's recipe, where today's defaults differ from it: the baseline every study row is described against
# (vq_logit_gap: tvq's k-means warm start as it began)
PAPER_RECIPE = {"density": "relu", "decoder_hidden": 128, "adam_beta2": 0.999, "lr_decay": 1.0, "samples_per_cell": 4,
                "lod_ratio": 2.0, "vq_logit_gap": 2.0, "vq_freeze": 1.0}


def changed(config: dict) -> str:
    defaults = {**{f.name: f.default for f in fields(TrainConfig)}, **PAPER_RECIPE}
    # today's defaults, which depend on the bitwidth (a row from before vq_freeze learned its indices to the end)
    resolved = TrainConfig(bits=config.get("bits", 0), hash=config.get("hash", False),
                           vq_warmup=config.get("vq_warmup"), vq_freeze=config.get("vq_freeze", 1.0))
    diff = []
    for key, value in config.items():
        if key == "lr_decay" and value is None:
            value = resolved.final_lr_factor
        if key == "vq_freeze" and value is None:
            value = resolved.freeze_at or 1.0
        default = defaults.get(key)
        if isinstance(default, tuple):
            default = list(default)
        if key in BUDGET_KEYS or key in ("bits", "prune_at", "subdivide_at") and not value or value == default:
            continue
        if key == "prune_at" and value == [500, 2000]:  # the default the trainer resolves for a visual hull
            continue
        diff.append(f"{key} {json.dumps(value)}")
    return ", ".join(diff) or "the paper's recipe"


def rows(study: dict, name: str = "runs"):
    for group, runs in (study["groups"] if "groups" in study else {name: study["runs"]}).items():
        for run in runs:
            if run.get("warmup") or run["train_seconds"] < 30:  # a warm-up run (compiles the kernels)
                continue
            yield group, run


def table(studies: list[tuple[str, dict]]) -> str:
    lines = ["| group | bits | changed | train | steps | PSNR per LOD (finest last) | to 30 dB | peak GPU |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for group, run in (row for name, study in studies for row in rows(study, name)):
        lods = " / ".join(f"{lod['psnr']:.2f}" for lod in run["lods"])
        to30 = f"{run['seconds_to_30db']:.1f} s" if run.get("seconds_to_30db") else "-"
        peak = f"{run['peak_gpu_memory_bytes'] / 2 ** 30:.1f} GB" if run.get("peak_gpu_memory_bytes") else "-"
        lines.append(f"| {group} | {run['bits']} | {changed(run['config'])} | {run['train_seconds']:.0f} s | "
                     f"{run['iterations']:,} | {lods} | {to30} | {peak} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", help="[LABEL=]PATH of JSON holding {'groups': {name: [run rows]}} or "
                        "{'runs': [run rows]} (the group of the latter: LABEL, else the file's name)")
    args = parser.parse_args(argv)
    studies = []
    for spec in args.studies:
        label, _, path = spec.rpartition("=")
        studies.append((label or Path(path).stem, json.loads(Path(path).read_text())))
    print(table(studies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
