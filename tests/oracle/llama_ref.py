"""An independent float64 numpy forward pass for Llama-family decoders (the test oracle).

Written from the math of Hugging Face transformers' LlamaForCausalLM, Qwen2ForCausalLM and
MistralForCausalLM (modeling_llama.py / modeling_qwen2.py / modeling_mistral.py, v4.46), not from
semshare's C++: RMSNorm, half-split RoPE (rotate_half), grouped-query attention with a causal
(optionally sliding-window) softmax, SwiGLU MLP, final norm and lm_head. Everything is computed in
float64 so that the reference's own rounding error is negligible next to a float32 implementation.

Weights come either from a GGUF file (dequantised with gguf-py, the same values a correct
dequantiser produces) or from a Hugging Face checkpoint directory (config.json + safetensors).
GGUF files of architecture `llama` store Q/K with llama.cpp's converter permutation (interleaved
RoPE pairs); `load_gguf` undoes it so that HF's half-split RoPE applies unchanged.

Usage as a script (sanity check: cache consistency and a greedy chat completion):
  python llama_ref.py [MODEL.gguf]
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from typing import Optional

import numpy as np


@dataclasses.dataclass
class Config:
    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: Optional[dict] = None  # HF rope_scaling dict (type "llama3" / "linear")
    sliding_window: Optional[int] = None  # attend only to the last N positions (incl. self)
    attention_bias: bool = False
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None


@dataclasses.dataclass
class Layer:
    attn_norm: np.ndarray  # [hidden]
    wq: np.ndarray  # [n_heads*head_dim, hidden] (HF layout: y = x @ w.T)
    wk: np.ndarray  # [n_kv*head_dim, hidden]
    wv: np.ndarray  # [n_kv*head_dim, hidden]
    wo: np.ndarray  # [hidden, n_heads*head_dim]
    bq: Optional[np.ndarray]
    bk: Optional[np.ndarray]
    bv: Optional[np.ndarray]
    mlp_norm: np.ndarray
    w_gate: np.ndarray  # [ffn, hidden]
    w_up: np.ndarray  # [ffn, hidden]
    w_down: np.ndarray  # [hidden, ffn]


@dataclasses.dataclass
class Weights:
    embed: np.ndarray  # [vocab, hidden]
    layers: list
    final_norm: np.ndarray
    lm_head: np.ndarray  # [vocab, hidden]; the same array as embed when tied
    # Per-frequency divisors from a GGUF `rope_freqs.weight` (llama.cpp's encoding of llama3
    # rope scaling); None when absent.
    rope_freq_factors: Optional[np.ndarray] = None


# ---------------------------------------------------------------------------------------------
# Loading


def reverse_llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undoes llama.cpp's convert_hf_to_gguf `permute` of Q/K rows.

    The converter did: w.reshape(n_head, 2, d/2, ...).swapaxes(1, 2), turning HF's per-head layout
    [first halves | second halves] into interleaved pairs. The inverse views the rows as
    (n_head, d/2, 2) and swaps back to (n_head, 2, d/2).
    """
    rows = w.shape[0]
    half = rows // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v


def load_gguf(path: str):
    """Reads a GGUF Llama-family model; returns (Config, Weights) in HF convention, float64."""
    import gguf
    from gguf import quants

    reader = gguf.GGUFReader(path)
    arch = _field(reader, "general.architecture")
    if arch not in ("llama", "qwen2", "mistral"):
        raise ValueError(f"unsupported architecture {arch!r}")

    def meta(key, default=None):
        return _field(reader, f"{arch}.{key}", default)

    hidden = int(meta("embedding_length"))
    n_head = int(meta("attention.head_count"))
    n_kv = int(meta("attention.head_count_kv", n_head))
    head_dim = int(meta("attention.key_length", hidden // n_head))

    tensors = {}
    for t in reader.tensors:
        # gguf-py gives numpy-order shapes (reverse of GGUF ne); dequantize returns float32 with
        # the logical numpy shape, e.g. [rows=out_features, cols=in_features] for matrices.
        arr = quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = np.asarray(arr, dtype=np.float64)

    tokens = _field(reader, "tokenizer.ggml.tokens")
    vocab = int(meta("vocab_size", len(tokens) if tokens is not None else tensors["token_embd.weight"].shape[0]))

    rope_scaling = None
    scaling_type = meta("rope.scaling.type")
    if scaling_type == "linear":
        rope_scaling = {"rope_type": "linear", "factor": float(meta("rope.scaling.factor"))}
    sliding = meta("attention.sliding_window")

    cfg = Config(
        arch=arch,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(meta("feed_forward_length")),
        num_layers=int(meta("block_count")),
        num_heads=n_head,
        num_kv_heads=n_kv,
        head_dim=head_dim,
        rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(meta("rope.freq_base", 10000.0)),
        rope_scaling=rope_scaling,
        sliding_window=int(sliding) if sliding else None,
        attention_bias="blk.0.attn_q.bias" in tensors,
        bos_token_id=_opt_int(_field(reader, "tokenizer.ggml.bos_token_id")),
        eos_token_id=_opt_int(_field(reader, "tokenizer.ggml.eos_token_id")),
    )
    rot = meta("rope.dimension_count")
    if rot is not None and int(rot) != head_dim:
        raise ValueError(f"partial rotary ({rot} of {head_dim}) is not a Llama-family layout")

    permute = arch == "llama"  # llama.cpp permutes Q/K only for the llama converter
    layers = []
    for i in range(cfg.num_layers):
        p = f"blk.{i}."
        wq, wk = tensors[p + "attn_q.weight"], tensors[p + "attn_k.weight"]
        bq, bk = tensors.get(p + "attn_q.bias"), tensors.get(p + "attn_k.bias")
        if permute:
            wq, wk = reverse_llama_permute(wq, n_head), reverse_llama_permute(wk, n_kv)
            bq = reverse_llama_permute(bq, n_head) if bq is not None else None
            bk = reverse_llama_permute(bk, n_kv) if bk is not None else None
        layers.append(
            Layer(
                attn_norm=tensors[p + "attn_norm.weight"],
                wq=wq,
                wk=wk,
                wv=tensors[p + "attn_v.weight"],
                wo=tensors[p + "attn_output.weight"],
                bq=bq,
                bk=bk,
                bv=tensors.get(p + "attn_v.bias"),
                mlp_norm=tensors[p + "ffn_norm.weight"],
                w_gate=tensors[p + "ffn_gate.weight"],
                w_up=tensors[p + "ffn_up.weight"],
                w_down=tensors[p + "ffn_down.weight"],
            )
        )
    embed = tensors["token_embd.weight"]
    lm_head = tensors.get("output.weight", embed)  # tied when the file has no output.weight
    w = Weights(
        embed=embed,
        layers=layers,
        final_norm=tensors["output_norm.weight"],
        lm_head=lm_head,
        rope_freq_factors=tensors.get("rope_freqs.weight"),
    )
    _check_shapes(cfg, w)
    return cfg, w


def _opt_int(v):
    return None if v is None else int(v)


def load_hf_dir(path: str):
    """Reads a HF checkpoint directory (config.json + safetensors, possibly sharded)."""
    from safetensors.numpy import load_file

    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        hc = json.load(f)
    model_type = hc.get("model_type", "llama")
    if model_type not in ("llama", "qwen2", "mistral"):
        raise ValueError(f"unsupported model_type {model_type!r}")
    n_head = hc["num_attention_heads"]
    hidden = hc["hidden_size"]
    head_dim = hc.get("head_dim") or hidden // n_head

    sliding = hc.get("sliding_window")
    if model_type == "qwen2":
        # Qwen2 applies its window only with use_sliding_window (and only from
        # max_window_layers on); we support the all-layers case and refuse the mixed one.
        if not hc.get("use_sliding_window", False):
            sliding = None
        elif hc.get("max_window_layers", 0) != 0:
            raise ValueError("per-layer sliding window (max_window_layers) not supported")
    elif model_type == "llama":
        sliding = None

    if model_type == "qwen2":
        attention_bias = True
    else:
        attention_bias = bool(hc.get("attention_bias", False))

    eos = hc.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    cfg = Config(
        arch=model_type,
        vocab_size=hc["vocab_size"],
        hidden_size=hidden,
        intermediate_size=hc["intermediate_size"],
        num_layers=hc["num_hidden_layers"],
        num_heads=n_head,
        num_kv_heads=hc.get("num_key_value_heads") or n_head,
        head_dim=head_dim,
        rms_norm_eps=hc.get("rms_norm_eps", 1e-6),
        rope_theta=hc.get("rope_theta", 10000.0),
        rope_scaling=hc.get("rope_scaling"),
        sliding_window=int(sliding) if sliding else None,
        attention_bias=attention_bias,
        bos_token_id=hc.get("bos_token_id"),
        eos_token_id=eos,
    )

    index = os.path.join(path, "model.safetensors.index.json")
    t = {}
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        for s in shards:
            t.update(load_file(os.path.join(path, s)))
    else:
        t.update(load_file(os.path.join(path, "model.safetensors")))

    def get(name, required=True):
        if name not in t:
            if required:
                raise KeyError(f"missing tensor {name}")
            return None
        return np.asarray(t[name], dtype=np.float64)

    layers = []
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        layers.append(
            Layer(
                attn_norm=get(p + "input_layernorm.weight"),
                wq=get(a + "q_proj.weight"),
                wk=get(a + "k_proj.weight"),
                wv=get(a + "v_proj.weight"),
                wo=get(a + "o_proj.weight"),
                bq=get(a + "q_proj.bias", cfg.attention_bias),
                bk=get(a + "k_proj.bias", cfg.attention_bias),
                bv=get(a + "v_proj.bias", cfg.attention_bias),
                mlp_norm=get(p + "post_attention_layernorm.weight"),
                w_gate=get(p + "mlp.gate_proj.weight"),
                w_up=get(p + "mlp.up_proj.weight"),
                w_down=get(p + "mlp.down_proj.weight"),
            )
        )
    embed = get("model.embed_tokens.weight")
    tie = hc.get("tie_word_embeddings", False)
    lm_head = embed if tie or "lm_head.weight" not in t else get("lm_head.weight")
    w = Weights(embed=embed, layers=layers, final_norm=get("model.norm.weight"), lm_head=lm_head)
    _check_shapes(cfg, w)
    return cfg, w


def _check_shapes(cfg: Config, w: Weights):
    q, kv, h, ff = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.hidden_size, cfg.intermediate_size
    assert w.embed.shape == (cfg.vocab_size, h), w.embed.shape
    assert w.lm_head.shape == (cfg.vocab_size, h), w.lm_head.shape
    for L in w.layers:
        assert L.wq.shape == (q, h) and L.wk.shape == (kv, h) and L.wv.shape == (kv, h), (L.wq.shape, L.wk.shape)
        assert L.wo.shape == (h, q), L.wo.shape
        assert L.w_gate.shape == (ff, h) and L.w_up.shape == (ff, h) and L.w_down.shape == (h, ff)


# ---------------------------------------------------------------------------------------------
# RoPE


def compute_inv_freq(cfg: Config, freq_factors: Optional[np.ndarray] = None) -> np.ndarray:
    """HF _compute_default_rope_parameters, plus llama3 / linear scaling."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float64) / d))
    rs = cfg.rope_scaling or {}
    rtype = rs.get("rope_type", rs.get("type", "default"))
    if rtype == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, rs)
    elif rtype == "linear":
        inv_freq = inv_freq / float(rs["factor"])
    elif rtype not in ("default", None):
        raise ValueError(f"unsupported rope_scaling type {rtype!r}")
    if freq_factors is not None:
        # llama.cpp's rope_freqs.weight: theta_i is divided by factor_i.
        inv_freq = inv_freq / np.asarray(freq_factors, dtype=np.float64)
    return inv_freq


def _llama3_inv_freq(inv_freq: np.ndarray, rs: dict) -> np.ndarray:
    """Reimplements transformers' _compute_llama3_parameters (attention factor is 1)."""
    factor = float(rs["factor"])
    low_freq_factor = float(rs["low_freq_factor"])
    high_freq_factor = float(rs["high_freq_factor"])
    old_context_len = float(rs["original_max_position_embeddings"])
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, inv_freq_llama)


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


# ---------------------------------------------------------------------------------------------
# Forward


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    var = np.mean(x * x, axis=-1, keepdims=True)
    return weight * (x / np.sqrt(var + eps))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


class LlamaRef:
    """Float64 decoder with a KV cache. prefill() appends a prompt, decode() one token."""

    def __init__(self, cfg: Config, w: Weights):
        self.cfg, self.w = cfg, w
        self.inv_freq = compute_inv_freq(cfg, w.rope_freq_factors)
        self.reset()

    @classmethod
    def from_path(cls, path: str) -> "LlamaRef":
        if os.path.isdir(path):
            return cls(*load_hf_dir(path))
        return cls(*load_gguf(path))

    def reset(self):
        c = self.cfg
        self.k_cache = [np.zeros((c.num_kv_heads, 0, c.head_dim)) for _ in range(c.num_layers)]
        self.v_cache = [np.zeros((c.num_kv_heads, 0, c.head_dim)) for _ in range(c.num_layers)]
        self.n_past = 0

    def _rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        # x: [heads, T, d]; HF: emb = cat(freqs, freqs); x*cos + rotate_half(x)*sin.
        freqs = np.outer(pos.astype(np.float64), self.inv_freq)  # [T, d/2]
        emb = np.concatenate([freqs, freqs], axis=-1)
        return x * np.cos(emb) + rotate_half(x) * np.sin(emb)

    def _forward(self, ids) -> np.ndarray:
        """Runs new tokens `ids` after the cached ones; returns the final hidden states [T, h]."""
        c, w = self.cfg, self.w
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError("ids must be a non-empty 1-D sequence")
        if ids.min() < 0 or ids.max() >= c.vocab_size:
            raise ValueError("token id out of range")
        T, past = ids.size, self.n_past
        pos = np.arange(past, past + T)
        total = past + T
        # Causal (and sliding-window) mask over [T, total]: query i (absolute past+i) sees key j
        # iff j <= past+i and, with a window W, past+i - j < W (HF Mistral's sliding mask).
        qpos = pos[:, None]
        kpos = np.arange(total)[None, :]
        allowed = kpos <= qpos
        if c.sliding_window:
            allowed &= (qpos - kpos) < c.sliding_window
        neg = np.where(allowed, 0.0, -np.inf)
        group = c.num_heads // c.num_kv_heads
        scale = 1.0 / math.sqrt(c.head_dim)

        x = w.embed[ids]  # [T, h]
        for li, L in enumerate(w.layers):
            hn = rms_norm(x, L.attn_norm, c.rms_norm_eps)
            q = hn @ L.wq.T
            k = hn @ L.wk.T
            v = hn @ L.wv.T
            if L.bq is not None:
                q = q + L.bq
            if L.bk is not None:
                k = k + L.bk
            if L.bv is not None:
                v = v + L.bv
            q = q.reshape(T, c.num_heads, c.head_dim).transpose(1, 0, 2)
            k = k.reshape(T, c.num_kv_heads, c.head_dim).transpose(1, 0, 2)
            v = v.reshape(T, c.num_kv_heads, c.head_dim).transpose(1, 0, 2)
            q, k = self._rope(q, pos), self._rope(k, pos)
            K = np.concatenate([self.k_cache[li], k], axis=1)
            V = np.concatenate([self.v_cache[li], v], axis=1)
            self.k_cache[li], self.v_cache[li] = K, V
            # GQA: query head hq uses kv head hq // group (HF repeat_kv).
            Kr = np.repeat(K, group, axis=0)  # [nh, total, d]
            Vr = np.repeat(V, group, axis=0)
            s = np.matmul(q, Kr.transpose(0, 2, 1)) * scale + neg  # [nh, T, total]
            s = s - s.max(axis=-1, keepdims=True)
            p = np.exp(s)
            p /= p.sum(axis=-1, keepdims=True)
            o = np.matmul(p, Vr)  # [nh, T, d]
            o = o.transpose(1, 0, 2).reshape(T, c.num_heads * c.head_dim)
            x = x + o @ L.wo.T
            hn = rms_norm(x, L.mlp_norm, c.rms_norm_eps)
            x = x + (silu(hn @ L.w_gate.T) * (hn @ L.w_up.T)) @ L.w_down.T
        self.n_past = total
        return x

    def _logits(self, x_last: np.ndarray) -> np.ndarray:
        h = rms_norm(x_last, self.w.final_norm, self.cfg.rms_norm_eps)
        return self.w.lm_head @ h

    def prefill(self, ids) -> np.ndarray:
        """Appends `ids` to the cache; returns float64 logits [vocab] of the last position."""
        x = self._forward(ids)
        return self._logits(x[-1])

    def decode(self, token_id: int) -> np.ndarray:
        return self.prefill([int(token_id)])

    def greedy(self, ids, n: int):
        """Fresh prefill of `ids`, then n argmax tokens (no EOS stop).

        Returns (last-prompt logits, generated ids, top-2 margin of the logits each id was
        chosen from)."""
        self.reset()
        logits = self.prefill(ids)
        first = logits
        out, margins = [], []
        for i in range(n):
            top2 = np.partition(logits, -2)[-2:]
            margins.append(float(top2[1] - top2[0]))
            t = int(np.argmax(logits))
            out.append(t)
            if i + 1 < n:
                logits = self.decode(t)
        return first, out, margins


# ---------------------------------------------------------------------------------------------
# HF tokenizer built from the GGUF (no torch needed for the tokenizer path)


def hf_tokenizer_from_gguf(path: str):
    import transformers.modeling_gguf_pytorch_utils as m

    m.is_torch_available = lambda: True
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))


def _self_check(model_path: str):
    import time

    t0 = time.time()
    ref = LlamaRef.from_path(model_path)
    print(f"loaded {model_path} in {time.time() - t0:.1f}s: {ref.cfg}")
    tok = hf_tokenizer_from_gguf(model_path)

    # Cache consistency: prefill(P) + decode(t) must equal prefill(P + [t]) at the last position.
    prompt = tok.encode("The capital of France is", add_special_tokens=False)
    ref.reset()
    ref.prefill(prompt[:-1])
    a = ref.decode(prompt[-1])
    ref.reset()
    b = ref.prefill(prompt)
    diff = float(np.max(np.abs(a - b)))
    print(f"cache consistency: max|decode - full prefill| = {diff:.3e}")
    assert diff < 1e-9, diff

    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    chat = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok.encode(chat, add_special_tokens=False)
    t0 = time.time()
    _, out, _ = ref.greedy(ids, 32)
    print(f"greedy 32 tokens in {time.time() - t0:.1f}s")
    print("prompt:", repr(chat))
    print("greedy:", repr(tok.decode(out)))


if __name__ == "__main__":
    default = os.environ.get("SEMSHARE_MODEL", "/root/.cache/semshare/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    _self_check(sys.argv[1] if len(sys.argv) > 1 else default)
