"""Every reliability test stops what it started: servers, Redis and proxies are stopped by the
tests' own `finally` blocks and fixtures; whatever is still running when a test ends (a test
that failed between starting two servers and entering its `try`, a fixture whose setup failed)
is SIGKILLed here with its process group (tests/owned_process.py)."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/
import owned_process  # noqa: E402


@pytest.fixture(autouse=True)
def _no_process_outlives_the_test():
    yield
    owned_process.reap_all()
