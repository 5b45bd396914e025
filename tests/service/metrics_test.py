"""/metrics of a fresh semshare-server: every family of the contract, with values that equal the
requests this test sends (nothing else talks to this server).

The requests: a passage (miss, published), its paraphrase (hit), a short prompt through the
stream (below --min-reuse-tokens: bypass), the passage again with CACHE_POLICY_BYPASS, plus
LookupReference polls and two refused calls. Every Generate uses ignore_eos so each request
generates exactly max_tokens tokens and max_tokens - 1 inter-token gaps.
"""

import time

import grpc
import pytest

import service_common as sc


@pytest.fixture(scope="module")
def server(make_server):
    return make_server(["--threads", 2])


def assert_families(m, exempt=()):
    for fam, typ in sc.METRIC_FAMILIES.items():
        if fam in sc.GPU_FAMILIES or fam in exempt:
            continue  # GPU gauges: only with --backend cuda
        assert m.types.get(fam) == typ, f"{fam}: type {m.types.get(fam)}, want {typ}"
        assert any(n == fam or n.startswith(fam + "_") for n, _, _ in m.samples), fam
    for fam in sc.GPU_FAMILIES:
        assert not m.has(fam), f"{fam} must not be exported on the CPU backend"


def test_every_family_present_at_start(server):
    m = server.metrics()
    # requests_total{code, method} has a series per pair seen, so none before the first call.
    assert_families(m, exempt={"semshare_requests_total"})
    # Counters exist at 0 before the first request, so rate() sees their start.
    for fam in ("semshare_cache_lookups_total", "semshare_cache_hits_total",
                "semshare_prompt_tokens_total"):
        assert m.has(fam) and m.get(fam) == 0, fam
    # Every series carries the model label; the store series carry tier.
    models = {l.get("model") for n, l, _ in m.samples if n.startswith("semshare_")}
    assert len(models) == 1 and None not in models and "" not in models, models
    for tier in ("memory", "disk", "redis"):
        assert m.has("semshare_cache_store_bytes", tier=tier)
        assert m.has("semshare_cache_store_entries", tier=tier)
    for res in ("hit", "miss", "bypass"):
        assert m.has("semshare_time_to_first_token_seconds_count", cache_result=res)
    # TTFT buckets span 1 ms .. 60 s.
    les = {float(l["le"]) for n, l, _ in m.samples
           if n == "semshare_time_to_first_token_seconds_bucket" and l["le"] != "+Inf"}
    assert min(les) == pytest.approx(0.001) and max(les) == pytest.approx(60.0)


def test_values_match_requests(server, pairs):
    c = server.client(sc.KEY_A)
    done = []  # (usage, cache, timings) of each completed Generate / GenerateStream

    first = c.generate(sc.passage(pairs, 60), max_tokens=3, ignore_eos=True)
    done.append(first)
    assert first.cache.result == "miss"
    paraphrase = sc.passage(pairs, 60, swap={0, 5})
    _, lookups = sc.wait_lookup_hit(c, paraphrase)
    hit = c.generate(paraphrase, max_tokens=2, ignore_eos=True)
    assert hit.cache.result == "hit"
    done.append(hit)
    last = [x for x in c.stream(sc.SHORT_PROMPT, max_tokens=4, ignore_eos=True)
            if not isinstance(x, str)][-1]
    assert last.cache.result == "bypass"
    done.append(last)
    bypass = c.generate(sc.passage(pairs, 60), max_tokens=1, ignore_eos=True,
                        cache_policy="bypass")
    assert bypass.cache.result == "bypass"
    done.append(bypass)
    code, _ = sc.code_of(lambda: c.generate("", max_tokens=1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    with sc.Client(server.target, api_key="unknown-key-000000000000000") as stranger:
        code, _ = sc.code_of(lambda: stranger.generate("Hi", max_tokens=1))
    assert code == grpc.StatusCode.UNAUTHENTICATED

    # The store gauges are refreshed once a second: wait for the published reference to show.
    # requests_running drops when a worker's job returns, just after it sent the response.
    deadline = time.monotonic() + 30
    while True:
        m = server.metrics()
        # (A front worker's job ends a moment after the engine loop has answered the request it
        # handed over: until then the job still counts in semshare_requests_waiting.)
        if (m.get("semshare_cache_store_entries", tier="memory") == 1
                and m.get("semshare_requests_running") == 0
                and m.get("semshare_requests_waiting") == 0):
            break
        assert time.monotonic() < deadline, m.text
        time.sleep(0.2)

    assert_families(m)
    req = lambda method, code: m.get("semshare_requests_total", method=method, code=code)  # noqa
    assert req("Generate", "OK") == 3
    assert req("GenerateStream", "OK") == 1
    assert req("Generate", "INVALID_ARGUMENT") == 1
    assert req("Generate", "UNAUTHENTICATED") == 1
    assert req("LookupReference", "OK") == lookups
    assert m.get("semshare_requests_total") == 3 + 1 + 1 + 1 + lookups

    looked_up = [r for r in done if r.cache.result in ("hit", "miss")]
    assert m.get("semshare_cache_lookups_total") == len(looked_up) == 2
    assert m.get("semshare_cache_hits_total") == 1
    assert m.get("semshare_prompt_tokens_total") == sum(r.usage.prompt_tokens for r in done)
    assert m.get("semshare_generation_tokens_total") == sum(
        r.usage.completion_tokens for r in done) == 3 + 2 + 4 + 1
    assert m.get("semshare_reused_tokens_total") == sum(r.usage.reused_tokens for r in done) > 0
    assert m.get("semshare_recomputed_tokens_total") == sum(
        r.usage.recomputed_tokens for r in done)

    for res in ("hit", "miss", "bypass"):
        mine = [r for r in done if r.cache.result == res]
        for fam in ("semshare_time_to_first_token_seconds", "semshare_prefill_seconds"):
            assert m.get(fam + "_count", cache_result=res) == len(mine), (fam, res)
        # The histogram observes the same TTFT the response reports (ms -> s). Tolerance: the
        # exposition prints doubles to ~15 significant digits.
        assert m.get("semshare_time_to_first_token_seconds_sum", cache_result=res) == \
            pytest.approx(sum(r.timings.ttft_ms for r in mine) / 1e3, rel=1e-9, abs=1e-9)
    for fam in ("semshare_request_duration_seconds", "semshare_request_queue_seconds"):
        assert m.get(fam + "_count") == len(done), fam
    assert m.get("semshare_request_duration_seconds_sum") == pytest.approx(
        sum(r.timings.total_ms for r in done) / 1e3, rel=1e-9, abs=1e-9)
    assert m.get("semshare_inter_token_latency_seconds_count") == sum(
        r.usage.completion_tokens - 1 for r in done)
    # Similarity is observed when a candidate was scored (the first request had none).
    scored = [r for r in looked_up if r.cache.reference_id != 0]
    assert m.get("semshare_match_similarity_count") == len(scored) == 1
    assert m.get("semshare_match_similarity_sum") == pytest.approx(
        sum(r.cache.similarity for r in scored), rel=1e-6)  # float32 in the response

    # Nothing in flight: the gauges are back to zero, the KV of finished requests freed.
    assert m.get("semshare_requests_running") == 0
    assert m.get("semshare_requests_waiting") == 0
    assert m.get("semshare_kv_cache_bytes") == 0
    assert m.get("semshare_cache_store_bytes", tier="memory") > 0
    assert m.get("semshare_cache_store_entries", tier="disk") == 0
    assert m.get("semshare_cache_store_evictions_total") == 0
    assert m.get("semshare_cache_store_errors_total") == 0
    c.close()
