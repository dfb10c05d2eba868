#!/bin/bash
# AA-CLIP training on a Cloud TPU VM pod slice: the same command on every worker (--worker=all);
# `launch.train --distributed` lets jax.distributed.initialize() find the peers through the TPU
# metadata server. One process per worker drives that worker's chips.
#
#   export TPU_NAME=aa-v5p-32 ZONE=us-east5-a PROJECT=my-project
#   bash launch/tpu/aa_pod.sh create v5p-32 v2-alpha-tpuv5   # optional: create the slice
#   bash launch/tpu/aa_pod.sh setup                          # this checkout -> ~/aajax on every worker, venv
#   bash launch/tpu/aa_pod.sh train configs/aa_siglip.py:so400m /mnt/shared/runs/aa_so400m \
#       --config.model.init=/mnt/shared/models/so400m --config.data.root=/mnt/shared/data/visa \
#       --config.data.eval_root=/mnt/shared/data/mvtec
#   bash launch/tpu/aa_pod.sh train configs/aa_clip.py /mnt/shared/runs/aa_clip \
#       --config.model.init=/mnt/shared/models/clip-l336 --config.data.root=/mnt/shared/data/visa \
#       --config.data.eval_root=/mnt/shared/data/mvtec
#   bash launch/tpu/aa_pod.sh run "nvidia-smi || ls /dev/accel*"   # any command on every worker
#   bash launch/tpu/aa_pod.sh stop                           # kill launch.train on every worker
#   bash launch/tpu/aa_pod.sh delete
#
# The workdir, model and data paths must be on a filesystem every worker mounts at the same path
# (Filestore NFS, or a Cloud Storage bucket through gcsfuse): checkpoints are written by all
# workers. Running `train` again resumes from the last checkpoint. MESH (default data:-1) sets
# --config.mesh, e.g. MESH=data:-1,fsdp:4 splits params over the 4 chips of each worker.
# DRY_RUN=1 prints the gcloud commands instead of running them.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME (and ZONE, optionally PROJECT)}"
: "${ZONE:?set ZONE}"
where=(--zone="$ZONE")
if [[ -n "${PROJECT:-}" ]]; then where+=(--project="$PROJECT"); fi
REMOTE_DIR=${REMOTE_DIR:-aajax}

gcloud_run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    local out=gcloud arg
    for arg in "$@"; do
      if [[ "$arg" =~ [[:space:]] ]]; then out+=" \"$arg\""; else out+=" $arg"; fi
    done
    echo "$out"
  else
    gcloud "$@"
  fi
}

on_all_workers() {
  gcloud_run compute tpus tpu-vm ssh "$TPU_NAME" "${where[@]}" --worker=all --command "$1"
}

cmd=${1:-}
shift || true
case "$cmd" in
  create)
    type=${1:?usage: aa_pod.sh create <accelerator type, e.g. v5p-32> [runtime version]}
    gcloud_run compute tpus tpu-vm create "$TPU_NAME" "${where[@]}" --accelerator-type="$type" \
        --version="${2:-v2-alpha-tpuv5}"
    ;;
  setup)
    archive=$(mktemp --suffix=.tar.gz)
    git archive --format=tar.gz -o "$archive" HEAD
    gcloud_run compute tpus tpu-vm scp "$archive" "$TPU_NAME:aajax.tar.gz" "${where[@]}" --worker=all
    rm -f "$archive"
    # Python >= 3.11 (the image may have an older default), then the package with JAX for TPU.
    on_all_workers "set -e; mkdir -p ~/$REMOTE_DIR && tar -xzf ~/aajax.tar.gz -C ~/$REMOTE_DIR; \
command -v python3.11 >/dev/null || (sudo apt-get update -q && sudo apt-get install -y -q python3.11 python3.11-venv); \
cd ~/$REMOTE_DIR && (test -d .venv || python3.11 -m venv .venv) && . .venv/bin/activate && \
pip install -q -U pip && pip install -q -e . 'jax[tpu]'"
    ;;
  train)
    usage="usage: aa_pod.sh train <config.py[:arg]> <shared workdir> [--config.key=value ...]"
    config=${1:?$usage}
    workdir=${2:?$usage}
    shift 2
    extra=$(printf ' %q' "$@")
    on_all_workers "cd ~/$REMOTE_DIR && . .venv/bin/activate && \
JAX_COMPILATION_CACHE_DIR=$(printf %q "$workdir")/.jax_cache python -m launch.train --distributed \
--config=$(printf %q "$config") --workdir=$(printf %q "$workdir") --config.mesh=${MESH:-data:-1}$extra"
    ;;
  run)
    on_all_workers "${1:?usage: aa_pod.sh run <command>}"
    ;;
  stop)
    on_all_workers "pkill -INT -f 'python -m launch.train' || true"
    ;;
  delete)
    gcloud_run compute tpus tpu-vm delete "$TPU_NAME" "${where[@]}" --quiet
    ;;
  *)
    echo "usage: aa_pod.sh create|setup|train|run|stop|delete ... (see the header of this file)" >&2
    exit 2
    ;;
esac
