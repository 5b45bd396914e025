"""Memory and clients: a tiny memory budget (evictions counted, the budget held, requests
succeed); many clients that disconnect mid-stream at once, by cancelling and by dying (the
server keeps serving and its KV bytes gauge returns to 0); no prompt text in the server's log
at the default log level.
"""

import subprocess
import sys
import uuid

import grpc

import reliability_common as rc
from reliability_common import sc

DEADLINE_S = 60.0
# Room for about two references: a 160-250-token passage is 7-11.5 MB in memory with this model
# (46 KB per token; measured with CacheAdmin.GetStats), so six distinct passages must evict.
MEMORY_BUDGET = 20_000_000


def test_memory_budget_exhausted(tmp_path):
    s = rc.make_server(tmp_path / "s", ["--cache-memory-bytes", MEMORY_BUDGET])
    c = s.client(timeout=DEADLINE_S)
    try:
        prompts = [rc.passage(200 + 8 * i) for i in range(6)]
        for p in prompts:
            assert rc.greedy(c, p, 2).cache.result == "miss"
        rc.wait_metric(s, "semshare_cache_store_evictions_total", lambda v: v >= 3, tier="memory")
        stats = rc.admin_stats(s)
        mem = next(t for t in stats.tiers if t.tier == "memory")
        assert 1 <= mem.entries < len(prompts), mem
        assert 0 < mem.bytes <= MEMORY_BUDGET, mem
        assert rc.metric(s, "semshare_cache_store_bytes", tier="memory") <= MEMORY_BUDGET
        # Every prompt is still served, greedy text equal to a bypass generation; evicted ones
        # miss (and are republished), the resident ones hit.
        for p in prompts:
            auto = rc.greedy(c, p, 8)
            assert auto.text == rc.greedy(c, p, 8, "bypass").text
        assert rc.metric(s, "semshare_cache_store_bytes", tier="memory") <= MEMORY_BUDGET
        assert rc.metric(s, "semshare_requests_total", method="Generate", code="OK") == 18
    finally:
        c.close()
        rc.stop_ok(s)


# A child process that opens `n` streams, prints "ready" and waits to be killed: its sockets
# die with it (no cancel is ever sent; the kernel resets them).
_CHILD = r"""
import sys
from semshare_client import Client
c = Client(sys.argv[1], api_key=sys.argv[2], timeout=None)
calls = [c.semshare.GenerateStream(
             c.generate_request(sys.argv[4] + f" Request {i}.", max_tokens=1000, ignore_eos=True,
                                cache_policy="bypass"), metadata=c._metadata)
         for i in range(int(sys.argv[3]))]
print("ready", flush=True)
sys.stdin.read()
"""


def test_many_clients_disconnect_mid_stream(tmp_path):
    s = rc.make_server(tmp_path / "s", ["--workers", "2", "--max-num-seqs", "2",
                                        "--max-queue", "64"])
    prompt = rc.passage(248, count=2)  # short: a fast prefill, then a long decode
    child = None
    try:
        # 1) 16 streams: 8 on one channel cancelled by their client mid-stream, 8 each on its own
        #    channel, closed under the call.
        clients = [s.client(timeout=DEADLINE_S) for _ in range(9)]
        calls = []
        for i in range(16):
            c = clients[0] if i < 8 else clients[i - 7]
            req = c.generate_request(prompt + f" Request {i}.", max_tokens=1000, ignore_eos=True,
                                     cache_policy="bypass")
            calls.append(c.semshare.GenerateStream(req, metadata=c._metadata))
        # Two computing (--max-num-seqs 2) and decoding, the rest waiting (1000 tokens each take
        # minutes here). All 16 must have reached the server before their clients go away.
        rc.wait_metric(s, "semshare_requests_running", lambda v: v == 2)
        rc.wait_metric(s, "semshare_requests_waiting", lambda v: v == 14)
        rc.wait_metric(s, "semshare_inter_token_latency_seconds_count", lambda v: v >= 2)
        assert rc.metric(s, "semshare_kv_cache_bytes") > 0
        for call in calls[:8]:
            call.cancel()
        for c in clients[1:]:
            c.close()  # the channel goes away under the call
        # The 16 end as cancelled (the queued ones too) before the child's calls arrive.
        rc.wait_metric(s, "semshare_requests_total", lambda v: v == 16, timeout_s=120,
                       method="GenerateStream", code="CANCELLED")
        rc.wait_metric(s, "semshare_requests_running", lambda v: v == 0)
        # 2) a child process with 8 streams in flight, killed with SIGKILL.
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, s.target, rc.KEY_A, "8", prompt],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert child.stdout.readline().strip() == "ready"
        rc.wait_metric(s, "semshare_requests_running", lambda v: v == 2)
        rc.wait_metric(s, "semshare_requests_waiting", lambda v: v == 6)
        child.kill()
        child.wait()
        clients[0].close()
        # Every one of those 24 requests ends (cancelled) and frees its KV.
        rc.wait_metric(s, "semshare_requests_running", lambda v: v == 0, timeout_s=120)
        rc.wait_metric(s, "semshare_requests_waiting", lambda v: v == 0)
        rc.wait_metric(s, "semshare_kv_cache_bytes", lambda v: v == 0)
        m = s.metrics()
        cancelled = sum(v for n, l, v in m.samples if n == "semshare_requests_total"
                        and l.get("method") == "GenerateStream" and l.get("code") != "OK")
        assert cancelled == 24, [line for line in m.text.splitlines()
                                 if line.startswith("semshare_requests_total")]
        # The server keeps serving, streamed and unary.
        with s.client(timeout=DEADLINE_S) as c:
            pieces = list(c.stream(rc.sc.SHORT_PROMPT, max_tokens=8, ignore_eos=True))
            assert pieces[-1].usage.completion_tokens == 8
            assert c.generate(rc.sc.SHORT_PROMPT, max_tokens=4).usage.completion_tokens >= 1
        assert rc.metric(s, "semshare_kv_cache_bytes") == 0
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        rc.stop_ok(s)


def test_no_prompt_text_in_log_at_default_level(tmp_path):
    marker = f"zq{uuid.uuid4().hex}xj"
    s = rc.make_server(tmp_path / "s", ["--max-prompt-tokens", "512"], default_log_level=True)
    assert "--log-level" not in s.args
    prompt = rc.passage(256) + f" The secret code word is {marker}."
    try:
        with s.client(timeout=DEADLINE_S) as c, s.client(api_key="wrong-key-" + marker) as bad:
            c.generate(prompt, max_tokens=4)  # miss, published
            list(c.stream(prompt, max_tokens=4))  # hit
            c.generate(messages=[("system", marker), ("user", prompt)], max_tokens=2)
            c.tokenize(prompt)
            c.lookup_reference(prompt)
            c.add_reference(prompt + " again")
            # Refused requests: over the prompt limit, bad stop string, unknown key.
            code, _ = sc.code_of(lambda: c.generate(" ".join([prompt] * 8), max_tokens=2))
            assert code == grpc.StatusCode.OUT_OF_RANGE
            code, _ = sc.code_of(lambda: c.generate(prompt, stop=[marker * 20]))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            code, _ = sc.code_of(lambda: bad.generate(prompt))
            assert code == grpc.StatusCode.UNAUTHENTICATED
        assert rc.metric(s, "semshare_requests_total", method="Generate", code="OK") == 2
    finally:
        rc.stop_ok(s)
    log = "".join(p.read_text(errors="replace") for p in (tmp_path / "s").glob("*.log"))
    assert "serving" in log  # the capture worked
    assert marker not in log, [line for line in log.splitlines() if marker in line]
    # Nor any 5-word run of the passage (a prompt logged without the marker line).
    words = prompt.split()
    for i in range(0, len(words) - 5, 5):
        assert " ".join(words[i:i + 5]) not in log
