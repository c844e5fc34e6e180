# Shared by the GPU study scripts (sourced, after `results` and `runs` are set): a log with timestamps, steps
# whose failure is logged while the study goes on (so one GPU session measures everything that works), and
# a private copy of the scene (the checkout a background study started from may be replaced while it runs).
mkdir -p "$results" "$runs"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$results/log.txt"; }
step() { "$@" >>"$results/log.txt" 2>&1 || log "FAILED ($?): $*"; }
private_scene() {  # SCENE -> the path of its copy under $runs
  rm -rf "$runs/scene-copy" && mkdir -p "$runs/scene-copy" && cp -r "$1" "$runs/scene-copy/" \
    && chmod -R u+w "$runs/scene-copy" && echo "$runs/scene-copy/$(basename "$1")"
}
