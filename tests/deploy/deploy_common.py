"""Shared by the tests in tests/deploy: paths, rendering the overlays, the server's contract."""

import os
import re
import shutil
import subprocess
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # tests/: owned_process.py, testpaths.py
import kustomize_lite  # noqa: E402
import owned_process  # noqa: E402
import testpaths  # noqa: E402

SOURCE_DIR = os.environ.get("SEMSHARE_SOURCE_DIR", os.path.normpath(os.path.join(HERE, "..", "..")))
BINARY_DIR = os.environ.get("SEMSHARE_BINARY_DIR", os.path.join(SOURCE_DIR, "build"))
DEPLOY = os.path.join(SOURCE_DIR, "deploy")
K8S = os.path.join(DEPLOY, "k8s")
OVERLAYS = ("cpu-demo", "gpu")

# The server's contract (docs/deploy.md "Server contract"): ports, health services, the
# container and its config mount. tests compare the manifests against these and, where the
# binary exists, these against `semshare-server --help`.
GRPC_PORT = 50051
METRICS_PORT = 9464
HEALTH_SERVICES = {"", "semshare.v1.SemShare"}
CONTAINER = "semshare-server"
CONFIG_MOUNT = "/etc/semshare/config"
SECRETS_MOUNT = "/etc/semshare/secrets"
# Seconds kubelet may need beyond preStop + drain to deliver SIGKILL-free shutdown (process exit,
# final scrape); the Deployment must leave at least this much.
GRACE_MARGIN_S = 5


def render(overlay):
  """Objects of one overlay, rendered by kustomize_lite."""
  return kustomize_lite.render(os.path.join(K8S, "overlays", overlay))


def real_kustomize():
  """argv prefix of a real kustomize on this machine, or None."""
  if shutil.which("kustomize"):
    return ["kustomize", "build"]
  if shutil.which("kubectl"):
    r = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True)
    if r.returncode == 0 and re.search(r"Kustomize Version: v[4-9]", r.stdout):
      return ["kubectl", "kustomize"]
  return None


def find(objects, kind, name):
  hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
  assert len(hits) == 1, f"{kind}/{name}: {len(hits)} objects"
  return hits[0]


def server_container(objects):
  dep = find(objects, "Deployment", "semshare")
  return dep, next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == CONTAINER)


def config_file(objects):
  """The server's JSON config file from the ConfigMap, parsed."""
  import json
  return json.loads(find(objects, "ConfigMap", "semshare-config")["data"]["config.json"])


def port_of(hostport):
  return int(hostport.rsplit(":", 1)[1])


def server_binary():
  for name in ("semshare-server",):
    for d in (BINARY_DIR, os.path.join(BINARY_DIR, "server")):
      p = os.path.join(d, name)
      if os.access(p, os.X_OK):
        return p
  return None


def cli_binary():
  for d in (BINARY_DIR, os.path.join(BINARY_DIR, "tools")):
    p = os.path.join(d, "semshare")
    if os.access(p, os.X_OK):
      return p
  return None


_HELP_LINE = re.compile(r"^\s+--([a-z0-9][a-z0-9-]*)(?:[ =](\S+))?\s+(.*?)\s*$")


def parse_help(text):
  """`semshare-server --help` -> {flag: {"value": VALUE or None, "default": X or None}}.

  The contract: one line per flag, `  --NAME VALUE   help text (default: X)`.
  """
  flags = {}
  for line in text.splitlines():
    m = _HELP_LINE.match(line)
    if not m:
      continue
    d = re.search(r"\(default:?\s*([^)]*)\)\s*$", m.group(3))
    flags[m.group(1)] = {"value": m.group(2), "default": d.group(1).strip() if d else None}
  return flags


def load_yaml(path):
  with open(path) as f:
    return yaml.safe_load(f)


# ---- running the real server (tests that need the semshare-server binary) ----

def free_port():
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def http_get(url, timeout=2.0):
  import urllib.request
  with urllib.request.urlopen(url, timeout=timeout) as r:
    return r.status, r.read().decode()


def wait_until(pred, timeout_s, what, proc=None):
  import time
  end = time.monotonic() + timeout_s
  while time.monotonic() < end:
    if proc is not None and proc.poll() is not None:
      raise AssertionError(f"{what}: process exited with {proc.returncode}")
    try:
      if pred():
        return
    except Exception:  # not up yet: connection refused, 503, ...
      pass
    time.sleep(0.25)
  raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def model_path():
  m = str(testpaths.default_model_path())  # $SEMSHARE_MODEL or the installed default model
  assert os.path.isfile(m), f"model {m} is missing: run scripts/setup (or set SEMSHARE_MODEL)"
  return m


def start_server(args, log_path):
  """Starts semshare-server with args; returns the Popen. The caller stops it (stop_process);
  it dies with the test runner in any case (owned_process)."""
  log = open(log_path, "wb")
  return owned_process.spawn([server_binary()] + args, stdout=log, stderr=subprocess.STDOUT)


def stop_process(proc, timeout_s=40):
  """SIGTERM, then SIGKILL of its process group after timeout_s."""
  if proc.poll() is None:
    proc.terminate()
    try:
      proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
      pass
  owned_process.kill(proc)


def wait_server_ready(proc, grpc_port, metrics_port, api_key=None, timeout_s=180):
  """Ready = /metrics answers and one Generate through `semshare client` succeeds (the model is
  loaded: health is NOT_SERVING and requests fail until then)."""
  wait_until(lambda: http_get(f"http://127.0.0.1:{metrics_port}/metrics")[0] == 200, timeout_s,
             "/metrics", proc)
  argv = [cli_binary(), "client", "generate", "--target", f"127.0.0.1:{grpc_port}",
          "--prompt", "Say hi."]
  if api_key:
    argv += ["--api-key", api_key]
  wait_until(lambda: subprocess.run(argv, capture_output=True, timeout=60).returncode == 0,
             timeout_s, "a first Generate", proc)
