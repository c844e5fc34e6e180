#!/usr/bin/env bash
# The VQRF study on a GPU: train lego raw and 6-bit VQ-AD (today's defaults), then VQRF on the raw model over a
# beta_p x beta_k grid (the paper's Table 2), codebook sizes (Table 4), fine-tuning steps and per-level
# thresholds, and the hybrid on the 6-bit model (JOBS processes, each compiling Taichi once); kmVQ of the raw
# model; then rate-distortion of every LOD prefix of every file (tvq eval, with VQRF's and DVGO's measured
# points as references).
#
#   bash benchmarks/vqrf_lego.sh SCENE RESULTS_DIR [MINUTES_RAW MINUTES_VQ]
#
# RAW_RECIPE and VQ_RECIPE (JSON) change the two runs' training options; FINETUNE the fine-tuning steps of the grid; JOBS
# the processes that share the GPU for the compressions (default 1).
set -euo pipefail
scene=$(realpath "$1") results=$2
m0=${3:-2} m6=${4:-2.5}
runs=${RUNS_DIR:-/tmp/tvq-vqrf}
source "$(dirname "$0")/_study.sh"
scene=$(private_scene "$scene")
raw_recipe=${RAW_RECIPE:-'{}'} vq_recipe=${VQ_RECIPE:-'{}'}
ft=${FINETUNE:-2000}

log "train: raw ${m0} min ($raw_recipe), 6-bit ${m6} min ($vq_recipe)"
step python3 -m benchmarks.train --runs "$scene:0:$m0:$raw_recipe" "$scene:6:$m6:$vq_recipe" --runs-dir "$runs" \
  --out "$results/train.json" --config '{"eval_every": 1000}'
name=$(basename "$scene")
b0=$(ls -d "$runs/$name-bits0"* | head -1) b6=$runs/$name-bits6

grid=()
for p in 0.001 0.01 0.05; do for k in 0.6 0.9 0.99; do grid+=("{\"prune\": $p, \"keep\": $k}"); done; done
plan=()  # METHOD@CHECKPOINT@JSON; the first is the paper's defaults (timed alone when JOBS > 1)
for c in "${grid[@]}" '{"codebook": 1024}' '{"codebook": 16384}' '{"finetune_steps": 0}' '{"finetune_steps": 500}' \
  '{"finetune_steps": 4000}' '{"prune": 0.01, "keep": [1, 0.99, 0.9, 0.9]}' \
  '{"prune": [0.001, 0.001, 0.01, 0.05], "keep": [1, 0.99, 0.99, 0.99]}'; do plan+=("vqrf@$b0/checkpoint.pt@$c"); done
for c in '{}' '{"prune": 0.01, "keep": 0.9}' '{"prune": 0.01, "keep": 0.99}' '{"prune": 0.05, "keep": 0.99}' \
  '{"prune": 0.01, "keep": [1, 1, 0.99, 0.99]}'; do plan+=("hybrid@$b6/checkpoint.pt@$c"); done
jobs=${JOBS:-1}
[ "$jobs" -ge 1 ] || { log "JOBS must be at least 1"; exit 2; }
rm -f "$results"/vqrf-[0-9]*.json  # an interrupted study's rows would be appended to
log "vqrf (beta_p x beta_k grid, codebook sizes, fine-tuning steps, per-level thresholds) and the hybrid: ${#plan[@]} files in $jobs processes"
for ((j = 0; j < jobs; j++)); do
  mine=()
  for ((i = j; i < ${#plan[@]}; i += jobs)); do mine+=("${plan[$i]}"); done
  [ ${#mine[@]} -gt 0 ] || continue
  (
    # the other processes start once the first file is written, so that its compression time is measured alone
    for ((t = 0; j > 0 && t < 600; t += 2)); do [ -f "$results/vqrf-0.json" ] && break; sleep 2; done
    step python3 -m benchmarks.vqrf_ablation --base "{\"finetune_steps\": $ft}" --runs "${mine[@]}" --scene "$scene" \
      --out-dir "$runs/files" --out "$results/vqrf-$j.json"
  ) &
done
wait
step python3 -c 'import json, sys; json.dump({"runs": [r for f in sys.argv[2:] for r in json.load(open(f))["runs"]]},
  open(sys.argv[1], "w"), indent=1)' "$results/vqrf.json" "$results"/vqrf-[0-9]*.json
rm -f "$results"/vqrf-[0-9]*.json
step tvq compress "$b0/checkpoint.pt" --method kmeans --bits 6 -o "$runs/files/kmvq6.tvq"

cp "$b0/model.tvq" "$runs/files/raw.tvq" && cp "$b6/model.tvq" "$runs/files/vqad6.tvq" || log "FAILED: no model.tvq"
log "eval: every LOD prefix of every file"
step tvq eval "$runs"/files/*.tvq --scene "$scene" --out "$results/rd" --ref "VQRF:1562378:35.44" \
  --ref "DVGO:132600000:35.96"
log "done"
