#!/usr/bin/env bash
# Spark GPU discovery script: prints this node's GPUs in the JSON Spark expects, e.g.
#   {"name": "gpu", "addresses": ["0", "1"]}
# Ship it with the job and point Spark at it (see README, "Submitting to YARN"):
#   --files conf/gpu_discovery.sh --conf spark.executor.resource.gpu.discoveryScript=./gpu_discovery.sh
# (standalone workers: --conf spark.worker.resource.gpu.discoveryScript=/path/to/gpu_discovery.sh).
# The addresses are nvidia-smi's GPU indices, the numbering CUDA_VISIBLE_DEVICES uses.
set -euo pipefail
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_discovery.sh: nvidia-smi not found on $(hostname): this node has no NVIDIA driver" >&2
  exit 1
fi
indices="$(nvidia-smi --query-gpu=index --format=csv,noheader)"
addresses="$(printf '%s\n' "$indices" | sed -e 's/[[:space:]]//g' -e '/^$/d' -e 's/.*/"&"/' | paste -sd, -)"
printf '{"name": "gpu", "addresses": [%s]}\n' "$addresses"
