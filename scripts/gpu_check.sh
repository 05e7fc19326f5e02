#!/usr/bin/env bash
# The GPU checks, on a machine with an NVIDIA GPU and torch's CUDA build, with no Spark, Java or network:
# install ringtrain from a wheel, build Horovod with NCCL from its sdist, run the `gpu` tests, then the GPU
# benchmark. Everything it needs travels with the checkout (README "GPU tests and benchmarks without Spark"):
#
#   here (Spark, network):  make gpu-data                      # build/gpu-data: shards made by the real ETL
#                           pip wheel --no-deps -w .whl .      # ringtrain's wheel
#                           + into .whl/: horovod-0.28.1.tar.gz, and cffi/pycparser wheels for that Python
#   there:                  OUT=/some/folder bash scripts/gpu_check.sh [tests|bench|all]
#
# Results (the test log and JUnit XML, bench JSON) go to $OUT. Exit status: the tests'.
set -uo pipefail
cd "$(dirname "$0")/.."
WHAT="${1:-all}"
OUT="${OUT:-$PWD/build/gpu-check}"
PY="${PY:-python3}"
SITE="${SITE:-/tmp/ringtrain-site}"
mkdir -p "$OUT" "$SITE"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 RINGTRAIN_GPU_DATA="$PWD/build/gpu-data"
started=$SECONDS
stamp() { echo "gpu_check: $* (+$((SECONDS - started)) s)"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'

# ringtrain's pins say Python 3.11 (pyspark 3.5's limit); the worker and scoring need no pyspark.
"$PY" -m pip install -q --upgrade --no-index --no-deps --no-compile --ignore-requires-python --target "$SITE" .whl/*.whl \
  || { echo "gpu_check: could not install the wheels in .whl/" >&2; exit 1; }
stamp "wheels installed"

# Horovod with NCCL, built by the project's own script (Compute capability 9.0 only: this machine's GPU).
if [ "$WHAT" != bench ] && ls .whl/horovod-*.tar.gz >/dev/null 2>&1; then
  if PY="$PY" GPU=1 HOROVOD_BUILD_CUDA_CC_LIST="${HOROVOD_BUILD_CUDA_CC_LIST:-90}" \
       bash scripts/build_horovod.sh .whl/horovod-*.tar.gz /tmp/horovod-dist > "$OUT/horovod-build.log" 2>&1; then
    "$PY" -m pip install -q --upgrade --no-index --no-deps --no-compile --target "$SITE" /tmp/horovod-dist/horovod-*.whl
    stamp "horovod built with NCCL"
  else
    tail -30 "$OUT/horovod-build.log"
    stamp "horovod build FAILED (log: $OUT/horovod-build.log); the Horovod test will say so"
  fi
fi
# NCCL's library from the nvidia-nccl package that torch's CUDA build brings, for Horovod's extension.
nccl_lib="$("$PY" -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)"
[ -n "$nccl_lib" ] && export LD_LIBRARY_PATH="$nccl_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

status=0
if [ "$WHAT" != bench ]; then
  # -P: import the installed ringtrain, not the checkout's folders (etl/ and training/ install under ringtrain/).
  "$PY" -P -m pytest tests/test_gpu.py -v -rs -p no:cacheprovider --timeout=300 --junitxml="$OUT/gpu-tests.xml" 2>&1 \
    | tee "$OUT/gpu-tests.log"
  status=${PIPESTATUS[0]}
  stamp "tests done (exit $status)"
fi
if [ "$WHAT" != tests ]; then
  "$PY" -P bench/gpu_bench.py --data build/gpu-data/bench --out "$OUT/gpu-bench.json" ${BENCH_ARGS:-} 2>&1 \
    | tee "$OUT/gpu-bench.log"
  stamp "benchmark done (exit ${PIPESTATUS[0]})"
fi
exit $status
