"""deploy/grafana and deploy/prometheus without a server: the dashboard imports as is, names only
metrics of the server's contract, and every expression parses as PromQL (each is put into a
generated rules file that `promtool check rules` parses)."""

import json
import os
import re
import subprocess

import pytest
import yaml

import deploy_common as dc

DASHBOARD = os.path.join(dc.DEPLOY, "grafana", "semshare-dashboard.json")
RULES = os.path.join(dc.DEPLOY, "prometheus", "rules.yml")

# The metrics of the server's contract (docs/deploy.md "Metrics").
CONTRACT_METRICS = {
    "semshare_time_to_first_token_seconds", "semshare_request_duration_seconds",
    "semshare_request_queue_seconds", "semshare_prefill_seconds",
    "semshare_inter_token_latency_seconds", "semshare_requests_running",
    "semshare_requests_waiting", "semshare_prompt_tokens_total",
    "semshare_generation_tokens_total", "semshare_cache_lookups_total", "semshare_cache_hits_total",
    "semshare_reused_tokens_total", "semshare_recomputed_tokens_total", "semshare_match_similarity",
    "semshare_kv_cache_bytes", "semshare_gpu_memory_used_bytes", "semshare_gpu_memory_total_bytes",
    "semshare_cache_store_bytes", "semshare_cache_store_entries",
    "semshare_cache_store_evictions_total", "semshare_cache_store_errors_total",
    "semshare_requests_total", "semshare_kv_cache_utilization", "semshare_preemptions_total",
    "semshare_batch_rows"}
HISTOGRAMS = {"semshare_time_to_first_token_seconds", "semshare_request_duration_seconds",
              "semshare_request_queue_seconds", "semshare_prefill_seconds",
              "semshare_inter_token_latency_seconds", "semshare_match_similarity",
              "semshare_batch_rows"}


def load_dashboard():
  with open(DASHBOARD) as f:
    return json.load(f)


def dashboard_exprs(dash):
  return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def recording_rules():
  rules = dc.load_yaml(RULES)
  return [r for g in rules["groups"] for r in g["rules"] if "record" in r]


def substitute(expr, model=".*", instance=".*", rate_interval="1m"):
  """What Grafana sends for `All`: the variables' allValue, and a $__rate_interval."""
  return (expr.replace("$__rate_interval", rate_interval).replace("$model", model)
          .replace("$instance", instance))


def metric_names(expr):
  names = set()
  for m in re.findall(r"\b(semshare_[a-z0-9_]+)", expr):
    base = re.sub(r"_(bucket|sum|count)$", "", m)
    names.add(base if base in HISTOGRAMS else m)
  return names


def test_dashboard_structure():
  d = load_dashboard()
  assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
  assert "id" not in d or d["id"] is None, "a fixed id breaks import into another Grafana"
  ids = [p["id"] for p in d["panels"]]
  assert len(ids) == len(set(ids))
  variables = {v["name"]: v for v in d["templating"]["list"]}
  assert variables["datasource"]["type"] == "datasource"
  assert variables["datasource"]["query"] == "prometheus"
  for name in ("model", "instance"):
    v = variables[name]
    assert v["type"] == "query" and v["includeAll"] and v["allValue"] == ".*"
    assert v["datasource"]["uid"] == "${datasource}"
  for p in d["panels"]:
    g = p["gridPos"]
    assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0
    if p["type"] == "row":
      continue
    assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
    refs = [t["refId"] for t in p["targets"]]
    assert refs and len(refs) == len(set(refs)), p["title"]
    for t in p["targets"]:
      used = set(re.findall(r"\$(\w+)", t["expr"])) - {"__rate_interval"}
      assert used <= set(variables), (p["title"], used)
      assert 'model=~"$model"' in t["expr"], (p["title"], "every query follows the model selector")


def test_dashboard_covers_the_issue():
  """TTFT quantiles by cache_result, hit rate, reused vs recomputed, similarity histogram, KV and
  GPU memory, queue depth, requests by code, tokens/s."""
  text = " ".join(e for _, e in dashboard_exprs(load_dashboard()))
  for q in ("0.5", "0.95", "0.99"):
    assert f"histogram_quantile({q}, sum by (cache_result, le) " \
           "(rate(semshare_time_to_first_token_seconds_bucket" in text
  for m in ("semshare_cache_hits_total", "semshare_cache_lookups_total",
            "semshare:cache_hit_rate:ratio_rate5m", "semshare_reused_tokens_total",
            "semshare_recomputed_tokens_total", "semshare_match_similarity_bucket",
            "semshare_kv_cache_bytes", "semshare_gpu_memory_used_bytes",
            "semshare_requests_waiting", "sum by (code) (rate(semshare_requests_total",
            "semshare_generation_tokens_total", "semshare_kv_cache_utilization",
            "rate(semshare_preemptions_total", "semshare_batch_rows_bucket",
            "sum by (kind) (rate(semshare_cache_hits_total"):
    assert m in text, m


def test_only_contract_metrics():
  used = set()
  for _, e in dashboard_exprs(load_dashboard()):
    used |= metric_names(e)
  for r in dc.load_yaml(RULES)["groups"]:
    for rule in r["rules"]:
      used |= metric_names(rule["expr"])
  assert used <= CONTRACT_METRICS, used - CONTRACT_METRICS
  assert "semshare_requests_waiting" in used


def test_hit_rate_rule_is_the_contract():
  rules = {r["record"]: r["expr"] for r in recording_rules()}
  norm = lambda s: re.sub(r"\s+", " ", s).strip()
  assert norm(rules["semshare:cache_hit_rate:ratio_rate5m"]) == norm(
      "sum by (model) (rate(semshare_cache_hits_total[5m])) / "
      "sum by (model) (rate(semshare_cache_lookups_total[5m]))")
  for q in ("p50", "p95", "p99"):
    assert f"semshare:time_to_first_token_seconds:{q}_rate5m" in rules
  assert "semshare:reused_token_ratio:ratio_rate5m" in rules


def test_every_dashboard_expression_parses(tmp_path):
  exprs = dashboard_exprs(load_dashboard())
  rules = {"groups": [{"name": "dashboard", "rules": [
      {"record": f"dashboard:expr_{i}", "expr": substitute(e)} for i, (_, e) in enumerate(exprs)]}]}
  good = tmp_path / "dashboard_rules.yml"
  good.write_text(yaml.safe_dump(rules))
  r = subprocess.run(["promtool", "check", "rules", str(good)], capture_output=True, text=True)
  assert r.returncode == 0, r.stdout + r.stderr
  assert f"SUCCESS: {len(exprs)} rules found" in r.stdout
  # The check can fail: a broken expression is reported.
  rules["groups"][0]["rules"][0]["expr"] = "sum by (model (rate(x[5m]))"
  bad = tmp_path / "bad_rules.yml"
  bad.write_text(yaml.safe_dump(rules))
  assert subprocess.run(["promtool", "check", "rules", str(bad)], capture_output=True).returncode != 0
