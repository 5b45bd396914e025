"""Shared by the reliability tests: the real semshare-server (tests/service/service_common.py,
imported read-only), real redis-server processes, a fault-injecting loopback TCP proxy, and
small helpers (metrics polling, corpus prompts, bypass-equality checks).

Redis processes follow tests/redis_harness.h: a free loopback port, a temp directory,
appendonly + appendfsync always (so a node killed with SIGKILL and restarted on the same port and
directory comes back with its data), started in the foreground and killed by the test.
"""

import os
import pathlib
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "service"))

import service_common as sc  # noqa: E402
from service_common import KEY_A, KEY_B, KEY_ADMIN  # noqa: E402,F401  (re-exported)
import owned_process  # noqa: E402  (tests/, on sys.path through service_common)


# ---- the server ----

def make_server(workdir, args=(), name="server", default_log_level=False) -> sc.Server:
    """A started, ready semshare-server. default_log_level drops the harness' explicit
    `--log-level info` so the server runs at its built-in default."""
    s = sc.Server(workdir, [str(a) for a in args], True, name)
    if default_log_level:
        i = s.args.index("--log-level")
        del s.args[i:i + 2]
    return s.start().wait_ready()  # (a server that fails to come up is killed there)


def restart(server: sc.Server) -> sc.Server:
    """Starts the same command line again (same --cache-dir etc.) on new kernel-chosen ports,
    appending to a fresh log file next to the old one."""
    old_log = server.log_path
    n = 1
    while (old_log.parent / f"{old_log.stem}.{n}.log").exists():
        n += 1
    server.log_path = old_log.parent / f"{old_log.stem}.{n}.log"
    server.proc = None
    return server.start().wait_ready()


def sigkill(server: sc.Server):
    server.kill()


def stop_ok(server: sc.Server):
    """SIGTERM and require a clean exit (the drain path works after the faults)."""
    rc = server.stop()
    assert rc == 0, f"semshare-server exited with {rc} after SIGTERM:\n{server.log()}"


def metric(server: sc.Server, name, **labels) -> float:
    return server.metrics().get(name, **labels)


def wait_metric(server, name, pred, timeout_s=30.0, **labels) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        v = metric(server, name, **labels)
        if pred(v):
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"{name}{labels} = {v} did not reach the expected value in {timeout_s} s"
                        f"\nlog tail:\n{server.log()[-3000:]}")
        time.sleep(0.1)


def admin_stats(server):
    """CacheAdmin.GetStats (admin key)."""
    with server.client(api_key=KEY_ADMIN) as c:
        return c.stats(timeout=10)


def list_ids(server, tenant) -> set:
    """Ids of every reference of `tenant` in any tier (CacheAdmin.ListReferences)."""
    with server.client(api_key=KEY_ADMIN) as c:
        return {x.id for x in c.list_references(tenant=tenant, limit=10000, timeout=30).references}


# ---- prompts ----

def pairs():
    return sc.corpus_pairs()


def passage(start, count=8, swap=()):
    return sc.passage(pairs(), start, count, swap)


def greedy(client, prompt, max_tokens=8, policy="auto", timeout=120):
    return client.generate(prompt, max_tokens=max_tokens, cache_policy=policy, ignore_eos=True,
                           timeout=timeout)


# ---- Redis ----

def _port_free(port) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port(lo=22700, hi=22768) -> int:
    """A free port p with p + 10000 free too, both below Linux's ephemeral range (32768 and up),
    so parallel tests' outgoing connections cannot take it before our server binds it. Disjoint
    from tests/redis_harness.h's [20000, 22700)."""
    rng = random.Random(os.getpid() * 7919 + time.time_ns())
    for _ in range(1000):
        p = rng.randrange(lo, hi)
        if _port_free(p) and _port_free(p + 10000):
            return p
    pytest.fail("no free loopback port")


class RedisServer:
    """One redis-server on 127.0.0.1 (see the module docstring)."""

    def __init__(self):
        for b in ("redis-server", "redis-cli"):
            if shutil.which(b) is None:
                pytest.fail(f"{b} not found: run scripts/setup (it installs the Debian packages "
                            "redis-server and redis-tools)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="semshare-rel-redis-")
        with open(os.path.join(self.dir, "redis.conf"), "w") as f:
            f.write(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\ndaemonize no\n"
                    "protected-mode no\nsave \"\"\nappendonly yes\nappendfsync always\n"
                    f"enable-debug-command yes\nlogfile {self.dir}/redis.log\n")
        self.proc = None
        self.launch()

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def launch(self):
        out = open(os.path.join(self.dir, "stdout.log"), "ab")
        self.proc = owned_process.spawn(["redis-server", os.path.join(self.dir, "redis.conf")],
                                        stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.cli("PING", check=False) == "PONG":
                return
            if self.proc.poll() is not None:
                self.kill()
                pytest.fail(f"redis-server exited; see {self.dir}/redis.log")
            time.sleep(0.02)
        self.kill()
        pytest.fail(f"redis-server on port {self.port} did not answer PING within 15 s")

    def cli(self, *args, check=True) -> str:
        r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args],
                           capture_output=True, text=True, timeout=20)
        if check and r.returncode != 0:
            raise RuntimeError(f"redis-cli {args}: {r.stderr}")
        return r.stdout.strip()

    def dbsize(self) -> int:
        return int(self.cli("DBSIZE"))

    def kill(self):
        """SIGKILL: no shutdown, no save (the append-only file survives)."""
        owned_process.kill(self.proc)
        self.proc = None

    def restart(self):
        self.kill()
        self.launch()

    def close(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- a fault-injecting TCP proxy ----

class FaultProxy:
    """Loopback TCP proxy in front of `upstream_port`, forwarding both directions. Modes, set at
    any time with set_mode() and applied to the bytes forwarded from then on:
      "pass"  forward as is;
      "delay" sleep `delay_s` before forwarding each chunk (a slow network or a slow server);
      "drop"  read and discard every byte in both directions (a black hole: connections stay
              open, nothing ever answers);
      "reset" close every open connection and refuse new ones (accept then close at once).
    """

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.delay_s = 0.0
        self._lock = threading.Lock()
        self._conns = []
        self.forwarded = 0  # bytes forwarded (both directions)
        self.dropped = 0    # bytes discarded in mode "drop"
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def set_mode(self, mode, delay_s=0.0):
        assert mode in ("pass", "delay", "drop", "reset")
        with self._lock:
            self.mode, self.delay_s = mode, delay_s
            if mode == "reset":
                for c in self._conns:
                    _close(c)
                self._conns.clear()

    def _accept_loop(self):
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == "reset":
                _close(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            mode, delay = self.mode, self.delay_s
            if mode == "drop":
                self.dropped += len(data)
                continue
            if mode == "delay":
                time.sleep(delay)
            try:
                dst.sendall(data)
                self.forwarded += len(data)
            except OSError:
                break
        _close(src)
        _close(dst)

    def close(self):
        self._stop = True
        _close(self._listener)
        with self._lock:
            for c in self._conns:
                _close(c)
            self._conns.clear()


def _close(s):
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
