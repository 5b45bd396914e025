"""Child processes that cannot outlive the test that started them (semshare-server, redis-server,
prometheus).

spawn() starts the process in its own process group (start_new_session) with a parent-death
signal: the kernel SIGKILLs it when the thread that started it ends, so not even a test runner
killed with SIGKILL (a ctest timeout) leaves it behind. Start these processes from the main
thread (a thread that exits takes its children with it). kill() SIGKILLs the whole group and
reaps the leader. Every process spawn() starts stays in a registry until kill() or a reaped exit;
reap_all() kills what is left (the conftest fixtures call it when a test or session ends, also
when setup failed).
"""

import ctypes
import os
import signal
import subprocess

_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
_live = {}  # pid -> Popen


def _die_with_parent():
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(argv, **kwargs) -> subprocess.Popen:
    proc = subprocess.Popen(argv, start_new_session=True, preexec_fn=_die_with_parent, **kwargs)
    _live[proc.pid] = proc
    return proc


def kill(proc: subprocess.Popen):
    """SIGKILL the process's group (it leads it) and reap the leader; no-op once reaped."""
    if proc is None:
        return
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    _live.pop(proc.pid, None)


def forget(proc: subprocess.Popen):
    """Drops an exited, reaped process from the registry."""
    if proc is not None and proc.returncode is not None:
        _live.pop(proc.pid, None)


def live() -> list:
    """The processes spawn() started that have not been reaped (running ones first checked)."""
    for proc in list(_live.values()):
        if proc.poll() is not None:
            _live.pop(proc.pid, None)
    return list(_live.values())


def reap_all() -> list:
    """SIGKILLs every process still registered; returns the argv[0] and pid of each it killed."""
    killed = []
    for proc in live():
        killed.append(f"{os.path.basename(str(proc.args[0]))} (pid {proc.pid})")
        kill(proc)
    return killed
