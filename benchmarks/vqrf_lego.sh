#!/usr/bin/env bash
# The VQRF study on a GPU: train lego raw (the fastest --bits 0 recipe measured) and 6-bit VQ-AD, then in one
# process each (Taichi compiles once): VQRF on the raw model over a beta_p x beta_k grid (the paper's Table 2),
# codebook sizes (Table 4), fine-tuning steps and per-level thresholds; the hybrid on the 6-bit model; then rate-distortion of every
# LOD prefix of every file (tvq eval, with VQRF's and DVGO's measured points as references).
#
#   bash benchmarks/vqrf_lego.sh SCENE RESULTS_DIR [MINUTES_RAW MINUTES_VQ]
#
# RAW_RECIPE (JSON) replaces the raw run's training options; FINETUNE the fine-tuning steps of the grid.
set -euo pipefail
scene=$(realpath "$1") results=$2
m0=${3:-2} m6=${4:-2.5}
runs=${RUNS_DIR:-/tmp/tvq-vqrf}
source "$(dirname "$0")/_study.sh"
scene=$(private_scene "$scene")
raw_recipe=${RAW_RECIPE:-'{"density": "exp", "adam_beta2": 0.99, "decoder_hidden": 64, "lr_decay": 0.1}'}
ft=${FINETUNE:-2000}

log "train: raw ${m0} min ($raw_recipe), 6-bit ${m6} min"
step python3 -m benchmarks.train --runs "$scene:0:$m0:$raw_recipe" "$scene:6:$m6" --runs-dir "$runs" \
  --out "$results/train.json" --config '{"eval_every": 1000}'
name=$(basename "$scene")
b0=$(ls -d "$runs/$name-bits0"* | head -1) b6=$runs/$name-bits6

grid=()
for p in 0.001 0.01 0.05; do for k in 0.6 0.9 0.99; do grid+=("{\"prune\": $p, \"keep\": $k}"); done; done
hybrid=()
for c in '{}' '{"prune": 0.01, "keep": 0.9}' '{"prune": 0.01, "keep": 0.99}' '{"prune": 0.05, "keep": 0.99}' \
  '{"prune": 0.01, "keep": [1, 1, 0.99, 0.99]}'; do hybrid+=("hybrid@$b6/checkpoint.pt@$c"); done
log "vqrf (beta_p x beta_k grid, codebook sizes, fine-tuning steps, per-level thresholds) and the hybrid"
step python3 -m benchmarks.vqrf_ablation --checkpoint "$b0/checkpoint.pt" --scene "$scene" --method vqrf \
  --base "{\"finetune_steps\": $ft}" --configs "${grid[@]}" '{"codebook": 1024}' '{"codebook": 16384}' \
  '{"finetune_steps": 0}' '{"finetune_steps": 500}' '{"finetune_steps": 4000}' \
  '{"prune": 0.01, "keep": [1, 0.99, 0.9, 0.9]}' '{"prune": [0.001, 0.001, 0.01, 0.05], "keep": [1, 0.99, 0.99, 0.99]}' \
  --runs "${hybrid[@]}" --out-dir "$runs/files" --out "$results/vqrf.json"

cp "$b0/model.tvq" "$runs/files/raw.tvq" && cp "$b6/model.tvq" "$runs/files/vqad6.tvq" || log "FAILED: no model.tvq"
log "eval: every LOD prefix of every file"
step tvq eval "$runs"/files/*.tvq --scene "$scene" --out "$results/rd" --ref "VQRF:1562378:35.44" \
  --ref "DVGO:132600000:35.96"
log "done"
