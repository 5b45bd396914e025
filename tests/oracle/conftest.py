"""Shared fixtures of the oracle tests: where our binaries and the model are, the HF tokenizer.

Oracle tests never skip: a missing binary or model is a failure with a message that says how to
get it, so that a broken build cannot pass as "skipped".
"""

import os
import pathlib

import pytest

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _default_model() -> pathlib.Path:
    # Mirrors scripts/common.sh: $SEMSHARE_CACHE_DIR or $XDG_CACHE_HOME/semshare or ~/.cache/semshare.
    cache = os.environ.get("SEMSHARE_CACHE_DIR")
    if not cache:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        cache = os.path.join(xdg, "semshare")
    return pathlib.Path(cache) / "models" / DEFAULT_MODEL_FILE


@pytest.fixture(scope="session")
def source_dir() -> pathlib.Path:
    env = os.environ.get("SEMSHARE_SOURCE_DIR")
    return pathlib.Path(env) if env else pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def binary_dir(source_dir) -> pathlib.Path:
    env = os.environ.get("SEMSHARE_BINARY_DIR")
    if not env:
        pytest.fail("SEMSHARE_BINARY_DIR is not set; run this test through ctest (scripts/test)")
    return pathlib.Path(env)


@pytest.fixture(scope="session")
def semshare_bin(binary_dir) -> pathlib.Path:
    path = binary_dir / "tools" / "semshare"
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: build target `semshare` in {binary_dir}")
    return path


@pytest.fixture(scope="session")
def model_path() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("SEMSHARE_MODEL") or _default_model())
    if not path.is_file():
        pytest.fail(f"model {path} is missing: run scripts/setup (or set SEMSHARE_MODEL)")
    return path


@pytest.fixture(scope="session")
def paraphrase_corpus(source_dir) -> pathlib.Path:
    path = source_dir.parent / "shared" / "data" / "paraphrase" / "msr_paraphrase_train.txt"
    if not path.is_file():
        pytest.fail(f"paraphrase corpus {path} is missing")
    return path


@pytest.fixture(scope="session")
def hf_tokenizer(model_path):
    """Hugging Face fast tokenizer built from the GGUF's own metadata (not our tokenizer)."""
    import llama_ref

    return llama_ref.hf_tokenizer_from_gguf(str(model_path))
