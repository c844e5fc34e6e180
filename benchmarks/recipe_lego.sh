#!/usr/bin/env bash
# The time-to-quality study on a GPU, in one process per group (Taichi compiles once): lego --bits 0 for
# MINUTES (default 1: the 35 dB-in-60 s target) with today's recipe and with one lever changed per run,
# then the per-step profile of bits 0 and 6, and the post-hoc pruning study of the baseline's file.
#
#   bash benchmarks/recipe_lego.sh SCENE RESULTS_DIR [MINUTES]
#
# Each run is a row of RESULTS_DIR/recipe.json (its config, PSNR per LOD on the 25 test views, the quick
# check every 1000 steps, steps, peak memory); a failed step is logged and the study goes on. TRAIN_CONFIG
# (JSON) replaces the shared training overrides (default {"eval_every": 1000}), PROFILE_ARGS the profile's
# extra arguments, PRUNE_DOWNSCALE the pruning study's image downscale (default 2).
set -euo pipefail
scene=$(realpath "$1") results=$2 minutes=${3:-1}
runs=${RUNS_DIR:-/tmp/tvq-recipe}
source "$(dirname "$0")/_study.sh"
scene=$(private_scene "$scene")

levers=(
  '{}'                                           # today's recipe
  '{"lazy_rows": true}'                          # untouched rows keep values and moments
  '{"prune_at": [500, 2000, 4000]}'              # a third pruning, on a sharper field
  '{"prune_threshold": 0.01}'                    # prune harder
  '{"samples_per_cell": 2}'
  '{"batch_rays": 32768}'
  '{"decoder_hidden": 64}'
  '{"lr": 0.002}'
)
specs=()
for lever in "${levers[@]}"; do specs+=("$scene:0:$minutes:$lever"); done
log "recipe runs: ${#levers[@]} x ${minutes} min at bits 0"
step python3 -m benchmarks.train --runs "${specs[@]}" --runs-dir "$runs" --out "$results/recipe.json" \
  --config "${TRAIN_CONFIG:-{\"eval_every\": 1000\}}"

log "per-step profile, bits 0 and 6"
step python3 -m benchmarks.profile_step --scene "$scene" --bits 0 6 --out "$results/profile.json" ${PROFILE_ARGS:-}

name=$(basename "$scene")
log "post-hoc pruning study of the baseline run's file"
step python3 -m benchmarks.prune_study --model "$runs/$name-bits0/model.tvq" --scene "$scene" --downscale "${PRUNE_DOWNSCALE:-2}" \
  --out "$results/prune-study.json"
log "done"
