"""Redis faults: killed (SIGKILL) mid-load and restarted; slowed and black-holed through a
loopback proxy. Requests keep succeeding (misses, full prefill) within their deadline, the
errors are counted on semshare_cache_store_errors_total{tier="redis"}, and once Redis is back
the same server processes (never restarted) publish to it and a second replica sharing the Redis
hits the references the first one published.
"""

import concurrent.futures as cf
import time

import pytest

import reliability_common as rc
from reliability_common import sc

# Every request of these tests must finish well within this deadline even while Redis is dead
# or black-holed: the Redis client's command timeout is 500 ms and connect timeout 200 ms
# (cache_store/README.md), so a request pays at most a few of those on top of its compute.
DEADLINE_S = 30.0


@pytest.fixture
def redis():
    r = rc.RedisServer()
    yield r
    r.close()


def _redis_errors(server):
    return rc.metric(server, "semshare_cache_store_errors_total", tier="redis")


def _generate_ok(client, prompt, **kw):
    t0 = time.monotonic()
    r = client.generate(prompt, max_tokens=2, ignore_eos=True, timeout=DEADLINE_S, **kw)
    return r, time.monotonic() - t0


def test_redis_killed_mid_load_then_restarted(tmp_path, redis):
    # Two replicas share one Redis (small memory budgets are not needed: the second replica has
    # never seen the prompts, so its hits can only come from Redis).
    args = ["--redis", f"redis://{redis.addr}", "--workers", "1"]
    s1 = rc.make_server(tmp_path / "s1", args, name="s1")
    s2 = rc.make_server(tmp_path / "s2", args, name="s2")
    c1, c2 = s1.client(timeout=DEADLINE_S), s2.client(timeout=DEADLINE_S)
    try:
        # Healthy: s1 publishes, s2 hits it through Redis.
        p0 = rc.passage(0)
        r, _ = _generate_ok(c1, p0)
        assert r.cache.result == "miss"
        look, _ = sc.wait_lookup_hit(c2, p0)
        assert look.hit
        assert redis.dbsize() > 0  # (the Redis tier exports no entry gauge: Redis is shared)
        errors_before = _redis_errors(s1)

        # Mid-load: 4 client threads send fresh passages while Redis is killed with SIGKILL.
        prompts = [rc.passage(8 + 8 * i) for i in range(12)]
        results, failures, latencies = [], [], []

        def send(p):
            try:
                r, dt = _generate_ok(c1, p)
                results.append(r)
                latencies.append(dt)
            except Exception as e:  # noqa: BLE001  (collected and asserted below)
                failures.append(repr(e))

        with cf.ThreadPoolExecutor(4) as ex:
            futs = [ex.submit(send, p) for p in prompts[:4]]
            time.sleep(0.3)
            redis.kill()
            futs += [ex.submit(send, p) for p in prompts[4:]]
            for f in futs:
                f.result()
        assert not failures, f"requests failed while Redis was down: {failures}"
        assert len(results) == len(prompts)
        assert all(r.cache.result in ("miss", "hit") for r in results)
        assert max(latencies) < DEADLINE_S
        # Lookups and publications against a dead Redis are counted as Redis-tier errors.
        errs = rc.wait_metric(s1, "semshare_cache_store_errors_total",
                              lambda v: v > errors_before, tier="redis")
        assert errs > errors_before

        # While it is down a new prompt is served with a full prefill (a miss).
        p_down = rc.passage(104)
        r, dt = _generate_ok(c1, p_down)
        assert r.cache.result == "miss" and r.usage.reused_tokens == 0
        assert r.usage.recomputed_tokens == r.usage.prompt_tokens
        # s2 cannot see it (Redis is dead) and still answers.
        assert not c2.lookup_reference(p_down, timeout=DEADLINE_S).hit

        # Redis comes back on the same port and directory (append-only file: p0 survives).
        redis.restart()
        # Neither server restarts: s1 publishes a new prompt to Redis, s2 hits it from Redis.
        # A miss on s1 publishes asynchronously (memory, then Redis); s2 polls for it. If that
        # publication fell into the Redis client's back-off window after the failures, it is
        # not retried, so after 15 s publish a fresh (non-overlapping) passage.
        deadline = time.monotonic() + 60
        for k in range(20):
            p_after = rc.passage(112 + 8 * k)
            r, _ = _generate_ok(c1, p_after)
            assert r.cache.result == "miss", r.cache
            poll_until = min(deadline, time.monotonic() + 15)
            look = c2.lookup_reference(p_after, timeout=DEADLINE_S)
            while not look.hit and time.monotonic() < poll_until:
                time.sleep(0.2)
                look = c2.lookup_reference(p_after, timeout=DEADLINE_S)
            if look.hit or time.monotonic() >= deadline:
                break
        assert look.hit, (
            f"s2 never hit a reference s1 published after Redis restarted; Redis keys "
            f"{redis.dbsize()}; s1 {rc.admin_stats(s1)}; s2 {rc.admin_stats(s2)}; last s1 "
            f"response {r.cache}; last s2 lookup {look}")
        print(f"s2 hit the {k + 1}. passage s1 published after the restart")
        # s2 serves a Generate that hits the Redis reference.
        r2, _ = _generate_ok(c2, p_after)
        assert r2.cache.result == "hit", r2.cache
        assert r2.cache.reference_id == look.reference_id
        # The reference published before the crash survived in Redis (append-only file).
        assert c2.lookup_reference(p0, timeout=DEADLINE_S).hit
        assert rc.metric(s2, "semshare_requests_total", method="Generate", code="OK") >= 1
    finally:
        c1.close()
        c2.close()
        rc.stop_ok(s1)
        rc.stop_ok(s2)


def test_redis_slow_and_black_holed_through_proxy(tmp_path, redis):
    proxy = rc.FaultProxy(redis.port)
    s = rc.make_server(tmp_path / "s", ["--redis", f"redis://127.0.0.1:{proxy.port}"])
    c = s.client(timeout=DEADLINE_S)
    try:
        r, _ = _generate_ok(c, rc.passage(280))
        assert r.cache.result == "miss"
        deadline = time.monotonic() + 30
        while redis.dbsize() == 0:  # publication is asynchronous
            assert time.monotonic() < deadline, "the first publication never reached Redis"
            time.sleep(0.1)
        assert proxy.forwarded > 0

        # Slow: 100 ms per forwarded chunk, under the client's 500 ms command timeout.
        proxy.set_mode("delay", 0.1)
        for i in range(2):
            r, dt = _generate_ok(c, rc.passage(288 + 8 * i))
            assert r.cache.result in ("miss", "hit") and dt < DEADLINE_S

        # Slower than the command timeout (2 s per chunk): Redis operations time out and are
        # counted; requests still succeed within their deadline.
        before = _redis_errors(s)
        proxy.set_mode("delay", 2.0)
        for i in range(2):
            r, dt = _generate_ok(c, rc.passage(304 + 8 * i))
            assert r.cache.result in ("miss", "hit") and dt < DEADLINE_S
        rc.wait_metric(s, "semshare_cache_store_errors_total", lambda v: v > before, tier="redis")

        # Black hole: every byte dropped in both directions, connections stay open.
        before = _redis_errors(s)
        proxy.set_mode("drop")
        for i in range(2):
            r, dt = _generate_ok(c, rc.passage(320 + 8 * i))
            assert r.cache.result in ("miss", "hit") and dt < DEADLINE_S
        assert proxy.dropped > 0
        rc.wait_metric(s, "semshare_cache_store_errors_total", lambda v: v > before, tier="redis")

        # Connections reset and refused.
        before = _redis_errors(s)
        proxy.set_mode("reset")
        for i in range(2):
            r, dt = _generate_ok(c, rc.passage(336 + 8 * i))
            assert r.cache.result in ("miss", "hit") and dt < DEADLINE_S
        rc.wait_metric(s, "semshare_cache_store_errors_total", lambda v: v > before, tier="redis")

        # Healed: the same server publishes to Redis again (the stale connections were dropped
        # and new ones made) without a restart.
        proxy.set_mode("pass")
        keys_before = redis.dbsize()
        deadline = time.monotonic() + 30
        i = 0
        while redis.dbsize() <= keys_before:
            assert time.monotonic() < deadline, (
                f"no publication reached Redis after the proxy healed\n{s.log()[-3000:]}")
            _generate_ok(c, rc.passage(352 + 8 * (i % 29)))  # 29 fresh passages, 352..583
            i += 1
            time.sleep(0.5)
        # Every Generate of this test succeeded: 1 + 4 faults x 2 + the i sent after healing.
        assert rc.metric(s, "semshare_requests_total", method="Generate", code="OK") == 9 + i
    finally:
        c.close()
        rc.stop_ok(s)
        proxy.close()
