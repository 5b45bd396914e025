#!/usr/bin/env python3
"""Serving load, semshare-server beside llama.cpp's llama-server, in one run (docs/benchmarks.md).

N concurrent streaming clients (closed loop) send prompts round robin from a fixed set (by
default 40 passages of ~300 tokens built from data/paraphrase), each asking for exactly
--max-tokens new tokens (end of generation ignored, greedy). Per server, cache setting and
concurrency it reports output tokens/s over the window, TTFT p50/p99 (client side: request sent
to the first streamed text) and errors.

  semshare: GenerateStream over gRPC (the installed semshare_client); cache "on" is the default
            policy (exact-prefix and semantic reuse), "off" is cache_policy=bypass.
  llama.cpp: llama-server's native /completion endpoint with stream=true; cache "on" is
            cache_prompt=true (its prompt cache: the slot's longest common prefix), "off" false.

Both servers get the same GGUF and --threads; llama-server runs with --parallel P and a context
of P x (prompt + max_tokens) rounded up. Servers are started and stopped by this script, one at
a time, on loopback ports. Results print as a table and, with --json FILE, as JSON.

usage: bench/serve_vs_llama.py --semshare build/semshare-server \\
         --llama "$(bench/build_llama_cpp.sh llama-server)" --concurrency 1,4,16,64 --json out.json
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import pathlib
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
import testpaths  # noqa: E402  (the shipped corpus and the default model)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prompts_from_corpus(n, sentences_each):
    pairs = testpaths.corpus_pairs()
    out = []
    for i in range(n):
        start = (i * sentences_each) % max(1, len(pairs) - sentences_each)
        out.append(" ".join(s for s, _ in pairs[start:start + sentences_each]))
    return out


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


class Server:
    def __init__(self, argv, ready_url=None, ready_log=None, log_path=None):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{argv[0]} exited {self.proc.returncode}: see {log_path}")
            if ready_log and re.search(ready_log, pathlib.Path(log_path).read_text()):
                break
            if ready_url:
                try:
                    host, port, path = ready_url
                    c = http.client.HTTPConnection(host, port, timeout=2)
                    c.request("GET", path)
                    if c.getresponse().status == 200:
                        break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{argv[0]} not ready in 300 s: see {log_path}")
            time.sleep(0.2)

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


_tls = threading.local()  # one gRPC channel per client thread


def semshare_request(target, prompt, max_tokens, cache):
    from semshare_client import Client
    if getattr(_tls, "target", None) != target:
        _tls.client, _tls.target = Client(target), target
    c = _tls.client
    t0 = time.monotonic()
    ttft, tokens = None, 0
    for m in c.stream(prompt, max_tokens=max_tokens, ignore_eos=True, timeout=600,
                      cache_policy="auto" if cache else "bypass"):
        if isinstance(m, str):
            if ttft is None:
                ttft = time.monotonic() - t0
        else:
            tokens = m.usage.completion_tokens
    return ttft, tokens


def llama_request(port, prompt, max_tokens, cache):
    body = json.dumps({"prompt": prompt, "n_predict": max_tokens, "stream": True,
                       "cache_prompt": cache, "ignore_eos": True, "temperature": 0.0})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.monotonic()
    c.request("POST", "/completion", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"llama-server answered {r.status}: {r.read()[:200]!r}")
    ttft, tokens = None, 0
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        chunk = json.loads(line[6:])
        if chunk.get("content") and ttft is None:
            ttft = time.monotonic() - t0
        if chunk.get("stop"):
            tokens = chunk.get("tokens_predicted", 0)
            break
    c.close()
    return ttft, tokens


def run_load(send, prompts, concurrency, duration_s, warmup_s):
    """Closed loop: `concurrency` threads send requests until duration_s; returns figures."""
    lock = threading.Lock()
    samples, errors = [], []
    next_prompt = [0]
    t_start = time.monotonic()
    t_end = t_start + duration_s

    def worker():
        while time.monotonic() < t_end:
            with lock:
                p = prompts[next_prompt[0] % len(prompts)]
                next_prompt[0] += 1
            t0 = time.monotonic()
            try:
                ttft, tokens = send(p)
            except Exception as e:  # noqa: BLE001 (counted and reported)
                with lock:
                    errors.append(str(e)[:200])
                continue
            t1 = time.monotonic()
            with lock:
                samples.append((t0 - t_start, t1 - t_start, ttft, tokens))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Output tokens/s over the requests that ended after the warm-up, per second of the window
    # they ended in; TTFT over requests that started after it.
    done = [s for s in samples if s[1] >= warmup_s]
    window = max(1e-9, max((s[1] for s in samples), default=warmup_s) - warmup_s)
    ttfts = [s[2] for s in samples if s[0] >= warmup_s and s[2] is not None]
    return {"concurrency": concurrency, "requests": len(samples), "errors": len(errors),
            "error_examples": errors[:3],
            "output_tokens_per_s": sum(s[3] for s in done) / window,
            "ttft_p50_s": pct(ttfts, 0.5), "ttft_p99_s": pct(ttfts, 0.99),
            "ttft_samples": len(ttfts)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--semshare", default=str(ROOT / "build" / "semshare-server"))
    ap.add_argument("--llama", help="llama-server binary (bench/build_llama_cpp.sh llama-server)")
    ap.add_argument("--model", default=str(testpaths.default_model_path()))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--cache", default="on,off", help="on, off or both (on,off)")
    ap.add_argument("--off-concurrency", default="16", help="concurrency levels run with cache off")
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--sentences", type=int, default=14, help="corpus sentences per prompt (~300 tokens)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--duration-s", type=float, default=40)
    ap.add_argument("--warmup-s", type=float, default=5)
    ap.add_argument("--parallel", type=int, default=16, help="llama-server --parallel")
    ap.add_argument("--prewarm", action="store_true",
                    help="with the cache on, send every prompt once (4 at a time) before the first "
                         "level, so every level measures exact repeats (prefill is not the "
                         "bottleneck)")
    ap.add_argument("--semshare-args", default="", help="extra semshare-server flags")
    ap.add_argument("--json")
    ap.add_argument("--logs", default="/tmp")
    a = ap.parse_args()

    prompts = prompts_from_corpus(a.prompts, a.sentences)
    levels = [int(x) for x in a.concurrency.split(",")]
    off_levels = [int(x) for x in a.off_concurrency.split(",") if x]
    caches = [c == "on" for c in a.cache.split(",")]
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(a.threads))
    rows = []

    port, lport = free_port(), free_port()
    target = f"127.0.0.1:{port}"
    ctx = (a.parallel * (400 + a.max_tokens) + 1023) // 1024 * 1024
    systems = [("semshare", lambda: Server(
        [a.semshare, "--model", a.model, "--listen", target, "--metrics-listen", "",
         "--http-listen", "", "--threads", str(a.threads), "--max-queue", "1024"]
        + a.semshare_args.split(),
        ready_log=r"ready in", log_path=f"{a.logs}/serve_vs_llama_semshare.log"),
        lambda p, cache: semshare_request(target, p, a.max_tokens, cache))]
    if a.llama:
        systems.append(("llama.cpp", lambda: Server(
            [a.llama, "-m", a.model, "--host", "127.0.0.1", "--port", str(lport), "-t",
             str(a.threads), "--parallel", str(a.parallel), "-c", str(ctx), "--no-webui"],
            ready_url=("127.0.0.1", lport, "/health"),
            log_path=f"{a.logs}/serve_vs_llama_llama.log"),
            lambda p, cache: llama_request(lport, p, a.max_tokens, cache)))
    # Both servers up at once (idle ones cost nothing), fresh for each cache setting; at each
    # concurrency level one runs right after the other, so a noisy machine weighs on both alike.
    for cache in caches:
        servers = [start() for _, start, _ in systems]
        try:
            if cache and a.prewarm:
                for name, _, send in systems:
                    pool = concurrent.futures.ThreadPoolExecutor(4)
                    list(pool.map(lambda p: send(p, True), prompts))
                    pool.shutdown()
                    print(f"{name:9} prewarmed with {len(prompts)} prompts", flush=True)
            for c in levels if cache else [lv for lv in levels if lv in off_levels]:
                for name, _, send in systems:
                    r = run_load(lambda p: send(p, cache), prompts, c, a.duration_s, a.warmup_s)
                    r.update(server=name, cache="on" if cache else "off")
                    rows.append(r)
                    print(f"{name:9} cache {r['cache']:3} x{c:<3} "
                          f"{r['output_tokens_per_s']:7.1f} tok/s  TTFT p50 "
                          f"{r['ttft_p50_s']:6.2f} s p99 {r['ttft_p99_s']:6.2f} s  "
                          f"{r['requests']} requests, {r['errors']} errors", flush=True)
        finally:
            for s in servers:
                s.stop()
    if a.json:
        meta = {"command": " ".join(sys.argv), "model": a.model, "threads": a.threads,
                "prompts": a.prompts, "max_tokens": a.max_tokens, "duration_s": a.duration_s,
                "warmup_s": a.warmup_s, "prewarm": a.prewarm, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        pathlib.Path(a.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
