"""Fixtures of the service tests (helpers in service_common.py).

`make_server(args, api_keys=True)` starts a semshare-server for the calling module and stops it
(SIGTERM, then a check that it exited 0) when the module ends, so each module shares its
servers among its tests.
"""

import pytest

import service_common as sc


@pytest.fixture(scope="session")
def pairs():
    return sc.mrpc_pairs()


@pytest.fixture(scope="module")
def make_server(tmp_path_factory):
    servers = []

    def make(args=(), api_keys=True, ready=True, name="server"):
        s = sc.Server(tmp_path_factory.mktemp(name), args, api_keys, name).start()
        servers.append(s)
        if ready:
            s.wait_ready()
        return s

    yield make
    for s in servers:
        running = s.proc.poll() is None
        rc = s.stop()
        if running:
            assert rc == 0, f"semshare-server exited with {rc} after SIGTERM:\n{s.log()}"
