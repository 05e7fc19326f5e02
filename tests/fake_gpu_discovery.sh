#!/usr/bin/env bash
# TEST ONLY: a Spark GPU discovery script that hands out fake GPU addresses, as Spark's own tests do
# (pyspark/ml/torch/tests). Each call (one per standalone worker) gets the next
# RINGTRAIN_FAKE_GPUS_PER_CALL addresses (default 2): the first worker "0","1", the second "2","3", ...
# so that two workers on one machine own different GPUs. Every hand-out is appended to
# $RINGTRAIN_FAKE_GPU_STATE, one line per call, for the test to compare with what each rank saw.
# The real script is conf/gpu_discovery.sh.
set -euo pipefail
state="${RINGTRAIN_FAKE_GPU_STATE:?set RINGTRAIN_FAKE_GPU_STATE to a file the test reads}"
per="${RINGTRAIN_FAKE_GPUS_PER_CALL:-2}"
exec 9>>"$state.lock"
flock 9  # two workers start at once: each must take its own numbers
calls=$( (cat "$state" 2>/dev/null || true) | wc -l)
addresses=()
for ((i = calls * per; i < (calls + 1) * per; i++)); do addresses+=("\"$i\""); done
joined="$(IFS=,; echo "${addresses[*]}")"
echo "${joined//\"/}" >> "$state"
printf '{"name": "gpu", "addresses": [%s]}\n' "$joined"
