#!/usr/bin/env bash
# Creates .venv with the pinned stack of requirements.lock and a Horovod 0.28.1 wheel
# built from its sdist with the fixes torch >= 2.1 needs. The built wheel is cached in
# $RINGTRAIN_CACHE (default ~/.cache/ringtrain), so a second bootstrap takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RINGTRAIN_VENV:-$ROOT/.venv}"
CACHE="${RINGTRAIN_CACHE:-$HOME/.cache/ringtrain}"
PYTHON="${PYTHON:-python3.11}"
HOROVOD_VERSION=0.28.1
STAMP="$VENV/.ringtrain-installed"

die() { echo "bootstrap: $*" >&2; exit 1; }

# --- prerequisites: say exactly what to install --------------------------------
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  command -v python3 >/dev/null 2>&1 || die "Python 3.11 not found. Install python3.11 (with venv and headers), or set PYTHON=/path/to/python3.11."
  PYTHON=python3
fi
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || die "$PYTHON is $("$PYTHON" -V 2>&1); ringtrain's pinned stack needs Python 3.11. Set PYTHON=/path/to/python3.11."
command -v java >/dev/null 2>&1 || die "Java not found: Spark needs a JDK. Install OpenJDK 17 (apt-get install openjdk-17-jdk-headless) or set JAVA_HOME and PATH."
java -version 2>&1 | grep -qE 'version "(1[1-9]|2[0-9])' || die "Java 11 or newer is needed for Spark 3.5, found: $(java -version 2>&1 | head -1). Install OpenJDK 17."

need_horovod_build=1
if ls "$CACHE"/wheels/horovod-$HOROVOD_VERSION-*.whl >/dev/null 2>&1; then need_horovod_build=0; fi
if [ $need_horovod_build = 1 ]; then
  command -v g++ >/dev/null 2>&1 || die "No C++ compiler: building Horovod needs g++. Install build-essential (apt-get install build-essential)."
  command -v cmake >/dev/null 2>&1 || die "CMake not found: building Horovod needs it. Install cmake (apt-get install cmake, or pip install cmake)."
fi

# --- virtual environment + pinned stack -----------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
lock_sum="$(sha256sum "$ROOT/requirements.lock" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$lock_sum" ] && "$PY" -c 'import horovod.torch, petastorm, pyspark, ringtrain.training, ringtrain.etl' 2>/dev/null; then
  echo "bootstrap: environment up to date ($VENV)"
  exit 0
fi
"$PY" -m pip install -q --upgrade "pip==24.3.1"
# Two steps: torch 2.13 declares setuptools >= 77 while petastorm declares < 70. The conflict is
# in metadata only (both run with setuptools 69.5.1), but one resolver pass would refuse it.
# torch's exact pin picks the CPU wheel; a bare requirement would pull multi-GB CUDA builds.
"$PY" -m pip install -q "$(grep -E '^torch==' "$ROOT/requirements.lock")"
grep -vE '^(torch==|#|$)' "$ROOT/requirements.lock" > "$VENV/rest.txt"
"$PY" -m pip install -q -r "$VENV/rest.txt" 2>&1 | grep -vE "dependency resolver|requires setuptools|incompatible|is ignored: it is neither" || true
"$PY" -c 'import torch, pyspark, petastorm, pyarrow' || die "the pinned stack did not install (see pip's output above)"

# --- Horovod: build once from the sdist, then reuse the cached wheel ------------
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
# --no-deps: horovod[spark] would pin pyarrow < 11, which petastorm's stack cannot use.
"$PY" -m pip install -q --no-deps --force-reinstall "$CACHE"/wheels/horovod-$HOROVOD_VERSION-*.whl
"$PY" -m pip install -q --no-deps -e "$ROOT"
"$PY" -c 'import horovod.torch as hvd; assert hvd.gloo_built(), "horovod built without gloo"'
echo "$lock_sum" > "$STAMP"
echo "bootstrap: ready ($VENV)"
