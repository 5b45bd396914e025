"""A real Prometheus (Debian package prometheus) scrapes a semshare-server every second and
evaluates deploy/prometheus/rules.yml every second; after a known mix of cache hits and misses,
the recording rule semshare:cache_hit_rate:ratio_rate5m returns that mix's hit rate.

Expected value and tolerance: the rule is rate(hits[5m]) / rate(lookups[5m]). Prometheus
scrapes once before the first request (both counters at 0), and both counters come from the
same scrapes, so their rate() windows hold the same sample times, start at 0 and get the same
extrapolation (a counter's extrapolation towards the window start stops at its zero point, here
the first sample). The factor cancels and the ratio is exactly hits / lookups of what was sent;
1e-9 covers float rounding. The ratios of every earlier prefix of the mix (0, 1/3, 1/2) differ
from the final 3/5 by far more, so a rule evaluated on incomplete data cannot pass.
"""

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

import service_common as sc

RULE = "semshare:cache_hit_rate:ratio_rate5m"
RULES_FILE = sc.SOURCE_DIR / "deploy" / "prometheus" / "rules.yml"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(base, expr):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def _value(base, expr):
    """The single series' value of an instant query, or None when there is none."""
    result = _query(base, expr)
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def _wait(what, predicate, timeout_s, proc, log):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            got = predicate()
        except OSError:
            got = None
        if got:
            return got
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited with {proc.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout_s} s")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def stack(make_server, tmp_path_factory):
    if not RULES_FILE.is_file():
        pytest.skip(f"{RULES_FILE} does not exist (deploy/ provides the recording rules)")
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is missing: run scripts/setup (Debian package prometheus)")
    server = make_server(["--threads", 2], api_keys=False, name="prom-server")
    tmp = tmp_path_factory.mktemp("prometheus")
    port = _free_port()
    (tmp / "prometheus.yml").write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES_FILE)],
        "scrape_configs": [{"job_name": "semshare", "static_configs": [
            {"targets": [f"127.0.0.1:{server.metrics_port}"]}]}]}))
    log = tmp / "prometheus.log"
    proc = sc.owned_process.spawn(
        ["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait("prometheus ready",
              lambda: urllib.request.urlopen(base + "/-/ready", timeout=5).status == 200, 60,
              proc, log)
        # A scrape with both counters at 0 before any request (see the module's docstring).
        _wait("a first scrape with the counters at 0",
              lambda: _value(base, "semshare_cache_lookups_total") == 0
              and _value(base, "sum(semshare_cache_hits_total)") == 0, 60, proc, log)
        yield server, base, proc, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        sc.owned_process.kill(proc)


def test_hit_rate_recording_rule(stack, pairs):
    server, base, proc, log = stack
    with server.client(api_key=None) as c:
        a, b = sc.passage(pairs, 140), sc.passage(pairs, 160)
        results = [c.generate(a, max_tokens=1).cache.result,
                   c.generate(b, max_tokens=1).cache.result]
        for prompt in (sc.passage(pairs, 140, swap={1, 5}), sc.passage(pairs, 160, swap={2, 6}),
                       sc.passage(pairs, 140, swap={3})):
            sc.wait_lookup_hit(c, prompt)
            results.append(c.generate(prompt, max_tokens=1).cache.result)
    assert results == ["miss", "miss", "hit", "hit", "hit"], results
    hits, lookups = 3, 5

    model = next(l["model"] for n, l, _ in server.metrics().samples
                 if n == "semshare_cache_hits_total")
    _wait(f"prometheus seeing {lookups} lookups",
          lambda: _value(base, "semshare_cache_lookups_total") == lookups, 30, proc, log)
    expected = hits / lookups
    last = {}

    def rule_is_expected():
        result = _query(base, RULE)
        last["result"] = result
        return (len(result) == 1 and abs(float(result[0]["value"][1]) - expected) <= 1e-9)

    deadline = time.monotonic() + 30
    while not rule_is_expected():
        assert time.monotonic() < deadline, (
            f"{RULE} never returned {expected} (1e-9); last: {last['result']}")
        time.sleep(0.5)
    assert last["result"][0]["metric"].get("model") == model, last
    # Stable: later evaluations over the same window give the same ratio.
    time.sleep(3)
    assert rule_is_expected(), last
