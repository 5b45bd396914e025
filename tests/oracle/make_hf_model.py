"""Builds Hugging Face model directories (config.json, safetensors, tokenizer files) for tests.

from_gguf(gguf_path, out_dir, dtype, shards=1)
    A llama-architecture GGUF (the default SmolLM2) converted to HF format with gguf-py:
    every tensor dequantised to float32, Q/K rows un-permuted exactly as transformers'
    `reverse_permute_weights` does (llama.cpp's converter interleaved RoPE pairs; HF pairs halves),
    numpy shapes (the reverse of GGUF's ne order, which gguf-py already gives), written as
    safetensors in F32, F16 or BF16, optionally split into `shards` files with an index.json.
    The tokenizer is the HF fast tokenizer transformers builds from the same GGUF, saved with
    save_pretrained (tokenizer.json + tokenizer_config.json).

tiny_random(out_dir, model_type, seed, tokenizer_dir, ...)
    A small random model (hidden 64, 4 heads, 2 KV heads) of model_type qwen2 (with Q/K/V
    biases), mistral (sliding window) or llama (optionally llama3 rope_scaling), with the
    vocabulary of the tokenizer files copied from `tokenizer_dir` (so the tokenizer loads).

Safetensors writing: F32 and F16 go through the `safetensors` package (safetensors.numpy
.save_file), so our C++ reader is checked against the reference writer. numpy has no bfloat16,
so BF16 tensors are rounded from float32 to nearest-even in integer arithmetic (to_bf16_bits),
saved by the same writer as U16 arrays, and then the header is rewritten with dtype "BF16":
the data section and its offsets are untouched because U16 and BF16 have the same size.

Command line:
  make_hf_model.py from-gguf MODEL.gguf OUT_DIR [--dtype F32|F16|BF16] [--shards N]
  make_hf_model.py tiny OUT_DIR --model-type qwen2 --tokenizer-dir DIR [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
from typing import Optional

import numpy as np

DTYPES = ("F32", "F16", "BF16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


# ---------------------------------------------------------------------------------------------
# Safetensors writing


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest, ties to even."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("non-finite weights")
    u = x.view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def round_to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """The float32 values a tensor holds after being stored as `dtype` (what a loader sees)."""
    if dtype == "F32":
        return np.asarray(x, dtype=np.float32)
    if dtype == "F16":
        return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)
    if dtype == "BF16":
        return bf16_bits_to_f32(to_bf16_bits(x))
    raise ValueError(dtype)


def write_safetensors(path: str, tensors: dict, dtype: str, metadata: Optional[dict] = None):
    """Writes float32 `tensors` ({name: ndarray}) as `dtype`."""
    from safetensors.numpy import save_file

    if dtype == "F32":
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, path, metadata)
    elif dtype == "F16":
        save_file({k: np.ascontiguousarray(v, dtype=np.float32).astype(np.float16) for k, v in tensors.items()},
                  path, metadata)
    elif dtype == "BF16":
        save_file({k: to_bf16_bits(v) for k, v in tensors.items()}, path, metadata)
        _relabel_dtype(path, "U16", "BF16")
    else:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")


def _relabel_dtype(path: str, old: str, new: str):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    for name, entry in header.items():
        if name != "__metadata__":
            assert entry["dtype"] == old, entry
            entry["dtype"] = new
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # keep the data section 8-byte aligned, as the writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + blob[8 + n:])


def write_weights(out_dir: str, tensors: dict, dtype: str, shards: int = 1):
    """model.safetensors, or `shards` files model-0000i-of-0000N.safetensors + index.json."""
    if shards <= 1:
        write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors, dtype, {"format": "pt"})
        return
    names = list(tensors)
    sizes = [tensors[k].size for k in names]
    total = sum(sizes)
    groups, acc = [[] for _ in range(shards)], 0
    for name, size in zip(names, sizes):  # contiguous split by cumulative size
        groups[min(shards - 1, acc * shards // total)].append(name)
        acc += size
    if any(not g for g in groups):
        raise ValueError(f"cannot split {len(names)} tensors into {shards} non-empty shards")
    weight_map, itemsize = {}, 4 if dtype == "F32" else 2
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(os.path.join(out_dir, fname), {k: tensors[k] for k in group}, dtype, {"format": "pt"})
        weight_map.update({k: fname for k in group})
    index = {"metadata": {"total_size": total * itemsize}, "weight_map": weight_map}
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)


def write_config(out_dir: str, config: dict):
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


# ---------------------------------------------------------------------------------------------
# GGUF -> HF


def reverse_permute_weights(weights: np.ndarray, n_head: int, num_kv_heads: Optional[int] = None) -> np.ndarray:
    """transformers 4.46 modeling_gguf_pytorch_utils.reverse_permute_weights, verbatim math."""
    if num_kv_heads is not None and n_head != num_kv_heads:
        n_head = num_kv_heads
    dim = weights.shape[0] // n_head // 2
    w = weights.reshape(n_head, dim, 2, *weights.shape[1:])
    return w.swapaxes(2, 1).reshape(weights.shape)


def _gguf_field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def hf_tokenizer_from_gguf(gguf_path: str):
    # transformers 4.46 refuses GGUF without torch, but the tokenizer path never uses torch.
    import transformers.modeling_gguf_pytorch_utils as m

    m.is_torch_available = lambda: True
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(gguf_path)),
                                         gguf_file=os.path.basename(gguf_path))


_GGUF_TO_HF = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def gguf_to_hf_tensors(gguf_path: str):
    """(config dict, {hf_name: float32 ndarray}) of a llama-architecture GGUF."""
    import gguf
    from gguf import quants

    reader = gguf.GGUFReader(gguf_path)
    arch = _gguf_field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"from_gguf handles architecture llama, not {arch!r}")

    def meta(key, default=None):
        return _gguf_field(reader, f"llama.{key}", default)

    n_head = int(meta("attention.head_count"))
    n_kv = int(meta("attention.head_count_kv", n_head))
    hidden = int(meta("embedding_length"))
    if meta("rope.scaling.type") not in (None, "none"):
        raise ValueError("rope scaling in GGUF is not converted here")
    tensors = {}
    for t in reader.tensors:
        # gguf-py's shape/data are numpy order (reverse of ne); dequantize keeps that order.
        arr = np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        if t.name == "token_embd.weight":
            tensors["model.embed_tokens.weight"] = arr
        elif t.name == "output_norm.weight":
            tensors["model.norm.weight"] = arr
        elif t.name == "output.weight":
            tensors["lm_head.weight"] = arr
        elif t.name.startswith("blk."):
            _, layer, rest = t.name.split(".", 2)
            if rest == "attn_q.weight":
                arr = reverse_permute_weights(arr, n_head, n_head)
            elif rest == "attn_k.weight":
                arr = reverse_permute_weights(arr, n_head, n_kv)
            elif rest not in _GGUF_TO_HF:
                raise ValueError(f"unexpected tensor {t.name}")
            tensors[f"model.layers.{layer}.{_GGUF_TO_HF[rest]}"] = np.ascontiguousarray(arr)
        else:
            raise ValueError(f"unexpected tensor {t.name}")
    vocab = tensors["model.embed_tokens.weight"].shape[0]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": int(meta("feed_forward_length")),
        "num_hidden_layers": int(meta("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": int(meta("attention.key_length", hidden // n_head)),
        "rms_norm_eps": float(f"{meta('attention.layer_norm_rms_epsilon', 1e-5):.7g}"),
        "rope_theta": float(meta("rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "max_position_embeddings": int(meta("context_length", 2048)),
        "vocab_size": vocab,
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": _opt_int(_gguf_field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": _opt_int(_gguf_field(reader, "tokenizer.ggml.eos_token_id")),
    }
    return config, tensors


def _opt_int(v):
    return None if v is None else int(v)


def save_tokenizer_from_gguf(gguf_path: str, out_dir: str):
    """tokenizer.json + tokenizer_config.json as transformers builds them from the GGUF.

    transformers 4.46's GGUF conversion writes eos_token "<|im_start|>" and add_bos_token true
    for SmolLM2 although the GGUF says eos id 2 and add_bos_token false; the special-token
    fields are set back to the GGUF's values so the directory describes the same model."""
    import gguf

    hf_tokenizer_from_gguf(gguf_path).save_pretrained(out_dir)
    reader = gguf.GGUFReader(gguf_path)
    tokens = _gguf_field(reader, "tokenizer.ggml.tokens")
    fixes = {}
    for key, field in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id")):
        tid = _gguf_field(reader, f"tokenizer.ggml.{field}")
        if tid is not None:
            fixes[key] = tokens[int(tid)]
    add_bos = _gguf_field(reader, "tokenizer.ggml.add_bos_token")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = os.path.join(out_dir, name)
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
        cfg.update(fixes)
        if name == "tokenizer_config.json":
            for k in ("bos_token_id", "eos_token_id"):
                cfg.pop(k, None)
            if add_bos is not None:
                cfg["add_bos_token"] = bool(add_bos)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2, ensure_ascii=False)


def from_gguf(gguf_path: str, out_dir: str, dtype: str = "F32", shards: int = 1,
              tensors_cache: Optional[tuple] = None, tokenizer_dir: Optional[str] = None):
    """Writes the HF directory; returns (config, float32 tensors as stored, i.e. rounded to dtype).

    tensors_cache: a (config, tensors) pair from gguf_to_hf_tensors to skip re-dequantising.
    tokenizer_dir: copy the tokenizer files from this directory instead of rebuilding them."""
    config, tensors = tensors_cache if tensors_cache is not None else gguf_to_hf_tensors(gguf_path)
    os.makedirs(out_dir, exist_ok=True)
    write_config(out_dir, dict(config, torch_dtype={"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]))
    write_weights(out_dir, tensors, dtype, shards)
    if tokenizer_dir is None:
        save_tokenizer_from_gguf(gguf_path, out_dir)
    else:
        copy_tokenizer(tokenizer_dir, out_dir)
    return config, {k: round_to_dtype(v, dtype) for k, v in tensors.items()}


def copy_tokenizer(src_dir: str, out_dir: str):
    for name in TOKENIZER_FILES:
        src = os.path.join(src_dir, name)
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(out_dir, name))


# ---------------------------------------------------------------------------------------------
# Tiny random models


def tiny_random(out_dir: str, model_type: str, seed: int, tokenizer_dir: str, *, hidden: int = 64,
                intermediate: int = 144, layers: int = 3, heads: int = 4, kv_heads: int = 2,
                sliding_window: Optional[int] = None, rope_scaling: Optional[dict] = None,
                tie_word_embeddings: bool = False, rope_theta: float = 10000.0, dtype: str = "F32"):
    """Writes a random model; returns (config, tensors). vocab = the copied tokenizer's size.

    Weights are scaled so activations stay O(1) through the layers (matrices ~ N(0, 1/fan_in),
    norms ~ 1 + N(0, 0.1^2), embeddings N(0, 1)), which gives decisive, non-tied greedy picks."""
    if model_type not in ("llama", "qwen2", "mistral"):
        raise ValueError(model_type)
    with open(os.path.join(tokenizer_dir, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    vocab = max(list(tok["model"]["vocab"].values()) + [t["id"] for t in tok.get("added_tokens", [])]) + 1
    rng = np.random.default_rng(seed)
    head_dim = hidden // heads
    q, kv = heads * head_dim, kv_heads * head_dim

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    t = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)).astype(np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = norm(hidden)
        t[p + "self_attn.q_proj.weight"] = mat(q, hidden)
        t[p + "self_attn.k_proj.weight"] = mat(kv, hidden)
        t[p + "self_attn.v_proj.weight"] = mat(kv, hidden)
        t[p + "self_attn.o_proj.weight"] = mat(hidden, q)
        if model_type == "qwen2":
            t[p + "self_attn.q_proj.bias"] = (0.5 * rng.standard_normal(q)).astype(np.float32)
            t[p + "self_attn.k_proj.bias"] = (0.5 * rng.standard_normal(kv)).astype(np.float32)
            t[p + "self_attn.v_proj.bias"] = (0.5 * rng.standard_normal(kv)).astype(np.float32)
        t[p + "post_attention_layernorm.weight"] = norm(hidden)
        t[p + "mlp.gate_proj.weight"] = mat(intermediate, hidden)
        t[p + "mlp.up_proj.weight"] = mat(intermediate, hidden)
        t[p + "mlp.down_proj.weight"] = mat(hidden, intermediate)
    t["model.norm.weight"] = norm(hidden)
    if not tie_word_embeddings:
        t["lm_head.weight"] = mat(vocab, hidden) * 4.0
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
    config = {
        "architectures": [arch[model_type]],
        "model_type": model_type,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-6,
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": 4096,
        "vocab_size": vocab,
        "tie_word_embeddings": tie_word_embeddings,
        "torch_dtype": "float32",
    }
    if model_type == "mistral":
        config["sliding_window"] = sliding_window
    elif sliding_window is not None:
        raise ValueError("sliding_window is for mistral models")
    if model_type == "qwen2":
        config["use_sliding_window"] = False
    os.makedirs(out_dir, exist_ok=True)
    write_config(out_dir, config)
    write_weights(out_dir, t, dtype)
    copy_tokenizer(tokenizer_dir, out_dir)
    return config, {k: round_to_dtype(v, dtype) for k, v in t.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("from-gguf")
    g.add_argument("gguf")
    g.add_argument("out_dir")
    g.add_argument("--dtype", choices=DTYPES, default="F32")
    g.add_argument("--shards", type=int, default=1)
    r = sub.add_parser("tiny")
    r.add_argument("out_dir")
    r.add_argument("--model-type", choices=("llama", "qwen2", "mistral"), required=True)
    r.add_argument("--tokenizer-dir", required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--sliding-window", type=int)
    a = ap.parse_args()
    if a.cmd == "from-gguf":
        from_gguf(a.gguf, a.out_dir, a.dtype, a.shards)
    else:
        tiny_random(a.out_dir, a.model_type, a.seed, a.tokenizer_dir, sliding_window=a.sliding_window)


if __name__ == "__main__":
    main()
