#!/usr/bin/env python3
"""semshare-server end to end on the GPU (scripts/gpu-check runs it on the device machine).

Starts the real server with --backend cuda (and, as the reference, --backend cpu) on a real
GGUF model (the device run uses bench/slim_gguf.py's 2-block SmolLM2: real tokenizer and
shapes, fewer layers, small enough to carry) and drives it with the real C++ client:

  1. a miss (250-token prompt, greedy, 16 tokens): published to the store;
  2. a paraphrase of it: must be a hit that reuses tokens (the device selective prefill with
     the reference KV uploaded from the store's host record);
  3. the first prompt again: an exact hit (the store's exact-prefix index: every prompt row but
     the last copied, the last one computed for its logits);
  4. a streamed request;
  5. 8 concurrent requests through 2 workers (two device sessions sharing the weights);
  6. /metrics: request counters, and for cuda the GPU memory gauges above zero;
  7. SIGTERM: clean drain, exit 0.

Then the CUDA server's answers beside the CPU server's: the same cache decisions and token
counts are required; identical greedy text is reported (bf16 may flip a near tie, so a
differing text is a note, not a failure). Only the Python standard library: the GPU machine
has none of our packages. Writes OUT/serve_check.json; exit 1 on any failure.

Without a CUDA device the check skips (exit 0, "serve_check: SKIP"), unless
SEMSHARE_REQUIRE_GPU=1 (scripts/gpu-check sets it): then it runs regardless, and the CUDA server
that cannot start fails it, so that a broken driver cannot pass as a skip.

Both servers listen on port 0 and the script reads the ports they bound from their logs (no
port picked here and then raced for). With --budget-s every wait is cut to what is left, so the
script ends, stops its servers and writes its JSON within the budget; SIGTERM (the caller's
timeout) does the same at once.

usage: serve_check.py --bin DIR --model FILE --out DIR [--backends cuda,cpu] [--budget-s S]
                      [--lib-path DIRS]
"""
import argparse
import concurrent.futures
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request


# Everything here talks to 127.0.0.1: a proxy from the environment (gRPC honours http_proxy and
# grpc_proxy, urllib http_proxy) would route the calls away from the local servers.
PROXY_VARS = ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy")
LOCAL_ENV = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}
# The environment of our own programs (server, client): LOCAL_ENV plus --lib-path, which is set
# on them only, not on this interpreter or other tools (scripts/gpu-check: the pack's libraries
# must not reach python3 or nvidia-smi).
OUR_ENV = dict(LOCAL_ENV)
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Terminated(BaseException):
    """SIGTERM from the caller: not an Exception, so no per-step handler swallows it."""


def on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    # Once: `timeout` signals this process and then its whole process group, so a second
    # SIGTERM may follow at once; it must not interrupt the cleanup the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


class Deadline:
    def __init__(self, budget_s):
        self.end = None if budget_s is None else time.time() + budget_s

    def minus(self, reserve_s):
        """The same deadline with reserve_s kept back (for the steps after this one)."""
        d = Deadline(None)
        d.end = None if self.end is None else self.end - reserve_s
        return d

    def left(self, cap):
        """Seconds for the next wait: cap, cut to what is left (at least 1)."""
        if self.end is None:
            return cap
        return max(1.0, min(cap, self.end - time.time()))


def prompt(seed, n_words=250):
    rng = random.Random(seed)
    words = ("the cache stores keys and values for every token of a prompt so that later "
             "prompts can reuse them when they are similar enough to save time on the first "
             "token while the server keeps memory within its budget").split()
    return " ".join(rng.choice(words) for _ in range(n_words))


class Server:
    def __init__(self, bin_dir, model, backend, workdir, deadline):
        self.client = os.path.join(bin_dir, "semshare")
        self.workdir = workdir
        self.backend = backend
        self.deadline = deadline
        self.target = None
        self.mport = None
        self.log_path = os.path.join(workdir, f"server-{backend}.log")
        self.log = open(self.log_path, "w")
        try:
            # Port 0: the server binds free ports itself and logs them ("grpc listening on
            # HOST:PORT", "metrics on http://HOST:PORT/metrics"; server/server_main.cc).
            self.proc = subprocess.Popen(
                [os.path.join(bin_dir, "semshare-server"), "--model", model, "--backend", backend,
                 "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                 "--min-reuse-tokens", "64", "--workers", "2"],
                stdout=self.log, stderr=subprocess.STDOUT, env=OUR_ENV)
        except BaseException:
            self.log.close()
            raise

    def wait_ready(self, timeout_s=180):
        t0 = time.time()
        timeout_s = self.deadline.left(timeout_s)
        while time.time() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.tail()}")
            with open(self.log_path) as f:
                text = f.read()
            if "ready in" in text:
                grpc_port = re.search(r"grpc listening on [^\s:]+:(\d+)", text)
                metrics_port = re.search(r"metrics on http://[^\s/]+:(\d+)/metrics", text)
                if not grpc_port or not metrics_port:
                    raise RuntimeError(f"no bound ports in the server log: {self.tail()}")
                self.target = f"127.0.0.1:{grpc_port.group(1)}"
                self.mport = int(metrics_port.group(1))
                return time.time() - t0
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout_s:.0f} s: {self.tail()}")

    def tail(self):
        with open(self.log_path) as f:
            return "".join(f.readlines()[-15:])

    def call(self, verb, text, max_tokens=16, tag="x"):
        """The client's --json response, plus the text it printed as "_stdout" (a stream's
        last message carries no text)."""
        out = os.path.join(self.workdir, f"{self.backend}-{verb}-{tag}.json")
        wait_s = self.deadline.left(180)
        r = subprocess.run([self.client, "client", verb, "--target", self.target, "--prompt",
                            text, "--max-tokens", str(max_tokens),
                            "--timeout-s", str(max(1, int(wait_s) - 5)), "--json", out],
                           capture_output=True, text=True, errors="replace", timeout=wait_s,
                           env=OUR_ENV)
        if r.returncode != 0:
            raise RuntimeError(f"client {verb} failed ({r.returncode}): {r.stderr.strip()}")
        with open(out) as f:
            res = json.load(f)
        res["_stdout"] = r.stdout
        return res

    def wait_published(self, entries, timeout_s=60):
        """Until the store holds `entries` records in any tier (semshare_cache_store_entries,
        refreshed once a second), within the budget."""
        t0 = time.time()
        timeout_s = self.deadline.left(timeout_s)
        while True:
            have = sum(metric_values(self.metrics(), "semshare_cache_store_entries"))
            if have >= entries:
                return
            if time.time() - t0 > timeout_s:
                raise RuntimeError(f"the store holds {have} records after {timeout_s:.0f} s, "
                                   f"expected {entries}: {self.tail()}")
            time.sleep(0.1)

    def metrics(self):
        with NO_PROXY.open(f"http://127.0.0.1:{self.mport}/metrics",
                           timeout=self.deadline.left(10)) as r:
            return r.read().decode()

    def stop(self, wait_s=60):
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=wait_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self.log.close()
        return self.proc.returncode


def metric_values(text, name):
    return [float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)]


def run_backend(args, backend, workdir, deadline):
    res = {"backend": backend, "failures": []}
    fail = res["failures"].append
    try:
        srv = Server(args.bin, args.model, backend, workdir, deadline)
    except OSError as e:
        fail(f"cannot start semshare-server: {e}")
        return res
    try:
        res["ready_s"] = srv.wait_ready()
        a = prompt(1)
        miss = srv.call("generate", a, tag="miss")
        res["miss"] = miss
        if miss["cache"]["result"] != "miss" or not miss["cache"].get("published"):
            fail(f"first request: expected a published miss, got {miss['cache']}")
        srv.wait_published(1)  # the publish is asynchronous
        hit = srv.call("generate", "Note: " + a, tag="hit")
        res["hit"] = hit
        if hit["cache"]["result"] != "hit" or int(hit["usage"].get("reusedTokens", 0)) <= 0:
            fail(f"paraphrase: expected a hit reusing tokens, got {hit['cache']} {hit['usage']}")
        # The miss's prompt again: an exact hit on its published turn (every prompt row but the
        # last copied as stored, the last computed for its logits). The CPU gives the miss's
        # text bit for bit; on the GPU the last row's GEMMs may pick other cuBLAS algorithms
        # than the full prefill's, so there it is a note.
        again = srv.call("generate", a, tag="repeat")
        res["repeat"] = again
        recomputed = int(again["usage"].get("recomputedTokens", 0))
        if (again["cache"]["result"] != "hit" or again["cache"].get("kind") != "exact"
                or recomputed != 1):
            fail(f"repeat: expected an exact hit computing 1 token, got {again['cache']} "
                 f"{again['usage']}")
        if backend == "cpu" and again["text"] != miss["text"]:
            fail(f"repeat: text {again['text']!r} differs from the miss's {miss['text']!r}")
        res["repeat_same_text"] = again["text"] == miss["text"]
        stream = srv.call("stream", prompt(2, 40), tag="stream")
        res["stream_text"] = stream["_stdout"]
        if int(stream.get("usage", {}).get("completionTokens", 0)) <= 0:
            fail(f"stream: no tokens: {stream}")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futs = [pool.submit(srv.call, "generate", prompt(100 + i, 120), 8, f"c{i}")
                    for i in range(8)]
            conc = []
            for f in futs:
                try:
                    conc.append(f.result())
                except Exception as e:  # noqa: BLE001 - reported as a failure
                    fail(f"concurrent request: {e}")
        res["concurrent_ok"] = len(conc)
        m = srv.metrics()
        requests_total = sum(v for v in metric_values(m, "semshare_requests_total"))
        res["requests_total"] = requests_total
        if requests_total < 12:
            fail(f"/metrics: semshare_requests_total sums to {requests_total}, expected >= 12")
        if backend == "cuda":
            used = metric_values(m, "semshare_gpu_memory_used_bytes")
            total = metric_values(m, "semshare_gpu_memory_total_bytes")
            res["gpu_memory_used_bytes"] = used
            res["gpu_memory_total_bytes"] = total
            if not used or used[0] <= 0 or not total or total[0] <= used[0]:
                fail(f"/metrics: GPU memory gauges used={used} total={total}")
    except Exception as e:  # noqa: BLE001 - every failure is reported, then the server stops
        fail(str(e))
    except Terminated:
        fail("terminated (SIGTERM) before the checks finished")
        res["terminated"] = True
        res["exit_code"] = srv.stop(wait_s=5)
        res["server_log_tail"] = srv.tail()
        return res
    rc = srv.stop(wait_s=deadline.left(60))
    res["exit_code"] = rc
    if rc != 0:
        fail(f"server exit code {rc} after SIGTERM")
    if res["failures"]:
        res["server_log_tail"] = srv.tail()
    return res


def cuda_devices():
    """Names of the NVIDIA GPUs the driver lists (nvidia-smi -L; /proc/driver/nvidia/gpus)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30,
                             env=LOCAL_ENV)
        if out.returncode == 0:
            gpus = [ln for ln in out.stdout.splitlines() if ln.startswith("GPU ")]
            if gpus:
                return gpus
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        return sorted(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return []


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True, help="directory with semshare-server and semshare")
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--backends", default="cuda,cpu")
    ap.add_argument("--lib-path", default="",
                    help="prepended to LD_LIBRARY_PATH of the server and client only")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="finish (servers stopped, JSON written) within this many seconds")
    args = ap.parse_args()
    if args.lib_path:
        OUR_ENV["LD_LIBRARY_PATH"] = ":".join(
            p for p in (args.lib_path, LOCAL_ENV.get("LD_LIBRARY_PATH", "")) if p)
    signal.signal(signal.SIGTERM, on_sigterm)
    os.makedirs(args.out, exist_ok=True)
    # Skips only when the device is not required. When it is, the check runs whatever the probe
    # says (a machine whose driver nvidia-smi and /proc do not show may still run CUDA): the
    # CUDA server then fails to start without a device, which fails the check.
    if ("cuda" in args.backends.split(",") and os.environ.get("SEMSHARE_REQUIRE_GPU") != "1"
            and not cuda_devices()):
        with open(os.path.join(args.out, "serve_check.json"), "w") as f:
            json.dump({"skipped": True, "failures": []}, f, indent=1)
        print("serve_check: SKIP (no CUDA device visible; SEMSHARE_REQUIRE_GPU=1 makes this a "
              "failure)")
        return 0
    workdir = tempfile.mkdtemp(prefix="serve-check-", dir=args.out)
    deadline = Deadline(args.budget_s)
    results = {}
    backends = args.backends.split(",")
    for i, b in enumerate(backends):
        # Each later backend keeps 40 s of the budget (the CPU run takes ~5 s on 2 cores).
        try:
            results[b] = run_backend(args, b, workdir,
                                     deadline.minus(40 * (len(backends) - 1 - i)))
        except Terminated:  # while stopping the server: it had its SIGTERM too
            results[b] = {"backend": b, "terminated": True,
                          "failures": ["terminated (SIGTERM) while stopping the server"]}
        if results[b].get("terminated"):
            break
    failures = [f"{b}: {f}" for b, r in results.items() for f in r["failures"]]
    notes = []
    if "cuda" in results and "cpu" in results:
        g, c = results["cuda"], results["cpu"]
        for key in ("miss", "hit", "repeat"):
            if key in g and key in c:
                gu, cu = g[key]["usage"], c[key]["usage"]
                if g[key]["cache"]["result"] != c[key]["cache"]["result"]:
                    failures.append(f"{key}: cuda {g[key]['cache']['result']} vs cpu "
                                    f"{c[key]['cache']['result']}")
                if gu.get("promptTokens") != cu.get("promptTokens"):
                    failures.append(f"{key}: prompt tokens differ: {gu} vs {cu}")
                notes.append(f"{key}: reused/recomputed cuda {gu.get('reusedTokens')}/"
                             f"{gu.get('recomputedTokens')} cpu {cu.get('reusedTokens')}/"
                             f"{cu.get('recomputedTokens')}; same text: "
                             f"{g[key]['text'] == c[key]['text']}; ttft ms cuda "
                             f"{g[key]['timings']['ttftMs']:.1f} cpu "
                             f"{c[key]['timings']['ttftMs']:.1f}")
    results["failures"] = failures
    results["notes"] = notes
    with open(os.path.join(args.out, "serve_check.json"), "w") as f:
        json.dump(results, f, indent=1)
    for n in notes:
        print("serve_check:", n)
    for fl in failures:
        print("serve_check FAIL:", fl)
    print("serve_check:", "PASS" if not failures else f"FAIL ({len(failures)})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
