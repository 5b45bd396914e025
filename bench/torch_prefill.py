#!/usr/bin/env python3
"""PyTorch peer for `semshare bench --suite cuda`: Llama prefill in BF16 with SDPA attention on
random weights of the same shapes (Llama-3.1-8B, Llama-3.2-1B), on the GPU.

Implementation (--impl): `hf` is Hugging Face transformers' LlamaForCausalLM with
attn_implementation="sdpa"; `torch` is a plain PyTorch Llama (fused QKV and gate|up linears,
half-split RoPE, torch.nn.functional.scaled_dot_product_attention, causal, GQA) for machines
without transformers or where its API differs; `auto` (default) takes `hf` when transformers
imports and builds the model, else `torch`, and says which it used. RoPE is the plain one with
theta 500000 (llama3 frequency scaling changes the frequencies, not the cost).

Reports the median prefill time (one forward over the prompt, KV cache built, logits of the
last token only) after a warm-up, timed with CUDA events; tokens/s; model FLOP utilisation (the
same FLOP count as tools/bench_cuda.cc) against a measured 8192^3 bf16 matmul; peak memory.
Run by scripts/gpu-check on the GPU machine; nothing here needs a network.
"""
import argparse
import json
import math
import statistics
import sys

try:
    import torch
    import torch.nn.functional as F
except ImportError as e:  # fail soft: gpu-check records the exit code and goes on
    print(f"torch_prefill: PyTorch is not importable ({e}); nothing measured")
    sys.exit(3)

VOCAB = 128256
SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128,
               tie_word_embeddings=False),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, head_dim=64,
               tie_word_embeddings=True),
}


def prefill_flops(s, n):
    d, qd, kvd = s["hidden_size"], s["num_attention_heads"] * s["head_dim"], \
        s["num_key_value_heads"] * s["head_dim"]
    linear = 2.0 * n * (d * qd + 2 * d * kvd + qd * d + 3 * d * s["intermediate_size"])
    attn = 4.0 * qd * (n * (n + 1) / 2)
    return s["num_hidden_layers"] * (linear + attn) + 2.0 * d * VOCAB


def timed(fn, repeats):
    """Median seconds of fn over `repeats` runs after one warm-up, by CUDA events."""
    ts = []
    for r in range(repeats + 1):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        if r > 0:
            ts.append(start.elapsed_time(stop) / 1e3)
    return statistics.median(ts)


class PlainLlama(torch.nn.Module):
    """A Llama forward in plain PyTorch (bf16 weights, random init ~ 1/sqrt(fan_in))."""

    def __init__(self, s, dev):
        super().__init__()
        d, hd = s["hidden_size"], s["head_dim"]
        self.h, self.kvh, self.hd = s["num_attention_heads"], s["num_key_value_heads"], hd
        qd, kvd, ff = self.h * hd, self.kvh * hd, s["intermediate_size"]
        self.eps = 1e-5

        def w(rows, cols):
            return torch.nn.Parameter(
                torch.randn(rows, cols, device=dev, dtype=torch.bfloat16) / math.sqrt(cols),
                requires_grad=False)

        def gain(n):
            return torch.nn.Parameter(torch.ones(n, device=dev, dtype=torch.bfloat16),
                                      requires_grad=False)

        self.embed = w(VOCAB, d)
        self.lm_head = self.embed if s["tie_word_embeddings"] else w(VOCAB, d)
        self.layers = []
        for _ in range(s["num_hidden_layers"]):
            self.layers.append(dict(attn_norm=gain(d), wqkv=w(qd + 2 * kvd, d), wo=w(d, qd),
                                    ffn_norm=gain(d), wgu=w(2 * ff, d), wdown=w(d, ff)))
        self.out_norm = gain(d)
        inv = 1.0 / (500000.0 ** (torch.arange(0, hd, 2, device=dev, dtype=torch.float32) / hd))
        self.register_buffer("inv_freq", inv, persistent=False)

    def norm(self, x, g):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * g

    def rope(self, x, cos, sin):  # x [1, heads, n, hd], half-split pairs
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def forward(self, ids):
        n = ids.shape[1]
        pos = torch.arange(n, device=ids.device, dtype=torch.float32)
        ang = torch.outer(pos, self.inv_freq)
        cos, sin = ang.cos().to(torch.bfloat16), ang.sin().to(torch.bfloat16)
        x = F.embedding(ids, self.embed)  # [1, n, d]
        qd, kvd = self.h * self.hd, self.kvh * self.hd
        cache = []
        for lw in self.layers:
            qkv = F.linear(self.norm(x, lw["attn_norm"]), lw["wqkv"])
            q, k, v = qkv.split([qd, kvd, kvd], dim=-1)
            q = self.rope(q.view(1, n, self.h, self.hd).transpose(1, 2), cos, sin)
            k = self.rope(k.view(1, n, self.kvh, self.hd).transpose(1, 2), cos, sin)
            v = v.view(1, n, self.kvh, self.hd).transpose(1, 2)
            cache.append((k, v))  # the KV cache a decode would continue from
            rep = self.h // self.kvh
            try:
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            except TypeError:  # torch < 2.5: no enable_gqa
                a = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1),
                                                   v.repeat_interleave(rep, 1), is_causal=True)
            x = x + F.linear(a.transpose(1, 2).reshape(1, n, qd), lw["wo"])
            gu = F.linear(self.norm(x, lw["ffn_norm"]), lw["wgu"])
            g, u = gu.chunk(2, dim=-1)
            x = x + F.linear(F.silu(g) * u, lw["wdown"])
        return F.linear(self.norm(x[:, -1:], self.out_norm), self.lm_head), cache


def build_hf(s, dev):
    from transformers import LlamaConfig, LlamaForCausalLM  # may be missing: caller falls back
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=s["hidden_size"],
        intermediate_size=s["intermediate_size"], num_hidden_layers=s["num_hidden_layers"],
        num_attention_heads=s["num_attention_heads"],
        num_key_value_heads=s["num_key_value_heads"], max_position_embeddings=131072,
        tie_word_embeddings=s["tie_word_embeddings"])
    cfg.rope_theta = 500000.0
    cfg._attn_implementation = "sdpa"
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(dev):
            model = LlamaForCausalLM(cfg)  # random init on the GPU, bf16
    finally:
        torch.set_default_dtype(prev)
    model.eval()

    def run(ids):
        try:
            return model(input_ids=ids, use_cache=True, logits_to_keep=1)
        except TypeError:  # transformers < 4.45 names it num_logits_to_keep
            return model(input_ids=ids, use_cache=True, num_logits_to_keep=1)

    return model, run


def build(impl, s, dev):
    """(model, run(ids), impl used)."""
    if impl in ("auto", "hf"):
        try:
            model, run = build_hf(s, dev)
            with torch.inference_mode():
                run(torch.randint(0, VOCAB, (1, 16), device=dev))  # the API works end to end
            return model, run, "hf"
        except Exception as e:  # noqa: BLE001 - any failure of the optional peer
            if impl == "hf":
                raise
            print(f"torch_prefill: transformers unusable ({type(e).__name__}: {e}); "
                  "using the plain PyTorch Llama")
            torch.cuda.empty_cache()
    model = PlainLlama(s, dev)
    return model, model, "torch"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="1b,8b")
    ap.add_argument("--lengths", default="1024,4096,8192")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--impl", choices=["auto", "hf", "torch"], default="auto")
    ap.add_argument("--json")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("torch_prefill: no CUDA device visible to PyTorch; nothing measured")
        sys.exit(3)
    dev = torch.device("cuda")
    x = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    y = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    mm = 2 * 8192 ** 3 / timed(lambda: x @ y, 10) / 1e12
    del x, y
    print(f"device {torch.cuda.get_device_name()}: torch {torch.__version__} bf16 matmul "
          f"8192^3 {mm:.1f} TFLOP/s")
    results = {"torch": torch.__version__, "matmul_tflops": mm, "timing": "CUDA events",
               "shapes": []}
    rows = []
    for name in a.shapes.split(","):
        s = SHAPES[name]
        torch.manual_seed(0)
        model, run, used = build(a.impl, s, dev)
        attn = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")
        if attn != "sdpa":
            print(f"torch_prefill: note: transformers attention is {attn!r}, not 'sdpa'")
        entry = {"shape": name, "impl": used, "attention": attn, "runs": []}
        for n in [int(v) for v in a.lengths.split(",")]:
            ids = torch.randint(0, VOCAB, (1, n), device=dev)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

            def once():
                with torch.inference_mode():
                    run(ids)

            t = timed(once, a.repeats)
            tf = prefill_flops(s, n) / t / 1e12
            peak = torch.cuda.max_memory_allocated() / 2 ** 30
            rows.append(f"| {name} ({used}) | {n} | {t * 1e3:.2f} | {n / t:.0f} | {tf:.1f} | "
                        f"{100 * tf / mm:.1f}% | {peak:.2f} |")
            print(rows[-1], flush=True)
            entry["runs"].append({"tokens": n, "median_s": t, "tokens_per_s": n / t,
                                  "tflops": tf, "mfu": tf / mm, "peak_bytes": peak * 2 ** 30})
        results["shapes"].append(entry)
        del model, run
        torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    # The table last (scripts/gpu-check shows the end of this log).
    print("\ntorch prefill (peer), BF16, SDPA")
    print("| shape (impl) | tokens | median ms | tokens/s | TFLOP/s | MFU | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
