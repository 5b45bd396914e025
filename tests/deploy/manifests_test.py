"""deploy/k8s: both overlays render, validate against the Kubernetes schemas, and agree with the
server's contract (ports, probes, drain period, config keys) and with each other.

Rendering: kustomize_lite.py (no real kustomize is installable from Debian 12 or PyPI); where a
real kustomize exists on the machine the real output must equal it object for object.
Schemas: kubernetes-validate (PyPI, schemas bundled, offline), strict mode (unknown fields are
errors), for Kubernetes 1.30 (the oldest with the preStop `sleep` action on by default) and 1.37.
ServiceMonitor is a CRD with no schema there: it is checked against the Service it selects.
"""

import copy
import json
import os
import subprocess

import kubernetes_validate
import pytest
import yaml

import deploy_common as dc
import kustomize_lite

K8S_VERSIONS = ("1.30.0", "1.37.0")
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


@pytest.fixture(scope="module", params=dc.OVERLAYS)
def rendered(request):
  return request.param, dc.render(request.param)


def test_overlay_renders_expected_objects(rendered):
  overlay, objs = rendered
  kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
  base = {("Deployment", "semshare"), ("Service", "semshare"), ("ConfigMap", "semshare-config"),
          ("Secret", "semshare-secrets"), ("PodDisruptionBudget", "semshare"),
          ("NetworkPolicy", "semshare"), ("ServiceAccount", "semshare")}
  assert base <= kinds
  if overlay == "gpu":
    assert {("HorizontalPodAutoscaler", "semshare"), ("ServiceMonitor", "semshare"),
            ("StatefulSet", "semshare-redis"), ("Service", "semshare-redis"),
            ("Job", "semshare-redis-cluster-init"), ("PersistentVolumeClaim", "semshare-models")
            } <= kinds


@pytest.mark.parametrize("overlay", dc.OVERLAYS)
def test_real_kustomize_agrees(overlay):
  argv = dc.real_kustomize()
  if argv is None:
    pytest.skip("no real kustomize on this machine (neither `kustomize` nor kubectl >= 1.21)")
  out = subprocess.run(argv + [os.path.join(dc.K8S, "overlays", overlay)], check=True,
                       capture_output=True, text=True).stdout
  real = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(out) if o}
  mine = {(o["kind"], o["metadata"]["name"]): o for o in dc.render(overlay)}
  assert sorted(real) == sorted(mine)
  for key, obj in mine.items():
    assert obj == real[key], f"{overlay}: {key} differs from real kustomize"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates(rendered, version):
  overlay, objs = rendered
  checked = 0
  for o in objs:
    if (o["apiVersion"], o["kind"]) in CRD_KINDS:
      continue
    kubernetes_validate.validate(o, version, strict=True)
    checked += 1
  assert checked >= 7


def test_validator_rejects_broken_manifests():
  """The schema check can fail: a misspelt field, a wrong type, a missing required field."""
  dep = dc.find(dc.render("cpu-demo"), "Deployment", "semshare")
  bad = []
  d = copy.deepcopy(dep)
  d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 1}
  bad.append(d)
  d = copy.deepcopy(dep)
  d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "50051"
  bad.append(d)
  d = copy.deepcopy(dep)
  del d["spec"]["selector"]
  bad.append(d)
  for d in bad:
    with pytest.raises(kubernetes_validate.ValidationError):
      kubernetes_validate.validate(d, K8S_VERSIONS[-1], strict=True)


def test_container_ports_probes_and_grace(rendered):
  overlay, objs = rendered
  dep, c = dc.server_container(objs)
  cfg = dc.config_file(objs)
  pod = dep["spec"]["template"]["spec"]
  ports = {p["name"]: p["containerPort"] for p in c["ports"]}
  assert ports == {"grpc": dc.GRPC_PORT, "metrics": dc.METRICS_PORT}
  assert dc.port_of(cfg["listen"]) == ports["grpc"]
  assert dc.port_of(cfg["metrics-listen"]) == ports["metrics"]
  # Reachable from other pods: not loopback (the server binds loopback without --api-keys).
  assert cfg["listen"].startswith("0.0.0.0:") and cfg["metrics-listen"].startswith("0.0.0.0:")
  assert cfg["api-keys"].startswith(dc.SECRETS_MOUNT + "/")
  for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
    g = c[probe]["grpc"]
    assert g["port"] == dc.GRPC_PORT and g.get("service", "") in dc.HEALTH_SERVICES, probe
  # A terminating pod leaves the Service's endpoints at once; the preStop sleep covers the time
  # until kube-proxies and clients see that, then SIGTERM starts the drain.
  pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
  assert 1 <= pre_stop <= 15
  # Liveness must not kill a pod that is draining (health NOT_SERVING for up to drain-seconds).
  lv = c["livenessProbe"]
  assert lv["periodSeconds"] * lv["failureThreshold"] > cfg["drain-seconds"]
  assert pod["terminationGracePeriodSeconds"] >= pre_stop + cfg["drain-seconds"] + dc.GRACE_MARGIN_S
  assert c["args"] == ["--config", dc.CONFIG_MOUNT + "/config.json"]
  mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
  assert mounts[dc.CONFIG_MOUNT]["readOnly"] and mounts[dc.SECRETS_MOUNT]["readOnly"]
  assert cfg["cache-dir"] in mounts and "/tmp" in mounts
  assert cfg["model"].startswith("/models/")
  if overlay == "gpu":
    assert "/models" in mounts
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert cfg["backend"] == "cuda"
  else:
    assert cfg["backend"] == "cpu" and "redis" not in cfg


def test_security_context(rendered):
  _, objs = rendered
  for o in objs:
    spec = o.get("spec", {})
    pod = spec.get("template", {}).get("spec")
    if pod is None:
      continue
    assert pod["securityContext"]["runAsNonRoot"] is True, o["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"]:
      sc = c["securityContext"]
      assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
      assert sc["capabilities"]["drop"] == ["ALL"]
      assert "limits" in c["resources"] and "requests" in c["resources"]


def test_selectors_match(rendered):
  """Service, PDB, NetworkPolicy, HPA and ServiceMonitor all point at the server's pods/ports."""
  overlay, objs = rendered
  dep, c = dc.server_container(objs)
  labels = dep["spec"]["template"]["metadata"]["labels"]
  sel = dep["spec"]["selector"]["matchLabels"]
  assert sel.items() <= labels.items()
  svc = dc.find(objs, "Service", "semshare")
  assert svc["spec"]["selector"].items() <= labels.items()
  assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"grpc": dc.GRPC_PORT,
                                                                  "metrics": dc.METRICS_PORT}
  container_ports = {p["name"] for p in c["ports"]}
  assert {p["targetPort"] for p in svc["spec"]["ports"]} <= container_ports
  assert dc.find(objs, "PodDisruptionBudget", "semshare")["spec"]["selector"]["matchLabels"] == sel
  np = dc.find(objs, "NetworkPolicy", "semshare")
  assert np["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
  assert {p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"]} <= container_ports
  if overlay == "gpu":
    hpa = dc.find(objs, "HorizontalPodAutoscaler", "semshare")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "semshare"}
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "semshare_requests_waiting"
    assert hpa["spec"]["metrics"][1]["pods"]["metric"]["name"] == "semshare_kv_cache_utilization"
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    sm = dc.find(objs, "ServiceMonitor", "semshare")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert [e["port"] for e in sm["spec"]["endpoints"]] == ["metrics"]
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
  else:
    assert dep["spec"]["replicas"] == 1


def test_gpu_redis_endpoint_points_at_the_statefulset():
  objs = dc.render("gpu")
  cfg = dc.config_file(objs)
  sts = dc.find(objs, "StatefulSet", "semshare-redis")
  svc = dc.find(objs, "Service", "semshare-redis")
  assert svc["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == "semshare-redis"
  assert cfg["redis"].startswith("redis-cluster://")
  seeds = cfg["redis"][len("redis-cluster://"):].split(",")
  assert len(seeds) >= 3
  for s in seeds:
    host, port = s.rsplit(":", 1)
    pod, service = host.split(".", 1)
    assert service == "semshare-redis" and int(port) == 6379
    assert pod.startswith("semshare-redis-") and int(pod.rsplit("-", 1)[1]) < sts["spec"]["replicas"]
  # The server's egress policy allows the Redis pods' port; Redis's ingress allows the server.
  np = dc.find(objs, "NetworkPolicy", "semshare")
  redis_labels = sts["spec"]["template"]["metadata"]["labels"]
  egress = [e for e in np["spec"]["egress"]
            if any(t.get("podSelector", {}).get("matchLabels", {}).items() <= redis_labels.items()
                   and "namespaceSelector" not in t for t in e["to"])]
  assert any(p["port"] == 6379 for e in egress for p in e["ports"])
  assert sts["spec"]["replicas"] == 6  # 3 masters + 3 replicas: --cluster-replicas 1
  job = dc.find(objs, "Job", "semshare-redis-cluster-init")
  script = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
  assert "n=6" in script and "--cluster-replicas 1" in script


def test_config_keys_are_contract_flags(rendered):
  """Every config key is a flag of the contract (docs/deploy.md); the real --help is checked by
  server_flags_test.py once the server exists."""
  _, objs = rendered
  contract = {"config", "model", "listen", "metrics-listen", "backend", "threads", "workers",
              "max-queue", "max-prompt-tokens", "max-new-tokens", "max-message-bytes",
              "max-stop-strings", "max-messages", "drain-seconds", "cache-memory-bytes",
              "cache-dir", "cache-disk-bytes", "redis", "redis-ttl-seconds", "min-reuse-tokens",
              "similarity-threshold", "api-keys", "tls-cert", "tls-key", "tls-client-ca",
              "log-level"}
  assert set(dc.config_file(objs)) <= contract
  _, c = dc.server_container(objs)
  for e in c.get("env", []):
    assert e["name"].startswith("SEMSHARE_")
    assert e["name"][len("SEMSHARE_"):].lower().replace("_", "-") in contract


# ---- kustomize_lite's own semantics, on hand-made inputs ----

def _write(tmp_path, name, docs):
  p = tmp_path / name
  p.parent.mkdir(parents=True, exist_ok=True)
  p.write_text(yaml.safe_dump_all(docs) if isinstance(docs, list) else yaml.safe_dump(docs))


def test_kustomize_lite_semantics(tmp_path):
  dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
         "spec": {"replicas": 2, "template": {"spec": {"containers": [
             {"name": "a", "image": "img:1", "env": [{"name": "X", "value": "1"}],
              "args": ["--x"]}]}}}}
  cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}}
  _write(tmp_path, "base/res.yaml", [dep, cm])
  _write(tmp_path, "base/kustomization.yaml", {"resources": ["res.yaml"]})
  patch = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
           "spec": {"replicas": None, "template": {"spec": {"containers": [
               {"name": "a", "env": [{"name": "Y", "value": "2"}], "args": ["--y"]},
               {"name": "b", "image": "other"}]}}}}
  _write(tmp_path, "ov/p.yaml", patch)
  _write(tmp_path, "ov/del.yaml", {"apiVersion": "v1", "kind": "ConfigMap",
                                   "metadata": {"name": "c"}, "$patch": "delete"})
  _write(tmp_path, "ov/kustomization.yaml", {
      "resources": ["../base"], "patches": [{"path": "p.yaml"}, {"path": "del.yaml"}],
      "images": [{"name": "img", "newName": "new", "newTag": "9"}]})
  out = kustomize_lite.render(str(tmp_path / "ov"))
  assert [o["kind"] for o in out] == ["Deployment"]
  spec = out[0]["spec"]
  assert "replicas" not in spec
  cs = spec["template"]["spec"]["containers"]
  assert [c["name"] for c in cs] == ["b", "a"]
  assert cs[1]["image"] == "new:9" and cs[0]["image"] == "other"
  assert cs[1]["env"] == [{"name": "Y", "value": "2"}, {"name": "X", "value": "1"}]
  assert cs[1]["args"] == ["--y"]  # plain lists are replaced
  _write(tmp_path, "bad/kustomization.yaml", {"resources": ["../base"], "namePrefix": "x-"})
  with pytest.raises(kustomize_lite.KustomizeError):
    kustomize_lite.render(str(tmp_path / "bad"))


def test_docs_state_images_not_built_in_ci():
  with open(os.path.join(dc.SOURCE_DIR, "docs", "deploy.md")) as f:
    text = f.read()
  assert "not built in CI" in text
  with open(os.path.join(dc.DEPLOY, "grafana", "semshare-dashboard.json")) as f:
    json.load(f)
