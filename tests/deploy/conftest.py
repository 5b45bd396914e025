"""Whatever a deploy test started (semshare-server, prometheus) and did not stop, also after a
failed setup, is SIGKILLed with its process group when the session ends (module fixtures
keep theirs until then) (tests/owned_process.py)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
import owned_process  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _no_process_outlives_the_session():
    yield
    owned_process.reap_all()
