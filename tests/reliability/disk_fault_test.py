"""Disk-tier faults (--cache-dir): a full filesystem, cache files truncated or bit-flipped while
the server is down, and the server killed with SIGKILL in the middle of writing a record. In
every case requests succeed, the damage is counted on
semshare_cache_store_errors_total{tier="disk"}, and a damaged record is never served: the text
generated for its prompt equals a bypass (full prefill, no store) generation, greedy.
"""

import os
import pathlib
import subprocess
import threading
import time

import pytest

import reliability_common as rc

DEADLINE_S = 60.0


def _disk_errors(s):
    return rc.metric(s, "semshare_cache_store_errors_total", tier="disk")


def _records(d: pathlib.Path):
    return sorted(p for p in d.glob("*.ssref"))


def _assert_equals_bypass(c, prompt, max_tokens=12):
    """The prompt's greedy text through the store equals a bypass generation, and the request
    did not reuse anything it should not have (a hit is only possible on an intact record)."""
    auto = rc.greedy(c, prompt, max_tokens, "auto")
    ref = rc.greedy(c, prompt, max_tokens, "bypass")
    assert auto.text == ref.text, (auto.cache, auto.text, ref.text)
    return auto


@pytest.fixture
def tmpfs(tmp_path):
    """A 12 MiB tmpfs (we run as root in CI and here); if mounting is refused, fail with the
    reason rather than pass silently."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root / CAP_SYS_ADMIN): {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full(tmp_path, tmpfs):
    cache = tmpfs / "cache"
    s = rc.make_server(tmp_path / "s", ["--cache-dir", cache])
    c = s.client(timeout=DEADLINE_S)
    try:
        # Fill the filesystem to all but ~1 MiB, less than one record (7-11.5 MB for a 160-250
        # token passage with this model), so every publication to disk fails with ENOSPC.
        st = os.statvfs(tmpfs)
        free = st.f_bavail * st.f_frsize
        with open(tmpfs / "ballast", "wb") as f:
            f.write(b"\0" * max(0, free - (1 << 20)))
        before = _disk_errors(s)
        prompts = [rc.passage(400 + 8 * i) for i in range(3)]
        for p in prompts:
            r = rc.greedy(c, p, 4)
            assert r.cache.result == "miss"
        # Each failed write is counted; the publication still reached the memory tier.
        rc.wait_metric(s, "semshare_cache_store_errors_total", lambda v: v >= before + 3,
                       tier="disk")
        stats = rc.admin_stats(s)
        assert stats.publish_failed >= 3, stats
        assert rc.metric(s, "semshare_cache_store_entries", tier="disk") == 0
        assert _records(cache) == [] and not list(cache.glob(".tmp-*")), os.listdir(cache)
        # Served from memory: the memory tier is unaffected.
        r = rc.greedy(c, prompts[0], 4)
        assert r.cache.result == "hit"
        # Space comes back: the same process writes to disk again (no restart).
        (tmpfs / "ballast").unlink()
        r = rc.greedy(c, rc.passage(440), 4)
        assert r.cache.result == "miss"
        rc.wait_metric(s, "semshare_cache_store_entries", lambda v: v >= 1, tier="disk")
        assert len(_records(cache)) == 1
    finally:
        c.close()
        rc.stop_ok(s)


def _flip(path: pathlib.Path, offset: int):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


def test_truncated_and_bit_flipped_files_are_dropped(tmp_path):
    cache = tmp_path / "cache"
    args = ["--cache-dir", cache]
    s = rc.make_server(tmp_path / "s", args)
    c = s.client(timeout=DEADLINE_S)
    prompts = [rc.passage(448 + 8 * i) for i in range(4)]
    try:
        for p in prompts:
            assert rc.greedy(c, p, 4).cache.result == "miss"
        rc.wait_metric(s, "semshare_cache_store_entries", lambda v: v >= 4, tier="disk")
    finally:
        c.close()
        rc.stop_ok(s)
    files = _records(cache)
    assert len(files) == 4
    # Which file belongs to which prompt does not matter: damage three of the four, leave one.
    sizes = [f.stat().st_size for f in files]
    os.truncate(files[0], sizes[0] // 2)   # truncated in the KV
    _flip(files[1], 40)                    # a bit in the header
    _flip(files[2], sizes[2] - 100)        # a bit in the last KV chunk
    # Restart on the same directory (fresh memory tier: only the disk holds references).
    s = rc.restart(s)
    c = s.client(timeout=DEADLINE_S)
    try:
        hits = 0
        for p in prompts:
            r = _assert_equals_bypass(c, p)
            hits += r.cache.result == "hit"
        # Exactly the intact record can hit; the three damaged ones are quarantined and counted
        # (the truncated and header-flipped ones at start-up, the KV-flipped one when read).
        assert hits == 1
        quarantined = sorted(p.name for p in (cache / "quarantine").iterdir())
        assert quarantined == sorted(f.name for f in files[:3]), quarantined
        # The store's figures reach /metrics once a second (server_main's stats thread).
        rc.wait_metric(s, "semshare_cache_store_errors_total", lambda v: v >= 3, tier="disk")
        # The damaged prompts were republished as fresh, intact records and now hit.
        rc.wait_metric(s, "semshare_cache_store_entries", lambda v: v >= 4, tier="disk")
        for p in prompts:
            assert rc.greedy(c, p, 4).cache.result == "hit"
    finally:
        c.close()
        rc.stop_ok(s)


def test_sigkill_while_publishing(tmp_path):
    cache = tmp_path / "cache"
    s = rc.make_server(tmp_path / "s", ["--cache-dir", cache, "--workers", "2"])
    c = s.client(timeout=DEADLINE_S)
    prompts = [rc.passage(480 + 8 * i) for i in range(10)]
    seen_tmp = []
    stop = threading.Event()

    def watch():
        # Kill at the moment a record is being written: a ".tmp-*" file exists.
        while not stop.is_set():
            try:
                tmp = [n for n in os.listdir(cache) if n.startswith(".tmp-")]
            except FileNotFoundError:
                tmp = []
            if tmp and len(_records(cache)) >= 2:
                s.proc.kill()
                seen_tmp.extend(tmp)
                return
            time.sleep(0.0005)

    w = threading.Thread(target=watch)
    w.start()
    errors = []

    def send(p):
        try:
            rc.greedy(c, p, 2)
        except Exception as e:  # noqa: BLE001  (the kill makes the rest fail: expected)
            errors.append(e)

    threads = [threading.Thread(target=send, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    w.join()
    c.close()
    s.proc.wait()
    assert seen_tmp, "the server finished every write before the watcher saw a temp file"
    assert s.proc.returncode == -9
    before = {f.name: f.read_bytes() for f in _records(cache)}
    # Restart on the same directory: it starts, removes the interrupted temp files, indexes
    # only complete records and serves.
    s = rc.restart(s)
    c = s.client(timeout=DEADLINE_S)
    try:
        assert not list(cache.glob(".tmp-*"))
        entries = rc.metric(s, "semshare_cache_store_entries", tier="disk")
        assert entries == len(before) - len(list((cache / "quarantine").glob("*.ssref")))
        for p in prompts:
            _assert_equals_bypass(c, p, 8)
        assert rc.metric(s, "semshare_requests_total", method="Generate", code="OK") >= 20
    finally:
        c.close()
        rc.stop_ok(s)
