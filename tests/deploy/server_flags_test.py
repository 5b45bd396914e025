"""The manifests against the real server: `semshare-server --help` knows every config key and env
var the overlays set, its default ports are the ones the probes and Services use, the drain
period fits terminationGracePeriodSeconds, and the cpu-demo config file (with paths and
addresses moved to this machine's loopback) starts a server that answers."""

import json
import os
import subprocess

import pytest

import deploy_common as dc


@pytest.fixture(scope="module")
def help_flags():
  r = subprocess.run([dc.server_binary(), "--help"], capture_output=True, text=True, timeout=30)
  text = r.stdout + r.stderr
  flags = dc.parse_help(text)
  assert len(flags) >= 20, f"could not parse --help:\n{text}"
  return flags


def test_help_has_the_contract_flags(help_flags):
  for f in ("config", "model", "listen", "metrics-listen", "backend", "threads", "workers",
            "max-queue", "drain-seconds", "cache-memory-bytes", "cache-dir", "cache-disk-bytes",
            "redis", "redis-ttl-seconds", "api-keys", "tls-cert", "tls-key", "tls-client-ca",
            "log-level"):
    assert f in help_flags, f


def test_default_ports_match_probes_and_service(help_flags):
  assert dc.port_of(help_flags["listen"]["default"]) == dc.GRPC_PORT
  assert dc.port_of(help_flags["metrics-listen"]["default"]) == dc.METRICS_PORT


@pytest.mark.parametrize("overlay", dc.OVERLAYS)
def test_manifest_flags_exist(help_flags, overlay):
  objs = dc.render(overlay)
  cfg = dc.config_file(objs)
  assert set(cfg) <= set(help_flags), set(cfg) - set(help_flags)
  dep, c = dc.server_container(objs)
  for a in c["args"]:
    if a.startswith("--"):
      assert a[2:].split("=")[0] in help_flags, a
  for e in c.get("env", []):
    assert e["name"][len("SEMSHARE_"):].lower().replace("_", "-") in help_flags, e["name"]
  drain = int(cfg.get("drain-seconds", help_flags["drain-seconds"]["default"]))
  pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
  grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
  assert grace >= pre_stop + drain + dc.GRACE_MARGIN_S
  for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
    assert c[probe]["grpc"]["port"] == dc.port_of(cfg.get("listen", help_flags["listen"]["default"]))
  if "backend" in cfg:
    assert cfg["backend"] in ("cpu", "cuda")
  if "log-level" in cfg:
    assert cfg["log-level"] in ("debug", "info", "warning", "error")


def test_cpu_demo_config_file_starts_the_server(tmp_path):
  objs = dc.render("cpu-demo")
  cfg = dc.config_file(objs)
  grpc, metrics = dc.free_port(), dc.free_port()
  # The cluster paths and wildcard addresses become this machine's files and loopback ports.
  keys = tmp_path / "api-keys"
  keys.write_text(dc.find(objs, "Secret", "semshare-secrets")["stringData"]["api-keys"])
  cfg.update({"listen": f"127.0.0.1:{grpc}", "metrics-listen": f"127.0.0.1:{metrics}",
              "model": dc.model_path(), "api-keys": str(keys), "cache-dir": str(tmp_path / "c")})
  (tmp_path / "c").mkdir()
  conf = tmp_path / "config.json"
  conf.write_text(json.dumps(cfg))
  proc = dc.start_server(["--config", str(conf)], tmp_path / "server.log")
  try:
    dc.wait_server_ready(proc, grpc, metrics, api_key="demo-key-change-me")
    _, body = dc.http_get(f"http://127.0.0.1:{metrics}/metrics")
    assert "semshare_requests_total" in body
    # The demo key is required: a request without it is refused.
    r = subprocess.run([dc.cli_binary(), "client", "generate", "--target", f"127.0.0.1:{grpc}",
                        "--prompt", "hi"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
  finally:
    dc.stop_process(proc)
  assert proc.returncode == 0, (tmp_path / "server.log").read_text()[-4000:]
