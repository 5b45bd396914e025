"""Shared fixtures of the oracle tests: where our binaries and the model are, the HF tokenizer.

Oracle tests never skip: a missing binary or model is a failure with a message that says how to
get it, so that a broken build cannot pass as "skipped".
"""

import os
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/: testpaths.py
import testpaths  # noqa: E402

DEFAULT_MODEL_FILE = testpaths.DEFAULT_MODEL_FILE


def _default_model() -> pathlib.Path:
    return testpaths.default_model_path()


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
    path = _default_model()
    if not path.is_file():
        pytest.fail(f"model {path} is missing: run scripts/setup (or set SEMSHARE_MODEL)")
    return path


@pytest.fixture(scope="session")
def paraphrase_corpus(source_dir) -> pathlib.Path:
    path = source_dir / "data" / "paraphrase" / "paraphrase_pairs.txt"
    if not path.is_file():
        pytest.fail(f"paraphrase corpus {path} is missing")
    return path


@pytest.fixture(scope="session")
def hf_tokenizer(model_path):
    """Hugging Face fast tokenizer built from the GGUF's own metadata (not our tokenizer)."""
    import llama_ref

    return llama_ref.hf_tokenizer_from_gguf(str(model_path))
