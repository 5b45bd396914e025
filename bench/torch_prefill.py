#!/usr/bin/env python3
"""PyTorch peer for `semshare bench --suite cuda`: Hugging Face transformers Llama prefill with
SDPA attention in BF16 on random weights of the same shapes (Llama-3.1-8B, Llama-3.2-1B), on
the GPU. RoPE is the config's default (no llama3 frequency scaling: the scaling changes the
frequencies, not the cost, and its config keys differ across transformers versions). Reports the median prefill time (one forward over the prompt, KV cache built, logits
of the last token only) after a warm-up, tokens/s, model FLOP utilisation against a measured
8192^3 bf16 matmul, and peak memory. Run by scripts/gpu-check on the GPU machine (torch and
transformers are installed there); nothing here needs a network.
"""
import argparse
import json
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

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
    return s["num_hidden_layers"] * (linear + attn) + 2.0 * d * 128256


def timed(fn, repeats):
    ts = []
    for r in range(repeats + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        if r > 0:
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="1b,8b")
    ap.add_argument("--lengths", default="1024,4096,8192")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args()
    dev = torch.device("cuda")
    x = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    y = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    mm = 2 * 8192 ** 3 / timed(lambda: x @ y, 10) / 1e12
    del x, y
    print(f"device {torch.cuda.get_device_name()}: torch bf16 matmul 8192^3 {mm:.1f} TFLOP/s")
    results = {"torch": torch.__version__, "matmul_tflops": mm, "shapes": []}
    print("| shape | tokens | median ms | tokens/s | TFLOP/s | MFU | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for name in a.shapes.split(","):
        s = SHAPES[name]
        cfg = LlamaConfig(
            vocab_size=128256, hidden_size=s["hidden_size"],
            intermediate_size=s["intermediate_size"], num_hidden_layers=s["num_hidden_layers"],
            num_attention_heads=s["num_attention_heads"],
            num_key_value_heads=s["num_key_value_heads"], head_dim=s["head_dim"],
            max_position_embeddings=131072, rope_theta=500000.0,
            tie_word_embeddings=s["tie_word_embeddings"], attn_implementation="sdpa")
        torch.manual_seed(0)
        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        with torch.device(dev):
            model = LlamaForCausalLM(cfg)  # random init on the GPU, bf16
        torch.set_default_dtype(prev)
        model.eval()
        entry = {"shape": name, "runs": []}
        for n in [int(v) for v in a.lengths.split(",")]:
            ids = torch.randint(0, 128256, (1, n), device=dev)
            torch.cuda.reset_peak_memory_stats()

            def run():
                with torch.inference_mode():
                    model(input_ids=ids, use_cache=True, logits_to_keep=1)

            t = timed(run, a.repeats)
            tf = prefill_flops(s, n) / t / 1e12
            peak = torch.cuda.max_memory_allocated() / 2 ** 30
            print(f"| {name} | {n} | {t * 1e3:.2f} | {n / t:.0f} | {tf:.1f} | {100 * tf / mm:.1f}% "
                  f"| {peak:.2f} |")
            entry["runs"].append({"tokens": n, "median_s": t, "tokens_per_s": n / t,
                                  "tflops": tf, "mfu": tf / mm, "peak_bytes": peak * 2 ** 30})
        results["shapes"].append(entry)
        del model
        torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
