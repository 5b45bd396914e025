"""End to end: the real semshare-server under `semshare loadgen`, scraped every second by a real
Prometheus (Debian package prometheus) that evaluates deploy/prometheus/rules.yml every second.
Then every expression of the Grafana dashboard (variables substituted as Grafana would for the
model and instance that exist) and every recording rule must return data: at least one series
with at least one finite value over the load window.

Exempt: the GPU-memory expressions (semshare_gpu_memory_*_bytes, semshare:gpu_memory_used:ratio).
The server exports those gauges only with --backend cuda; this test runs the CPU backend (the
machine has no GPU), so they must return nothing here, which is asserted instead.

Everything listens on free loopback ports; load is bounded (LOAD_S seconds, concurrency 2)."""

import json
import math
import os
import re
import subprocess
import time
import urllib.parse

import pytest

import dashboard_test
import deploy_common as dc

LOAD_S = 25
SCRAPE = "1s"
RATE_INTERVAL = "10s"  # what Grafana's $__rate_interval is at a 1 s scrape and a ~10 s step
GPU_ONLY = ("semshare_gpu_memory_", "semshare:gpu_memory_")

# Groups of paraphrases; each prompt is listed twice (exact repeats hit for sure once their
# reference is published) and with its paraphrases (similar-prompt hits, the point of semshare).
PARAPHRASES = [
    ["The committee approved the new budget for the city's public libraries after a long debate "
     "about funding for children's reading programs and longer opening hours on weekends.",
     "After a long debate about funding for children's reading programs and longer weekend opening "
     "hours, the committee approved the new budget for the city's public libraries."],
    ["Researchers found that drinking coffee in moderation was not linked to a higher risk of heart "
     "disease in a study that followed thousands of adults for more than ten years.",
     "A study following thousands of adults for over ten years found no link between moderate "
     "coffee drinking and a higher risk of heart disease, the researchers said."],
    ["The company said its quarterly profit rose sharply because demand for its cloud services grew "
     "faster than analysts had expected, and it raised its forecast for the full year.",
     "Its quarterly profit rose sharply as demand for cloud services grew faster than analysts "
     "expected, the company said, raising its full-year forecast."],
]


def _api(base, path, **params):
  url = f"{base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
  status, body = dc.http_get(url, timeout=10)
  data = json.loads(body)
  assert data["status"] == "success", data
  return data["data"]


def _grafana_value(values):
  """Grafana's regex formatting of a multi-value variable. Grafana's Prometheus data source
  escapes regex metacharacters with a doubled backslash, because the value lands inside a
  PromQL string literal where a lone backslash would be an invalid escape."""
  esc = [re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\\\1", v) for v in values]
  return esc[0] if len(esc) == 1 else "(" + "|".join(esc) + ")"


def _finite_points(result):
  return sum(1 for s in result for _, v in s["values"] if math.isfinite(float(v)))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("obs")
  grpc, metrics, prom = dc.free_port(), dc.free_port(), dc.free_port()
  procs = []
  try:
    server = dc.start_server(
        ["--model", dc.model_path(), "--listen", f"127.0.0.1:{grpc}",
         "--metrics-listen", f"127.0.0.1:{metrics}", "--backend", "cpu", "--workers", "1",
         "--threads", "1", "--max-queue", "64", "--min-reuse-tokens", "8",
         "--drain-seconds", "5"], tmp / "server.log")
    procs.append(server)
    dc.wait_server_ready(server, grpc, metrics)

    rules = os.path.join(dc.DEPLOY, "prometheus", "rules.yml")
    (tmp / "prometheus.yml").write_text(json.dumps({
        "global": {"scrape_interval": SCRAPE, "evaluation_interval": SCRAPE},
        "rule_files": [rules],
        "scrape_configs": [{"job_name": "semshare",
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics}"]}]}]}))
    promp = dc.owned_process.spawn(
        ["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom}",
         "--log.level=warn"], stdout=open(tmp / "prometheus.log", "wb"), stderr=subprocess.STDOUT)
    procs.append(promp)
    base = f"http://127.0.0.1:{prom}"
    dc.wait_until(lambda: dc.http_get(base + "/-/ready")[0] == 200, 60, "prometheus ready", promp)
    dc.wait_until(lambda: _api(base, "/api/v1/query", query='up{job="semshare"} == 1')["result"],
                  30, "first scrape", promp)

    prompts = [p for group in PARAPHRASES for p in group for _ in range(2)]
    (tmp / "prompts.txt").write_text("\n".join(prompts) + "\n")
    start = time.time()
    lg = subprocess.run(
        [dc.cli_binary(), "loadgen", "--target", f"127.0.0.1:{grpc}", "--concurrency", "2",
         "--duration-s", str(LOAD_S), "--prompts", str(tmp / "prompts.txt"), "--max-tokens", "8",
         "--json", str(tmp / "loadgen.json")], capture_output=True, text=True, timeout=LOAD_S + 120)
    assert lg.returncode == 0, lg.stdout + lg.stderr
    time.sleep(5)  # a few more scrapes and rule evaluations after the last request
    yield {"base": base, "start": start - 2, "end": time.time(), "tmp": tmp}
  finally:
    for p in reversed(procs):
      dc.stop_process(p)


def _query_range(stack, expr):
  return _api(stack["base"], "/api/v1/query_range", query=expr, start=f"{stack['start']:.3f}",
              end=f"{stack['end']:.3f}", step="1")["result"]


def test_load_produced_hits_and_ok_requests(stack):
  # Preconditions of the test itself: without hits the hit-only series would be vacuous.
  ok = _api(stack["base"], "/api/v1/query", query='sum(semshare_requests_total{code="OK"})')["result"]
  assert ok and float(ok[0]["value"][1]) > 0
  hits = _api(stack["base"], "/api/v1/query", query="sum(semshare_cache_hits_total)")["result"]
  assert hits and float(hits[0]["value"][1]) > 0, "repeated prompts produced no cache hit"


def test_every_dashboard_expression_returns_data(stack):
  base = stack["base"]
  models = _api(base, "/api/v1/label/model/values", **{"match[]": "semshare_requests_running"})
  instances = _api(base, "/api/v1/label/instance/values",
                   **{"match[]": "semshare_requests_running"})
  assert models and instances
  empty = []
  exprs = dashboard_test.dashboard_exprs(dashboard_test.load_dashboard())
  for title, expr in exprs:
    q = dashboard_test.substitute(expr, _grafana_value(models), _grafana_value(instances),
                                  RATE_INTERVAL)
    result = _query_range(stack, q)
    if any(g in expr for g in GPU_ONLY):
      assert not result, f"GPU series on the CPU backend? {q}"
      continue
    if _finite_points(result) == 0:
      empty.append(f"{title}: {q}")
  assert not empty, "dashboard expressions without data:\n" + "\n".join(empty)


def test_every_recording_rule_returns_data(stack):
  empty = []
  for rule in dashboard_test.recording_rules():
    result = _query_range(stack, rule["record"])
    if rule["record"].startswith(GPU_ONLY):
      assert not result
      continue
    if _finite_points(result) == 0:
      empty.append(rule["record"])
  assert not empty, f"recording rules without data: {empty}"
  hit = _query_range(stack, "semshare:cache_hit_rate:ratio_rate5m")
  assert any(0 < float(v) <= 1 for s in hit for _, v in s["values"] if math.isfinite(float(v)))


def test_alerts_load_and_none_fire_on_a_healthy_server(stack):
  groups = _api(stack["base"], "/api/v1/rules")["groups"]
  alerts = {r["name"]: r for g in groups for r in g["rules"] if r["type"] == "alerting"}
  assert set(alerts) == {"SemshareTTFTP99High", "SemshareCacheHitRateCollapsed",
                         "SemshareGPUMemoryHigh", "SemshareCacheStoreErrors",
                         "SemshareNoReadyReplicas"}
  for name, r in alerts.items():
    assert r["health"] == "ok", (name, r.get("lastError"))
  assert alerts["SemshareNoReadyReplicas"]["state"] == "inactive"
