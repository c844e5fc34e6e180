#!/usr/bin/env bash
# The .tvq study on a GPU: train lego raw, 6-bit VQ-AD and the 12-bit hash baseline, compress the raw model
# post hoc (kmVQ 6-bit, LRA rank 4), then rate-distortion of every LOD prefix of every file (tvq eval) and the
# codec benchmark (bytes per component with and without entropy coding, decode times, PSNR file vs checkpoint),
# then the inference benchmark on the raw and 6-bit files (ms per frame per LOD, fast path vs training renderer,
# the viewer's frame time) and the CUDA tests of the inference path.
#
#   bash benchmarks/codec_lego.sh SCENE RESULTS_DIR [MINUTES_RAW MINUTES_VQ MINUTES_HASH]
#
# TRAIN_CONFIG (JSON) replaces the training config's overrides (default {"eval_every": 1000}); RENDER_SIZE
# sets the inference benchmark's image size (default 800).
set -euo pipefail
scene=$(realpath "$1") results=$2
m0=${3:-2} m6=${4:-2.5} mh=${5:-1}
runs=${RUNS_DIR:-/tmp/tvq-runs}
source "$(dirname "$0")/_study.sh"
scene=$(private_scene "$scene")

log "train: raw ${m0} min, 6-bit ${m6} min, hash 12-bit ${mh} min"
step python3 -m benchmarks.train --runs "$scene:0:$m0" "$scene:6:$m6" "$scene:12:$mh:{\"hash\": true}" \
  --runs-dir "$runs" --out "$results/train.json" --config "${TRAIN_CONFIG:-{\"eval_every\": 1000\}}"
name=$(basename "$scene")
b0=$runs/$name-bits0 b6=$runs/$name-bits6 hash=$runs/$name-bits12-2

# The CUDA tests run beside the steps whose time is not reported.
cuda_pid=
if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  log "CUDA tests (beside compress and eval)"
  python3 -m pytest -q -m cuda tests -p no:cacheprovider > "$results/cuda-tests.txt" 2>&1 &
  cuda_pid=$!
fi

log "compress: kmeans 6-bit and lra rank 4 of the raw model"
step tvq compress "$b0/checkpoint.pt" --method kmeans --bits 6 -o "$runs/kmeans6.tvq"
step tvq compress "$b0/checkpoint.pt" --method lra --rank 4 -o "$runs/lra4.tvq"
cp "$b6/model.tvq" "$runs/vqad6.tvq" && cp "$b0/model.tvq" "$runs/raw.tvq" && cp "$hash/model.tvq" "$runs/hash12.tvq" || log "FAILED: a training run wrote no model.tvq"

log "eval: every LOD prefix of every file"
step tvq eval "$runs/vqad6.tvq" "$runs/kmeans6.tvq" "$runs/hash12.tvq" "$runs/lra4.tvq" "$runs/raw.tvq" --scene "$scene" \
  --out "$results/rd" --ref "VQRF:1562378:35.44" --ref "DVGO:132600000:35.96"

[ -n "$cuda_pid" ] && { wait "$cuda_pid" || log "CUDA tests failed (see cuda-tests.txt)"; }

log "codec benchmark"
step python3 -m benchmarks.codec --checkpoints "$b0/checkpoint.pt" "$b6/checkpoint.pt" --scene "$scene" \
  --out "$results/codec.json"
for f in vqad6 kmeans6 hash12 lra4 raw; do tvq info "$runs/$f.tvq" --json > "$results/info-$f.json" || log "FAILED: info $f"; done

log "render benchmark at ${RENDER_SIZE:-800}x${RENDER_SIZE:-800}"
step python3 -m benchmarks.render --models "raw=$runs/raw.tvq" "b6=$runs/vqad6.tvq" --size "${RENDER_SIZE:-800}" \
  --target-fps 60 --out "$results/render.json"
log "done"
