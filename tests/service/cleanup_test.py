"""Every test stops what it started, also when it fails in setup (issue 16): a semshare-server
that does not come up is killed by the harness before the failure propagates, and a server
whose test runner is killed outright (SIGKILL: no finally, no fixture teardown, as a ctest
timeout does) dies with it. Each check looks the process up by pid in /proc."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

import service_common as sc


def _alive(pid: int) -> bool:
    """True while /proc/<pid> is a process that is not a zombie."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s  # bounds a hang; returns as soon as it is gone
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_server_that_fails_to_become_ready_is_killed(tmp_path):
    s = sc.Server(tmp_path / "s")
    s.start()  # the gRPC port is known; the model is still loading
    pid = s.proc.pid
    assert _alive(pid)
    with pytest.raises(pytest.fail.Exception, match="did not log"):
        s.wait_ready(timeout_s=0)  # fails at once: a setup failure
    assert s.proc.returncode is not None, "wait_ready failed but left the server running"
    assert not _alive(pid)
    assert s.proc not in sc.owned_process.live()


def test_server_dies_with_a_test_runner_killed_by_sigkill(tmp_path):
    # A child Python plays the test runner: it starts a server through the harness, prints its
    # pid, then hangs; we SIGKILL it, so none of its cleanup code can run.
    runner = subprocess.Popen(
        [sys.executable, "-c", f"""
import pathlib, sys, time
sys.path.insert(0, {str(sc.HERE)!r})
import service_common as sc
s = sc.Server(pathlib.Path({str(tmp_path / 's')!r})).start()
print(s.proc.pid, flush=True)
time.sleep(3600)
"""], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        line = runner.stdout.readline()
        assert line.strip().isdigit(), f"the runner did not start a server: {line!r}"
        pid = int(line)
        assert _alive(pid)
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    assert _wait_gone(pid), f"semshare-server (pid {pid}) outlived its killed test runner"
