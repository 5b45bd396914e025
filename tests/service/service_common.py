"""Shared by the service tests: the real semshare-server on loopback, keys, prompts, /metrics.

A `Server` is one semshare-server process on 127.0.0.1 with kernel-chosen ports (--listen
127.0.0.1:0 --metrics-listen 127.0.0.1:0 --http-listen 127.0.0.1:0); the real ports come from
its first log lines ("grpc listening on HOST:PORT", "metrics on http://HOST:PORT/metrics",
"http listening on HOST:PORT"). Its stderr goes to a
file that failures quote. Tests never skip for a missing binary or model: that is a failure
saying how to get it, so a broken build cannot pass as "skipped".
"""

import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: testpaths.py

import owned_process  # noqa: E402
import testpaths  # noqa: E402

SOURCE_DIR = testpaths.SOURCE_DIR

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

# The installed package (scripts/setup: pip install ./clients/python into .venv).
from semshare_client import Client  # noqa: E402

# API keys of the test servers: two tenants with user keys, one admin (in a third tenant).
KEY_A = "tenant-a-user-key-000000000001"
KEY_B = "tenant-b-user-key-000000000002"
KEY_ADMIN = "ops-admin-key-0000000000000003"
API_KEYS_TEXT = f"""# key tenant role
{KEY_A} tenant-a user
{KEY_B} tenant-b user
{KEY_ADMIN} ops admin
"""

# Test prompts are ~150-250 tokens; 16 keeps every passage above the reuse floor while the short
# "good request" prompts (< 16 tokens) stay below it (cache result "bypass").
MIN_REUSE_TOKENS = 16
SHORT_PROMPT = "The capital of France is"

# Every family of the metrics contract (DESIGN.md section 7, docs/server.md) and its type. GPU
# gauges are exported only with --backend cuda.
METRIC_FAMILIES = {
    "semshare_time_to_first_token_seconds": "histogram",
    "semshare_request_duration_seconds": "histogram",
    "semshare_request_queue_seconds": "histogram",
    "semshare_prefill_seconds": "histogram",
    "semshare_inter_token_latency_seconds": "histogram",
    "semshare_requests_running": "gauge",
    "semshare_requests_waiting": "gauge",
    "semshare_prompt_tokens_total": "counter",
    "semshare_generation_tokens_total": "counter",
    "semshare_cache_lookups_total": "counter",
    "semshare_cache_hits_total": "counter",
    "semshare_reused_tokens_total": "counter",
    "semshare_recomputed_tokens_total": "counter",
    "semshare_match_similarity": "histogram",
    "semshare_kv_cache_bytes": "gauge",
    "semshare_gpu_memory_used_bytes": "gauge",
    "semshare_gpu_memory_total_bytes": "gauge",
    "semshare_cache_store_bytes": "gauge",
    "semshare_cache_store_entries": "gauge",
    "semshare_cache_store_evictions_total": "counter",
    "semshare_cache_store_errors_total": "counter",
    "semshare_requests_total": "counter",
}
GPU_FAMILIES = {"semshare_gpu_memory_used_bytes", "semshare_gpu_memory_total_bytes"}


def binary_dir() -> pathlib.Path:
    env = os.environ.get("SEMSHARE_BINARY_DIR")
    if not env:
        pytest.fail("SEMSHARE_BINARY_DIR is not set; run this test through ctest (scripts/test)")
    return pathlib.Path(env)


def _executable(*candidates) -> pathlib.Path:
    for p in candidates:
        if os.access(p, os.X_OK):
            return p
    pytest.fail(f"{candidates[0]} is missing: build it in {binary_dir()}")


def server_binary() -> pathlib.Path:
    b = binary_dir()
    return _executable(b / "semshare-server", b / "server" / "semshare-server")


def semshare_cli() -> pathlib.Path:
    b = binary_dir()
    return _executable(b / "tools" / "semshare", b / "semshare")


def model_path() -> pathlib.Path:
    p = testpaths.default_model_path()
    if not p.is_file():
        pytest.fail(f"model {p} is missing: run scripts/setup (or set SEMSHARE_MODEL)")
    return p


def write_api_keys(directory: pathlib.Path) -> pathlib.Path:
    path = directory / "api_keys.txt"
    path.write_text(API_KEYS_TEXT)
    return path


# ---- the server process ----

_GRPC_RE = re.compile(r"grpc listening on (\S+):(\d+)")
_METRICS_RE = re.compile(r"metrics on http://(\S+):(\d+)/metrics")
_HTTP_RE = re.compile(r"http listening on (\S+):(\d+)")


class Server:
    """One semshare-server process. `start()` returns once the gRPC port is known; `wait_ready()`
    once the log says "serving"."""

    def __init__(self, workdir: pathlib.Path, args=(), api_keys=True, name="server"):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{name}.log"
        self.args = ["--model", str(model_path()), "--listen", "127.0.0.1:0",
                     "--metrics-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                     "--min-reuse-tokens",
                     str(MIN_REUSE_TOKENS), "--log-level", "info"]
        if api_keys:
            self.args += ["--api-keys", str(write_api_keys(self.workdir))]
        self.args += [str(a) for a in args]
        self.proc = None
        self.grpc_port = None
        self.metrics_port = None
        self.http_port = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """The OpenAI-compatible API's base URL (the openai SDK's base_url)."""
        return f"http://127.0.0.1:{self.http_port}/v1"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _wait_log(self, pattern, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log())
            if m:
                return m
            if self.proc.poll() is not None:
                pytest.fail(f"semshare-server exited with {self.proc.returncode} before "
                            f"logging {pattern!r}:\n{self.log()}")
            time.sleep(0.02)
        pytest.fail(f"semshare-server did not log {pattern!r} within {timeout_s} s:\n{self.log()}")

    def start(self):
        env = dict(os.environ)
        # Flags only: no SEMSHARE_* variable of the caller's shell may change the server.
        for k in list(env):
            if k.startswith("SEMSHARE_") and k not in ("SEMSHARE_MODEL",):
                del env[k]
        self._log_file = open(self.log_path, "wb")
        # Its own process group, killed with the test runner (owned_process); killed here when
        # it does not come up, so a failed start leaves nothing running.
        self.proc = owned_process.spawn([str(server_binary())] + self.args,
                                        stdout=self._log_file, stderr=subprocess.STDOUT, env=env,
                                        cwd=self.workdir)
        try:
            m = self._wait_log(_GRPC_RE, 60)
        except BaseException:
            self.kill()
            raise
        self.grpc_port = int(m.group(2))
        return self

    def kill(self):
        """SIGKILL (the process group) and reap; no-op when not running."""
        owned_process.kill(self.proc)
        try:
            self._log_file.close()
        except Exception:
            pass

    def wait_ready(self, timeout_s: float = 180):
        try:
            self._wait_log(r"\bserving\b", timeout_s)
        except BaseException:
            self.kill()
            raise
        m = _METRICS_RE.search(self.log())
        if m:
            self.metrics_port = int(m.group(2))
        m = _HTTP_RE.search(self.log())
        if m:
            self.http_port = int(m.group(2))
        return self

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, then the exit status (SIGKILL and a failure after timeout_s)."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            owned_process.forget(self.proc)
            self._log_file.close()
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            owned_process.kill(self.proc)
            pytest.fail(f"semshare-server ignored SIGTERM for {timeout_s} s:\n{self.log()}")
        finally:
            owned_process.forget(self.proc)
            self._log_file.close()

    def openai(self, api_key=KEY_A, **kw):
        """The official openai SDK's client on this server's HTTP API."""
        import openai
        return openai.OpenAI(base_url=self.http_url, api_key=api_key, max_retries=0, **kw)

    def client(self, api_key=KEY_A, **kw) -> Client:
        return Client(self.target, api_key=api_key, **kw)

    def metrics(self) -> "Metrics":
        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            assert r.status == 200
            return Metrics(r.read().decode())


def start_server(workdir, args=(), api_keys=True, name="server") -> Server:
    return Server(workdir, args, api_keys, name).start().wait_ready()


# ---- health ----

def health_status(channel, service="", timeout=2.0):
    """The health status name (SERVING, NOT_SERVING, ...) or "UNREACHABLE"."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as e:
        if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return "UNREACHABLE"
        raise
    return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)


# ---- /metrics (Prometheus text format 0.0.4) ----

_SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Metrics:
    """Parsed /metrics: `types` (family -> type) and `samples` [(name, labels dict, value)]."""

    def __init__(self, text: str):
        self.text = text
        self.types = {}
        self.samples = []
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, fam, typ = line.split(None, 3)
                self.types[fam] = typ.strip()
            elif line and not line.startswith("#"):
                m = _SAMPLE_RE.match(line)
                assert m, f"unparsable /metrics line: {line!r}"
                labels = {k: v.replace('\\"', '"').replace("\\\\", "\\")
                          for k, v in _LABEL_RE.findall(m.group(2) or "")}
                self.samples.append((m.group(1), labels, float(m.group(3))))

    def get(self, name, **labels) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
        return sum(v for n, l, v in self.samples
                   if n == name and all(l.get(k) == str(x) for k, x in labels.items()))

    def has(self, name, **labels) -> bool:
        return any(n == name and all(l.get(k) == str(x) for k, x in labels.items())
                   for n, l, _ in self.samples)


# ---- prompts from the paraphrase corpus (data/paraphrase) ----

def corpus_pairs():
    """(sentence, paraphrase) of the corpus pairs labelled paraphrases (quality 1)."""
    try:
        return testpaths.corpus_pairs()
    except (OSError, ValueError) as e:
        pytest.fail(f"paraphrase corpus: {e}")


def passage(pairs, start, count=8, swap=()):
    """`count` consecutive corpus sentences from `start` joined into one passage; the sentences
    at the indices in `swap` replaced by their paraphrases. Eight sentences are ~170 tokens; two
    swapped keep the token-level similarity near 0.95 on the default model (measured with
    LookupReference), well over the default 0.8 threshold, so no test lowers it."""
    if start < 0 or start + count > len(pairs):
        pytest.fail(f"passage({start}, {count}) is past the corpus's {len(pairs)} paraphrase pairs")
    sel = pairs[start:start + count]
    return " ".join(p if i in swap else s for i, (s, p) in enumerate(sel))


def wait_lookup_hit(client, prompt, timeout_s=60.0):
    """Polls LookupReference until the store has published a reference `prompt` hits (the
    publication after a miss is asynchronous). Returns the last LookupReferenceResponse and the
    number of LookupReference calls made; fails after timeout_s."""
    deadline = time.monotonic() + timeout_s
    calls = 0
    while True:
        r = client.lookup_reference(prompt)
        calls += 1
        if r.hit:
            return r, calls
        if time.monotonic() > deadline:
            pytest.fail(f"no reference hit for the prompt within {timeout_s} s; last lookup: {r}")
        time.sleep(0.1)


def code_of(call):
    """The grpc.StatusCode and details of an RPC that must fail (AssertionError if it succeeds)."""
    try:
        result = call()
        if hasattr(result, "__next__"):  # a stream: errors arrive while reading it
            for _ in result:
                pass
    except grpc.RpcError as e:
        return e.code(), e.details()
    raise AssertionError("the call succeeded; it must fail")
