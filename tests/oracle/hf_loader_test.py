"""Hugging Face directory loading (engine/model/hf_loader.cc + engine/model/safetensors.cc), end to end.

The directories are built here by make_hf_model.py with the reference `safetensors` writer:
(i) the default SmolLM2 GGUF converted to HF format (F32, F16, BF16, and F32 split into two shards
with an index), checked against the same GGUF loaded through our binary and against the float64
numpy reference (llama_ref.py) on exactly the weights the directory holds; (ii) tiny random
qwen2 (Q/K/V biases), mistral (sliding window shorter than the prompt) and llama (llama3 rope
scaling) models against the reference; (iii) the fingerprint's stability and sensitivity;
(iv) broken directories fail with a message naming the problem.

All runs go through `semshare forward`, which prints {"vocab_size", "greedy", "fingerprint"} and
writes the last prompt position's float32 logits.
"""

import copy
import dataclasses
import json
import math
import os
import shutil
import struct
import subprocess

import numpy as np
import pytest

import llama_ref
import make_hf_model

N_GREEDY = 16
EPS32 = float(np.finfo(np.float32).eps)


# ---------------------------------------------------------------------------------------------
# Helpers


def run_forward(semshare_bin, model, ids, tmp_path, tag="run"):
    ids_file = tmp_path / f"{tag}.ids.json"
    logits_file = tmp_path / f"{tag}.logits.f32"
    ids_file.write_text(json.dumps([int(t) for t in ids]))
    cmd = [str(semshare_bin), "forward", "--model", str(model), "--ids-file", str(ids_file),
           "--greedy", str(N_GREEDY), "--logits-out", str(logits_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"`{' '.join(cmd)}` exited {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout)
    logits = np.fromfile(logits_file, dtype="<f4").astype(np.float64)
    assert logits.shape == (out["vocab_size"],)
    assert np.all(np.isfinite(logits)), "non-finite logits"
    return out, logits


def run_forward_expect_failure(semshare_bin, model, tmp_path):
    ids_file = tmp_path / "fail.ids.json"
    ids_file.write_text("[1, 2, 3]")
    proc = subprocess.run([str(semshare_bin), "forward", "--model", str(model), "--ids-file",
                           str(ids_file)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, f"loading {model} succeeded:\n{proc.stdout}"
    assert proc.returncode < 128, f"crashed with signal {proc.returncode - 128}:\n{proc.stderr}"
    return proc.stderr


def float32_tolerance(cfg, n_tokens, scale):
    """Bound on the float32 rounding difference of one forward pass (same derivation as
    forward_oracle_test.py): a length-K float32 dot product carries a relative error of about
    eps32 * sqrt(K) (random-walk rounding), K the longest reduction (d_ff, d_model or the
    context); each layer adds such an error to the residual stream, accumulating like
    sqrt(n_layers); the result is relative to the logit scale max|logit|. Measured: SmolLM2
    2-3e-5 against a bound of 7.8e-4, the tiny models ~6e-6 against 4.5e-5 (a few float32 ulps
    of the logits). Loader bugs (a wrong tensor, a dropped bias, a missed RoPE or window
    setting) move the logits by more than 100x the bound (checked by the ablations below)."""
    k_max = max(cfg.intermediate_size, cfg.hidden_size, n_tokens + N_GREEDY)
    return EPS32 * math.sqrt(k_max) * math.sqrt(cfg.num_layers) * scale


def assert_close(name, ours, want, tol):
    diff = np.abs(ours - want)
    worst = int(np.argmax(diff))
    print(f"{name}: max|diff| {diff.max():.3e} at id {worst} (tol {tol:.3e}), max|logit| "
          f"{np.abs(want).max():.2f}")
    assert diff.max() <= tol, (f"{name}: max|ours - want| = {diff.max():.3e} at id {worst} "
                               f"(ours {ours[worst]:.6f}, want {want[worst]:.6f}) exceeds {tol:.3e}")


def assert_same_greedy(name, got, want, margins=None):
    got = [int(t) for t in got]
    if got != want:
        pos = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        margin = f"; reference top-2 margin there {margins[pos]:.3e}" if margins and pos < len(margins) else ""
        pytest.fail(f"{name}: greedy tokens differ at position {pos}{margin}\nours: {got}\nwant: {want}")


def rounded_ref(ref, dtype):
    """A LlamaRef over the GGUF weights rounded to `dtype` (what an HF directory of that dtype
    holds; rounding is elementwise, so it commutes with the Q/K un-permutation)."""
    r = lambda a: make_hf_model.round_to_dtype(a, dtype).astype(np.float64)
    w = ref.w
    layers = [dataclasses.replace(L, **{f.name: r(getattr(L, f.name)) for f in dataclasses.fields(L)
                                        if getattr(L, f.name) is not None}) for L in w.layers]
    embed = r(w.embed)
    lm_head = embed if w.lm_head is w.embed else r(w.lm_head)
    return llama_ref.LlamaRef(ref.cfg, llama_ref.Weights(embed=embed, layers=layers,
                                                         final_norm=r(w.final_norm), lm_head=lm_head))


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def prompt_ids(hf_tokenizer):
    messages = [{"role": "user", "content": "Name three rivers in Europe and one fact about each."}]
    text = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return hf_tokenizer.encode(text, add_special_tokens=False)


@pytest.fixture(scope="module")
def gguf_ref(model_path):
    return llama_ref.LlamaRef.from_path(str(model_path))


@pytest.fixture(scope="module")
def hf_dirs(model_path, tmp_path_factory):
    """{variant: dir} for F32, F16, BF16 and F32 in two shards, from one dequantisation."""
    root = tmp_path_factory.mktemp("hf")
    cache = make_hf_model.gguf_to_hf_tensors(str(model_path))
    dirs = {"F32": root / "f32"}
    make_hf_model.from_gguf(str(model_path), str(dirs["F32"]), "F32", tensors_cache=cache)
    for variant, dtype, shards in (("F16", "F16", 1), ("BF16", "BF16", 1), ("F32x2", "F32", 2)):
        dirs[variant] = root / variant.lower()
        make_hf_model.from_gguf(str(model_path), str(dirs[variant]), dtype, shards,
                                tensors_cache=cache, tokenizer_dir=str(dirs["F32"]))
    return dirs


@pytest.fixture(scope="module")
def gguf_run(semshare_bin, model_path, prompt_ids, tmp_path_factory):
    return run_forward(semshare_bin, model_path, prompt_ids, tmp_path_factory.mktemp("gguf"))


# ---------------------------------------------------------------------------------------------
# (i) the default model converted to HF format


def test_f32_dir_matches_gguf(semshare_bin, hf_dirs, gguf_run, gguf_ref, prompt_ids, tmp_path):
    # Same float32 weights as the GGUF path (dequantised values stored exactly in F32); only
    # the RoPE pairing (half-split vs adjacent, with Q/K rows permuted accordingly) and hence
    # the summation order differ, so the float32 rounding bound applies.
    out, ours = run_forward(semshare_bin, hf_dirs["F32"], prompt_ids, tmp_path)
    g_out, g_logits = gguf_run
    assert out["vocab_size"] == g_out["vocab_size"] == gguf_ref.cfg.vocab_size
    tol = float32_tolerance(gguf_ref.cfg, len(prompt_ids), float(np.abs(g_logits).max()))
    assert_close("HF F32 vs GGUF", ours, g_logits, tol)
    assert_same_greedy("HF F32 vs GGUF", out["greedy"], [int(t) for t in g_out["greedy"]])
    # Non-trivial: the prompt produces a confident, varied continuation.
    assert len(set(out["greedy"])) > 3


def test_sharded_equals_single_file(semshare_bin, hf_dirs, prompt_ids, tmp_path):
    # Identical tensor bytes, only split across files: the loaded floats, hence the logits, the
    # greedy tokens and the fingerprint (order-independent over tensors) must be identical.
    assert (hf_dirs["F32x2"] / "model.safetensors.index.json").exists()
    assert len(list(hf_dirs["F32x2"].glob("model-*-of-00002.safetensors"))) == 2
    a_out, a = run_forward(semshare_bin, hf_dirs["F32"], prompt_ids, tmp_path, "single")
    b_out, b = run_forward(semshare_bin, hf_dirs["F32x2"], prompt_ids, tmp_path, "sharded")
    assert np.array_equal(a, b), f"max diff {np.abs(a - b).max():.3e}"
    assert a_out["greedy"] == b_out["greedy"]
    assert a_out["fingerprint"] == b_out["fingerprint"]


# Unit roundoff (half an ulp, relative) of storing a float32 weight in each format.
UNIT_ROUNDOFF = {"F16": 2.0 ** -11, "BF16": 2.0 ** -8}


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_half_precision_dirs(dtype, semshare_bin, hf_dirs, gguf_run, gguf_ref, prompt_ids, tmp_path):
    out, ours = run_forward(semshare_bin, hf_dirs[dtype], prompt_ids, tmp_path)
    # Exact check of the conversion: the float64 reference over the GGUF weights rounded to
    # dtype (the values the file holds) must agree within the float32 rounding bound.
    ref = rounded_ref(gguf_ref, dtype)
    want, want_greedy, margins = ref.greedy(prompt_ids, N_GREEDY)
    tol = float32_tolerance(ref.cfg, len(prompt_ids), float(np.abs(want).max()))
    assert_close(f"HF {dtype} vs reference on {dtype}-rounded weights", ours, want, tol)
    assert_same_greedy(f"HF {dtype} vs reference", out["greedy"], want_greedy, margins)

    # Against the GGUF itself the weights differ by the storage rounding: each weight moves by
    # at most u (relative, uniform, rms u/sqrt(3)), so each projection's output moves by about
    # u/sqrt(3) relative, every layer adds such a perturbation to the residual stream
    # (random walk: sqrt(n_layers)), and the logits move relative to their scale. The factor
    # 4 allows for amplification through attention softmax and RMSNorm; measured relative L2 is
    # 0.35x (F16) and 0.2x (BF16) of u/sqrt(3)*sqrt(n_layers), i.e. ~1/10 of the bound. A wrong
    # tensor or layout moves the logits by O(1) relative, far beyond it.
    _, g_logits = gguf_run
    u = UNIT_ROUNDOFF[dtype]
    rel_l2 = float(np.linalg.norm(ours - g_logits) / np.linalg.norm(g_logits))
    bound = 4 * u / math.sqrt(3) * math.sqrt(gguf_ref.cfg.num_layers)
    print(f"HF {dtype} vs GGUF: rel L2 {rel_l2:.3e} (bound {bound:.3e})")
    assert rel_l2 <= bound
    assert rel_l2 > 1e-3 * bound, "weights were not rounded at all: is the dtype ignored?"


def test_fingerprint_changes_with_stored_weights(semshare_bin, hf_dirs, prompt_ids, tmp_path):
    # The fingerprint names cache namespaces: the same bytes must give the same value across
    # runs; F16 and BF16 copies hold different weights and must differ from F32 and each other.
    fps = {}
    for variant in ("F32", "F16", "BF16"):
        out, _ = run_forward(semshare_bin, hf_dirs[variant], prompt_ids[:4], tmp_path, variant)
        fps[variant] = out["fingerprint"]
    again, _ = run_forward(semshare_bin, hf_dirs["F32"], prompt_ids[:4], tmp_path, "again")
    assert again["fingerprint"] == fps["F32"]
    assert len(set(fps.values())) == 3, fps
    assert all(len(f) == 16 and int(f, 16) >= 0 for f in fps.values()), fps


# ---------------------------------------------------------------------------------------------
# (ii) tiny random models of the other families


TINY = {
    # Q/K/V biases (qwen2 always has them).
    "qwen2": dict(model_type="qwen2", seed=11),
    # A window of 6 with a ~25-token prompt: most keys fall outside it.
    "mistral": dict(model_type="mistral", seed=12, sliding_window=6),
    # llama3 scaling with a short original context so that the scaled band covers most of the
    # frequencies of head_dim 16 (wavelengths 6.3 .. 2e4 vs 16 .. 64); a large rope_theta
    # keeps the low frequencies slow.
    "llama3": dict(model_type="llama", seed=13, rope_theta=500000.0,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
}


def ablated(ref, name):
    """The reference without the family's feature, to show it matters for this test."""
    cfg = copy.copy(ref.cfg)
    w = ref.w
    if name == "qwen2":
        w = dataclasses.replace(w, layers=[dataclasses.replace(L, bq=None, bk=None, bv=None) for L in w.layers])
    elif name == "mistral":
        cfg.sliding_window = None
    else:
        cfg.rope_scaling = None
    return llama_ref.LlamaRef(cfg, w)


@pytest.fixture(scope="module")
def tiny_dirs(hf_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    dirs = {}
    for name, kw in TINY.items():
        dirs[name] = root / name
        make_hf_model.tiny_random(str(dirs[name]), tokenizer_dir=str(hf_dirs["F32"]), **kw)
    return dirs


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_model_matches_reference(name, semshare_bin, tiny_dirs, prompt_ids, tmp_path):
    ids = prompt_ids[:25]
    ref = llama_ref.LlamaRef.from_path(str(tiny_dirs[name]))
    assert ref.cfg.arch == TINY[name]["model_type"]
    out, ours = run_forward(semshare_bin, tiny_dirs[name], ids, tmp_path)
    want, want_greedy, margins = ref.greedy(ids, N_GREEDY)
    tol = float32_tolerance(ref.cfg, len(ids), float(np.abs(want).max()))
    assert_close(f"tiny {name}", ours, want, tol)
    assert_same_greedy(f"tiny {name}", out["greedy"], want_greedy, margins)
    # The test can fail: without the feature the reference moves far outside the tolerance.
    other = ablated(ref, name).prefill(ids)
    assert np.abs(other - want).max() > 100 * tol, f"{name}: the ablated feature does not matter"


def test_fingerprint_sensitive_to_one_weight_and_config(semshare_bin, tiny_dirs, prompt_ids, tmp_path):
    src = tiny_dirs["qwen2"]
    base, _ = run_forward(semshare_bin, src, prompt_ids[:4], tmp_path, "base")
    # One float of one weight changed by one ulp.
    w_dir = tmp_path / "one_weight"
    shutil.copytree(src, w_dir)
    path = w_dir / "model.safetensors"
    blob = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", blob[:8])
    entry = json.loads(blob[8:8 + n])["model.layers.1.mlp.up_proj.weight"]
    at = 8 + n + entry["data_offsets"][0] + 4 * 17
    blob[at] ^= 1
    path.write_bytes(bytes(blob))
    changed, _ = run_forward(semshare_bin, w_dir, prompt_ids[:4], tmp_path, "changed")
    # A config-only change (rope_theta) with identical tensors.
    c_dir = tmp_path / "config"
    shutil.copytree(src, c_dir)
    cfg = json.loads((c_dir / "config.json").read_text())
    cfg["rope_theta"] = cfg["rope_theta"] * 2
    (c_dir / "config.json").write_text(json.dumps(cfg))
    conf, _ = run_forward(semshare_bin, c_dir, prompt_ids[:4], tmp_path, "conf")
    assert len({base["fingerprint"], changed["fingerprint"], conf["fingerprint"]}) == 3


# ---------------------------------------------------------------------------------------------
# (iv) broken directories


def _broken_copy(src, dst, edit):
    shutil.copytree(src, dst)
    edit(dst)
    return dst


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


def _drop_tensor(d, name):
    from safetensors.numpy import load_file, save_file

    t = load_file(str(d / "model.safetensors"))
    del t[name]
    save_file(t, str(d / "model.safetensors"))


BROKEN = {
    "missing_tensor": (lambda d: _drop_tensor(d, "model.layers.2.self_attn.k_proj.bias"),
                       ["model.layers.2.self_attn.k_proj.bias", "missing"]),
    "wrong_shape": (lambda d: _edit_config(d, intermediate_size=145),
                    ["model.layers.0.mlp.gate_proj.weight", "[144, 64]", "[145, 64]"]),
    "unknown_model_type": (lambda d: _edit_config(d, model_type="gpt2", architectures=None),
                           ["model_type", "gpt2"]),
    "missing_config": (lambda d: (d / "config.json").unlink(), ["config.json"]),
    "missing_tokenizer": (lambda d: (d / "tokenizer.json").unlink(), ["tokenizer.json"]),
    "missing_weights": (lambda d: (d / "model.safetensors").unlink(), ["model.safetensors"]),
    "truncated_weights": (lambda d: os.truncate(d / "model.safetensors", 5000),
                          ["model.safetensors", "past the"]),
    # qwen2 weights declared as llama: the biases would be silently dropped.
    "unused_biases": (lambda d: _edit_config(d, model_type="llama", architectures=["LlamaForCausalLM"]),
                      ["layer 0", "attention biases"]),
    # llama's attention_bias also means an o_proj bias, which we cannot hold.
    "llama_attention_bias": (lambda d: _edit_config(d, model_type="llama", architectures=None,
                                                    attention_bias=True),
                             ["attention_bias"]),
    "mismatched_architectures": (lambda d: _edit_config(d, architectures=["MistralForCausalLM"]),
                                 ["MistralForCausalLM", "qwen2"]),
    "bad_rope_scaling": (lambda d: _edit_config(d, rope_scaling={"rope_type": "yarn", "factor": 4.0}),
                         ["rope_scaling", "yarn"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_directory_fails_clearly(case, semshare_bin, tiny_dirs, tmp_path):
    edit, fragments = BROKEN[case]
    d = _broken_copy(tiny_dirs["qwen2"], tmp_path / case, edit)
    err = run_forward_expect_failure(semshare_bin, d, tmp_path)
    for f in fragments:
        assert f in err, f"{case}: {f!r} not in the error message:\n{err}"
