"""Fixtures of the service tests (helpers in service_common.py).

`make_server(args, api_keys=True)` starts a semshare-server for the calling module and stops it
(SIGTERM, then a check that it exited 0) when the module ends, so each module shares its
servers among its tests.
"""

import pytest

import service_common as sc  # (puts tests/ on sys.path)
import owned_process  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _no_process_outlives_the_session():
    """Whatever a test started and did not stop (also after a failed setup) is killed when the
    session ends; a module fixture's servers are stopped before that by the fixture itself."""
    yield
    owned_process.reap_all()


@pytest.fixture(scope="session")
def pairs():
    return sc.corpus_pairs()


@pytest.fixture(scope="module")
def make_server(tmp_path_factory):
    servers = []

    def make(args=(), api_keys=True, ready=True, name="server"):
        s = sc.Server(tmp_path_factory.mktemp(name), args, api_keys, name)
        servers.append(s)  # before start: a failed start is stopped too
        s.start()
        if ready:
            s.wait_ready()
        return s

    yield make
    for s in servers:
        running = s.proc is not None and s.proc.poll() is None
        rc = s.stop()
        if running:
            assert rc == 0, f"semshare-server exited with {rc} after SIGTERM:\n{s.log()}"
