"""Oracle: our CPU forward pass (`semshare forward`) against the float64 numpy reference.

For each prompt (token ids from the Hugging Face tokenizer built from the same GGUF, so this test
does not depend on our tokenizer) we compare the last-position logits after prefill and the 32
greedy tokens that follow. The reference (llama_ref.py) is written from transformers' modelling
math and dequantises with gguf-py, so both sides use the same weights and differ only in
arithmetic (ours: float32, OpenBLAS sgemm; reference: float64).
"""

import json
import math
import subprocess

import numpy as np
import pytest

import llama_ref

N_GREEDY = 32
LONG_PROMPT_MIN_TOKENS = 1000
EPS32 = float(np.finfo(np.float32).eps)  # 2^-23 ~ 1.19e-7


@pytest.fixture(scope="module")
def ref(model_path):
    return llama_ref.LlamaRef.from_path(str(model_path))


def _corpus_pairs(path):
    # utf-8-sig, CRLF, tab-separated without CSV quoting; header row first.
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = f.read().split("\r\n")
    pairs = []
    for row in rows[1:]:
        cols = row.split("\t")
        if len(cols) == 5:
            pairs.append((cols[3], cols[4]))
    return pairs


def _prompt_ids(name, tok, corpus):
    if name == "plain":
        return tok.encode("The history of the printing press begins", add_special_tokens=False)
    if name == "chat":
        messages = [{"role": "user", "content": "Give me three tips for staying focused while studying."}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert text.startswith("<|im_start|>"), text  # ChatML
        return tok.encode(text, add_special_tokens=False)
    if name == "long":
        # Pairs from a fixed offset of the corpus until the prompt passes the minimum length.
        pairs = _corpus_pairs(corpus)
        assert len(pairs) > 300, len(pairs)
        text = "Decide whether each pair of sentences says the same thing.\n\n"
        i = 100
        while True:
            a, b = pairs[i]
            text += f"Sentence A: {a}\nSentence B: {b}\n\n"
            i += 1
            if len(tok.encode(text, add_special_tokens=False)) >= LONG_PROMPT_MIN_TOKENS:
                break
        text += "Summarise the topics of these sentences in one sentence:"
        ids = tok.encode(text, add_special_tokens=False)
        assert len(ids) >= LONG_PROMPT_MIN_TOKENS
        return ids
    raise ValueError(name)


def _run_ours(semshare_bin, model_path, ids, tmp_path):
    ids_file = tmp_path / "ids.json"
    logits_file = tmp_path / "logits.f32"
    ids_file.write_text(json.dumps([int(t) for t in ids]))
    cmd = [
        str(semshare_bin), "forward",
        "--model", str(model_path),
        "--ids-file", str(ids_file),
        "--greedy", str(N_GREEDY),
        "--logits-out", str(logits_file),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"`{' '.join(cmd)}` exited {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}")
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        pytest.fail(f"stdout is not one JSON object ({e}):\n{proc.stdout[-2000:]}")
    logits = np.fromfile(logits_file, dtype="<f4").astype(np.float64)
    return out, logits


@pytest.mark.parametrize("name", ["plain", "chat", "long"])
def test_forward_matches_reference(name, semshare_bin, model_path, paraphrase_corpus, ref,
                                   hf_tokenizer, tmp_path):
    cfg = ref.cfg
    ids = _prompt_ids(name, hf_tokenizer, paraphrase_corpus)
    out, ours = _run_ours(semshare_bin, model_path, ids, tmp_path)
    want, want_greedy, margins = ref.greedy(ids, N_GREEDY)

    assert out.get("vocab_size") == cfg.vocab_size, out
    assert ours.shape == (cfg.vocab_size,), f"logits file holds {ours.size} floats, want {cfg.vocab_size}"
    assert np.all(np.isfinite(ours)), "non-finite logits"

    # Tolerance. Both sides use the same dequantised weights, so the difference is float32
    # rounding in ours. A length-K float32 dot product carries a relative error of about
    # eps32 * sqrt(K) (random-walk rounding); the longest reductions are the MLP down
    # projection (K = d_ff) and, for long prompts, attention over the context (K = length).
    # Each of the n_layers blocks adds its own such error to the residual stream, which
    # accumulates like a random walk, sqrt(n_layers); the final error is relative to the logit
    # scale max|logit|. For SmolLM2-135M (d_ff 1536, 30 layers, max|logit| ~ 20) this gives
    # ~5e-4. Calibration: the same numpy code run in float32 differs from float64 by ~3e-6, so the
    # bound leaves ~100x for legitimate differences (summation order, blocking, expf), while
    # real bugs are far above it: rms_norm_eps 1e-6 instead of 1e-5 moves the logits by 5.6e-3,
    # a wrong RoPE base by > 1.
    k_max = max(cfg.intermediate_size, cfg.hidden_size, len(ids) + N_GREEDY)
    scale = float(np.max(np.abs(want)))
    tol = EPS32 * math.sqrt(k_max) * math.sqrt(cfg.num_layers) * scale
    diff = np.abs(ours - want)
    worst = int(np.argmax(diff))
    max_diff = float(diff[worst])
    rel_l2 = float(np.linalg.norm(ours - want) / np.linalg.norm(want))
    print(f"{name}: {len(ids)} tokens, max|diff| {max_diff:.3e} at id {worst} (tol {tol:.3e}), "
          f"rel L2 {rel_l2:.3e}, max|logit| {scale:.2f}")
    assert max_diff <= tol, (
        f"{name}: max|ours - ref| = {max_diff:.3e} at token id {worst} "
        f"(ours {ours[worst]:.6f}, ref {want[worst]:.6f}) exceeds {tol:.3e}; rel L2 {rel_l2:.3e}")
    assert int(np.argmax(ours)) == int(np.argmax(want)), (
        f"{name}: argmax ours {int(np.argmax(ours))} != ref {int(np.argmax(want))}")

    got_greedy = [int(t) for t in out.get("greedy", [])]
    if got_greedy != want_greedy:
        pos = next((i for i, (a, b) in enumerate(zip(got_greedy, want_greedy)) if a != b),
                   min(len(got_greedy), len(want_greedy)))
        margin = margins[pos] if pos < len(margins) else float("nan")
        pytest.fail(
            f"{name}: greedy tokens differ at position {pos} (ours {got_greedy[pos:pos + 1]}, "
            f"ref {want_greedy[pos:pos + 1]}); reference top-2 logit margin there {margin:.3e}\n"
            f"ours: {got_greedy}\nref:  {want_greedy}\n"
            f"ref text: {hf_tokenizer.decode(want_greedy)!r}")
