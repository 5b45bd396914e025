"""Where the Python tests find the repository's data and the default model (one place).

- SOURCE_DIR: $SEMSHARE_SOURCE_DIR (ctest sets it), else the checkout holding this file.
- corpus_path() / corpus_pairs(): the paraphrase corpus shipped in data/paraphrase (MRPC's file
  format; data/paraphrase/README.md gives its counts). Nothing is read from outside the
  repository.
- default_model_path(): $SEMSHARE_MODEL, else the model scripts/setup installs, as
  scripts/common.sh and engine/model/default_model.h define it:
  ${SEMSHARE_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/semshare}/models/SmolLM2-135M-Instruct.Q4_1.gguf
"""

import os
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
SOURCE_DIR = pathlib.Path(os.environ.get("SEMSHARE_SOURCE_DIR") or HERE.parent)
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# data/paraphrase/README.md
CORPUS_PAIRS = 775
CORPUS_PARAPHRASES = 588


def default_model_path() -> pathlib.Path:
    env = os.environ.get("SEMSHARE_MODEL")
    if env:
        return pathlib.Path(env)
    cache = os.environ.get("SEMSHARE_CACHE_DIR")
    if not cache:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        cache = os.path.join(base, "semshare")
    return pathlib.Path(cache) / "models" / DEFAULT_MODEL_FILE


def corpus_path() -> pathlib.Path:
    return SOURCE_DIR / "data" / "paraphrase" / "paraphrase_pairs.txt"


def corpus_rows(path=None) -> list:
    """(label, sentence1, sentence2) of every pair, in file order. utf-8-sig, CRLF, tab-separated
    without CSV quoting, a header row first; a malformed row raises ValueError naming it."""
    path = pathlib.Path(path or corpus_path())
    with open(path, encoding="utf-8-sig", newline="") as f:
        lines = f.read().split("\r\n")
    if not lines or not lines[0].startswith("Quality"):
        raise ValueError(f"{path}: no header row")
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        cols = line.split("\t")
        if len(cols) != 5 or cols[0] not in ("0", "1"):
            raise ValueError(f"{path}: line {n} is not a corpus row")
        rows.append((int(cols[0]), cols[3], cols[4]))
    return rows


def corpus_pairs(path=None) -> list:
    """(sentence, paraphrase) of the pairs labelled paraphrases (quality 1), in file order."""
    return [(a, b) for label, a, b in corpus_rows(path) if label == 1]
