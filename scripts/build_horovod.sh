#!/usr/bin/env bash
# Builds a Horovod 0.28.1 wheel for the torch of one Python, on CPU (Gloo) or with NCCL for GPUs.
#
#   [PY=python] [GPU=0|1] bash scripts/build_horovod.sh [SDIST] OUTDIR
#
#   SDIST   horovod-0.28.1.tar.gz on disk: nothing is downloaded (the build needs no network then).
#           Left out, the sdist is downloaded from the package index.
#   OUTDIR  where the wheel goes (created if missing).
#   PY      the Python to build for (default python3): torch, cffi and wheel must be importable by it,
#           because the build runs without build isolation (it compiles against that torch).
#   GPU=1   NCCL GPU operations. Needs nvcc (the CUDA toolkit of torch's CUDA major version) and NCCL's
#           headers and library from the nvidia-nccl-cu* package torch's CUDA build installs.
#           HOROVOD_BUILD_CUDA_CC_LIST picks the GPU architectures (default below); HOROVOD_NCCL_HOME and
#           HOROVOD_CUDA_HOME are taken as given when set.
#   CHECK_ONLY=1  only check the compilers and toolkits (bootstrap does, before its long install).
#
# scripts/bootstrap.sh runs this for the Spark 3.5 stacks and caches the wheel; it also runs by hand on a
# machine with another Python, e.g.  PY=python3 GPU=1 bash scripts/build_horovod.sh horovod-0.28.1.tar.gz dist/
set -euo pipefail

HOROVOD_VERSION=0.28.1
PY="${PY:-python3}"
GPU="${GPU:-0}"
# Turing to Blackwell: every architecture CUDA 13's nvcc still compiles for (it dropped those before 7.5).
# The last one also gets PTX, so newer GPUs can JIT-compile the kernels.
DEFAULT_CC_LIST="75,80,86,89,90,100,120"

die() { echo "build_horovod: $*" >&2; exit 1; }
case "$GPU" in 0|1) ;; *) die "GPU=$GPU: use GPU=0 (CPU, Gloo) or GPU=1 (NCCL)" ;; esac

# --- compilers and toolkits ------------------------------------------------------
command -v g++ >/dev/null 2>&1 || die "No C++ compiler: building Horovod needs g++. Install build-essential (apt-get install build-essential)."
command -v cmake >/dev/null 2>&1 || die "CMake not found: building Horovod needs it. Install cmake (apt-get install cmake, or pip install cmake)."
if [ "$GPU" = 1 ]; then
  # The toolkit folder: given, or the usual install, or the folder above the nvcc on PATH.
  cuda_home="${HOROVOD_CUDA_HOME:-${CUDA_HOME:-}}"
  if [ -z "$cuda_home" ] && [ -x /usr/local/cuda/bin/nvcc ]; then cuda_home=/usr/local/cuda; fi
  if [ -z "$cuda_home" ] && command -v nvcc >/dev/null 2>&1; then
    cuda_home="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
  fi
  if [ -n "$cuda_home" ] && [ ! -x "$cuda_home/bin/nvcc" ]; then
    die "GPU=1 needs the CUDA toolkit's nvcc, but $cuda_home/bin/nvcc (from \$HOROVOD_CUDA_HOME or \$CUDA_HOME) does not exist: set it to the toolkit's folder, e.g. /usr/local/cuda-13.0"
  fi
  [ -n "$cuda_home" ] \
    || die "GPU=1 needs the CUDA toolkit's nvcc (the NCCL build compiles CUDA kernels), and none was found (not in \$HOROVOD_CUDA_HOME, \$CUDA_HOME, /usr/local/cuda or on PATH). Install the CUDA toolkit 13 (https://developer.nvidia.com/cuda-downloads, or apt-get install cuda-toolkit-13-0) and set CUDA_HOME=/usr/local/cuda-13.0, or build for CPU with GPU=0."
  [ -f "$cuda_home/include/cuda_runtime.h" ] \
    || die "$cuda_home/bin/nvcc exists but $cuda_home/include/cuda_runtime.h does not: set CUDA_HOME to the toolkit's folder (the one holding bin/nvcc and include/)."
  nvcc_version="$("$cuda_home/bin/nvcc" --version | sed -nE 's/.*release ([0-9]+\.[0-9]+).*/\1/p')"
fi
[ "${CHECK_ONLY:-0}" = 1 ] && exit 0

# --- arguments and the Python -----------------------------------------------------
case $# in
  1) sdist=""; outdir="$1" ;;
  2) sdist="$1"; outdir="$2"; [ -f "$sdist" ] || die "$sdist: no such file (the horovod-$HOROVOD_VERSION sdist, .tar.gz)" ;;
  *) die "usage: [PY=python] [GPU=0|1] bash scripts/build_horovod.sh [horovod-$HOROVOD_VERSION.tar.gz] OUTDIR" ;;
esac
command -v "$PY" >/dev/null 2>&1 || die "PY=$PY: not found. Set PY to the Python whose torch Horovod is built for."
# Absolute, because the build runs in the unpacked source; not through readlink, which would leave a venv.
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac
"$PY" -c 'import torch' 2>/dev/null || die "$PY cannot import torch: install torch into it first (Horovod compiles against it)."
# Horovod's setup.py lists cffi in setup_requires; setuptools would fetch it from the network unless it is installed.
"$PY" -c 'import cffi' 2>/dev/null \
  || die "$PY cannot import cffi, which Horovod's setup.py requires while building (setup_requires; without it setuptools tries the network). Install it: $PY -m pip install cffi (offline: $PY -m pip install --no-index cffi-*.whl pycparser-*.whl)."
# Python 3.12's venvs come without setuptools, which builds Horovod's setup.py.
"$PY" -c 'import setuptools' 2>/dev/null \
  || die "$PY cannot import setuptools, which runs Horovod's setup.py. Install it: $PY -m pip install setuptools (offline: $PY -m pip install --no-index setuptools-*.whl)"
"$PY" -c 'import wheel' 2>/dev/null || "$PY" -c 'import setuptools.command.bdist_wheel' 2>/dev/null \
  || die "$PY has neither the wheel package nor setuptools >= 70.1, one of which builds the wheel. Install it: $PY -m pip install wheel"
torch_cuda="$("$PY" -c 'import torch; print(torch.version.cuda or "")')"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$outdir"
outdir="$(cd "$outdir" && pwd)"

if [ "$GPU" = 1 ]; then
  [ -n "$torch_cuda" ] || die "GPU=1 but $PY has torch $("$PY" -c 'import torch; print(torch.__version__)'), a CPU build: install the CUDA build first (make setup GPU=1 does, from requirements-gpu.lock)."
  [ "${nvcc_version%%.*}" = "${torch_cuda%%.*}" ] \
    || die "nvcc $nvcc_version (in $cuda_home) but torch is built for CUDA $torch_cuda: install the CUDA toolkit $torch_cuda and set CUDA_HOME to it."
  if [ -z "${HOROVOD_NCCL_HOME:-}" ]; then
    # NCCL comes with torch's CUDA build as the nvidia-nccl-cu* package, which ships lib/libnccl.so.2 but no
    # libnccl.so: Horovod's CMake looks for the latter, so give it a folder with include/ and that link.
    nccl_pkg="$("$PY" -c 'import nvidia.nccl, os; print(list(nvidia.nccl.__path__)[0])' 2>/dev/null)" \
      || die "$PY has no nvidia.nccl package (NCCL, installed with torch's CUDA build as nvidia-nccl-cu13): install it (pip install nvidia-nccl-cu13), or set HOROVOD_NCCL_HOME to an NCCL install."
    [ -f "$nccl_pkg/include/nccl.h" ] && [ -f "$nccl_pkg/lib/libnccl.so.2" ] \
      || die "$nccl_pkg lacks include/nccl.h or lib/libnccl.so.2: reinstall nvidia-nccl-cu13, or set HOROVOD_NCCL_HOME to an NCCL install."
    export HOROVOD_NCCL_HOME="$work/nccl"
    mkdir -p "$HOROVOD_NCCL_HOME/lib"
    ln -s "$nccl_pkg/include" "$HOROVOD_NCCL_HOME/include"
    ln -s "$nccl_pkg/lib/libnccl.so.2" "$HOROVOD_NCCL_HOME/lib/libnccl.so"
  fi
  # SHARED: link the libnccl.so.2 that torch loads, not a second, static copy of NCCL.
  # CUDA_HOME too: Horovod's CMake asks torch (cpp_extension) for the CUDA library folder, and torch guesses it
  # from the nvcc on PATH otherwise (/usr/local for a /usr/local/bin/nvcc wrapper: libcudart NOTFOUND).
  export HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_LINK=SHARED HOROVOD_CUDA_HOME="$cuda_home" CUDA_HOME="$cuda_home" \
         HOROVOD_BUILD_CUDA_CC_LIST="${HOROVOD_BUILD_CUDA_CC_LIST:-$DEFAULT_CC_LIST}"
  echo "build_horovod: NCCL build with CUDA $nvcc_version ($cuda_home), torch CUDA $torch_cuda, NCCL from $HOROVOD_NCCL_HOME, GPU architectures $HOROVOD_BUILD_CUDA_CC_LIST"
else
  # A CPU build must not pick up a toolkit that happens to be installed.
  unset HOROVOD_GPU HOROVOD_GPU_OPERATIONS HOROVOD_GPU_ALLREDUCE HOROVOD_GPU_BROADCAST HOROVOD_GPU_ALLGATHER \
        HOROVOD_GPU_ALLTOALL HOROVOD_GPU_REDUCESCATTER
fi

# --- source, patched ------------------------------------------------------------------
if [ -z "$sdist" ]; then
  "$PY" -m pip download -q --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$work" \
    || die "could not download the horovod $HOROVOD_VERSION sdist; offline, pass a downloaded horovod-$HOROVOD_VERSION.tar.gz as the first argument"
  sdist="$work/horovod-$HOROVOD_VERSION.tar.gz"
fi
tar -xzf "$sdist" -C "$work"
src="$work/horovod-$HOROVOD_VERSION"
[ -f "$src/setup.py" ] || die "$sdist does not hold horovod-$HOROVOD_VERSION/setup.py: pass the horovod $HOROVOD_VERSION sdist"
# torch >= 2.1 headers need C++17; upstream fixed this on master (PR #3998) but never released it.
for f in "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"; do
  sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/; s/-std=c++14/-std=c++17/g' "$f"
  ! grep -q 'c++14\|STANDARD 14' "$f" || die "patch to C++17 did not apply to $f"
done
# A Release build (-O3, no debug info) in place of setup.py's RelWithDebInfo (-O2 -g): measured on 2 idle
# cores, the CPU wheel builds in 71-77 s instead of 112 s, and is 1.1 MB instead of 18.6 MB (3 MiB installed
# instead of 60, in every archive `ringtrain pack` makes). HOROVOD_DEBUG=1 still makes a Debug build.
sed -i "s/else 'RelWithDebInfo'/else 'Release'/" "$src/setup.py"
grep -q "else 'Release'" "$src/setup.py" || die "patch to a Release build did not apply to $src/setup.py"

# --- build ---------------------------------------------------------------------------------
echo "build_horovod: building horovod $HOROVOD_VERSION for $("$PY" -c 'import sys, torch; print(sys.executable, "torch", torch.__version__)') (GPU=$GPU)"
started=$SECONDS
(
  cd "$src"
  # CMake >= 4 refuses gloo's old cmake_minimum_required; GCC 13 no longer includes these headers transitively.
  export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
         HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 CMAKE_POLICY_VERSION_MINIMUM=3.5 \
         MAKEFLAGS="-j$(nproc)" CXXFLAGS="${CXXFLAGS:-} -include string -include cstdint -include stdexcept"
  "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-index -w "$work/dist" .
) || die "horovod build failed (see the compiler output above)"
wheel="$(ls "$work"/dist/horovod-$HOROVOD_VERSION-*.whl)"

# --- check the wheel itself (unpacked, not installed): what it was built with ---------------------
mkdir "$work/check"
"$PY" -m zipfile -e "$wheel" "$work/check"
PYTHONPATH="$work/check" GPU="$GPU" "$PY" -c '
import os, horovod.torch as hvd
assert hvd.gloo_built(), "built without Gloo"
if os.environ["GPU"] == "1":
    assert hvd.nccl_built(), "built without NCCL although GPU=1 (see the CMake output above)"
    print(f"build_horovod: NCCL built in (NCCL version code {hvd.nccl_built()})")
' || die "the built wheel is not what was asked for (above)"
cp "$wheel" "$outdir/"
echo "build_horovod: built $outdir/$(basename "$wheel") in $((SECONDS - started)) s"
if [ "$GPU" = 1 ]; then
  # The extension needs libnccl.so.2 by that name. `import horovod.torch` imports torch first, whose CUDA
  # build loads libnccl.so.2 from the same package, so ringtrain's workers need nothing more; a process that
  # loads Horovod's library without torch (e.g. horovodrun --check-build) needs the folder on its path.
  echo "build_horovod: NCCL at run time: torch loads it; otherwise export LD_LIBRARY_PATH=$("$PY" -c 'import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])')/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
fi
