#!/usr/bin/env bash
# Creates a virtual environment with one of ringtrain's two pinned stacks (STACK, default spark35):
#   spark35  .venv         requirements.lock: Spark 3.5, pyarrow 14, numpy 1, petastorm, and a Horovod 0.28.1
#                          wheel built from its sdist with the fixes torch >= 2.1 needs. The built wheel is cached
#                          in $RINGTRAIN_CACHE (default ~/.cache/ringtrain), so a second bootstrap takes seconds.
#   spark4   .venv-spark4  requirements-spark4.lock: Spark 4.1, pyarrow 18, numpy 2; no petastorm, no Horovod
#                          (train.engine ddp and train.reader arrow; `auto` picks them).
# Each environment has its own stamp, so both can live side by side.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="${STACK:-spark35}"
CACHE="${RINGTRAIN_CACHE:-$HOME/.cache/ringtrain}"
PYTHON="${PYTHON:-python3.11}"
HOROVOD_VERSION=0.28.1

die() { echo "bootstrap: $*" >&2; exit 1; }

case "$STACK" in
  spark35) LOCK="$ROOT/requirements.lock"; DEFAULT_VENV="$ROOT/.venv"; WITH_HOROVOD=1; MIN_JAVA=11
           STACK_IMPORTS="horovod.torch, petastorm" ;;
  spark4)  LOCK="$ROOT/requirements-spark4.lock"; DEFAULT_VENV="$ROOT/.venv-spark4"; WITH_HOROVOD=0; MIN_JAVA=17
           STACK_IMPORTS="torch" ;;
  *) die "unknown STACK=$STACK: use spark35 (Spark 3.5 with Horovod and petastorm) or spark4 (Spark 4.1, DDP and arrow reader)" ;;
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

need_horovod_build=0
if [ $WITH_HOROVOD = 1 ] && ! ls "$CACHE"/wheels/horovod-$HOROVOD_VERSION-*.whl >/dev/null 2>&1; then need_horovod_build=1; fi
if [ $need_horovod_build = 1 ]; then
  command -v g++ >/dev/null 2>&1 || die "No C++ compiler: building Horovod needs g++. Install build-essential (apt-get install build-essential)."
  command -v cmake >/dev/null 2>&1 || die "CMake not found: building Horovod needs it. Install cmake (apt-get install cmake, or pip install cmake)."
fi

# --- virtual environment + pinned stack -----------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV ($STACK stack)"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# One stack per environment: installing one lock over the other would leave a mix (e.g. petastorm beside pyarrow 18).
stamped_stack="$(cut -d' ' -f1 "$STAMP" 2>/dev/null || true)"
case "$stamped_stack" in
  spark35|spark4) [ "$stamped_stack" = "$STACK" ] \
    || die "$VENV holds the $stamped_stack stack, not $STACK: remove it (rm -rf $VENV) or set RINGTRAIN_VENV to another folder" ;;
esac
lock_sum="$STACK $(sha256sum "$LOCK" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$lock_sum" ] \
   && "$PY" -c "import $STACK_IMPORTS, pyspark, ringtrain.training, ringtrain.etl" 2>/dev/null; then
  echo "bootstrap: environment up to date ($VENV)"
  exit 0
fi
"$PY" -m pip install -q --upgrade "pip==24.3.1"
# Two steps: torch 2.13 declares setuptools >= 77 while petastorm declares < 70. The conflict is
# in metadata only (both run with setuptools 69.5.1), but one resolver pass would refuse it.
# torch's exact pin picks the CPU wheel; a bare requirement would pull multi-GB CUDA builds.
"$PY" -m pip install -q "$(grep -E '^torch==' "$LOCK")"
grep -vE '^(torch==|#|$)' "$LOCK" > "$VENV/rest.txt"
"$PY" -m pip install -q -r "$VENV/rest.txt" 2>&1 | grep -vE "dependency resolver|requires setuptools|incompatible|is ignored: it is neither" || true
"$PY" -c 'import torch, pyspark, pyarrow' || die "the pinned $STACK stack did not install (see pip's output above)"

# --- Horovod (spark35 only): build once from the sdist, then reuse the cached wheel
if [ $need_horovod_build = 1 ]; then
  echo "bootstrap: building horovod $HOROVOD_VERSION from source (once; about 2-3 minutes on 2 cores)"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  "$PY" -m pip download -q --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$work" \
    || die "could not download the horovod $HOROVOD_VERSION sdist from PyPI"
  tar -xzf "$work"/horovod-$HOROVOD_VERSION.tar.gz -C "$work"
  src="$work/horovod-$HOROVOD_VERSION"
  # torch >= 2.1 headers need C++17; upstream fixed this on master (PR #3998) but never released it.
  sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/; s/-std=c++14/-std=c++17/g' "$src/CMakeLists.txt"
  sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/; s/-std=c++14/-std=c++17/g' "$src/horovod/torch/CMakeLists.txt"
  grep -q 'c++14\|STANDARD 14' "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt" && die "patch to C++17 did not apply"
  (
    cd "$src"
    export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
           HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 CMAKE_POLICY_VERSION_MINIMUM=3.5 \
           MAKEFLAGS="-j$(nproc)" CXXFLAGS="${CXXFLAGS:-} -include string -include cstdint -include stdexcept"
    "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" . 
  ) || die "horovod build failed (see the compiler output above)"
  mkdir -p "$CACHE/wheels"
  cp "$work"/dist/horovod-$HOROVOD_VERSION-*.whl "$CACHE/wheels/"
fi
if [ $WITH_HOROVOD = 1 ]; then
  # --no-deps: horovod[spark] would pin pyarrow < 11, which petastorm's stack cannot use.
  "$PY" -m pip install -q --no-deps --force-reinstall "$CACHE"/wheels/horovod-$HOROVOD_VERSION-*.whl
  "$PY" -c 'import horovod.torch as hvd; assert hvd.gloo_built(), "horovod built without gloo"'
fi
"$PY" -m pip install -q --no-deps -e "$ROOT"
echo "$lock_sum" > "$STAMP"
echo "bootstrap: ready ($VENV, $STACK stack)"
