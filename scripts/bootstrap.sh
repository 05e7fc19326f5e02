#!/usr/bin/env bash
# Creates a virtual environment with one of ringtrain's two pinned stacks (STACK, default spark35):
#   spark35  .venv         requirements.lock: Spark 3.5, pyarrow 14, numpy 1, petastorm, and a Horovod 0.28.1
#                          wheel built from its sdist with the fixes torch >= 2.1 needs. The built wheel is cached
#                          in $RINGTRAIN_CACHE (default ~/.cache/ringtrain), so a second bootstrap takes seconds.
#   spark4   .venv-spark4  requirements-spark4.lock: Spark 4.1, pyarrow 18, numpy 2; no petastorm, no Horovod
#                          (train.engine ddp and train.reader arrow; `auto` picks them).
# GPU=1 makes the GPU flavour of either stack, in its own environment (.venv-gpu, .venv-spark4-gpu): torch's
# CUDA 13 build and its CUDA packages from requirements-gpu.lock in place of the CPU torch, and on spark35 a
# Horovod built with NCCL (cached apart from the CPU build). Needs an NVIDIA driver >= 580 where it runs, and
# for the Horovod build the CUDA toolkit 13 (nvcc). scripts/build_horovod.sh builds Horovod (also by hand).
# Each environment has its own stamp, so all can live side by side.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="${STACK:-spark35}"
CACHE="${RINGTRAIN_CACHE:-$HOME/.cache/ringtrain}"
PYTHON="${PYTHON:-python3.11}"
GPU="${GPU:-0}"
HOROVOD_VERSION=0.28.1

die() { echo "bootstrap: $*" >&2; exit 1; }

case "$STACK" in
  spark35) LOCK="$ROOT/requirements.lock"; DEFAULT_VENV="$ROOT/.venv"; WITH_HOROVOD=1; MIN_JAVA=11
           STACK_IMPORTS="horovod.torch, petastorm" ;;
  spark4)  LOCK="$ROOT/requirements-spark4.lock"; DEFAULT_VENV="$ROOT/.venv-spark4"; WITH_HOROVOD=0; MIN_JAVA=17
           STACK_IMPORTS="torch" ;;
  *) die "unknown STACK=$STACK: use spark35 (Spark 3.5 with Horovod and petastorm) or spark4 (Spark 4.1, DDP and arrow reader)" ;;
esac
case "$GPU" in
  0) FLAVOUR="$STACK"; TORCH_LOCK="$LOCK" ;;
  1) FLAVOUR="$STACK-gpu"; TORCH_LOCK="$ROOT/requirements-gpu.lock"; DEFAULT_VENV="$DEFAULT_VENV-gpu" ;;
  *) die "GPU=$GPU: use GPU=0 (CPU torch) or GPU=1 (torch's CUDA build; NCCL Horovod on spark35)" ;;
esac
VENV="${RINGTRAIN_VENV:-$DEFAULT_VENV}"
STAMP="$VENV/.ringtrain-installed"

# --- prerequisites: say exactly what to install --------------------------------
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  command -v python3 >/dev/null 2>&1 || die "Python 3.11 not found. Install python3.11 (with venv and headers), or set PYTHON=/path/to/python3.11."
  PYTHON=python3
fi
# Python 3.11: pyspark 3.5 supports at most 3.11 (and numpy < 2), and both stacks are tested on 3.11 only
# (pyspark 4.1 would accept 3.10+, untested here).
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || die "$PYTHON is $("$PYTHON" -V 2>&1); ringtrain's pinned stacks need Python 3.11 (pyspark 3.5 supports at most 3.11, and both stacks are tested on 3.11 only). Set PYTHON=/path/to/python3.11."
command -v java >/dev/null 2>&1 || die "Java not found: Spark needs a JDK. Install OpenJDK 17 (apt-get install openjdk-17-jdk-headless) or set JAVA_HOME and PATH."
java_major="$(java -version 2>&1 | sed -nE '1s/.*version "(1\.)?([0-9]+).*/\2/p')"
[ "${java_major:-0}" -ge "$MIN_JAVA" ] \
  || die "Java $MIN_JAVA or newer is needed for the $STACK stack, found: $(java -version 2>&1 | head -1). Install OpenJDK 17."

if [ "$GPU" = 1 ]; then
  [ "$(uname -sm)" = "Linux x86_64" ] || die "GPU=1: requirements-gpu.lock pins torch's CUDA build for Linux x86_64; this is $(uname -sm)."
  # Not fatal: an environment to pack for a GPU cluster can be built on a machine without GPUs.
  driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1 || true)"
  if [ -z "$driver" ]; then
    echo "bootstrap: note: no NVIDIA driver here (nvidia-smi found none): the GPU stack installs, but CUDA works only where a driver >= 580 is installed"
  elif [ "${driver%%.*}" -lt 580 ]; then
    echo "bootstrap: WARNING: NVIDIA driver $driver here; torch's CUDA 13 build needs >= 580: upgrade the driver (https://www.nvidia.com/drivers)" >&2
  fi
fi

# Horovod wheels are cached per build flavour: a CPU wheel and an NCCL wheel have the same file name.
HOROVOD_CACHE="$CACHE/wheels"
if [ "$GPU" = 1 ]; then
  cc_list="${HOROVOD_BUILD_CUDA_CC_LIST:-}"  # a build for other GPU architectures is another wheel
  HOROVOD_CACHE="$CACHE/wheels-gpu${cc_list:+-cc${cc_list//,/-}}"
fi
need_horovod_build=0
if [ $WITH_HOROVOD = 1 ] && ! ls "$HOROVOD_CACHE"/horovod-$HOROVOD_VERSION-*.whl >/dev/null 2>&1; then need_horovod_build=1; fi
if [ $need_horovod_build = 1 ]; then
  # Compilers and (GPU=1) the CUDA toolkit, before the long install rather than after it.
  CHECK_ONLY=1 GPU="$GPU" bash "$ROOT/scripts/build_horovod.sh" || exit 1
fi

# --- virtual environment + pinned stack -----------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV ($FLAVOUR stack)"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# One stack per environment: installing one lock over the other would leave a mix (e.g. petastorm beside pyarrow 18).
stamped_stack="$(cut -d' ' -f1 "$STAMP" 2>/dev/null || true)"
case "$stamped_stack" in
  spark35|spark4|spark35-gpu|spark4-gpu) [ "$stamped_stack" = "$FLAVOUR" ] \
    || die "$VENV holds the $stamped_stack stack, not $FLAVOUR: remove it (rm -rf $VENV) or set RINGTRAIN_VENV to another folder" ;;
esac
# The GPU lock joins the sum only for GPU=1, so the CPU environments' stamps stay as they were.
locks=("$LOCK" "$ROOT/pyproject.toml")
[ "$GPU" = 0 ] || locks+=("$TORCH_LOCK")
lock_sum="$FLAVOUR $(sha256sum "${locks[@]}" | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$lock_sum" ] \
   && "$PY" -c "import $STACK_IMPORTS, pyspark, ringtrain.training, ringtrain.etl" 2>/dev/null; then
  echo "bootstrap: environment up to date ($VENV)"
  exit 0
fi
"$PY" -m pip install -q --upgrade "pip==24.3.1"
# Two steps: torch 2.13 declares setuptools >= 77 while petastorm declares < 70. The conflict is
# in metadata only (both run with setuptools 69.5.1), but one resolver pass would refuse it.
# torch's exact pin picks the CPU wheel; a bare requirement would pull multi-GB CUDA builds.
# GPU=1: the CUDA build and its CUDA packages, all pinned (requirements-gpu.lock; about 3 GB).
if [ "$GPU" = 1 ]; then
  "$PY" -m pip install -q -r "$TORCH_LOCK"
  "$PY" -W ignore -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' \
    || die "torch in $VENV is $("$PY" -c 'import torch; print(torch.__version__)'), not the CUDA build requirements-gpu.lock asks for (a pip constraint or find-links folder may pin a CPU wheel: see pip config list)"
else
  "$PY" -m pip install -q "$(grep -E '^torch==' "$LOCK")"
fi
grep -vE '^(torch==|#|$)' "$LOCK" > "$VENV/rest.txt"
"$PY" -m pip install -q -r "$VENV/rest.txt" 2>&1 | grep -vE "dependency resolver|requires setuptools|incompatible|is ignored: it is neither" || true
"$PY" -c 'import torch, pyspark, pyarrow' || die "the pinned $FLAVOUR stack did not install (see pip's output above)"

# --- Horovod (spark35 only): build once from the sdist (or HOROVOD_SDIST, offline), then reuse the cached wheel
if [ $need_horovod_build = 1 ]; then
  echo "bootstrap: building horovod $HOROVOD_VERSION from source (once; about 1-2 minutes on 2 cores)"
  PY="$PY" GPU="$GPU" bash "$ROOT/scripts/build_horovod.sh" ${HOROVOD_SDIST:+"$HOROVOD_SDIST"} "$HOROVOD_CACHE" \
    || die "building Horovod failed (scripts/build_horovod.sh said why, above)"
fi
if [ $WITH_HOROVOD = 1 ]; then
  # --no-deps: horovod[spark] would pin pyarrow < 11, which petastorm's stack cannot use.
  "$PY" -m pip install -q --no-deps --force-reinstall "$HOROVOD_CACHE"/horovod-$HOROVOD_VERSION-*.whl
  GPU="$GPU" "$PY" -c '
import os, horovod.torch as hvd
assert hvd.gloo_built(), "horovod built without gloo"
assert os.environ["GPU"] == "0" or hvd.nccl_built(), "horovod built without NCCL on the GPU stack"
' || die "the cached Horovod wheel in $HOROVOD_CACHE is not the build this stack needs: remove that folder and run again"
fi
"$PY" -m pip install -q --no-deps -e "$ROOT"
echo "$lock_sum" > "$STAMP"
echo "bootstrap: ready ($VENV, $FLAVOUR stack)"
