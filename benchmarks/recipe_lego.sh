#!/usr/bin/env bash
# The time-to-quality study on a GPU, in one process (Taichi compiles once): lego --bits 0 for MINUTES
# (default 1: the 35 dB-in-60 s target) with today's recipe and with one lever changed per run, then the
# per-step profile of bits 0 and 6.
#
#   bash benchmarks/recipe_lego.sh SCENE RESULTS_DIR [MINUTES]
#
# Each run is a row of RESULTS_DIR/recipe.json (its config, PSNR per LOD on the 25 test views, the quick
# check every 500 steps, steps, peak memory; no .tvq file is written); a failed step is logged and the study
# goes on. LEVERS (one JSON object per line) replaces the list below, BITS the bitwidth (default 0),
# TRAIN_CONFIG (JSON) the shared training overrides, PROFILE_ARGS the profile's extra arguments (PROFILE=0
# skips it).
set -euo pipefail
scene=$(realpath "$1") results=$2 minutes=${3:-1}
runs=${RUNS_DIR:-/tmp/tvq-recipe}
source "$(dirname "$0")/_study.sh"
scene=$(private_scene "$scene")

default_levers='{}
{"density": "relu"}
{"lr_decay": 1.0}
{"adam_beta2": 0.999}
{"decoder_hidden": 128}
{"decoder_hidden": 32}
{"batch_rays": 32768}
{"samples_per_cell": 2}
{"lazy_rows": true}
{"prune_threshold": 0.003}
{"lr": 0.002}'
specs=()
bits=${BITS:-0}
while IFS= read -r lever; do [ -n "$lever" ] && specs+=("$scene:$bits:$minutes:$lever"); done <<< "${LEVERS:-$default_levers}"
log "recipe runs: ${#specs[@]} x ${minutes} min at bits $bits"
step python3 -m benchmarks.train --runs "${specs[@]}" --runs-dir "$runs" --out "$results/recipe.json" --no-file \
  --config "${TRAIN_CONFIG:-{\"eval_every\": 500\}}"

if [ "${PROFILE:-1}" != 0 ]; then
  log "per-step profile, bits 0 and 6"
  step python3 -m benchmarks.profile_step --scene "$scene" --bits 0 6 --out "$results/profile.json" ${PROFILE_ARGS:-}
fi
log "done"
