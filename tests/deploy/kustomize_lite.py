"""A minimal, strict kustomize: renders deploy/k8s overlays without the real tool.

Neither Debian 12 nor PyPI ships a real kustomize (Debian's kubernetes-client is kubectl 1.20 with
kustomize v2.0.3, which predates the `resources:` directories, `patches:` and `replicas:` fields the
overlays use, and PyPI's `kustomize` / `pykustomize` are unrelated or need Python >= 3.14). So the
tests render with this file, and, where a real kustomize is on the machine (`kustomize` or
`kubectl kustomize`, e.g. the kubectl of Google's Cloud SDK), also with it and require the same
objects (manifests_test.py).

Supported, exactly what deploy/k8s uses; any other kustomization field is an error, never ignored:
  resources: files (multi-document YAML) and directories holding a kustomization.yaml
  replicas:  [{name, count}]                   sets spec.replicas of the named workload
  images:    [{name, newName?, newTag?, digest?}]  rewrites containers[].image / initContainers
  patches:   [{path}]                          strategic-merge patches matched by kind + name
Strategic merge: maps merge recursively, null deletes a key, a patch with `$patch: delete` removes
the object, lists with a Kubernetes merge key (containers and env by name, volumeMounts by
mountPath, ...) merge element-wise (elements new to the list go first, as kustomize puts them), every other list
is replaced.
"""

import copy
import os
import sys

import yaml

_KNOWN_FIELDS = {"apiVersion", "kind", "resources", "replicas", "images", "patches"}

# Kubernetes patchMergeKey of the list fields that strategic merge merges element-wise (from the
# API types' `patchStrategy:"merge" patchMergeKey:...` tags). Ports: containerPort in containers,
# port in Services; the key present in the patch element decides.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "topologySpreadConstraints": "topologyKey",
    "hostAliases": "ip",
}
_PORT_KEYS = ("containerPort", "port")
_WORKLOADS = {"Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"}


class KustomizeError(Exception):
  pass


def _load_docs(path):
  with open(path) as f:
    return [d for d in yaml.safe_load_all(f) if d is not None]


def _merge_list(field, base, patch):
  key = _MERGE_KEYS.get(field)
  if key is None and field == "ports" and patch and all(isinstance(p, dict) for p in patch):
    key = next((k for k in _PORT_KEYS if all(k in p for p in patch)), None)
  if key is None or not all(isinstance(e, dict) for e in (base or []) + patch):
    return copy.deepcopy(patch)
  out = copy.deepcopy(base or [])
  added = []  # kustomize (kyaml) puts elements new to the list before the existing ones
  for elem in patch:
    if key not in elem:
      raise KustomizeError(f"list {field}: patch element without merge key {key}")
    match = next((i for i, b in enumerate(out) if b.get(key) == elem[key]), None)
    if elem.get("$patch") == "delete":
      if match is not None:
        out.pop(match)
    elif match is None:
      added.append(_merge_map({}, elem))
    else:
      out[match] = _merge_map(out[match], elem)
  return added + out


def _merge_map(base, patch):
  out = copy.deepcopy(base)
  for k, v in patch.items():
    if k.startswith("$"):
      raise KustomizeError(f"unsupported patch directive {k}")
    if v is None:
      out.pop(k, None)
    elif isinstance(v, dict) and isinstance(out.get(k), dict):
      out[k] = _merge_map(out[k], v)
    elif isinstance(v, list):
      out[k] = _merge_list(k, out.get(k), v)
    else:
      out[k] = _merge_map({}, v) if isinstance(v, dict) else copy.deepcopy(v)
  return out


def _group(api_version):
  return api_version.split("/")[0] if "/" in api_version else ""


def _split_image(image):
  """'name[:tag][@digest]' -> (name, tag, digest); a ':' after the last '/' starts the tag."""
  digest = None
  if "@" in image:
    image, digest = image.split("@", 1)
  tag = None
  slash = image.rfind("/")
  colon = image.rfind(":")
  if colon > slash:
    image, tag = image[:colon], image[colon + 1:]
  return image, tag, digest


def _set_images(obj, images):
  spec = obj.get("spec", {})
  pod = spec.get("template", {}).get("spec") if "template" in spec else None
  if obj.get("kind") == "CronJob":
    pod = spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
  if obj.get("kind") == "Pod":
    pod = spec
  if not pod:
    return
  for field in ("containers", "initContainers"):
    for c in pod.get(field, []):
      name, tag, digest = _split_image(c["image"])
      for rule in images:
        if rule["name"] != name:
          continue
        new_name = rule.get("newName", name)
        if "digest" in rule:
          c["image"] = f"{new_name}@{rule['digest']}"
        elif "newTag" in rule:
          c["image"] = f"{new_name}:{rule['newTag']}"
        else:
          c["image"] = new_name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def render(directory):
  """Returns the list of objects that `kustomize build directory` would print."""
  kfile = os.path.join(directory, "kustomization.yaml")
  if not os.path.isfile(kfile):
    raise KustomizeError(f"{directory}: no kustomization.yaml")
  with open(kfile) as f:
    k = yaml.safe_load(f) or {}
  unknown = set(k) - _KNOWN_FIELDS
  if unknown:
    raise KustomizeError(f"{kfile}: unsupported fields {sorted(unknown)}")
  objects = []
  for res in k.get("resources", []):
    path = os.path.normpath(os.path.join(directory, res))
    objects.extend(render(path) if os.path.isdir(path) else _load_docs(path))
  ids = [(o["kind"], o["metadata"]["name"]) for o in objects]
  if len(set(ids)) != len(ids):
    raise KustomizeError(f"{directory}: duplicate objects {ids}")
  for p in k.get("patches", []):
    if set(p) != {"path"}:
      raise KustomizeError(f"{kfile}: only `patches: - path:` is supported, got {p}")
    for patch in _load_docs(os.path.join(directory, p["path"])):
      target = next((i for i, o in enumerate(objects) if o["kind"] == patch["kind"] and
                     o["metadata"]["name"] == patch["metadata"]["name"] and
                     _group(o["apiVersion"]) == _group(patch["apiVersion"])), None)
      if target is None:
        raise KustomizeError(f"{p['path']}: no object {patch['kind']}/{patch['metadata']['name']}")
      if patch.get("$patch") == "delete":
        objects.pop(target)
      else:
        objects[target] = _merge_map(objects[target], patch)
  for r in k.get("replicas", []):
    hits = [o for o in objects if o["kind"] in _WORKLOADS and o["metadata"]["name"] == r["name"]]
    if not hits:
      raise KustomizeError(f"{kfile}: replicas for unknown workload {r['name']}")
    for o in hits:
      o.setdefault("spec", {})["replicas"] = r["count"]
  images = k.get("images", [])
  for img in images:
    if set(img) - {"name", "newName", "newTag", "digest"}:
      raise KustomizeError(f"{kfile}: unsupported image fields in {img}")
  if images:
    for o in objects:
      _set_images(o, images)
  return objects


def main(argv):
  if len(argv) != 2:
    print("usage: kustomize_lite.py DIR", file=sys.stderr)
    return 2
  yaml.safe_dump_all(render(argv[1]), sys.stdout, sort_keys=False)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
